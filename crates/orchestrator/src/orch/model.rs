//! The records the orchestrator keeps in the metadata store (cluster.md §2.5) and a
//! parsed view of one snapshot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::map::{CompactMap, Map, NodeId};
use crate::store::{Op, Rev, Snapshot};

/// Key of the cluster record.
pub const CLUSTER_KEY: &str = "cluster";
/// Key of the counters.
pub const COUNTERS_KEY: &str = "counters";
/// Key of the rebalance status.
pub const REBALANCE_STATUS_KEY: &str = "rebalance/status";

/// Key of a node's record.
#[must_use]
pub fn node_key(name: &str) -> String {
    format!("nodes/{name}")
}

/// Key of a bucket's record.
#[must_use]
pub fn bucket_key(name: &str) -> String {
    format!("buckets/{name}")
}

/// Key of a bucket's map.
#[must_use]
pub fn map_key(bucket: &str) -> String {
    format!("buckets/{bucket}/map")
}

/// Key of a bucket's fast-forward map.
#[must_use]
pub fn ff_map_key(bucket: &str) -> String {
    format!("buckets/{bucket}/ff_map")
}

/// Key of a bucket's last balanced map.
#[must_use]
pub fn last_balanced_key(bucket: &str) -> String {
    format!("buckets/{bucket}/last_balanced")
}

/// The `cluster` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// 32 hex.
    pub uuid: String,
    /// `clusterName`.
    pub name: String,
    /// RFC 3339 UTC creation time.
    pub created: String,
    /// `memoryQuota` in MiB, if set.
    pub memory_quota_mb: Option<u64>,
    /// Default `numVBuckets` of new buckets.
    pub default_num_vbuckets: u16,
    /// The orchestrator's node name.
    pub orchestrator: String,
    /// The orchestrator term (1 in this stage).
    pub term: u64,
}

/// A node's membership state (`clusterMembership`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Membership {
    /// Added, not yet rebalanced in.
    InactiveAdded,
    /// A serving member.
    Active,
    /// Failed over.
    InactiveFailed,
}

impl Membership {
    /// The REST spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InactiveAdded => "inactiveAdded",
            Self::Active => "active",
            Self::InactiveFailed => "inactiveFailed",
        }
    }
}

/// A `nodes/<name>` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// `ns_1@host`-style name.
    pub name: String,
    /// The agent's uuid.
    pub uuid: String,
    /// The address the cluster reaches it by.
    pub host: String,
    /// Admin (REST) port.
    pub admin_port: u16,
    /// KV (MCBP) port.
    pub kv_port: u16,
    /// Membership state.
    pub membership: Membership,
    /// `none`, `delta` or `full`.
    pub recovery_type: String,
    /// Server group.
    pub server_group: String,
    /// Always `["kv"]` in this stage.
    pub services: Vec<String>,
}

impl NodeRecord {
    /// `host:admin_port`.
    #[must_use]
    pub fn admin_addr(&self) -> String {
        format!("{}:{}", self.host, self.admin_port)
    }
}

/// A `buckets/<name>` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRecord {
    /// Bucket name.
    pub name: String,
    /// 32 hex, new for every creation.
    pub uuid: String,
    /// V.
    pub num_vbuckets: u16,
    /// R.
    pub num_replicas: u8,
    /// RAM quota.
    pub ram_quota_mb: u64,
    /// `flushEnabled` (stored only).
    pub flush_enabled: bool,
    /// The bucket's servers (node names).
    pub servers: Vec<String>,
    /// Hash of the map options (R, S, groups) the map was made with.
    pub map_opts_hash: u64,
}

/// The `counters` record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Rebalances that completed.
    pub rebalance_success: u64,
    /// Rebalances that failed.
    pub rebalance_fail: u64,
    /// Rebalances stopped.
    pub rebalance_stop: u64,
    /// Failovers.
    pub failover: u64,
    /// Automatic failovers.
    pub auto_failover_count: u64,
    /// Forced failovers that lost data.
    pub unsafe_failovers: u64,
}

/// One bucket with its maps.
#[derive(Debug, Clone)]
pub struct BucketView {
    /// The record.
    pub record: BucketRecord,
    /// The map, once the janitor made one.
    pub map: Option<Map>,
    /// The fast-forward map, during or after a rebalance.
    pub ff_map: Option<Map>,
    /// The last balanced map.
    pub last_balanced: Option<Map>,
}

/// A parsed snapshot.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// Store revision of the snapshot.
    pub rev: Rev,
    /// The cluster record (None before init, which the orchestrator never sees).
    pub cluster: ClusterRecord,
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Buckets by name.
    pub buckets: BTreeMap<String, BucketView>,
    /// Counters.
    pub counters: Counters,
    /// The raw snapshot (for checks).
    pub snapshot: Snapshot,
}

/// Why a snapshot could not be read as a cluster.
#[derive(Debug, thiserror::Error)]
#[error("metadata key {key:?} is unreadable: {message}")]
pub struct ViewError {
    /// The key.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

fn parse<T: serde::de::DeserializeOwned>(
    snap: &Snapshot,
    key: &str,
) -> Result<Option<T>, ViewError> {
    match snap.get(key) {
        None => Ok(None),
        Some(e) => e.json::<Option<T>>().map_err(|err| ViewError {
            key: key.to_owned(),
            message: err.to_string(),
        }),
    }
}

fn parse_map(snap: &Snapshot, key: &str) -> Result<Option<Map>, ViewError> {
    let Some(compact) = parse::<CompactMap>(snap, key)? else {
        return Ok(None);
    };
    Map::from_compact(&compact)
        .map(Some)
        .map_err(|e| ViewError {
            key: key.to_owned(),
            message: e.to_string(),
        })
}

impl ClusterView {
    /// Parses a snapshot. `Ok(None)` when the cluster record is absent.
    ///
    /// # Errors
    /// A record that is not what this version writes.
    pub fn parse(snapshot: Snapshot) -> Result<Option<ClusterView>, ViewError> {
        let Some(cluster) = parse::<ClusterRecord>(&snapshot, CLUSTER_KEY)? else {
            return Ok(None);
        };
        let mut nodes = BTreeMap::new();
        let mut buckets = BTreeMap::new();
        for key in snapshot.entries.keys() {
            if let Some(name) = key.strip_prefix("nodes/") {
                if let Some(n) = parse::<NodeRecord>(&snapshot, key)? {
                    nodes.insert(name.to_owned(), n);
                }
            } else if let Some(rest) = key.strip_prefix("buckets/") {
                if rest.contains('/') {
                    continue;
                }
                if let Some(record) = parse::<BucketRecord>(&snapshot, key)? {
                    buckets.insert(
                        rest.to_owned(),
                        BucketView {
                            map: parse_map(&snapshot, &map_key(rest))?,
                            ff_map: parse_map(&snapshot, &ff_map_key(rest))?,
                            last_balanced: parse_map(&snapshot, &last_balanced_key(rest))?,
                            record,
                        },
                    );
                }
            }
        }
        let counters = parse::<Counters>(&snapshot, COUNTERS_KEY)?.unwrap_or_default();
        Ok(Some(ClusterView {
            rev: snapshot.rev,
            cluster,
            nodes,
            buckets,
            counters,
            snapshot,
        }))
    }

    /// Active members, in name order.
    pub fn active_nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes
            .values()
            .filter(|n| n.membership == Membership::Active)
    }

    /// The server groups of `nodes` for map generation (§4.1: groups are used only
    /// when the nodes span at least two of them).
    #[must_use]
    pub fn groups_of(&self, nodes: &[NodeId]) -> Option<BTreeMap<NodeId, crate::map::GroupId>> {
        let groups: BTreeMap<NodeId, crate::map::GroupId> = nodes
            .iter()
            .filter_map(|n| {
                let rec = self.nodes.get(&n.0)?;
                Some((n.clone(), crate::map::GroupId(rec.server_group.clone())))
            })
            .collect();
        let distinct: std::collections::BTreeSet<&crate::map::GroupId> = groups.values().collect();
        (distinct.len() >= 2).then_some(groups)
    }

    /// The map options of a bucket over `servers` (R, S, the groups in use).
    #[must_use]
    pub fn map_options(&self, bucket: &BucketRecord, servers: &[NodeId]) -> crate::map::MapOptions {
        crate::map::MapOptions {
            replicas: usize::from(bucket.num_replicas),
            max_slaves: crate::map::DEFAULT_MAX_SLAVES,
            groups: self.groups_of(servers),
        }
    }

    /// Active member names as map node ids.
    #[must_use]
    pub fn active_ids(&self) -> Vec<NodeId> {
        self.active_nodes()
            .map(|n| NodeId(n.name.clone()))
            .collect()
    }
}

/// An op writing a map (compact) under `key`.
///
/// # Errors
/// Serialisation failed (never for these types).
pub fn put_map(key: String, map: Option<&Map>) -> Result<Op, serde_json::Error> {
    match map {
        Some(m) => Op::put_json(key, &m.to_compact()),
        None => Op::put_json(key, &serde_json::Value::Null),
    }
}
