//! `conduit node`: run one data node until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use kv_node::NodeConfig;

use crate::cluster_node::{self, ClusterNodeOpts};

/// Flags of `conduit node`.
#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// Directory for buckets, `buckets.json` and `ports.json`.
    #[arg(long)]
    data_dir: PathBuf,
    /// KV (memcached binary protocol) port; 0 picks a free one.
    #[arg(long, default_value_t = 11210)]
    kv_port: u16,
    /// Admin HTTP port; 0 picks a free one.
    #[arg(long, default_value_t = 8091)]
    admin_port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: std::net::IpAddr,
    /// The admin user (HTTP basic auth and SASL, every privilege).
    #[arg(long, default_value = "Administrator")]
    admin_user: String,
    /// The admin password.
    #[arg(long, env = "CONDUIT_ADMIN_PASSWORD", default_value = "password")]
    admin_password: String,
    /// JSON config file adding bucket users and settings.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Let unauthenticated connections read and write this bucket (key-value only).
    #[arg(long)]
    anonymous_bucket: Option<String>,
    /// Enable the test-only `/faults` admin routes.
    #[arg(long)]
    enable_fault_injection: bool,
    /// Idle timeout of non-DCP connections, in seconds.
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
    /// Maximum concurrent connections.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Group-commit interval in milliseconds.
    #[arg(long, default_value_t = 20)]
    flush_interval_ms: u64,
    /// Reopen every vbucket `dead` (data kept) instead of in its last state: a
    /// cluster member's fenced start; the cluster layer then applies its map.
    #[arg(long)]
    fenced_start: bool,
    /// The address other cluster nodes reach this node by.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Janitor period of the orchestrator, in milliseconds (cluster.md §6: 5000).
    #[arg(long, default_value_t = 5000, hide = true)]
    janitor_period_ms: u64,
    /// Test hook (cluster.md §10.2 T7): the orchestrator fails the first commit of
    /// a move after its takeover.
    #[arg(long, hide = true)]
    test_fail_first_takeover_commit: bool,
}

pub(crate) async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let mut cfg = NodeConfig::new(&args.data_dir, &args.admin_user, &args.admin_password);
    cfg.kv_listen = SocketAddr::new(args.bind, args.kv_port);
    cfg.admin_listen = SocketAddr::new(args.bind, args.admin_port);
    cfg.anonymous_bucket = args.anonymous_bucket;
    cfg.enable_fault_injection = args.enable_fault_injection;
    cfg.idle_timeout = std::time::Duration::from_secs(args.idle_timeout);
    cfg.max_connections = args.max_connections;
    cfg.flush_interval = std::time::Duration::from_millis(args.flush_interval_ms);
    if let Some(path) = &args.config {
        cfg.apply_file(path)?;
    }
    if args.admin_password == "password" {
        tracing::warn!(
            "the admin password is the default; set --admin-password or CONDUIT_ADMIN_PASSWORD"
        );
    }
    let node = cluster_node::start(ClusterNodeOpts {
        node: cfg,
        fenced_start: args.fenced_start,
        host: args.host.clone(),
        janitor_period: std::time::Duration::from_millis(args.janitor_period_ms),
        fail_first_takeover_commit: args.test_fail_first_takeover_commit,
    })
    .await?;
    if node.runs_orchestrator() {
        eprintln!("conduit node: this node runs the cluster's orchestrator");
    }
    eprintln!(
        "conduit node: kv {} admin {} (ports also in {})",
        node.kv_addr(),
        node.admin_addr(),
        args.data_dir.join("ports.json").display()
    );
    wait_for_signal().await?;
    node.shutdown().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
