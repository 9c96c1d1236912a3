//! The data-moving rebalance (cluster.md §5.1, §5.5–§5.7, §5.9): one task per run,
//! started by the actor, which meanwhile answers other requests `busy` and keeps
//! the stop token. Buckets one at a time; per bucket the fast-forward map, the plan,
//! the scheduler and the moves through the agents; every wait bounded; the first
//! failure (a move, a node down, a bucket not ready, a janitor pass, bad replicas)
//! cancels the rest and ends the run with one typed error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::actor::{now_rfc3339, read_view, transact_view, Actor, REV_EPOCH};
use super::janitor_pass;
use super::model::{
    bucket_key, ff_map_key, last_balanced_key, map_key, node_key, put_map, ClusterView, Membership,
    COUNTERS_KEY, REBALANCE_STATUS_KEY,
};
use super::one_move::{
    run_move, Commit, MoveBounds, MoveCtx, MoveError, MoveEvent, MoveNode, Step,
};
use super::{cluster_dir, Shared};
use crate::map::{
    fast_forward, incoming_replications, plan, Map, MapInput, Move, NodeId, DEFAULT_TRIES,
};
use crate::progress::{between_buckets, overall_of, BucketProgress, MoveState};
use crate::rest::error::RestError;
use crate::schedule::{Limits, Scheduler};
use crate::store::Op;

/// Key of the rebalance settings.
pub(super) const SETTINGS_KEY: &str = "settings/rebalance";
/// How long a node may miss heartbeats before the rebalance fails (§11).
const NODE_DOWN_AFTER: Duration = Duration::from_secs(5);
/// Bound of the wait for a bucket to be ready on every keep node (§5.1 a).
const BUCKET_READY: Duration = Duration::from_secs(60);
/// Bound of one agent call of the run's own (leave, health).
const AGENT_CALL: Duration = Duration::from_secs(10);
/// Reports kept (§5.9).
const REPORTS_KEPT: usize = 5;

/// `settings/rebalance` (§3.5, §11), seconds except the moves per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RebalanceSettings {
    /// Backfills per node, 1–64.
    pub rebalance_moves_per_node: u32,
    /// Data-move stall bound, 10–3600.
    pub move_stall_timeout: u64,
    /// Persistence wait bound, 10–3600.
    pub persistence_timeout: u64,
    /// Takeover bound, 10–3600.
    pub takeover_timeout: u64,
    /// Wait before leaving nodes are ejected, 0–300.
    pub rebalance_out_delay: u64,
    /// Stop grace period, 1–60.
    pub stop_grace_period: u64,
}

impl Default for RebalanceSettings {
    fn default() -> Self {
        RebalanceSettings {
            rebalance_moves_per_node: 4,
            move_stall_timeout: 300,
            persistence_timeout: 300,
            takeover_timeout: 300,
            rebalance_out_delay: 10,
            stop_grace_period: 10,
        }
    }
}

impl RebalanceSettings {
    fn bounds(&self) -> MoveBounds {
        MoveBounds {
            data_move_stall: Duration::from_secs(self.move_stall_timeout),
            persistence: Duration::from_secs(self.persistence_timeout),
            takeover: Duration::from_secs(self.takeover_timeout),
            ..MoveBounds::default()
        }
    }
}

/// The settings stored, or the defaults.
pub(super) fn settings_of(view: &ClusterView) -> RebalanceSettings {
    view.snapshot
        .get(SETTINGS_KEY)
        .and_then(|e| e.json::<RebalanceSettings>().ok())
        .unwrap_or_default()
}

/// What REST shows of the current (or last) rebalance.
#[derive(Debug, Default)]
pub(crate) struct Live {
    /// The running one.
    pub(crate) running: Option<LiveRun>,
    /// The last run's error (typed), shown until the next start.
    pub(crate) last_error: Option<Value>,
    /// The last report's id.
    pub(crate) last_report: Option<String>,
    /// Why the orchestrator (not a user) stopped the running rebalance: a run that
    /// ends stopped with this set ends failed with it (e.g. `auto_failover`).
    pub(crate) stop_reason: Option<Value>,
}

/// A running rebalance, as REST sees it.
#[derive(Debug)]
pub(crate) struct LiveRun {
    pub(crate) id: String,
    pub(crate) kind: String,
    pub(crate) stopping: bool,
    pub(crate) nodes: Vec<NodeId>,
    pub(crate) bucket_index: usize,
    pub(crate) bucket_count: usize,
    pub(crate) bucket: Option<String>,
    pub(crate) progress: Option<BucketProgress>,
    pub(crate) started: Instant,
}

impl LiveRun {
    /// Per node fraction 0–1.
    pub(crate) fn per_node(&self) -> BTreeMap<NodeId, f64> {
        match &self.progress {
            Some(p) => p.per_node(),
            None => between_buckets(&self.nodes, self.bucket_index, self.bucket_count.max(1)),
        }
    }

    /// The `/pools/default/tasks` entry of a running rebalance (§3.5).
    pub(crate) fn task_json(&self) -> Value {
        let per_node = self.per_node();
        let overall = overall_of(&per_node) * 100.0;
        let per: serde_json::Map<String, Value> = per_node
            .iter()
            .map(|(n, p)| (n.0.clone(), json!({"progress": p * 100.0})))
            .collect();
        let now_ms = self.started.elapsed().as_millis() as u64;
        let mut t = json!({
            "type": "rebalance",
            "subtype": self.kind,
            "status": "running",
            "statusId": self.id,
            "recommendedRefreshPeriod": 0.25,
            "progress": overall,
            "perNode": per,
            "stopping": self.stopping,
        });
        if let Some(p) = &self.progress {
            t["moves"] = p.moves_json();
            let mut d = p.detailed_json(now_ms);
            d["bucket"] = json!(self.bucket);
            d["bucketNumber"] = json!(self.bucket_index + 1);
            d["bucketsCount"] = json!(self.bucket_count);
            t["detailedProgress"] = d;
        }
        t
    }
}

/// One run's inputs.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub(super) id: String,
    pub(super) kind: String,
    pub(super) known: Vec<String>,
    pub(super) keep: Vec<String>,
    pub(super) eject: Vec<String>,
    pub(super) added: Vec<String>,
    pub(super) started: String,
    /// 1 for a rebalance someone asked for; 2… for automatic retries (§5.8).
    pub(super) attempt: u32,
    /// A graceful failover of this node (§8.2): its actives move to replicas by
    /// takeover, then it is failed over.
    pub(super) graceful: Option<String>,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub(super) enum End {
    Done,
    Stopped,
    Failed(Value),
}

fn fail(kind: &str, message: impl Into<String>, fields: Value) -> Value {
    let mut v = json!({"kind": kind, "message": message.into()});
    if let (Some(o), Value::Object(f)) = (v.as_object_mut(), fields) {
        o.extend(f);
    }
    v
}

fn from_rest(e: &RestError) -> Value {
    e.to_json()
        .as_object()
        .map(|o| {
            let mut v = serde_json::Map::new();
            for (k, val) in o {
                if k != "errors" {
                    v.insert(k.clone(), val.clone());
                }
            }
            Value::Object(v)
        })
        .unwrap_or_else(|| json!({"kind": "internal", "message": e.message}))
}

/// The rebalance type (§5.1 step 2).
pub(super) fn kind_of(added: usize, ejected: usize) -> &'static str {
    match (added, ejected) {
        (a, e) if a > 0 && a == e => "swap_rebalance",
        (a, 0) if a > 0 => "node_addition",
        (0, e) if e > 0 => "node_removal",
        _ => "rebalance",
    }
}

/// Per-move record for the report.
#[derive(Debug, Clone)]
struct MoveRecord {
    vb: u16,
    before: Vec<Option<String>>,
    after: Vec<Option<String>>,
    state: &'static str,
    started: Option<(String, Instant)>,
    ended: Option<(String, Instant)>,
    error: Option<Value>,
}

#[derive(Debug, Default)]
struct BucketReport {
    started: Option<(String, Instant)>,
    ended: Option<Instant>,
    plan: Value,
    moves: Vec<MoveRecord>,
}

/// Everything the run learns for its report.
#[derive(Debug, Default)]
struct Report {
    buckets: BTreeMap<String, BucketReport>,
}

fn chain_names(c: &[Option<NodeId>]) -> Vec<Option<String>> {
    c.iter().map(|n| n.as_ref().map(|n| n.0.clone())).collect()
}

fn step_state(step: Step) -> MoveState {
    match step {
        Step::Promote | Step::Build => MoveState::Building,
        Step::DataMove => MoveState::Backfilling,
        Step::Persistence => MoveState::Persisting,
        Step::Takeover | Step::CloseStreams => MoveState::Takeover,
        Step::Commit => MoveState::Committing,
        Step::Replicate | Step::Cleanup => MoveState::Cleanup,
    }
}

/// Commits one move's chain and pushes the configs (§5.3 steps 8–9). Commits of one
/// bucket are serialised, so they never conflict with each other.
struct MapCommit {
    shared: Arc<Shared>,
    bucket: String,
    serial: tokio::sync::Mutex<()>,
}

#[async_trait::async_trait]
impl Commit for MapCommit {
    async fn commit(&self, vb: u16, new_chain: &[Option<String>]) -> Result<(), RestError> {
        let _serial = self.serial.lock().await;
        let chain: Vec<Option<NodeId>> = new_chain.iter().map(|n| n.clone().map(NodeId)).collect();
        let bucket = self.bucket.clone();
        transact_view(self.shared.store.as_ref(), |v| {
            let Some(b) = v.buckets.get(&bucket) else {
                return Err(RestError::new(
                    StatusCode::CONFLICT,
                    "bucket_deleted",
                    "_",
                    format!("bucket {bucket:?} was deleted during its rebalance"),
                ));
            };
            let Some(mut map) = b.map.clone() else {
                return Err(RestError::internal(format!("bucket {bucket:?} has no map")));
            };
            if map.chain(usize::from(vb)) == Some(&chain) {
                return Ok(None);
            }
            let takes_over = map.chain(usize::from(vb)).and_then(|c| c.first().cloned())
                != chain.first().cloned();
            if takes_over
                && self.shared.cfg.fail_first_takeover_commit
                && !self
                    .shared
                    .hook_fired
                    .swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                return Err(RestError::internal(format!(
                    "test hook: the commit of vbucket {vb} fails after its takeover"
                )));
            }
            map.set_chain(usize::from(vb), chain.clone());
            let op = put_map(map_key(&bucket), Some(&map))
                .map_err(|e| RestError::internal(e.to_string()))?;
            Ok(Some((
                vec![v.snapshot.unchanged(&map_key(&bucket))],
                vec![op],
            )))
        })
        .await?;
        let actor = Actor {
            shared: self.shared.clone(),
            seed: 0,
        };
        actor.refresh().await?;
        let rev = self.shared.config_rev(&self.bucket).unwrap_or(0);
        for node in new_chain.iter().flatten() {
            if !self
                .shared
                .uploaders
                .wait_acked(node, &self.bucket, (REV_EPOCH, rev), Duration::from_secs(5))
                .await
            {
                warn!(bucket = %self.bucket, vb, node = %node, rev, "the node did not acknowledge the new config within 5 s (the uploader keeps trying)");
            }
        }
        Ok(())
    }
}

/// Runs one rebalance to its end.
pub(super) async fn run(shared: Arc<Shared>, plan: Plan, stop: CancellationToken) -> End {
    let started_at = Instant::now();
    let mut report = Report::default();
    let end = run_inner(&shared, &plan, &stop, &mut report).await;
    let end = match end {
        Ok(()) if stop.is_cancelled() => End::Stopped,
        Ok(()) => End::Done,
        Err(RunError::Stopped) => End::Stopped,
        Err(RunError::Failed(v)) => End::Failed(v),
    };
    let reason = shared
        .live
        .lock()
        .ok()
        .and_then(|mut l| l.stop_reason.take());
    let end = match (end, reason) {
        (End::Stopped, Some(reason)) => End::Failed(reason),
        (end, _) => end,
    };
    let report_id = write_report(&shared, &plan, &end, &report, started_at).await;
    if let Ok(mut live) = shared.live.lock() {
        live.running = None;
        live.last_report = report_id;
        live.last_error = match &end {
            End::Failed(v) => Some(v.clone()),
            _ => None,
        };
    }
    end
}

enum RunError {
    Stopped,
    Failed(Value),
}

impl From<RestError> for RunError {
    fn from(e: RestError) -> Self {
        RunError::Failed(from_rest(&e))
    }
}

fn set_live(shared: &Shared, f: impl FnOnce(&mut LiveRun)) {
    if let Ok(mut live) = shared.live.lock() {
        if let Some(r) = live.running.as_mut() {
            f(r);
        }
    }
}

async fn run_inner(
    shared: &Arc<Shared>,
    plan: &Plan,
    stop: &CancellationToken,
    report: &mut Report,
) -> Result<(), RunError> {
    let mut actor = Actor {
        shared: shared.clone(),
        seed: 0,
    };
    let view = read_view(shared.store.as_ref()).await?;
    let settings = settings_of(&view);
    let keep_ids: Vec<NodeId> = plan.keep.iter().map(|n| NodeId(n.clone())).collect();
    // §5.1 step 3, recovery: full-recovery nodes lose their buckets first.
    for n in view
        .nodes
        .values()
        .filter(|n| n.membership == Membership::InactiveAdded && n.recovery_type == "full")
    {
        let client = actor.client(&view, n);
        for b in view.buckets.keys() {
            match tokio::time::timeout(AGENT_CALL * 3, client.delete_bucket(b)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.refused_kind() == Some("no_such_bucket") => {}
                Ok(Err(e)) => {
                    return Err(RunError::Failed(fail(
                        "agent_call_failed",
                        format!(
                            "deleting bucket {b:?} on {} for its full recovery: {e}",
                            n.name
                        ),
                        json!({"node": n.name, "route": "DELETE /agent/v1/buckets", "cause": e.to_json()}),
                    )))
                }
                Err(_) => {
                    return Err(RunError::Failed(fail(
                        "agent_call_failed",
                        format!("deleting bucket {b:?} on {} timed out", n.name),
                        json!({"node": n.name}),
                    )))
                }
            }
        }
    }
    let delta: Vec<(String, Value)> = view
        .nodes
        .values()
        .filter(|n| n.membership == Membership::InactiveAdded && n.recovery_type == "delta")
        .map(|n| {
            let held = view
                .snapshot
                .get(&super::failover_io::failover_vbuckets_key(&n.name))
                .and_then(|e| e.json::<Value>().ok())
                .unwrap_or(Value::Null);
            (n.name.clone(), held)
        })
        .collect();
    // Added nodes become active members first, so they can be bucket servers.
    let added: BTreeSet<String> = plan.added.iter().cloned().collect();
    if !added.is_empty() {
        transact_view(shared.store.as_ref(), |v| {
            let mut checks = vec![];
            let mut ops = vec![];
            for n in v
                .nodes
                .values()
                .filter(|n| added.contains(&n.name) && n.membership != Membership::Active)
            {
                let mut n = n.clone();
                n.membership = Membership::Active;
                n.recovery_type = "none".to_owned();
                checks.push(v.snapshot.unchanged(&node_key(&n.name)));
                ops.push(
                    Op::put_json(node_key(&n.name), &n)
                        .map_err(|e| RestError::internal(e.to_string()))?,
                );
            }
            Ok((!ops.is_empty()).then_some((checks, ops)))
        })
        .await?;
        actor.refresh().await?;
    }
    // Delta recovery (§8.4): each node goes back into the first null slot of every
    // chain it held, as a server; the janitor pass of the bucket loop makes those
    // copies replicas that catch up from their own seqnos.
    for (node, held) in &delta {
        for (bucket, info) in held.as_object().into_iter().flatten() {
            let vbs: Vec<u16> = info["vbuckets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_u64().and_then(|v| u16::try_from(v).ok()))
                .collect();
            let uuid = info["uuid"].as_str().unwrap_or_default().to_owned();
            let replicas = info["replicas"].as_u64();
            let id = NodeId(node.clone());
            transact_view(shared.store.as_ref(), |v| {
                let Some(b) = v.buckets.get(bucket) else { return Ok(None) };
                if b.record.uuid != uuid || replicas.is_some_and(|r| r != u64::from(b.record.num_replicas)) {
                    return Err(RestError::new(StatusCode::BAD_REQUEST, "delta_recovery_not_possible", "_", format!("bucket {bucket:?} changed since {node} failed over")).with("node", json!(node)).with("bucket", json!(bucket)).with("reason", json!("bucket re-created or replica count changed")));
                }
                let Some(map) = &b.map else { return Ok(None) };
                let (tmap, not_placed) = crate::failover::delta_transitional_map(map, &id, &vbs);
                if !not_placed.is_empty() {
                    info!(node = %node, bucket = %bucket, ?not_placed, "delta recovery: some vbuckets have no free slot and will be built by the rebalance");
                }
                let mut rec = b.record.clone();
                if !rec.servers.contains(node) {
                    rec.servers.push(node.clone());
                    rec.servers.sort();
                }
                Ok(Some((
                    vec![v.snapshot.unchanged(&map_key(bucket)), v.snapshot.unchanged(&bucket_key(bucket))],
                    vec![
                        put_map(map_key(bucket), Some(&tmap)).map_err(|e| RestError::internal(e.to_string()))?,
                        Op::put_json(bucket_key(bucket), &rec).map_err(|e| RestError::internal(e.to_string()))?,
                    ],
                )))
            })
            .await?;
        }
        info!(node = %node, "delta recovery: transitional maps committed");
    }
    // Recovered nodes' failover records go; failed-over nodes not recovered leave.
    let failed: Vec<String> = view
        .nodes
        .values()
        .filter(|n| n.membership == Membership::InactiveFailed)
        .map(|n| n.name.clone())
        .collect();
    for name in &failed {
        if let Some(n) = view.nodes.get(name) {
            let client = actor.client(&view, n);
            let _ = tokio::time::timeout(AGENT_CALL, client.leave()).await;
        }
    }
    let recovered: Vec<String> = view
        .nodes
        .values()
        .filter(|n| n.recovery_type != "none")
        .map(|n| n.name.clone())
        .collect();
    transact_view(shared.store.as_ref(), |v| {
        let mut ops = vec![];
        for n in &failed {
            if v.nodes.contains_key(n) {
                ops.push(Op::delete(node_key(n)));
            }
            ops.push(Op::delete(super::failover_io::failover_vbuckets_key(n)));
        }
        for n in &recovered {
            ops.push(Op::delete(super::failover_io::failover_vbuckets_key(n)));
        }
        Ok((!ops.is_empty()).then_some((vec![], ops)))
    })
    .await?;
    actor.refresh().await?;
    let buckets: Vec<String> = view.buckets.keys().cloned().collect();
    set_live(shared, |r| r.bucket_count = buckets.len());
    for (index, bucket) in buckets.iter().enumerate() {
        if stop.is_cancelled() {
            return Err(RunError::Stopped);
        }
        set_live(shared, |r| {
            r.bucket_index = index;
            r.bucket = Some(bucket.clone());
            r.progress = None;
        });
        rebalance_bucket(
            &mut actor,
            plan,
            &settings,
            &keep_ids,
            bucket,
            index,
            buckets.len(),
            stop,
            report,
        )
        .await?;
    }
    set_live(shared, |r| {
        r.bucket_index = buckets.len();
        r.progress = None;
    });
    // A graceful failover ends with the hard failover, which now only drops tails.
    if let Some(node) = &plan.graceful {
        if stop.is_cancelled() {
            return Err(RunError::Stopped);
        }
        super::failover_io::hard_failover(&mut actor, std::slice::from_ref(node), false, false)
            .await?;
        return Ok(());
    }
    // Leaving nodes hold nothing now: they leave and are forgotten.
    let view = read_view(shared.store.as_ref()).await?;
    for name in &plan.eject {
        if let Some(n) = view.nodes.get(name) {
            let client = actor.client(&view, n);
            match tokio::time::timeout(AGENT_CALL * 3, client.leave()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(node = %name, error = %e, "the ejected node did not leave cleanly")
                }
                Err(_) => warn!(node = %name, "the ejected node did not answer leave in time"),
            }
        }
    }
    let eject: BTreeSet<String> = plan.eject.iter().cloned().collect();
    transact_view(shared.store.as_ref(), |v| {
        let mut checks = vec![];
        let mut ops = vec![];
        for n in v.nodes.values() {
            if eject.contains(&n.name) {
                checks.push(v.snapshot.unchanged(&node_key(&n.name)));
                ops.push(Op::delete(node_key(&n.name)));
            }
        }
        Ok((!ops.is_empty()).then_some((checks, ops)))
    })
    .await?;
    let view = actor.refresh().await?;
    actor.push_address_book(&view).await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn rebalance_bucket(
    actor: &mut Actor,
    plan: &Plan,
    settings: &RebalanceSettings,
    keep: &[NodeId],
    bucket: &str,
    index: usize,
    count: usize,
    stop: &CancellationToken,
    report: &mut Report,
) -> Result<(), RunError> {
    let shared = actor.shared.clone();
    let breport = report.buckets.entry(bucket.to_owned()).or_default();
    breport.started = Some((now_rfc3339(), Instant::now()));
    // b. servers := servers ∪ keep.
    let keep_names: Vec<String> = keep.iter().map(|n| n.0.clone()).collect();
    transact_view(shared.store.as_ref(), |v| {
        let Some(b) = v.buckets.get(bucket) else {
            return Ok(None);
        };
        let mut servers: BTreeSet<String> = b.record.servers.iter().cloned().collect();
        let before = servers.len();
        servers.extend(keep_names.iter().cloned());
        if servers.len() == before {
            return Ok(None);
        }
        let mut r = b.record.clone();
        r.servers = servers.into_iter().collect();
        let op =
            Op::put_json(bucket_key(bucket), &r).map_err(|e| RestError::internal(e.to_string()))?;
        Ok(Some((
            vec![v.snapshot.unchanged(&bucket_key(bucket))],
            vec![op],
        )))
    })
    .await?;
    actor.refresh().await?;
    // c. A janitor pass: creates the bucket on new servers and applies states.
    if let Err(e) = janitor_pass::run_one(actor, bucket).await {
        return Err(RunError::Failed(fail(
            "pre_rebalance_janitor_failed",
            format!(
                "the janitor pass before rebalancing {bucket:?} failed: {}",
                e.message
            ),
            json!({"bucket": bucket, "cause": from_rest(&e)}),
        )));
    }
    // a. Every keep node serves it (bounded).
    wait_ready(actor, bucket, keep, stop).await?;
    // d. The fast-forward map.
    let view = read_view(shared.store.as_ref()).await?;
    let Some(b) = view.buckets.get(bucket) else {
        return Ok(());
    };
    let Some(map) = b.map.clone() else {
        return Err(RunError::Failed(fail(
            "pre_rebalance_janitor_failed",
            format!("bucket {bucket:?} has no map"),
            json!({"bucket": bucket}),
        )));
    };
    let options = view.map_options(&b.record, keep);
    let r = options.replicas;
    actor.seed = actor.seed.wrapping_add(1);
    let outcome = if let Some(node) = &plan.graceful {
        let target = crate::failover::graceful_target(&map, &NodeId(node.clone()));
        let score = crate::map::score(&map, &target);
        crate::map::MapOutcome {
            map: target,
            score,
            from_history: false,
        }
    } else {
        fast_forward(&MapInput {
            current: &map,
            nodes: keep,
            groups: options.groups.as_ref(),
            replicas: r,
            max_slaves: options.max_slaves,
            last_balanced: b.last_balanced.as_ref(),
            seed: actor.seed,
            tries: DEFAULT_TRIES,
        })
        .map_err(|e| {
            RunError::Failed(fail(
                "map_generation_failed",
                e.to_string(),
                json!({"bucket": bucket}),
            ))
        })?
    };
    let target = outcome.map.clone();
    let graceful = plan.graceful.is_some();
    {
        let t = target.clone();
        transact_view(shared.store.as_ref(), |v| {
            let Some(cur) = v.buckets.get(bucket) else {
                return Ok(None);
            };
            if cur.ff_map.as_ref() == Some(&t)
                && (graceful || cur.last_balanced.as_ref() == Some(&t))
            {
                return Ok(None);
            }
            let mut ops = vec![put_map(ff_map_key(bucket), Some(&t))
                .map_err(|e| RestError::internal(e.to_string()))?];
            // A graceful failover's target is no balanced layout to come back to.
            if !graceful {
                ops.push(
                    put_map(last_balanced_key(bucket), Some(&t))
                        .map_err(|e| RestError::internal(e.to_string()))?,
                );
            }
            Ok(Some((vec![v.snapshot.unchanged(&map_key(bucket))], ops)))
        })
        .await?;
    }
    actor.refresh().await?;
    // e. Plan and moves.
    let moves = plan_moves(&map, &target, bucket)?;
    info!(rebalance = %plan.id, bucket, moves = moves.len(), copies = outcome.score.copies_to_build, takeovers = outcome.score.active_changes, "rebalancing bucket");
    breport.plan = json!({"moves": moves.len(), "copiesToBuild": outcome.score.copies_to_build, "activeChanges": outcome.score.active_changes});
    breport.moves = moves
        .iter()
        .map(|m| MoveRecord {
            vb: m.vb.0,
            before: chain_names(&m.old),
            after: chain_names(&m.new),
            state: "pending",
            started: None,
            ended: None,
            error: None,
        })
        .collect();
    let mut nodes: BTreeSet<NodeId> = keep.iter().cloned().collect();
    nodes.extend(plan.eject.iter().map(|n| NodeId(n.clone())));
    let nodes: Vec<NodeId> = nodes.into_iter().collect();
    set_live(&shared, |r| {
        r.progress = Some(BucketProgress::new(bucket, index, count, &moves, &nodes))
    });
    run_moves(actor, settings, bucket, moves, stop, breport).await?;
    // f. Leaving nodes: clients move on by pushed configs, not closed sockets.
    if (!plan.eject.is_empty() || graceful) && settings.rebalance_out_delay > 0 {
        tokio::select! {
            () = stop.cancelled() => return Err(RunError::Stopped),
            () = tokio::time::sleep(Duration::from_secs(settings.rebalance_out_delay)) => {}
        }
    }
    // g. The bucket's servers are the keep nodes; no fast-forward map.
    let hash = options.hash();
    transact_view(shared.store.as_ref(), |v| {
        let Some(b) = v.buckets.get(bucket) else {
            return Ok(None);
        };
        let mut rec = b.record.clone();
        rec.servers = keep_names.clone();
        rec.map_opts_hash = hash;
        let ops = vec![
            Op::put_json(bucket_key(bucket), &rec)
                .map_err(|e| RestError::internal(e.to_string()))?,
            put_map(ff_map_key(bucket), None).map_err(|e| RestError::internal(e.to_string()))?,
        ];
        Ok(Some((
            vec![
                v.snapshot.unchanged(&bucket_key(bucket)),
                v.snapshot.unchanged(&map_key(bucket)),
            ],
            ops,
        )))
    })
    .await?;
    actor.refresh().await?;
    // h. Every server's incoming replications are what the map implies.
    check_replicas(actor, bucket).await?;
    if let Some(b) = report.buckets.get_mut(bucket) {
        b.ended = Some(Instant::now());
    }
    Ok(())
}

fn plan_moves(map: &Map, target: &Map, bucket: &str) -> Result<Vec<Move>, RunError> {
    plan(map, target).map_err(|e| {
        RunError::Failed(fail(
            "plan_failed",
            e.to_string(),
            json!({"bucket": bucket}),
        ))
    })
}

async fn wait_ready(
    actor: &Actor,
    bucket: &str,
    keep: &[NodeId],
    stop: &CancellationToken,
) -> Result<(), RunError> {
    let deadline = Instant::now() + BUCKET_READY;
    loop {
        let view = read_view(actor.shared.store.as_ref()).await?;
        let mut not_ready = vec![];
        for id in keep {
            let Some(n) = view.nodes.get(&id.0) else {
                continue;
            };
            let client = actor.client(&view, n);
            let ready = matches!(
                tokio::time::timeout(AGENT_CALL, client.health()).await,
                Ok(Ok(h)) if h.buckets.get(bucket).is_some_and(|b| b.ready)
            );
            if !ready {
                not_ready.push(id.0.clone());
            }
        }
        if not_ready.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(RunError::Failed(fail(
                "bucket_not_ready",
                format!("bucket {bucket:?} is not ready on {not_ready:?} after {BUCKET_READY:?}"),
                json!({"bucket": bucket, "nodes": not_ready}),
            )));
        }
        tokio::select! {
            () = stop.cancelled() => return Err(RunError::Stopped),
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

async fn check_replicas(actor: &mut Actor, bucket: &str) -> Result<(), RunError> {
    for attempt in 0..2 {
        let view = read_view(actor.shared.store.as_ref()).await?;
        let Some(b) = view.buckets.get(bucket) else {
            return Ok(());
        };
        let Some(map) = &b.map else { return Ok(()) };
        let want = incoming_replications(map);
        let mut bad = None;
        for s in &b.record.servers {
            let Some(n) = view.nodes.get(s) else { continue };
            let client = actor.client(&view, n);
            let report = match tokio::time::timeout(AGENT_CALL, client.vbuckets(bucket)).await {
                Ok(Ok(r)) => r,
                _ => {
                    bad = Some(fail(
                        "bad_replicas",
                        format!("{s} did not list its replications of {bucket:?}"),
                        json!({"bucket": bucket, "node": s}),
                    ));
                    break;
                }
            };
            let got: BTreeSet<(String, u16)> = report
                .incoming
                .iter()
                .flat_map(|(p, vbs)| vbs.iter().map(move |vb| (p.clone(), *vb)))
                .collect();
            let wanted: BTreeSet<(String, u16)> = want
                .get(&NodeId(s.clone()))
                .map(|m| {
                    m.iter()
                        .flat_map(|(p, vbs)| vbs.iter().map(move |vb| (p.0.clone(), vb.0)))
                        .collect()
                })
                .unwrap_or_default();
            if got != wanted {
                let missing: Vec<(String, u16)> = wanted.difference(&got).cloned().collect();
                let extra: Vec<(String, u16)> = got.difference(&wanted).cloned().collect();
                // Name the producers: a missing stream usually means its producer died.
                let from = |pairs: &[(String, u16)]| -> BTreeSet<String> {
                    pairs.iter().map(|(p, _)| p.clone()).collect()
                };
                bad = Some(fail(
                    "bad_replicas",
                    format!(
                        "{s}'s replications of {bucket:?} differ from the map \
                         (missing from {:?}, extra from {:?})",
                        from(&missing),
                        from(&extra)
                    ),
                    json!({"bucket": bucket, "node": s, "missing": missing, "extra": extra}),
                ));
                break;
            }
        }
        match bad {
            None => return Ok(()),
            Some(e) if attempt == 1 => return Err(RunError::Failed(e)),
            Some(e) => {
                warn!(bucket, error = %e, "replications differ after the moves; the janitor rewires them");
                let _ = janitor_pass::run_one(actor, bucket).await;
            }
        }
    }
    Ok(())
}

fn now_ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

async fn run_moves(
    actor: &Actor,
    settings: &RebalanceSettings,
    bucket: &str,
    moves: Vec<Move>,
    stop: &CancellationToken,
    breport: &mut BucketReport,
) -> Result<(), RunError> {
    if moves.is_empty() {
        return Ok(());
    }
    let shared = actor.shared.clone();
    let view = read_view(shared.store.as_ref()).await?;
    let nodes: BTreeMap<String, MoveNode> = view
        .nodes
        .values()
        .map(|n| {
            (
                n.name.clone(),
                MoveNode {
                    name: n.name.clone(),
                    agent: actor.client(&view, n),
                    kv_addr: format!("{}:{}", n.host, n.kv_port),
                },
            )
        })
        .collect();
    let watched: Vec<String> = nodes.keys().cloned().collect();
    let ctx = Arc::new(MoveCtx {
        bucket: bucket.to_owned(),
        nodes,
        internal: shared.secrets.internal.clone(),
        bounds: settings.bounds(),
    });
    let commit: Arc<MapCommit> = Arc::new(MapCommit {
        shared: shared.clone(),
        bucket: bucket.to_owned(),
        serial: tokio::sync::Mutex::new(()),
    });
    let limits = Limits {
        moves_per_node: settings.rebalance_moves_per_node.max(1) as usize,
        ..Limits::default()
    };
    let by_vb: BTreeMap<u16, Move> = moves.iter().map(|m| (m.vb.0, m.clone())).collect();
    let mut sched = Scheduler::new(moves, limits);
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<MoveEvent>();
    let mut set: JoinSet<(u16, Result<(), MoveError>)> = JoinSet::new();
    let mut aborts: BTreeMap<u16, AbortHandle> = BTreeMap::new();
    let mut committing: BTreeSet<u16> = BTreeSet::new();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failure: Option<Value> = None;
    let mut stopped = false;
    let set_state = |vb: u16, s: MoveState| {
        set_live(&shared, |r| {
            if let Some(p) = r.progress.as_mut() {
                p.set_state(mcbp::Vbid(vb), s)
            }
        })
    };
    let record = |breport: &mut BucketReport, vb: u16, f: &dyn Fn(&mut MoveRecord)| {
        if let Some(m) = breport.moves.iter_mut().find(|m| m.vb == vb) {
            f(m);
        }
    };
    let start = |sched: &mut Scheduler,
                 set: &mut JoinSet<(u16, Result<(), MoveError>)>,
                 aborts: &mut BTreeMap<u16, AbortHandle>,
                 breport: &mut BucketReport| {
        for mv in sched.next_moves() {
            let vb = mv.vb.0;
            let (ctx, commit, tx) = (ctx.clone(), commit.clone(), ev_tx.clone());
            let h = set.spawn(async move {
                let r = run_move(&ctx, &mv, commit.as_ref(), &tx).await;
                (vb, r)
            });
            aborts.insert(vb, h);
            set_state(vb, MoveState::Building);
            record(breport, vb, &|m| {
                m.state = "running";
                m.started = Some((now_rfc3339(), Instant::now()));
            });
        }
    };
    start(&mut sched, &mut set, &mut aborts, breport);
    while !sched.is_finished() {
        tokio::select! {
            Some(ev) = ev_rx.recv() => match ev {
                MoveEvent::Step { vb, step } => {
                    if matches!(step, Step::Takeover | Step::Commit | Step::Replicate | Step::Cleanup) {
                        committing.insert(vb);
                    }
                    set_state(vb, step_state(step));
                }
                MoveEvent::DocsLeft { vb, docs } => {
                    let ms = now_ms(started);
                    set_live(&shared, |r| if let Some(p) = r.progress.as_mut() { p.set_docs_left(mcbp::Vbid(vb), docs, ms) });
                }
                MoveEvent::BackfillDone { vb } => {
                    sched.backfill_done(mcbp::Vbid(vb));
                    start(&mut sched, &mut set, &mut aborts, breport);
                }
            },
            Some(joined) = set.join_next() => {
                let Ok((vb, r)) = joined else { continue };
                aborts.remove(&vb);
                committing.remove(&vb);
                match r {
                    Ok(()) => {
                        sched.move_done(mcbp::Vbid(vb));
                        set_state(vb, MoveState::Done);
                        record(breport, vb, &|m| {
                            m.state = "done";
                            m.ended = Some((now_rfc3339(), Instant::now()));
                        });
                        start(&mut sched, &mut set, &mut aborts, breport);
                    }
                    Err(e) => {
                        set_state(vb, MoveState::Failed);
                        let j = e.to_json();
                        record(breport, vb, &|m| {
                            m.state = "failed";
                            m.ended = Some((now_rfc3339(), Instant::now()));
                            m.error = Some(j.clone());
                        });
                        failure = Some(j);
                        break;
                    }
                }
            }
            () = stop.cancelled() => {
                stopped = true;
                break;
            }
            _ = tick.tick() => {
                if let Some(down) = node_down(&shared, &watched, started) {
                    failure = Some(fail("node_down", format!("{} missed its heartbeats for {} ms during the rebalance of {bucket:?}", down.0, down.1), json!({"node": down.0, "bucket": bucket, "last_heard_ms": down.1})));
                    break;
                }
            }
        }
    }
    if failure.is_none() && !stopped {
        return Ok(());
    }
    // Cancel: moves before their takeover stop now; the others get the grace period
    // to reach their commit.
    for (vb, h) in &aborts {
        if !committing.contains(vb) {
            h.abort();
            set_state(*vb, MoveState::Aborted);
            record(breport, *vb, &|m| m.state = "aborted");
        }
    }
    let grace = Duration::from_secs(settings.stop_grace_period.max(1));
    let deadline = Instant::now() + grace;
    while !set.is_empty() {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok((vb, Ok(()))))) => {
                set_state(vb, MoveState::Done);
                record(breport, vb, &|m| {
                    m.state = "done";
                    m.ended = Some((now_rfc3339(), Instant::now()));
                });
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                set.abort_all();
                break;
            }
        }
    }
    let _ = by_vb;
    match failure {
        Some(f) => Err(RunError::Failed(f)),
        None => Err(RunError::Stopped),
    }
}

/// The first watched node whose heartbeat is older than [`NODE_DOWN_AFTER`].
fn node_down(shared: &Shared, nodes: &[String], since: Instant) -> Option<(String, u64)> {
    for n in nodes {
        let h = shared.health.get(n);
        let last = h.last_ok.unwrap_or(since).max(since);
        let gone = last.elapsed();
        if gone > NODE_DOWN_AFTER {
            return Some((n.clone(), gone.as_millis() as u64));
        }
    }
    None
}

fn reports_dir(shared: &Shared) -> PathBuf {
    cluster_dir(&shared.cfg.data_dir).join("reports")
}

fn stage_time(t: &Option<(String, Instant)>) -> Value {
    t.as_ref().map_or(Value::Null, |(s, _)| json!(s))
}

async fn write_report(
    shared: &Shared,
    plan: &Plan,
    end: &End,
    report: &Report,
    started: Instant,
) -> Option<String> {
    let completed = now_rfc3339();
    let (message, result) = match end {
        End::Done => (
            "Rebalance completed successfully.".to_owned(),
            json!({"ok": true}),
        ),
        End::Stopped => (
            "Rebalance stopped by user.".to_owned(),
            json!({"ok": false, "stopped": true}),
        ),
        End::Failed(e) => (
            format!(
                "Rebalance failed: {}: {}",
                e["kind"].as_str().unwrap_or("error"),
                e["message"].as_str().unwrap_or("")
            ),
            json!({"ok": false, "error": e}),
        ),
    };
    let mut details = serde_json::Map::new();
    for (name, b) in &report.buckets {
        let done: Vec<&MoveRecord> = b.moves.iter().filter(|m| m.state == "done").collect();
        let times: Vec<u64> = done
            .iter()
            .filter_map(|m| {
                Some(
                    m.ended
                        .as_ref()?
                        .1
                        .duration_since(m.started.as_ref()?.1)
                        .as_millis() as u64,
                )
            })
            .collect();
        let total: u64 = times.iter().sum();
        let info: Vec<Value> = b
            .moves
            .iter()
            .map(|m| {
                let took = match (&m.started, &m.ended) {
                    (Some(s), Some(e)) => json!(e.1.duration_since(s.1).as_millis() as u64),
                    _ => Value::Null,
                };
                json!({"id": m.vb, "beforeChain": m.before, "afterChain": m.after, "state": m.state,
                    "move": {"startTime": stage_time(&m.started), "completedTime": stage_time(&m.ended), "timeTaken": took},
                    "error": m.error})
            })
            .collect();
        details.insert(
            name.clone(),
            json!({"startTime": stage_time(&b.started), "timeTaken": b.started.as_ref().map(|s| b.ended.unwrap_or_else(Instant::now).duration_since(s.1).as_millis() as u64),
                "plan": b.plan,
                "vbucketLevelInfo": {"move": {"averageTime": if times.is_empty() { 0 } else { total / times.len() as u64 }, "totalTime": total, "totalCount": b.moves.len(), "remainingCount": b.moves.len() - done.len()},
                    "vbucketInfo": info}}),
        );
    }
    let v = json!({
        "rebalanceId": plan.id,
        "rebalanceType": "rebalance",
        "subtype": plan.kind,
        "attempt": plan.attempt,
        "nodesInfo": {"activeNodes": plan.known, "keepNodes": plan.keep, "ejectNodes": plan.eject, "deltaNodes": [], "failedNodes": []},
        "numNodesAdded": plan.added.len(), "nodesAdded": plan.added,
        "numNodesRemoved": plan.eject.len(), "nodesRemoved": plan.eject,
        "masterNode": shared.cfg.self_name,
        "startTime": plan.started, "completedTime": completed, "timeTaken": started.elapsed().as_millis() as u64,
        "completionMessage": message, "result": result,
        "stageInfo": {"data": {"totalProgress": if matches!(end, End::Done) { 100.0 } else { 0.0 }, "details": details}},
    });
    let dir = reports_dir(shared);
    let stamp: String = completed
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let path = dir.join(format!("rebalance_report_{stamp}_{}.json", plan.id));
    let text = serde_json::to_vec_pretty(&v).unwrap_or_default();
    let res = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(&path, text)?;
        prune(&dir)
    })
    .await;
    match res {
        Ok(Ok(())) => Some(plan.id.clone()),
        Ok(Err(e)) => {
            warn!(error = %e, "writing the rebalance report failed");
            None
        }
        Err(e) => {
            warn!(error = %e, "writing the rebalance report failed");
            None
        }
    }
}

/// The report of a run an orchestrator restart ended (§5.6 `orchestrator_restarted`):
/// its plan is all that is known.
pub(super) async fn write_orphan_report(shared: &Shared, plan: &Plan, end: &End) -> Option<String> {
    write_report(shared, plan, end, &Report::default(), Instant::now()).await
}

/// Keeps the newest [`REPORTS_KEPT`] reports (names sort by time).
fn prune(dir: &Path) -> std::io::Result<()> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("rebalance_report_"))
        })
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(REPORTS_KEPT);
    for p in names.into_iter().take(excess) {
        std::fs::remove_file(p)?;
    }
    Ok(())
}

/// A stored report: by id, or the newest when `id` is `None`.
pub(crate) async fn read_report(data_dir: &Path, id: Option<&str>) -> Option<Value> {
    let dir = cluster_dir(data_dir).join("reports");
    let id = id.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with("rebalance_report_")
                        && id
                            .as_ref()
                            .is_none_or(|id| n.ends_with(&format!("_{id}.json")))
                })
            })
            .collect();
        names.sort();
        let p = names.pop()?;
        serde_json::from_slice(&std::fs::read(p).ok()?).ok()
    })
    .await
    .ok()
    .flatten()
}

/// The `rebalance/status` record and counters at the end of a run.
pub(super) async fn record_end(shared: &Shared, plan: &Plan, end: &End) -> Result<(), RestError> {
    let (error, stopped) = match end {
        End::Failed(e) => (e.clone(), false),
        End::Stopped => (Value::Null, true),
        End::Done => (Value::Null, false),
    };
    transact_view(shared.store.as_ref(), |v| {
        let mut counters = v.counters.clone();
        match end {
            End::Done => counters.rebalance_success += 1,
            End::Stopped => counters.rebalance_stop += 1,
            End::Failed(_) => counters.rebalance_fail += 1,
        }
        Ok(Some((
            vec![],
            vec![
                Op::put_json(COUNTERS_KEY, &counters).map_err(|e| RestError::internal(e.to_string()))?,
                Op::put_json(
                    REBALANCE_STATUS_KEY,
                    &json!({"status": "none", "id": plan.id, "type": plan.kind, "known": plan.known, "eject": plan.eject, "started": plan.started, "completed": now_rfc3339(), "error": error, "stopped_by_user": stopped}),
                )
                .map_err(|e| RestError::internal(e.to_string()))?,
            ],
        )))
    })
    .await
    .map(drop)
}
