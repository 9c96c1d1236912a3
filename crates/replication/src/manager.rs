//! The replication manager of one bucket on the consumer node
//! (`replication-layer.md` §8): a desired incoming map {producer node -> vbuckets}
//! becomes a set of [`Replicator`]s, `N` per producer node, vbucket `v` served by
//! connection `v mod N` (§7.6).
//!
//! * "Set" operations are serialized (an async mutex, like the original's server);
//!   set-ups on different replicators run concurrently (§11.12).
//! * Reads ([`ReplicationManager::get_actual_replications`],
//!   [`ReplicationManager::get_replicator_for_vb`]) never wait behind in-flight
//!   work: they read each replicator's watched state (§8.1 IMPROVE MUST, MB-67329).
//! * Replicators are reconciled per connection index (§11.11 IMPROVE): a dead
//!   connection is replaced on the next set operation.
//! * Takeovers run outside the serializer (§8.2 IMPROVE).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::join_all;
use kv_client::Credentials;
use mcbp::Vbid;
use tracing::{debug, info, warn};

use crate::core::CoreConfig;
use crate::error::ReplError;
use crate::io::ProxyConfig;
use crate::replicator::{
    Replicator, ReplicatorConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_SHUT_TIMEOUT,
};

/// {producer node -> vbuckets}.
pub type ReplicationMap = BTreeMap<String, BTreeSet<Vbid>>;

/// What a bucket's manager needs.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// The bucket.
    pub bucket: String,
    /// This (consumer) node's name.
    pub consumer_node: String,
    /// This node's KV address.
    pub consumer_addr: String,
    /// Credentials for every node.
    pub credentials: Credentials,
    /// Resolver: producer node name -> KV address.
    pub nodes: HashMap<String, String>,
    /// Connections per node pair (≥ 1).
    pub connection_count: u32,
    /// Request SNAPPY.
    pub snappy: bool,
    /// Per-replicator operation bounds.
    pub core: CoreConfig,
    /// Per-half connection set-up bound.
    pub connect_timeout: Duration,
    /// Graceful shut bound of a stopped replicator.
    pub shut_timeout: Duration,
    /// Socket task tuning.
    pub proxy: ProxyConfig,
}

impl ManagerConfig {
    /// Defaults: 1 connection, no snappy, default bounds, no known nodes.
    #[must_use]
    pub fn new(
        bucket: impl Into<String>,
        consumer_node: impl Into<String>,
        consumer_addr: impl Into<String>,
        credentials: Credentials,
    ) -> ManagerConfig {
        ManagerConfig {
            bucket: bucket.into(),
            consumer_node: consumer_node.into(),
            consumer_addr: consumer_addr.into(),
            credentials,
            nodes: HashMap::new(),
            connection_count: 1,
            snappy: false,
            core: CoreConfig::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            shut_timeout: DEFAULT_SHUT_TIMEOUT,
            proxy: ProxyConfig::default(),
        }
    }
}

type Key = (String, u32);

/// One bucket's replication manager. Share it with `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct ReplicationManager {
    config: ManagerConfig,
    nodes: Mutex<HashMap<String, String>>,
    connection_count: AtomicU32,
    /// Serializes set operations; holds the last desired map.
    serial: tokio::sync::Mutex<ReplicationMap>,
    /// Live replicators by (producer node, connection index). Short sections only.
    replicators: Mutex<BTreeMap<Key, Replicator>>,
}

impl ReplicationManager {
    /// A manager with no replicators.
    #[must_use]
    pub fn new(config: ManagerConfig) -> ReplicationManager {
        ReplicationManager {
            nodes: Mutex::new(config.nodes.clone()),
            connection_count: AtomicU32::new(config.connection_count.max(1)),
            serial: tokio::sync::Mutex::new(ReplicationMap::new()),
            replicators: Mutex::new(BTreeMap::new()),
            config,
        }
    }

    /// Adds or changes a node's KV address (used by replicators started later).
    pub fn set_node_address(&self, node: impl Into<String>, addr: impl Into<String>) {
        if let Ok(mut n) = self.nodes.lock() {
            n.insert(node.into(), addr.into());
        }
    }

    /// The connection count N.
    #[must_use]
    pub fn connection_count(&self) -> u32 {
        self.connection_count.load(Ordering::Acquire)
    }

    /// `set_incoming_replication_map` (§8.2): replicate exactly `desired`; nodes
    /// absent (or with no vbuckets) lose their replicators (MB-10934).
    ///
    /// # Errors
    /// [`ReplError::Replications`] with one entry per failed (node) operation; the
    /// other nodes' replications are still applied.
    pub async fn set_incoming_replication_map(
        &self,
        desired: ReplicationMap,
    ) -> Result<(), ReplError> {
        let mut last = self.serial.lock().await;
        self.apply(&mut last, desired).await
    }

    /// `change_vbucket_replication(v, src | none)` (§8.2): the actual replications
    /// with `vb` removed everywhere, plus `vb` from `src` if given.
    ///
    /// # Errors
    /// As [`Self::set_incoming_replication_map`].
    pub async fn change_vbucket_replication(
        &self,
        vb: Vbid,
        src: Option<&str>,
    ) -> Result<(), ReplError> {
        let mut last = self.serial.lock().await;
        let mut map = self.get_actual_replications();
        for vbs in map.values_mut() {
            vbs.remove(&vb);
        }
        if let Some(src) = src {
            map.entry(src.to_string()).or_default().insert(vb);
        }
        self.apply(&mut last, map).await
    }

    /// `remove_undesired_replications(future)` (§8.2): keep only actual replications
    /// that are also in `future` (never adds, MB-17341).
    ///
    /// # Errors
    /// As [`Self::set_incoming_replication_map`].
    pub async fn remove_undesired_replications(
        &self,
        future: &ReplicationMap,
    ) -> Result<(), ReplError> {
        let mut last = self.serial.lock().await;
        let actual = self.get_actual_replications();
        let keep: ReplicationMap = actual
            .into_iter()
            .map(|(node, vbs)| {
                let wanted = future.get(&node).cloned().unwrap_or_default();
                (node, vbs.intersection(&wanted).copied().collect())
            })
            .collect();
        self.apply(&mut last, keep).await
    }

    /// `stop_nodes(nodes)` (§8.2, failover path): drop every replication from these
    /// producer nodes.
    ///
    /// # Errors
    /// As [`Self::set_incoming_replication_map`].
    pub async fn stop_nodes(&self, nodes: &[&str]) -> Result<(), ReplError> {
        let mut last = self.serial.lock().await;
        let mut map = self.get_actual_replications();
        map.retain(|n, _| !nodes.contains(&n.as_str()));
        self.apply(&mut last, map).await
    }

    /// Changes the connection count N (§8.2 `update_replication_count`): if it
    /// differs, every replicator is shut gracefully and the current replications are
    /// re-established on N connections (vb -> `vb mod N`).
    ///
    /// # Errors
    /// As [`Self::set_incoming_replication_map`].
    pub async fn set_connection_count(&self, n: u32) -> Result<(), ReplError> {
        let n = n.max(1);
        let mut last = self.serial.lock().await;
        if n == self.connection_count() {
            return Ok(());
        }
        let actual = self.get_actual_replications();
        info!(bucket = %self.config.bucket, from = self.connection_count(), to = n, "changing connection count");
        let all: Vec<Replicator> = self
            .replicators
            .lock()
            .map(|mut m| std::mem::take(&mut *m).into_values().collect())
            .unwrap_or_default();
        shut_all(all).await;
        self.connection_count.store(n, Ordering::Release);
        self.apply(&mut last, actual).await
    }

    /// Takes `vb` over from `producer` on connection `vb mod N` (§7.6, §7.3). Runs
    /// outside the serializer; other operations are not held up.
    ///
    /// # Errors
    /// [`ReplError::NoReplicator`] if that connection does not exist, else the
    /// replicator's takeover error.
    pub async fn takeover(&self, producer: &str, vb: Vbid) -> Result<(), ReplError> {
        let index = u32::from(vb.0) % self.connection_count();
        let r = self
            .replicator(producer, index)
            .ok_or_else(|| ReplError::NoReplicator {
                node: producer.to_string(),
                index,
            })?;
        r.takeover(vb).await
    }

    /// `get_actual_replications` (§8.1): every live replicator's partitions, merged
    /// per producer node; nodes without streams are omitted. Never waits.
    #[must_use]
    pub fn get_actual_replications(&self) -> ReplicationMap {
        let mut out = ReplicationMap::new();
        for ((node, _), r) in self.snapshot() {
            if !r.is_running() {
                continue;
            }
            let p = r.get_partitions();
            if !p.is_empty() {
                out.entry(node).or_default().extend(p);
            }
        }
        out
    }

    /// The (producer node, connection index) whose replicator streams `vb`, if any.
    #[must_use]
    pub fn get_replicator_for_vb(&self, vb: Vbid) -> Option<(String, u32)> {
        self.snapshot()
            .into_iter()
            .find(|(_, r)| r.is_running() && r.get_partitions().contains(&vb))
            .map(|(k, _)| k)
    }

    /// The replicator for (producer node, connection index), if it exists.
    #[must_use]
    pub fn replicator(&self, node: &str, index: u32) -> Option<Replicator> {
        self.replicators
            .lock()
            .ok()
            .and_then(|m| m.get(&(node.to_string(), index)).cloned())
    }

    /// Every replicator, by (producer node, connection index).
    #[must_use]
    pub fn replicators(&self) -> Vec<((String, u32), Replicator)> {
        self.snapshot()
    }

    /// The traffic-monitor view (§3.3): for every node this bucket's replicators
    /// talk to — each producer node and this consumer node — the last time a whole
    /// packet was read from it, over all live connections. A node missing from the
    /// map has sent nothing yet. Served from the replicators' shared timestamps:
    /// never waits.
    #[must_use]
    pub fn node_liveness(&self) -> BTreeMap<String, tokio::time::Instant> {
        let mut out: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
        for ((producer, _), r) in self.snapshot() {
            let heard = [
                (
                    producer,
                    r.liveness().last_heard(crate::core::Side::Producer),
                ),
                (
                    self.config.consumer_node.clone(),
                    r.liveness().last_heard(crate::core::Side::Consumer),
                ),
            ];
            for (node, at) in heard {
                if let Some(at) = at {
                    let e = out.entry(node).or_insert(at);
                    *e = (*e).max(at);
                }
            }
        }
        out
    }

    /// Waits until `producer`'s `dcp-vbtakeover` estimate for each vbucket, on the
    /// connection serving it (`vb mod N`), is below `done_limit` (§7.7). Uses a
    /// separate connection to the producer node.
    ///
    /// # Errors
    /// [`ReplError::UnknownNode`], or see [`crate::replicator::wait_for_data_move`].
    pub async fn wait_for_data_move(
        &self,
        producer: &str,
        vbuckets: &[Vbid],
        done_limit: u64,
        timeout: Duration,
    ) -> Result<(), ReplError> {
        let addr = self
            .resolve(producer)
            .ok_or_else(|| ReplError::UnknownNode {
                node: producer.to_string(),
            })?;
        let k = self.connection_count();
        let targets = vbuckets
            .iter()
            .map(|vb| {
                let index = u32::from(vb.0) % k;
                (
                    *vb,
                    self.replicator_config(producer, addr.clone(), index)
                        .connection_name(),
                )
            })
            .collect();
        crate::replicator::wait_for_data_move(&crate::replicator::DataMoveWait {
            producer_addr: addr,
            bucket: self.config.bucket.clone(),
            credentials: self.config.credentials.clone(),
            targets,
            done_limit,
            timeout,
            poll_interval: crate::replicator::DATA_MOVE_POLL_INTERVAL,
        })
        .await
    }

    /// Stops every replicator gracefully (bucket shutdown, §2.3).
    pub async fn shutdown(&self) {
        let mut last = self.serial.lock().await;
        last.clear();
        let all: Vec<Replicator> = self
            .replicators
            .lock()
            .map(|mut m| std::mem::take(&mut *m).into_values().collect())
            .unwrap_or_default();
        shut_all(all).await;
    }

    fn snapshot(&self) -> Vec<(Key, Replicator)> {
        self.replicators
            .lock()
            .map(|m| m.iter().map(|(k, r)| (k.clone(), r.clone())).collect())
            .unwrap_or_default()
    }

    fn resolve(&self, node: &str) -> Option<String> {
        self.nodes.lock().ok().and_then(|n| n.get(node).cloned())
    }

    fn replicator_config(&self, node: &str, addr: String, index: u32) -> ReplicatorConfig {
        let c = &self.config;
        ReplicatorConfig {
            consumer_addr: c.consumer_addr.clone(),
            producer_addr: addr,
            bucket: c.bucket.clone(),
            credentials: c.credentials.clone(),
            consumer_node: c.consumer_node.clone(),
            producer_node: node.to_string(),
            connection_index: index,
            snappy: c.snappy,
            core: c.core,
            connect_timeout: c.connect_timeout,
            shut_timeout: c.shut_timeout,
            proxy: c.proxy,
            name: None,
        }
    }

    /// §8.1 `set_desired_replications` + §8.3 `manage_replicators`, per connection.
    async fn apply(
        &self,
        last: &mut ReplicationMap,
        desired: ReplicationMap,
    ) -> Result<(), ReplError> {
        let desired: ReplicationMap = desired.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        let k = self.connection_count();
        let mut errors: Vec<(String, ReplError)> = Vec::new();

        // Reap dead connections and stop the ones no longer needed.
        let mut to_stop = Vec::new();
        if let Ok(mut m) = self.replicators.lock() {
            let keys: Vec<Key> = m.keys().cloned().collect();
            for key in keys {
                let dead = m.get(&key).is_some_and(|r| !r.is_running());
                let unneeded = !desired.contains_key(&key.0) || key.1 >= k;
                if dead || unneeded {
                    if let Some(r) = m.remove(&key) {
                        if dead {
                            debug!(node = %key.0, index = key.1, "reaping a dead replicator");
                        } else {
                            to_stop.push(r);
                        }
                    }
                }
            }
        }
        shut_all(to_stop).await;

        // Start missing connections, concurrently across nodes and indexes.
        let mut starts = Vec::new();
        for node in desired.keys() {
            let Some(addr) = self.resolve(node) else {
                errors.push((node.clone(), ReplError::UnknownNode { node: node.clone() }));
                continue;
            };
            for index in 0..k {
                if self.replicator(node, index).is_none() {
                    let cfg = self.replicator_config(node, addr.clone(), index);
                    let node = node.clone();
                    starts.push(async move { (node, index, Replicator::start(cfg).await) });
                }
            }
        }
        for (node, index, started) in join_all(starts).await {
            match started {
                Ok(r) => {
                    if let Ok(mut m) = self.replicators.lock() {
                        m.insert((node, index), r);
                    }
                }
                Err(e) => {
                    warn!(%node, index, error = %e, "replicator failed to start");
                    errors.push((node, e));
                }
            }
        }

        // Set up every connection of every node, concurrently (§11.12).
        let mut setups = Vec::new();
        for (node, vbs) in &desired {
            for index in 0..k {
                let Some(r) = self.replicator(node, index) else {
                    continue;
                };
                let want: Vec<Vbid> = vbs
                    .iter()
                    .copied()
                    .filter(|v| u32::from(v.0) % k == index)
                    .collect();
                let node = node.clone();
                setups.push(async move { (node, r.setup_replication(want).await) });
            }
        }
        for (node, r) in join_all(setups).await {
            if let Err(e) = r {
                warn!(%node, error = %e, "replication set-up failed");
                errors.push((node, e));
            }
        }
        *last = desired;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ReplError::Replications { errors })
        }
    }
}

async fn shut_all(rs: Vec<Replicator>) {
    let results = join_all(rs.iter().map(Replicator::shut)).await;
    for (r, res) in rs.iter().zip(results) {
        if let Err(e) = res {
            debug!(name = %r.connection_name(), error = %e, "graceful shut failed");
        }
    }
}
