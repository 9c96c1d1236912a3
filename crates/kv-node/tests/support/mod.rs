//! Shared helpers for the node's integration tests: start a node on ephemeral
//! loopback ports, connect authenticated clients, speak minimal HTTP.
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::time::Duration;

use kv_client::{Client, ClientConfig, Credentials};
use kv_node::{BucketMeta, Node, NodeConfig};
use mcbp::VbState;
use tokio::net::TcpListener;

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
                uuid: None,
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

pub use testkit::http;
