//! The rebalance move scheduler (cluster.md §5.2): which of a bucket's moves start
//! now, under the per-node backfill and in-flight limits, best first.
//!
//! Pure: no I/O, no clock. The caller reports when a move's persistence wait ended
//! ([`Scheduler::backfill_done`]) and when it ended ([`Scheduler::move_done`]), then
//! asks for more ([`Scheduler::next_moves`]). Every collection is ordered, so the same
//! moves and the same completion order always give the same start sequence.
//!
//! Accounting, as ns_server's `vbucket_move_scheduler`:
//! * a move is charged a *backfill* on its old active (always: it produces every new
//!   copy), on its new active if that differs, and on every new-chain replica that holds
//!   no copy yet; the charge is released when its persistence wait ends;
//! * a move is *in flight* on its old and new active from its start until it is done;
//! * moves from null are charged nothing: the first call returns them all;
//! * a move starts only when every node it is charged a backfill on is under both
//!   limits (§5.2 read literally: a new replica's node must also be under the
//!   in-flight limit, counted for the moves where it is old or new active).
//!
//! MoveWeight counts, per node, the moves touching it (any old- or new-chain position)
//! that have **not yet started**: what is still left to schedule there. ns_server
//! decrements the same counter when it starts a move.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use mcbp::Vbid;

use crate::map::{Move, NodeId};

/// Default running backfills per node (`rebalanceMovesPerNode`, §11).
pub const DEFAULT_MOVES_PER_NODE: usize = 4;
/// Default moves in flight per node where it is old or new active (§11).
pub const DEFAULT_IN_FLIGHT_PER_NODE: usize = 64;

/// Limits (§5.2, §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Running backfills per node (`rebalanceMovesPerNode`, default 4, range 1–64).
    /// A value of 0 is treated as 1, so a rebalance can always make progress.
    pub moves_per_node: usize,
    /// Moves in flight per node where it is old or new active (default 64; 0 is
    /// treated as 1).
    pub in_flight_per_node: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            moves_per_node: DEFAULT_MOVES_PER_NODE,
            in_flight_per_node: DEFAULT_IN_FLIGHT_PER_NODE,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Pending,
    /// Started; `backfill` while its backfill charges are held.
    Running {
        backfill: bool,
    },
    Done,
}

#[derive(Debug)]
struct Entry {
    mv: Move,
    phase: Phase,
    /// Nodes charged a backfill (empty for a move from null).
    backfill_nodes: Vec<NodeId>,
    /// Nodes charged in flight: old and new active (empty for a move from null).
    in_flight_nodes: Vec<NodeId>,
    /// (old active, new copy) pairs: the DCP connections this move backfills over.
    pairs: Vec<(NodeId, NodeId)>,
    /// Every node of the old and new chain.
    touched: Vec<NodeId>,
}

/// The nodes a move is charged a backfill on (§5.2), sorted, without duplicates: the
/// old active, the new active if it differs, every new-chain replica holding no copy.
/// Empty for a move from null.
pub fn backfill_nodes(mv: &Move) -> Vec<NodeId> {
    let Some(old_active) = mv.old_active() else {
        return Vec::new();
    };
    let mut set = BTreeSet::new();
    set.insert(old_active.clone());
    if let Some(new_active) = mv.new_active() {
        set.insert(new_active.clone());
    }
    for (i, n) in mv.new.iter().enumerate() {
        let Some(n) = n else { continue };
        if i > 0 && !mv.old.iter().flatten().any(|o| o == n) {
            set.insert(n.clone());
        }
    }
    set.into_iter().collect()
}

impl Entry {
    fn new(mv: Move) -> Self {
        let backfill_nodes = backfill_nodes(&mv);
        let (in_flight_nodes, pairs) = match mv.old_active() {
            None => (Vec::new(), Vec::new()),
            Some(m) => {
                let mut inf: BTreeSet<NodeId> = BTreeSet::new();
                inf.insert(m.clone());
                inf.extend(mv.new_active().cloned());
                let pairs = backfill_nodes
                    .iter()
                    .filter(|n| *n != m)
                    .map(|n| (m.clone(), n.clone()))
                    .collect();
                (inf.into_iter().collect(), pairs)
            }
        };
        let touched: BTreeSet<NodeId> = mv.old.iter().chain(&mv.new).flatten().cloned().collect();
        Self {
            mv,
            phase: Phase::Pending,
            backfill_nodes,
            in_flight_nodes,
            pairs,
            touched: touched.into_iter().collect(),
        }
    }
}

/// The §5.2 scheduler for one bucket's moves. See the module docs for the accounting.
#[derive(Debug)]
pub struct Scheduler {
    entries: Vec<Entry>,
    by_vb: BTreeMap<Vbid, usize>,
    limits: Limits,
    /// Running backfills per node; every node any move is charged on has an entry.
    backfills: BTreeMap<NodeId, usize>,
    /// Moves in flight per node where it is old or new active.
    in_flight_per_node: BTreeMap<NodeId, usize>,
    /// Moves not yet started touching the node (MoveWeight).
    left: BTreeMap<NodeId, usize>,
    /// Running backfills per (old active, new copy) pair (SerialScore).
    serial: BTreeMap<(NodeId, NodeId), usize>,
    from_null_released: bool,
    pending: usize,
    in_flight: usize,
}

/// The §5.2 ordering key; smaller is better.
type Key = (Reverse<usize>, usize, bool, usize, Vbid);

impl Scheduler {
    /// A scheduler for `moves` (one per vbucket, as [`crate::map::plan`] returns them;
    /// a later duplicate of a vbucket is ignored).
    pub fn new(moves: Vec<Move>, limits: Limits) -> Scheduler {
        let limits = Limits {
            moves_per_node: limits.moves_per_node.max(1),
            in_flight_per_node: limits.in_flight_per_node.max(1),
        };
        let mut s = Scheduler {
            entries: Vec::with_capacity(moves.len()),
            by_vb: BTreeMap::new(),
            limits,
            backfills: BTreeMap::new(),
            in_flight_per_node: BTreeMap::new(),
            left: BTreeMap::new(),
            serial: BTreeMap::new(),
            from_null_released: false,
            pending: 0,
            in_flight: 0,
        };
        for mv in moves {
            if s.by_vb.contains_key(&mv.vb) {
                continue;
            }
            let e = Entry::new(mv);
            for n in &e.backfill_nodes {
                s.backfills.entry(n.clone()).or_insert(0);
            }
            for n in &e.touched {
                *s.left.entry(n.clone()).or_insert(0) += 1;
            }
            s.by_vb.insert(e.mv.vb, s.entries.len());
            s.entries.push(e);
            s.pending += 1;
        }
        s
    }

    /// Moves to start now, best first; each returned move is marked started and charged.
    /// Moves from null are all returned by the first call, outside every limit. After
    /// the call no remaining move fits the limits.
    #[must_use]
    pub fn next_moves(&mut self) -> Vec<Move> {
        let mut out = Vec::new();
        if !self.from_null_released {
            self.from_null_released = true;
            for i in 0..self.entries.len() {
                if self.entries[i].phase == Phase::Pending && self.entries[i].mv.is_from_null() {
                    self.start(i);
                    out.push(self.entries[i].mv.clone());
                }
            }
        }
        while let Some(i) = self.best_fitting() {
            self.start(i);
            out.push(self.entries[i].mv.clone());
        }
        out
    }

    /// The move's persistence wait ended (§5.3 step 4): its backfill charges are
    /// released (it stays in flight). Ignored for a vbucket that is not running or whose
    /// charges were already released.
    pub fn backfill_done(&mut self, vb: Vbid) {
        let Some(&i) = self.by_vb.get(&vb) else {
            return;
        };
        if self.entries[i].phase == (Phase::Running { backfill: true }) {
            self.release_backfill(i);
            self.entries[i].phase = Phase::Running { backfill: false };
        }
    }

    /// The move ended (done): releases its in-flight charge (and its backfill charges if
    /// not yet released). Ignored for a vbucket that is not running.
    pub fn move_done(&mut self, vb: Vbid) {
        let Some(&i) = self.by_vb.get(&vb) else {
            return;
        };
        let Phase::Running { backfill } = self.entries[i].phase else {
            return;
        };
        if backfill {
            self.release_backfill(i);
        }
        for n in &self.entries[i].in_flight_nodes {
            if let Some(c) = self.in_flight_per_node.get_mut(n) {
                *c = c.saturating_sub(1);
            }
        }
        self.entries[i].phase = Phase::Done;
        self.in_flight -= 1;
    }

    /// Whether every move was started and is done.
    pub fn is_finished(&self) -> bool {
        self.pending == 0 && self.in_flight == 0
    }

    /// Moves not yet started.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Moves started and not yet done.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// All moves.
    pub fn total(&self) -> usize {
        self.entries.len()
    }

    /// Running backfills per node (for progress lines): every node some move is charged
    /// a backfill on, zero included.
    pub fn backfills(&self) -> BTreeMap<NodeId, usize> {
        self.backfills.clone()
    }

    /// §5.2: every node the move is charged to is under both limits. The charged
    /// nodes include the old and new active, so the in-flight limit is checked on
    /// them too.
    fn fits(&self, e: &Entry) -> bool {
        e.backfill_nodes.iter().all(|n| {
            self.backfills.get(n).copied().unwrap_or(0) < self.limits.moves_per_node
                && self.in_flight_per_node.get(n).copied().unwrap_or(0)
                    < self.limits.in_flight_per_node
        })
    }

    fn key(&self, e: &Entry) -> Key {
        let weight = e
            .touched
            .iter()
            .map(|n| self.left.get(n).copied().unwrap_or(0))
            .max()
            .unwrap_or(0);
        let serial = e
            .pairs
            .iter()
            .map(|p| self.serial.get(p).copied().unwrap_or(0))
            .sum();
        let heaviness = e
            .backfill_nodes
            .iter()
            .map(|n| self.backfills.get(n).copied().unwrap_or(0))
            .sum();
        (
            Reverse(weight),
            serial,
            !e.mv.changes_active(),
            heaviness,
            e.mv.vb,
        )
    }

    fn best_fitting(&self) -> Option<usize> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.phase == Phase::Pending && self.fits(e))
            .min_by_key(|(_, e)| self.key(e))
            .map(|(i, _)| i)
    }

    fn start(&mut self, i: usize) {
        let e = &mut self.entries[i];
        debug_assert_eq!(e.phase, Phase::Pending, "{} started twice", e.mv.vb);
        e.phase = Phase::Running {
            backfill: !e.backfill_nodes.is_empty(),
        };
        for n in &e.backfill_nodes {
            *self.backfills.entry(n.clone()).or_insert(0) += 1;
        }
        for p in &e.pairs {
            *self.serial.entry(p.clone()).or_insert(0) += 1;
        }
        for n in &e.in_flight_nodes {
            *self.in_flight_per_node.entry(n.clone()).or_insert(0) += 1;
        }
        for n in &e.touched {
            if let Some(c) = self.left.get_mut(n) {
                *c = c.saturating_sub(1);
            }
        }
        self.pending -= 1;
        self.in_flight += 1;
    }

    fn release_backfill(&mut self, i: usize) {
        let e = &self.entries[i];
        for n in &e.backfill_nodes {
            if let Some(c) = self.backfills.get_mut(n) {
                *c = c.saturating_sub(1);
            }
        }
        for p in &e.pairs {
            if let Some(c) = self.serial.get_mut(p) {
                *c = c.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests;
