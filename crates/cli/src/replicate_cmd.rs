//! `conduit replicate` and `conduit move-vbucket`: the replication layer for
//! operators and black-box tests. Exactly one JSON line per outcome on stdout; logs
//! on stderr; exit 0 ok, 1 replication error, 2 usage error.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clap::Args;
use futures::future::select_all;
use kv_client::Credentials;
use mcbp::Vbid;
use replication::core::CoreConfig;
use replication::{move_vbucket, ManagerConfig, MoveConfig, ReplError, ReplicationManager};
use serde_json::{json, Value};

use replication::json::ErrorJson;

/// Parses `0,1,5-9` (empty = no vbuckets).
pub(crate) fn parse_vbuckets(s: &str) -> Result<BTreeSet<u16>, String> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |t: &str| {
            t.trim()
                .parse::<u16>()
                .map_err(|_| format!("{t:?} is not a vbucket number (0..=65535)"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("range {part:?} runs backwards"));
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(num(part)?);
            }
        }
    }
    Ok(out)
}

/// Flags of `conduit replicate`.
#[derive(Debug, Args)]
pub(crate) struct ReplicateArgs {
    /// The producer node's KV address (the active copy).
    #[arg(long)]
    producer: String,
    /// The consumer node's KV address (builds the replica).
    #[arg(long)]
    consumer: String,
    /// Bucket.
    #[arg(long)]
    bucket: String,
    /// User with DCP rights on both nodes.
    #[arg(long)]
    user: String,
    /// Password.
    #[arg(long, env = "CONDUIT_PASSWORD")]
    password: String,
    /// Vbuckets to replicate, e.g. `0,1,5-9`; may be empty.
    #[arg(long, default_value = "", value_parser = parse_vbuckets)]
    vbuckets: BTreeSet<u16>,
    /// Producer node name in connection names (default: --producer).
    #[arg(long)]
    producer_node: Option<String>,
    /// Consumer node name in connection names (default: --consumer).
    #[arg(long)]
    consumer_node: Option<String>,
    /// Connections per node pair; vbucket v uses connection v mod N.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// Bound, in seconds, on every wait for a peer.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Bound, in seconds, on the graceful close at exit.
    #[arg(long, default_value_t = 5)]
    shut_timeout: u64,
    /// After the set-up, take this vbucket over and exit.
    #[arg(long)]
    takeover: Option<u16>,
    /// After the set-up, wait until every vbucket's remaining-items estimate is below
    /// --done-limit and exit.
    #[arg(long)]
    until_caught_up: bool,
    /// Items-left estimate below which a vbucket counts as caught up.
    #[arg(long, default_value_t = 1000, requires = "until_caught_up")]
    done_limit: u64,
}

fn line(v: &Value) {
    println!("{v}");
}

fn error_line(e: &ReplError) {
    line(&json!({"ok": false, "error": ErrorJson::from(e)}));
}

/// A signal arrived mid-operation: say so first, then close (bounded by the
/// manager's stop grace, below `--shut-timeout`); exit code 1.
async fn interrupted(manager: &ReplicationManager) -> u8 {
    error_line(&ReplError::Interrupted);
    manager.shutdown().await;
    1
}

/// Runs `replicate`; returns the exit code.
pub(crate) async fn run(a: ReplicateArgs) -> u8 {
    let t = Duration::from_secs(a.timeout);
    let producer_node = a
        .producer_node
        .clone()
        .unwrap_or_else(|| a.producer.clone());
    let consumer_node = a
        .consumer_node
        .clone()
        .unwrap_or_else(|| a.consumer.clone());
    let creds = Credentials {
        user: a.user.clone(),
        password: a.password.clone(),
    };
    let mut cfg = ManagerConfig::new(&a.bucket, &consumer_node, &a.consumer, creds);
    cfg.nodes.insert(producer_node.clone(), a.producer.clone());
    cfg.connection_count = a.connections;
    cfg.connect_timeout = t;
    cfg.shut_timeout = Duration::from_secs(a.shut_timeout);
    cfg.core = CoreConfig {
        setup_timeout: t,
        close_timeout: t,
        takeover_timeout: t,
        shut_timeout: cfg.shut_timeout,
    };
    let manager = ReplicationManager::new(cfg);
    let vbs: BTreeSet<Vbid> = a.vbuckets.iter().copied().map(Vbid).collect();
    let mut map = BTreeMap::new();
    if !vbs.is_empty() {
        map.insert(producer_node.clone(), vbs.clone());
    }

    // Set-up, interruptible. The manager bounds every step by --timeout; the outer
    // guard only backs that up.
    let setup = tokio::time::timeout(
        t * 3 + Duration::from_secs(5),
        manager.set_incoming_replication_map(map),
    );
    let result = tokio::select! {
        r = setup => r.unwrap_or_else(|_| Err(ReplError::Timeout { waiting_for: replication::WaitFor::AddStream, vbuckets: vbs.iter().copied().collect(), peer: Some(a.consumer.clone()) })),
        s = crate::node_cmd::wait_for_signal() => {
            if let Err(e) = s {
                tracing::warn!(error = %e, "signal handling failed");
            }
            return interrupted(&manager).await;
        }
    };
    if let Err(e) = result {
        error_line(&e);
        manager.shutdown().await;
        return 1;
    }
    let actual: Vec<u16> = manager
        .get_actual_replications()
        .values()
        .flatten()
        .map(|v| v.0)
        .collect();
    line(&json!({"ok": true, "vbuckets": actual}));

    let mut one_shot = false;
    if a.until_caught_up {
        one_shot = true;
        let list: Vec<Vbid> = vbs.iter().copied().collect();
        let wait = manager.wait_for_data_move(&producer_node, &list, a.done_limit, t);
        let r = tokio::select! {
            r = wait => r,
            _ = crate::node_cmd::wait_for_signal() => return interrupted(&manager).await,
        };
        match r {
            Ok(()) => line(&json!({"ok": true, "caught_up": true})),
            Err(e) => {
                error_line(&e);
                manager.shutdown().await;
                return 1;
            }
        }
    }
    if let Some(vb) = a.takeover {
        one_shot = true;
        // Starts the connection itself when no set-up created it.
        let r = tokio::select! {
            r = manager.takeover(&producer_node, Vbid(vb)) => r,
            _ = crate::node_cmd::wait_for_signal() => return interrupted(&manager).await,
        };
        match r {
            Ok(()) => line(&json!({"ok": true, "takeover": vb})),
            Err(e) => {
                error_line(&e);
                manager.shutdown().await;
                return 1;
            }
        }
    }
    if one_shot {
        manager.shutdown().await;
        return 0;
    }

    // Keep replicating until a signal or a lost connection.
    let reps = manager.replicators();
    if reps.is_empty() {
        let _ = crate::node_cmd::wait_for_signal().await;
        return 0;
    }
    let closed = select_all(reps.iter().map(|(_, r)| Box::pin(r.closed())));
    // Liveness (§3.3): say so on stderr when a node goes quiet; DCP noops keep a
    // healthy pair talking every second.
    let watch = async {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            for (node, at) in manager.node_liveness() {
                let quiet = at.elapsed();
                if quiet > Duration::from_secs(10) {
                    tracing::warn!(%node, quiet_secs = quiet.as_secs(), "nothing heard from node");
                } else {
                    tracing::debug!(%node, quiet_ms = u64::try_from(quiet.as_millis()).unwrap_or(u64::MAX), "node alive");
                }
            }
        }
    };
    tokio::select! {
        () = watch => unreachable!("the liveness watch never ends"),
        (res, _, _) = closed => {
            let e = match res {
                Err(e) => e,
                Ok(()) => ReplError::Interrupted,
            };
            error_line(&e);
            manager.shutdown().await;
            1
        }
        _ = crate::node_cmd::wait_for_signal() => {
            // Close the consumer-side streams, bounded by --shut-timeout.
            manager.shutdown().await;
            0
        }
    }
}

/// Flags of `conduit move-vbucket`.
#[derive(Debug, Args)]
pub(crate) struct MoveArgs {
    /// Bucket.
    #[arg(long)]
    bucket: String,
    /// The vbucket to move.
    #[arg(long)]
    vbucket: u16,
    /// KV address of the current active node.
    #[arg(long)]
    from: String,
    /// KV address of the new active node.
    #[arg(long)]
    to: String,
    /// User with DCP and vbucket rights on both nodes.
    #[arg(long)]
    user: String,
    /// Password.
    #[arg(long, env = "CONDUIT_PASSWORD")]
    password: String,
    /// Bound, in seconds, on each step.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

/// Runs `move-vbucket`; returns the exit code.
pub(crate) async fn run_move(a: MoveArgs) -> u8 {
    let creds = Credentials {
        user: a.user.clone(),
        password: a.password.clone(),
    };
    let mut cfg = MoveConfig::new(&a.bucket, Vbid(a.vbucket), &a.from, &a.to, creds);
    cfg.timeout = Duration::from_secs(a.timeout);
    tokio::select! {
        r = move_vbucket(&cfg) => match r {
            Ok(report) => {
                line(&json!({
                    "ok": true,
                    "vbucket": a.vbucket,
                    "from": a.from,
                    "to": a.to,
                    "persisted_seqno": report.persisted_seqno.0,
                    "already_done": report.already_done,
                    "elapsed_ms": u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
                }));
                0
            }
            Err(e) => {
                error_line(&e);
                1
            }
        },
        _ = crate::node_cmd::wait_for_signal() => {
            error_line(&ReplError::Interrupted);
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vbucket_lists_parse_ranges_and_reject_nonsense() {
        assert_eq!(
            parse_vbuckets("0,1,5-9").expect("ok"),
            [0, 1, 5, 6, 7, 8, 9].into_iter().collect()
        );
        assert!(parse_vbuckets("").expect("empty is fine").is_empty());
        assert!(parse_vbuckets("9-5").is_err());
        assert!(parse_vbuckets("x").is_err());
        assert!(parse_vbuckets("70000").is_err());
    }
}
