//! Node settings: command-line flags and the optional JSON config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where buckets and `ports.json` live.
    pub data_dir: PathBuf,
    /// KV (MCBP) listen address; port 0 picks a free port.
    pub kv_listen: SocketAddr,
    /// Admin HTTP listen address; port 0 picks a free port.
    pub admin_listen: SocketAddr,
    /// The admin user (every privilege).
    pub admin_user: String,
    /// The admin password.
    pub admin_password: String,
    /// Bucket users: (name, password, bucket).
    pub bucket_users: Vec<BucketUserConfig>,
    /// Lets unauthenticated connections use this one bucket with key-value rights.
    pub anonymous_bucket: Option<String>,
    /// Enables the `/faults` admin routes (tests only).
    pub enable_fault_injection: bool,
    /// Idle timeout of non-DCP connections.
    pub idle_timeout: Duration,
    /// Most concurrent connections; more are closed at accept.
    pub max_connections: usize,
    /// Most unsent output a KV connection may hold: while it holds more, the node
    /// reads no further requests from it (a client that sends but never reads).
    pub max_conn_output: usize,
    /// Group-commit interval.
    pub flush_interval: Duration,
    /// How often the expiry pager runs.
    pub expiry_pager_interval: Duration,
    /// Tombstones older than this are purged.
    pub tombstone_purge_age: Duration,
    /// How long SEQNO_PERSISTENCE waits before answering ETMPFAIL.
    pub seqno_persistence_timeout: Duration,
    /// DCP settings.
    pub dcp: DcpConfig,
    /// Seed for vb_uuid randomness (tests); `None` seeds from the OS.
    pub rng_seed: Option<u64>,
    /// Tests only: run by every bucket on the committing thread right before each
    /// commit (see [`kv_engine::CommitHook`]).
    pub commit_hook: Option<kv_engine::CommitHook>,
    /// Extra admin routes the node serves on its admin port (the cluster layer's,
    /// `cluster.md` N7).
    pub admin_extension: Option<AdminExtension>,
    /// Reopen vbuckets in the states they had (default). When false every vbucket
    /// of every bucket reopens `dead`, data kept: the fenced start of a cluster
    /// member, which serves nothing until the cluster layer applies its map
    /// (`cluster.md` N6).
    pub restore_vbucket_states: bool,
}

/// Routes another layer adds to the node's admin port (N7). They are reached only
/// when no route of the node's own matches, and only with admin credentials —
/// except the `(method, path)` pairs listed as public.
#[derive(Clone)]
pub struct AdminExtension {
    /// The routes, with their own state applied.
    pub router: axum::Router,
    /// Routes served without authentication (e.g. `GET /pools`).
    pub public: Vec<(axum::http::Method, String)>,
}

impl std::fmt::Debug for AdminExtension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminExtension")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// DCP settings of a node.
#[derive(Clone, Debug)]
pub struct DcpConfig {
    /// Noop interval the consumer asks for.
    pub noop_interval: Duration,
    /// Disconnect a DCP peer silent for this long (once noop is enabled).
    pub idle_timeout: Duration,
    /// Flow-control window the consumer advertises (bytes; 0 = off).
    pub consumer_buffer_size: u32,
    /// Items read per backfill batch.
    pub backfill_batch: usize,
    /// `dcp_takeover_max_time` (§7.9 step 5): a takeover stream still sending after
    /// this long makes front-end writes to its vbucket get ETMPFAIL until it is done.
    pub takeover_max_time: Duration,
}

impl Default for DcpConfig {
    fn default() -> Self {
        DcpConfig {
            noop_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(360),
            consumer_buffer_size: 10 * 1024 * 1024,
            backfill_batch: 1024,
            takeover_max_time: Duration::from_secs(60),
        }
    }
}

/// One bucket user.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct BucketUserConfig {
    /// User name.
    pub name: String,
    /// Password.
    pub password: String,
    /// The one bucket it may use.
    pub bucket: String,
}

impl NodeConfig {
    /// Defaults for a node with this data directory and admin user; ports 11210/8091.
    #[must_use]
    pub fn new(data_dir: impl Into<PathBuf>, admin_user: &str, admin_password: &str) -> NodeConfig {
        NodeConfig {
            data_dir: data_dir.into(),
            kv_listen: SocketAddr::from(([0, 0, 0, 0], 11210)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 8091)),
            admin_user: admin_user.to_string(),
            admin_password: admin_password.to_string(),
            bucket_users: Vec::new(),
            anonymous_bucket: None,
            enable_fault_injection: false,
            idle_timeout: Duration::from_secs(300),
            max_connections: 4096,
            max_conn_output: 4 * 1024 * 1024,
            flush_interval: Duration::from_millis(20),
            expiry_pager_interval: Duration::from_secs(10),
            tombstone_purge_age: Duration::from_secs(3 * 24 * 3600),
            seqno_persistence_timeout: Duration::from_secs(30),
            restore_vbucket_states: true,
            admin_extension: None,
            dcp: DcpConfig::default(),
            rng_seed: None,
            commit_hook: None,
        }
    }

    /// Ephemeral loopback ports, short intervals: for tests and in-process clusters.
    #[must_use]
    pub fn ephemeral(
        data_dir: impl Into<PathBuf>,
        admin_user: &str,
        admin_password: &str,
    ) -> NodeConfig {
        let mut c = NodeConfig::new(data_dir, admin_user, admin_password);
        c.kv_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c.flush_interval = Duration::from_millis(5);
        c.expiry_pager_interval = Duration::from_millis(200);
        c
    }

    /// Adds what a JSON config file says (`{"users":[{"name","password","bucket"}],
    /// "anonymous_bucket": "...", "idle_timeout_secs": N, "max_connections": N,
    /// "flush_interval_ms": N, "max_conn_output_bytes": N}`).
    ///
    /// # Errors
    /// The file cannot be read or parsed.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let f: FileConfig = serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        self.bucket_users.extend(f.users);
        if f.anonymous_bucket.is_some() {
            self.anonymous_bucket = f.anonymous_bucket;
        }
        if let Some(s) = f.idle_timeout_secs {
            self.idle_timeout = Duration::from_secs(s);
        }
        if let Some(n) = f.max_connections {
            self.max_connections = n;
        }
        if let Some(ms) = f.flush_interval_ms {
            self.flush_interval = Duration::from_millis(ms);
        }
        if let Some(n) = f.max_conn_output_bytes {
            self.max_conn_output = n;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    users: Vec<BucketUserConfig>,
    anonymous_bucket: Option<String>,
    idle_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    flush_interval_ms: Option<u64>,
    max_conn_output_bytes: Option<usize>,
}

/// The config file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Could not read it.
    #[error("config file {path}: cannot read")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not the expected JSON.
    #[error("config file {path}: invalid")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}
