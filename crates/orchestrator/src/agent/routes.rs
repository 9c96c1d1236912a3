//! The `/agent/v1/…` handlers (cluster.md §2.6, §6.3). kv-node checks the admin
//! auth around them; they check `X-Conduit-Cluster` / `X-Conduit-Term`.
//!
//! A dropped HTTP connection drops the handler future, which cancels the work —
//! except a takeover, which runs detached to its end (the janitor adopts it, J5).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use mcbp::{VbState, Vbid};
use replication::{ReplError, ReplicationManager, ReplicationMap};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use tracing::{info, warn};

use super::api::{
    AddressBook, ApplyRequest, BucketHealth, BuildRequest, DataMoveAnswer, Health, JoinRequest,
    LeaveRequest, Phase, PutBucket, StopNodesRequest, TakeoverRequest, UnreplicateRequest,
    VbReport, VbucketsReport, WaitDataMove, WaitPersisted,
};
use super::client::{CLUSTER_HEADER, TERM_HEADER};
use super::error::AgentError;
use super::node::{parse_state, state_counts};
use super::{address_map, lock, Agent, Membership};

type Shared = Arc<Agent>;
type Answer = Result<Response, AgentError>;

pub(crate) fn router(agent: Shared) -> Router {
    let vb = "/agent/v1/buckets/{bucket}/vbuckets/{vb}";
    Router::new()
        .route("/agent/v1/info", get(info))
        .route("/agent/v1/join", post(join))
        .route("/agent/v1/cluster", put(set_cluster))
        .route("/agent/v1/leave", post(leave))
        .route("/agent/v1/fence", post(fence))
        .route("/agent/v1/health", get(health))
        .route(
            "/agent/v1/buckets/{bucket}",
            put(put_bucket).delete(delete_bucket),
        )
        .route("/agent/v1/buckets/{bucket}/vbuckets", get(vbuckets))
        .route("/agent/v1/buckets/{bucket}/apply", post(apply))
        .route("/agent/v1/buckets/{bucket}/stop-nodes", post(stop_nodes))
        .route(&format!("{vb}/build"), post(build))
        .route(&format!("{vb}/wait-data-move"), post(wait_data_move))
        .route(&format!("{vb}/wait-persisted"), post(wait_persisted))
        .route(&format!("{vb}/takeover"), post(takeover))
        .route(&format!("{vb}/unreplicate"), post(unreplicate))
        .route(&format!("{vb}/delete"), post(delete_vb).delete(delete_vb))
        .with_state(agent)
}

// ---- helpers ----

fn ok<T: Serialize>(v: &T) -> Response {
    let mut j = serde_json::to_value(v).unwrap_or_else(|_| json!({}));
    if !j.is_object() {
        j = json!({});
    }
    j["ok"] = json!(true);
    Json(j).into_response()
}

fn done() -> Answer {
    Ok(Json(json!({"ok": true})).into_response())
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, AgentError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| AgentError::bad(format!("invalid body: {e}")))
}

fn parse_vb(vb: &str) -> Result<u16, AgentError> {
    vb.parse()
        .map_err(|_| AgentError::bad(format!("vbucket {vb:?} is not a number")))
}

/// Refuses another cluster's uuid and a term below the highest seen; records a
/// higher term. Before join every caller is accepted (only `info`, `join`,
/// `health` and the no-op `leave`/`fence` do anything then).
fn guard(agent: &Agent, headers: &HeaderMap) -> Result<(), AgentError> {
    let Some(m) = agent.membership() else {
        return Ok(());
    };
    if let Some(c) = headers.get(CLUSTER_HEADER) {
        let c = c
            .to_str()
            .map_err(|_| AgentError::bad("X-Conduit-Cluster is not text"))?;
        if c != m.cluster {
            return Err(AgentError::WrongCluster {
                got: c.to_string(),
                ours: m.cluster,
            });
        }
    }
    if let Some(t) = headers.get(TERM_HEADER) {
        let t: u64 = t
            .to_str()
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| AgentError::bad("X-Conduit-Term is not a number"))?;
        let seen = agent.highest_term();
        if t < seen {
            return Err(AgentError::StaleTerm { got: t, seen });
        }
        agent.see_term(t);
    }
    Ok(())
}

fn ms(timeout_ms: u64) -> Duration {
    Duration::from_millis(timeout_ms)
}

/// Runs `f` bounded by `timeout_ms`; expiry is [`AgentError::Timeout`].
async fn bounded<T>(
    what: impl FnOnce() -> String,
    timeout_ms: u64,
    f: impl Future<Output = Result<T, AgentError>>,
) -> Result<T, AgentError> {
    match tokio::time::timeout(ms(timeout_ms), f).await {
        Ok(r) => r,
        Err(_) => Err(AgentError::Timeout {
            what: what(),
            after_ms: timeout_ms,
        }),
    }
}

fn repl(bucket: &str, vb: Option<u16>) -> impl FnOnce(ReplError) -> AgentError + '_ {
    move |source| AgentError::Repl {
        bucket: bucket.to_string(),
        vb,
        source,
    }
}

fn to_repl_map(m: &BTreeMap<String, Vec<u16>>) -> ReplicationMap {
    m.iter()
        .map(|(n, vbs)| (n.clone(), vbs.iter().copied().map(Vbid).collect()))
        .collect()
}

fn from_repl_map(m: &ReplicationMap) -> BTreeMap<String, Vec<u16>> {
    m.iter()
        .map(|(n, vbs)| (n.clone(), vbs.iter().map(|v| v.0).collect()))
        .collect()
}

/// The vbucket's current state on the node.
async fn vb_state(agent: &Agent, bucket: &str, vb: u16) -> Result<String, AgentError> {
    let b = agent
        .node
        .bucket(bucket)
        .await?
        .ok_or_else(|| AgentError::NoSuchBucket {
            bucket: bucket.to_string(),
        })?;
    b.vbuckets
        .iter()
        .find(|v| v.vb == vb)
        .map(|v| v.state.clone())
        .ok_or_else(|| AgentError::bad(format!("bucket {bucket} has no vbucket {vb}")))
}

/// The bucket's manager, for a bucket the node has.
async fn bucket_manager(
    agent: &Agent,
    bucket: &str,
) -> Result<Arc<ReplicationManager>, AgentError> {
    if let Some(m) = agent.existing_manager(bucket) {
        return Ok(m);
    }
    agent.membership().ok_or(AgentError::NotMember)?;
    if agent.node.bucket(bucket).await?.is_none() {
        return Err(AgentError::NoSuchBucket {
            bucket: bucket.to_string(),
        });
    }
    agent.manager(bucket)
}

// ---- identity and membership ----

async fn info(State(agent): State<Shared>, headers: HeaderMap) -> Answer {
    guard(&agent, &headers)?;
    match agent.node.list_buckets().await {
        Ok(list) => agent.remember_buckets(&list),
        Err(e) => warn!(error = %e, "info: cannot list the node's buckets"),
    }
    Ok(ok(&agent.info()))
}

/// Headers are not checked: a node joined elsewhere answers `already_member`
/// whatever cluster asks, and a repeated join is checked by its body's term.
async fn join(State(agent): State<Shared>, body: Bytes) -> Answer {
    let req: JoinRequest = parse(&body)?;
    if req.cluster.is_empty() || req.name.is_empty() {
        return Err(AgentError::bad("cluster and name must not be empty"));
    }
    let _admin = agent.admin.lock().await;
    let membership = Membership {
        cluster: req.cluster.clone(),
        name: req.name.clone(),
        term: req.term,
        orchestrator: req.orchestrator.clone(),
        nodes: req.nodes.clone(),
        internal: req.internal.clone(),
        admin: req.admin.clone(),
    };
    if let Some(m) = agent.membership() {
        if m.cluster != req.cluster || m.name != req.name {
            return Err(AgentError::AlreadyMember {
                cluster: m.cluster,
                name: m.name,
            });
        }
        // The same join again (a retried call): refresh what it carries.
        if req.term < agent.highest_term() {
            return Err(AgentError::StaleTerm {
                got: req.term,
                seen: agent.highest_term(),
            });
        }
        install_users(&agent, &req).await?;
        agent.see_term(req.term);
        apply_addresses(&agent, &membership);
        agent.persist(Some(membership)).await?;
        return done();
    }
    install_users(&agent, &req).await?;
    if req.wipe {
        wipe(&agent).await?;
    }
    lock(&agent.applied).clear();
    // A new cluster: its terms start over.
    agent
        .highest_term
        .store(req.term, std::sync::atomic::Ordering::Release);
    agent.persist(Some(membership)).await?;
    info!(cluster = %req.cluster, name = %req.name, term = req.term, "joined cluster");
    done()
}

/// N5: the cluster admin and the internal user, on the own node. A user with the
/// name of the node's startup admin is left alone (the node refuses to replace its
/// own users; that user is the operator's credential).
async fn install_users(agent: &Agent, req: &JoinRequest) -> Result<(), AgentError> {
    for c in [&req.admin, &req.internal] {
        if c.user == agent.cfg.local_admin.user {
            warn!(user = %c.user, "cluster user has the node's own admin name: not installed");
            continue;
        }
        agent.node.put_user(c).await?;
    }
    Ok(())
}

/// Shuts every manager and deletes every bucket on the node.
async fn wipe(agent: &Agent) -> Result<(), AgentError> {
    let managers: Vec<_> = std::mem::take(&mut *lock(&agent.managers))
        .into_values()
        .collect();
    futures::future::join_all(managers.iter().map(|m| m.shutdown())).await;
    for (name, _) in agent.node.list_buckets().await? {
        agent.node.delete_bucket(&name).await?;
        info!(bucket = %name, "bucket deleted (wipe)");
    }
    lock(&agent.buckets).clear();
    lock(&agent.applied).clear();
    Ok(())
}

fn apply_addresses(agent: &Agent, m: &Membership) {
    let book = address_map(m);
    for (_, mgr) in agent.all_managers() {
        for (name, addr) in &book {
            mgr.set_node_address(name.clone(), addr.clone());
        }
    }
}

async fn set_cluster(State(agent): State<Shared>, headers: HeaderMap, body: Bytes) -> Answer {
    guard(&agent, &headers)?;
    let req: AddressBook = parse(&body)?;
    let _admin = agent.admin.lock().await;
    let mut m = agent.membership().ok_or(AgentError::NotMember)?;
    let seen = agent.highest_term();
    if req.term < seen {
        return Err(AgentError::StaleTerm {
            got: req.term,
            seen,
        });
    }
    agent.see_term(req.term);
    m.term = req.term;
    m.orchestrator = req.orchestrator;
    m.nodes = req.nodes;
    apply_addresses(&agent, &m);
    agent.persist(Some(m)).await?;
    done()
}

async fn leave(State(agent): State<Shared>, headers: HeaderMap, body: Bytes) -> Answer {
    guard(&agent, &headers)?;
    let _req: LeaveRequest = parse(&body)?;
    let _admin = agent.admin.lock().await;
    let Some(m) = agent.membership() else {
        return done();
    };
    wipe(&agent).await?;
    for c in [&m.admin, &m.internal] {
        if c.user != agent.cfg.local_admin.user {
            agent.node.delete_user(&c.user).await?;
        }
    }
    agent
        .highest_term
        .store(0, std::sync::atomic::Ordering::Release);
    agent.persist(None).await?;
    info!(cluster = %m.cluster, name = %m.name, "left cluster");
    done()
}

/// Every vbucket of every bucket dead (data kept), every incoming replication
/// stopped. Works joined or not.
async fn fence(State(agent): State<Shared>, headers: HeaderMap) -> Answer {
    guard(&agent, &headers)?;
    for (_, mgr) in agent.all_managers() {
        mgr.shutdown().await;
    }
    lock(&agent.applied).clear();
    for (name, _) in agent.node.list_buckets().await? {
        let Some(b) = agent.node.bucket(&name).await? else {
            continue;
        };
        let live: Vec<u16> = b
            .vbuckets
            .iter()
            .filter(|v| v.state != "dead")
            .map(|v| v.vb)
            .collect();
        if live.is_empty() {
            continue;
        }
        let mut c = agent.node.mcbp(&name).await?;
        for vb in live {
            c.set_state(vb, VbState::Dead).await?;
        }
    }
    info!("node fenced");
    done()
}

// ---- buckets ----

async fn put_bucket(
    State(agent): State<Shared>,
    headers: HeaderMap,
    Path(bucket): Path<String>,
    body: Bytes,
) -> Answer {
    guard(&agent, &headers)?;
    let req: PutBucket = parse(&body)?;
    agent.membership().ok_or(AgentError::NotMember)?;
    match agent.node.bucket(&bucket).await? {
        Some(b) => {
            if let Some(have) = b.uuid.filter(|u| *u != req.uuid) {
                return Err(AgentError::BucketConflict {
                    bucket,
                    have,
                    want: req.uuid,
                });
            }
        }
        None => {
            let created = agent
                .node
                .create_bucket(
                    &bucket,
                    req.vbuckets,
                    req.ram_quota_mb,
                    &req.uuid,
                    req.cluster_config.as_ref(),
                )
                .await?;
            if created {
                info!(%bucket, vbuckets = req.vbuckets, "bucket created (all vbuckets dead)");
            }
        }
    }
    agent.manager(&bucket)?;
    lock(&agent.buckets).insert(bucket, req.uuid);
    done()
}

async fn delete_bucket(
    State(agent): State<Shared>,
    headers: HeaderMap,
    Path(bucket): Path<String>,
) -> Answer {
    guard(&agent, &headers)?;
    if let Some(m) = agent.take_manager(&bucket) {
        m.shutdown().await;
    }
    agent.node.delete_bucket(&bucket).await?;
    lock(&agent.applied).remove(&bucket);
    lock(&agent.buckets).remove(&bucket);
    info!(%bucket, "bucket deleted");
    done()
}

async fn health(State(agent): State<Shared>, headers: HeaderMap) -> Answer {
    guard(&agent, &headers)?;
    let list = agent.node.list_buckets().await?;
    agent.remember_buckets(&list);
    let mut buckets = BTreeMap::new();
    for (name, _) in &list {
        let Some(b) = agent.node.bucket(name).await? else {
            continue;
        };
        let counts = state_counts(&b.vbuckets);
        let count = |s: &str| counts.get(s).copied().unwrap_or(0);
        let (answers, config) = match agent.node.mcbp(name).await {
            Ok(mut c) => match c.config_version().await {
                Ok(v) => (true, v),
                Err(e) => {
                    warn!(bucket = %name, error = %e, "health: config read failed");
                    (false, None)
                }
            },
            Err(e) => {
                warn!(bucket = %name, error = %e, "health: bucket does not answer MCBP");
                (false, None)
            }
        };
        let applied = lock(&agent.applied).contains(name);
        buckets.insert(
            b.name.clone(),
            BucketHealth {
                ready: answers && applied,
                config,
                active: count("active"),
                replica: count("replica"),
                dead: count("dead"),
            },
        );
    }
    let now = tokio::time::Instant::now();
    let mut liveness: BTreeMap<String, u64> = BTreeMap::new();
    for (_, mgr) in agent.all_managers() {
        for (node, at) in mgr.node_liveness() {
            let since =
                u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX);
            let e = liveness.entry(node).or_insert(since);
            *e = (*e).min(since);
        }
    }
    Ok(ok(&Health {
        name: agent.membership().map(|m| m.name),
        buckets,
        liveness,
    }))
}

async fn vbuckets(
    State(agent): State<Shared>,
    headers: HeaderMap,
    Path(bucket): Path<String>,
) -> Answer {
    guard(&agent, &headers)?;
    let b = agent
        .node
        .bucket(&bucket)
        .await?
        .ok_or_else(|| AgentError::NoSuchBucket {
            bucket: bucket.clone(),
        })?;
    let incoming = agent
        .existing_manager(&bucket)
        .map(|m| from_repl_map(&m.get_actual_replications()))
        .unwrap_or_default();
    Ok(ok(&VbucketsReport {
        vbuckets: b.vbuckets,
        incoming,
    }))
}

// ---- janitor apply (§6.3) ----

async fn apply(
    State(agent): State<Shared>,
    headers: HeaderMap,
    Path(bucket): Path<String>,
    body: Bytes,
) -> Answer {
    guard(&agent, &headers)?;
    let req: ApplyRequest = parse(&body)?;
    for (vb, s) in &req.states {
        if !matches!(s.as_str(), "active" | "replica" | "dead" | "delete") {
            return Err(AgentError::bad(format!(
                "vbucket {vb}: state {s:?} is not active, replica, dead or delete"
            )));
        }
    }
    if req.phase == Phase::Replications && req.incoming.is_none() {
        return Err(AgentError::bad("phase replications needs incoming"));
    }
    let mgr = bucket_manager(&agent, &bucket).await?;
    let what = || format!("apply {:?} of bucket {bucket}", req.phase).to_lowercase();
    bounded(what, req.timeout_ms, run_apply(&agent, &mgr, &bucket, &req)).await?;
    lock(&agent.applied).insert(bucket);
    done()
}

/// demote: stop unwanted replications (`incoming` = what may stay), then every
/// listed non-`active` state; `delete` = dead, then DEL_VBUCKET. promote: the
/// `active` entries. replications: `incoming` is the complete map. Entries a phase
/// does not act on are ignored, so the janitor may send the whole wanted map to
/// every phase.
async fn run_apply(
    agent: &Agent,
    mgr: &ReplicationManager,
    bucket: &str,
    req: &ApplyRequest,
) -> Result<(), AgentError> {
    match req.phase {
        Phase::Demote => {
            if let Some(keep) = &req.incoming {
                mgr.remove_undesired_replications(&to_repl_map(keep))
                    .await
                    .map_err(repl(bucket, None))?;
            }
            let wanted: Vec<(u16, &str)> = req
                .states
                .iter()
                .filter(|(_, s)| s.as_str() != "active")
                .map(|(vb, s)| (*vb, s.as_str()))
                .collect();
            set_states(agent, bucket, &wanted).await
        }
        Phase::Promote => {
            let wanted: Vec<(u16, &str)> = req
                .states
                .iter()
                .filter(|(_, s)| s.as_str() == "active")
                .map(|(vb, s)| (*vb, s.as_str()))
                .collect();
            set_states(agent, bucket, &wanted).await
        }
        Phase::Replications => {
            let map = req.incoming.as_ref().map(to_repl_map).unwrap_or_default();
            mgr.set_incoming_replication_map(map)
                .await
                .map_err(repl(bucket, None))
        }
    }
}

/// Sets each vbucket whose state differs (`delete`: dead first, then deleted).
async fn set_states(agent: &Agent, bucket: &str, wanted: &[(u16, &str)]) -> Result<(), AgentError> {
    if wanted.is_empty() {
        return Ok(());
    }
    let b = agent
        .node
        .bucket(bucket)
        .await?
        .ok_or_else(|| AgentError::NoSuchBucket {
            bucket: bucket.to_string(),
        })?;
    let current: BTreeMap<u16, &VbReport> = b.vbuckets.iter().map(|v| (v.vb, v)).collect();
    let mut c = agent.node.mcbp(bucket).await?;
    for &(vb, want) in wanted {
        let Some(&now) = current.get(&vb) else {
            return Err(AgentError::bad(format!(
                "bucket {bucket} has no vbucket {vb}"
            )));
        };
        let have = now.state.as_str();
        if want == "delete" {
            // Already dead and empty: every janitor pass may ask again.
            if have == "dead" && now.items == 0 && now.high_seqno == 0 {
                continue;
            }
            if have != "dead" {
                c.set_state(vb, VbState::Dead).await?;
            }
            c.delete_vbucket(vb).await?;
            continue;
        }
        if have != want {
            let s = parse_state(want)
                .ok_or_else(|| AgentError::bad(format!("unknown state {want:?}")))?;
            c.set_state(vb, s).await?;
        }
    }
    Ok(())
}

// ---- move steps ----

async fn build(
    State(agent): State<Shared>,
    headers: HeaderMap,
    Path((bucket, vb)): Path<(String, String)>,
    body: Bytes,
) -> Answer {
    guard(&agent, &headers)?;
    let vb = parse_vb(&vb)?;
    let req: BuildRequest = parse(&body)?;
    let mgr = bucket_manager(&agent, &bucket).await?;
    let what = || format!("build of bucket {bucket} vb:{vb} from {}", req.source);
    bounded(what, req.timeout_ms, async {
        if vb_state(&agent, &bucket, vb).await? != "replica" {
            agent
                .node
                .mcbp(&bucket)
                .await?
                .set_state(vb, VbState::Replica)
                .await?;
        }
        mgr.change_vbucket_replication(Vbid(vb), Some(&req.source))
            .await
            .map_err(repl(&bucket, Some(vb)))
    })
    .await?;
    done()
}

async fn wait_data_move(
    State(agent): State<Shared>,
    headers: HeaderMap,
    Path((bucket, vb)): Path<(String, String)>,
    body: Bytes,
) -> Answer {
    guard(&agent, &headers)?;
    let vb = parse_vb(&vb)?;
    let req: WaitDataMove = parse(&body)?;
    let mgr = bucket_manager(&agent, &bucket).await?;
    let what = || {
        format!(
            "wait-data-move of bucket {bucket} vb:{vb} from {}",
            req.source
        )
    };
    let estimate_at_start = bounded(what, req.timeout_ms, async {
        let estimate = estimate(&agent, &mgr, &bucket, &req.source, vb).await;
        mgr.wait_for_data_move(&req.source, &[Vbid(vb)], req.done_limit, ms(req.timeout_ms))
            .await
            .map_err(repl(&bucket, Some(vb)))?;
        Ok(estimate)
    })
    .await?;
    Ok(ok(&DataMoveAnswer { estimate_at_start }))
}

/// The producer's `dcp-vbtakeover` estimate for `vb` on the connection serving it,
/// read once (best effort: `None` if anything fails).
async fn estimate(
    agent: &Agent,
    mgr: &ReplicationManager,
    bucket: &str,
    source: &str,
    vb: u16,
) -> Option<u64> {
    let m = agent.membership()?;
    let addr = m.address_of(source)?.kv_addr();
    let index = u32::from(vb) % mgr.connection_count();
    let name = mgr.replicator(source, index)?.connection_name().to_string();
    let cfg = kv_client::ClientConfig {
        timeout: Duration::from_secs(5),
        ..kv_client::ClientConfig::default()
    };
    let mut c = kv_client::Client::connect(&addr, cfg).await.ok()?;
    c.auth_plain(&kv_client::Credentials {
        user: m.internal.user.clone(),
        password: m.internal.password.clone(),
    })
    .await
    .ok()?;
    c.select_bucket(bucket).await.ok()?;
    let stats = c.stats(&format!("dcp-vbtakeover {vb} {name}")).await.ok()?;
    stats
        .iter()
        .find(|(k, _)| k == "estimate")
        .and_then(|(_, v)| v.trim().parse().ok())
}

async fn wait_persisted(
    State(agent): State<Shared>,
    headers: HeaderMap,
    Path((bucket, vb)): Path<(String, String)>,
    body: Bytes,
) -> Answer {
    guard(&agent, &headers)?;
    let vb = parse_vb(&vb)?;
    let req: WaitPersisted = parse(&body)?;
    let mgr = bucket_manager(&agent, &bucket).await?;
    let what = || {
        format!(
            "wait-persisted of bucket {bucket} vb:{vb} seqno {}",
            req.seqno
        )
    };
    let serving = |mgr: &ReplicationManager| {
        mgr.get_replicator_for_vb(Vbid(vb))
            .is_some_and(|(node, _)| node == req.source)
    };
    let ended = || AgentError::ReplicationEnded {
        bucket: bucket.clone(),
        vb,
        source_node: req.source.clone(),
    };
    bounded(what, req.timeout_ms, async {
        if !serving(&mgr) {
            return Err(ended());
        }
        let mut c = agent.node.mcbp(&bucket).await?;
        let persisted = async {
            loop {
                if c.seqno_persisted(vb, req.seqno).await? {
                    return Ok::<(), AgentError>(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let watch = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if !serving(&mgr) {
                    return ended();
                }
            }
        };
        tokio::select! {
            r = persisted => r,
            e = watch => Err(e),
        }
    })
    .await?;
    done()
}

async fn takeover(
    State(agent): State<Shared>,
    headers: HeaderMap,
    Path((bucket, vb)): Path<(String, String)>,
    body: Bytes,
) -> Answer {
    guard(&agent, &headers)?;
    let vb = parse_vb(&vb)?;
    let req: TakeoverRequest = parse(&body)?;
    let mgr = bucket_manager(&agent, &bucket).await?;
    // Once sent, a takeover runs to its end whatever happens to this call: detached,
    // and only its answer is bounded.
    let (a, b, source) = (agent.clone(), bucket.clone(), req.source.clone());
    let task = agent.tasks.spawn(async move {
        mgr.takeover(&source, Vbid(vb))
            .await
            .map_err(repl(&b, Some(vb)))?;
        if vb_state(&a, &b, vb).await? != "active" {
            a.node
                .mcbp(&b)
                .await?
                .set_state(vb, VbState::Active)
                .await?;
        }
        info!(bucket = %b, vb, %source, "takeover done");
        Ok::<(), AgentError>(())
    });
    match tokio::time::timeout(ms(req.timeout_ms), task).await {
        Ok(Ok(r)) => r?,
        Ok(Err(join)) => {
            return Err(AgentError::node(
                format!("takeover of bucket {bucket} vb:{vb}"),
                join,
            ))
        }
        Err(_) => {
            return Err(AgentError::Timeout {
                what: format!("takeover of bucket {bucket} vb:{vb} from {}", req.source),
                after_ms: req.timeout_ms,
            })
        }
    }
    done()
}

async fn unreplicate(
    State(agent): State<Shared>,
    headers: HeaderMap,
    Path((bucket, vb)): Path<(String, String)>,
    body: Bytes,
) -> Answer {
    guard(&agent, &headers)?;
    let vb = parse_vb(&vb)?;
    let req: UnreplicateRequest = parse(&body)?;
    let mgr = bucket_manager(&agent, &bucket).await?;
    let what = || format!("unreplicate of bucket {bucket} vb:{vb}");
    bounded(what, req.timeout_ms, async {
        mgr.change_vbucket_replication(Vbid(vb), None)
            .await
            .map_err(repl(&bucket, Some(vb)))
    })
    .await?;
    done()
}

/// Failover (cluster.md §8.1 step 2): every replication from these producer nodes
/// is dropped at once, never waiting for them (they are presumed dead).
async fn stop_nodes(
    State(agent): State<Shared>,
    headers: HeaderMap,
    Path(bucket): Path<String>,
    body: Bytes,
) -> Answer {
    guard(&agent, &headers)?;
    let req: StopNodesRequest = parse(&body)?;
    if let Some(mgr) = agent.existing_manager(&bucket) {
        let nodes: Vec<&str> = req.nodes.iter().map(String::as_str).collect();
        mgr.stop_nodes(&nodes).await.map_err(repl(&bucket, None))?;
    }
    done()
}

/// DEL_VBUCKET: replication into it stopped, set dead, then deleted.
async fn delete_vb(
    State(agent): State<Shared>,
    headers: HeaderMap,
    Path((bucket, vb)): Path<(String, String)>,
) -> Answer {
    guard(&agent, &headers)?;
    let vb = parse_vb(&vb)?;
    if let Some(mgr) = agent.existing_manager(&bucket) {
        let streamed: BTreeSet<Vbid> = mgr
            .get_actual_replications()
            .into_values()
            .flatten()
            .collect();
        if streamed.contains(&Vbid(vb)) {
            mgr.change_vbucket_replication(Vbid(vb), None)
                .await
                .map_err(repl(&bucket, Some(vb)))?;
        }
    }
    set_states(&agent, &bucket, &[(vb, "delete")]).await?;
    done()
}
