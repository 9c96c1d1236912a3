//! The in-process node fixture: a real `kv_node::Node` on `127.0.0.1:0` listeners
//! with a temporary data directory, driven through its admin API (buckets, faults)
//! and MCBP clients like any other peer. A few accessors read the node's state
//! directly (stored items, vbucket states) for assertions the wire cannot make.
//!
//! Child-process nodes (`conduit node`) are [`crate::NodeProcess`].

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use kv_client::{Client, ClientConfig, Credentials};
use kv_engine::Item;
use kv_node::{Node, NodeConfig};
use mcbp::{Seqno, VbState, Vbid};
use tokio::net::TcpListener;
use tokio::time::timeout;

/// The fixture's admin user.
pub const ADMIN: &str = "admin";
/// The fixture's admin password.
pub const PASSWORD: &str = "s3cret";
/// Bound on every await against an in-process node: only to catch hangs.
pub const BOUND: Duration = Duration::from_secs(20);

/// A real in-process node with its temporary data directory.
#[derive(Debug)]
pub struct TestNode {
    /// The running node.
    pub node: Node,
    /// Its data directory (kept for restarts with [`TestNode::start_in`]).
    pub dir: tempfile::TempDir,
}

impl TestNode {
    /// Starts a node with the default test configuration.
    ///
    /// # Errors
    /// Binding, the data directory or the node's start-up fails.
    pub async fn start() -> anyhow::Result<TestNode> {
        TestNode::start_with(|_| {}).await
    }

    /// Starts a node with `--enable-fault-injection` (faults go through
    /// [`TestNode::add_fault`]).
    ///
    /// # Errors
    /// See [`TestNode::start`].
    pub async fn with_faults() -> anyhow::Result<TestNode> {
        TestNode::start_with(|c| c.enable_fault_injection = true).await
    }

    /// Starts a node whose configuration `f` adjusts first.
    ///
    /// # Errors
    /// See [`TestNode::start`].
    pub async fn start_with(f: impl FnOnce(&mut NodeConfig)) -> anyhow::Result<TestNode> {
        TestNode::start_in(tempfile::tempdir()?, f).await
    }

    /// Starts a node on an existing data directory (restart tests).
    ///
    /// # Errors
    /// See [`TestNode::start`].
    pub async fn start_in(
        dir: tempfile::TempDir,
        f: impl FnOnce(&mut NodeConfig),
    ) -> anyhow::Result<TestNode> {
        let mut cfg = NodeConfig::ephemeral(dir.path(), ADMIN, PASSWORD);
        f(&mut cfg);
        let kv = TcpListener::bind("127.0.0.1:0").await?;
        let admin = TcpListener::bind("127.0.0.1:0").await?;
        let node = timeout(BOUND, Node::start_with_listeners(cfg, kv, admin))
            .await
            .context("node start hangs")??;
        Ok(TestNode { node, dir })
    }

    /// The KV address, `127.0.0.1:port`.
    #[must_use]
    pub fn kv(&self) -> String {
        self.node.kv_addr().to_string()
    }

    /// The admin API address.
    #[must_use]
    pub fn admin_addr(&self) -> SocketAddr {
        self.node.admin_addr()
    }

    /// One admin-API call as the admin user through [`crate::http`]; any status but
    /// `want` is an error. Returns the body.
    ///
    /// # Errors
    /// Transport failures, a hang past [`BOUND`], or another status.
    pub async fn admin_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        want: u16,
    ) -> anyhow::Result<String> {
        let auth = (ADMIN, PASSWORD);
        crate::admin_call(self.admin_addr(), auth, method, path, body, want).await
    }

    /// Creates a bucket (256 MiB quota, flush enabled) with every vbucket in `state`
    /// (dead if `None`), through the admin API.
    ///
    /// # Errors
    /// See [`TestNode::admin_call`].
    pub async fn create_bucket(
        &self,
        name: &str,
        vbuckets: u16,
        state: Option<VbState>,
    ) -> anyhow::Result<()> {
        let mut def = serde_json::json!({
            "name": name,
            "vbuckets": vbuckets,
            "ram_quota_mb": 256,
            "flush_enabled": true,
        });
        if let Some(s) = state {
            def["initial_state"] = s.as_str().into();
        }
        self.admin_call("POST", "/buckets", Some(&def.to_string()), 201)
            .await
            .map(drop)
    }

    /// Injects a fault through the admin API (`POST /faults`; the body is the node's
    /// fault JSON, e.g. `{"kind":"drop_add_stream_response","vbucket":5}`). The node
    /// must run with fault injection ([`TestNode::with_faults`]).
    ///
    /// # Errors
    /// See [`TestNode::admin_call`].
    pub async fn add_fault(&self, fault: serde_json::Value) -> anyhow::Result<()> {
        self.admin_call("POST", "/faults", Some(&fault.to_string()), 201)
            .await
            .map(drop)
    }

    /// Removes every injected fault through the admin API (`DELETE /faults`).
    ///
    /// # Errors
    /// See [`TestNode::admin_call`].
    pub async fn clear_faults(&self) -> anyhow::Result<()> {
        self.admin_call("DELETE", "/faults", None, 200)
            .await
            .map(drop)
    }

    /// An admin client (SASL PLAIN) with `bucket` selected.
    ///
    /// # Errors
    /// Connection, authentication or bucket selection fails.
    pub async fn client(&self, bucket: &str) -> anyhow::Result<Client> {
        let mut c = Client::connect(&self.kv(), client_config()).await?;
        c.auth_plain(&creds(ADMIN, PASSWORD)).await?;
        c.select_bucket(bucket).await?;
        Ok(c)
    }

    /// SET_VBUCKET over MCBP as the admin user.
    ///
    /// # Errors
    /// The call fails or hangs.
    pub async fn set_vbucket(&self, bucket: &str, vb: Vbid, state: VbState) -> anyhow::Result<()> {
        let mut c = self.client(bucket).await?;
        timeout(BOUND, c.set_vbucket(vb, state))
            .await?
            .with_context(|| format!("SET_VBUCKET {vb} {state}"))?;
        Ok(())
    }

    /// The vbucket's state, read from the node.
    ///
    /// # Panics
    /// No such bucket or vbucket.
    #[must_use]
    pub fn vbucket_state(&self, bucket: &str, vb: Vbid) -> VbState {
        self.node
            .state()
            .bucket(bucket)
            .expect("bucket")
            .bucket
            .vbucket_state(vb)
            .expect("vbucket")
    }

    /// Whether a DCP connection of that name is registered on the node.
    #[must_use]
    pub fn has_dcp_name(&self, bucket: &str, name: &str) -> bool {
        self.node.state().has_dcp_name(bucket, name)
    }

    /// Every stored version of a vbucket (items and tombstones), by seqno, read from
    /// the node.
    ///
    /// # Panics
    /// No such bucket or vbucket.
    #[must_use]
    pub fn items(&self, bucket: &str, vb: Vbid) -> Vec<Item> {
        self.node
            .state()
            .bucket(bucket)
            .expect("bucket")
            .bucket
            .items_since(vb, Seqno(0), usize::MAX)
            .expect("vbucket")
    }

    /// The vbucket's high seqno, read from the node.
    ///
    /// # Panics
    /// No such bucket or vbucket.
    #[must_use]
    pub fn high_seqno(&self, bucket: &str, vb: Vbid) -> Seqno {
        self.node
            .state()
            .bucket(bucket)
            .expect("bucket")
            .bucket
            .high_seqno(vb)
            .expect("vbucket")
    }
}

/// Client configuration with every call bounded by [`BOUND`].
#[must_use]
pub fn client_config() -> ClientConfig {
    ClientConfig {
        timeout: BOUND,
        ..ClientConfig::default()
    }
}

/// Credentials from a user and a password.
#[must_use]
pub fn creds(user: &str, password: &str) -> Credentials {
    Credentials {
        user: user.to_string(),
        password: password.to_string(),
    }
}
