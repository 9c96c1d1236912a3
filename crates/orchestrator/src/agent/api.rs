//! The agent's wire types (cluster.md §2.6), shared by the server ([`super::Agent`])
//! and the client ([`super::AgentClient`]). JSON field names are the Rust field
//! names; every answer is wrapped as `{"ok":true, …fields}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /agent/v1/info`: the node's identity; works before join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// 32 hex, created on the agent's first start.
    pub uuid: String,
    /// The node's name once joined.
    pub name: Option<String>,
    /// The cluster's uuid once joined.
    pub cluster: Option<String>,
    /// `active` once joined (the agent does not know finer membership states).
    pub membership: Option<String>,
    /// The address the cluster reaches the node by.
    pub host: String,
    /// The node's KV port.
    pub kv_port: u16,
    /// The node's admin port.
    pub admin_port: u16,
    /// The software version.
    pub version: String,
    /// Buckets on the node (empty when the node cannot be asked).
    pub buckets: Vec<BucketRef>,
}

/// A bucket by name and uuid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRef {
    /// Name.
    pub name: String,
    /// Uuid (empty when the node has none for it).
    pub uuid: String,
}

/// A user and password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creds {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Creds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Creds")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// One node of the address book.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressEntry {
    /// Node name (`ns_1@host`).
    pub name: String,
    /// Host.
    pub host: String,
    /// KV port.
    pub kv_port: u16,
    /// Admin port.
    pub admin_port: u16,
}

impl AddressEntry {
    /// `host:kv_port`.
    #[must_use]
    pub fn kv_addr(&self) -> String {
        format!("{}:{}", self.host, self.kv_port)
    }
}

/// `POST /agent/v1/join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The cluster's uuid.
    pub cluster: String,
    /// This node's name in the cluster.
    pub name: String,
    /// The orchestrator's term.
    pub term: u64,
    /// The orchestrator node's name.
    pub orchestrator: String,
    /// The address book.
    pub nodes: Vec<AddressEntry>,
    /// The cluster admin user (installed on the node).
    pub admin: Creds,
    /// The internal user (installed on the node; replication uses it).
    pub internal: Creds,
    /// Delete every bucket on the node first.
    pub wipe: bool,
}

/// `PUT /agent/v1/cluster`: the address book.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressBook {
    /// The orchestrator's term.
    pub term: u64,
    /// The orchestrator node's name.
    pub orchestrator: String,
    /// Every node.
    pub nodes: Vec<AddressEntry>,
}

/// `POST /agent/v1/leave`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveRequest {
    /// Delete every bucket (the only mode this stage has).
    #[serde(default = "yes")]
    pub wipe: bool,
}

fn yes() -> bool {
    true
}

/// `PUT /agent/v1/buckets/{b}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PutBucket {
    /// vbuckets.
    pub vbuckets: u16,
    /// RAM quota.
    pub ram_quota_mb: u64,
    /// The cluster's uuid for the bucket.
    pub uuid: String,
    /// The client config installed with the bucket (N1).
    #[serde(default)]
    pub cluster_config: Option<serde_json::Value>,
}

/// One bucket in `health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketHealth {
    /// Exists, answers MCBP, and has had an apply since the agent started.
    pub ready: bool,
    /// `(revEpoch, rev)` of the config the node serves (epoch −1: the node's own).
    pub config: Option<(i64, u64)>,
    /// Active vbuckets.
    pub active: u32,
    /// Replica vbuckets.
    pub replica: u32,
    /// Dead vbuckets.
    pub dead: u32,
}

/// `GET /agent/v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// This node's name once joined.
    pub name: Option<String>,
    /// Per bucket.
    pub buckets: BTreeMap<String, BucketHealth>,
    /// node name -> ms since a replicator last heard from it (minimum over buckets).
    pub liveness: BTreeMap<String, u64>,
}

/// One vbucket in `vbuckets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VbReport {
    /// vbucket id.
    pub vb: u16,
    /// `active|replica|pending|dead`.
    pub state: String,
    /// High seqno.
    pub high_seqno: u64,
    /// Persisted seqno.
    pub persisted_seqno: u64,
    /// Items.
    pub items: u64,
}

/// `GET /agent/v1/buckets/{b}/vbuckets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VbucketsReport {
    /// Every vbucket of the bucket on this node.
    pub vbuckets: Vec<VbReport>,
    /// producer node -> vbuckets replicated into this node.
    pub incoming: BTreeMap<String, Vec<u16>>,
}

/// The janitor apply phases (§6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Stop unwanted replications, demote, delete.
    Demote,
    /// Set actives.
    Promote,
    /// Set the incoming replication map.
    Replications,
}

/// `POST /agent/v1/buckets/{b}/apply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The phase.
    pub phase: Phase,
    /// vb -> `active|replica|dead|delete`.
    #[serde(default)]
    pub states: BTreeMap<u16, String>,
    /// producer -> vbuckets: what to keep (demote) or the complete map (replications).
    #[serde(default)]
    pub incoming: Option<BTreeMap<String, Vec<u16>>>,
    /// Bound on the whole apply.
    pub timeout_ms: u64,
}

/// `…/vbuckets/{vb}/build`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRequest {
    /// The producer node's name.
    pub source: String,
    /// Bound.
    pub timeout_ms: u64,
}

/// `…/vbuckets/{vb}/wait-data-move`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitDataMove {
    /// The producer node's name.
    pub source: String,
    /// Done when the estimate is below this.
    pub done_limit: u64,
    /// Accepted; not enforced by the agent (the whole wait is bounded by `timeout_ms`).
    #[serde(default)]
    pub stall_ms: u64,
    /// Bound.
    pub timeout_ms: u64,
}

/// The answer of `wait-data-move`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataMoveAnswer {
    /// The producer's `dcp-vbtakeover` estimate when the wait began, if it could be read.
    pub estimate_at_start: Option<u64>,
}

/// `…/vbuckets/{vb}/wait-persisted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitPersisted {
    /// Wait until this seqno is persisted on this node.
    pub seqno: u64,
    /// The producer whose replicator must keep serving the vbucket meanwhile.
    pub source: String,
    /// Bound.
    pub timeout_ms: u64,
}

/// `…/vbuckets/{vb}/takeover`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeoverRequest {
    /// The producer node's name (the old active).
    pub source: String,
    /// Bound.
    pub timeout_ms: u64,
}

/// `…/vbuckets/{vb}/unreplicate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreplicateRequest {
    /// Bound.
    pub timeout_ms: u64,
}

/// `POST /agent/v1/buckets/{b}/stop-nodes`: drop every replication from these nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopNodesRequest {
    /// Producer node names.
    pub nodes: Vec<String>,
}
