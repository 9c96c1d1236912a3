//! Rebalance progress (cluster.md §5.4): per-move states, per-node and overall
//! progress, and the `moves` and `detailedProgress` objects of the rebalance task
//! (§3.5).
//!
//! Pure: the caller feeds move states and data-move estimates with the time they were
//! read (`now_ms`, any monotonic millisecond clock); nothing here reads a clock.

use std::collections::BTreeMap;

use mcbp::Vbid;
use serde::Serialize;
use serde_json::{json, Map as JsonMap, Value};

use crate::map::{Chain, Move, NodeId};

/// How old a data-move estimate may be to count in the per-node docs (§5.4).
pub const DOCS_ESTIMATE_MAX_AGE_MS: u64 = 5_000;

/// One move's state (§5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum MoveState {
    /// Not started.
    Pending,
    /// Replications being set up (§5.3 step 1, or step 0 for a move from null).
    Building,
    /// Data move (§5.3 step 2).
    Backfilling,
    /// Persistence wait (§5.3 step 3).
    Persisting,
    /// Takeover (§5.3 step 6).
    Takeover,
    /// Closing old streams and committing the chain (§5.3 steps 7–9).
    Committing,
    /// New replications and deletions (§5.3 steps 10–11).
    Cleanup,
    /// Ended well.
    Done,
    /// Ended with an error.
    Failed,
    /// Cancelled by a stop or another move's failure.
    Aborted,
}

impl MoveState {
    /// Started and not ended.
    pub fn is_running(self) -> bool {
        matches!(
            self,
            Self::Building
                | Self::Backfilling
                | Self::Persisting
                | Self::Takeover
                | Self::Committing
                | Self::Cleanup
        )
    }

    /// Holding a backfill slot: started and before the end of the persistence wait
    /// (§5.3 step 4).
    pub fn is_backfilling(self) -> bool {
        matches!(self, Self::Building | Self::Backfilling | Self::Persisting)
    }

    /// The state's JSON name (`"backfilling"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Building => "building",
            Self::Backfilling => "backfilling",
            Self::Persisting => "persisting",
            Self::Takeover => "takeover",
            Self::Committing => "committing",
            Self::Cleanup => "cleanup",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Aborted => "aborted",
        }
    }
}

/// Move counts of the tasks entry's `moves` object (§3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct MoveCounts {
    /// Every move of the bucket.
    pub total: usize,
    /// Moves in state `done`.
    pub done: usize,
    /// Moves started and not ended.
    pub running: usize,
    /// Running moves holding a backfill slot (building, backfilling, persisting).
    pub backfilling: usize,
}

#[derive(Debug, Clone, Copy)]
struct Estimate {
    docs_left: u64,
    /// The largest estimate seen: the move's docs total.
    docs_total: u64,
    at_ms: u64,
}

#[derive(Debug)]
struct Tracked {
    mv: Move,
    state: MoveState,
    estimate: Option<Estimate>,
}

/// One bucket's rebalance progress.
#[derive(Debug)]
pub struct BucketProgress {
    bucket: String,
    index: usize,
    count: usize,
    nodes: Vec<NodeId>,
    moves: Vec<Tracked>,
    by_vb: BTreeMap<Vbid, usize>,
    /// Per node, the moves touching it as old active or builder (§5.4) at the start.
    at_start: BTreeMap<NodeId, usize>,
}

/// Whether `x` is the old active or one of the builders (`B`) of `mv` (§5.4).
fn counts_for(mv: &Move, x: &NodeId) -> bool {
    mv.old_active() == Some(x) || mv.builders().contains(&x)
}

fn chain_json(chain: &Chain) -> Value {
    Value::Array(
        chain
            .iter()
            .map(|n| {
                n.as_ref()
                    .map_or(Value::Null, |n| Value::String(n.0.clone()))
            })
            .collect(),
    )
}

impl BucketProgress {
    /// `index`/`count`: this bucket's position among the rebalance's buckets (0-based);
    /// `nodes`: keep ∪ eject (the nodes progress is reported for). A later duplicate
    /// of a vbucket in `moves` is ignored.
    pub fn new(
        bucket: &str,
        index: usize,
        count: usize,
        moves: &[Move],
        nodes: &[NodeId],
    ) -> BucketProgress {
        let mut nodes = nodes.to_vec();
        nodes.sort();
        nodes.dedup();
        let mut by_vb = BTreeMap::new();
        let mut tracked = Vec::with_capacity(moves.len());
        for mv in moves {
            if by_vb.contains_key(&mv.vb) {
                continue;
            }
            by_vb.insert(mv.vb, tracked.len());
            tracked.push(Tracked {
                mv: mv.clone(),
                state: MoveState::Pending,
                estimate: None,
            });
        }
        let at_start = nodes
            .iter()
            .map(|x| {
                let c = tracked.iter().filter(|t| counts_for(&t.mv, x)).count();
                (x.clone(), c)
            })
            .collect();
        BucketProgress {
            bucket: bucket.to_owned(),
            index,
            count: count.max(index + 1),
            nodes,
            moves: tracked,
            by_vb,
            at_start,
        }
    }

    /// Sets a move's state; ignored for a vbucket without a move.
    pub fn set_state(&mut self, vb: Vbid, s: MoveState) {
        if let Some(&i) = self.by_vb.get(&vb) {
            self.moves[i].state = s;
        }
    }

    /// Records a data-move estimate (§5.3 step 2) read at `now_ms`; ignored for a
    /// vbucket without a move.
    pub fn set_docs_left(&mut self, vb: Vbid, docs: u64, now_ms: u64) {
        if let Some(&i) = self.by_vb.get(&vb) {
            let t = &mut self.moves[i];
            let total = t.estimate.map_or(docs, |e| e.docs_total.max(docs));
            t.estimate = Some(Estimate {
                docs_left: docs,
                docs_total: total,
                at_ms: now_ms,
            });
        }
    }

    /// Per node fraction 0..=1 per §5.4: `(i + p)/b` with p = 1 − (moves left touching
    /// the node as old active or builder) / (such moves at the start), p = 1 for nodes
    /// no move touches. A move is left until it is `done` (a failed or aborted move
    /// never counts as progress).
    pub fn per_node(&self) -> BTreeMap<NodeId, f64> {
        self.nodes
            .iter()
            .map(|x| {
                let start = self.at_start.get(x).copied().unwrap_or(0);
                let p = if start == 0 {
                    1.0
                } else {
                    let left = self
                        .moves
                        .iter()
                        .filter(|t| t.state != MoveState::Done && counts_for(&t.mv, x))
                        .count();
                    1.0 - left as f64 / start as f64
                };
                (x.clone(), (self.index as f64 + p) / self.count as f64)
            })
            .collect()
    }

    /// Overall percent 0..=100: the mean of [`Self::per_node`] × 100 (with no nodes,
    /// as if every node were done with this bucket).
    pub fn overall(&self) -> f64 {
        let per_node = self.per_node();
        if per_node.is_empty() {
            return (self.index as f64 + 1.0) / self.count as f64 * 100.0;
        }
        per_node.values().sum::<f64>() / per_node.len() as f64 * 100.0
    }

    /// Counts: total, done, running (started, not ended), backfilling.
    pub fn counts(&self) -> MoveCounts {
        let mut c = MoveCounts {
            total: self.moves.len(),
            ..MoveCounts::default()
        };
        for t in &self.moves {
            c.done += usize::from(t.state == MoveState::Done);
            c.running += usize::from(t.state.is_running());
            c.backfilling += usize::from(t.state.is_backfilling());
        }
        c
    }

    /// A move's state; `None` for a vbucket without a move.
    pub fn state(&self, vb: Vbid) -> Option<MoveState> {
        self.by_vb.get(&vb).map(|&i| self.moves[i].state)
    }

    /// The tasks entry's `moves` object (§3.5): the counts and, in `vbuckets`, every
    /// move that started and did not end well (running, failed, aborted) in vbucket
    /// order, with `docsLeft` from its last estimate when there is one.
    pub fn moves_json(&self) -> Value {
        let c = self.counts();
        let mut listed: Vec<&Tracked> = self
            .moves
            .iter()
            .filter(|t| !matches!(t.state, MoveState::Pending | MoveState::Done))
            .collect();
        listed.sort_by_key(|t| t.mv.vb);
        let vbuckets: Vec<Value> = listed
            .into_iter()
            .map(|t| {
                let mut o = JsonMap::new();
                o.insert("vb".into(), json!(t.mv.vb.0));
                o.insert("from".into(), chain_json(&t.mv.old));
                o.insert("to".into(), chain_json(&t.mv.new));
                o.insert("state".into(), json!(t.state.as_str()));
                if let Some(e) = t.estimate {
                    o.insert("docsLeft".into(), json!(e.docs_left));
                }
                Value::Object(o)
            })
            .collect();
        json!({
            "total": c.total,
            "done": c.done,
            "running": c.running,
            "backfilling": c.backfilling,
            "vbuckets": vbuckets,
        })
    }

    /// The tasks entry's `detailedProgress` object (§3.5). Per node, `ingoing` covers
    /// moves where it is a builder, `outgoing` moves where it is the old active;
    /// `*VBucketsLeft` count such moves not done, `active` when the node becomes (or
    /// stops being) the active. Docs: a done move counts its docs total as transferred;
    /// a running move counts only with an estimate at most 5 s old at `now_ms`.
    pub fn detailed_json(&self, now_ms: u64) -> Value {
        #[derive(Default)]
        struct Dir {
            docs_total: u64,
            docs_transferred: u64,
            active_left: usize,
            replica_left: usize,
        }
        impl Dir {
            fn add(&mut self, t: &Tracked, active: bool, now_ms: u64) {
                let done = t.state == MoveState::Done;
                if !done {
                    if active {
                        self.active_left += 1;
                    } else {
                        self.replica_left += 1;
                    }
                }
                if let Some(e) = t.estimate {
                    if done {
                        self.docs_total += e.docs_total;
                        self.docs_transferred += e.docs_total;
                    } else if now_ms.saturating_sub(e.at_ms) <= DOCS_ESTIMATE_MAX_AGE_MS {
                        self.docs_total += e.docs_total;
                        self.docs_transferred += e.docs_total - e.docs_left.min(e.docs_total);
                    }
                }
            }
            fn json(&self) -> Value {
                json!({
                    "docsTotal": self.docs_total,
                    "docsTransferred": self.docs_transferred,
                    "activeVBucketsLeft": self.active_left,
                    "replicaVBucketsLeft": self.replica_left,
                })
            }
        }
        let mut per_node = JsonMap::new();
        for x in &self.nodes {
            let (mut ingoing, mut outgoing) = (Dir::default(), Dir::default());
            for t in &self.moves {
                let becomes_active = t.mv.new_active() == Some(x) && t.mv.changes_active();
                if t.mv.builders().contains(&x) {
                    ingoing.add(t, becomes_active, now_ms);
                }
                if t.mv.old_active() == Some(x) {
                    outgoing.add(t, t.mv.changes_active(), now_ms);
                }
            }
            per_node.insert(
                x.0.clone(),
                json!({"ingoing": ingoing.json(), "outgoing": outgoing.json()}),
            );
        }
        json!({
            "bucket": self.bucket,
            "bucketNumber": self.index + 1,
            "bucketsCount": self.count,
            "perNode": per_node,
        })
    }
}

/// Per-node progress when no bucket is running (§5.4's `(i + p)/b`): `finished`
/// buckets of `count` are done and the next has not started, so every node is at
/// `finished / count`; after the last bucket (or with no buckets) all are 1.0.
pub fn between_buckets(nodes: &[NodeId], finished: usize, count: usize) -> BTreeMap<NodeId, f64> {
    let value = if count == 0 || finished >= count {
        1.0
    } else {
        finished as f64 / count as f64
    };
    nodes.iter().map(|x| (x.clone(), value)).collect()
}

/// The overall percent for per-node values: their mean × 100 (100 with no nodes).
pub fn overall_of(per_node: &BTreeMap<NodeId, f64>) -> f64 {
    if per_node.is_empty() {
        return 100.0;
    }
    per_node.values().sum::<f64>() / per_node.len() as f64 * 100.0
}

#[cfg(test)]
mod tests;
