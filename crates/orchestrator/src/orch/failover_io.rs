//! Hard failover and recovery marking (cluster.md §8.1, §8.4, §3.6), run by the
//! actor: every survivor stops replicating from the failed nodes first (never waiting
//! for them), high seqnos are read from the nodes at failover time, the new maps are
//! one transaction, then the janitor promotes and rewires and reachable failed nodes
//! are fenced.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::actor::{read_view, transact_view, Actor};
use super::janitor_pass;
use super::model::{bucket_key, ff_map_key, map_key, node_key, put_map, Membership, COUNTERS_KEY};
use crate::agent::api::StopNodesRequest;
use crate::failover::fail_over_map;
use crate::map::{Map, NodeId};
use crate::rest::error::RestError;
use crate::store::Op;

/// Bound of each survivor's stop-and-read (§8.1 step 2).
const QUERY_BOUND: Duration = Duration::from_secs(10);
/// Bound of fencing a failed node that still answers.
const FENCE_BOUND: Duration = Duration::from_secs(5);

/// Key of what a failed node held (delta recovery).
pub(super) fn failover_vbuckets_key(node: &str) -> String {
    format!("failover_vbuckets/{node}")
}

fn bad(kind: &str, message: impl Into<String>) -> RestError {
    RestError::new(StatusCode::BAD_REQUEST, kind, "otpNode", message)
}

/// §8.1: fails `nodes` over. `force` accepts losing every copy of some vbuckets.
pub(super) async fn hard_failover(
    actor: &mut Actor,
    nodes: &[String],
    force: bool,
    auto: bool,
) -> Result<Value, RestError> {
    let view = read_view(actor.shared.store.as_ref()).await?;
    if nodes.is_empty() {
        return Err(RestError::missing("otpNode"));
    }
    let failed: BTreeSet<String> = nodes.iter().cloned().collect();
    for n in &failed {
        let Some(rec) = view.nodes.get(n) else {
            return Err(bad("unknown_node", "Unknown server given.").with("node", json!(n)));
        };
        if rec.membership != Membership::Active {
            return Err(bad("inactive_node", "Inactive server given.").with("node", json!(n)));
        }
        if *n == view.cluster.orchestrator {
            return Err(bad(
                "orchestrator_immovable",
                "The orchestrator node cannot be failed over in this version.",
            )
            .with("node", json!(n)));
        }
    }
    if view.active_nodes().all(|n| failed.contains(&n.name)) {
        return Err(bad(
            "last_active_node",
            "Last active node cannot be failed over.",
        ));
    }
    for b in view.buckets.values() {
        if !b.record.servers.is_empty() && b.record.servers.iter().all(|s| failed.contains(s)) {
            return Err(bad(
                "last_server",
                format!(
                    "Last server for bucket {:?} cannot be failed over.",
                    b.record.name
                ),
            )
            .with("bucket", json!(b.record.name)));
        }
    }
    // Step 2: survivors stop replicating from the failed nodes, then report seqnos.
    let failed_ids: BTreeSet<NodeId> = failed.iter().map(|n| NodeId(n.clone())).collect();
    let mut outcomes: BTreeMap<String, (Map, Vec<u16>)> = BTreeMap::new();
    for (name, b) in &view.buckets {
        let Some(map) = &b.map else { continue };
        let survivors: Vec<_> = b
            .record
            .servers
            .iter()
            .filter(|s| !failed.contains(*s))
            .filter_map(|s| view.nodes.get(s))
            .collect();
        let calls = survivors.iter().map(|n| {
            let client = actor.client(&view, n);
            let req = StopNodesRequest {
                nodes: failed.iter().cloned().collect(),
            };
            async move {
                let work = async {
                    client.stop_nodes(name, &req).await?;
                    client.vbuckets(name).await
                };
                match tokio::time::timeout(QUERY_BOUND, work).await {
                    Ok(Ok(r)) => Ok((
                        NodeId(n.name.clone()),
                        r.vbuckets
                            .iter()
                            .map(|v| (v.vb, v.high_seqno))
                            .collect::<BTreeMap<u16, u64>>(),
                    )),
                    Ok(Err(e)) => Err(RestError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "failover_query_failed",
                        "_",
                        format!("{} did not answer the failover's query: {e}", n.name),
                    )
                    .with("node", json!(n.name))
                    .with("cause", e.to_json())),
                    Err(_) => Err(RestError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "failover_query_failed",
                        "_",
                        format!(
                            "{} did not answer the failover's query within {QUERY_BOUND:?}",
                            n.name
                        ),
                    )
                    .with("node", json!(n.name))),
                }
            }
        });
        let mut seqnos: BTreeMap<NodeId, BTreeMap<u16, u64>> = BTreeMap::new();
        for r in futures::future::join_all(calls).await {
            match r {
                Ok((node, s)) => {
                    seqnos.insert(node, s);
                }
                // An automatic failover already checked that every copy it needs is on
                // a healthy node; a survivor that is itself down is skipped (its copies
                // are never promoted: no seqno). A failover someone asked for refuses.
                Err(e) if auto => {
                    warn!(error = %e.to_json(), "a survivor did not answer; its copies are not promoted")
                }
                Err(e) => return Err(e),
            }
        }
        let out = fail_over_map(map, &failed_ids, &seqnos);
        if !out.lost.is_empty() && !force {
            return Err(RestError::new(StatusCode::BAD_REQUEST, "failover_would_lose_data", "_", format!("failing over {failed:?} would lose every copy of {} vbucket(s) of {name:?}; use force to accept", out.lost.len()))
                .with("bucket", json!(name))
                .with("vbuckets", json!(out.lost)));
        }
        outcomes.insert(name.clone(), (out.map, out.lost));
    }
    // Step 5: one transaction.
    let lost_any = outcomes.values().any(|(_, l)| !l.is_empty());
    transact_view(actor.shared.store.as_ref(), |v| {
        let mut checks = vec![];
        let mut ops = vec![];
        for n in &failed {
            let Some(rec) = v.nodes.get(n) else {
                return Err(bad("unknown_node", "Unknown server given."));
            };
            if rec.membership != Membership::Active {
                return Err(bad("inactive_node", "Inactive server given."));
            }
            checks.push(v.snapshot.unchanged(&node_key(n)));
            let mut rec = rec.clone();
            rec.membership = Membership::InactiveFailed;
            rec.recovery_type = "none".to_owned();
            ops.push(Op::put_json(node_key(n), &rec).map_err(|e| RestError::internal(e.to_string()))?);
            let mut held = serde_json::Map::new();
            for (bname, b) in &v.buckets {
                let Some(map) = &b.map else { continue };
                let id = NodeId(n.clone());
                let vbs: Vec<usize> = map.chains().iter().enumerate().filter(|(_, c)| c.iter().flatten().any(|x| *x == id)).map(|(i, _)| i).collect();
                if !vbs.is_empty() {
                    held.insert(bname.clone(), json!({"uuid": b.record.uuid, "vbuckets": vbs, "replicas": b.record.num_replicas}));
                }
            }
            ops.push(Op::put_json(failover_vbuckets_key(n), &Value::Object(held)).map_err(|e| RestError::internal(e.to_string()))?);
        }
        for (bname, (map, _)) in &outcomes {
            let Some(b) = v.buckets.get(bname) else { continue };
            checks.push(v.snapshot.unchanged(&map_key(bname)));
            checks.push(v.snapshot.unchanged(&bucket_key(bname)));
            let mut rec = b.record.clone();
            rec.servers.retain(|s| !failed.contains(s));
            ops.push(Op::put_json(bucket_key(bname), &rec).map_err(|e| RestError::internal(e.to_string()))?);
            ops.push(put_map(map_key(bname), Some(map)).map_err(|e| RestError::internal(e.to_string()))?);
            ops.push(put_map(ff_map_key(bname), None).map_err(|e| RestError::internal(e.to_string()))?);
        }
        let mut counters = v.counters.clone();
        counters.failover += failed.len() as u64;
        if auto {
            counters.auto_failover_count += failed.len() as u64;
        }
        if lost_any {
            counters.unsafe_failovers += 1;
        }
        ops.push(Op::put_json(COUNTERS_KEY, &counters).map_err(|e| RestError::internal(e.to_string()))?);
        Ok(Some((checks, ops)))
    })
    .await?;
    info!(nodes = ?failed, force, auto, "failed over");
    let view = actor.refresh().await?;
    actor.push_address_book(&view).await;
    // Step 6: the janitor promotes and rewires; reachable failed nodes are fenced.
    if let Err(e) = janitor_pass::run_all(actor).await {
        warn!(error = %e.to_json(), "the janitor pass after the failover failed; the next one retries");
    }
    for n in &failed {
        if let Some(rec) = view.nodes.get(n) {
            let client = actor.client(&view, rec);
            if let Ok(Err(e)) = tokio::time::timeout(FENCE_BOUND, client.fence()).await {
                info!(node = %n, error = %e, "the failed node could not be fenced (it may be down)");
            }
        }
    }
    let lost: BTreeMap<&String, &Vec<u16>> = outcomes
        .iter()
        .filter(|(_, (_, l))| !l.is_empty())
        .map(|(b, (_, l))| (b, l))
        .collect();
    Ok(json!({"failedOver": failed, "lost": lost}))
}

/// `POST /controller/setRecoveryType` (§8.4): an `inactiveFailed` node becomes
/// `inactiveAdded` with `delta` or `full`; the next rebalance brings it back.
pub(super) async fn set_recovery_type(
    actor: &Actor,
    node: &str,
    kind: &str,
) -> Result<Value, RestError> {
    if kind != "delta" && kind != "full" {
        return Err(RestError::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "recoveryType",
            "recovery type must be either 'delta' or 'full'",
        ));
    }
    transact_view(actor.shared.store.as_ref(), |v| {
        let Some(rec) = v.nodes.get(node).filter(|r| {
            r.membership == Membership::InactiveFailed
                || (r.membership == Membership::InactiveAdded && r.recovery_type != "none")
        }) else {
            return Err(RestError::new(
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                "otpNode",
                "invalid node name or node can't be used for delta recovery",
            ));
        };
        let mut rec = rec.clone();
        rec.membership = Membership::InactiveAdded;
        rec.recovery_type = kind.to_owned();
        Ok(Some((
            vec![v.snapshot.unchanged(&node_key(node))],
            vec![Op::put_json(node_key(node), &rec)
                .map_err(|e| RestError::internal(e.to_string()))?],
        )))
    })
    .await?;
    actor.refresh().await?;
    Ok(json!([]))
}

/// `POST /controller/reFailOver`: a node marked for recovery goes back to failed.
pub(super) async fn re_fail_over(actor: &Actor, node: &str) -> Result<Value, RestError> {
    transact_view(actor.shared.store.as_ref(), |v| {
        let Some(rec) = v
            .nodes
            .get(node)
            .filter(|r| r.membership == Membership::InactiveAdded && r.recovery_type != "none")
        else {
            return Err(RestError::new(
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                "otpNode",
                "the node is not marked for recovery",
            ));
        };
        let mut rec = rec.clone();
        rec.membership = Membership::InactiveFailed;
        rec.recovery_type = "none".to_owned();
        Ok(Some((
            vec![v.snapshot.unchanged(&node_key(node))],
            vec![Op::put_json(node_key(node), &rec)
                .map_err(|e| RestError::internal(e.to_string()))?],
        )))
    })
    .await?;
    actor.refresh().await?;
    Ok(json!({}))
}

/// §8.2: validates a graceful failover of `node` and builds its run: a rebalance
/// whose target moves the node to the tail of every chain (takeovers to replicas that
/// already hold the data), then the hard failover.
pub(super) async fn graceful_plan(
    actor: &Actor,
    node: &str,
) -> Result<super::rebalance::Plan, RestError> {
    let view = read_view(actor.shared.store.as_ref()).await?;
    let Some(rec) = view.nodes.get(node) else {
        return Err(bad("unknown_node", "Unknown server given."));
    };
    if rec.membership != Membership::Active {
        return Err(bad("inactive_node", "Inactive server given."));
    }
    if node == view.cluster.orchestrator {
        return Err(bad(
            "orchestrator_immovable",
            "The orchestrator node cannot be failed over in this version.",
        ));
    }
    let id = NodeId(node.to_owned());
    for (name, b) in &view.buckets {
        let not_graceful = |msg: String| {
            RestError::new(StatusCode::BAD_REQUEST, "not_graceful", "otpNode", msg)
                .with("bucket", json!(name))
        };
        if b.record.num_replicas == 0 {
            return Err(not_graceful(format!("Failover cannot be done gracefully (would lose vbuckets): bucket {name:?} has no replicas.")));
        }
        if let Some(map) = &b.map {
            if let Err(vbs) = crate::failover::graceful_possible(map, &id) {
                return Err(not_graceful(
                    "Failover cannot be done gracefully (would lose vbuckets).".to_owned(),
                )
                .with("vbuckets", json!(vbs)));
            }
        }
    }
    let client = actor.client(&view, rec);
    if !matches!(
        tokio::time::timeout(QUERY_BOUND, client.health()).await,
        Ok(Ok(_))
    ) {
        return Err(RestError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "nodes_unreachable",
            "_",
            format!("Cannot contact {node}: a graceful failover needs it healthy"),
        )
        .with("nodes", json!([node])));
    }
    let known: Vec<String> = view.nodes.keys().cloned().collect();
    let keep: Vec<String> = view.active_nodes().map(|n| n.name.clone()).collect();
    Ok(super::rebalance::Plan {
        id: super::actor::random_hex(),
        kind: "gracefulFailover".to_owned(),
        known,
        keep,
        eject: vec![],
        added: vec![],
        started: super::actor::now_rfc3339(),
        attempt: 1,
        graceful: Some(node.to_owned()),
    })
}
