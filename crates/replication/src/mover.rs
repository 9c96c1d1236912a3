//! One vbucket move from a source node to a destination node (issue #5 item 5,
//! `replication-layer.md` §9.2 reduced to a single copy):
//!
//! 0. `preflight`: read the vbucket's state on both nodes (`vbucket <vb>` stat). If
//!    the source is dead and the destination active, the move already happened (a
//!    rerun after a success, or after a failure past the takeover): nothing is
//!    touched and the move reports `already_done`. If the source is not active, the
//!    move fails here without touching the destination. Nodes that do not answer the
//!    stat are moved by the steps below;
//! 1. `set_replica`: SET_VBUCKET(replica) on the destination;
//! 2. `replicate`: a [`Replicator`] (consumer = destination, producer = source)
//!    adds the stream;
//! 3. `data_move`: wait for the source's `dcp-vbtakeover` estimate (§7.7);
//! 4. `persistence`: read the source's high seqno (`vbucket-seqno <vb>`), then poll
//!    SEQNO_PERSISTENCE (0xb7) on the destination until it is persisted;
//! 5. `takeover`: the replicator's takeover (§7.3);
//! 6. `finalize`: SET_VBUCKET(active) on the destination, (dead) on the source.
//!
//! Every step is bounded by the move's timeout (each step gets the whole budget that
//! is left); the replicator is shut at the end and aborted on failure, so a rerun
//! starts clean (its DCP_OPEN replaces any leftover connection, §4.4). The error
//! names the failed step ([`ReplError::Move`]).

use std::time::Duration;

use kv_client::{Client, ClientConfig, Credentials};
use mcbp::{Seqno, Status, VbState, Vbid};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::core::{takeover_connection_name, CoreConfig, Side};
use crate::error::{MoveStep, ReplError, WaitFor};
use crate::replicator::{
    wait_for_data_move, DataMoveWait, Replicator, ReplicatorConfig, DATA_MOVE_POLL_INTERVAL,
    DEFAULT_DONE_LIMIT,
};

/// A vbucket move.
#[derive(Clone, Debug)]
pub struct MoveConfig {
    /// The bucket.
    pub bucket: String,
    /// The vbucket.
    pub vb: Vbid,
    /// The source (current active) node's KV address.
    pub source: String,
    /// The destination node's KV address.
    pub destination: String,
    /// Credentials for both nodes.
    pub credentials: Credentials,
    /// Bound on each step.
    pub timeout: Duration,
    /// Data-move done limit (default 1000).
    pub done_limit: u64,
    /// Node names used in the connection name (default: the addresses).
    pub source_node: String,
    /// See `source_node`.
    pub destination_node: String,
}

impl MoveConfig {
    /// A move with a 60 s step bound, done limit 1000, node names = addresses.
    #[must_use]
    pub fn new(
        bucket: impl Into<String>,
        vb: Vbid,
        source: impl Into<String>,
        destination: impl Into<String>,
        credentials: Credentials,
    ) -> MoveConfig {
        let source = source.into();
        let destination = destination.into();
        MoveConfig {
            bucket: bucket.into(),
            vb,
            source_node: source.clone(),
            destination_node: destination.clone(),
            source,
            destination,
            credentials,
            timeout: Duration::from_secs(60),
            done_limit: DEFAULT_DONE_LIMIT,
        }
    }
}

/// What a successful move did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveReport {
    /// The vbucket.
    pub vb: Vbid,
    /// The source's high seqno the destination persisted before the takeover.
    pub persisted_seqno: Seqno,
    /// The DCP connection name used.
    pub connection_name: String,
    /// How long the move took.
    pub elapsed: Duration,
    /// The vbucket was already active on the destination and dead on the source;
    /// nothing was done.
    pub already_done: bool,
}

/// Moves one vbucket; see the module docs for the steps.
///
/// # Errors
/// [`ReplError::Move`] naming the failed step, wrapping the step's error.
pub async fn move_vbucket(cfg: &MoveConfig) -> Result<MoveReport, ReplError> {
    let t0 = Instant::now();
    let vb = cfg.vb;
    let step_err = |step: MoveStep| {
        move |e: ReplError| ReplError::Move {
            vb,
            step,
            source: Box::new(e),
        }
    };
    info!(vb = %vb, source = %cfg.source, destination = %cfg.destination, "moving vbucket");

    let source_state = vb_state(cfg, Side::Producer)
        .await
        .map_err(step_err(MoveStep::Preflight))?;
    let destination_state = vb_state(cfg, Side::Consumer)
        .await
        .map_err(step_err(MoveStep::Preflight))?;
    match (source_state, destination_state) {
        (Some(VbState::Dead), Some(VbState::Active)) => {
            info!(vb = %vb, "already active on the destination and dead on the source");
            return Ok(MoveReport {
                vb,
                persisted_seqno: Seqno(0),
                connection_name: String::new(),
                elapsed: t0.elapsed(),
                already_done: true,
            });
        }
        (Some(s), _) if s != VbState::Active => {
            return Err(step_err(MoveStep::Preflight)(ReplError::VbucketState {
                vb,
                peer: cfg.source.clone(),
                state: s,
                expected: "active",
            }));
        }
        _ => {}
    }

    set_state(cfg, Side::Consumer, VbState::Replica)
        .await
        .map_err(step_err(MoveStep::SetReplica))?;

    let mut rcfg = ReplicatorConfig::new(
        cfg.destination.clone(),
        cfg.source.clone(),
        cfg.bucket.clone(),
        cfg.credentials.clone(),
    );
    rcfg.consumer_node.clone_from(&cfg.destination_node);
    rcfg.producer_node.clone_from(&cfg.source_node);
    // Never the regular `replication:P->C:B` name: the node would disconnect a
    // running replication of the same pair, and another move, on our DCP_OPEN.
    rcfg.name = Some(takeover_connection_name(
        &takeover_uuid(),
        &cfg.source_node,
        &cfg.destination_node,
        &cfg.bucket,
        vb,
    ));
    rcfg.connect_timeout = cfg.timeout;
    rcfg.shut_timeout = cfg.timeout.min(Duration::from_secs(30));
    rcfg.core = CoreConfig {
        setup_timeout: cfg.timeout,
        close_timeout: cfg.timeout,
        takeover_timeout: cfg.timeout,
        shut_timeout: rcfg.shut_timeout,
    };
    let r = Replicator::start(rcfg)
        .await
        .map_err(step_err(MoveStep::Replicate))?;
    let result = run_with(cfg, &r).await;
    match &result {
        Ok(_) => {
            if let Err(e) = r.shut().await {
                debug!(error = %e, "shut after the move");
            }
        }
        Err(e) => {
            warn!(vb = %vb, error = %e, "move failed");
            r.abort();
            let _ = tokio::time::timeout(Duration::from_secs(5), r.closed()).await;
        }
    }
    let persisted_seqno = result?;
    Ok(MoveReport {
        vb,
        persisted_seqno,
        connection_name: r.connection_name().to_string(),
        elapsed: t0.elapsed(),
        already_done: false,
    })
}

/// A fresh 32-hex-digit uuid for a takeover connection name (§4.3): process-wide
/// unique through a counter, and random across processes through std's randomly
/// keyed hasher (mixed with the time and pid).
fn takeover_uuid() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let half = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u64(n);
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.finish()
    };
    format!("{:016x}{:016x}", half(1), half(2))
}

/// The vbucket's state on one node from its `vbucket <vb>` stat; `None` when the node
/// does not answer that stat.
async fn vb_state(cfg: &MoveConfig, side: Side) -> Result<Option<VbState>, ReplError> {
    let mut c = connect(cfg, side, cfg.timeout).await?;
    let key = format!("vb_{}", cfg.vb.0);
    match c.stats(&format!("vbucket {}", cfg.vb.0)).await {
        Ok(pairs) => Ok(pairs
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| VbState::parse(v))),
        Err(e) if e.status().is_some() => {
            debug!(vb = %cfg.vb, %side, error = %e, "no vbucket stat; moving without preflight");
            Ok(None)
        }
        Err(e) => Err(ReplError::node(side, "stats", Some(cfg.vb), e)),
    }
}

async fn run_with(cfg: &MoveConfig, r: &Replicator) -> Result<Seqno, ReplError> {
    let vb = cfg.vb;
    let step_err = |step: MoveStep| {
        move |e: ReplError| ReplError::Move {
            vb,
            step,
            source: Box::new(e),
        }
    };
    // A replicator death aborts every wait (MB-14305, MB-21511).
    let guarded = |step: MoveStep, fut| guard(r, step, vb, fut);

    guarded(MoveStep::Replicate, Box::pin(r.setup_replication([vb])))
        .await
        .map_err(step_err(MoveStep::Replicate))?;

    let wait = DataMoveWait {
        producer_addr: cfg.source.clone(),
        bucket: cfg.bucket.clone(),
        credentials: cfg.credentials.clone(),
        targets: vec![(vb, r.connection_name().to_string())],
        done_limit: cfg.done_limit,
        timeout: cfg.timeout,
        poll_interval: DATA_MOVE_POLL_INTERVAL,
    };
    guarded(MoveStep::DataMove, Box::pin(wait_for_data_move(&wait)))
        .await
        .map_err(step_err(MoveStep::DataMove))?;

    let seqno = guarded_value(r, MoveStep::Persistence, vb, Box::pin(wait_persisted(cfg)))
        .await
        .map_err(step_err(MoveStep::Persistence))?;

    guarded(MoveStep::Takeover, Box::pin(r.takeover(vb)))
        .await
        .map_err(step_err(MoveStep::Takeover))?;

    set_state(cfg, Side::Consumer, VbState::Active)
        .await
        .map_err(step_err(MoveStep::Finalize))?;
    set_state(cfg, Side::Producer, VbState::Dead)
        .await
        .map_err(step_err(MoveStep::Finalize))?;
    info!(vb = %vb, seqno = seqno.0, "vbucket moved");
    Ok(seqno)
}

type BoxFut<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, ReplError>> + Send + 'a>>;

async fn guard(
    r: &Replicator,
    step: MoveStep,
    vb: Vbid,
    fut: BoxFut<'_, ()>,
) -> Result<(), ReplError> {
    guarded_value(r, step, vb, fut).await
}

/// Runs `fut` unless the replicator ends first (then its termination reason is the
/// step's error).
async fn guarded_value<T>(
    r: &Replicator,
    step: MoveStep,
    vb: Vbid,
    fut: BoxFut<'_, T>,
) -> Result<T, ReplError> {
    tokio::select! {
        res = fut => res,
        end = r.closed() => {
            debug!(vb = %vb, %step, "replicator ended during the step");
            Err(end.err().unwrap_or(ReplError::Interrupted))
        }
    }
}

async fn connect(cfg: &MoveConfig, side: Side, timeout: Duration) -> Result<Client, ReplError> {
    let addr = match side {
        Side::Consumer => &cfg.destination,
        Side::Producer => &cfg.source,
    };
    let client_cfg = ClientConfig {
        timeout,
        ..ClientConfig::default()
    };
    let mut c = Client::connect(addr, client_cfg)
        .await
        .map_err(|e| ReplError::node(side, "connect", None, e))?;
    c.auth_plain(&cfg.credentials)
        .await
        .map_err(|e| ReplError::node(side, "sasl", None, e))?;
    c.select_bucket(&cfg.bucket)
        .await
        .map_err(|e| ReplError::node(side, "select_bucket", None, e))?;
    Ok(c)
}

async fn set_state(cfg: &MoveConfig, side: Side, state: VbState) -> Result<(), ReplError> {
    let mut c = connect(cfg, side, cfg.timeout).await?;
    debug!(vb = %cfg.vb, %side, state = %state, "set vbucket state");
    c.set_vbucket(cfg.vb, state)
        .await
        .map_err(|e| ReplError::node(side, "set_vbucket", Some(cfg.vb), e))
}

/// §9.2 step 7: the source's high seqno, persisted on the destination.
async fn wait_persisted(cfg: &MoveConfig) -> Result<Seqno, ReplError> {
    let vb = cfg.vb;
    let deadline = Instant::now() + cfg.timeout;
    let timeout_err = || ReplError::Timeout {
        waiting_for: WaitFor::SeqnoPersistence,
        vbuckets: vec![vb],
        peer: Some(cfg.destination.clone()),
    };
    let mut src = connect(cfg, Side::Producer, cfg.timeout).await?;
    let stats = src
        .stats(&format!("vbucket-seqno {}", vb.0))
        .await
        .map_err(|e| ReplError::node(Side::Producer, "vbucket-seqno", Some(vb), e))?;
    let key = format!("vb_{}:high_seqno", vb.0);
    let seqno = stats
        .iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        .map(Seqno)
        .ok_or_else(|| ReplError::UnexpectedStatus {
            vb,
            status: format!("no {key} stat"),
            peer: src.peer().to_string(),
            connection: String::new(),
        })?;
    drop(src);
    let mut dst = connect(cfg, Side::Consumer, cfg.timeout).await?;
    loop {
        let call = dst.seqno_persistence(vb, seqno);
        match tokio::time::timeout_at(deadline, call).await {
            Err(_) => return Err(timeout_err()),
            Ok(Ok(true)) => return Ok(seqno),
            Ok(Ok(false)) => {}
            Ok(Err(e)) if e.is_timeout() => return Err(timeout_err()),
            Ok(Err(e)) if e.status() == Some(Status::Etmpfail) => {}
            Ok(Err(e)) => {
                return Err(ReplError::node(
                    Side::Consumer,
                    "seqno_persistence",
                    Some(vb),
                    e,
                ))
            }
        }
        if tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(50)))
            .await
            .is_err()
        {
            return Err(timeout_err());
        }
    }
}
