//! Vbucket map generation (cluster.md §4): a pure, seeded function from the current map,
//! the nodes to keep and the bucket's options to a balanced target map that moves as
//! little data as it can.
//!
//! No I/O, no clock, no global randomness: the caller passes the seed, and the same
//! input with the same seed gives the same map. Everything works on node indices
//! (into the keep nodes in name order) inside; [`Map`] with node names is the edge.

mod greedy;
mod plan;
mod rng;
mod rules;
mod types;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use mcbp::Vbid;

pub use plan::{incoming_replications, plan, Move, PlanError};
pub use rules::{
    check_rules, is_balanced, rebalance_reasons, BalanceInput, MapOptions, RebalanceReason,
    RuleViolation, Unbalanced,
};
pub use types::{Chain, CompactMap, CompactMapError, GroupId, Map, NodeId};

/// `max_slaves` default (cluster.md §11).
pub const DEFAULT_MAX_SLAVES: usize = 10;
/// Map candidates tried per generation (cluster.md §11).
pub const DEFAULT_TRIES: usize = 9;

/// Everything [`generate`] needs (cluster.md §4.1).
#[derive(Debug, Clone, Copy)]
pub struct MapInput<'a> {
    /// V chains of R+1 entries; all null for a new bucket ([`Map::empty`]). It may name
    /// nodes that are leaving.
    pub current: &'a Map,
    /// The nodes the new map is built over (the keep nodes), in any order.
    pub nodes: &'a [NodeId],
    /// Server group of each keep node, when server groups are configured.
    pub groups: Option<&'a BTreeMap<NodeId, GroupId>>,
    /// R, the bucket's configured replica count.
    pub replicas: usize,
    /// S, how many other nodes one node may replicate to.
    pub max_slaves: usize,
    /// The last balanced map (the fast-forward map of the last rebalance), a candidate.
    pub last_balanced: Option<&'a Map>,
    /// Seed of the first greedy run; run `i` uses `seed + i`.
    pub seed: u64,
    /// Greedy runs to try (≥ 1).
    pub tries: usize,
}

/// What [`generate`] chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapOutcome {
    /// The new map: V chains of R+1 entries.
    pub map: Map,
    /// Its cost from the current map.
    pub score: Score,
    /// Whether the winner is the last balanced map (possibly renamed onto the keep nodes).
    pub from_history: bool,
}

/// What a change from one map to another costs; lower is better, compared field by field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Score {
    /// Per vbucket, target-chain nodes that hold no copy in the current chain.
    pub copies_to_build: u32,
    /// Chains whose head (active) changes.
    pub active_changes: u32,
}

/// Why [`generate`] could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// No keep nodes.
    #[error("map generation: no nodes to build the map over")]
    NoNodes,
    /// The current map has no chains.
    #[error("map generation: the bucket has no vbuckets")]
    NoVbuckets,
    /// More vbuckets than vbucket ids exist.
    #[error("map generation: {vbuckets} vbuckets, at most 65536 can be named")]
    TooManyVbuckets {
        /// The number asked for.
        vbuckets: usize,
    },
    /// A keep node is listed twice.
    #[error("map generation: node {node} is listed twice")]
    DuplicateNode {
        /// The node.
        node: NodeId,
    },
    /// A chain of the current map is malformed.
    #[error("map generation: chain of {vb} in the current map: {problem}")]
    InvalidCurrent {
        /// The vbucket.
        vb: Vbid,
        /// What is wrong with it.
        problem: ChainProblem,
    },
    /// Server groups were given but one keep node has none.
    #[error("map generation: node {node} has no server group")]
    NodeWithoutGroup {
        /// The node.
        node: NodeId,
    },
    /// `tries` was 0.
    #[error("map generation: tries must be at least 1")]
    ZeroTries,
}

/// What is wrong with one chain of an input map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainProblem {
    /// Not R+1 entries.
    #[error("{len} entries, expected {expected}")]
    WrongLength {
        /// Entries found.
        len: usize,
        /// R+1.
        expected: usize,
    },
    /// A node holds two copies.
    #[error("node {node} appears twice")]
    NodeTwice {
        /// The node.
        node: NodeId,
    },
}

/// R' and S' of §4.1's normalisation: what `replicas` and `max_slaves` amount to on
/// `nodes` nodes. Positions of a chain beyond R' stay null ("replicas that cannot exist").
pub fn effective_replicas(nodes: usize, replicas: usize, max_slaves: usize) -> (usize, usize) {
    let others = nodes.saturating_sub(1);
    let mut r = replicas.min(others);
    let mut s = max_slaves.min(others);
    if s < r {
        r = s;
    }
    if r == 0 {
        s = 0;
    }
    (r, s)
}

/// A chain in index space: entries are indices into the keep nodes.
pub(crate) type IChain = Vec<Option<usize>>;

/// The generator's view of its input, validated and in index space.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) v: usize,
    pub(crate) n: usize,
    /// R+1.
    pub(crate) width: usize,
    /// R'.
    pub(crate) r: usize,
    /// S'.
    pub(crate) s: usize,
    /// Group index of every node, when groups are in use (≥ 2 groups among the keep nodes).
    pub(crate) groups: Option<Vec<usize>>,
    /// Whether the groups allow every chain to be spread over distinct groups while every
    /// node keeps its balanced share (G6 is then checked strictly).
    pub(crate) groups_permit: bool,
    /// Keep nodes in name order.
    pub(crate) nodes: Vec<NodeId>,
    /// Per vbucket, the keep nodes holding a copy now, in chain order.
    pub(crate) cur: Vec<Vec<usize>>,
    /// Per vbucket, the current head when it is a keep node.
    pub(crate) cur_head: Vec<Option<usize>>,
}

impl Ctx {
    pub(crate) fn new(input: &MapInput<'_>) -> Result<Self, MapError> {
        if input.nodes.is_empty() {
            return Err(MapError::NoNodes);
        }
        if input.tries == 0 {
            return Err(MapError::ZeroTries);
        }
        let mut nodes = input.nodes.to_vec();
        nodes.sort();
        if let Some(w) = nodes.windows(2).find(|w| w[0] == w[1]) {
            return Err(MapError::DuplicateNode { node: w[0].clone() });
        }
        let v = input.current.num_vbuckets();
        if v == 0 {
            return Err(MapError::NoVbuckets);
        }
        if v > usize::from(u16::MAX) + 1 {
            return Err(MapError::TooManyVbuckets { vbuckets: v });
        }
        let width = input.replicas + 1;
        validate_chains(input.current, width)?;
        let n = nodes.len();
        let (r, s) = effective_replicas(n, input.replicas, input.max_slaves);

        let groups = match input.groups {
            None => None,
            Some(map) => {
                let mut names: Vec<&GroupId> = Vec::with_capacity(n);
                for node in &nodes {
                    names.push(
                        map.get(node)
                            .ok_or_else(|| MapError::NodeWithoutGroup { node: node.clone() })?,
                    );
                }
                let distinct: BTreeSet<&GroupId> = names.iter().copied().collect();
                if distinct.len() >= 2 {
                    let index: BTreeMap<&GroupId, usize> =
                        distinct.iter().enumerate().map(|(i, g)| (*g, i)).collect();
                    Some(names.iter().map(|g| index[g]).collect::<Vec<usize>>())
                } else {
                    None
                }
            }
        };
        let groups_permit = groups.as_ref().is_some_and(|g| {
            let mut sizes: BTreeMap<usize, usize> = BTreeMap::new();
            for &gi in g {
                *sizes.entry(gi).or_default() += 1;
            }
            s + 1 == n && sizes.len() > r && sizes.values().all(|&m| (r + 1) * m <= n)
        });

        let mut cur = Vec::with_capacity(v);
        let mut cur_head = Vec::with_capacity(v);
        for chain in input.current.chains() {
            let idx: Vec<Option<usize>> = chain
                .iter()
                .map(|slot| {
                    slot.as_ref()
                        .and_then(|node| nodes.binary_search(node).ok())
                })
                .collect();
            cur_head.push(idx.first().copied().flatten());
            cur.push(idx.into_iter().flatten().collect());
        }
        Ok(Self {
            v,
            n,
            width,
            r,
            s,
            groups,
            groups_permit,
            nodes,
            cur,
            cur_head,
        })
    }

    /// The map in index space; `None` when it names a node that is not kept or has the
    /// wrong shape.
    pub(crate) fn index_map(&self, map: &Map) -> Option<Vec<IChain>> {
        if map.num_vbuckets() != self.v {
            return None;
        }
        map.chains()
            .iter()
            .map(|chain| {
                if chain.len() != self.width {
                    return None;
                }
                chain
                    .iter()
                    .map(|slot| match slot {
                        None => Some(None),
                        Some(node) => self.nodes.binary_search(node).ok().map(Some),
                    })
                    .collect::<Option<IChain>>()
            })
            .collect()
    }

    pub(crate) fn to_map(&self, chains: &[IChain]) -> Map {
        Map::new(
            chains
                .iter()
                .map(|c| c.iter().map(|s| s.map(|i| self.nodes[i].clone())).collect())
                .collect(),
        )
    }

    /// Cost of giving vbucket `vb` the chain `chain` (index space).
    pub(crate) fn chain_cost(&self, vb: usize, chain: impl IntoIterator<Item = usize>) -> Score {
        let mut score = Score::default();
        for (pos, node) in chain.into_iter().enumerate() {
            if pos == 0 && self.cur_head[vb] != Some(node) {
                score.active_changes += 1;
            }
            if !self.cur[vb].contains(&node) {
                score.copies_to_build += 1;
            }
        }
        score
    }

    pub(crate) fn score(&self, chains: &[IChain]) -> Score {
        let mut total = Score::default();
        for (vb, chain) in chains.iter().enumerate() {
            let s = self.chain_cost(vb, chain.iter().flatten().copied());
            total.copies_to_build += s.copies_to_build;
            // A head that stays null is no change; a null head cannot come out of the
            // generator anyway.
            if chain.first().copied().flatten().is_some() {
                total.active_changes += s.active_changes;
            }
        }
        total
    }
}

fn validate_chains(map: &Map, width: usize) -> Result<(), MapError> {
    for (vb, chain) in map.chains().iter().enumerate() {
        let vbid = Vbid(u16::try_from(vb).expect("vbucket count checked to fit u16 ids"));
        if chain.len() != width {
            return Err(MapError::InvalidCurrent {
                vb: vbid,
                problem: ChainProblem::WrongLength {
                    len: chain.len(),
                    expected: width,
                },
            });
        }
        for (i, slot) in chain.iter().enumerate() {
            if let Some(node) = slot {
                if chain[..i].iter().flatten().any(|n| n == node) {
                    return Err(MapError::InvalidCurrent {
                        vb: vbid,
                        problem: ChainProblem::NodeTwice { node: node.clone() },
                    });
                }
            }
        }
    }
    Ok(())
}

/// Which candidate a map came from; the order breaks score ties (history first, §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Origin {
    History,
    Current,
    Swap,
    Greedy(usize),
}

/// Generates the map for `input` (cluster.md §4.1–§4.2): every candidate — the last
/// balanced map renamed onto the keep nodes, the current map, the current map with
/// leaving nodes renamed to joining ones, and `tries` seeded greedy runs — that meets
/// rules G1–G6 is scored against the current map, and the lowest score wins (ties: the
/// history candidate, then the lower seed).
///
/// More replicas than the nodes allow is not an error: §4.1's normalisation keeps
/// R' = min(R, N−1, S') replicas per chain and leaves the other positions null.
///
/// # Errors
/// [`MapError`] for input no map can be built from.
pub fn generate(input: &MapInput<'_>) -> Result<MapOutcome, MapError> {
    let ctx = Ctx::new(input)?;
    let mut best: Option<(Score, Origin, Vec<IChain>)> = None;
    let mut fallback: Option<(Score, Vec<IChain>)> = None;
    let mut consider = |chains: Vec<IChain>, origin: Origin| {
        let ok = rules::check_indexed(&ctx, &chains).is_ok();
        let score = ctx.score(&chains);
        if !ok {
            if matches!(origin, Origin::Greedy(_)) && fallback.is_none() {
                fallback = Some((score, chains));
            }
            return;
        }
        if best
            .as_ref()
            .is_none_or(|(s, o, _)| (score, origin) < (*s, *o))
        {
            best = Some((score, origin, chains));
        }
    };

    if let Some(history) = input.last_balanced {
        for candidate in history_candidates(&ctx, history, input.groups) {
            if let Some(chains) = ctx.index_map(&candidate) {
                consider(chains, Origin::History);
            }
        }
    }
    if let Some(chains) = ctx.index_map(input.current) {
        consider(chains, Origin::Current);
    }
    if let Some(candidate) = swap_candidate(&ctx, input.current, input.groups) {
        if let Some(chains) = ctx.index_map(&candidate) {
            consider(chains, Origin::Swap);
        }
    }
    for t in 0..input.tries {
        let seed = input.seed.wrapping_add(t as u64);
        let chains = greedy::run(&ctx, seed);
        consider(chains, Origin::Greedy(t));
    }

    // The greedy runs meet G1–G6 by construction and the property tests hold them to it;
    // should one ever miss, the first run is still a usable, fully populated map.
    let (score, origin, chains) = match (best, fallback) {
        (Some(b), _) => b,
        (None, Some((s, c))) => (s, Origin::Greedy(0), c),
        (None, None) => unreachable!("tries >= 1 always yields a greedy candidate"),
    };
    Ok(MapOutcome {
        map: ctx.to_map(&chains),
        score,
        from_history: origin == Origin::History,
    })
}

/// The fast-forward map of a bucket's rebalance (cluster.md §4.4): the current map
/// aligned to R+1 entries per chain (the replica count may have changed since it was
/// made), then [`generate`] over the keep nodes with `input.last_balanced` as history.
/// The caller stores the result as both `ff_map` and `last_balanced` in one transaction
/// before any data moves; [`plan`] against the current map gives the moves.
///
/// # Errors
/// As [`generate`], except that chains of the wrong length are aligned, not refused.
pub fn fast_forward(input: &MapInput<'_>) -> Result<MapOutcome, MapError> {
    let aligned = input.current.aligned(input.replicas);
    generate(&MapInput {
        current: &aligned,
        ..*input
    })
}

/// `last_balanced` renamed onto the keep nodes (§4.2 b): unchanged when it is over the
/// keep nodes already; every old→new renaming when 1–2 nodes differ; otherwise old and
/// new nodes zipped in name order. A map over a different number of nodes is no
/// candidate.
fn history_candidates(
    ctx: &Ctx,
    history: &Map,
    groups: Option<&BTreeMap<NodeId, GroupId>>,
) -> Vec<Map> {
    if history.num_vbuckets() != ctx.v {
        return Vec::new();
    }
    let history = history.aligned(ctx.width - 1);
    let held = history.nodes();
    let keep: BTreeSet<NodeId> = ctx.nodes.iter().cloned().collect();
    if held.len() != keep.len() {
        // Renaming cannot balance a map over another number of nodes; when some keep
        // nodes hold nothing in it the rules check would discard it anyway.
        return if held.is_subset(&keep) {
            vec![history]
        } else {
            Vec::new()
        };
    }
    let old: Vec<NodeId> = held.difference(&keep).cloned().collect();
    let new: Vec<NodeId> = keep.difference(&held).cloned().collect();
    if old.is_empty() {
        return vec![history];
    }
    let same_group = |a: &NodeId, b: &NodeId| match groups {
        None => true,
        Some(g) => match (g.get(a), g.get(b)) {
            (Some(x), Some(y)) => x == y,
            // A leaving node's group is often not known any more; let the rules decide.
            _ => true,
        },
    };
    let renamings: Vec<Vec<(NodeId, NodeId)>> = match old.len() {
        1 => vec![vec![(old[0].clone(), new[0].clone())]],
        2 => vec![
            vec![
                (old[0].clone(), new[0].clone()),
                (old[1].clone(), new[1].clone()),
            ],
            vec![
                (old[0].clone(), new[1].clone()),
                (old[1].clone(), new[0].clone()),
            ],
        ],
        _ => vec![old.iter().cloned().zip(new.iter().cloned()).collect()],
    };
    renamings
        .into_iter()
        .filter(|r| r.iter().all(|(a, b)| same_group(a, b)))
        .map(|r| history.renamed(&r))
        .collect()
}

/// The current map with leaving nodes renamed to joining nodes, when as many join as
/// leave (§4.2 c). Pairs stay within a server group where the groups are known; "joining"
/// is any keep node the current map does not name.
fn swap_candidate(
    ctx: &Ctx,
    current: &Map,
    groups: Option<&BTreeMap<NodeId, GroupId>>,
) -> Option<Map> {
    let held = current.nodes();
    let keep: BTreeSet<NodeId> = ctx.nodes.iter().cloned().collect();
    // Keep nodes holding nothing count as joining: with few vbuckets some kept nodes hold
    // nothing, and renaming onto any of them costs the same.
    let leaving: Vec<NodeId> = held.difference(&keep).cloned().collect();
    let mut joining: Vec<NodeId> = keep.difference(&held).cloned().collect();
    if leaving.is_empty() || leaving.len() > joining.len() {
        return None;
    }
    let mut renames = Vec::with_capacity(leaving.len());
    for old in leaving {
        let group = groups.and_then(|g| g.get(&old));
        let pos = joining
            .iter()
            .position(|j| group.is_some() && groups.and_then(|g| g.get(j)) == group)
            .unwrap_or(0);
        renames.push((old, joining.remove(pos)));
    }
    Some(current.renamed(&renames))
}

/// The cost of moving from `current` to `target` (§4.2): per vbucket, nodes of the
/// target chain that hold no copy in the current chain, and chains whose head changes.
/// A target vbucket the current map lacks counts as all null.
pub fn score(current: &Map, target: &Map) -> Score {
    let mut total = Score::default();
    for (vb, chain) in target.chains().iter().enumerate() {
        let old = current.chain(vb);
        let old_head = old.and_then(|c| c.first()).cloned().flatten();
        if chain.first().cloned().flatten() != old_head {
            total.active_changes += 1;
        }
        for node in chain.iter().flatten() {
            let held = old.is_some_and(|c| c.iter().flatten().any(|n| n == node));
            if !held {
                total.copies_to_build += 1;
            }
        }
    }
    total
}
