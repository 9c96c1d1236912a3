//! `conduit failover` and `conduit recovery` (cluster.md §9, §8): thin clients of the
//! failover routes.

use clap::Args;
use serde_json::json;

use crate::cluster_cmd::{with_client, Report, RestArgs};
use crate::rest_client::{CliError, RestClient};

/// Flags of `conduit failover`.
#[derive(Debug, Args)]
pub(crate) struct FailoverArgs {
    #[command(flatten)]
    rest: RestArgs,
    /// The node to fail over (its name or HOST:PORT); repeatable.
    #[arg(required = true)]
    nodes: Vec<String>,
    /// Move its actives off by takeover first, then fail it over (no data copied).
    #[arg(long, conflicts_with = "hard")]
    graceful: bool,
    /// Fail it over at once (the default).
    #[arg(long)]
    hard: bool,
    /// Fail over even if some vbuckets lose their last copy.
    #[arg(long)]
    force: bool,
}

/// Flags of `conduit recovery`.
#[derive(Debug, Args)]
pub(crate) struct RecoveryArgs {
    #[command(flatten)]
    rest: RestArgs,
    /// The failed-over node (its name or HOST:PORT).
    node: String,
    /// Keep its data and catch up from it.
    #[arg(long, conflicts_with = "full", required_unless_present = "full")]
    delta: bool,
    /// Wipe its buckets and rebuild it like a new node.
    #[arg(long)]
    full: bool,
}

/// Runs `conduit failover`; returns the exit code.
pub(crate) async fn run_failover(a: FailoverArgs) -> u8 {
    with_client(&a.rest, |c| failover(c, &a)).await
}

/// Runs `conduit recovery`; returns the exit code.
pub(crate) async fn run_recovery(a: RecoveryArgs) -> u8 {
    with_client(&a.rest, |c| recovery(c, &a)).await
}

async fn failover(c: RestClient, a: &FailoverArgs) -> Result<Report, CliError> {
    let mut form: Vec<(&str, String)> = a.nodes.iter().map(|n| ("otpNode", n.clone())).collect();
    let path = if a.graceful {
        "/controller/startGracefulFailover"
    } else {
        if a.force {
            form.push(("force", "true".to_owned()));
        }
        "/controller/failOver"
    };
    let answer = c.post(path, &form).await?;
    let kind = if a.graceful { "graceful" } else { "hard" };
    Ok(Report::new(
        json!({"failedOver": a.nodes, "kind": kind, "answer": answer.body}),
        format!("{kind} failover of {} done; add it back with `conduit recovery NODE --delta|--full` and a rebalance", a.nodes.join(", ")),
    ))
}

async fn recovery(c: RestClient, a: &RecoveryArgs) -> Result<Report, CliError> {
    let kind = if a.full { "full" } else { "delta" };
    c.post(
        "/controller/setRecoveryType",
        &[
            ("otpNode", a.node.clone()),
            ("recoveryType", kind.to_owned()),
        ],
    )
    .await?;
    Ok(Report::new(
        json!({"node": a.node, "recoveryType": kind}),
        format!(
            "{} marked for {kind} recovery; run `conduit rebalance --wait` to bring it back",
            a.node
        ),
    ))
}
