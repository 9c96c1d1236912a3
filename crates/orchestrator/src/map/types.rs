//! Node names, chains and maps, and their compact stored form (cluster.md §2.5, §4).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's name, the ns_server-style `otpNode` (`ns_1@10.0.0.5`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for NodeId {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// A server group's name (`Group 1`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GroupId(pub String);

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group:{}", self.0)
    }
}

impl From<&str> for GroupId {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// `[active, replica1, …, replicaR]`: R+1 entries, `None` where no node holds that copy.
pub type Chain = Vec<Option<NodeId>>;

/// A vbucket map: one chain per vbucket, indexed by vbucket id.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Map {
    chains: Vec<Chain>,
}

impl Map {
    /// A map with exactly these chains (chain `i` is vbucket `i`'s).
    pub fn new(chains: Vec<Chain>) -> Self {
        Self { chains }
    }

    /// The all-null map of a new bucket: `vbuckets` chains of `replicas + 1` nulls.
    pub fn empty(vbuckets: usize, replicas: usize) -> Self {
        Self {
            chains: vec![vec![None; replicas + 1]; vbuckets],
        }
    }

    /// Every chain, in vbucket order.
    pub fn chains(&self) -> &[Chain] {
        &self.chains
    }

    /// The chain of vbucket `vb`, if the map has one.
    pub fn chain(&self, vb: usize) -> Option<&Chain> {
        self.chains.get(vb)
    }

    /// Replaces one vbucket's chain (a committed move). Out of range is ignored.
    pub fn set_chain(&mut self, vb: usize, chain: Chain) {
        if let Some(c) = self.chains.get_mut(vb) {
            *c = chain;
        }
    }

    /// Number of vbuckets (chains).
    pub fn num_vbuckets(&self) -> usize {
        self.chains.len()
    }

    /// Every node named anywhere in the map.
    pub fn nodes(&self) -> BTreeSet<NodeId> {
        self.chains.iter().flatten().flatten().cloned().collect()
    }

    /// Whether every chain is null everywhere (a bucket that has no map yet, or lost all data).
    pub fn is_all_null(&self) -> bool {
        self.chains.iter().flatten().all(Option::is_none)
    }

    /// The map with every chain cut or padded with nulls to `replicas + 1` entries (§4.4:
    /// "align the current map to R+1" after the replica count changed).
    #[must_use]
    pub fn aligned(&self, replicas: usize) -> Map {
        let width = replicas + 1;
        let chains = self
            .chains
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c.resize(width, None);
                c
            })
            .collect();
        Map { chains }
    }

    /// The map with every occurrence of `from` replaced by `to` (a node rename).
    #[must_use]
    pub fn renamed(&self, renames: &[(NodeId, NodeId)]) -> Map {
        let chains = self
            .chains
            .iter()
            .map(|c| {
                c.iter()
                    .map(|slot| {
                        slot.as_ref().map(|n| {
                            renames
                                .iter()
                                .find(|(from, _)| from == n)
                                .map_or_else(|| n.clone(), |(_, to)| to.clone())
                        })
                    })
                    .collect()
            })
            .collect();
        Map { chains }
    }

    /// The stored form: node names once, chains as indices into them (§2.5).
    pub fn to_compact(&self) -> CompactMap {
        let nodes: Vec<NodeId> = self.nodes().into_iter().collect();
        let chains = self
            .chains
            .iter()
            .map(|c| {
                c.iter()
                    .map(|slot| {
                        slot.as_ref().map(|n| {
                            let i = nodes
                                .binary_search(n)
                                .expect("every chain node is in the node list built from them");
                            u32::try_from(i).expect("fewer than 2^32 nodes")
                        })
                    })
                    .collect()
            })
            .collect();
        CompactMap { nodes, chains }
    }

    /// Reads the stored form back.
    ///
    /// # Errors
    /// [`CompactMapError`] when a chain names an index outside `nodes`.
    pub fn from_compact(compact: &CompactMap) -> Result<Map, CompactMapError> {
        let mut chains = Vec::with_capacity(compact.chains.len());
        for (vb, c) in compact.chains.iter().enumerate() {
            let mut chain = Vec::with_capacity(c.len());
            for slot in c {
                chain.push(match slot {
                    None => None,
                    Some(i) => Some(
                        usize::try_from(*i)
                            .ok()
                            .and_then(|i| compact.nodes.get(i))
                            .cloned()
                            .ok_or(CompactMapError { vb, index: *i })?,
                    ),
                });
            }
            chains.push(chain);
        }
        Ok(Map { chains })
    }
}

/// The stored map: `{nodes: [name…], chains: [[idx|null…]…]}` (§2.5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactMap {
    /// Node names, in name order.
    pub nodes: Vec<NodeId>,
    /// One chain per vbucket, as indices into `nodes`.
    pub chains: Vec<Vec<Option<u32>>>,
}

/// A stored map names a node index it does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored map: chain of vbucket {vb} names node index {index}, outside the node list")]
pub struct CompactMapError {
    /// The vbucket whose chain is bad.
    pub vb: usize,
    /// The index it names.
    pub index: u32,
}
