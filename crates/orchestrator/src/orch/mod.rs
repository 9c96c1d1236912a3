//! The orchestrator (cluster.md §2.4): one actor serialising every mutating
//! orchestration — membership, buckets, the janitor — over the metadata store, plus
//! the heartbeat and config-uploader tasks it feeds. It reaches nodes only through
//! their agents' admin HTTP API.

mod actor;
mod auto_io;
mod failover_io;
mod health;
mod janitor_pass;
pub mod model;
pub mod one_move;
mod rebalance;
mod retry_io;
mod secrets;
mod uploader;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::agent::api::Creds;
use crate::rest::error::RestError;
use crate::rest::form::{AddNodeParams, BucketParams, InitParams};
use crate::store::{MetadataStore, RedbStore};

pub use self::health::{NodeHealth, NodeStatus};
pub use self::model::{ClusterView, Membership, NodeRecord};
pub use self::rebalance::RebalanceSettings;
pub use self::secrets::Secrets;

/// How long a REST request waits for the actor (its queue, then its answer).
pub const CALL_BOUND: Duration = Duration::from_secs(30);

/// Tunables of the orchestrator (cluster.md §11).
#[derive(Debug, Clone)]
pub struct OrchConfig {
    /// The node's data dir; the store and secrets live in `<data-dir>/cluster/`.
    pub data_dir: PathBuf,
    /// This node's name.
    pub self_name: String,
    /// Janitor period when idle.
    pub janitor_period: Duration,
    /// Heartbeat period (and bound of one heartbeat call).
    pub heartbeat_period: Duration,
    /// Bound of the janitor's state queries.
    pub janitor_query_timeout: Duration,
    /// Bound of one apply phase per node.
    pub janitor_apply_timeout: Duration,
    /// The version string nodes report.
    pub version: String,
    /// Test hook (cluster.md §10.2 T7): the first commit of a move that changes a
    /// vbucket's active fails — after its takeover, before its commit — once.
    pub fail_first_takeover_commit: bool,
}

impl OrchConfig {
    /// Defaults of §11.
    #[must_use]
    pub fn new(data_dir: impl Into<PathBuf>, self_name: impl Into<String>) -> OrchConfig {
        OrchConfig {
            data_dir: data_dir.into(),
            self_name: self_name.into(),
            janitor_period: Duration::from_secs(5),
            heartbeat_period: Duration::from_secs(1),
            janitor_query_timeout: Duration::from_secs(10),
            janitor_apply_timeout: Duration::from_secs(60),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            fail_first_takeover_commit: false,
        }
    }
}

/// The directory holding the store and the secrets.
#[must_use]
pub fn cluster_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster")
}

/// Whether this data dir holds an orchestrator's metadata store.
#[must_use]
pub fn has_store(data_dir: &Path) -> bool {
    cluster_dir(data_dir).join(crate::store::FILE_NAME).exists()
}

/// A request to the actor.
#[derive(Debug)]
pub(crate) enum Command {
    AddNode(AddNodeParams),
    EjectNode(String),
    CreateBucket(BucketParams),
    DeleteBucket(String),
    Rebalance {
        known: Vec<String>,
        ejected: Vec<String>,
    },
    SetClusterSettings {
        memory_quota_mb: Option<u64>,
        name: Option<String>,
    },
    SetDefaultVbuckets(u16),
    RunJanitor,
    StopRebalance,
    SetRetrySettings(crate::retry::RetrySettings),
    CancelRetry(String),
    FailOver {
        nodes: Vec<String>,
        force: bool,
        auto: bool,
    },
    SetRecoveryType {
        node: String,
        kind: String,
    },
    ReFailOver(String),
    GracefulFailover(String),
}

type Reply = oneshot::Sender<Result<Value, RestError>>;

/// What the janitor's last pass did (shown in `/pools/default`).
#[derive(Debug, Clone, Default)]
pub struct JanitorStatus {
    /// RFC 3339 time of the last pass's end.
    pub last_run: Option<String>,
    /// The last pass's first error (typed JSON), if it failed.
    pub last_error: Option<Value>,
    /// Passes completed since start.
    pub passes: u64,
}

struct Shared {
    cfg: OrchConfig,
    secrets: Secrets,
    store: Arc<dyn MetadataStore>,
    health: health::HealthBoard,
    janitor: Mutex<JanitorStatus>,
    view: watch::Sender<Option<Arc<ClusterView>>>,
    /// Config key ("" = global) -> (fingerprint, rev) of the config last published.
    revs: Mutex<std::collections::BTreeMap<String, (u64, u64)>>,
    /// Every node's config uploader.
    uploaders: uploader::Uploaders,
    /// Serialises refreshes (read the store, publish configs).
    refresh_lock: tokio::sync::Mutex<()>,
    /// The current or last rebalance, for REST.
    live: Mutex<rebalance::Live>,
    /// The last auto-failover refusal (shown in `/settings/autoFailover`).
    auto_refusal: Mutex<Option<String>>,
    /// True once the actor has closed a rebalance its predecessor left running:
    /// until then the rebalance state REST would show is not known.
    started: watch::Sender<bool>,
    /// Whether the T7 test hook fired.
    hook_fired: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("node", &self.cfg.self_name)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn config_rev(&self, key: &str) -> Option<u64> {
        self.revs.lock().ok()?.get(key).map(|(_, r)| *r)
    }
}

/// A running orchestrator. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Orchestrator {
    tx: mpsc::Sender<(Command, Reply)>,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Orchestrator {
    /// Initialises a new cluster on this node (§3.2): creates the store and the
    /// secrets, stores the cluster and this node as its first active member. The caller
    /// then makes the local agent join and calls [`Orchestrator::start`].
    ///
    /// # Errors
    /// The store already holds a cluster (`already_initialised`), or I/O.
    pub async fn init(
        cfg: &OrchConfig,
        params: &InitParams,
        me: NodeRecord,
    ) -> Result<(Arc<dyn MetadataStore>, Secrets, model::ClusterRecord), RestError> {
        let dir = cluster_dir(&cfg.data_dir);
        let store: Arc<dyn MetadataStore> = Arc::new(
            RedbStore::open(&dir)
                .await
                .map_err(|e| RestError::internal(format!("opening the metadata store: {e}")))?,
        );
        let secrets = Secrets::create(
            &dir,
            Creds {
                user: params.username.clone(),
                password: params.password.clone(),
            },
        )
        .await
        .map_err(|e| RestError::internal(format!("writing the cluster secrets: {e}")))?;
        actor::init_cluster(store.as_ref(), params, me).await?;
        let view = actor::read_view(store.as_ref()).await?;
        Ok((store, secrets, view.cluster))
    }

    /// Opens the store of an initialised orchestrator node (restart).
    ///
    /// # Errors
    /// The store or the secrets cannot be read.
    pub async fn open(cfg: &OrchConfig) -> Result<(Arc<dyn MetadataStore>, Secrets), RestError> {
        let dir = cluster_dir(&cfg.data_dir);
        let store: Arc<dyn MetadataStore> = Arc::new(
            RedbStore::open(&dir)
                .await
                .map_err(|e| RestError::internal(format!("opening the metadata store: {e}")))?,
        );
        let secrets = Secrets::load(&dir)
            .await
            .map_err(|e| RestError::internal(format!("reading the cluster secrets: {e}")))?;
        Ok((store, secrets))
    }

    /// Starts the actor, the heartbeat and the uploaders over an initialised store.
    #[must_use]
    pub fn start(cfg: OrchConfig, store: Arc<dyn MetadataStore>, secrets: Secrets) -> Orchestrator {
        let (tx, rx) = mpsc::channel(64);
        let (view_tx, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            cfg,
            secrets,
            store,
            health: health::HealthBoard::default(),
            janitor: Mutex::new(JanitorStatus::default()),
            view: view_tx,
            revs: Mutex::new(std::collections::BTreeMap::new()),
            uploaders: uploader::Uploaders::default(),
            refresh_lock: tokio::sync::Mutex::new(()),
            live: Mutex::new(rebalance::Live::default()),
            hook_fired: std::sync::atomic::AtomicBool::new(false),
            started: watch::channel(false).0,
            auto_refusal: Mutex::new(None),
        });
        let stop = CancellationToken::new();
        tokio::spawn(actor::run(shared.clone(), rx, stop.clone()));
        tokio::spawn(health::run(shared.clone(), stop.clone()));
        tokio::spawn(auto_io::run(shared.clone(), tx.clone(), stop.clone()));
        Orchestrator { tx, shared, stop }
    }

    /// Sends a command through the actor and waits for its answer, bounded.
    pub(crate) async fn call(&self, cmd: Command) -> Result<Value, RestError> {
        let (reply, rx) = oneshot::channel();
        let op = async {
            self.tx
                .send((cmd, reply))
                .await
                .map_err(|_| RestError::internal("the orchestrator has stopped"))?;
            rx.await
                .map_err(|_| RestError::internal("the orchestrator dropped the request"))?
        };
        match tokio::time::timeout(CALL_BOUND, op).await {
            Ok(r) => r,
            Err(_) => Err(RestError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "_",
                format!("the orchestrator did not answer within {CALL_BOUND:?}"),
            )),
        }
    }

    /// addNode (§3.3).
    pub async fn add_node(&self, p: AddNodeParams) -> Result<Value, RestError> {
        self.call(Command::AddNode(p)).await
    }
    /// ejectNode (§3.3); `node` is a resolved name.
    pub async fn eject_node(&self, node: String) -> Result<Value, RestError> {
        self.call(Command::EjectNode(node)).await
    }
    /// Bucket creation (§3.4); answers once stored, the janitor builds it.
    pub async fn create_bucket(&self, p: BucketParams) -> Result<Value, RestError> {
        self.call(Command::CreateBucket(p)).await
    }
    /// Bucket deletion.
    pub async fn delete_bucket(&self, name: String) -> Result<Value, RestError> {
        self.call(Command::DeleteBucket(name)).await
    }
    /// `POST /controller/rebalance` (membership only in this stage).
    pub async fn rebalance(
        &self,
        known: Vec<String>,
        ejected: Vec<String>,
    ) -> Result<Value, RestError> {
        self.call(Command::Rebalance { known, ejected }).await
    }
    /// `POST /pools/default`.
    pub async fn set_cluster_settings(
        &self,
        memory_quota_mb: Option<u64>,
        name: Option<String>,
    ) -> Result<Value, RestError> {
        self.call(Command::SetClusterSettings {
            memory_quota_mb,
            name,
        })
        .await
    }
    /// `/diag/eval` of the default vbucket count.
    pub async fn set_default_vbuckets(&self, n: u16) -> Result<Value, RestError> {
        self.call(Command::SetDefaultVbuckets(n)).await
    }
    /// `POST /controller/stopRebalance`.
    pub async fn stop_rebalance(&self) -> Result<Value, RestError> {
        self.call(Command::StopRebalance).await
    }

    /// Waits (at most 10 s) until the actor has settled the rebalance state it found
    /// at start (an orchestrator restart mid-rebalance, §5.6).
    async fn wait_started(&self) {
        let mut rx = self.shared.started.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| *s)).await;
    }

    /// `GET /pools/default/rebalanceProgress` (§3.5): running, or exactly
    /// `{"status":"none"}` (plus `errorMessage` after a failure).
    pub async fn rebalance_progress(&self) -> Value {
        self.wait_started().await;
        let Ok(live) = self.shared.live.lock() else {
            return serde_json::json!({"status": "none"});
        };
        match &live.running {
            Some(r) => {
                let mut v = serde_json::json!({"status": "running"});
                for (n, p) in r.per_node() {
                    v[n.0] = serde_json::json!({"progress": p});
                }
                v
            }
            None => match &live.last_error {
                Some(e) => {
                    serde_json::json!({"status": "none", "errorMessage": format!("Rebalance failed: {}: {}", e["kind"].as_str().unwrap_or("error"), e["message"].as_str().unwrap_or(""))})
                }
                None => serde_json::json!({"status": "none"}),
            },
        }
    }

    /// Whether a rebalance runs.
    #[must_use]
    pub fn rebalance_running(&self) -> bool {
        self.shared.live.lock().is_ok_and(|l| l.running.is_some())
    }

    /// The rebalance entry of `/pools/default/tasks`.
    pub async fn rebalance_task(&self) -> Value {
        self.wait_started().await;
        let Ok(live) = self.shared.live.lock() else {
            return serde_json::json!({"type": "rebalance", "status": "notRunning"});
        };
        match &live.running {
            Some(r) => r.task_json(),
            None => {
                let mut t = serde_json::json!({"type": "rebalance", "status": "notRunning", "statusIsStale": false});
                if let Some(id) = &live.last_report {
                    t["lastReportURI"] =
                        serde_json::json!(format!("/logs/rebalanceReport?reportID={id}"));
                }
                if let Some(e) = &live.last_error {
                    t["errorMessage"] = serde_json::json!(format!(
                        "Rebalance failed: {}: {}",
                        e["kind"].as_str().unwrap_or("error"),
                        e["message"].as_str().unwrap_or("")
                    ));
                    t["error"] = e.clone();
                }
                t
            }
        }
    }

    /// A stored rebalance report (§5.9): by id, or the newest.
    pub async fn rebalance_report(&self, id: Option<&str>) -> Option<Value> {
        rebalance::read_report(&self.shared.cfg.data_dir, id).await
    }

    /// Sets `settings/rebalance` (validated by the caller).
    ///
    /// # Errors
    /// Store failures.
    pub async fn set_rebalance_settings(&self, s: RebalanceSettings) -> Result<(), RestError> {
        actor::transact_view(self.shared.store.as_ref(), |_| {
            Ok(Some((
                vec![],
                vec![crate::store::Op::put_json(rebalance::SETTINGS_KEY, &s)
                    .map_err(|e| RestError::internal(e.to_string()))?],
            )))
        })
        .await
        .map(drop)
    }

    /// The current `settings/rebalance`.
    ///
    /// # Errors
    /// Store failures.
    pub async fn rebalance_settings(&self) -> Result<RebalanceSettings, RestError> {
        Ok(rebalance::settings_of(&*self.view().await?))
    }

    /// `POST /controller/failOver` (§8.1): `nodes` resolved names.
    pub async fn fail_over(&self, nodes: Vec<String>, force: bool) -> Result<Value, RestError> {
        self.call(Command::FailOver {
            nodes,
            force,
            auto: false,
        })
        .await
    }

    /// `GET /settings/autoFailover`.
    ///
    /// # Errors
    /// Store failures.
    pub async fn auto_failover_settings(&self) -> Result<Value, RestError> {
        let view = self.view().await?;
        Ok(auto_io::settings_json(&self.shared, &view))
    }

    /// `POST /settings/autoFailover` (validated by the caller: `None` keeps a value).
    ///
    /// # Errors
    /// Store failures.
    pub async fn set_auto_failover(
        &self,
        enabled: bool,
        timeout_s: Option<u64>,
        max_count: Option<u32>,
    ) -> Result<Value, RestError> {
        let s = auto_io::update(&self.shared, |s| {
            s.enabled = enabled;
            if let Some(t) = timeout_s {
                s.timeout_s = t;
            }
            if let Some(m) = max_count {
                s.max_count = m;
            }
        })
        .await?;
        Ok(s.to_json(None))
    }

    /// `POST /settings/autoFailover/resetCount`.
    ///
    /// # Errors
    /// Store failures.
    pub async fn reset_auto_failover_count(&self) -> Result<(), RestError> {
        auto_io::update(&self.shared, |s| s.count = 0)
            .await
            .map(drop)
    }

    /// `POST /controller/startGracefulFailover` (§8.2): runs as a rebalance-type task.
    pub async fn graceful_failover(&self, node: String) -> Result<Value, RestError> {
        self.call(Command::GracefulFailover(node)).await
    }

    /// `POST /controller/setRecoveryType` (§8.4).
    pub async fn set_recovery_type(&self, node: String, kind: String) -> Result<Value, RestError> {
        self.call(Command::SetRecoveryType { node, kind }).await
    }

    /// `POST /controller/reFailOver`.
    pub async fn re_fail_over(&self, node: String) -> Result<Value, RestError> {
        self.call(Command::ReFailOver(node)).await
    }

    /// `POST /settings/retryRebalance` (validated by the caller).
    pub async fn set_retry_settings(
        &self,
        s: crate::retry::RetrySettings,
    ) -> Result<Value, RestError> {
        self.call(Command::SetRetrySettings(s)).await
    }

    /// `POST /controller/cancelRebalanceRetry/{id}`.
    pub async fn cancel_retry(&self, id: String) -> Result<Value, RestError> {
        self.call(Command::CancelRetry(id)).await
    }

    /// `GET /settings/retryRebalance`.
    ///
    /// # Errors
    /// Store failures.
    pub async fn retry_settings(&self) -> Result<crate::retry::RetrySettings, RestError> {
        Ok(retry_io::load(&*self.view().await?).0)
    }

    /// `GET /pools/default/pendingRetryRebalance` (§5.8).
    ///
    /// # Errors
    /// Store failures.
    pub async fn pending_retry(&self) -> Result<Value, RestError> {
        let view = self.view().await?;
        let (settings, state) = retry_io::load(&view);
        Ok(state.to_json(&settings, retry_io::now_ms()))
    }

    /// Runs a janitor pass now and waits for it.
    pub async fn run_janitor(&self) -> Result<Value, RestError> {
        self.call(Command::RunJanitor).await
    }

    /// A fresh view of the store (reads never go through the actor).
    ///
    /// # Errors
    /// The store is unreadable.
    pub async fn view(&self) -> Result<Arc<ClusterView>, RestError> {
        actor::read_view(self.shared.store.as_ref())
            .await
            .map(Arc::new)
    }

    /// A bucket's client config (§7.1) as clients see it (`None`: no such bucket or no
    /// map yet), with the rev last published.
    ///
    /// # Errors
    /// The store is unreadable.
    pub async fn bucket_config(
        &self,
        bucket: &str,
        node: Option<&str>,
    ) -> Result<Option<Value>, RestError> {
        let view = self.view().await?;
        let rev = self.shared.config_rev(bucket).unwrap_or(view.rev.0);
        Ok(actor::bucket_config_at(&view, bucket, rev, node))
    }

    /// The global config (`nodeServices`).
    ///
    /// # Errors
    /// The store is unreadable.
    pub async fn global_config(&self, node: Option<&str>) -> Result<Value, RestError> {
        let view = self.view().await?;
        let rev = self.shared.config_rev("").unwrap_or(view.rev.0);
        Ok(actor::global_config_at(&view, rev, node))
    }

    /// The rev last published for a config key ("" = global).
    #[must_use]
    pub fn config_rev(&self, key: &str) -> Option<u64> {
        self.shared.config_rev(key)
    }

    /// Every server's vbucket listing of `bucket`, each bounded by `bound`.
    pub async fn bucket_listings(
        &self,
        view: &ClusterView,
        bucket: &str,
        bound: Duration,
    ) -> Vec<(String, Option<crate::agent::api::VbucketsReport>)> {
        let Some(b) = view.buckets.get(bucket) else {
            return Vec::new();
        };
        let calls = b
            .record
            .servers
            .iter()
            .filter_map(|s| view.nodes.get(s))
            .map(|n| {
                let client = uploader::client_for(
                    n.admin_addr(),
                    n.name.clone(),
                    &self.shared.secrets.internal,
                    &view.cluster.uuid,
                    view.cluster.term,
                );
                async move {
                    let r = tokio::time::timeout(bound, client.vbuckets(bucket)).await;
                    (n.name.clone(), r.ok().and_then(Result::ok))
                }
            });
        futures::future::join_all(calls).await
    }

    /// A node's health as the heartbeat sees it.
    #[must_use]
    pub fn node_health(&self, name: &str) -> NodeHealth {
        self.shared.health.get(name)
    }

    /// The janitor's last result.
    #[must_use]
    pub fn janitor_status(&self) -> JanitorStatus {
        self.shared
            .janitor
            .lock()
            .map(|j| j.clone())
            .unwrap_or_default()
    }

    /// The cluster admin and internal credentials.
    #[must_use]
    pub fn secrets(&self) -> &Secrets {
        &self.shared.secrets
    }

    /// This node's name.
    #[must_use]
    pub fn self_name(&self) -> &str {
        &self.shared.cfg.self_name
    }

    /// Stops every task (the store stays as it is).
    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}
