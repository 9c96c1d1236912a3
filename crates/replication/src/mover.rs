//! One vbucket move from a source node to a destination node (issue #5 item 5,
//! `replication-layer.md` §9.2 reduced to a single copy), repairable by running it
//! again (issue #8 item 1):
//!
//! 0. `preflight`: read the vbucket's state, high seqno and failover log on both
//!    nodes and converge leftovers of an earlier failed move (see *Repair*). If the
//!    destination is active and holds every write of the source, the move is
//!    `already_done`. Nodes that do not answer the `vbucket` stat are moved by the
//!    steps below without a repair (a source that is not active then fails here);
//! 1. `set_replica`: SET_VBUCKET(replica) on the destination;
//! 2. `replicate`: a [`Replicator`] (consumer = destination, producer = source)
//!    adds the stream, on a takeover connection name of its own (§4.3:
//!    `replication:takeover:<uuid>:<source>-><destination>:<bucket>:<vb>`), so a
//!    regular replication of the same node pair and other moves keep theirs;
//! 3. `data_move`: wait for the source's `dcp-vbtakeover` estimate (§7.7);
//! 4. `persistence`: read the source's high seqno (`vbucket-seqno <vb>`), then poll
//!    SEQNO_PERSISTENCE (0xb7) on the destination until it is persisted;
//! 5. `takeover`: the replicator's takeover (§7.3);
//! 6. `finalize`: SET_VBUCKET(active) on the destination, (dead) on the source.
//!
//! *Repair.* Once the producer has had its SET_VBUCKET_STATE(pending) acknowledged
//! it is dead; until the destination is active no copy takes writes. So when the
//! takeover or the finalize step fails, the replicator is aborted, the move waits
//! until its DCP connection is gone on both nodes (nothing still buffered on it can
//! change a state afterwards), and converges: it finishes the move when the
//! destination is active with every write, else makes the source active again (it
//! stopped taking writes when it went dead, so it holds every acknowledged one) and
//! reports the takeover's error. The preflight converges the same way from any
//! leftover. Which copy to keep is decided by history, not by state: the copy whose
//! failover log and high seqno contain the other's writes; the other is demoted
//! first, then the keeper activated, re-reading both after every change, so a write
//! racing a demotion is seen. When each copy holds writes the other lacks, the move
//! refuses ([`ReplError::Diverged`]) and changes nothing.
//!
//! Every step is bounded by the move's timeout (each step gets the whole budget that
//! is left); the replicator is shut at the end and aborted on failure. The error
//! names the failed step ([`ReplError::Move`]).

use std::time::Duration;

use kv_client::{Client, ClientConfig, Credentials};
use mcbp::dcp::FailoverEntry;
use mcbp::{BareRequest, Opcode, Seqno, Status, VbState, VbUuid, Vbid};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::core::{takeover_connection_name, CoreConfig, Side};
use crate::error::{MoveStep, ProtocolCause, ReplError, WaitFor};
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
    /// The source's high seqno the destination persisted before the takeover (0
    /// when no takeover ran).
    pub persisted_seqno: Seqno,
    /// The DCP connection name used (empty when no takeover ran).
    pub connection_name: String,
    /// How long the move took.
    pub elapsed: Duration,
    /// The destination already held every write of the vbucket: no takeover ran,
    /// at most the [`Self::repairs`] below (for example: it was already active there
    /// and dead on the source).
    pub already_done: bool,
    /// Vbucket state changes made to bring the leftovers of an earlier failed move
    /// (or a failed takeover of this one) to a state the move finishes or runs from,
    /// in order.
    pub repairs: Vec<Repair>,
}

/// One vbucket state change a repair made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repair {
    /// [`Side::Producer`] for the source node, [`Side::Consumer`] for the
    /// destination.
    pub side: Side,
    /// The state set.
    pub state: VbState,
}

/// Moves one vbucket; see the module docs for the steps.
///
/// # Errors
/// [`ReplError::Move`] naming the failed step, wrapping the step's error.
pub async fn move_vbucket(cfg: &MoveConfig) -> Result<MoveReport, ReplError> {
    let t0 = Instant::now();
    let vb = cfg.vb;
    info!(vb = %vb, source = %cfg.source, destination = %cfg.destination, "moving vbucket");
    let mut repairs = Vec::new();
    let report = |persisted_seqno, connection_name, already_done, repairs| MoveReport {
        vb,
        persisted_seqno,
        connection_name,
        elapsed: t0.elapsed(),
        already_done,
        repairs,
    };

    match converge(cfg, Mode::Preflight, &mut repairs)
        .await
        .map_err(step_err(vb, MoveStep::Preflight))?
    {
        Settled::Done => {
            info!(vb = %vb, ?repairs, "the destination already holds the vbucket");
            return Ok(report(Seqno(0), String::new(), true, repairs));
        }
        Settled::Run => {}
    }

    set_state(cfg, Side::Consumer, VbState::Replica)
        .await
        .map_err(step_err(vb, MoveStep::SetReplica))?;

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
        .map_err(step_err(vb, MoveStep::Replicate))?;
    let name = r.connection_name().to_string();
    let mut persisted = None;
    let result = run_with(cfg, &r, &mut persisted).await;
    let err = match result {
        Ok(seqno) => {
            match tokio::time::timeout(cfg.timeout, r.shut()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(vb = %vb, error = %e, "shut after the move"),
                Err(_) => debug!(vb = %vb, "shut after the move timed out"),
            }
            return Ok(report(seqno, name, false, repairs));
        }
        Err(e) => e,
    };
    warn!(vb = %vb, error = %err, "move failed");
    r.abort();
    let _ = tokio::time::timeout(cfg.timeout, r.closed()).await;
    drop(r);
    // Before the takeover's SET_VBUCKET_STATE(pending) was acknowledged the source
    // is still active; from then on it may be dead with the destination pending
    // (no active copy at all), or the destination may already be active.
    if !matches!(
        &err,
        ReplError::Move {
            step: MoveStep::Takeover | MoveStep::Finalize,
            ..
        }
    ) {
        return Err(err);
    }
    match settle(cfg, &name, &mut repairs).await {
        Ok(Settled::Done) => {
            info!(vb = %vb, ?repairs, "the takeover had completed on the nodes: move done");
            Ok(report(persisted.unwrap_or(Seqno(0)), name, false, repairs))
        }
        Ok(Settled::Run) => {
            info!(vb = %vb, ?repairs, "the source is active again");
            Err(err)
        }
        Err(repair_err) => {
            warn!(vb = %vb, error = %err, repair_error = %repair_err, "move failed; its repair failed too");
            Err(step_err(vb, MoveStep::Repair)(repair_err))
        }
    }
}

fn step_err(vb: Vbid, step: MoveStep) -> impl Fn(ReplError) -> ReplError {
    move |e: ReplError| ReplError::Move {
        vb,
        step,
        source: Box::new(e),
    }
}

/// After a failed takeover: wait until the move's DCP connection is gone on both
/// nodes (nothing buffered on it can change a vbucket state any more), then
/// converge. Bounded by the move's timeout.
async fn settle(
    cfg: &MoveConfig,
    name: &str,
    repairs: &mut Vec<Repair>,
) -> Result<Settled, ReplError> {
    let deadline = Instant::now() + cfg.timeout;
    for side in [Side::Consumer, Side::Producer] {
        bounded(cfg, side, deadline, connection_gone(cfg, side, name)).await?;
    }
    converge(cfg, Mode::Settle, repairs).await
}

/// Polls the node's `dcp` stat group until no connection is named `name`. A node
/// without that group (it answers with a status) has nothing to wait for.
async fn connection_gone(cfg: &MoveConfig, side: Side, name: &str) -> Result<(), ReplError> {
    let mut c = connect(cfg, side, cfg.timeout).await?;
    let prefix = format!("eq_dcpq:{name}:");
    loop {
        match c.stats("dcp").await {
            Ok(pairs) if !pairs.iter().any(|(k, _)| k.starts_with(&prefix)) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.status().is_some() => return Ok(()),
            Err(e) => return Err(ReplError::node(side, "stats dcp", Some(cfg.vb), e)),
        }
        tokio::time::sleep(REPAIR_POLL_INTERVAL).await;
    }
}

/// Poll interval of the repair's waits.
const REPAIR_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Bound on the state changes of one repair (each one moves towards a fixed point;
/// only writes racing a demotion can add a step).
const MAX_REPAIR_STEPS: usize = 8;

/// What [`converge`] is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Before a move: bring leftovers to a state the move runs from.
    Preflight,
    /// After a failed takeover: finish the move, or make the source active again.
    Settle,
}

/// Where [`converge`] left the vbucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settled {
    /// Active on the destination, dead on the source; the destination holds
    /// every write the source had.
    Done,
    /// Active on the source, not active on the destination: the move runs from
    /// here (preflight), or the failed move ends here (settle).
    Run,
}

/// Reads both copies, decides, applies one state change, reads again, until the
/// vbucket is [`Settled`] or the decision is to refuse. Bounded by the move's
/// timeout.
async fn converge(
    cfg: &MoveConfig,
    mode: Mode,
    repairs: &mut Vec<Repair>,
) -> Result<Settled, ReplError> {
    let deadline = Instant::now() + cfg.timeout;
    for _ in 0..=MAX_REPAIR_STEPS {
        let src = bounded(cfg, Side::Producer, deadline, observe(cfg, Side::Producer)).await?;
        let dst = bounded(cfg, Side::Consumer, deadline, observe(cfg, Side::Consumer)).await?;
        let next = plan(cfg, &src, &dst);
        debug!(vb = %cfg.vb, ?mode, ?src, ?dst, ?next, "repair decision");
        match next {
            Next::Settled(s) => return Ok(s),
            Next::Refuse(e) => return Err(e),
            Next::Set(side, state) => {
                info!(vb = %cfg.vb, %side, %state, ?mode, "repair: set vbucket state");
                bounded(cfg, side, deadline, set_state(cfg, side, state)).await?;
                repairs.push(Repair { side, state });
            }
        }
    }
    // Only writes racing every demotion could get here; the source is the copy
    // that kept changing.
    Err(repair_timeout(cfg, Side::Producer))
}

/// Runs one repair call on `side`'s node, bounded by `deadline`.
async fn bounded<T>(
    cfg: &MoveConfig,
    side: Side,
    deadline: Instant,
    fut: impl std::future::Future<Output = Result<T, ReplError>>,
) -> Result<T, ReplError> {
    tokio::time::timeout_at(deadline, fut)
        .await
        .unwrap_or_else(|_| Err(repair_timeout(cfg, side)))
}

fn repair_timeout(cfg: &MoveConfig, side: Side) -> ReplError {
    ReplError::Timeout {
        waiting_for: WaitFor::Repair,
        vbuckets: vec![cfg.vb],
        peer: Some(
            match side {
                Side::Consumer => &cfg.destination,
                Side::Producer => &cfg.source,
            }
            .clone(),
        ),
    }
}

/// One node's copy of the vbucket, as far as the node tells.
#[derive(Clone, Debug, PartialEq, Eq)]
struct VbCopy {
    /// From the `vbucket <vb>` stat; `None` when the node does not answer it.
    state: Option<VbState>,
    /// `None` when the node does not answer `vbucket-seqno` or GET_FAILOVER_LOG.
    history: Option<History>,
}

/// What a copy holds: its high seqno and failover log (newest entry first).
#[derive(Clone, Debug, PartialEq, Eq)]
struct History {
    high: Seqno,
    log: Vec<FailoverEntry>,
}

impl History {
    /// Whether every write `other` holds is also here: `other`'s newest write was
    /// made on a branch (failover entry) this log also has, and this copy's history
    /// follows that branch at least up to `other`'s high seqno (the producer's
    /// rollback rule, §7: a stream from here into `other` would need no rollback).
    fn contains(&self, other: &History) -> bool {
        if other.high.0 == 0 {
            return true;
        }
        let Some(branch) = other.log.iter().find(|e| e.seqno < other.high) else {
            return false;
        };
        let Some(i) = self.log.iter().position(|e| e.vb_uuid == branch.vb_uuid) else {
            return false;
        };
        // Where that branch ends here: the start of the next newer branch, or our
        // high seqno when it is our newest.
        let end = match i.checked_sub(1) {
            Some(newer) => self.log.get(newer).map_or(self.high, |e| e.seqno),
            None => self.high,
        };
        other.high <= end
    }
}

/// The next repair step.
#[derive(Clone, Debug)]
enum Next {
    Settled(Settled),
    Set(Side, VbState),
    Refuse(ReplError),
}

/// The repair rule. The copy that holds every write of the other (by failover log
/// and high seqno, [`History::contains`]) is the one to keep active; the other is
/// demoted first (it may have been taking writes: the next round sees them), and
/// only then is the keeper activated. Preference goes to finishing the move when
/// the destination holds everything and is active, else to the source.
fn plan(cfg: &MoveConfig, src: &VbCopy, dst: &VbCopy) -> Next {
    use VbState::{Active, Dead, Pending, Replica};
    let refuse_source = |state| {
        Next::Refuse(ReplError::VbucketState {
            vb: cfg.vb,
            peer: cfg.source.clone(),
            state,
            expected: "active",
        })
    };
    let (Some(s), Some(d)) = (src.state, dst.state) else {
        // A node without the vbucket stat: no repair, the move runs as it is.
        return match src.state {
            Some(s) if s != Active => refuse_source(s),
            _ => Next::Settled(Settled::Run),
        };
    };
    let (Some(hs), Some(hd)) = (&src.history, &dst.history) else {
        return match (s, d) {
            (Dead, Active) => Next::Settled(Settled::Done),
            (Active, _) => Next::Settled(Settled::Run),
            (s, _) => refuse_source(s),
        };
    };
    let dest_has_all = hd.contains(hs);
    let source_has_all = hs.contains(hd);
    let diverged = || {
        Next::Refuse(ReplError::Diverged {
            vb: cfg.vb,
            source_peer: cfg.source.clone(),
            source_state: s,
            source_high_seqno: hs.high.0,
            destination_peer: cfg.destination.clone(),
            destination_state: d,
            destination_high_seqno: hd.high.0,
        })
    };
    match (s, d) {
        (Active, Active) if dest_has_all => Next::Set(Side::Producer, Dead),
        (Active, Active) if source_has_all => Next::Set(Side::Consumer, Replica),
        (Active, Active) => diverged(),
        (Active, _) => Next::Settled(Settled::Run),
        (Dead, Active) if dest_has_all => Next::Settled(Settled::Done),
        (_, Active) if dest_has_all => Next::Set(Side::Producer, Dead),
        (_, Active) if source_has_all => Next::Set(Side::Consumer, Replica),
        (_, Active) => diverged(),
        (_, Replica | Pending) if source_has_all => Next::Set(Side::Producer, Active),
        (_, Replica | Pending) if dest_has_all => Next::Set(Side::Consumer, Active),
        (_, Replica | Pending) => diverged(),
        // Neither copy active and the destination dead: not a leftover of a move
        // (a move's destination is replica, pending or active).
        (s, _) => refuse_source(s),
    }
}

/// The vbucket's state, high seqno and failover log on one node (one connection).
async fn observe(cfg: &MoveConfig, side: Side) -> Result<VbCopy, ReplError> {
    let vb = cfg.vb;
    let mut c = connect(cfg, side, cfg.timeout).await?;
    let state_key = format!("vb_{}", vb.0);
    let state = match c.stats(&format!("vbucket {}", vb.0)).await {
        Ok(pairs) => pairs
            .iter()
            .find(|(k, _)| *k == state_key)
            .and_then(|(_, v)| VbState::parse(v)),
        Err(e) if e.status().is_some() => {
            debug!(vb = %vb, %side, error = %e, "no vbucket stat; moving without repair");
            None
        }
        Err(e) => return Err(ReplError::node(side, "stats", Some(vb), e)),
    };
    if state.is_none() {
        return Ok(VbCopy {
            state,
            history: None,
        });
    }
    let high_key = format!("vb_{}:high_seqno", vb.0);
    let high = match c.stats(&format!("vbucket-seqno {}", vb.0)).await {
        Ok(pairs) => pairs
            .iter()
            .find(|(k, _)| *k == high_key)
            .and_then(|(_, v)| v.trim().parse::<u64>().ok())
            .map(Seqno),
        Err(e) if e.status().is_some() => None,
        Err(e) => return Err(ReplError::node(side, "vbucket-seqno", Some(vb), e)),
    };
    let Some(high) = high else {
        return Ok(VbCopy {
            state,
            history: None,
        });
    };
    let log = failover_log(&mut c, side, vb).await?;
    Ok(VbCopy {
        state,
        history: log.map(|log| History { high, log }),
    })
}

/// GET_FAILOVER_LOG, accepting the empty log of a vbucket that never had a
/// branch (a fresh replica); `None` when the node answers with an error status.
async fn failover_log(
    c: &mut Client,
    side: Side,
    vb: Vbid,
) -> Result<Option<Vec<FailoverEntry>>, ReplError> {
    let opaque = c.next_opaque();
    let f = c
        .call(&BareRequest::new(Opcode::GetFailoverLog, vb, opaque))
        .await
        .map_err(|e| ReplError::node(side, "get_failover_log", Some(vb), e))?;
    if !f.status().is_success() {
        debug!(vb = %vb, %side, status = %f.status(), "no failover log");
        return Ok(None);
    }
    let value = f.value();
    if value.len() % 16 != 0 {
        return Err(ReplError::Protocol {
            side,
            peer: c.peer().to_string(),
            vb: Some(vb),
            opaque: Some(opaque),
            cause: ProtocolCause::Malformed(format!(
                "failover log of {} bytes (not a multiple of 16)",
                value.len()
            )),
        });
    }
    let be = |b: &[u8]| b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x));
    Ok(Some(
        value
            .chunks_exact(16)
            .map(|e| FailoverEntry {
                vb_uuid: VbUuid(be(&e[..8])),
                seqno: Seqno(be(&e[8..])),
            })
            .collect(),
    ))
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

/// Steps 2-6; `persisted` is set once the persistence step passed.
async fn run_with(
    cfg: &MoveConfig,
    r: &Replicator,
    persisted: &mut Option<Seqno>,
) -> Result<Seqno, ReplError> {
    let vb = cfg.vb;
    let step_err = |step: MoveStep| step_err(vb, step);
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
    *persisted = Some(seqno);

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

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(high: u64, log: &[(u64, u64)]) -> History {
        History {
            high: Seqno(high),
            log: log
                .iter()
                .map(|&(u, s)| FailoverEntry {
                    vb_uuid: VbUuid(u),
                    seqno: Seqno(s),
                })
                .collect(),
        }
    }

    fn copy(state: VbState, h: History) -> VbCopy {
        VbCopy {
            state: Some(state),
            history: Some(h),
        }
    }

    fn cfg() -> MoveConfig {
        MoveConfig::new(
            "b",
            Vbid(5),
            "src:1",
            "dst:2",
            Credentials {
                user: "u".into(),
                password: "p".into(),
            },
        )
    }

    fn next(src: VbCopy, dst: VbCopy) -> String {
        match plan(&cfg(), &src, &dst) {
            Next::Settled(s) => format!("{s:?}"),
            Next::Set(side, state) => format!("{side} {state}"),
            Next::Refuse(ReplError::Diverged { .. }) => "diverged".into(),
            Next::Refuse(ReplError::VbucketState { .. }) => "vbucket_state".into(),
            Next::Refuse(e) => format!("{e:?}"),
        }
    }

    #[test]
    fn a_replica_behind_on_the_same_branch_is_contained_not_containing() {
        let active = hist(100, &[(1, 0)]);
        let replica = hist(80, &[(1, 0)]);
        assert!(active.contains(&replica));
        assert!(!replica.contains(&active));
        assert!(
            active.contains(&hist(0, &[])),
            "an empty copy is in every copy"
        );
    }

    #[test]
    fn a_promoted_copy_contains_its_old_source_until_the_source_writes_again() {
        // The destination became active at 100 (new branch 2) and took writes.
        let dest = hist(120, &[(2, 100), (1, 0)]);
        let dead_source = hist(100, &[(1, 0)]);
        assert!(dest.contains(&dead_source));
        assert!(!dead_source.contains(&dest));
        // The source reactivated at 100 (branch 3), no writes yet: still contained.
        let stray = hist(100, &[(3, 100), (1, 0)]);
        assert!(dest.contains(&stray));
        // ... after a write it is not, and neither contains the other.
        let stray = hist(101, &[(3, 100), (1, 0)]);
        assert!(!dest.contains(&stray) && !stray.contains(&dest));
    }

    #[test]
    fn the_repair_keeps_the_copy_that_holds_every_write() {
        use VbState::{Active, Dead, Pending, Replica};
        let src = hist(100, &[(1, 0)]);
        let behind = hist(80, &[(1, 0)]);
        let promoted = hist(120, &[(2, 100), (1, 0)]);
        let promoted_behind = hist(80, &[(2, 80), (1, 0)]);
        // A takeover broken after pending: back to the source, equal or behind.
        assert_eq!(
            next(copy(Dead, src.clone()), copy(Pending, src.clone())),
            "producer active"
        );
        assert_eq!(
            next(copy(Dead, src.clone()), copy(Replica, behind.clone())),
            "producer active"
        );
        // Finished, or finished with a stale source.
        assert_eq!(
            next(copy(Dead, src.clone()), copy(Active, promoted.clone())),
            "Done"
        );
        assert_eq!(
            next(
                copy(Active, src.clone()),
                copy(Active, hist(100, &[(2, 100), (1, 0)]))
            ),
            "producer dead"
        );
        // A destination active but behind: demote it first.
        assert_eq!(
            next(
                copy(Dead, src.clone()),
                copy(Active, promoted_behind.clone())
            ),
            "consumer replica"
        );
        assert_eq!(
            next(copy(Active, src.clone()), copy(Active, promoted_behind)),
            "consumer replica"
        );
        // The regular start.
        assert_eq!(
            next(copy(Active, src.clone()), copy(Replica, behind)),
            "Run"
        );
        assert_eq!(
            next(copy(Active, src.clone()), copy(Pending, src.clone())),
            "Run"
        );
        // Both wrote: refuse.
        let stray = hist(101, &[(3, 100), (1, 0)]);
        assert_eq!(
            next(copy(Active, stray), copy(Active, promoted)),
            "diverged"
        );
        // Not a move's leftover.
        assert_eq!(
            next(copy(Dead, src.clone()), copy(Dead, src)),
            "vbucket_state"
        );
    }

    #[test]
    fn nodes_without_the_vbucket_stat_are_moved_as_before() {
        let unknown = VbCopy {
            state: None,
            history: None,
        };
        assert_eq!(next(unknown.clone(), unknown.clone()), "Run");
        let dead = VbCopy {
            state: Some(VbState::Dead),
            history: None,
        };
        assert_eq!(next(dead, unknown), "vbucket_state");
    }

    #[test]
    fn takeover_uuids_are_32_hex_digits_and_unique() {
        let (a, b) = (takeover_uuid(), takeover_uuid());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
