//! One janitor pass (cluster.md §6): per bucket, make the map exist, read every
//! server's states, fix chains from them, and apply — every demotion on every node
//! before any promotion.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use tracing::{error, warn};

use super::actor::{now_rfc3339, read_view, transact_view, Actor};
use super::model::{bucket_key, last_balanced_key, map_key, put_map, ClusterView, NodeRecord};
use crate::agent::api::{ApplyRequest, Phase, PutBucket};
use crate::janitor::{apply_plan, fix_chains, Actual, NodeApply, VbCopy, VbState, Wanted};
use crate::map::{generate, Map, MapInput, NodeId, DEFAULT_TRIES};
use crate::rest::error::RestError;

/// Bound of creating a bucket on one node.
const CREATE_BOUND: Duration = Duration::from_secs(30);

fn jerr(kind: &str, bucket: &str, message: impl Into<String>) -> RestError {
    RestError::new(StatusCode::INTERNAL_SERVER_ERROR, kind, "_", message)
        .with("bucket", json!(bucket))
}

/// Runs the janitor over every bucket; buckets are independent. Records the result.
pub(super) async fn run_all(actor: &mut Actor) -> Result<(), RestError> {
    let view = match actor.refresh().await {
        Ok(v) => v,
        Err(e) => return record(actor, Err(e)),
    };
    let mut first_err = None;
    for name in view.buckets.keys() {
        if let Err(e) = bucket(actor, name).await {
            warn!(bucket = %name, error = %e.to_json(), "janitor pass failed");
            first_err.get_or_insert(e);
        }
    }
    record(actor, first_err.map_or(Ok(()), Err))
}

/// Runs the janitor over one bucket (bucket creation) and records the result.
pub(super) async fn run_one(actor: &mut Actor, name: &str) -> Result<(), RestError> {
    let r = bucket(actor, name).await;
    record(actor, r)
}

fn record(actor: &Actor, r: Result<(), RestError>) -> Result<(), RestError> {
    if let Ok(mut j) = actor.shared.janitor.lock() {
        j.last_run = Some(now_rfc3339());
        j.last_error = r.as_ref().err().map(RestError::to_json);
        j.passes += 1;
    }
    r
}

async fn bucket(actor: &mut Actor, name: &str) -> Result<(), RestError> {
    let view = read_view(actor.shared.store.as_ref()).await?;
    let Some(b) = view.buckets.get(name) else {
        return Ok(());
    };
    // 1. Servers must be active members; none yet: every active member.
    let active: Vec<String> = view.active_nodes().map(|n| n.name.clone()).collect();
    if let Some(bad) = b.record.servers.iter().find(|s| !active.contains(s)) {
        return Err(jerr(
            "corrupted_server_list",
            name,
            format!("bucket {name:?} lists server {bad} which is not an active member"),
        )
        .with("node", json!(bad)));
    }
    if b.record.servers.is_empty() {
        transact_view(actor.shared.store.as_ref(), |v| {
            let Some(b) = v.buckets.get(name) else {
                return Ok(None);
            };
            if !b.record.servers.is_empty() {
                return Ok(None);
            }
            let mut r = b.record.clone();
            r.servers = v.active_nodes().map(|n| n.name.clone()).collect();
            let op = crate::store::Op::put_json(bucket_key(name), &r)
                .map_err(|e| RestError::internal(e.to_string()))?;
            Ok(Some((
                vec![v.snapshot.unchanged(&bucket_key(name))],
                vec![op],
            )))
        })
        .await?;
    }
    // 2. No map yet: the initial map from an all-null one.
    if b.map.is_none() {
        initial_map(actor, name).await?;
    }
    let view = actor.refresh().await?;
    let Some(b) = view.buckets.get(name) else {
        return Ok(());
    };
    let servers: Vec<&NodeRecord> = b
        .record
        .servers
        .iter()
        .filter_map(|s| view.nodes.get(s))
        .collect();
    ensure_created(actor, &view, name, &servers).await?;
    // 3. Every server's actual states, in parallel.
    let actual = query(actor, &view, name, &servers).await?;
    let Some(map) = b.map.clone() else {
        return Ok(());
    };
    // 4. Chain rules.
    let fixed = fix_chains(&map, b.ff_map.as_ref(), &actual);
    for x in &fixed.extra_actives {
        error!(bucket = name, vb = x.vb, nodes = ?x.nodes, "several actives with the map's head among them; demoting the others");
    }
    if let Some(x) = fixed.several_actives.first() {
        let nodes: Vec<&str> = x.nodes.iter().map(|n| n.0.as_str()).collect();
        return Err(jerr(
            "several_actives",
            name,
            format!(
                "vbucket {} of {name:?} is active on {nodes:?}, none of them its map's head",
                x.vb
            ),
        )
        .with("vb", json!(x.vb))
        .with("nodes", json!(nodes)));
    }
    let map = if fixed.map == map {
        map
    } else {
        for f in &fixed.fixes {
            warn!(bucket = name, vb = f.vb, rule = ?f.rule, old = ?f.old, new = ?f.new, "janitor fixed a chain");
        }
        let old_map = map.clone();
        let new_map = fixed.map.clone();
        transact_view(actor.shared.store.as_ref(), |v| {
            let Some(cur) = v.buckets.get(name) else {
                return Ok(None);
            };
            if cur.map.as_ref() != Some(&old_map) {
                return Err(jerr(
                    "map_changed",
                    name,
                    "the map changed during the janitor pass",
                ));
            }
            let op = put_map(map_key(name), Some(&new_map))
                .map_err(|e| RestError::internal(e.to_string()))?;
            Ok(Some((vec![v.snapshot.unchanged(&map_key(name))], vec![op])))
        })
        .await?;
        actor.refresh().await?;
        fixed.map
    };
    // 5. Apply, phase by phase.
    let server_ids: Vec<NodeId> = servers.iter().map(|n| NodeId(n.name.clone())).collect();
    let plan = apply_plan(&map, &server_ids, &actual);
    apply(actor, &view, name, &servers, &plan).await
}

async fn initial_map(actor: &mut Actor, name: &str) -> Result<(), RestError> {
    let view = read_view(actor.shared.store.as_ref()).await?;
    let Some(b) = view.buckets.get(name) else {
        return Ok(());
    };
    let nodes: Vec<NodeId> = b.record.servers.iter().map(|s| NodeId(s.clone())).collect();
    let options = view.map_options(&b.record, &nodes);
    let current = Map::empty(usize::from(b.record.num_vbuckets), options.replicas);
    actor.seed = actor.seed.wrapping_add(1);
    let outcome = generate(&MapInput {
        current: &current,
        nodes: &nodes,
        groups: options.groups.as_ref(),
        replicas: options.replicas,
        max_slaves: options.max_slaves,
        last_balanced: None,
        seed: actor.seed,
        tries: DEFAULT_TRIES,
    })
    .map_err(|e| jerr("map_generation_failed", name, e.to_string()))?;
    let hash = options.hash();
    transact_view(actor.shared.store.as_ref(), |v| {
        let Some(cur) = v.buckets.get(name) else {
            return Ok(None);
        };
        if cur.map.is_some() {
            return Ok(None);
        }
        let mut rec = cur.record.clone();
        rec.map_opts_hash = hash;
        let ops = vec![
            put_map(map_key(name), Some(&outcome.map))
                .map_err(|e| RestError::internal(e.to_string()))?,
            put_map(last_balanced_key(name), Some(&outcome.map))
                .map_err(|e| RestError::internal(e.to_string()))?,
            crate::store::Op::put_json(bucket_key(name), &rec)
                .map_err(|e| RestError::internal(e.to_string()))?,
        ];
        Ok(Some((
            vec![
                v.snapshot.unchanged(&bucket_key(name)),
                v.snapshot.unchanged(&map_key(name)),
            ],
            ops,
        )))
    })
    .await?;
    Ok(())
}

/// Creates the bucket (all vbuckets dead) on every server that lacks it.
async fn ensure_created(
    actor: &Actor,
    view: &ClusterView,
    name: &str,
    servers: &[&NodeRecord],
) -> Result<(), RestError> {
    let Some(b) = view.buckets.get(name) else {
        return Ok(());
    };
    let calls = servers.iter().map(|n| {
        let client = actor.client(view, n);
        let req = PutBucket {
            vbuckets: b.record.num_vbuckets,
            ram_quota_mb: b.record.ram_quota_mb,
            uuid: b.record.uuid.clone(),
            cluster_config: actor.bucket_config_for(view, name, &n.name),
        };
        async move {
            match tokio::time::timeout(CREATE_BOUND, client.put_bucket(name, &req)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(jerr(
                    "bucket_create_failed",
                    name,
                    format!("creating bucket {name:?} on {}: {e}", n.name),
                )
                .with("node", json!(n.name))
                .with("cause", e.to_json())),
                Err(_) => Err(jerr(
                    "bucket_create_failed",
                    name,
                    format!(
                        "creating bucket {name:?} on {} took over {CREATE_BOUND:?}",
                        n.name
                    ),
                )
                .with("node", json!(n.name))),
            }
        }
    });
    futures::future::join_all(calls).await.into_iter().collect()
}

fn parse_state(s: &str) -> Option<VbState> {
    match s {
        "active" => Some(VbState::Active),
        "replica" => Some(VbState::Replica),
        "pending" => Some(VbState::Pending),
        "dead" => Some(VbState::Dead),
        _ => None,
    }
}

async fn query(
    actor: &Actor,
    view: &ClusterView,
    name: &str,
    servers: &[&NodeRecord],
) -> Result<Actual, RestError> {
    let bound = actor.shared.cfg.janitor_query_timeout;
    let calls = servers.iter().map(|n| {
        let client = actor.client(view, n);
        async move {
            let fail = |msg: String| {
                RestError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "janitor_query_failed",
                    "_",
                    msg,
                )
                .with("bucket", json!(name))
                .with("node", json!(n.name))
            };
            match tokio::time::timeout(bound, client.vbuckets(name)).await {
                Ok(Ok(report)) => {
                    let mut copies = BTreeMap::new();
                    for v in report.vbuckets {
                        if let Some(state) = parse_state(&v.state) {
                            copies.insert(
                                v.vb,
                                VbCopy {
                                    state,
                                    high_seqno: v.high_seqno,
                                },
                            );
                        }
                    }
                    Ok((NodeId(n.name.clone()), copies))
                }
                Ok(Err(e)) => Err(fail(format!(
                    "reading the vbuckets of {name:?} on {}: {e}",
                    n.name
                ))
                .with("cause", e.to_json())),
                Err(_) => Err(fail(format!(
                    "{} did not list the vbuckets of {name:?} within {bound:?}",
                    n.name
                ))),
            }
        }
    });
    futures::future::join_all(calls).await.into_iter().collect()
}

fn wanted_str(w: Wanted) -> &'static str {
    match w {
        Wanted::Active => "active",
        Wanted::Replica => "replica",
        Wanted::Dead => "dead",
    }
}

async fn apply(
    actor: &Actor,
    view: &ClusterView,
    name: &str,
    servers: &[&NodeRecord],
    plan: &BTreeMap<NodeId, NodeApply>,
) -> Result<(), RestError> {
    let bound = actor.shared.cfg.janitor_apply_timeout;
    for phase in [Phase::Demote, Phase::Promote, Phase::Replications] {
        let calls = servers.iter().filter_map(|n| {
            let work = plan
                .get(&NodeId(n.name.clone()))
                .cloned()
                .unwrap_or_default();
            let incoming: BTreeMap<String, Vec<u16>> = work
                .incoming
                .iter()
                .map(|(k, v)| (k.0.clone(), v.clone()))
                .collect();
            let req = match phase {
                Phase::Demote => ApplyRequest {
                    phase,
                    states: work
                        .demote
                        .iter()
                        .map(|(vb, w)| (*vb, wanted_str(*w).to_owned()))
                        .collect(),
                    incoming: Some(incoming),
                    timeout_ms: bound.as_millis() as u64,
                },
                Phase::Promote => {
                    if work.promote.is_empty() {
                        return None;
                    }
                    ApplyRequest {
                        phase,
                        states: work
                            .promote
                            .iter()
                            .map(|vb| (*vb, "active".to_owned()))
                            .collect(),
                        incoming: None,
                        timeout_ms: bound.as_millis() as u64,
                    }
                }
                Phase::Replications => ApplyRequest {
                    phase,
                    states: BTreeMap::new(),
                    incoming: Some(incoming),
                    timeout_ms: bound.as_millis() as u64,
                },
            };
            let client = actor.client(view, n);
            Some(async move {
                match client.apply(name, &req).await {
                    Ok(()) => Ok(()),
                    Err(e) => Err(RestError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "janitor_apply_failed",
                        "_",
                        format!(
                            "applying the {phase:?} phase of {name:?} on {}: {e}",
                            n.name
                        ),
                    )
                    .with("bucket", json!(name))
                    .with("node", json!(n.name))
                    .with("cause", e.to_json())),
                }
            })
        });
        let results: Vec<Result<(), RestError>> = futures::future::join_all(calls).await;
        results
            .into_iter()
            .collect::<Result<Vec<()>, RestError>>()?;
    }
    Ok(())
}
