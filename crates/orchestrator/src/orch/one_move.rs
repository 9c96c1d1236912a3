//! One vbucket move (cluster.md §5.3): the orchestrator's side of steps 0–11, driven
//! through the agents of the nodes involved and MCBP reads of the old active's high
//! seqno (step 3, and step 2's progress). Steps 8–9 (commit, push) belong to the rebalance runner and come in
//! through [`Commit`].
//!
//! Every step is bounded twice: the agent enforces the `timeout_ms` it is sent, and
//! the call here is bounded by that plus [`CALL_SLACK`] and a little more. Nothing is
//! spawned: cancelling a move (§5.5) is dropping its future, which drops the HTTP
//! requests in flight and with them the agents' work (a takeover already sent runs
//! to its end on the agent; the runner never drops a move after
//! [`Step::Takeover`]).
//!
//! M = old active, N = new active, B = new-chain nodes other than M.

// `MoveError` is the agreed `move_failed` value (the runner matches on its fields);
// a move fails once, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use axum::http::StatusCode;
use futures::future::{join_all, try_join_all};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, info, warn};

use crate::agent::api::{
    ApplyRequest, BuildRequest, Creds, Phase, TakeoverRequest, UnreplicateRequest, WaitDataMove,
    WaitPersisted,
};
use crate::agent::{AgentCallError, AgentClient, CALL_SLACK};
use crate::map::{Move, NodeId};
use crate::rest::error::{RestError, NO_PARAM};

/// Bound of the runner's commit (steps 8–9: ≤ 10 conflict retries and a 5 s push
/// wait fit well inside it).
pub const COMMIT_BOUND: Duration = Duration::from_secs(60);

/// Bound of reading M's high seqno over MCBP (step 3), within the persistence bound.
pub const SEQNO_READ_BOUND: Duration = Duration::from_secs(10);

/// Period of the data-move progress reads (§5.4: docs per node ≤ 5 s old).
pub const PROGRESS_PERIOD: Duration = Duration::from_secs(1);

/// Bound of one builder's progress read.
const PROGRESS_READ_BOUND: Duration = Duration::from_secs(3);

/// Added on top of `timeout_ms + CALL_SLACK` for the orchestrator's own bound of an
/// agent call (the client already bounds it by `timeout_ms + CALL_SLACK`).
const OUTER_SLACK: Duration = Duration::from_secs(1);

/// Bounds of the steps (§5.3, §11).
#[derive(Debug, Clone)]
pub struct MoveBounds {
    /// Step 0: apply promote.
    pub promote: Duration,
    /// Step 1: replication set-up.
    pub build: Duration,
    /// Step 2: the move fails when the docs left have not fallen for this long
    /// (enforced here from progress reads; also sent as `stall_ms`).
    pub data_move_stall: Duration,
    /// Step 2: hard cap of the data-move wait.
    pub data_move_cap: Duration,
    /// Step 3: persistence wait.
    pub persistence: Duration,
    /// Step 6: takeover.
    pub takeover: Duration,
    /// Step 7: closing streams from M.
    pub close_streams: Duration,
    /// Step 10: new-chain replicas from N.
    pub replicate: Duration,
    /// Step 11: deleting old copies.
    pub delete: Duration,
    /// Step 2: the data move is done when the estimate is below this.
    pub done_limit: u64,
}

impl Default for MoveBounds {
    fn default() -> Self {
        MoveBounds {
            promote: Duration::from_secs(60),
            build: Duration::from_secs(120),
            data_move_stall: Duration::from_secs(300),
            data_move_cap: Duration::from_secs(3600),
            persistence: Duration::from_secs(300),
            takeover: Duration::from_secs(300),
            close_streams: Duration::from_secs(30),
            replicate: Duration::from_secs(120),
            delete: Duration::from_secs(30),
            done_limit: 1000,
        }
    }
}

/// Where a move is (progress, §5.4) — the runner maps these to its progress states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Step 0 (moves from null).
    Promote,
    /// Step 1.
    Build,
    /// Step 2.
    DataMove,
    /// Step 3.
    Persistence,
    /// Step 6.
    Takeover,
    /// Step 7.
    CloseStreams,
    /// Steps 8–9.
    Commit,
    /// Step 10.
    Replicate,
    /// Step 11 (never fails a move).
    Cleanup,
}

impl Step {
    /// The `step` of `move_failed` (§5.6).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Promote => "promote",
            Step::Build => "build",
            Step::DataMove => "data_move",
            Step::Persistence => "persistence",
            Step::Takeover => "takeover",
            Step::CloseStreams => "close_streams",
            Step::Commit => "commit",
            Step::Replicate => "replicate",
            Step::Cleanup => "cleanup",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a move reports while it runs.
#[derive(Debug, Clone)]
pub enum MoveEvent {
    /// The move entered a step.
    Step {
        /// The vbucket.
        vb: u16,
        /// The step entered.
        step: Step,
    },
    /// A data-move estimate (items left to send to one builder).
    DocsLeft {
        /// The vbucket.
        vb: u16,
        /// Items.
        docs: u64,
    },
    /// Step 4: the persistence wait ended; the backfill slot is free.
    BackfillDone {
        /// The vbucket.
        vb: u16,
    },
}

/// A node the move talks to.
#[derive(Debug, Clone)]
pub struct MoveNode {
    /// The node's name (as in the map).
    pub name: String,
    /// Its agent.
    pub agent: AgentClient,
    /// `host:kv_port`.
    pub kv_addr: String,
}

/// Everything a move needs.
#[derive(Debug, Clone)]
pub struct MoveCtx {
    /// The bucket.
    pub bucket: String,
    /// Every node a move may touch, by name.
    pub nodes: BTreeMap<String, MoveNode>,
    /// MCBP auth for reading M's high seqno.
    pub internal: Creds,
    /// Step bounds.
    pub bounds: MoveBounds,
}

/// `move_failed` (§5.6).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct MoveError {
    /// The bucket.
    pub bucket: String,
    /// The vbucket.
    pub vb: u16,
    /// The step that failed.
    pub step: Step,
    /// The chain before the move.
    pub old_chain: Vec<Option<String>>,
    /// The chain the move was going to.
    pub new_chain: Vec<Option<String>>,
    /// The node whose call failed (`None` for the commit).
    pub node: Option<String>,
    /// The agent's (replication layer's) error object, or the transport failure.
    pub cause: Value,
    /// `vbucket 17 of default: build on ns_1@c failed: …`.
    pub message: String,
}

impl MoveError {
    /// `{"kind":"move_failed","message",bucket,vb,step,old_chain,new_chain,node,cause}`.
    #[must_use]
    pub fn to_json(&self) -> Value {
        json!({
            "kind": "move_failed",
            "message": self.message,
            "bucket": self.bucket,
            "vb": self.vb,
            "step": self.step.as_str(),
            "old_chain": self.old_chain,
            "new_chain": self.new_chain,
            "node": self.node,
            "cause": self.cause,
        })
    }

    /// A 500 `move_failed` with the same fields as extras.
    #[must_use]
    pub fn into_rest(self) -> RestError {
        let mut e = RestError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "move_failed",
            NO_PARAM,
            self.message.clone(),
        );
        if let Value::Object(o) = self.to_json() {
            for (k, v) in o {
                if k != "kind" && k != "message" {
                    e = e.with(&k, v);
                }
            }
        }
        e
    }
}

/// Steps 8–9 are the runner's: commit map[vb] := new chain (rev bump) and push
/// configs, waiting (bounded) for M's and N's acknowledgement.
#[async_trait::async_trait]
pub trait Commit: Send + Sync {
    /// Commits `new_chain` for `vb` and pushes the configs.
    async fn commit(&self, vb: u16, new_chain: &[Option<String>]) -> Result<(), RestError>;
}

/// Runs one move through steps 0–11 (§5.3).
///
/// Events go to `events` (never blocks; a closed receiver is ignored). Cancellation
/// is dropping the future. Step 11's failures are logged only. Every node of both
/// chains must be in `ctx.nodes`; a missing one fails the move before anything
/// changes (cause `unknown_node`).
///
/// Decisions where §5.3 is silent: when N = M (replica-only) step 7 is skipped (the
/// new replicas' streams from M are what they need after the commit, and old
/// replicas leaving the chain are unreplicated at step 10); at step 10 a replica
/// built from N = M at step 1 is left alone. The agent answers a data-move wait only
/// at its end, so docs left and the stall bound come from the orchestrator's own
/// reads: M's high seqno minus each builder's (a seqno gap, not an item count).
///
/// # Errors
/// [`MoveError`] naming the step, the node and the cause.
pub async fn run_move(
    ctx: &MoveCtx,
    mv: &Move,
    commit: &dyn Commit,
    events: &UnboundedSender<MoveEvent>,
) -> Result<(), MoveError> {
    let r = Run { ctx, mv, events };
    let vb = mv.vb.0;
    let first = if mv.is_from_null() {
        Step::Promote
    } else {
        Step::Build
    };
    let Some(n) = mv.new_active() else {
        return Err(r.fail(
            first,
            None,
            json!({"kind": "bad_move", "message": "the new chain has no active"}),
            "planning",
        ));
    };
    // Every node named must be known before anything changes.
    for x in mv.old.iter().chain(&mv.new).flatten() {
        r.node(first, x)?;
    }
    info!(bucket = %ctx.bucket, vb, old = ?mv.old, new = ?mv.new, "move started");
    let mut streaming_from_n: BTreeSet<&NodeId> = BTreeSet::new();
    let mut unreplicated: BTreeSet<&NodeId> = BTreeSet::new();
    match mv.old_active() {
        None => r.promote(n).await?,
        Some(m) => {
            let builders = mv.builders();
            r.build(m, &builders).await?;
            r.data_move(m, &builders).await?;
            r.persistence(m, &builders).await?;
            r.emit(MoveEvent::BackfillDone { vb });
            if n == m {
                streaming_from_n.extend(builders);
            } else {
                // Step 7 runs before the takeover (Conduit's order, docs/DESIGN.md):
                // once M's copy is dead its streams end, and any other move's set
                // operation on those nodes would re-add the stream from the dead
                // copy and fail. Closed first, nothing can re-add them; the copies
                // that stay are rebuilt from N at step 10.
                let others: Vec<&NodeId> = mv
                    .old
                    .iter()
                    .chain(&mv.new)
                    .flatten()
                    .filter(|x| *x != m && *x != n)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                r.close_streams(&others).await?;
                unreplicated.extend(others);
                r.takeover(m, n).await?;
            }
        }
    }
    r.commit(commit).await?;
    r.replicate(n, &streaming_from_n, &unreplicated).await?;
    r.cleanup().await;
    info!(bucket = %ctx.bucket, vb, "move done");
    Ok(())
}

/// One move's context for its steps.
struct Run<'a> {
    ctx: &'a MoveCtx,
    mv: &'a Move,
    events: &'a UnboundedSender<MoveEvent>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn chain_names(c: &[Option<NodeId>]) -> Vec<Option<String>> {
    c.iter().map(|n| n.as_ref().map(|n| n.0.clone())).collect()
}

/// The `cause` of an agent call's failure: an agent's refusal is its error object
/// unchanged (the replication layer's JSON, §2.6, §5.6); a transport failure is the
/// client's object (`unreachable`, `timeout`, …).
fn cause_of(e: &AgentCallError) -> Value {
    match e {
        AgentCallError::Refused { error, .. } => error.clone(),
        other => other.to_json(),
    }
}

impl Run<'_> {
    fn vb(&self) -> u16 {
        self.mv.vb.0
    }

    fn emit(&self, e: MoveEvent) {
        // A runner that stopped listening does not stop the move.
        let _ = self.events.send(e);
    }

    fn enter(&self, step: Step) {
        debug!(bucket = %self.ctx.bucket, vb = self.vb(), %step, "move step");
        self.emit(MoveEvent::Step {
            vb: self.vb(),
            step,
        });
    }

    fn fail(&self, step: Step, node: Option<&str>, cause: Value, what: &str) -> MoveError {
        let why = cause
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| cause.to_string(), str::to_string);
        let on = node.map(|n| format!(" on {n}")).unwrap_or_default();
        MoveError {
            bucket: self.ctx.bucket.clone(),
            vb: self.vb(),
            step,
            old_chain: chain_names(&self.mv.old),
            new_chain: chain_names(&self.mv.new),
            node: node.map(str::to_string),
            message: format!(
                "vbucket {} of {}: {what}{on} failed: {why}",
                self.vb(),
                self.ctx.bucket
            ),
            cause,
        }
    }

    fn node(&self, step: Step, name: &NodeId) -> Result<&MoveNode, MoveError> {
        self.ctx.nodes.get(&name.0).ok_or_else(|| {
            self.fail(
                step,
                Some(&name.0),
                json!({"kind": "unknown_node", "node": name.0,
                       "message": format!("no address for node {}", name.0)}),
                "looking up the node",
            )
        })
    }

    /// One agent call, bounded by `bound` (sent as `timeout_ms`) plus slack.
    async fn call<T>(
        &self,
        step: Step,
        node: &NodeId,
        what: &str,
        bound: Duration,
        f: impl Future<Output = Result<T, AgentCallError>>,
    ) -> Result<T, MoveError> {
        let outer = bound.saturating_add(CALL_SLACK).saturating_add(OUTER_SLACK);
        match tokio::time::timeout(outer, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                debug!(vb = self.vb(), node = %node, %step, error = %e, "move step call failed");
                Err(self.fail(step, Some(&node.0), cause_of(&e), what))
            }
            Err(_) => {
                let e = AgentCallError::Timeout {
                    node: node.0.clone(),
                    after_ms: ms(outer),
                };
                Err(self.fail(step, Some(&node.0), e.to_json(), what))
            }
        }
    }

    /// Step 0: agent(N) `apply promote {vb: active}`.
    ///
    /// When N held a replica in the old chain, its incoming stream for vb is closed
    /// first: an active must not be written by a stream.
    async fn promote(&self, n: &NodeId) -> Result<(), MoveError> {
        self.enter(Step::Promote);
        let node = self.node(Step::Promote, n)?;
        let bound = self.ctx.bounds.promote;
        if self.mv.old.iter().flatten().any(|x| x == n) {
            self.unreplicate(Step::Promote, &[n], bound).await?;
        }
        let req = ApplyRequest {
            phase: Phase::Promote,
            states: [(self.vb(), "active".to_string())].into(),
            incoming: None,
            timeout_ms: ms(bound),
        };
        self.call(
            Step::Promote,
            n,
            "promote",
            bound,
            node.agent.apply(&self.ctx.bucket, &req),
        )
        .await
    }

    /// Step 1: every X ∈ B in parallel: `build {source: M}`.
    async fn build(&self, m: &NodeId, builders: &[&NodeId]) -> Result<(), MoveError> {
        self.enter(Step::Build);
        let bound = self.ctx.bounds.build;
        let calls = builders.iter().map(|x| async move {
            let node = self.node(Step::Build, x)?;
            let req = BuildRequest {
                source: m.0.clone(),
                timeout_ms: ms(bound),
            };
            let f = node.agent.build(&self.ctx.bucket, self.vb(), &req);
            self.call(Step::Build, x, "build", bound, f).await
        });
        try_join_all(calls).await.map(drop)
    }

    /// Step 2: every X ∈ B: `wait-data-move {source: M}`.
    async fn data_move(&self, m: &NodeId, builders: &[&NodeId]) -> Result<(), MoveError> {
        self.enter(Step::DataMove);
        let b = &self.ctx.bounds;
        let calls = builders.iter().map(|x| async move {
            let node = self.node(Step::DataMove, x)?;
            let req = WaitDataMove {
                source: m.0.clone(),
                done_limit: b.done_limit,
                stall_ms: ms(b.data_move_stall),
                timeout_ms: ms(b.data_move_cap),
            };
            let f = node.agent.wait_data_move(&self.ctx.bucket, self.vb(), &req);
            let answer = self
                .call(Step::DataMove, x, "data move", b.data_move_cap, f)
                .await?;
            Ok::<_, MoveError>(answer.estimate_at_start)
        });
        let estimates = tokio::select! {
            r = try_join_all(calls) => r?,
            e = self.watch_data_move(m, builders) => return Err(e),
        };
        debug!(
            vb = self.vb(),
            ?estimates,
            "data move done on every builder"
        );
        // The wait ended below the done limit: nothing substantial is left.
        self.emit(MoveEvent::DocsLeft {
            vb: self.vb(),
            docs: 0,
        });
        Ok(())
    }

    /// Beside the step-2 waits (the agent answers only at the end): every
    /// [`PROGRESS_PERIOD`], docs left = the largest gap between M's high seqno and a
    /// builder's, reported when it changes; fails the move when it has not fallen for
    /// `data_move_stall` while at or above the done limit. Read failures are skipped
    /// (the waits themselves report a dead node). Never returns otherwise.
    async fn watch_data_move(&self, m: &NodeId, builders: &[&NodeId]) -> MoveError {
        let b = &self.ctx.bounds;
        let mut best: Option<(u64, tokio::time::Instant)> = None;
        let mut last: Option<u64> = None;
        loop {
            tokio::time::sleep(PROGRESS_PERIOD).await;
            let Ok(high) = self.read_high_seqno(m).await else {
                continue;
            };
            let reads = builders.iter().map(|x| async move {
                let node = self.ctx.nodes.get(&x.0)?;
                let r = tokio::time::timeout(
                    PROGRESS_READ_BOUND,
                    node.agent.vbuckets(&self.ctx.bucket),
                )
                .await
                .ok()?
                .ok()?;
                let v = r.vbuckets.iter().find(|v| v.vb == self.vb())?;
                Some((*x, high.saturating_sub(v.high_seqno)))
            });
            let gaps: Vec<(&NodeId, u64)> = join_all(reads).await.into_iter().flatten().collect();
            let Some((worst, docs)) = gaps.into_iter().max_by_key(|(_, d)| *d) else {
                continue;
            };
            if last != Some(docs) {
                self.emit(MoveEvent::DocsLeft {
                    vb: self.vb(),
                    docs,
                });
                last = Some(docs);
            }
            let now = tokio::time::Instant::now();
            match best {
                Some((d, _)) if docs >= d => {}
                _ => best = Some((docs, now)),
            }
            if let Some((d, since)) = best {
                let stalled = now.saturating_duration_since(since);
                if docs >= b.done_limit && stalled >= b.data_move_stall {
                    return self.fail(
                        Step::DataMove,
                        Some(&worst.0),
                        json!({"kind": "timeout", "node": worst.0, "after_ms": ms(stalled),
                               "docs_left": d,
                               "message": format!("data move stalled: {docs} seqnos behind, \
                                   no progress for {} ms", ms(stalled))}),
                        "data move",
                    );
                }
            }
        }
    }

    /// Step 3: M's high seqno over MCBP, then every X ∈ B `wait-persisted`.
    async fn persistence(&self, m: &NodeId, builders: &[&NodeId]) -> Result<(), MoveError> {
        self.enter(Step::Persistence);
        if builders.is_empty() {
            return Ok(());
        }
        let bound = self.ctx.bounds.persistence;
        let seqno = self.high_seqno(m).await?;
        debug!(vb = self.vb(), seqno, "waiting for persistence");
        let calls = builders.iter().map(|x| async move {
            let node = self.node(Step::Persistence, x)?;
            let req = WaitPersisted {
                seqno,
                source: m.0.clone(),
                timeout_ms: ms(bound),
            };
            let f = node.agent.wait_persisted(&self.ctx.bucket, self.vb(), &req);
            self.call(Step::Persistence, x, "persistence wait", bound, f)
                .await
        });
        try_join_all(calls).await.map(drop)
    }

    /// M's `vb_<vb>:high_seqno` (`STAT vbucket-seqno <vb>`) as the internal user,
    /// bounded by [`SEQNO_READ_BOUND`] (and the persistence bound).
    async fn high_seqno(&self, m: &NodeId) -> Result<u64, MoveError> {
        let vb = self.vb();
        self.read_high_seqno(m).await.map_err(|message| {
            self.fail(
                Step::Persistence,
                Some(&m.0),
                json!({"kind": "seqno_read_failed", "node": m.0, "vbucket": vb,
                       "message": message}),
                "reading the high seqno",
            )
        })
    }

    async fn read_high_seqno(&self, m: &NodeId) -> Result<u64, String> {
        let node = self
            .ctx
            .nodes
            .get(&m.0)
            .ok_or_else(|| format!("no address for node {}", m.0))?;
        let bound = SEQNO_READ_BOUND.min(self.ctx.bounds.persistence);
        let vb = self.vb();
        let read = async {
            let cfg = kv_client::ClientConfig {
                timeout: bound,
                ..kv_client::ClientConfig::default()
            };
            let mut c = kv_client::Client::connect(&node.kv_addr, cfg)
                .await
                .map_err(|e| e.to_string())?;
            c.auth_plain(&kv_client::Credentials {
                user: self.ctx.internal.user.clone(),
                password: self.ctx.internal.password.clone(),
            })
            .await
            .map_err(|e| e.to_string())?;
            c.select_bucket(&self.ctx.bucket)
                .await
                .map_err(|e| e.to_string())?;
            let stats = c
                .stats(&format!("vbucket-seqno {vb}"))
                .await
                .map_err(|e| e.to_string())?;
            let key = format!("vb_{vb}:high_seqno");
            stats
                .iter()
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                .ok_or_else(|| format!("no numeric {key} in STAT vbucket-seqno {vb}"))
        };
        match tokio::time::timeout(bound.saturating_add(OUTER_SLACK), read).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} ms", ms(bound))),
        }
    }

    /// Step 6: agent(N) `takeover {source: M}`.
    async fn takeover(&self, m: &NodeId, n: &NodeId) -> Result<(), MoveError> {
        self.enter(Step::Takeover);
        let node = self.node(Step::Takeover, n)?;
        let bound = self.ctx.bounds.takeover;
        let req = TakeoverRequest {
            source: m.0.clone(),
            timeout_ms: ms(bound),
        };
        let f = node.agent.takeover(&self.ctx.bucket, self.vb(), &req);
        self.call(Step::Takeover, n, "takeover", bound, f).await?;
        info!(bucket = %self.ctx.bucket, vb = self.vb(), from = %m, to = %n, "takeover done");
        Ok(())
    }

    /// Step 7: `unreplicate` on every other copy.
    async fn close_streams(&self, others: &[&NodeId]) -> Result<(), MoveError> {
        self.enter(Step::CloseStreams);
        self.unreplicate(Step::CloseStreams, others, self.ctx.bounds.close_streams)
            .await
    }

    async fn unreplicate(
        &self,
        step: Step,
        nodes: &[&NodeId],
        bound: Duration,
    ) -> Result<(), MoveError> {
        let calls = nodes.iter().map(|x| async move {
            let node = self.node(step, x)?;
            let req = UnreplicateRequest {
                timeout_ms: ms(bound),
            };
            let f = node.agent.unreplicate(&self.ctx.bucket, self.vb(), &req);
            self.call(step, x, "closing the stream", bound, f).await
        });
        try_join_all(calls).await.map(drop)
    }

    /// Steps 8–9: the runner's commit and push.
    async fn commit(&self, commit: &dyn Commit) -> Result<(), MoveError> {
        self.enter(Step::Commit);
        let chain = chain_names(&self.mv.new);
        match tokio::time::timeout(COMMIT_BOUND, commit.commit(self.vb(), &chain)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.fail(Step::Commit, None, e.to_json(), "commit")),
            Err(_) => Err(self.fail(
                Step::Commit,
                None,
                json!({"kind": "timeout", "after_ms": ms(COMMIT_BOUND),
                       "message": format!("no answer within {} ms", ms(COMMIT_BOUND))}),
                "commit",
            )),
        }
    }

    /// Step 10: new-chain replicas `build {source: N}` (unless already streaming
    /// from N); old replicas not in the new chain `unreplicate` (unless step 7 did).
    async fn replicate(
        &self,
        n: &NodeId,
        streaming_from_n: &BTreeSet<&NodeId>,
        unreplicated: &BTreeSet<&NodeId>,
    ) -> Result<(), MoveError> {
        self.enter(Step::Replicate);
        let bound = self.ctx.bounds.replicate;
        let to_build: Vec<&NodeId> = self
            .mv
            .new
            .iter()
            .skip(1)
            .flatten()
            .filter(|x| !streaming_from_n.contains(x))
            .collect();
        let builds = to_build.iter().map(|x| async move {
            let node = self.node(Step::Replicate, x)?;
            let req = BuildRequest {
                source: n.0.clone(),
                timeout_ms: ms(bound),
            };
            let f = node.agent.build(&self.ctx.bucket, self.vb(), &req);
            self.call(Step::Replicate, x, "replica build", bound, f)
                .await
        });
        let leaving: Vec<&NodeId> = self
            .mv
            .old
            .iter()
            .skip(1)
            .flatten()
            .filter(|x| !self.mv.new.iter().flatten().any(|y| y == *x))
            .filter(|x| !unreplicated.contains(x))
            .collect();
        let (built, closed) = tokio::join!(
            try_join_all(builds),
            self.unreplicate(Step::Replicate, &leaving, bound)
        );
        built?;
        closed
    }

    /// Step 11: delete the copy on every node of old − new; failures logged only
    /// (the janitor finishes it).
    async fn cleanup(&self) {
        self.enter(Step::Cleanup);
        let bound = self.ctx.bounds.delete;
        let calls = self.mv.copies_to_delete().into_iter().map(|x| async move {
            let node = self.node(Step::Cleanup, x)?;
            let f = node.agent.delete_vbucket(&self.ctx.bucket, self.vb());
            self.call(Step::Cleanup, x, "delete", bound, f).await
        });
        for r in join_all(calls).await {
            if let Err(e) = r {
                warn!(bucket = %self.ctx.bucket, vb = self.vb(), node = ?e.node, error = %e,
                      "deleting the old copy failed; the janitor will");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_are_the_spec_words() {
        let all = [
            (Step::Promote, "promote"),
            (Step::Build, "build"),
            (Step::DataMove, "data_move"),
            (Step::Persistence, "persistence"),
            (Step::Takeover, "takeover"),
            (Step::CloseStreams, "close_streams"),
            (Step::Commit, "commit"),
            (Step::Replicate, "replicate"),
            (Step::Cleanup, "cleanup"),
        ];
        for (s, name) in all {
            assert_eq!(s.as_str(), name);
        }
    }

    /// §5.6: `move_failed` with its fields, as JSON and as a REST error.
    #[test]
    fn move_failed_carries_its_fields() {
        let e = MoveError {
            bucket: "default".into(),
            vb: 17,
            step: Step::Build,
            old_chain: vec![Some("a".into()), Some("b".into())],
            new_chain: vec![Some("c".into()), None],
            node: Some("c".into()),
            cause: json!({"kind": "unexpected_stream_end", "vbucket": 17}),
            message: "vbucket 17 of default: build on c failed: x".into(),
        };
        let v = e.to_json();
        assert_eq!(v["kind"], "move_failed");
        assert_eq!(v["step"], "build");
        assert_eq!(v["vb"], 17);
        assert_eq!(v["old_chain"], json!(["a", "b"]));
        assert_eq!(v["new_chain"], json!(["c", null]));
        assert_eq!(v["node"], "c");
        assert_eq!(v["cause"]["kind"], "unexpected_stream_end");
        let r = e.into_rest();
        assert_eq!(r.kind, "move_failed");
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        let j = r.to_json();
        assert_eq!(j["step"], "build");
        assert_eq!(j["cause"]["vbucket"], 17);
        assert_eq!(j["bucket"], "default");
        assert_eq!(j["kind"], "move_failed");
    }
}
