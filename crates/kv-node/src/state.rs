//! The state every task of a node shares: its buckets (with the bookkeeping kept
//! beside each engine), users, counters, fault list and DCP connection names, plus
//! the helpers sessions, DCP connections and the admin API use to change it.
//!
//! This module sits below everything that serves a connection: it imports none of
//! `session`, `dcp`, `admin`, `stats` or `node` (the listener shell above them).
//! `tests/module_graph.rs` keeps it that way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use bytes::Bytes;
use kv_engine::{Bucket, BucketConfig, EngineError, UnixTime};
use mcbp::{VbState, Vbid};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::NodeConfig;
use crate::faults::Faults;
use crate::users::{Role, StoredUser, User, Users};

/// What defines a bucket; kept in `<data_dir>/buckets.json` so a restart brings the
/// same buckets back.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BucketMeta {
    /// Name.
    pub name: String,
    /// Number of vbuckets.
    pub vbuckets: u16,
    /// Memory quota in MiB.
    pub ram_quota_mb: u64,
    /// Whether FLUSH is allowed.
    #[serde(default)]
    pub flush_enabled: bool,
    /// The cluster's uuid for this bucket, when the cluster layer created it (N1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}

/// A live bucket and what the node keeps beside the engine.
#[derive(Debug)]
pub struct BucketEntry {
    /// Definition.
    pub meta: BucketMeta,
    /// The storage engine.
    pub bucket: Bucket,
    /// Cluster config JSON set by the cluster layer, if any (only moves forward).
    pub cluster_config: crate::cluster::ConfigSlot,
    /// Signalled after every change to items (new seqnos for DCP producers).
    pub changed: Notify,
    /// Signalled after every flush (persisted seqnos moved).
    pub persisted: Notify,
    /// Revision of the node-made cluster config; bumped on vbucket state changes.
    pub config_rev: AtomicU64,
    /// DCP bookkeeping: live connections and streams (stats), per-vbucket state
    /// epochs (a change ends producer streams), initial-disk-snapshot flags.
    pub(crate) dcp: crate::dcp_registry::DcpRegistry,
    /// Set when the bucket is deleted; sessions holding it deselect it.
    pub deleted: std::sync::atomic::AtomicBool,
}

impl BucketEntry {
    /// The config the cluster layer set, if any (NOT_MY_VBUCKET bodies carry it).
    #[must_use]
    pub fn cluster_config_if_set(&self) -> Option<Bytes> {
        self.cluster_config.get().map(|(_, body)| body)
    }

    /// The bucket config to serve: the cluster layer's, or a one-node config listing
    /// this node's active vbuckets (epoch −1: older than any cluster config).
    #[must_use]
    pub fn cluster_config(
        &self,
        kv_port: u16,
        admin_port: u16,
    ) -> (crate::cluster::ConfigVersion, Bytes) {
        if let Some(c) = self.cluster_config.get() {
            return c;
        }
        let rev = i64::try_from(self.config_rev.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        let states: Vec<bool> = (0..self.meta.vbuckets)
            .map(|vb| self.bucket.vbucket_state(Vbid(vb)).ok() == Some(VbState::Active))
            .collect();
        (
            crate::cluster::ConfigVersion { epoch: -1, rev },
            crate::cluster::one_node_bucket_config(
                &self.meta.name,
                rev,
                kv_port,
                admin_port,
                &states,
            ),
        )
    }

    /// Wakes DCP producers after a change.
    pub fn notify_change(&self) {
        self.changed.notify_waiters();
    }
}

/// Counters for the default stats group.
#[derive(Debug, Default)]
pub struct NodeCounters {
    /// Connections open now.
    pub curr_connections: AtomicUsize,
    /// Connections accepted since start.
    pub total_connections: AtomicU64,
    /// GET-family commands.
    pub cmd_get: AtomicU64,
    /// Store-family commands.
    pub cmd_set: AtomicU64,
    /// GET hits.
    pub get_hits: AtomicU64,
    /// GET misses.
    pub get_misses: AtomicU64,
    /// Connections refused by the connection limit.
    pub rejected_connections: AtomicU64,
    /// The most unsent output any KV connection has held (bytes): stays near
    /// `max_conn_output` plus one response however much a client pipelines.
    pub conn_output_high_water: AtomicUsize,
    /// SEQNO_PERSISTENCE requests waiting now.
    pub seqno_persistence_waiting: AtomicUsize,
}

/// State shared by every task of a node.
#[derive(Debug)]
pub struct NodeState {
    /// Settings.
    pub config: NodeConfig,
    /// Users.
    pub users: Users,
    buckets: RwLock<HashMap<String, Arc<BucketEntry>>>,
    /// Counters.
    pub counters: NodeCounters,
    /// Fault injection (empty unless enabled).
    pub faults: Faults,
    /// DCP connections by name, so a new one with the same name replaces the old.
    pub dcp_names: Mutex<HashMap<(String, String), (u64, CancellationToken)>>,
    next_dcp_id: AtomicU64,
    /// Node start time.
    pub started: SystemTime,
    /// Where the KV listener is bound.
    pub kv_addr: Mutex<Option<SocketAddr>>,
    /// Where the admin listener is bound.
    pub admin_addr: Mutex<Option<SocketAddr>>,
    /// The cluster-level config set by the cluster layer (N3), served by
    /// GET_CLUSTER_CONFIG on connections without a selected bucket.
    pub global_config: crate::cluster::ConfigSlot,
    /// Users added through the admin API (N5), as persisted in `users.json`.
    /// The names of those users; their credentials live in `users` only.
    managed_users: Mutex<std::collections::BTreeSet<String>>,
}

/// The current wall-clock time for the engine.
#[must_use]
pub fn now() -> UnixTime {
    UnixTime::from_system_time(SystemTime::now())
}

impl NodeState {
    pub(crate) fn new(config: NodeConfig) -> NodeState {
        let users = Users::default();
        users.insert(User::new(
            &config.admin_user,
            &config.admin_password,
            Role::Admin,
        ));
        for u in &config.bucket_users {
            users.insert(User::new(
                &u.name,
                &u.password,
                Role::BucketUser {
                    bucket: u.bucket.clone(),
                },
            ));
        }
        NodeState {
            faults: Faults::new(config.enable_fault_injection),
            config,
            users,
            buckets: RwLock::new(HashMap::new()),
            counters: NodeCounters::default(),
            dcp_names: Mutex::new(HashMap::new()),
            next_dcp_id: AtomicU64::new(1),
            started: SystemTime::now(),
            kv_addr: Mutex::new(None),
            admin_addr: Mutex::new(None),
            global_config: crate::cluster::ConfigSlot::default(),
            managed_users: Mutex::new(std::collections::BTreeSet::new()),
        }
    }

    fn users_path(&self) -> PathBuf {
        self.config.data_dir.join("users.json")
    }

    /// Whether `name` is one of the node's own users (start-up admin, config file):
    /// those cannot be replaced or removed through the API.
    #[must_use]
    pub fn is_own_user(&self, name: &str) -> bool {
        name == self.config.admin_user || self.config.bucket_users.iter().any(|u| u.name == name)
    }

    /// Loads the API-managed users (blocking: call it off the async workers).
    pub(crate) fn load_users(&self) -> Result<(), NodeError> {
        let stored: Vec<StoredUser> = match std::fs::read_to_string(self.users_path()) {
            Ok(text) => serde_json::from_str(&text).map_err(NodeError::Meta)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(NodeError::Io {
                    what: "reading users.json",
                    source,
                })
            }
        };
        let mut managed = self
            .managed_users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for s in stored {
            if self.is_own_user(&s.name) {
                warn!(user = %s.name, "users.json names one of the node's own users; ignored");
                continue;
            }
            match User::from_stored(&s) {
                Some(u) => {
                    self.users.insert(u);
                    managed.insert(s.name);
                }
                None => warn!(user = %s.name, "damaged entry in users.json; ignored"),
            }
        }
        Ok(())
    }

    /// Adds or replaces an admin user and persists it (blocking).
    ///
    /// # Errors
    /// Writing `users.json` failed (the user is then not added).
    pub fn put_admin_user(&self, name: &str, password: &str) -> Result<(), NodeError> {
        let user = User::new(name, password, Role::Admin);
        let mut managed = self
            .managed_users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let others = managed.iter().filter(|n| n.as_str() != name);
        let mut list: Vec<StoredUser> = others
            .filter_map(|n| self.users.get(n))
            .map(|u| u.to_stored())
            .collect();
        list.push(user.to_stored());
        self.save_users(&list)?;
        managed.insert(name.to_string());
        self.users.insert(user);
        Ok(())
    }

    /// Removes an API-managed user and persists the change (blocking); whether it
    /// existed.
    ///
    /// # Errors
    /// Writing `users.json` failed (the user is then kept).
    pub fn delete_user(&self, name: &str) -> Result<bool, NodeError> {
        let mut managed = self
            .managed_users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !managed.contains(name) {
            return Ok(false);
        }
        let list: Vec<StoredUser> = managed
            .iter()
            .filter(|n| n.as_str() != name)
            .filter_map(|n| self.users.get(n))
            .map(|u| u.to_stored())
            .collect();
        self.save_users(&list)?;
        managed.remove(name);
        self.users.remove(name);
        Ok(true)
    }

    /// Writes `users.json` (derived credentials only, owner-only, replaced
    /// atomically).
    fn save_users(&self, list: &[StoredUser]) -> Result<(), NodeError> {
        let text = serde_json::to_string_pretty(list).expect("users serialize");
        let path = self.users_path();
        let tmp = path.with_extension("json.tmp");
        let io = |source| NodeError::Io {
            what: "writing users.json",
            source,
        };
        std::fs::write(&tmp, text).map_err(io)?;
        restrict_to_owner(&tmp).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// The bound KV port (0 before start).
    #[must_use]
    pub fn kv_port(&self) -> u16 {
        self.kv_addr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map_or(0, |a| a.port())
    }

    /// The bound admin port (0 before start).
    #[must_use]
    pub fn admin_port(&self) -> u16 {
        self.admin_addr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map_or(0, |a| a.port())
    }

    /// A bucket by name.
    #[must_use]
    pub fn bucket(&self, name: &str) -> Option<Arc<BucketEntry>> {
        self.buckets
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Every bucket, sorted by name.
    #[must_use]
    pub fn buckets(&self) -> Vec<Arc<BucketEntry>> {
        let mut v: Vec<_> = self
            .buckets
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        v
    }

    fn bucket_dir(&self) -> PathBuf {
        self.config.data_dir.join("buckets")
    }

    fn meta_path(&self) -> PathBuf {
        self.config.data_dir.join("buckets.json")
    }

    fn save_meta(&self) -> Result<(), NodeError> {
        let metas: Vec<BucketMeta> = self.buckets().iter().map(|b| b.meta.clone()).collect();
        let text = serde_json::to_string_pretty(&metas).expect("bucket metadata serializes");
        let tmp = self.meta_path().with_extension("json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, self.meta_path()))
            .map_err(|source| NodeError::Io {
                what: "writing buckets.json",
                source,
            })
    }

    fn open_bucket(&self, meta: &BucketMeta) -> Result<Arc<BucketEntry>, EngineError> {
        let mut bc = BucketConfig::new(&meta.name, self.bucket_dir());
        bc.num_vbuckets = meta.vbuckets;
        bc.quota_bytes = meta.ram_quota_mb.saturating_mul(1024 * 1024);
        bc.rng_seed = self.config.rng_seed;
        bc.before_commit = self.config.commit_hook.clone();
        let bucket = Bucket::open(bc)?;
        Ok(Arc::new(BucketEntry {
            meta: meta.clone(),
            bucket,
            cluster_config: crate::cluster::ConfigSlot::default(),
            changed: Notify::new(),
            persisted: Notify::new(),
            config_rev: AtomicU64::new(1),
            dcp: crate::dcp_registry::DcpRegistry::new(meta.vbuckets),
            deleted: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Creates a bucket; every vbucket starts in `initial_state` (dead by default).
    ///
    /// # Errors
    /// [`NodeError::BucketExists`], or the engine refuses the definition.
    pub fn create_bucket(
        &self,
        meta: BucketMeta,
        initial_state: Option<VbState>,
    ) -> Result<Arc<BucketEntry>, NodeError> {
        self.create_bucket_with_config(meta, initial_state, None)
    }

    /// [`Self::create_bucket`], with the cluster layer's config installed before the
    /// bucket becomes visible (N1).
    ///
    /// # Errors
    /// As [`Self::create_bucket`].
    pub fn create_bucket_with_config(
        &self,
        meta: BucketMeta,
        initial_state: Option<VbState>,
        cluster_config: Option<(crate::cluster::ConfigVersion, Bytes)>,
    ) -> Result<Arc<BucketEntry>, NodeError> {
        let mut map = self
            .buckets
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.contains_key(&meta.name) {
            return Err(NodeError::BucketExists(meta.name));
        }
        // A leftover file from an earlier bucket of the same name must not resurrect data.
        let _ = std::fs::remove_file(
            kv_engine::BucketConfig::new(meta.name.clone(), self.bucket_dir()).db_path(),
        );
        let entry = self.open_bucket(&meta).map_err(NodeError::Engine)?;
        if let Some(state) = initial_state {
            for vb in 0..meta.vbuckets {
                entry
                    .bucket
                    .set_state(Vbid(vb), state)
                    .map_err(NodeError::Engine)?;
            }
        }
        // Installed before the bucket is visible: a cluster-managed bucket never
        // serves the one-node default config (N1).
        if let Some((version, body)) = cluster_config {
            let _ = entry.cluster_config.offer(version, body);
        }
        map.insert(meta.name.clone(), entry.clone());
        drop(map);
        self.save_meta()?;
        info!(bucket = %meta.name, vbuckets = meta.vbuckets, ram_quota_mb = meta.ram_quota_mb, "bucket created");
        Ok(entry)
    }

    /// Deletes a bucket and its data.
    ///
    /// # Errors
    /// [`NodeError::NoSuchBucket`].
    pub fn delete_bucket(&self, name: &str) -> Result<(), NodeError> {
        let entry = self
            .buckets
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name)
            .ok_or_else(|| NodeError::NoSuchBucket(name.to_string()))?;
        entry.deleted.store(true, Ordering::Relaxed);
        self.save_meta()?;
        // Sessions may still hold the entry; unlinking the file is safe on Unix and
        // the memory goes with the last reference.
        let _ = std::fs::remove_file(entry.bucket.path());
        entry.notify_change();
        info!(bucket = %name, "bucket deleted");
        Ok(())
    }

    /// Sets a vbucket's state and wakes DCP streams (a state change ends them).
    ///
    /// # Errors
    /// The engine's error (e.g. NotMyVbucket for an id beyond the bucket).
    pub fn set_vbucket_state(
        &self,
        entry: &BucketEntry,
        vb: Vbid,
        state: VbState,
    ) -> Result<(), EngineError> {
        let old = entry.bucket.vbucket_state(vb)?;
        entry.bucket.set_state(vb, state)?;
        // Every SET_VBUCKET ends the producer streams out of the vbucket (§7.8), even
        // one that leaves the state as it was.
        entry.dcp.bump_epoch(vb);
        if old != state {
            entry.config_rev.fetch_add(1, Ordering::Relaxed);
            info!(bucket = %entry.meta.name, vb = %vb, from = %old, to = %state, "vbucket state changed");
        }
        entry.notify_change();
        Ok(())
    }

    /// [`NodeState::set_vbucket_state`] from an async task: the engine call runs on
    /// the blocking pool, because becoming active commits (fsync) and every state
    /// change waits for a flush in progress.
    ///
    /// # Errors
    /// As [`NodeState::set_vbucket_state`].
    pub(crate) async fn set_vbucket_state_off_runtime(
        self: &Arc<Self>,
        entry: &Arc<BucketEntry>,
        vb: Vbid,
        state: VbState,
    ) -> Result<(), EngineError> {
        let (node, e) = (self.clone(), entry.clone());
        off_runtime(&entry.meta.name, move || {
            node.set_vbucket_state(&e, vb, state)
        })
        .await
    }

    /// Registers a DCP connection name; a live connection with the same name on the
    /// same bucket is told to disconnect first (`mcbp-dcp.md` §6.2). Returns the
    /// registration id and the token the connection must watch.
    pub fn register_dcp_name(&self, bucket: &str, name: &str) -> (u64, CancellationToken) {
        let token = CancellationToken::new();
        let id = self.next_dcp_id.fetch_add(1, Ordering::Relaxed);
        let mut names = self
            .dcp_names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, old)) =
            names.insert((bucket.to_string(), name.to_string()), (id, token.clone()))
        {
            info!(
                bucket,
                name, "DCP connection name reused: disconnecting the old connection"
            );
            old.cancel();
        }
        (id, token)
    }

    /// Forgets a DCP connection name if registration `id` still owns it.
    pub fn unregister_dcp_name(&self, bucket: &str, name: &str, id: u64) {
        let mut names = self
            .dcp_names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (bucket.to_string(), name.to_string());
        if names.get(&key).is_some_and(|(owner, _)| *owner == id) {
            names.remove(&key);
        }
    }

    /// Whether a DCP connection of this name is registered on the bucket.
    #[must_use]
    pub fn has_dcp_name(&self, bucket: &str, name: &str) -> bool {
        self.dcp_names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&(bucket.to_string(), name.to_string()))
    }

    /// Reopens the buckets listed in `buckets.json` (reads every item: blocking work).
    ///
    /// # Errors
    /// `buckets.json` is unreadable or corrupt, or the engine cannot open a bucket.
    pub(crate) fn load_buckets(&self) -> Result<(), NodeError> {
        let path = self.meta_path();
        let metas: Vec<BucketMeta> = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(NodeError::Meta)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(NodeError::Io {
                    what: "reading buckets.json",
                    source,
                })
            }
        };
        let mut map = self
            .buckets
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for meta in metas {
            let entry = self.open_bucket(&meta).map_err(NodeError::Engine)?;
            if !self.config.restore_vbucket_states {
                // N6 fenced start: nothing is served until the map says so.
                for vb in 0..meta.vbuckets {
                    if entry.bucket.vbucket_state(Vbid(vb)).ok() != Some(VbState::Dead) {
                        entry
                            .bucket
                            .set_state(Vbid(vb), VbState::Dead)
                            .map_err(NodeError::Engine)?;
                    }
                }
            }
            info!(bucket = %meta.name, clean = entry.bucket.opened_after_clean_shutdown(),
                fenced = !self.config.restore_vbucket_states, "bucket reopened");
            map.insert(meta.name.clone(), entry);
        }
        Ok(())
    }

    /// Removes every bucket from the node (shutdown and kill); the caller decides
    /// whether to close or flush them.
    pub(crate) fn take_buckets(&self) -> Vec<Arc<BucketEntry>> {
        self.buckets
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .map(|(_, e)| e)
            .collect()
    }
}

/// Runs engine work that may commit or wait for a commit (SET_VBUCKET, DEL_VBUCKET,
/// rollback) on the blocking pool, so an fsync never stalls an async worker and the
/// connections it serves. A panic in `f` is resumed here.
///
/// # Errors
/// `f`'s error, or [`EngineError::Io`] when the runtime shut down before `f` ran.
pub(crate) async fn off_runtime<T: Send + 'static>(
    bucket: &str,
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(EngineError::Io {
            bucket: bucket.to_owned(),
            source: std::io::Error::other("disk task cancelled: the runtime is shutting down"),
        }),
    }
}

/// A node failed to start or stop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Binding or file I/O failed.
    #[error("{what}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The engine failed.
    #[error("storage engine")]
    Engine(#[source] EngineError),
    /// A bucket of that name exists.
    #[error("bucket {0:?} already exists")]
    BucketExists(String),
    /// No bucket of that name.
    #[error("no bucket {0:?}")]
    NoSuchBucket(String),
    /// `buckets.json` is unreadable.
    #[error("buckets.json is corrupt")]
    Meta(#[source] serde_json::Error),
}

/// Credentials files are readable by the owner only.
#[cfg(unix)]
fn restrict_to_owner(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn restrict_to_owner(_path: &std::path::Path) -> std::io::Result<()> {
    Ok(())
}
