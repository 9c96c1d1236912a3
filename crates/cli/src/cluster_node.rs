//! One cluster node in this process: the data node, its cluster agent and the cluster
//! REST routes (mounted on the node's admin port through the admin extension). Used by
//! `conduit node` (one per process) and by `conduit demo` / `conduit bench rebalance`
//! (several per process, on ephemeral ports and temporary data directories).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kv_node::{AdminExtension, Node, NodeConfig};
use orchestrator::agent::{self, Agent, AgentConfig, Creds};
use orchestrator::http::{ClusterHttp, HttpConfig};
use tokio::net::TcpListener;

/// What a cluster node needs besides the data node's own configuration.
#[derive(Debug)]
pub(crate) struct ClusterNodeOpts {
    /// The data node's configuration; `kv_listen` / `admin_listen` are bound here.
    pub(crate) node: NodeConfig,
    /// Reopen every vbucket `dead` (a fenced start); a cluster member always does.
    pub(crate) fenced_start: bool,
    /// The address other cluster nodes reach this node by.
    pub(crate) host: String,
    /// Janitor period of the orchestrator (clamped to ≥ 100 ms).
    pub(crate) janitor_period: Duration,
    /// The orchestrator's T7 test hook: fail the first commit after a takeover.
    pub(crate) fail_first_takeover_commit: bool,
}

impl ClusterNodeOpts {
    /// A node on 127.0.0.1 ephemeral ports with fast flushes (demos, benchmarks).
    pub(crate) fn ephemeral(data_dir: impl Into<PathBuf>, user: &str, password: &str) -> Self {
        ClusterNodeOpts {
            node: NodeConfig::ephemeral(data_dir, user, password),
            fenced_start: false,
            host: "127.0.0.1".into(),
            janitor_period: Duration::from_millis(5000),
            fail_first_takeover_commit: false,
        }
    }
}

/// A running cluster node.
pub(crate) struct ClusterNode {
    node: Node,
    agent: Arc<Agent>,
    http: Arc<ClusterHttp>,
    orchestrator: bool,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("kv", &self.node.kv_addr())
            .field("admin", &self.node.admin_addr())
            .finish_non_exhaustive()
    }
}

fn loopback(a: SocketAddr) -> SocketAddr {
    if a.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), a.port())
    } else {
        a
    }
}

/// Binds the node's listeners, starts the agent, mounts the cluster routes, starts the
/// node and resumes the orchestrator if this node runs it.
///
/// # Errors
/// A port cannot be bound, or the agent, node or orchestrator cannot start.
pub(crate) async fn start(opts: ClusterNodeOpts) -> anyhow::Result<ClusterNode> {
    let mut cfg = opts.node;
    // A cluster member always starts fenced: the janitor applies its map (N6, §2.6).
    let member = agent::is_member(&cfg.data_dir);
    cfg.restore_vbucket_states = !(opts.fenced_start || member);
    let kv = TcpListener::bind(cfg.kv_listen)
        .await
        .with_context(|| format!("binding the KV port {}", cfg.kv_listen))?;
    let admin = TcpListener::bind(cfg.admin_listen)
        .await
        .with_context(|| format!("binding the admin port {}", cfg.admin_listen))?;
    let local_admin = Creds {
        user: cfg.admin_user.clone(),
        password: cfg.admin_password.clone(),
    };
    let mut acfg = AgentConfig::new(
        &cfg.data_dir,
        loopback(admin.local_addr()?),
        loopback(kv.local_addr()?),
        local_admin.clone(),
    );
    acfg.host.clone_from(&opts.host);
    let agent = Agent::start(acfg).await.context("starting the agent")?;
    let http = ClusterHttp::new(
        HttpConfig {
            data_dir: cfg.data_dir.clone(),
            local_admin,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            janitor_period: opts.janitor_period.max(Duration::from_millis(100)),
            fail_first_takeover_commit: opts.fail_first_takeover_commit,
        },
        agent.clone(),
    );
    cfg.admin_extension = Some(AdminExtension {
        router: agent
            .router()
            .merge(orchestrator::http::router(Arc::clone(&http))),
        public: orchestrator::http::public_routes(),
    });
    let node = match Node::start_with_listeners(cfg, kv, admin).await {
        Ok(n) => n,
        Err(e) => {
            http.shutdown();
            agent.shutdown().await;
            return Err(anyhow::Error::from(e).context("starting the node"));
        }
    };
    let orchestrator = match http.resume().await {
        Ok(o) => o,
        Err(e) => {
            http.shutdown();
            agent.shutdown().await;
            node.shutdown().await;
            anyhow::bail!("resuming the orchestrator: {}", e.to_json());
        }
    };
    Ok(ClusterNode {
        node,
        agent,
        http,
        orchestrator,
    })
}

impl ClusterNode {
    /// The KV (MCBP) address, as bound.
    pub(crate) fn kv_addr(&self) -> SocketAddr {
        loopback(self.node.kv_addr())
    }

    /// The admin (REST) address, as bound.
    pub(crate) fn admin_addr(&self) -> SocketAddr {
        loopback(self.node.admin_addr())
    }

    /// Whether the node resumed the cluster's orchestrator at start.
    pub(crate) fn runs_orchestrator(&self) -> bool {
        self.orchestrator
    }

    /// Stops the cluster routes, the agent, then the node.
    pub(crate) async fn shutdown(self) {
        self.http.shutdown();
        self.agent.shutdown().await;
        self.node.shutdown().await;
    }
}
