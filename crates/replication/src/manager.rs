//! The replication manager of one bucket on the consumer node
//! (`replication-layer.md` §8): a desired incoming map {producer node -> vbuckets}
//! becomes a set of [`Replicator`]s, `N` per producer node, vbucket `v` served by
//! connection `v mod N` (§7.6).
//!
//! * "Set" operations are serialized (an async mutex, like the original's server);
//!   set-ups on different replicators run concurrently (§11.12).
//! * Stopping never waits behind the serializer (issue #8 item 2): `stop_nodes`,
//!   `shutdown` and a `set_incoming_replication_map` that drops a node stop that
//!   node's replicators at once — including one still connecting, whose slot (and
//!   stop token) is registered before the remote connect. The call they supersede
//!   gets [`ReplError::Interrupted`] for that node at once; a per-node epoch keeps it
//!   from starting the node again.
//! * Each replicator orders its own operations (a set-up queued behind a takeover
//!   and vice versa); replicators whose wanted set is unchanged are not called.
//! * Reads ([`ReplicationManager::get_actual_replications`],
//!   [`ReplicationManager::get_replicator_for_vb`]) never wait behind in-flight
//!   work: they read each replicator's watched state (§8.1 IMPROVE MUST, MB-67329).
//! * Replicators are reconciled per connection index (§11.11 IMPROVE): a dead
//!   connection is replaced on the next set operation.
//! * Takeovers hold the serializer (a set operation computed before a takeover and
//!   applied after it would stream the taken-over vbucket again); a map that changes
//!   nothing returns at once without it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::join_all;
use kv_client::Credentials;
use mcbp::Vbid;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::core::CoreConfig;
use crate::error::ReplError;
use crate::io::ProxyConfig;
use crate::lock::lock;
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

/// How long a stop path lets a replicator shut gracefully before aborting it.
pub const STOP_GRACE: Duration = Duration::from_millis(400);

/// A replicator's place in the manager, registered before it connects.
#[derive(Debug)]
enum Slot {
    /// `Replicator::start` is running; cancelling the token abandons it.
    Starting(CancellationToken),
    Running(Replicator),
}

#[derive(Debug, Default)]
struct Slots {
    slots: BTreeMap<Key, Slot>,
    /// Bumped whenever a stop path removes a node: an operation that began before
    /// must not start that node again.
    epochs: BTreeMap<String, u64>,
}

impl Slots {
    fn epoch(&self, node: &str) -> u64 {
        self.epochs.get(node).copied().unwrap_or(0)
    }

    /// Removes every slot of `nodes` and bumps their epochs.
    fn evict(&mut self, nodes: &BTreeSet<String>) -> Vec<Slot> {
        for n in nodes {
            *self.epochs.entry(n.clone()).or_insert(0) += 1;
        }
        let keys: Vec<Key> = self
            .slots
            .keys()
            .filter(|(n, _)| nodes.contains(n))
            .cloned()
            .collect();
        keys.iter().filter_map(|k| self.slots.remove(k)).collect()
    }
}

/// One bucket's replication manager. Share it with `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct ReplicationManager {
    config: ManagerConfig,
    nodes: Mutex<HashMap<String, String>>,
    connection_count: AtomicU32,
    /// Serializes set operations.
    serial: tokio::sync::Mutex<()>,
    /// Replicators (and ones starting) by (producer node, connection index), with
    /// the per-node epochs. Short sections only, never across an await.
    slots: Mutex<Slots>,
}

impl ReplicationManager {
    /// A manager with no replicators.
    #[must_use]
    pub fn new(config: ManagerConfig) -> ReplicationManager {
        ReplicationManager {
            nodes: Mutex::new(config.nodes.clone()),
            connection_count: AtomicU32::new(config.connection_count.max(1)),
            serial: tokio::sync::Mutex::new(()),
            slots: Mutex::new(Slots::default()),
            config,
        }
    }

    /// Adds or changes a node's KV address (used by replicators started later).
    pub fn set_node_address(&self, node: impl Into<String>, addr: impl Into<String>) {
        lock(&self.nodes).insert(node.into(), addr.into());
    }

    /// The connection count N.
    #[must_use]
    pub fn connection_count(&self) -> u32 {
        self.connection_count.load(Ordering::Acquire)
    }

    /// `set_incoming_replication_map` (§8.2): replicate exactly `desired`; nodes
    /// absent (or with no vbuckets) lose their replicators (MB-10934) at once, even
    /// while an earlier call is still connecting to them.
    ///
    /// # Errors
    /// [`ReplError::Replications`] with one entry per failed (node) operation; the
    /// other nodes' replications are still applied.
    pub async fn set_incoming_replication_map(
        &self,
        desired: ReplicationMap,
    ) -> Result<(), ReplError> {
        let desired: ReplicationMap = desired.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        let gone: BTreeSet<String> = self
            .known_nodes()
            .into_iter()
            .filter(|n| !desired.contains_key(n))
            .collect();
        if !gone.is_empty() {
            self.stop_slots(&gone, self.stop_grace()).await;
        }
        // A map that changes nothing does not queue behind a takeover holding the
        // serializer (it would have called no replicator anyway).
        if self.already_applied(&desired) {
            return Ok(());
        }
        let _serial = self.serial.lock().await;
        self.apply(desired).await
    }

    /// Whether [`Self::apply`] of `desired` would start, stop or call no replicator:
    /// every slot is a running replicator that `desired` needs, and each streams
    /// exactly its wanted set with no set-up in flight.
    fn already_applied(&self, desired: &ReplicationMap) -> bool {
        let k = self.connection_count();
        let snapshot = {
            let m = lock(&self.slots);
            let mut running = BTreeMap::new();
            for (key, slot) in &m.slots {
                match slot {
                    Slot::Running(r) if r.is_running() && key.1 < k => {
                        running.insert(key.clone(), r.clone());
                    }
                    _ => return false,
                }
            }
            running
        };
        if snapshot.len() != desired.len() * k as usize {
            return false;
        }
        desired.iter().all(|(node, vbs)| {
            (0..k).all(|index| {
                let Some(r) = snapshot.get(&(node.clone(), index)) else {
                    return false;
                };
                streams_exactly(r, &on_connection(vbs, k, index))
            })
        })
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
        let _serial = self.serial.lock().await;
        let mut map = self.get_actual_replications();
        for vbs in map.values_mut() {
            vbs.remove(&vb);
        }
        if let Some(src) = src {
            map.entry(src.to_string()).or_default().insert(vb);
        }
        self.apply(map).await
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
        let _serial = self.serial.lock().await;
        let actual = self.get_actual_replications();
        let keep: ReplicationMap = actual
            .into_iter()
            .map(|(node, vbs)| {
                let wanted = future.get(&node).cloned().unwrap_or_default();
                (node, vbs.intersection(&wanted).copied().collect())
            })
            .collect();
        self.apply(keep).await
    }

    /// `stop_nodes(nodes)` (§8.2, failover path): drop every replication from these
    /// producer nodes at once — aborted, never waiting for them (they are presumed
    /// dead) nor for any operation in flight. An operation in flight for these nodes
    /// gets [`ReplError::Interrupted`].
    ///
    /// # Errors
    /// None today; kept fallible for the failover path's callers.
    pub async fn stop_nodes(&self, nodes: &[&str]) -> Result<(), ReplError> {
        let nodes: BTreeSet<String> = nodes.iter().map(ToString::to_string).collect();
        info!(bucket = %self.config.bucket, ?nodes, "stopping replications from nodes");
        self.stop_slots(&nodes, Duration::ZERO).await;
        Ok(())
    }

    /// Changes the connection count N (§8.2 `update_replication_count`): if it
    /// differs, every replicator is shut gracefully and the current replications are
    /// re-established on N connections (vb -> `vb mod N`).
    ///
    /// # Errors
    /// As [`Self::set_incoming_replication_map`].
    pub async fn set_connection_count(&self, n: u32) -> Result<(), ReplError> {
        let n = n.max(1);
        let _serial = self.serial.lock().await;
        if n == self.connection_count() {
            return Ok(());
        }
        let actual = self.get_actual_replications();
        info!(bucket = %self.config.bucket, from = self.connection_count(), to = n, "changing connection count");
        let taken = std::mem::take(&mut lock(&self.slots).slots);
        let all: Vec<Replicator> = taken
            .into_values()
            .filter_map(|s| match s {
                Slot::Running(r) => Some(r),
                Slot::Starting(t) => {
                    t.cancel();
                    None
                }
            })
            .collect();
        shut_all(all, None).await;
        self.connection_count.store(n, Ordering::Release);
        self.apply(actual).await
    }

    /// Takes `vb` over from `producer` on connection `vb mod N` (§7.6, §7.3),
    /// starting that connection if it does not exist yet. Holds the serializer:
    /// the set operations compute whole partition sets from the actual replications,
    /// and one computed before a takeover but applied after it would stream the
    /// taken-over vbucket again (into a copy that is active by then).
    ///
    /// # Errors
    /// [`ReplError::UnknownNode`], a start error, else the replicator's takeover
    /// error.
    pub async fn takeover(&self, producer: &str, vb: Vbid) -> Result<(), ReplError> {
        let _serial = self.serial.lock().await;
        let index = u32::from(vb.0) % self.connection_count();
        let r = match self.replicator(producer, index) {
            Some(r) if r.is_running() => r,
            _ => {
                let epoch = lock(&self.slots).epoch(producer);
                self.start_replicator(producer, index, epoch).await?
            }
        };
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
        match lock(&self.slots).slots.get(&(node.to_string(), index)) {
            Some(Slot::Running(r)) => Some(r.clone()),
            _ => None,
        }
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
            if !r.is_running() {
                // A dead connection says nothing about its nodes (issue #8 item 10).
                continue;
            }
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

    /// Stops every replicator (bucket shutdown, §2.3): each gets [`STOP_GRACE`] to
    /// shut gracefully, then is aborted; connects in flight are abandoned. Never
    /// waits behind an operation in flight, which gets [`ReplError::Interrupted`].
    pub async fn shutdown(&self) {
        let all: BTreeSet<String> = self.known_nodes();
        self.stop_slots(&all, self.stop_grace()).await;
    }

    /// [`STOP_GRACE`], or the configured shut bound if that is shorter.
    fn stop_grace(&self) -> Duration {
        STOP_GRACE.min(self.config.shut_timeout)
    }

    /// Every node with a slot.
    fn known_nodes(&self) -> BTreeSet<String> {
        lock(&self.slots)
            .slots
            .keys()
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Evicts `nodes` (bumping their epochs), abandons their starts and stops their
    /// replicators: gracefully for at most `grace`, then aborted.
    async fn stop_slots(&self, nodes: &BTreeSet<String>, grace: Duration) {
        let evicted = lock(&self.slots).evict(nodes);
        let mut running = Vec::new();
        for slot in evicted {
            match slot {
                Slot::Starting(t) => t.cancel(),
                Slot::Running(r) => running.push(r),
            }
        }
        shut_all(running, Some(grace)).await;
    }

    fn snapshot(&self) -> Vec<(Key, Replicator)> {
        lock(&self.slots)
            .slots
            .iter()
            .filter_map(|(k, s)| match s {
                Slot::Running(r) => Some((k.clone(), r.clone())),
                Slot::Starting(_) => None,
            })
            .collect()
    }

    /// Registers a slot for (node, index) — unless a stop path evicted the node
    /// since `epoch` — then connects. The slot's token abandons the connect.
    async fn start_replicator(
        &self,
        node: &str,
        index: u32,
        epoch: u64,
    ) -> Result<Replicator, ReplError> {
        let addr = self.resolve(node).ok_or_else(|| ReplError::UnknownNode {
            node: node.to_string(),
        })?;
        let key = (node.to_string(), index);
        let token = CancellationToken::new();
        enum Next {
            Have(Replicator),
            WaitForOther,
            Start,
        }
        let next = {
            let mut m = lock(&self.slots);
            if m.epoch(node) != epoch {
                debug!(%node, index, "node stopped meanwhile: not starting");
                return Err(ReplError::Interrupted);
            }
            match m.slots.get(&key) {
                Some(Slot::Running(r)) if r.is_running() => Next::Have(r.clone()),
                Some(Slot::Starting(_)) => Next::WaitForOther,
                _ => {
                    m.slots.insert(key.clone(), Slot::Starting(token.clone()));
                    Next::Start
                }
            }
        };
        match next {
            Next::Have(r) => return Ok(r),
            // Another call is connecting it: wait for that (bounded).
            Next::WaitForOther => return self.wait_started(&key).await,
            Next::Start => {}
        }
        let cfg = self.replicator_config(node, addr, index);
        let started = tokio::select! {
            () = token.cancelled() => Err(ReplError::Interrupted),
            r = Replicator::start(cfg) => r,
        };
        let mut m = lock(&self.slots);
        let ours = matches!(m.slots.get(&key), Some(Slot::Starting(t)) if !t.is_cancelled() && !token.is_cancelled());
        match started {
            Ok(r) if ours => {
                m.slots.insert(key, Slot::Running(r.clone()));
                Ok(r)
            }
            Ok(r) => {
                r.abort();
                Err(ReplError::Interrupted)
            }
            Err(e) => {
                if ours {
                    m.slots.remove(&key);
                }
                Err(e)
            }
        }
    }

    async fn wait_started(&self, key: &Key) -> Result<Replicator, ReplError> {
        let deadline = tokio::time::Instant::now() + self.config.connect_timeout * 2;
        loop {
            let slot = match lock(&self.slots).slots.get(key) {
                Some(Slot::Running(r)) => Some(Some(r.clone())),
                Some(Slot::Starting(_)) => None,
                None => Some(None),
            };
            match slot {
                Some(Some(r)) => return Ok(r),
                Some(None) => return Err(ReplError::Interrupted),
                None => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ReplError::Timeout {
                    waiting_for: crate::error::WaitFor::Connect,
                    vbuckets: Vec::new(),
                    peer: self.resolve(&key.0),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn resolve(&self, node: &str) -> Option<String> {
        lock(&self.nodes).get(node).cloned()
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
    async fn apply(&self, desired: ReplicationMap) -> Result<(), ReplError> {
        let desired: ReplicationMap = desired.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        let k = self.connection_count();
        let mut errors: Vec<(String, ReplError)> = Vec::new();

        // Reap dead connections and stop the ones no longer needed; note the epochs
        // this operation works under.
        let mut to_stop = Vec::new();
        let epochs: BTreeMap<String, u64> = {
            let mut m = lock(&self.slots);
            let keys: Vec<Key> = m.slots.keys().cloned().collect();
            for key in keys {
                let unneeded = !desired.contains_key(&key.0) || key.1 >= k;
                let dead = matches!(m.slots.get(&key), Some(Slot::Running(r)) if !r.is_running());
                if dead || unneeded {
                    match m.slots.remove(&key) {
                        Some(Slot::Running(r)) if !dead => to_stop.push(r),
                        Some(Slot::Starting(t)) => t.cancel(),
                        _ => debug!(node = %key.0, index = key.1, "reaping a dead replicator"),
                    }
                }
            }
            desired.keys().map(|n| (n.clone(), m.epoch(n))).collect()
        };
        shut_all(to_stop, None).await;

        // Start missing connections, concurrently across nodes and indexes.
        let mut starts = Vec::new();
        for node in desired.keys() {
            let epoch = epochs.get(node).copied().unwrap_or(0);
            for index in 0..k {
                if self.replicator(node, index).is_none() {
                    let node = node.clone();
                    starts.push(async move {
                        let r = self.start_replicator(&node, index, epoch).await;
                        (node, index, r)
                    });
                }
            }
        }
        let mut failed_nodes = BTreeSet::new();
        for (node, index, started) in join_all(starts).await {
            if let Err(mut e) = started {
                if let ReplError::Connect(c) = &mut e {
                    // Name what waited on this connection (issue #8 item 9).
                    c.vbuckets = desired
                        .get(&node)
                        .map(|vbs| on_connection(vbs, k, index))
                        .unwrap_or_default()
                        .into_iter()
                        .collect();
                }
                warn!(%node, index, error = %e, "replicator failed to start");
                if failed_nodes.insert(node.clone()) {
                    errors.push((node, e));
                }
            }
        }

        // Set up every connection whose wanted set changed, concurrently (§11.12).
        let mut setups = Vec::new();
        for (node, vbs) in &desired {
            for index in 0..k {
                let Some(r) = self.replicator(node, index) else {
                    continue;
                };
                let want = on_connection(vbs, k, index);
                if streams_exactly(&r, &want) {
                    continue;
                }
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
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ReplError::Replications { errors })
        }
    }
}

/// The vbuckets of `vbs` served by connection `index` of `k` (vb -> `vb mod k`, §7.6).
fn on_connection(vbs: &BTreeSet<Vbid>, k: u32, index: u32) -> BTreeSet<Vbid> {
    vbs.iter()
        .copied()
        .filter(|v| u32::from(v.0) % k == index)
        .collect()
}

/// Whether `r` streams exactly `want` and will not change it by itself. A takeover in
/// flight does not matter (its vbucket is not in the set); a set-up in flight might
/// still change the partitions.
fn streams_exactly(r: &Replicator, want: &BTreeSet<Vbid>) -> bool {
    r.get_partitions() == *want && r.state().phase != crate::core::Phase::Setup
}

/// Shuts replicators concurrently; with `grace`, one still running after it is
/// aborted (its shut call then ends too).
async fn shut_all(rs: Vec<Replicator>, grace: Option<Duration>) {
    let shut_one = |r: &Replicator| {
        let r = r.clone();
        async move {
            let res = match grace {
                Some(g) if g.is_zero() => {
                    r.abort();
                    Ok(())
                }
                Some(g) => match tokio::time::timeout(g, r.shut()).await {
                    Ok(res) => res,
                    Err(_) => {
                        debug!(name = %r.connection_name(), "graceful shut overran the stop grace: aborting");
                        r.abort();
                        Ok(())
                    }
                },
                None => r.shut().await,
            };
            if let Err(e) = res {
                debug!(name = %r.connection_name(), error = %e, "graceful shut failed");
            }
            // Both sockets closed before we report the node stopped (bounded by the
            // replicator's teardown flush).
            let _ = tokio::time::timeout(Duration::from_secs(1), r.closed()).await;
        }
    };
    join_all(rs.iter().map(shut_one)).await;
}
