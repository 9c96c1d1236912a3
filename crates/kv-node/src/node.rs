//! The node shell: binds the listeners, starts the KV accept loop, the admin API
//! and the background tasks (group commit, expiry pager, tombstone purger), and
//! shuts them down gracefully. The shared state lives in the `state` module below
//! every connection handler; its types are re-exported here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::config::NodeConfig;
pub use crate::state::{now, BucketEntry, BucketMeta, NodeCounters, NodeError, NodeState};

/// A running node.
#[derive(Debug)]
pub struct Node {
    state: Arc<NodeState>,
    kv_addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Node {
    /// Binds both listeners as configured and starts the node.
    ///
    /// # Errors
    /// Binding, the data directory, or reopening buckets failed.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let kv = TcpListener::bind(config.kv_listen)
            .await
            .map_err(|source| NodeError::Io {
                what: "binding the KV port",
                source,
            })?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|source| NodeError::Io {
                what: "binding the admin port",
                source,
            })?;
        Node::start_with_listeners(config, kv, admin).await
    }

    /// Starts a node on listeners the caller bound (tests bind `127.0.0.1:0`).
    ///
    /// # Errors
    /// The data directory or reopening buckets failed.
    pub async fn start_with_listeners(
        config: NodeConfig,
        kv: TcpListener,
        admin: TcpListener,
    ) -> Result<Node, NodeError> {
        let io = |what| move |source| NodeError::Io { what, source };
        std::fs::create_dir_all(config.data_dir.join("buckets"))
            .map_err(io("creating the data directory"))?;
        if let Some(b) = &config.anonymous_bucket {
            warn!(bucket = %b, "anonymous access enabled: unauthenticated connections may read and write this bucket");
        }
        let kv_addr = kv.local_addr().map_err(io("reading the KV address"))?;
        let admin_addr = admin
            .local_addr()
            .map_err(io("reading the admin address"))?;
        let state = Arc::new(NodeState::new(config));
        *state
            .kv_addr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(kv_addr);
        *state
            .admin_addr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(admin_addr);
        let state2 = state.clone();
        // Reopening buckets reads every item: blocking work.
        tokio::task::spawn_blocking(move || {
            state2.load_users()?;
            state2.load_buckets()
        })
        .await
        .map_err(|e| NodeError::Io {
            what: "loading buckets",
            source: std::io::Error::other(e.to_string()),
        })??;
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(crate::session::accept_loop(
            state.clone(),
            kv,
            shutdown.clone(),
            tasks.clone(),
        ));
        tasks.spawn(crate::admin::serve(state.clone(), admin, shutdown.clone()));
        tasks.spawn(flusher(state.clone(), shutdown.clone()));
        tasks.spawn(pager(state.clone(), shutdown.clone()));
        let ports = serde_json::json!({"kv": kv_addr.port(), "admin": admin_addr.port()});
        std::fs::write(state.config.data_dir.join("ports.json"), ports.to_string())
            .map_err(io("writing ports.json"))?;
        info!(kv = %kv_addr, admin = %admin_addr, data_dir = %state.config.data_dir.display(), "node listening");
        Ok(Node {
            state,
            kv_addr,
            admin_addr,
            shutdown,
            tasks,
        })
    }

    /// The bound KV address.
    #[must_use]
    pub fn kv_addr(&self) -> SocketAddr {
        self.kv_addr
    }

    /// The bound admin address.
    #[must_use]
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The shared state (tests inspect buckets through it).
    #[must_use]
    pub fn state(&self) -> &Arc<NodeState> {
        &self.state
    }

    /// A token cancelled when the node shuts down.
    #[must_use]
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Graceful shutdown: stop accepting, let sessions finish the request in hand
    /// (bounded), flush and close every bucket cleanly.
    pub async fn shutdown(self) {
        info!("node shutting down");
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), self.tasks.wait())
            .await
            .is_err()
        {
            warn!("some connections did not finish within 10 s; closing anyway");
        }
        let state = self.state;
        let _ = tokio::task::spawn_blocking(move || {
            for e in state.take_buckets() {
                let name = e.meta.name.clone();
                match Arc::try_unwrap(e) {
                    Ok(entry) => {
                        if let Err(err) = entry.bucket.close() {
                            error!(bucket = %name, error = %err, "clean close failed");
                        }
                    }
                    Err(e) => {
                        // Still referenced (a task outlived the bound): flush at least.
                        if let Err(err) = e.bucket.flush() {
                            error!(bucket = %name, error = %err, "final flush failed");
                        }
                    }
                }
            }
        })
        .await;
        info!("node stopped");
    }

    /// Stops without flushing or closing buckets: what a crash leaves behind, for
    /// restart tests. Data already flushed stays; the rest is lost.
    pub async fn kill(self) {
        self.shutdown.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.tasks.wait()).await;
        drop(self.state.take_buckets());
    }
}

/// Group commit on an interval.
async fn flusher(state: Arc<NodeState>, shutdown: CancellationToken) {
    // The first tick comes one period after start (a plain `interval` fires at once).
    let period = state.config.flush_interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for entry in state.buckets() {
            // Bounded commits, back to back while a backlog lasts: each one advances
            // the persisted seqnos of the vbuckets it wrote and wakes their waiters.
            loop {
                let e = entry.clone();
                let more = match tokio::task::spawn_blocking(move || e.bucket.flush_step()).await {
                    Ok(Ok(stats)) => {
                        if stats.vbuckets > 0 {
                            entry.persisted.notify_waiters();
                        }
                        stats.more
                    }
                    Ok(Err(err)) => {
                        error!(bucket = %entry.meta.name, error = %err, "flush failed; will retry");
                        false
                    }
                    Err(err) => {
                        error!(bucket = %entry.meta.name, error = %err, "flush task failed");
                        false
                    }
                };
                if !more || shutdown.is_cancelled() {
                    break;
                }
            }
        }
    }
}

/// Expiry pager and tombstone purger.
async fn pager(state: Arc<NodeState>, shutdown: CancellationToken) {
    let period = state.config.expiry_pager_interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let purge_age = u32::try_from(state.config.tombstone_purge_age.as_secs()).unwrap_or(u32::MAX);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Index walks under the vbucket locks: kept off the async worker threads.
        let st = Arc::clone(&state);
        let pass = tokio::task::spawn_blocking(move || {
            for entry in st.buckets() {
                let t = now();
                let expired = entry.bucket.expire_items(t);
                if !expired.is_empty() {
                    debug!(bucket = %entry.meta.name, count = expired.len(), "expiry pager removed items");
                    entry.notify_change();
                }
                let purged = entry.bucket.purge_tombstones(purge_age, t);
                if purged > 0 {
                    debug!(bucket = %entry.meta.name, purged, "tombstones purged");
                }
            }
        });
        if let Err(err) = pass.await {
            error!(error = %err, "expiry pager pass failed");
        }
    }
}
