//! The janitor's pure core (cluster.md §6.2, §6.3): from a bucket's map, its fast-forward
//! map and the vbucket states every server reported, the chains to fix and the states and
//! replications to apply.
//!
//! No I/O, no clock, no randomness. The shell queries every server (§6.1 step 3), calls
//! [`fix_chains`], stores a changed map, then runs the three phases [`apply_plan`] returns
//! (demote, promote, replications), each on every node before the next starts. After a
//! quiet pass [`mismatches`] is empty (invariant I6).

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::map::{incoming_replications, Chain, Map, NodeId};

/// A vbucket state as an agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VbState {
    /// Serves reads and writes.
    Active,
    /// Receives the active's mutations.
    Replica,
    /// Being taken over; counts as not active for the chain rules.
    Pending,
    /// Serves nothing; its data is kept.
    Dead,
}

/// One vbucket copy on one node, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VbCopy {
    /// The copy's state.
    pub state: VbState,
    /// Its high seqno; 0 means the copy holds no data.
    pub high_seqno: u64,
}

impl VbCopy {
    fn has_data(self) -> bool {
        self.high_seqno > 0
    }
}

/// What every server of the bucket reported: node -> vb index -> copy. A vb absent
/// from a node's map means the node has no copy of it.
pub type Actual = BTreeMap<NodeId, BTreeMap<u16, VbCopy>>;

/// Which rule of cluster.md §6.2 decided a vbucket's chain (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// No active copy; the head holds data, or no copy does: keep the chain.
    J1,
    /// No active copy; the head's copy is empty and another copy has data: that copy
    /// becomes the head.
    J2,
    /// The chain is all null and no copy is active: keep it.
    J3,
    /// The head alone is active: keep the chain.
    J4,
    /// The fast-forward head alone is active and its replicas are in place: adopt the
    /// fast-forward chain.
    J5,
    /// One active copy that is not the head: it becomes the head.
    J6,
    /// Several actives, the head among them: keep the chain, demote the others.
    J7,
    /// Several actives, the head not among them: no change, the pass fails.
    J8,
}

/// One chain the rules changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainFix {
    /// The vbucket.
    pub vb: u16,
    /// The rule that changed it (J2, J5 or J6).
    pub rule: Rule,
    /// Its chain before.
    pub old: Chain,
    /// Its chain after.
    pub new: Chain,
}

/// A vbucket more than one node reports active (J7, J8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeveralActives {
    /// The vbucket.
    pub vb: u16,
    /// J7: the actives other than the head (to demote); J8: every active. Sorted.
    pub nodes: Vec<NodeId>,
}

/// What [`fix_chains`] decided for a whole map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixOutcome {
    /// The map after the chain rules (equal to the input when nothing changed).
    pub map: Map,
    /// Chains that changed (J2, J5, J6) — only real changes.
    pub fixes: Vec<ChainFix>,
    /// J7 cases (logged as errors by the caller): vb and the extra actives to demote.
    pub extra_actives: Vec<SeveralActives>,
    /// J8 cases: the pass must fail with `several_actives` for these.
    pub several_actives: Vec<SeveralActives>,
}

/// What the chain rules decided for one vbucket ([`decide_chain`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The rule that applied.
    pub rule: Rule,
    /// The chain to keep (equal to the input chain unless J2, J5 or J6 changed it).
    pub chain: Chain,
    /// Every node reporting the vbucket active, sorted.
    pub actives: Vec<NodeId>,
}

/// The chain rules of cluster.md §6.2 for one vbucket: `chain` is its chain in the map,
/// `ff` its chain in the fast-forward map (if one is set).
///
/// Decisions where the spec is silent:
/// * a `pending` copy counts as not active; a copy "holds data" when its high seqno > 0,
///   whatever its state (after a fenced restart every copy is `dead`, with data);
/// * J3 applies only when no copy is active (an active copy under an all-null chain is
///   adopted by J6, several by J8), and keeps the chain even when a copy still has data;
/// * J2 picks, among all reported copies other than the head's, the highest high seqno,
///   then a chain member before a non-member, then chain order, then node name. The new
///   chain is `[x] + (C without x)` when x is in C, else `[x] + C[1..]` (the head's empty
///   copy gives way), cut or padded with null to C's length;
/// * J5 needs the fast-forward chain to be as long as C, with no node twice and nulls
///   only at the tail; otherwise J6 applies;
/// * J6 follows §6.2 literally: `[x] + (C after x)` padded with null, so the old head and
///   the replicas before x leave the chain (their copies become dead, data kept).
///
/// The output chain has C's length, and names no node twice with nulls only at the tail
/// whenever C does.
pub fn decide_chain(
    vb: u16,
    chain: &[Option<NodeId>],
    ff: Option<&[Option<NodeId>]>,
    actual: &Actual,
) -> Decision {
    let actives: Vec<NodeId> = actual
        .iter()
        .filter(|(_, copies)| copies.get(&vb).is_some_and(|c| c.state == VbState::Active))
        .map(|(node, _)| node.clone())
        .collect();
    let head = chain.first().and_then(Option::as_ref);
    let keep = |rule: Rule, actives: Vec<NodeId>| Decision {
        rule,
        chain: chain.to_vec(),
        actives,
    };

    match actives.as_slice() {
        [] => {
            if chain.iter().all(Option::is_none) {
                return keep(Rule::J3, actives);
            }
            let head_has_data =
                head.is_some_and(|h| copy_of(actual, h, vb).is_some_and(|c| c.has_data()));
            if head_has_data {
                return keep(Rule::J1, actives);
            }
            match best_copy(vb, chain, head, actual) {
                None => keep(Rule::J1, actives),
                Some(x) => Decision {
                    rule: Rule::J2,
                    chain: promoted(chain, x),
                    actives,
                },
            }
        }
        [x] => {
            if Some(x) == head {
                return keep(Rule::J4, actives);
            }
            if let Some(f) = ff.filter(|f| ff_adoptable(f, chain.len(), x, vb, actual)) {
                return Decision {
                    rule: Rule::J5,
                    chain: f.to_vec(),
                    actives,
                };
            }
            let mut new: Chain = vec![Some(x.clone())];
            if let Some(pos) = chain.iter().position(|s| s.as_ref() == Some(x)) {
                new.extend(chain[pos + 1..].iter().cloned());
            }
            new.resize(chain.len(), None);
            Decision {
                rule: Rule::J6,
                chain: new,
                actives,
            }
        }
        _ => {
            let rule = if head.is_some_and(|h| actives.contains(h)) {
                Rule::J7
            } else {
                Rule::J8
            };
            keep(rule, actives)
        }
    }
}

/// §6.2: fix chains from the actual states. `ff` is the fast-forward map if set.
///
/// Every vbucket of `map` goes through [`decide_chain`] with its chain in `ff` (a
/// vbucket `ff` lacks has no fast-forward chain). Vbuckets beyond 65535 are left alone.
pub fn fix_chains(map: &Map, ff: Option<&Map>, actual: &Actual) -> FixOutcome {
    let mut out = map.clone();
    let mut fixes = Vec::new();
    let mut extra_actives = Vec::new();
    let mut several_actives = Vec::new();
    for (index, chain) in map.chains().iter().enumerate() {
        let Ok(vb) = u16::try_from(index) else { break };
        let ff_chain = ff.and_then(|f| f.chain(index)).map(Vec::as_slice);
        let decision = decide_chain(vb, chain, ff_chain, actual);
        match decision.rule {
            Rule::J1 | Rule::J3 | Rule::J4 => {}
            Rule::J2 | Rule::J5 | Rule::J6 => {
                if decision.chain != *chain {
                    out.set_chain(index, decision.chain.clone());
                    fixes.push(ChainFix {
                        vb,
                        rule: decision.rule,
                        old: chain.clone(),
                        new: decision.chain,
                    });
                }
            }
            Rule::J7 => {
                let head = chain.first().and_then(Option::as_ref);
                let nodes = decision
                    .actives
                    .into_iter()
                    .filter(|n| Some(n) != head)
                    .collect();
                extra_actives.push(SeveralActives { vb, nodes });
            }
            Rule::J8 => several_actives.push(SeveralActives {
                vb,
                nodes: decision.actives,
            }),
        }
    }
    FixOutcome {
        map: out,
        fixes,
        extra_actives,
        several_actives,
    }
}

fn copy_of<'a>(actual: &'a Actual, node: &NodeId, vb: u16) -> Option<&'a VbCopy> {
    actual.get(node).and_then(|copies| copies.get(&vb))
}

/// J2's candidate: the reported copy with data that is best to promote, other than `head`.
fn best_copy<'a>(
    vb: u16,
    chain: &[Option<NodeId>],
    head: Option<&NodeId>,
    actual: &'a Actual,
) -> Option<&'a NodeId> {
    let chain_pos = |node: &NodeId| chain.iter().position(|s| s.as_ref() == Some(node));
    actual
        .iter()
        .filter(|(node, _)| Some(*node) != head)
        .filter_map(|(node, copies)| {
            let copy = copies.get(&vb).filter(|c| c.has_data())?;
            Some((node, copy.high_seqno))
        })
        // Highest seqno first; then chain members in chain order (None sorts after
        // Some here through the `is_none` key); then name (the iteration order).
        .min_by_key(|(node, seqno)| {
            let pos = chain_pos(node);
            (std::cmp::Reverse(*seqno), pos.is_none(), pos)
        })
        .map(|(node, _)| node)
}

/// J2's new chain: `x` at the head, the rest of the chain after it without `x`; when `x`
/// was not in the chain, the (empty) head gives way.
fn promoted(chain: &[Option<NodeId>], x: &NodeId) -> Chain {
    let width = chain.len();
    let in_chain = chain.iter().any(|s| s.as_ref() == Some(x));
    let rest = if in_chain {
        chain
    } else {
        chain.get(1..).unwrap_or_default()
    };
    let mut new: Chain = vec![Some(x.clone())];
    new.extend(rest.iter().filter(|s| s.as_ref() != Some(x)).cloned());
    new.resize(width, None);
    new
}

/// J5's condition on the fast-forward chain `f`, given that `x` alone is active and is
/// not C's head.
fn ff_adoptable(f: &[Option<NodeId>], width: usize, x: &NodeId, vb: u16, actual: &Actual) -> bool {
    f.len() == width
        && f.first().and_then(Option::as_ref) == Some(x)
        && chain_is_well_formed(f)
        && f.iter()
            .skip(1)
            .flatten()
            .all(|n| copy_of(actual, n, vb).is_some_and(|c| c.state == VbState::Replica))
}

/// No node twice, nulls only at the tail.
fn chain_is_well_formed(chain: &[Option<NodeId>]) -> bool {
    let filled = chain.iter().take_while(|s| s.is_some()).count();
    if chain[filled..].iter().any(Option::is_some) {
        return false;
    }
    let distinct: BTreeSet<&NodeId> = chain.iter().flatten().collect();
    distinct.len() == filled
}

/// The state the janitor wants a copy in (§6.3); the agent API's `states` words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wanted {
    /// The head of the vbucket's chain.
    Active,
    /// A non-null tail entry of the vbucket's chain.
    Replica,
    /// Not in the chain: serves nothing, data kept.
    Dead,
}

/// Per-node work of one apply (§6.3), phase by phase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeApply {
    /// Phase demote: vb -> Replica or Dead, only where the actual state differs
    /// (a missing copy that is wanted as replica is listed too: the agent creates it).
    pub demote: BTreeMap<u16, Wanted>,
    /// Phase promote: vbuckets to set active (actual state differs), ascending.
    pub promote: Vec<u16>,
    /// Phase replications: the complete incoming replication map this node must
    /// end with: producer node -> sorted vbuckets (replica <- head of its chain).
    pub incoming: BTreeMap<NodeId, Vec<u16>>,
}

/// The nodes an apply covers: the servers, plus any other node that reported copies
/// (so a stray active there is demoted before anything is promoted).
fn apply_nodes<'a>(servers: &'a [NodeId], actual: &'a Actual) -> BTreeSet<&'a NodeId> {
    servers.iter().chain(actual.keys()).collect()
}

/// The wanted state of every copy `node` must have or holds (§6.3): head -> Active,
/// other non-null chain entries -> Replica, any other copy it holds -> Dead, including
/// copies of vbuckets the map does not have.
fn wanted_states(
    map: &Map,
    node: &NodeId,
    held: Option<&BTreeMap<u16, VbCopy>>,
) -> BTreeMap<u16, Wanted> {
    let mut wanted = BTreeMap::new();
    for (index, chain) in map.chains().iter().enumerate() {
        let Ok(vb) = u16::try_from(index) else { break };
        let want = if chain.first().and_then(Option::as_ref) == Some(node) {
            Some(Wanted::Active)
        } else if chain.iter().skip(1).flatten().any(|n| n == node) {
            Some(Wanted::Replica)
        } else {
            None
        };
        if let Some(want) = want {
            wanted.insert(vb, want);
        }
    }
    for &vb in held.into_iter().flat_map(BTreeMap::keys) {
        wanted.entry(vb).or_insert(Wanted::Dead);
    }
    wanted
}

/// §6.3: the wanted state of every server's copies under `map`, compared with `actual`.
/// Every server in `servers` gets an entry (even if it has nothing to change).
/// Wanted per (node, vb): head -> Active, other non-null chain entries -> Replica,
/// everything else the node holds -> Dead (data kept; vbuckets the node does not hold
/// and does not need are not listed). Copies actually active but not wanted active
/// are demoted (to Replica if in the chain, else Dead) in `demote`.
///
/// A node of `actual` that is not in `servers` gets an entry too (all its copies are
/// wanted dead, or as the map says if it names the node), so that once the demote phase
/// has run on every listed node no vbucket that is promoted is active anywhere: the
/// promote phase can never create a second active. Copies are never deleted here.
/// `incoming` is what [`incoming_replications`] implies for the node, producers outside
/// `servers` included.
pub fn apply_plan(map: &Map, servers: &[NodeId], actual: &Actual) -> BTreeMap<NodeId, NodeApply> {
    let implied = incoming_replications(map);
    let mut out = BTreeMap::new();
    for node in apply_nodes(servers, actual) {
        let held = actual.get(node);
        let mut work = NodeApply::default();
        for (vb, want) in wanted_states(map, node, held) {
            let got = held.and_then(|h| h.get(&vb)).map(|c| c.state);
            match want {
                Wanted::Active if got != Some(VbState::Active) => work.promote.push(vb),
                Wanted::Replica if got != Some(VbState::Replica) => {
                    work.demote.insert(vb, Wanted::Replica);
                }
                Wanted::Dead if got.is_some_and(|s| s != VbState::Dead) => {
                    work.demote.insert(vb, Wanted::Dead);
                }
                Wanted::Active | Wanted::Replica | Wanted::Dead => {}
            }
        }
        if let Some(producers) = implied.get(node) {
            work.incoming = producers
                .iter()
                .filter(|(producer, _)| *producer != node)
                .map(|(producer, vbs)| (producer.clone(), vbs.iter().map(|v| v.0).collect()))
                .collect();
        }
        out.insert(node.clone(), work);
    }
    out
}

/// I6 check: empty when `actual` equals what `map` implies (heads active, tails
/// replica, others dead or absent). Otherwise every mismatch `(vb, node, want, got)`,
/// in vbucket then node order (the caller cuts the list for messages).
///
/// Nodes checked are `servers` plus any other node in `actual`; a chain member that is
/// neither reported nothing and is not checked.
pub fn mismatches(
    map: &Map,
    servers: &[NodeId],
    actual: &Actual,
) -> Vec<(u16, NodeId, Wanted, Option<VbState>)> {
    let mut out = Vec::new();
    for node in apply_nodes(servers, actual) {
        let held = actual.get(node);
        for (vb, want) in wanted_states(map, node, held) {
            let got = held.and_then(|h| h.get(&vb)).map(|c| c.state);
            let ok = match want {
                Wanted::Active => got == Some(VbState::Active),
                Wanted::Replica => got == Some(VbState::Replica),
                Wanted::Dead => matches!(got, None | Some(VbState::Dead)),
            };
            if !ok {
                out.push((vb, node.clone(), want, got));
            }
        }
    }
    out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    out
}
