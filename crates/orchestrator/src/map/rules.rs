//! The rules a generated map meets (G1–G6, cluster.md §4.2) and the balanced predicate
//! (§4.3).

use std::collections::{BTreeMap, BTreeSet};

use super::{effective_replicas, Ctx, GroupId, IChain, Map, MapError, MapInput, NodeId};

/// A map breaks one of the rules G1–G6 (cluster.md §4.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleViolation {
    /// The rules cannot be evaluated: the input itself is invalid.
    #[error("rules: {0}")]
    Input(#[from] MapError),
    /// G1: not one chain per vbucket.
    #[error("G1: {got} chains, expected {expected}")]
    ChainCount {
        /// V.
        expected: usize,
        /// Chains found.
        got: usize,
    },
    /// G1: a chain without R+1 entries.
    #[error("G1: chain of vbucket {vb} has {len} entries, expected {expected}")]
    ChainLength {
        /// The vbucket.
        vb: usize,
        /// Entries found.
        len: usize,
        /// R+1.
        expected: usize,
    },
    /// G1: a chain names a node outside `nodes`.
    #[error("G1: chain of vbucket {vb} names {node}, not one of the nodes")]
    UnknownNode {
        /// The vbucket.
        vb: usize,
        /// The node.
        node: NodeId,
    },
    /// G1: a node twice in one chain.
    #[error("G1: chain of vbucket {vb} names {node} twice")]
    NodeTwice {
        /// The vbucket.
        vb: usize,
        /// The node.
        node: NodeId,
    },
    /// G1/G3: a null before a non-null entry, or a null head.
    #[error("G1: chain of vbucket {vb} has a null before its tail")]
    NullBeforeTail {
        /// The vbucket.
        vb: usize,
    },
    /// G2: a node's active count is not ⌊V/N⌋ or ⌈V/N⌉.
    #[error("G2: {node} holds {count} actives, expected {min}..={max}")]
    Actives {
        /// The node.
        node: NodeId,
        /// Actives it holds.
        count: usize,
        /// ⌊V/N⌋.
        min: usize,
        /// ⌈V/N⌉.
        max: usize,
    },
    /// G3: a chain without exactly R' replicas.
    #[error("G3: chain of vbucket {vb} has {count} replicas, expected {expected}")]
    ReplicaCount {
        /// The vbucket.
        vb: usize,
        /// Replicas found.
        count: usize,
        /// R'.
        expected: usize,
    },
    /// G4: a node's replica count is too far from R'·V/N.
    #[error("G4: {node} holds {count} replicas, expected {min}..={max}")]
    Replicas {
        /// The node.
        node: NodeId,
        /// Replicas it holds.
        count: usize,
        /// Lowest count allowed.
        min: usize,
        /// Highest count allowed.
        max: usize,
    },
    /// G5: a node's actives are replicated to more than S' nodes.
    #[error("G5: actives of {node} are replicated to {slaves} nodes, at most {max} allowed")]
    Slaves {
        /// The node.
        node: NodeId,
        /// Distinct replica nodes of its actives.
        slaves: usize,
        /// S'.
        max: usize,
    },
    /// G6: two copies of a vbucket in one server group although the groups allow spreading.
    #[error("G6: chain of vbucket {vb} has two copies in one server group")]
    GroupsNotSpread {
        /// The vbucket.
        vb: usize,
    },
}

/// Checks `map` against G1–G6 for `input`'s nodes, groups, R and S (the current map and
/// seed in `input` play no part).
///
/// G4 allows ±1 around R'·V/N without groups and with S' = N−1, ±2 otherwise. G6 is
/// checked where the groups permit a perfect spread (S' = N−1, more groups than R', and
/// no group with more than N/(R'+1) nodes): then every chain's copies are in distinct
/// groups. Elsewhere groups are a preference only (they are soft, §4.1).
///
/// # Errors
/// The first rule the map breaks.
pub fn check_rules(map: &Map, input: &MapInput<'_>) -> Result<(), RuleViolation> {
    let ctx = Ctx::new(input)?;
    if map.num_vbuckets() != ctx.v {
        return Err(RuleViolation::ChainCount {
            expected: ctx.v,
            got: map.num_vbuckets(),
        });
    }
    let mut chains = Vec::with_capacity(ctx.v);
    for (vb, chain) in map.chains().iter().enumerate() {
        if chain.len() != ctx.width {
            return Err(RuleViolation::ChainLength {
                vb,
                len: chain.len(),
                expected: ctx.width,
            });
        }
        let mut ichain: IChain = Vec::with_capacity(ctx.width);
        for slot in chain {
            ichain.push(match slot {
                None => None,
                Some(node) => {
                    Some(
                        ctx.nodes
                            .binary_search(node)
                            .map_err(|_| RuleViolation::UnknownNode {
                                vb,
                                node: node.clone(),
                            })?,
                    )
                }
            });
        }
        chains.push(ichain);
    }
    check_indexed(&ctx, &chains)
}

pub(crate) fn check_indexed(ctx: &Ctx, chains: &[IChain]) -> Result<(), RuleViolation> {
    let n = ctx.n;
    let name = |i: usize| ctx.nodes[i].clone();
    let mut actives = vec![0usize; n];
    let mut replicas = vec![0usize; n];
    let mut slaves: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    for (vb, chain) in chains.iter().enumerate() {
        if chain.len() != ctx.width {
            return Err(RuleViolation::ChainLength {
                vb,
                len: chain.len(),
                expected: ctx.width,
            });
        }
        let copies = chain.iter().take_while(|s| s.is_some()).count();
        if copies == 0 || chain[copies..].iter().any(Option::is_some) {
            return Err(RuleViolation::NullBeforeTail { vb });
        }
        let nodes: Vec<usize> = chain.iter().flatten().copied().collect();
        for (i, &x) in nodes.iter().enumerate() {
            if nodes[..i].contains(&x) {
                return Err(RuleViolation::NodeTwice { vb, node: name(x) });
            }
        }
        if copies - 1 != ctx.r {
            return Err(RuleViolation::ReplicaCount {
                vb,
                count: copies - 1,
                expected: ctx.r,
            });
        }
        let head = nodes[0];
        actives[head] += 1;
        for &x in &nodes[1..] {
            replicas[x] += 1;
            slaves[head].insert(x);
        }
        if ctx.groups_permit {
            if let Some(g) = &ctx.groups {
                let spread: BTreeSet<usize> = nodes.iter().map(|&x| g[x]).collect();
                if spread.len() != nodes.len() {
                    return Err(RuleViolation::GroupsNotSpread { vb });
                }
            }
        }
    }
    let (amin, amax) = (ctx.v / n, ctx.v.div_ceil(n));
    for (i, &count) in actives.iter().enumerate() {
        if count < amin || count > amax {
            return Err(RuleViolation::Actives {
                node: name(i),
                count,
                min: amin,
                max: amax,
            });
        }
    }
    // |count − R'·V/N| ≤ tol, in integers: |count·N − R'·V| ≤ tol·N.
    let tol = if ctx.groups.is_none() && ctx.s + 1 == n {
        1
    } else {
        2
    };
    let total = ctx.r * ctx.v;
    let rmin = total.saturating_sub(tol * n).div_ceil(n);
    let rmax = (total + tol * n) / n;
    for (i, &count) in replicas.iter().enumerate() {
        if count < rmin || count > rmax {
            return Err(RuleViolation::Replicas {
                node: name(i),
                count,
                min: rmin,
                max: rmax,
            });
        }
    }
    for (i, set) in slaves.iter().enumerate() {
        if set.len() > ctx.s {
            return Err(RuleViolation::Slaves {
                node: name(i),
                slaves: set.len(),
                max: ctx.s,
            });
        }
    }
    Ok(())
}

/// Why a map is *unbalanced* (cluster.md §4.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unbalanced {
    /// The bucket has no servers to balance over.
    #[error("no servers")]
    NoServers,
    /// A chain lacks a copy it should have (a null among its first R'+1 entries).
    #[error("chain of vbucket {vb} lacks a copy")]
    MissingCopy {
        /// The vbucket.
        vb: usize,
    },
    /// A chain names a node that is not one of the bucket's servers.
    #[error("chain of vbucket {vb} names {node}, not a server of the bucket")]
    NotAServer {
        /// The vbucket.
        vb: usize,
        /// The node.
        node: NodeId,
    },
    /// Active counts over the servers differ by more than 1.
    #[error("actives per server range over {min}..={max}")]
    ActivesSpread {
        /// Fewest actives on a server.
        min: usize,
        /// Most actives on a server.
        max: usize,
    },
    /// Replica counts over the servers differ by more than 5.
    #[error("replicas per server range over {min}..={max}")]
    ReplicasSpread {
        /// Fewest replicas on a server.
        min: usize,
        /// Most replicas on a server.
        max: usize,
    },
}

/// Replica counts may spread this far in a balanced map (ns_server's tolerance for greedy
/// maps).
const REPLICA_SPREAD: usize = 5;

/// The *unbalanced* test of cluster.md §4.3 over the bucket's `servers`.
///
/// Takes `max_slaves` beside the spec's arguments: the chain positions that must be
/// filled are the first R'+1, with R' normalised as in §4.1, because positions beyond R'
/// hold "replicas that cannot exist" and are null in every generated map.
///
/// # Errors
/// Why the map is unbalanced.
pub fn is_balanced(
    map: &Map,
    servers: &[NodeId],
    replicas: usize,
    max_slaves: usize,
) -> Result<(), Unbalanced> {
    if servers.is_empty() {
        return Err(Unbalanced::NoServers);
    }
    let servers: BTreeSet<&NodeId> = servers.iter().collect();
    let (r, _) = effective_replicas(servers.len(), replicas, max_slaves);
    let mut actives: BTreeMap<&NodeId, usize> = servers.iter().map(|s| (*s, 0)).collect();
    let mut replica_counts = actives.clone();
    for (vb, chain) in map.chains().iter().enumerate() {
        if chain.len() < r + 1 || chain[..=r].iter().any(Option::is_none) {
            return Err(Unbalanced::MissingCopy { vb });
        }
        for (pos, node) in chain.iter().enumerate() {
            let Some(node) = node else { continue };
            let counts = if pos == 0 {
                &mut actives
            } else {
                &mut replica_counts
            };
            match counts.get_mut(node) {
                Some(c) => *c += 1,
                None => {
                    return Err(Unbalanced::NotAServer {
                        vb,
                        node: node.clone(),
                    })
                }
            }
        }
    }
    let spread = |counts: &BTreeMap<&NodeId, usize>| {
        let min = counts.values().copied().min().unwrap_or(0);
        let max = counts.values().copied().max().unwrap_or(0);
        (min, max)
    };
    let (min, max) = spread(&actives);
    if max - min > 1 {
        return Err(Unbalanced::ActivesSpread { min, max });
    }
    let (min, max) = spread(&replica_counts);
    if max - min > REPLICA_SPREAD {
        return Err(Unbalanced::ReplicasSpread { min, max });
    }
    Ok(())
}

/// The options a map was generated with; their hash is stored with the bucket
/// (`map_opts_hash`) so a change of any of them marks the bucket for rebalance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapOptions {
    /// R.
    pub replicas: usize,
    /// S.
    pub max_slaves: usize,
    /// Server group of each server, when groups are configured.
    pub groups: Option<BTreeMap<NodeId, GroupId>>,
}

impl MapOptions {
    /// A stable 64-bit hash (FNV-1a over a canonical text) of R, S and the groups *in use*
    /// (none when the servers are all in one group). Stable across builds and platforms,
    /// so it can be stored.
    pub fn hash(&self) -> u64 {
        let mut text = format!("r={};s={};g=", self.replicas, self.max_slaves);
        if let Some(groups) = &self.groups {
            let distinct: BTreeSet<&GroupId> = groups.values().collect();
            if distinct.len() >= 2 {
                for (node, group) in groups {
                    text.push_str(&format!("{}:{},", node.0.len(), node.0));
                    text.push_str(&format!("{}:{};", group.0.len(), group.0));
                }
            }
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }
}

/// Why a bucket needs a rebalance (REST `bucketsNeedRebalance`, cluster.md §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RebalanceReason {
    /// A chain does not have R+1 entries.
    NumReplicasChanged,
    /// The bucket's servers are not the active members.
    ServersNotBalanced,
    /// The map options changed, or the map is unbalanced and not the last balanced map.
    MapNeedsRebalance,
}

impl RebalanceReason {
    /// The REST name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NumReplicasChanged => "num_replicas_changed",
            Self::ServersNotBalanced => "servers_not_balanced",
            Self::MapNeedsRebalance => "map_needs_rebalance",
        }
    }
}

/// What [`rebalance_reasons`] looks at for one bucket.
#[derive(Debug, Clone, Copy)]
pub struct BalanceInput<'a> {
    /// The bucket's map; `None` before the janitor made one.
    pub map: Option<&'a Map>,
    /// The last balanced map.
    pub last_balanced: Option<&'a Map>,
    /// The bucket's servers.
    pub servers: &'a [NodeId],
    /// The cluster's active members.
    pub active_members: &'a [NodeId],
    /// The bucket's options now.
    pub options: &'a MapOptions,
    /// The options hash stored when the map was generated (`None`: not recorded).
    pub stored_options_hash: Option<u64>,
}

/// The reasons a bucket needs a rebalance; empty when it is balanced (cluster.md §4.3).
/// A bucket without a map counts as balanced: the janitor makes its map.
pub fn rebalance_reasons(input: &BalanceInput<'_>) -> BTreeSet<RebalanceReason> {
    let mut reasons = BTreeSet::new();
    let Some(map) = input.map else {
        return reasons;
    };
    let width = input.options.replicas + 1;
    if map.chains().iter().any(|c| c.len() != width) {
        reasons.insert(RebalanceReason::NumReplicasChanged);
    }
    let servers: BTreeSet<&NodeId> = input.servers.iter().collect();
    let members: BTreeSet<&NodeId> = input.active_members.iter().collect();
    if servers != members {
        reasons.insert(RebalanceReason::ServersNotBalanced);
    }
    let options_changed = input
        .stored_options_hash
        .is_some_and(|h| h != input.options.hash());
    let unbalanced = is_balanced(
        map,
        input.servers,
        input.options.replicas,
        input.options.max_slaves,
    )
    .is_err();
    if options_changed || (unbalanced && input.last_balanced != Some(map)) {
        reasons.insert(RebalanceReason::MapNeedsRebalance);
    }
    reasons
}
