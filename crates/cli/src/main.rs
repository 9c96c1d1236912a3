//! `conduit`: one binary, many subcommands. Thin: parses arguments, installs logging,
//! maps errors to exit codes (0 ok, 1 operation failed, 2 usage error).

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use bytes::BytesMut;
use clap::{Parser, Subcommand};

mod bench;
mod cluster_cmd;
mod cluster_node;
mod decode;
mod demo;
mod failover_cmd;
mod node_cmd;
mod rebalance_cmd;
mod replicate_cmd;
mod rest_client;

/// Conduit: Couchbase-style data nodes and DCP replication.
#[derive(Debug, Parser)]
#[command(name = "conduit", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure throughput and latency; prints one JSON line.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Replicate vbuckets from a producer node to a consumer node through the proxy.
    Replicate(replicate_cmd::ReplicateArgs),
    /// Move one vbucket: build a replica, wait for it to catch up, take over.
    MoveVbucket(replicate_cmd::MoveArgs),
    /// The main job: an in-process cluster, load, rebalance a node in under writes,
    /// verify every document on every copy.
    Demo(demo::DemoArgs),
    /// Run one data node (buckets, vbuckets, KV, DCP, admin API) until SIGINT/SIGTERM.
    Node(node_cmd::NodeArgs),
    /// Cluster membership over the REST API: init, add-node, eject-node.
    #[command(subcommand)]
    Cluster(cluster_cmd::ClusterCommand),
    /// Buckets over the cluster REST API: create, list, delete.
    #[command(subcommand)]
    Bucket(cluster_cmd::BucketCommand),
    /// The cluster at a glance: nodes, copies per bucket, buckets, rebalance.
    Status(cluster_cmd::StatusArgs),
    /// Rebalance the cluster (every listed node stays, `--eject` nodes leave); or
    /// `stop`, `status`, `report`, `settings`.
    Rebalance(rebalance_cmd::RebalanceArgs),
    /// Fail a node over (hard by default, or --graceful).
    Failover(failover_cmd::FailoverArgs),
    /// Mark a failed-over node for delta or full recovery (then rebalance).
    Recovery(failover_cmd::RecoveryArgs),
    /// Decode MCBP/DCP frames given as hex (arguments, or stdin when none) and print
    /// one JSON object per frame.
    Decode {
        /// Hex strings; whitespace and `|` separators are ignored.
        hex: Vec<String>,
        /// Largest body accepted, in bytes.
        #[arg(long, default_value_t = mcbp::DEFAULT_MAX_BODY_LEN)]
        max_body: usize,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Pipelined SET then GET load against an MCBP server (Conduit node or memcached).
    Kv(bench::kv::BenchKvArgs),
    /// DCP throughput between two `conduit node` processes, from memory or disk backfill.
    Dcp(bench::dcp::BenchDcpArgs),
    /// DCP mutation throughput sent directly and through the replication proxy pair.
    Proxy(bench::proxy::BenchProxyArgs),
    /// End-to-end replication through the proxy: mutations/s and lag.
    Replication(bench::replication::BenchReplicationArgs),
    /// Rebalance of an in-process cluster: seconds and estimated bytes moved.
    Rebalance(bench::rebalance::BenchRebalanceArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("conduit: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // Long-running services log their lifecycle; the demo and benchmarks print their
    // own report on stdout and keep stderr for warnings. RUST_LOG overrides both.
    let default_level = match cli.command {
        Command::Demo(_)
        | Command::Bench(_)
        | Command::Cluster(_)
        | Command::Bucket(_)
        | Command::Status(_)
        | Command::Rebalance(_)
        | Command::Failover(_)
        | Command::Recovery(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Decode { hex, max_body } => run_decode(hex, max_body),
        Command::Node(args) => rt.block_on(node_cmd::run(args)),
        Command::Demo(args) => rt.block_on(demo::run(args)),
        Command::Cluster(cmd) => return ExitCode::from(rt.block_on(cluster_cmd::run_cluster(cmd))),
        Command::Bucket(cmd) => return ExitCode::from(rt.block_on(cluster_cmd::run_bucket(cmd))),
        Command::Status(args) => return ExitCode::from(rt.block_on(cluster_cmd::run_status(args))),
        Command::Rebalance(args) => return ExitCode::from(rt.block_on(rebalance_cmd::run(args))),
        Command::Failover(args) => {
            return ExitCode::from(rt.block_on(failover_cmd::run_failover(args)))
        }
        Command::Recovery(args) => {
            return ExitCode::from(rt.block_on(failover_cmd::run_recovery(args)))
        }
        Command::Replicate(args) => return ExitCode::from(rt.block_on(replicate_cmd::run(args))),
        Command::MoveVbucket(args) => {
            return ExitCode::from(rt.block_on(replicate_cmd::run_move(args)))
        }
        Command::Bench(cmd) => rt.block_on(async {
            let v = match cmd {
                BenchCommand::Kv(args) => bench::kv::run(args).await?,
                BenchCommand::Dcp(args) => bench::dcp::run(args).await?,
                BenchCommand::Proxy(args) => bench::proxy::run(args).await?,
                BenchCommand::Replication(args) => bench::replication::run(args).await?,
                BenchCommand::Rebalance(args) => bench::rebalance::run(args).await?,
            };
            println!("{v}");
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conduit: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run_decode(args: Vec<String>, max_body: usize) -> anyhow::Result<()> {
    let text = if args.is_empty() {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading hex from stdin")?;
        s
    } else {
        args.join("")
    };
    let clean: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '|')
        .collect();
    let raw = hex::decode(&clean).context("input is not hex")?;
    let mut buf = BytesMut::from(&raw[..]);
    for line in decode::frames_to_json(&mut buf, max_body)? {
        println!("{line}");
    }
    Ok(())
}
