//! The actor: one task owns every mutating orchestration (cluster.md §2.4).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::model::{
    bucket_key, ff_map_key, last_balanced_key, map_key, node_key, BucketRecord, ClusterRecord,
    ClusterView, Counters, Membership, NodeRecord, CLUSTER_KEY, COUNTERS_KEY, REBALANCE_STATUS_KEY,
};
use super::uploader::{client_for, Desired};
use super::{auto_io, failover_io, janitor_pass, rebalance, retry_io, Command, Reply, Shared};
use crate::agent::api::{AddressBook, AddressEntry, Creds, JoinRequest};
use crate::agent::{AgentCallError, AgentClient};
use crate::config::{
    bucket_config, bucket_fingerprint, global_config, BucketConfigInput, ConfigNode,
};
use crate::map::NodeId;
use crate::rest::error::RestError;
use crate::rest::form::{node_name, AddNodeParams, BucketParams, InitParams};
use crate::store::{transact_with_retry, Check, MetadataStore, Op, RetryError, Snapshot};

/// Bound of one agent call made by a membership change.
const AGENT_CALL: Duration = Duration::from_secs(10);
/// Bound of the pre-rebalance health check.
const REBALANCE_HEALTH: Duration = Duration::from_secs(3);
/// The `revEpoch` of every config in this stage (§7.2).
pub(super) const REV_EPOCH: i64 = 1;

pub(super) fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs())
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

pub(super) fn random_hex() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn store_error<E: std::fmt::Display>(e: RetryError<E>) -> RestError {
    match e {
        RetryError::Store(crate::store::StoreError::Conflict { key }) => RestError::new(
            StatusCode::CONFLICT,
            "metadata_conflict",
            "_",
            format!("the metadata key {key:?} kept changing; try again"),
        ),
        RetryError::Store(e) => RestError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metadata_unavailable",
            "_",
            e.to_string(),
        ),
        RetryError::Build(e) => RestError::internal(e.to_string()),
    }
}

/// Runs a transaction built from a parsed view, retried on conflicts. The builder's
/// own refusals come back unchanged.
pub(super) async fn transact_view<F>(
    store: &dyn MetadataStore,
    mut build: F,
) -> Result<bool, RestError>
where
    F: FnMut(&ClusterView) -> Result<Option<(Vec<Check>, Vec<Op>)>, RestError> + Send,
{
    let res = transact_with_retry(store, |snap: &Snapshot| {
        let view = match ClusterView::parse(snap.clone()) {
            Ok(Some(v)) => v,
            Ok(None) => return Err(RestError::internal("the cluster record is missing")),
            Err(e) => return Err(RestError::internal(e.to_string())),
        };
        build(&view)
    })
    .await;
    match res {
        Ok(rev) => Ok(rev.is_some()),
        Err(RetryError::Build(e)) => Err(e),
        Err(e) => Err(store_error(e)),
    }
}

fn json_op<T: serde::Serialize>(key: impl Into<String>, value: &T) -> Result<Op, RestError> {
    Op::put_json(key, value).map_err(|e| RestError::internal(e.to_string()))
}

/// Stores a new cluster with `me` as its only, active member.
pub(super) async fn init_cluster(
    store: &dyn MetadataStore,
    params: &InitParams,
    mut me: NodeRecord,
) -> Result<(), RestError> {
    me.membership = Membership::Active;
    let cluster = ClusterRecord {
        uuid: random_hex(),
        name: params.cluster_name.clone().unwrap_or_default(),
        created: now_rfc3339(),
        memory_quota_mb: params.memory_quota_mb,
        default_num_vbuckets: 64,
        orchestrator: me.name.clone(),
        term: 1,
    };
    let ops = vec![
        json_op(CLUSTER_KEY, &cluster)?,
        json_op(node_key(&me.name), &me)?,
        json_op(COUNTERS_KEY, &Counters::default())?,
    ];
    let checks = vec![Check::Absent {
        key: CLUSTER_KEY.to_owned(),
    }];
    match store.transact(checks, ops).await {
        Ok(_) => Ok(()),
        Err(crate::store::StoreError::Conflict { .. }) => Err(RestError::new(
            StatusCode::BAD_REQUEST,
            "already_initialised",
            "_",
            "Cluster is already initialized",
        )),
        Err(e) => Err(RestError::internal(e.to_string())),
    }
}

/// A parsed snapshot of an initialised store.
pub(super) async fn read_view(store: &dyn MetadataStore) -> Result<ClusterView, RestError> {
    let snap = store.snapshot().await.map_err(|e| {
        RestError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metadata_unavailable",
            "_",
            e.to_string(),
        )
    })?;
    match ClusterView::parse(snap) {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(RestError::not_found("the cluster is not initialised")),
        Err(e) => Err(RestError::internal(e.to_string())),
    }
}

pub(super) fn config_node(n: &NodeRecord) -> ConfigNode {
    ConfigNode {
        name: NodeId(n.name.clone()),
        host: n.host.clone(),
        admin_port: n.admin_port,
        kv_port: n.kv_port,
    }
}

pub(super) fn address_book(view: &ClusterView) -> Vec<AddressEntry> {
    view.nodes
        .values()
        .map(|n| AddressEntry {
            name: n.name.clone(),
            host: n.host.clone(),
            kv_port: n.kv_port,
            admin_port: n.admin_port,
        })
        .collect()
}

/// Maps an agent call failure to a REST error naming the node.
pub(super) fn agent_error(
    e: &AgentCallError,
    status: StatusCode,
    kind: &str,
    what: &str,
) -> RestError {
    RestError::new(status, kind, "_", format!("{what}: {e}"))
        .with("node", json!(e.node()))
        .with("cause", e.to_json())
}

/// The actor's state; the rebalance task makes its own over the same `Shared`.
pub(super) struct Actor {
    pub(super) shared: Arc<Shared>,
    pub(super) seed: u64,
}

impl Actor {
    pub(super) fn client(&self, view: &ClusterView, n: &NodeRecord) -> AgentClient {
        client_for(
            n.admin_addr(),
            n.name.clone(),
            &self.shared.secrets.internal,
            &view.cluster.uuid,
            view.cluster.term,
        )
    }

    /// Reads the store, shows the view to the readers, and hands every node the
    /// configs it should hold.
    pub(super) async fn refresh(&self) -> Result<Arc<ClusterView>, RestError> {
        // One refresh at a time, so configs are handed out in store order.
        let _serial = self.shared.refresh_lock.lock().await;
        let view = Arc::new(read_view(self.shared.store.as_ref()).await?);
        self.publish(&view);
        self.shared.view.send_replace(Some(view.clone()));
        Ok(view)
    }

    fn bump(&self, key: &str, fingerprint: u64, rev: u64) -> u64 {
        let Ok(mut revs) = self.shared.revs.lock() else {
            return rev;
        };
        match revs.get(key) {
            Some((f, r)) if *f == fingerprint => *r,
            _ => {
                revs.insert(key.to_owned(), (fingerprint, rev));
                rev
            }
        }
    }

    fn publish(&self, view: &ClusterView) {
        let members: Vec<ConfigNode> = view.active_nodes().map(config_node).collect();
        let global_fp = {
            let v = global_config(
                0,
                REV_EPOCH,
                &members,
                &view.cluster.uuid,
                &view.cluster.name,
                None,
            );
            fingerprint(&v)
        };
        let global_rev = self.bump("", global_fp, view.rev.0);
        let mut per_node: BTreeMap<String, Desired> = BTreeMap::new();
        for n in view.nodes.values() {
            let id = NodeId(n.name.clone());
            let g = global_config(
                global_rev,
                REV_EPOCH,
                &members,
                &view.cluster.uuid,
                &view.cluster.name,
                Some(&id),
            );
            per_node.entry(n.name.clone()).or_default().global = Some(((REV_EPOCH, global_rev), g));
        }
        let bucket_names: BTreeSet<String> = view.buckets.keys().cloned().collect();
        if let Ok(mut revs) = self.shared.revs.lock() {
            revs.retain(|k, _| k.is_empty() || bucket_names.contains(k));
        }
        for (name, b) in &view.buckets {
            let Some(map) = &b.map else { continue };
            let servers: Vec<ConfigNode> = b
                .record
                .servers
                .iter()
                .filter_map(|s| view.nodes.get(s))
                .map(config_node)
                .collect();
            let input = BucketConfigInput {
                rev: 0,
                rev_epoch: REV_EPOCH,
                name,
                uuid: &b.record.uuid,
                num_vbuckets: b.record.num_vbuckets,
                num_replicas: b.record.num_replicas,
                servers: &servers,
                members: &members,
                map,
                ff_map: b.ff_map.as_ref(),
                cluster_uuid: &view.cluster.uuid,
                cluster_name: &view.cluster.name,
            };
            let rev = self.bump(name, bucket_fingerprint(&input), view.rev.0);
            let input = BucketConfigInput { rev, ..input };
            for s in &servers {
                let c = bucket_config(&input, Some(&s.name));
                per_node
                    .entry(s.name.0.clone())
                    .or_default()
                    .buckets
                    .insert(name.clone(), ((REV_EPOCH, rev), c));
            }
        }
        let names: Vec<String> = view.nodes.keys().cloned().collect();
        self.shared.uploaders.retain(&names);
        for n in view.nodes.values() {
            let desired = per_node.remove(&n.name).unwrap_or_default();
            self.shared
                .uploaders
                .set(&n.name, self.client(view, n), desired);
        }
    }

    /// The bucket config `node` should hold now (installed with the bucket).
    pub(super) fn bucket_config_for(
        &self,
        view: &ClusterView,
        bucket: &str,
        node: &str,
    ) -> Option<Value> {
        let rev = self.shared.config_rev(bucket).unwrap_or(view.rev.0);
        bucket_config_at(view, bucket, rev, Some(node))
    }

    /// Pushes the address book to every agent, in parallel, each bounded.
    pub(super) async fn push_address_book(&self, view: &ClusterView) {
        let book = AddressBook {
            term: view.cluster.term,
            orchestrator: view.cluster.orchestrator.clone(),
            nodes: address_book(view),
        };
        let calls = view.nodes.values().map(|n| {
            let client = self.client(view, n);
            let book = &book;
            async move {
                match tokio::time::timeout(AGENT_CALL, client.set_cluster(book)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!(node = %n.name, error = %e, "address book push failed"),
                    Err(_) => warn!(node = %n.name, "address book push timed out"),
                }
            }
        });
        futures::future::join_all(calls).await;
    }

    async fn handle(&mut self, cmd: Command) -> (Result<Value, RestError>, Option<String>) {
        match cmd {
            Command::AddNode(p) => (self.add_node(p).await, None),
            Command::EjectNode(n) => (self.eject_node(&n).await, None),
            Command::CreateBucket(p) => {
                let name = p.name.clone();
                let r = self.create_bucket(p).await;
                let follow = r.is_ok().then_some(name);
                (r, follow)
            }
            Command::DeleteBucket(n) => (self.delete_bucket(&n).await, None),
            Command::Rebalance { .. }
            | Command::StopRebalance
            | Command::SetRetrySettings(_)
            | Command::GracefulFailover(_)
            | Command::CancelRetry(_) => {
                (Err(RestError::internal("handled by the run loop")), None)
            }
            Command::SetClusterSettings {
                memory_quota_mb,
                name,
            } => (self.cluster_settings(memory_quota_mb, name).await, None),
            Command::SetDefaultVbuckets(n) => (self.default_vbuckets(n).await, None),
            Command::FailOver { nodes, force, auto } => (
                failover_io::hard_failover(self, &nodes, force, auto).await,
                None,
            ),
            Command::SetRecoveryType { node, kind } => (
                failover_io::set_recovery_type(self, &node, &kind).await,
                None,
            ),
            Command::ReFailOver(node) => (failover_io::re_fail_over(self, &node).await, None),
            Command::RunJanitor => {
                let r = janitor_pass::run_all(self).await;
                (r.map(|()| json!({"ok": true})), None)
            }
        }
    }

    async fn add_node(&mut self, p: AddNodeParams) -> Result<Value, RestError> {
        let view = read_view(self.shared.store.as_ref()).await?;
        let target = format!("{}:{}", p.host, p.port);
        if view
            .nodes
            .values()
            .any(|n| n.host == p.host && n.admin_port == p.port)
        {
            return Err(RestError::new(
                StatusCode::BAD_REQUEST,
                "node_in_cluster",
                "hostname",
                "Node is already part of cluster.",
            ));
        }
        let probe = AgentClient::new(
            target.clone(),
            target.clone(),
            Creds {
                user: p.user.clone(),
                password: p.password.clone(),
            },
            None,
            0,
        );
        let info = match tokio::time::timeout(AGENT_CALL, probe.info()).await {
            Ok(Ok(i)) => i,
            Ok(Err(AgentCallError::Unauthorized { .. })) => {
                return Err(RestError::new(
                    StatusCode::BAD_REQUEST,
                    "authentication_failed",
                    "_",
                    format!("Authentication failed. Verify username and password for {target}."),
                ));
            }
            Ok(Err(e)) => {
                return Err(agent_error(
                    &e,
                    StatusCode::BAD_REQUEST,
                    "node_unreachable",
                    &format!("Could not connect to {target}"),
                ));
            }
            Err(_) => {
                return Err(RestError::new(
                    StatusCode::BAD_REQUEST,
                    "node_unreachable",
                    "_",
                    format!("Could not connect to {target}: no answer within {AGENT_CALL:?}"),
                ));
            }
        };
        if info.cluster.is_some() || view.nodes.values().any(|n| n.uuid == info.uuid) {
            return Err(RestError::new(
                StatusCode::BAD_REQUEST,
                "node_in_cluster",
                "hostname",
                format!("Node {target} is already part of a cluster."),
            ));
        }
        let name = node_name(&p.host, p.port);
        let record = NodeRecord {
            name: name.clone(),
            uuid: info.uuid.clone(),
            host: p.host.clone(),
            admin_port: p.port,
            kv_port: info.kv_port,
            membership: Membership::InactiveAdded,
            recovery_type: "none".to_owned(),
            server_group: p.group.clone(),
            services: vec!["kv".to_owned()],
        };
        transact_view(self.shared.store.as_ref(), |v| {
            if v.nodes.contains_key(&name) {
                return Err(RestError::new(
                    StatusCode::BAD_REQUEST,
                    "node_in_cluster",
                    "hostname",
                    format!("A node named {name} is already in the cluster."),
                ));
            }
            Ok(Some((
                vec![v.snapshot.unchanged(&node_key(&name))],
                vec![json_op(node_key(&name), &record)?],
            )))
        })
        .await?;
        let view = read_view(self.shared.store.as_ref()).await?;
        let join = JoinRequest {
            cluster: view.cluster.uuid.clone(),
            name: name.clone(),
            term: view.cluster.term,
            orchestrator: view.cluster.orchestrator.clone(),
            nodes: address_book(&view),
            admin: self.shared.secrets.admin.clone(),
            internal: self.shared.secrets.internal.clone(),
            wipe: true,
        };
        let joined = match tokio::time::timeout(AGENT_CALL * 2, probe.join(&join)).await {
            Ok(r) => r.map_err(|e| {
                agent_error(
                    &e,
                    StatusCode::BAD_REQUEST,
                    "join_failed",
                    &format!("{target} refused to join"),
                )
            }),
            Err(_) => Err(RestError::new(
                StatusCode::BAD_REQUEST,
                "join_failed",
                "_",
                format!(
                    "{target} did not finish joining within {:?}",
                    AGENT_CALL * 2
                ),
            )),
        };
        if let Err(e) = joined {
            let _ = transact_view(self.shared.store.as_ref(), |v| {
                Ok(v.nodes
                    .contains_key(&name)
                    .then(|| (vec![], vec![Op::delete(node_key(&name))])))
            })
            .await;
            return Err(e);
        }
        info!(node = %name, "node added");
        let view = self.refresh().await?;
        self.push_address_book(&view).await;
        Ok(json!({"otpNode": name}))
    }

    async fn eject_node(&mut self, name: &str) -> Result<Value, RestError> {
        let view = read_view(self.shared.store.as_ref()).await?;
        let Some(node) = view.nodes.get(name).cloned() else {
            return Err(RestError::new(
                StatusCode::BAD_REQUEST,
                "unknown_node",
                "otpNode",
                "Server does not exist.",
            ));
        };
        if node.name == view.cluster.orchestrator {
            return Err(RestError::new(
                StatusCode::BAD_REQUEST,
                "orchestrator_immovable",
                "otpNode",
                "The orchestrator node cannot be ejected in this version.",
            ));
        }
        if node.membership == Membership::Active {
            return Err(RestError::new(
                StatusCode::BAD_REQUEST,
                "active_node",
                "otpNode",
                "Cannot remove active server.",
            ));
        }
        let client = self.client(&view, &node);
        match tokio::time::timeout(AGENT_CALL * 3, client.leave()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(node = %name, error = %e, "the ejected node did not leave cleanly"),
            Err(_) => warn!(node = %name, "the ejected node did not answer leave in time"),
        }
        transact_view(self.shared.store.as_ref(), |v| {
            Ok(v.nodes.contains_key(name).then(|| {
                (
                    vec![v.snapshot.unchanged(&node_key(name))],
                    vec![Op::delete(node_key(name))],
                )
            }))
        })
        .await?;
        info!(node = %name, "node ejected");
        let view = self.refresh().await?;
        self.push_address_book(&view).await;
        Ok(json!({}))
    }

    async fn create_bucket(&mut self, p: BucketParams) -> Result<Value, RestError> {
        let uuid = random_hex();
        transact_view(self.shared.store.as_ref(), |v| {
            if v.buckets.contains_key(&p.name) {
                return Err(RestError::new(StatusCode::BAD_REQUEST, "bucket_exists", "name", "Bucket with given name already exists"));
            }
            if let Some(quota) = v.cluster.memory_quota_mb {
                let used: u64 = v.buckets.values().map(|b| b.record.ram_quota_mb).sum();
                if used + p.ram_quota_mb > quota {
                    return Err(RestError::new(StatusCode::BAD_REQUEST, "ram_quota_exceeded", "ramQuota", format!("RAM quota cannot be set above the cluster's free quota ({} MiB left of {quota} MiB).", quota.saturating_sub(used))));
                }
            }
            let servers: Vec<String> = v.active_nodes().map(|n| n.name.clone()).collect();
            let record = BucketRecord {
                name: p.name.clone(),
                uuid: uuid.clone(),
                num_vbuckets: p.num_vbuckets,
                num_replicas: p.replicas,
                ram_quota_mb: p.ram_quota_mb,
                flush_enabled: p.flush_enabled,
                servers,
                map_opts_hash: 0,
            };
            Ok(Some((
                vec![
                    v.snapshot.unchanged(&bucket_key(&p.name)),
                    v.snapshot.unchanged(&map_key(&p.name)),
                ],
                vec![
                    json_op(bucket_key(&p.name), &record)?,
                    Op::delete(map_key(&p.name)),
                    Op::delete(ff_map_key(&p.name)),
                    Op::delete(last_balanced_key(&p.name)),
                ],
            )))
        })
        .await?;
        info!(bucket = %p.name, "bucket created");
        self.refresh().await?;
        Ok(json!({}))
    }

    async fn delete_bucket(&mut self, name: &str) -> Result<Value, RestError> {
        let view = read_view(self.shared.store.as_ref()).await?;
        let Some(b) = view.buckets.get(name) else {
            return Err(RestError::not_found(format!(
                "Requested resource not found: bucket {name}"
            )));
        };
        let servers = b.record.servers.clone();
        transact_view(self.shared.store.as_ref(), |v| {
            Ok(v.buckets.contains_key(name).then(|| {
                (
                    vec![v.snapshot.unchanged(&bucket_key(name))],
                    vec![
                        Op::delete(bucket_key(name)),
                        Op::delete(map_key(name)),
                        Op::delete(ff_map_key(name)),
                        Op::delete(last_balanced_key(name)),
                    ],
                )
            }))
        })
        .await?;
        let view = self.refresh().await?;
        let calls = servers.iter().filter_map(|s| view.nodes.get(s)).map(|n| {
            let client = self.client(&view, n);
            async move {
                match tokio::time::timeout(AGENT_CALL * 3, client.delete_bucket(name)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!(node = %n.name, bucket = name, error = %e, "bucket deletion on the node failed"),
                    Err(_) => warn!(node = %n.name, bucket = name, "bucket deletion on the node timed out"),
                }
            }
        });
        futures::future::join_all(calls).await;
        info!(bucket = %name, "bucket deleted");
        Ok(json!({}))
    }

    async fn rebalance(
        &mut self,
        known: Vec<String>,
        ejected: Vec<String>,
    ) -> Result<(Value, rebalance::Plan), RestError> {
        let view = read_view(self.shared.store.as_ref()).await?;
        let resolve = |r: &str| -> Option<String> {
            if view.nodes.contains_key(r) {
                return Some(r.to_owned());
            }
            view.nodes
                .values()
                .find(|n| format!("{}:{}", n.host, n.admin_port) == r)
                .map(|n| n.name.clone())
        };
        let mismatch = || {
            RestError::new(
                StatusCode::BAD_REQUEST,
                "mismatch",
                "_",
                "knownNodes must name every node of the cluster and ejectedNodes only known nodes.",
            )
            .with("mismatch", json!(1))
        };
        let mut known_set = BTreeSet::new();
        for k in &known {
            known_set.insert(resolve(k).ok_or_else(mismatch)?);
        }
        let mut eject_set = BTreeSet::new();
        for e in &ejected {
            let n = resolve(e).ok_or_else(mismatch)?;
            if !known_set.contains(&n) {
                return Err(mismatch());
            }
            eject_set.insert(n);
        }
        let all: BTreeSet<String> = view.nodes.keys().cloned().collect();
        if known_set != all {
            return Err(mismatch());
        }
        if eject_set.contains(&view.cluster.orchestrator) {
            return Err(RestError::new(
                StatusCode::BAD_REQUEST,
                "orchestrator_immovable",
                "ejectedNodes",
                "The orchestrator node cannot be ejected in this version.",
            ));
        }
        let keep: BTreeSet<String> = view
            .nodes
            .values()
            .filter(|n| !eject_set.contains(&n.name) && n.membership != Membership::InactiveFailed)
            .map(|n| n.name.clone())
            .collect();
        if keep.is_empty() {
            return Err(RestError::new(
                StatusCode::BAD_REQUEST,
                "no_active_nodes_left",
                "_",
                "No active nodes left",
            ));
        }
        // Every node that stays or leaves (and is not failed over) must answer.
        let probes = view
            .nodes
            .values()
            .filter(|n| n.membership != Membership::InactiveFailed)
            .map(|n| {
                let client = self.client(&view, n);
                async move {
                    let ok = matches!(
                        tokio::time::timeout(REBALANCE_HEALTH, client.health()).await,
                        Ok(Ok(_))
                    );
                    (n.name.clone(), ok)
                }
            });
        let down: Vec<String> = futures::future::join_all(probes)
            .await
            .into_iter()
            .filter(|(_, ok)| !ok)
            .map(|(n, _)| n)
            .collect();
        if !down.is_empty() {
            return Err(RestError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "nodes_unreachable",
                "_",
                format!("Cannot contact the following nodes: {down:?}"),
            )
            .with("nodes", json!(down)));
        }
        let id = random_hex();
        let started = now_rfc3339();
        let added: Vec<String> = view
            .nodes
            .values()
            .filter(|n| keep.contains(&n.name) && n.membership != Membership::Active)
            .map(|n| n.name.clone())
            .collect();
        let kind = rebalance::kind_of(added.len(), eject_set.len()).to_owned();
        let plan = rebalance::Plan {
            id: id.clone(),
            kind: kind.clone(),
            known: known_set.iter().cloned().collect(),
            keep: keep.iter().cloned().collect(),
            eject: eject_set.iter().cloned().collect(),
            added,
            started: started.clone(),
            attempt: 1,
            graceful: None,
        };
        transact_view(self.shared.store.as_ref(), |_| {
            Ok(Some((
                vec![],
                vec![json_op(
                    REBALANCE_STATUS_KEY,
                    &json!({"status": "running", "id": id, "type": kind, "known": plan.known, "eject": plan.eject, "started": started, "error": null, "stopped_by_user": false}),
                )?],
            )))
        })
        .await?;
        info!(rebalance = %id, keep = ?plan.keep, ejected = ?plan.eject, kind = %plan.kind, "rebalance started");
        Ok((json!({"rebalance_id": id}), plan))
    }

    async fn cluster_settings(
        &mut self,
        quota: Option<u64>,
        name: Option<String>,
    ) -> Result<Value, RestError> {
        transact_view(self.shared.store.as_ref(), |v| {
            let mut c = v.cluster.clone();
            if let Some(q) = quota {
                let used: u64 = v.buckets.values().map(|b| b.record.ram_quota_mb).sum();
                if q < used {
                    return Err(RestError::new(
                        StatusCode::BAD_REQUEST,
                        "memory_quota_too_small",
                        "memoryQuota",
                        format!(
                            "The memory quota must be at least the buckets' total ({used} MiB)."
                        ),
                    ));
                }
                c.memory_quota_mb = Some(q);
            }
            if let Some(n) = &name {
                c.name.clone_from(n);
            }
            if c == v.cluster {
                return Ok(None);
            }
            Ok(Some((
                vec![v.snapshot.unchanged(CLUSTER_KEY)],
                vec![json_op(CLUSTER_KEY, &c)?],
            )))
        })
        .await?;
        self.refresh().await?;
        Ok(json!({}))
    }

    async fn default_vbuckets(&mut self, n: u16) -> Result<Value, RestError> {
        transact_view(self.shared.store.as_ref(), |v| {
            if v.cluster.default_num_vbuckets == n {
                return Ok(None);
            }
            let mut c = v.cluster.clone();
            c.default_num_vbuckets = n;
            Ok(Some((
                vec![v.snapshot.unchanged(CLUSTER_KEY)],
                vec![json_op(CLUSTER_KEY, &c)?],
            )))
        })
        .await?;
        Ok(json!({}))
    }
}

/// A bucket's client config at `rev` as `node` (or a client, with `None`) sees it.
pub(super) fn bucket_config_at(
    view: &ClusterView,
    bucket: &str,
    rev: u64,
    node: Option<&str>,
) -> Option<Value> {
    let b = view.buckets.get(bucket)?;
    let map = b.map.as_ref()?;
    let members: Vec<ConfigNode> = view.active_nodes().map(config_node).collect();
    let servers: Vec<ConfigNode> = b
        .record
        .servers
        .iter()
        .filter_map(|s| view.nodes.get(s))
        .map(config_node)
        .collect();
    let input = BucketConfigInput {
        rev,
        rev_epoch: REV_EPOCH,
        name: bucket,
        uuid: &b.record.uuid,
        num_vbuckets: b.record.num_vbuckets,
        num_replicas: b.record.num_replicas,
        servers: &servers,
        members: &members,
        map,
        ff_map: b.ff_map.as_ref(),
        cluster_uuid: &view.cluster.uuid,
        cluster_name: &view.cluster.name,
    };
    let id = node.map(|n| NodeId(n.to_owned()));
    Some(bucket_config(&input, id.as_ref()))
}

/// The global config at `rev`.
pub(super) fn global_config_at(view: &ClusterView, rev: u64, node: Option<&str>) -> Value {
    let members: Vec<ConfigNode> = view.active_nodes().map(config_node).collect();
    let id = node.map(|n| NodeId(n.to_owned()));
    global_config(
        rev,
        REV_EPOCH,
        &members,
        &view.cluster.uuid,
        &view.cluster.name,
        id.as_ref(),
    )
}

fn fingerprint(v: &Value) -> u64 {
    let text = v.to_string();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The running rebalance, as the actor keeps it.
struct Running {
    plan: rebalance::Plan,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<rebalance::End>,
}

fn busy(cmd: &Command) -> RestError {
    let op = match cmd {
        Command::AddNode(_) => "add a node",
        Command::EjectNode(_) => "eject a node",
        Command::CreateBucket(_) => "create a bucket",
        Command::DeleteBucket(_) => "delete a bucket",
        Command::Rebalance { .. } => "start another rebalance",
        Command::SetClusterSettings { .. } | Command::SetDefaultVbuckets(_) => {
            "change cluster settings"
        }
        Command::RunJanitor | Command::StopRebalance => "run the janitor",
        Command::SetRetrySettings(_) | Command::CancelRetry(_) => "change the retry settings",
        Command::FailOver { .. } | Command::GracefulFailover(_) => "fail over",
        Command::SetRecoveryType { .. } | Command::ReFailOver(_) => "change a node's recovery",
    };
    RestError::busy(op)
}

/// A rebalance found `running` at orchestrator start ended with this process's
/// predecessor: it is recorded as failed with `orchestrator_restarted` (§5.6).
async fn close_orphaned_rebalance(shared: &Shared) {
    let status = shared.store.snapshot().await.ok().and_then(|s| {
        s.get(REBALANCE_STATUS_KEY)
            .and_then(|e| e.json::<Value>().ok())
    });
    let Some(status) = status else { return };
    if status["status"] != "running" && status["status"] != "stopping" {
        return;
    }
    let id = status["id"].as_str().unwrap_or_default().to_owned();
    let error = json!({"kind": "orchestrator_restarted", "message": format!("the orchestrator restarted during rebalance {id}"), "id": id});
    let plan = rebalance::Plan {
        id,
        kind: status["type"].as_str().unwrap_or("rebalance").to_owned(),
        known: serde_json::from_value(status["known"].clone()).unwrap_or_default(),
        keep: vec![],
        eject: serde_json::from_value(status["eject"].clone()).unwrap_or_default(),
        added: vec![],
        started: status["started"].as_str().unwrap_or_default().to_owned(),
        attempt: 1,
        graceful: None,
    };
    warn!(rebalance = %plan.id, "a rebalance was running when the orchestrator stopped; it failed");
    let end = rebalance::End::Failed(error.clone());
    if let Err(e) = rebalance::record_end(shared, &plan, &end).await {
        warn!(error = %e, "recording the orphaned rebalance failed");
    }
    // Its report (§5.9: one at every end), with what is known of it.
    let report = rebalance::write_orphan_report(shared, &plan, &end).await;
    if let Ok(mut live) = shared.live.lock() {
        live.last_error = Some(error);
        live.last_report = report;
    }
}

/// Shows a new run to the readers and spawns it.
fn start_run(shared: &Arc<Shared>, plan: rebalance::Plan) -> Running {
    let mut nodes: BTreeSet<NodeId> = plan.keep.iter().map(|n| NodeId(n.clone())).collect();
    nodes.extend(plan.eject.iter().map(|n| NodeId(n.clone())));
    if let Ok(mut live) = shared.live.lock() {
        live.last_error = None;
        live.stop_reason = None;
        live.running = Some(rebalance::LiveRun {
            id: plan.id.clone(),
            kind: plan.kind.clone(),
            stopping: false,
            nodes: nodes.into_iter().collect(),
            bucket_index: 0,
            bucket_count: 0,
            bucket: None,
            progress: None,
            started: tokio::time::Instant::now(),
        });
    }
    let stop = CancellationToken::new();
    let task = tokio::spawn(rebalance::run(shared.clone(), plan.clone(), stop.clone()));
    Running { plan, stop, task }
}

pub(super) async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<(Command, Reply)>,
    stop: CancellationToken,
) {
    let mut actor = Actor {
        shared: shared.clone(),
        seed: 0,
    };
    close_orphaned_rebalance(&shared).await;
    shared.started.send_replace(true);
    if let Ok(view) = actor.refresh().await {
        actor.push_address_book(&view).await;
    }
    let mut tick = tokio::time::interval(shared.cfg.janitor_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut running: Option<Running> = None;
    let mut retry_tick = tokio::time::interval(std::time::Duration::from_secs(1));
    retry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                if let Some(r) = running.take() {
                    r.stop.cancel();
                    r.task.abort();
                }
                return;
            }
            end = async { match running.as_mut() { Some(r) => (&mut r.task).await, None => std::future::pending().await } } => {
                let Some(r) = running.take() else { continue };
                let end = end.unwrap_or_else(|e| rebalance::End::Failed(json!({"kind": "internal", "message": format!("the rebalance task ended abnormally: {e}")})));
                match &end {
                    rebalance::End::Done => info!(rebalance = %r.plan.id, "rebalance completed"),
                    rebalance::End::Stopped => info!(rebalance = %r.plan.id, "rebalance stopped by user"),
                    rebalance::End::Failed(e) => warn!(rebalance = %r.plan.id, error = %e, "rebalance failed"),
                }
                if let Err(e) = rebalance::record_end(&shared, &r.plan, &end).await {
                    warn!(error = %e.to_json(), "recording the rebalance's end failed");
                }
                if let Err(e) = retry_io::on_end(&shared, &r.plan, &end).await {
                    warn!(error = %e.to_json(), "recording the retry state failed");
                }
                if matches!(end, rebalance::End::Done) {
                    // A successful rebalance resets the auto-failover count (§8.3).
                    if let Err(e) = auto_io::update(&shared, |s| s.count = 0).await {
                        warn!(error = %e.to_json(), "resetting the auto-failover count failed");
                    }
                } else {
                    let _ = janitor_pass::run_all(&mut actor).await;
                }
            }
            msg = rx.recv() => {
                let Some((cmd, reply)) = msg else { return };
                match (&cmd, running.as_ref()) {
                    (Command::StopRebalance, Some(r)) => {
                        r.stop.cancel();
                        if let Ok(mut live) = shared.live.lock() {
                            if let Some(l) = live.running.as_mut() {
                                l.stopping = true;
                            }
                        }
                        let _ = reply.send(Ok(json!({})));
                    }
                    (Command::StopRebalance, None) => {
                        let _ = reply.send(Ok(json!({})));
                    }
                    (Command::Rebalance { known, ejected }, Some(r)) => {
                        let same = {
                            let k: BTreeSet<&String> = known.iter().collect();
                            let e: BTreeSet<&String> = ejected.iter().collect();
                            k == r.plan.known.iter().collect() && e == r.plan.eject.iter().collect()
                        };
                        let _ = reply.send(if same { Ok(json!({"rebalance_id": r.plan.id})) } else { Err(busy(&cmd)) });
                    }
                    (Command::FailOver { auto: true, .. }, Some(_)) => {
                        // §8.3: a running rebalance is stopped (bounded, not retried), then
                        // the failover runs.
                        if let Some(r) = running.take() {
                            let reason = json!({"kind": "auto_failover", "message": "the rebalance was stopped for an automatic failover"});
                            // The run ends failed with this reason (its report says so).
                            if let Ok(mut live) = shared.live.lock() {
                                live.stop_reason = Some(reason.clone());
                            }
                            r.stop.cancel();
                            // Whether the run ended within the grace or not, it failed.
                            let _ = tokio::time::timeout(std::time::Duration::from_secs(20), r.task).await;
                            let end = rebalance::End::Failed(reason.clone());
                            if let Err(e) = rebalance::record_end(&shared, &r.plan, &end).await {
                                warn!(error = %e.to_json(), "recording the rebalance's end failed");
                            }
                            if let Ok(mut live) = shared.live.lock() {
                                live.running = None;
                                live.last_error = Some(reason);
                            }
                        }
                        let Command::FailOver { nodes, force, auto } = cmd else { continue };
                        let r = failover_io::hard_failover(&mut actor, &nodes, force, auto).await;
                        let _ = reply.send(r);
                    }
                    (_, Some(_)) => {
                        let _ = reply.send(Err(busy(&cmd)));
                    }
                    (Command::Rebalance { .. }, None) => {
                        let Command::Rebalance { known, ejected } = cmd else { continue };
                        match actor.rebalance(known, ejected).await {
                            Ok((answer, plan)) => {
                                if let Err(e) = retry_io::on_manual_start(&shared).await {
                                    warn!(error = %e.to_json(), "dropping the pending retry failed");
                                }
                                running = Some(start_run(&shared, plan));
                                let _ = reply.send(Ok(answer));
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e));
                            }
                        }
                    }
                    (Command::GracefulFailover(node), None) => {
                        match failover_io::graceful_plan(&actor, node).await {
                            Ok(plan) => {
                                if let Err(e) = retry_io::on_manual_start(&shared).await {
                                    warn!(error = %e.to_json(), "dropping the pending retry failed");
                                }
                                info!(rebalance = %plan.id, node = %node, "graceful failover started");
                                let answer = json!({"rebalance_id": plan.id});
                                running = Some(start_run(&shared, plan));
                                let _ = reply.send(Ok(answer));
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e));
                            }
                        }
                    }
                    (Command::SetRetrySettings(new), None) => {
                        let _ = reply.send(retry_io::set_settings(&shared, *new).await);
                    }
                    (Command::CancelRetry(id), None) => {
                        let _ = reply.send(retry_io::cancel(&shared, id).await);
                    }
                    (_, None) => {
                        let (res, follow) = actor.handle(cmd).await;
                        let failed = res.is_err();
                        let _ = reply.send(res);
                        if let Some(bucket) = follow {
                            let _ = janitor_pass::run_one(&mut actor, &bucket).await;
                        } else if failed {
                            let _ = janitor_pass::run_all(&mut actor).await;
                        }
                    }
                }
            }
            _ = tick.tick(), if running.is_none() => {
                let _ = janitor_pass::run_all(&mut actor).await;
            }
            _ = retry_tick.tick(), if running.is_none() => {
                if let Some(p) = retry_io::take_due(&shared).await {
                    let view = read_view(shared.store.as_ref()).await;
                    let exists = |n: &String| view.as_ref().is_ok_and(|v| v.nodes.contains_key(n));
                    let known: Vec<String> = p.known.iter().filter(|n| exists(n)).cloned().collect();
                    let eject: Vec<String> = p.eject.iter().filter(|n| exists(n)).cloned().collect();
                    info!(rebalance = %p.rebalance_id, attempt = p.attempt(), "retrying the failed rebalance");
                    match actor.rebalance(known, eject).await {
                        Ok((_, mut plan)) => {
                            plan.id.clone_from(&p.rebalance_id);
                            plan.attempt = p.attempt();
                            running = Some(start_run(&shared, plan));
                        }
                        Err(e) => warn!(error = %e.to_json(), "the automatic retry could not start"),
                    }
                }
            }
        }
    }
}
