//! `conduit rebalance` (cluster.md §9): knownNodes = every node the cluster lists,
//! `--eject` the nodes to remove; `--wait` polls `rebalanceProgress` until it is
//! `{"status":"none"}` again and fails with the rebalance's error message if it has one.

use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use crate::cluster_cmd::{parse_seconds, with_client, Report, RestArgs};
use crate::rest_client::{CliError, RestClient};

const POLL: Duration = Duration::from_millis(250);

/// Flags of `conduit rebalance`.
#[derive(Debug, Args)]
pub(crate) struct RebalanceArgs {
    #[command(flatten)]
    rest: RestArgs,
    /// A node to remove (its name or HOST:PORT); repeatable.
    #[arg(long = "eject")]
    eject: Vec<String>,
    /// Wait until the rebalance has ended.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value = "3600", value_parser = parse_seconds)]
    timeout: Duration,
}

/// Runs `conduit rebalance`; returns the exit code.
pub(crate) async fn run(a: RebalanceArgs) -> u8 {
    with_client(&a.rest, |c| rebalance(c, &a)).await
}

async fn rebalance(c: RestClient, a: &RebalanceArgs) -> Result<Report, CliError> {
    let pd = c.get_json("/pools/default").await?;
    let known: Vec<String> = pd["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["otpNode"].as_str().map(str::to_owned))
        .collect();
    let answer = c
        .post(
            "/controller/rebalance",
            &[
                ("knownNodes", known.join(",")),
                ("ejectedNodes", a.eject.join(",")),
            ],
        )
        .await?;
    let id = answer.body["rebalance_id"].clone();
    if !a.wait {
        return Ok(Report::new(
            json!({"rebalance_id": id, "known": known, "ejected": a.eject}),
            format!("rebalance {} started", id.as_str().unwrap_or("?")),
        ));
    }
    let deadline = tokio::time::Instant::now() + a.timeout;
    loop {
        let p = c.get_json("/pools/default/rebalanceProgress").await?;
        if p["status"] == "none" {
            if let Some(msg) = p.get("errorMessage").and_then(Value::as_str) {
                return Err(CliError::new("rebalance_failed", msg).with("rebalance_id", id));
            }
            return Ok(Report::new(
                json!({"event": "done", "rebalance_id": id}),
                "rebalance done",
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::new(
                "timeout",
                format!("the rebalance did not end within {:?}", a.timeout),
            )
            .with("waiting_for", json!("rebalance"))
            .with("rebalance_id", id));
        }
        tokio::time::sleep(POLL).await;
    }
}
