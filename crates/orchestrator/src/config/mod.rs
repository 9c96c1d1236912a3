//! The cluster map smart clients read (cluster.md §7.1, §3.4, sdk-compat.md §4): pure
//! builders of the bucket config, its `vBucketServerMap` and the global config, as JSON
//! values.
//!
//! No I/O and no clock: the caller passes the revision, the members and the maps, and
//! decides with [`bucket_fingerprint`] whether a new revision is due (§7.2).

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::map::{Map, NodeId};

/// `bucketCapabilities` of every bucket config (§7.1): what the SDK parses; nothing
/// beyond what the nodes serve.
pub const BUCKET_CAPABILITIES: [&str; 6] = ["dcp", "cbhello", "touch", "cccp", "nodesExt", "xattr"];

/// A member as configs show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigNode {
    /// The node's name (`ns_1@10.0.0.5`).
    pub name: NodeId,
    /// The address clients reach it by, written literally (§7.1: no `$HOST`).
    pub host: String,
    /// Its admin (REST) port, `mgmt` in `nodesExt`.
    pub admin_port: u16,
    /// Its plain KV port, `kv` in `nodesExt`.
    pub kv_port: u16,
}

/// Everything a bucket config is built from.
#[derive(Debug, Clone, Copy)]
pub struct BucketConfigInput<'a> {
    /// The config's revision (§7.2: the store revision it was built from).
    pub rev: u64,
    /// The revision epoch (§7.2: 1 + unsafe failovers).
    pub rev_epoch: i64,
    /// The bucket's name.
    pub name: &'a str,
    /// The bucket's uuid.
    pub uuid: &'a str,
    /// `numVBuckets`.
    pub num_vbuckets: u16,
    /// R: `numReplicas`; every `vBucketMap` row gets R+1 entries.
    pub num_replicas: u8,
    /// Bucket servers (any order; the builder sorts them by name for serverList).
    pub servers: &'a [ConfigNode],
    /// Every active member (servers included; the builder appends the non-servers after the servers in nodesExt).
    pub members: &'a [ConfigNode],
    /// The bucket's map.
    pub map: &'a Map,
    /// The fast-forward map, while one is set (`vBucketMapForward`).
    pub ff_map: Option<&'a Map>,
    /// The cluster's uuid (`clusterUUID`).
    pub cluster_uuid: &'a str,
    /// The cluster's name (`clusterName`).
    pub cluster_name: &'a str,
}

impl BucketConfigInput<'_> {
    /// The servers in serverList order: by name, each name once.
    fn sorted_servers(&self) -> Vec<&ConfigNode> {
        sorted_nodes(self.servers.iter())
    }
}

/// Nodes by name, each name once (the first entry given wins).
fn sorted_nodes<'a>(nodes: impl DoubleEndedIterator<Item = &'a ConfigNode>) -> Vec<&'a ConfigNode> {
    let by_name: BTreeMap<&NodeId, &ConfigNode> =
        nodes.rev().map(|node| (&node.name, node)).collect();
    by_name.into_values().collect()
}

/// `host:port`, with an IPv6 literal in brackets.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// One `nodesExt` entry; `thisNode` only when it is `this_node`.
fn node_ext(node: &ConfigNode, this_node: Option<&NodeId>) -> Value {
    let mut entry = json!({
        "hostname": node.host,
        "services": {"kv": node.kv_port, "mgmt": node.admin_port},
    });
    if this_node == Some(&node.name) {
        entry["thisNode"] = Value::Bool(true);
    }
    entry
}

/// `vBucketMap` rows: indices into `servers`, −1 for null and for a node that is not a
/// server; every row cut or padded with −1 to `width`.
fn rows(map: &Map, servers: &[&ConfigNode], width: usize) -> Value {
    let index: BTreeMap<&NodeId, i64> = servers
        .iter()
        .zip(0i64..)
        .map(|(node, i)| (&node.name, i))
        .collect();
    let rows = map
        .chains()
        .iter()
        .map(|chain| {
            let mut row: Vec<i64> = chain
                .iter()
                .map(|slot| {
                    slot.as_ref()
                        .and_then(|n| index.get(n).copied())
                        .unwrap_or(-1)
                })
                .collect();
            row.resize(width, -1);
            Value::from(row)
        })
        .collect();
    Value::Array(rows)
}

/// Just the `vBucketServerMap` object (used by REST GET bucket too).
///
/// `serverList` is the servers by name as `host:kvport`; `vBucketMap` (and
/// `vBucketMapForward`, only when `ff_map` is set) index into it. A chain may name a node
/// that is not a server (transiently, e.g. while servers and map are updated apart): it
/// shows as −1, like null. Rows always have `num_replicas + 1` entries, the length the
/// SDK reads without a bounds check (sdk-compat §4): a map of another width (the replica
/// count changed, no rebalance yet) is cut or padded with −1.
pub fn vbucket_server_map(input: &BucketConfigInput<'_>) -> Value {
    let servers = input.sorted_servers();
    let width = usize::from(input.num_replicas) + 1;
    let server_list: Vec<String> = servers
        .iter()
        .map(|s| host_port(&s.host, s.kv_port))
        .collect();
    let mut out = json!({
        "hashAlgorithm": "CRC",
        "numReplicas": input.num_replicas,
        "serverList": server_list,
        "vBucketMap": rows(input.map, &servers, width),
    });
    if let Some(ff) = input.ff_map {
        out["vBucketMapForward"] = rows(ff, &servers, width);
    }
    out
}

/// §7.1 bucket config; `this_node` marks `thisNode: true` in that node's nodesExt entry only.
///
/// `nodes` (legacy) lists the servers in serverList order as `host:adminport` with their
/// KV port; `nodesExt` lists the servers in serverList order, then the other members by
/// name (the SDK indexes `vBucketMap` by nodesExt order among KV nodes, sdk-compat §4).
/// No `appTelemetryPath`, no `alternateAddresses` (sdk-compat §10). A `this_node` that
/// is not listed marks nothing.
pub fn bucket_config(input: &BucketConfigInput<'_>, this_node: Option<&NodeId>) -> Value {
    let servers = input.sorted_servers();
    let others = sorted_nodes(
        input
            .members
            .iter()
            .filter(|m| !servers.iter().any(|s| s.name == m.name)),
    );
    let nodes: Vec<Value> = servers
        .iter()
        .map(|s| json!({"hostname": host_port(&s.host, s.admin_port), "ports": {"direct": s.kv_port}}))
        .collect();
    let nodes_ext: Vec<Value> = servers
        .iter()
        .chain(&others)
        .map(|node| node_ext(node, this_node))
        .collect();
    json!({
        "rev": input.rev,
        "revEpoch": input.rev_epoch,
        "name": input.name,
        "uuid": input.uuid,
        "nodeLocator": "vbucket",
        "bucketType": "membase",
        "numVBuckets": input.num_vbuckets,
        "bucketCapabilitiesVer": "",
        "bucketCapabilities": BUCKET_CAPABILITIES,
        "nodes": nodes,
        "nodesExt": nodes_ext,
        "vBucketServerMap": vbucket_server_map(input),
        "clusterCapabilitiesVer": [1, 0],
        "clusterCapabilities": {},
        "clusterUUID": input.cluster_uuid,
        "clusterName": input.cluster_name,
    })
}

/// §7.1 global config (N3, `GET /pools/default/nodeServices`): `rev`, `revEpoch`,
/// `nodesExt` of all members by name, the cluster capabilities, `clusterUUID` and
/// `clusterName`. No `vBucketServerMap`: sdk-compat §3 step 6 needs `nodesExt` and `rev`
/// on a connection without a bucket; the rest is parsed but not needed.
pub fn global_config(
    rev: u64,
    rev_epoch: i64,
    members: &[ConfigNode],
    cluster_uuid: &str,
    cluster_name: &str,
    this_node: Option<&NodeId>,
) -> Value {
    let nodes_ext: Vec<Value> = sorted_nodes(members.iter())
        .into_iter()
        .map(|node| node_ext(node, this_node))
        .collect();
    json!({
        "rev": rev,
        "revEpoch": rev_epoch,
        "nodesExt": nodes_ext,
        "clusterCapabilitiesVer": [1, 0],
        "clusterCapabilities": {},
        "clusterUUID": cluster_uuid,
        "clusterName": cluster_name,
    })
}

/// Which (rev) inputs changed: a fingerprint of everything a bucket config depends on
/// except rev (so the caller only bumps rev when this changes).
///
/// It is FNV-1a (64 bit) over the compact JSON of [`bucket_config`] without `thisNode`
/// and with `rev` removed: deterministic across processes and builds, so it may be
/// stored. Inputs that do not reach the JSON (member order, a duplicate member) do not
/// change it; `revEpoch` does.
pub fn bucket_fingerprint(input: &BucketConfigInput<'_>) -> u64 {
    let mut config = bucket_config(input, None);
    if let Some(obj) = config.as_object_mut() {
        obj.remove("rev");
    }
    fnv1a(config.to_string().as_bytes())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}
