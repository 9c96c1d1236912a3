//! Shared helpers for the node's integration tests: start a node on ephemeral
//! loopback ports, connect authenticated clients, speak minimal HTTP.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use kv_client::{Client, ClientConfig, Credentials};
use kv_node::{BucketMeta, Node, NodeConfig};
use mcbp::VbState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const ADMIN: &str = "admin";
pub const PASSWORD: &str = "s3cret";
/// Bound on every await in tests: only to catch hangs.
pub const BOUND: Duration = Duration::from_secs(20);

pub struct TestNode {
    pub node: Node,
    pub dir: tempfile::TempDir,
}

pub async fn start_with(f: impl FnOnce(&mut NodeConfig)) -> anyhow::Result<TestNode> {
    let dir = tempfile::tempdir()?;
    start_in(dir, f).await
}

pub async fn start_in(
    dir: tempfile::TempDir,
    f: impl FnOnce(&mut NodeConfig),
) -> anyhow::Result<TestNode> {
    let mut cfg = NodeConfig::ephemeral(dir.path(), ADMIN, PASSWORD);
    f(&mut cfg);
    let kv = TcpListener::bind("127.0.0.1:0").await?;
    let admin = TcpListener::bind("127.0.0.1:0").await?;
    let node = tokio::time::timeout(BOUND, Node::start_with_listeners(cfg, kv, admin)).await??;
    Ok(TestNode { node, dir })
}

pub async fn start() -> anyhow::Result<TestNode> {
    start_with(|_| {}).await
}

impl TestNode {
    pub fn kv(&self) -> String {
        self.node.kv_addr().to_string()
    }

    pub fn create_bucket(
        &self,
        name: &str,
        vbuckets: u16,
        state: Option<VbState>,
    ) -> anyhow::Result<()> {
        self.node.state().create_bucket(
            BucketMeta {
                name: name.to_string(),
                vbuckets,
                ram_quota_mb: 64,
                flush_enabled: true,
            },
            state,
        )?;
        Ok(())
    }

    /// An admin client with `bucket` selected.
    pub async fn admin_client(&self, bucket: &str) -> anyhow::Result<Client> {
        let mut c = Client::connect(&self.kv(), cfg()).await?;
        c.auth_plain(&creds(ADMIN, PASSWORD)).await?;
        c.select_bucket(bucket).await?;
        Ok(c)
    }
}

pub fn cfg() -> ClientConfig {
    ClientConfig {
        timeout: BOUND,
        ..ClientConfig::default()
    }
}

pub fn creds(user: &str, password: &str) -> Credentials {
    Credentials {
        user: user.to_string(),
        password: password.to_string(),
    }
}

/// Minimal HTTP/1.1 request; returns (status, body).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    use base64::Engine as _;
    let mut s = tokio::time::timeout(BOUND, TcpStream::connect(addr)).await??;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some((u, p)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        req.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await?;
    let mut resp = Vec::new();
    tokio::time::timeout(BOUND, s.read_to_end(&mut resp)).await??;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("no status line"))?
        .parse()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // Chunked bodies: keep only the JSON part.
    let body = match (body.find(['{', '[']), body.rfind(['}', ']'])) {
        (Some(a), Some(b)) if b >= a => body[a..=b].to_string(),
        _ => body,
    };
    Ok((status, body))
}
