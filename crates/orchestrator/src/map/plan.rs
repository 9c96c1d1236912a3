//! What a map change implies: the moves (cluster.md §4.4 "Plan") and the replications a
//! map implies (§6.3, §5.1 h).

use std::collections::{BTreeMap, BTreeSet};

use mcbp::Vbid;

use super::{Chain, Map, NodeId};

/// One vbucket whose chain changes (cluster.md §4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The vbucket.
    pub vb: Vbid,
    /// Its chain in the current map.
    pub old: Chain,
    /// Its chain in the target map.
    pub new: Chain,
}

impl Move {
    /// The old active (`M` of §5.3); `None` for a move from null.
    pub fn old_active(&self) -> Option<&NodeId> {
        self.old.first().and_then(Option::as_ref)
    }

    /// The new active (`N` of §5.3).
    pub fn new_active(&self) -> Option<&NodeId> {
        self.new.first().and_then(Option::as_ref)
    }

    /// Whether the old chain has no active ("moves from null" start first, §5.2).
    pub fn is_from_null(&self) -> bool {
        self.old_active().is_none()
    }

    /// Whether the active changes (a takeover is needed).
    pub fn changes_active(&self) -> bool {
        self.old_active() != self.new_active()
    }

    /// New-chain nodes other than the old active (`B` of §5.3): they get the data.
    pub fn builders(&self) -> Vec<&NodeId> {
        let old_active = self.old_active();
        self.new
            .iter()
            .flatten()
            .filter(|n| Some(*n) != old_active)
            .collect()
    }

    /// New-chain nodes holding no copy in the old chain (the copies this move builds).
    pub fn copies_to_build(&self) -> Vec<&NodeId> {
        self.new
            .iter()
            .flatten()
            .filter(|n| !self.old.iter().flatten().any(|o| o == *n))
            .collect()
    }

    /// Old-chain nodes absent from the new chain: their copies are deleted (§5.3 step 11).
    pub fn copies_to_delete(&self) -> Vec<&NodeId> {
        self.old
            .iter()
            .flatten()
            .filter(|o| !self.new.iter().flatten().any(|n| n == *o))
            .collect()
    }
}

/// Two maps that cannot be compared chain by chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Different numbers of vbuckets.
    #[error("plan: current map has {current} vbuckets, target {target}")]
    VbucketCount {
        /// Chains in the current map.
        current: usize,
        /// Chains in the target map.
        target: usize,
    },
    /// Chains of different lengths (align the current map first, §4.4).
    #[error("plan: {vb} has a chain of {current} entries now and {target} in the target")]
    ChainLength {
        /// The vbucket.
        vb: Vbid,
        /// Entries now.
        current: usize,
        /// Entries in the target.
        target: usize,
    },
}

/// One [`Move`] per vbucket whose chains differ in any position, in vbucket order
/// (cluster.md §4.4). Pure; ordering them is the scheduler's job.
///
/// # Errors
/// [`PlanError`] when the maps differ in shape.
pub fn plan(current: &Map, target: &Map) -> Result<Vec<Move>, PlanError> {
    if current.num_vbuckets() != target.num_vbuckets() {
        return Err(PlanError::VbucketCount {
            current: current.num_vbuckets(),
            target: target.num_vbuckets(),
        });
    }
    let mut moves = Vec::new();
    for (vb, (old, new)) in current.chains().iter().zip(target.chains()).enumerate() {
        let vb = Vbid(u16::try_from(vb).unwrap_or(u16::MAX));
        if old.len() != new.len() {
            return Err(PlanError::ChainLength {
                vb,
                current: old.len(),
                target: new.len(),
            });
        }
        if old != new {
            moves.push(Move {
                vb,
                old: old.clone(),
                new: new.clone(),
            });
        }
    }
    Ok(moves)
}

/// The replications a map implies, per consumer node: for every chain, each replica
/// streams the vbucket from the head (`replica ← head`). The janitor's `replications`
/// phase (§6.3) sets exactly this; §5.1 h compares every server's actual incoming
/// replications with it.
pub fn incoming_replications(map: &Map) -> BTreeMap<NodeId, BTreeMap<NodeId, BTreeSet<Vbid>>> {
    let mut out: BTreeMap<NodeId, BTreeMap<NodeId, BTreeSet<Vbid>>> = BTreeMap::new();
    for (vb, chain) in map.chains().iter().enumerate() {
        let Some(Some(head)) = chain.first() else {
            continue;
        };
        let Ok(vb) = u16::try_from(vb) else { break };
        for replica in chain.iter().skip(1).flatten() {
            out.entry(replica.clone())
                .or_default()
                .entry(head.clone())
                .or_default()
                .insert(Vbid(vb));
        }
    }
    out
}
