//! The node agent (cluster.md §2.1, §2.3, §2.6): runs inside every `conduit node`
//! beside the data node, hosts one [`ReplicationManager`] per bucket for the node's
//! incoming replications, applies vbucket states, runs move steps and reports
//! health. It reaches its own node only over loopback admin HTTP and MCBP, never by
//! linking `kv-node`.
//!
//! * [`Agent`] owns the persisted state (`<data-dir>/cluster/agent.json`: node uuid,
//!   membership with the cluster's credentials, highest term seen) and the managers;
//!   [`Agent::router`] is its `/agent/v1/…` routes, served by kv-node's admin
//!   extension (N7) behind the node's admin auth.
//! * [`AgentClient`] is the orchestrator's side; [`api`] the wire types both share.
//!
//! The agent does not need its node to be up when it starts (the node needs the
//! agent's router to start): node calls happen per request, and the managers of a
//! joined node's buckets are re-created by a background task once the node
//! answers (and on demand by any bucket route). No vbucket state is set at start:
//! a member's node starts fenced (N6) and the janitor applies.

pub mod api;
mod client;
mod error;
mod node;
mod routes;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kv_client::Credentials;
use replication::{ManagerConfig, ReplicationManager};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use api::{AddressEntry, AgentInfo, BucketRef, Creds};
pub use client::{
    AgentCallError, AgentClient, CALL_SLACK, CLUSTER_HEADER, DEFAULT_CALL_BOUND, TERM_HEADER,
};
pub use error::AgentError;

use node::NodeLink;

/// What an agent needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The node's data directory (the agent keeps `cluster/agent.json` in it).
    pub data_dir: PathBuf,
    /// The own node's admin address (loopback).
    pub node_admin: SocketAddr,
    /// The own node's KV address (loopback).
    pub node_kv: SocketAddr,
    /// The address the cluster reaches this node by (`127.0.0.1` by default).
    pub host: String,
    /// The node's startup admin user, for the agent's own node calls.
    pub local_admin: Creds,
    /// The software version reported by `info`.
    pub version: String,
}

impl AgentConfig {
    /// A config with host `127.0.0.1` and this crate's version.
    #[must_use]
    pub fn new(
        data_dir: impl Into<PathBuf>,
        node_admin: SocketAddr,
        node_kv: SocketAddr,
        local_admin: Creds,
    ) -> AgentConfig {
        AgentConfig {
            data_dir: data_dir.into(),
            node_admin,
            node_kv,
            host: "127.0.0.1".to_string(),
            local_admin,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// The joined-cluster view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The cluster's uuid.
    pub cluster: String,
    /// This node's name.
    pub name: String,
    /// The highest orchestrator term seen in a join or address book.
    pub term: u64,
    /// The orchestrator node's name.
    pub orchestrator: String,
    /// The address book.
    pub nodes: Vec<AddressEntry>,
    /// The internal user.
    pub internal: Creds,
    /// The cluster admin user.
    pub admin: Creds,
}

impl Membership {
    /// A node's address book entry.
    #[must_use]
    pub fn address_of(&self, name: &str) -> Option<&AddressEntry> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// `agent.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Persisted {
    uuid: String,
    #[serde(default)]
    membership: Option<Membership>,
    /// The highest term seen (headers included), so a restart keeps refusing stale
    /// orchestrators.
    #[serde(default)]
    highest_term: u64,
}

fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster").join("agent.json")
}

/// Is this data directory a cluster member (then its node starts fenced, N6)? Read
/// by the CLI before the node starts; an unreadable file counts as not a member.
#[must_use]
pub fn is_member(data_dir: &Path) -> bool {
    std::fs::read(state_path(data_dir))
        .ok()
        .and_then(|b| serde_json::from_slice::<Persisted>(&b).ok())
        .is_some_and(|p| p.membership.is_some())
}

fn load(path: &Path) -> Result<Option<Persisted>, AgentError> {
    let err = |m: String| AgentError::State {
        path: path.display().to_string(),
        message: m,
    };
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(e.to_string())),
    }
}

/// Atomic write (temp file, fsync, rename), mode 0600: the file holds passwords.
fn store(path: &Path, p: &Persisted) -> Result<(), AgentError> {
    use std::io::Write as _;
    let err = |m: String| AgentError::State {
        path: path.display().to_string(),
        message: m,
    };
    let dir = path
        .parent()
        .ok_or_else(|| err("no parent directory".into()))?;
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(p).map_err(|e| err(e.to_string()))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(|e| err(e.to_string()))?;
    f.write_all(&body).map_err(|e| err(e.to_string()))?;
    f.sync_all().map_err(|e| err(e.to_string()))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The node agent. Share it as `Arc<Agent>`.
#[derive(Debug)]
pub struct Agent {
    cfg: AgentConfig,
    uuid: String,
    node: NodeLink,
    membership: watch::Sender<Option<Membership>>,
    highest_term: AtomicU64,
    /// One manager per bucket (joined nodes only). Short sections, never across an
    /// await.
    managers: Mutex<BTreeMap<String, Arc<ReplicationManager>>>,
    /// Buckets that had an apply since the agent started (`health.ready`).
    applied: Mutex<BTreeSet<String>>,
    /// Last bucket list seen on the node (name -> uuid), for [`Agent::info`].
    buckets: Mutex<BTreeMap<String, String>>,
    /// Serializes membership changes (join, address book, leave) and their
    /// persistence.
    admin: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// How long the restart task keeps trying to list the node's buckets.
const RESTORE_PATIENCE: Duration = Duration::from_secs(120);

impl Agent {
    /// Loads or creates `<data-dir>/cluster/agent.json` (uuid: 32 random hex on the
    /// first start). When joined, the managers of the node's buckets are re-created
    /// in the background once the node answers; no vbucket state is set.
    ///
    /// # Errors
    /// [`AgentError::State`] when the file cannot be read, parsed or written.
    pub async fn start(cfg: AgentConfig) -> Result<Arc<Agent>, AgentError> {
        let path = state_path(&cfg.data_dir);
        let p = tokio::task::spawn_blocking(move || -> Result<Persisted, AgentError> {
            if let Some(p) = load(&path)? {
                return Ok(p);
            }
            let p = Persisted {
                uuid: hex::encode(rand::random::<[u8; 16]>()),
                membership: None,
                highest_term: 0,
            };
            store(&path, &p)?;
            Ok(p)
        })
        .await
        .map_err(|e| AgentError::State {
            path: state_path(&cfg.data_dir).display().to_string(),
            message: e.to_string(),
        })??;
        let highest = p
            .highest_term
            .max(p.membership.as_ref().map_or(0, |m| m.term));
        let joined = p.membership.is_some();
        let agent = Arc::new(Agent {
            node: NodeLink::new(cfg.node_admin, cfg.node_kv, cfg.local_admin.clone()),
            uuid: p.uuid,
            membership: watch::Sender::new(p.membership),
            highest_term: AtomicU64::new(highest),
            managers: Mutex::new(BTreeMap::new()),
            applied: Mutex::new(BTreeSet::new()),
            buckets: Mutex::new(BTreeMap::new()),
            admin: tokio::sync::Mutex::new(()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            cfg,
        });
        info!(uuid = %agent.uuid, joined, "agent started");
        if joined {
            let a = agent.clone();
            agent.tasks.spawn(async move { a.restore_managers().await });
        }
        Ok(agent)
    }

    /// Restart: a manager for every bucket on the node, once the node answers.
    async fn restore_managers(self: Arc<Self>) {
        let deadline = tokio::time::Instant::now() + RESTORE_PATIENCE;
        loop {
            let listed = tokio::select! {
                () = self.shutdown.cancelled() => return,
                r = self.node.list_buckets() => r,
            };
            match listed {
                Ok(list) => {
                    for (name, _) in &list {
                        let _ = self.manager(name);
                    }
                    self.remember_buckets(&list);
                    info!(buckets = list.len(), "agent restored bucket managers");
                    return;
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    debug!(error = %e, "node not answering yet; retrying");
                }
                Err(e) => {
                    warn!(error = %e, "gave up restoring managers (bucket routes create them on demand)");
                    return;
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// The `/agent/v1/…` routes.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        routes::router(self.clone())
    }

    /// The joined-cluster view, `None` before join.
    #[must_use]
    pub fn membership(&self) -> Option<Membership> {
        self.membership.borrow().clone()
    }

    /// Fires on join, address book changes and leave.
    #[must_use]
    pub fn watch_membership(&self) -> watch::Receiver<Option<Membership>> {
        self.membership.subscribe()
    }

    /// The node's identity (buckets as last seen on the node).
    #[must_use]
    pub fn info(&self) -> AgentInfo {
        let m = self.membership();
        let host = m
            .as_ref()
            .and_then(|m| m.address_of(&m.name).map(|e| e.host.clone()))
            .unwrap_or_else(|| self.cfg.host.clone());
        AgentInfo {
            uuid: self.uuid.clone(),
            name: m.as_ref().map(|m| m.name.clone()),
            cluster: m.as_ref().map(|m| m.cluster.clone()),
            membership: m.as_ref().map(|_| "joined".to_string()),
            host,
            kv_port: self.cfg.node_kv.port(),
            admin_port: self.cfg.node_admin.port(),
            version: self.cfg.version.clone(),
            buckets: lock(&self.buckets)
                .iter()
                .map(|(name, uuid)| BucketRef {
                    name: name.clone(),
                    uuid: uuid.clone(),
                })
                .collect(),
        }
    }

    /// Stops every manager and background task. The persisted state is kept.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        let all: Vec<Arc<ReplicationManager>> = std::mem::take(&mut *lock(&self.managers))
            .into_values()
            .collect();
        futures::future::join_all(all.iter().map(|m| m.shutdown())).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
    }

    // ---- internals shared with the routes ----

    fn remember_buckets(&self, list: &[(String, Option<String>)]) {
        *lock(&self.buckets) = list
            .iter()
            .map(|(n, u)| (n.clone(), u.clone().unwrap_or_default()))
            .collect();
    }

    fn highest_term(&self) -> u64 {
        self.highest_term.load(Ordering::Acquire)
    }

    fn see_term(&self, term: u64) {
        self.highest_term.fetch_max(term, Ordering::AcqRel);
    }

    /// The bucket's manager, created if missing (joined nodes only).
    fn manager(&self, bucket: &str) -> Result<Arc<ReplicationManager>, AgentError> {
        let m = self.membership().ok_or(AgentError::NotMember)?;
        let mut managers = lock(&self.managers);
        if let Some(r) = managers.get(bucket) {
            return Ok(r.clone());
        }
        let mut cfg = ManagerConfig::new(
            bucket,
            m.name.clone(),
            self.cfg.node_kv.to_string(),
            Credentials {
                user: m.internal.user.clone(),
                password: m.internal.password.clone(),
            },
        );
        cfg.nodes = address_map(&m);
        let r = Arc::new(ReplicationManager::new(cfg));
        managers.insert(bucket.to_string(), r.clone());
        debug!(bucket, "bucket manager created");
        Ok(r)
    }

    fn existing_manager(&self, bucket: &str) -> Option<Arc<ReplicationManager>> {
        lock(&self.managers).get(bucket).cloned()
    }

    fn take_manager(&self, bucket: &str) -> Option<Arc<ReplicationManager>> {
        lock(&self.managers).remove(bucket)
    }

    fn all_managers(&self) -> Vec<(String, Arc<ReplicationManager>)> {
        lock(&self.managers)
            .iter()
            .map(|(b, m)| (b.clone(), m.clone()))
            .collect()
    }

    /// Persists `membership` (and the highest term) and publishes it.
    async fn persist(&self, membership: Option<Membership>) -> Result<(), AgentError> {
        let p = Persisted {
            uuid: self.uuid.clone(),
            highest_term: self
                .highest_term()
                .max(membership.as_ref().map_or(0, |m| m.term)),
            membership: membership.clone(),
        };
        let path = state_path(&self.cfg.data_dir);
        let shown = path.display().to_string();
        tokio::task::spawn_blocking(move || store(&path, &p))
            .await
            .map_err(|e| AgentError::State {
                path: shown,
                message: e.to_string(),
            })??;
        self.membership.send_replace(membership);
        Ok(())
    }
}

/// name -> `host:kv_port` of every node in the address book.
fn address_map(m: &Membership) -> HashMap<String, String> {
    m.nodes
        .iter()
        .map(|n| (n.name.clone(), n.kv_addr()))
        .collect()
}

/// A poisoned lock only means another thread panicked mid-section; the maps stay
/// usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
