//! DCP producer and consumer connections (`mcbp-dcp.md` §6, §7).
//!
//! Layout: pure cores that own no socket and read no clock — [`producer::ProducerConn`]
//! with one [`active_stream::ActiveStream`] per vbucket, [`consumer::ConsumerConn`]
//! with one [`passive_stream::PassiveStream`] per vbucket, [`flow`] for flow
//! control — and one thin async shell per connection ([`wire::Wire`] plus the `run`
//! functions) that feeds them frames, time and wake-ups and writes what they encode.
//!
//! The engine is a synchronous, deterministic dependency, so cores read it (and the
//! consumer applies replica writes to it) directly; the only engine call done by the
//! shell is a consumer rollback, which writes to disk.
//!
//! Node-wide bookkeeping lives in [`DcpRegistry`] (one per bucket): live connections
//! and their streams for the `dcp` and `dcp-vbtakeover` stats, a per-vbucket epoch
//! bumped on every state change or rollback (it ends producer streams, §7.8), and the
//! per-vbucket "receiving its initial disk snapshot" flag (ETMPFAIL, §7.4).

pub(crate) mod active_stream;
pub(crate) mod consumer;
pub(crate) mod flow;
pub(crate) mod passive_stream;
pub(crate) mod producer;
mod wire;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use mcbp::dcp::OpenFlags;
use mcbp::{Frame, Opaque, Opcode, Seqno, Status, Vbid};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::node::{BucketEntry, NodeState};
use crate::session::Session;

/// Which end of DCP a connection of this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Producer,
    Consumer,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Producer => "producer",
            Side::Consumer => "consumer",
        })
    }
}

/// An accepted DCP_OPEN, ready to take the socket over.
#[derive(Debug)]
pub(crate) struct DcpOpen {
    bucket: Arc<BucketEntry>,
    name: String,
    flags: OpenFlags,
    reg_id: u64,
    replaced: CancellationToken,
    close_after_frames: Option<u64>,
}

/// A DCP connection ended abnormally.
#[derive(Debug, thiserror::Error)]
#[error("dcp {side} {name:?} on bucket {bucket} ({peer}): {reason}")]
pub(crate) struct DcpError {
    side: Side,
    name: String,
    bucket: String,
    peer: SocketAddr,
    #[source]
    reason: ConnError,
}

/// Why a DCP connection is torn down (the whole connection, not one stream).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    /// Nothing at all arrived from the peer for the DCP idle timeout (§7.7).
    #[error("nothing received for {0:?}")]
    Idle(Duration),
    /// A NOOP answer that does not match the one outstanding (§6.14).
    #[error("noop answer with opaque {got} (outstanding: {expected:?})")]
    NoopMismatch {
        got: Opaque,
        expected: Option<Opaque>,
    },
    /// A command this side never accepts (§6.1).
    #[error("{opcode} is not accepted on a {side} connection")]
    WrongSide { opcode: Opcode, side: Side },
    /// A frame whose body does not fit its opcode.
    #[error("malformed {opcode}: {reason}")]
    Malformed { opcode: Opcode, reason: String },
    /// A STREAM_REQ answer for an opaque we never used (§10.3).
    #[error("stream request answer with unknown opaque {0}")]
    UnknownOpaque(Opaque),
    /// A control the protocol makes mandatory was refused (§6.16).
    #[error("control {key} refused with {status}")]
    ControlRefused { key: String, status: Status },
    /// The replica refused a stream message in a way that leaves it inconsistent.
    #[error("{vb}: {what}")]
    Replica { vb: Vbid, what: String },
    /// The stream or connection state the takeover needs could not be set.
    #[error("{vb}: setting the vbucket state failed: {what}")]
    SetState { vb: Vbid, what: String },
    /// The `close_after_frames` fault.
    #[error("closed by the close_after_frames fault after {0} frames")]
    FaultClose(u64),
    /// Undecodable bytes.
    #[error("malformed frame")]
    Decode(#[source] mcbp::DecodeError),
    /// The socket failed.
    #[error("i/o failed")]
    Io(#[source] std::io::Error),
    /// The peer closed its end.
    #[error("peer closed the connection")]
    PeerClosed,
}

/// Per-stream progress a producer publishes for the stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamInfo {
    pub(crate) opaque: Opaque,
    pub(crate) status: StreamStatus,
    pub(crate) last_sent: Seqno,
    pub(crate) backfill_end: Seqno,
    pub(crate) end: Seqno,
}

/// The stat's view of a stream (§7.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamStatus {
    Backfilling,
    InMemory,
    Dead,
}

/// One live DCP connection as the stats see it.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    id: u64,
    name: String,
    side: Side,
    peer: SocketAddr,
    streams: Mutex<BTreeMap<Vbid, StreamInfo>>,
    /// Producer: unacknowledged bytes; consumer: processed, unacknowledged bytes.
    flow_bytes: AtomicU64,
    /// Producer: the flow-control window; consumer: the advertised buffer.
    flow_window: AtomicU64,
}

impl ConnInfo {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vbid, StreamInfo>> {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn publish(&self, streams: BTreeMap<Vbid, StreamInfo>, bytes: u64, window: u64) {
        *self.lock() = streams;
        self.flow_bytes.store(bytes, Ordering::Relaxed);
        self.flow_window.store(window, Ordering::Relaxed);
    }

    fn stream(&self, vb: Vbid) -> Option<StreamInfo> {
        self.lock().get(&vb).copied()
    }
}

/// DCP bookkeeping of one bucket (see the module docs).
#[derive(Debug)]
pub(crate) struct DcpRegistry {
    epochs: Vec<AtomicU64>,
    initial_disk: Vec<AtomicBool>,
    /// Front-end writes paused: a takeover stream overran `takeover_max_time`.
    takeover_backoff: Vec<AtomicBool>,
    conns: Mutex<HashMap<String, Arc<ConnInfo>>>,
}

impl DcpRegistry {
    pub(crate) fn new(vbuckets: u16) -> DcpRegistry {
        DcpRegistry {
            epochs: (0..vbuckets).map(|_| AtomicU64::new(0)).collect(),
            initial_disk: (0..vbuckets).map(|_| AtomicBool::new(false)).collect(),
            takeover_backoff: (0..vbuckets).map(|_| AtomicBool::new(false)).collect(),
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// Whether front-end writes to `vb` are paused for a slow takeover (§7.9 step 5).
    pub(crate) fn takeover_backoff(&self, vb: Vbid) -> bool {
        self.takeover_backoff
            .get(usize::from(vb.0))
            .is_some_and(|b| b.load(Ordering::Acquire))
    }

    pub(crate) fn set_takeover_backoff(&self, vb: Vbid, on: bool) {
        if let Some(b) = self.takeover_backoff.get(usize::from(vb.0)) {
            b.store(on, Ordering::Release);
        }
    }

    /// The vbucket's state epoch: bumped by every state change and rollback.
    pub(crate) fn epoch(&self, vb: Vbid) -> u64 {
        self.epochs
            .get(usize::from(vb.0))
            .map_or(0, |e| e.load(Ordering::Acquire))
    }

    /// Ends every producer stream out of `vb` (they notice on their next wake-up).
    pub(crate) fn bump_epoch(&self, vb: Vbid) {
        if let Some(e) = self.epochs.get(usize::from(vb.0)) {
            e.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub(crate) fn receiving_initial_disk(&self, vb: Vbid) -> bool {
        self.initial_disk
            .get(usize::from(vb.0))
            .is_some_and(|f| f.load(Ordering::Acquire))
    }

    pub(crate) fn set_receiving_initial_disk(&self, vb: Vbid, on: bool) {
        if let Some(f) = self.initial_disk.get(usize::from(vb.0)) {
            f.store(on, Ordering::Release);
        }
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ConnInfo>>> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn register(&self, info: Arc<ConnInfo>) {
        self.conns().insert(info.name.clone(), info);
    }

    fn unregister(&self, name: &str, id: u64) {
        let mut c = self.conns();
        if c.get(name).is_some_and(|i| i.id == id) {
            c.remove(name);
        }
    }

    fn find(&self, name: &str) -> Option<Arc<ConnInfo>> {
        self.conns().get(name).cloned()
    }

    fn all(&self) -> Vec<Arc<ConnInfo>> {
        let mut v: Vec<_> = self.conns().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

/// Validates a DCP_OPEN (§6.2) and registers the connection name; a live connection
/// of the same name on the bucket is told to disconnect.
pub(crate) fn accept_open(
    s: &Session,
    bucket: &Arc<BucketEntry>,
    open: mcbp::dcp::Open,
    _req: &Frame,
) -> Result<DcpOpen, Status> {
    if let Some(why) = open.flags.invalid_reason() {
        debug!(peer = %s.peer, flags = open.flags.0, why, "DCP_OPEN refused");
        return Err(Status::Einval);
    }
    let producer = open.flags.has(OpenFlags::PRODUCER);
    if !open.value.is_empty() {
        // Only {"consumer_name": "<string>"} on a consumer connection.
        let ok = !producer
            && serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&open.value)
                .is_ok_and(|m| m.iter().all(|(k, v)| k == "consumer_name" && v.is_string()));
        if !ok {
            debug!(peer = %s.peer, "DCP_OPEN value refused");
            return Err(Status::Einval);
        }
    }
    let name = String::from_utf8_lossy(&open.name).into_owned();
    if name.is_empty() {
        return Err(Status::Einval);
    }
    let (reg_id, replaced) = s.state.register_dcp_name(&bucket.meta.name, &name);
    let close_after_frames = s.state.faults.take_close_after_frames();
    info!(peer = %s.peer, bucket = %bucket.meta.name, %name, side = %if producer { Side::Producer } else { Side::Consumer }, flags = open.flags.0, "DCP connection opened");
    Ok(DcpOpen {
        bucket: bucket.clone(),
        name,
        flags: open.flags,
        reg_id,
        replaced,
        close_after_frames,
    })
}

/// Serves a DCP connection until it ends.
pub(crate) async fn run(
    s: &mut Session,
    open: DcpOpen,
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    inbuf: BytesMut,
    shutdown: CancellationToken,
) -> Result<(), DcpError> {
    let side = if open.flags.has(OpenFlags::PRODUCER) {
        Side::Producer
    } else {
        Side::Consumer
    };
    let info = Arc::new(ConnInfo {
        id: open.reg_id,
        name: open.name.clone(),
        side,
        peer: s.peer,
        streams: Mutex::new(BTreeMap::new()),
        flow_bytes: AtomicU64::new(0),
        flow_window: AtomicU64::new(0),
    });
    let entry = open.bucket.clone();
    entry.dcp.register(info.clone());
    let wire = wire::Wire::new(rd, wr, inbuf, open.close_after_frames);
    let res = match side {
        Side::Producer => producer::run(s, &open, &info, wire, &shutdown).await,
        Side::Consumer => consumer::run(s, &open, &info, wire, &shutdown).await,
    };
    entry.dcp.unregister(&open.name, open.reg_id);
    s.state
        .unregister_dcp_name(&entry.meta.name, &open.name, open.reg_id);
    match res {
        Ok(()) => {
            info!(peer = %s.peer, name = %open.name, %side, "DCP connection closed");
            Ok(())
        }
        Err(reason) => Err(DcpError {
            side,
            name: open.name.clone(),
            bucket: entry.meta.name.clone(),
            peer: s.peer,
            reason,
        }),
    }
}

/// The `dcp` stat group: one block per live connection of the bucket.
pub(crate) fn connection_stats(_state: &NodeState, b: &BucketEntry) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for c in b.dcp.all() {
        let p = format!("eq_dcpq:{}", c.name);
        let streams = c.lock();
        v.push((format!("{p}:type"), c.side.to_string()));
        v.push((format!("{p}:peer"), c.peer.to_string()));
        let live = streams
            .values()
            .filter(|s| s.status != StreamStatus::Dead)
            .count();
        v.push((format!("{p}:num_streams"), live.to_string()));
        let (bytes_key, window_key) = match c.side {
            Side::Producer => ("unacked_bytes", "max_buffer_bytes"),
            Side::Consumer => ("unacked_processed_bytes", "connection_buffer_size"),
        };
        v.push((
            format!("{p}:{bytes_key}"),
            c.flow_bytes.load(Ordering::Relaxed).to_string(),
        ));
        v.push((
            format!("{p}:{window_key}"),
            c.flow_window.load(Ordering::Relaxed).to_string(),
        ));
        for (vb, s) in streams.iter() {
            v.push((
                format!("{p}:stream_{}_opaque", vb.0),
                s.opaque.0.to_string(),
            ));
            v.push((
                format!("{p}:stream_{}_last_sent_seqno", vb.0),
                s.last_sent.0.to_string(),
            ));
            v.push((
                format!("{p}:stream_{}_state", vb.0),
                status_str(s.status).to_string(),
            ));
        }
    }
    v
}

fn status_str(s: StreamStatus) -> &'static str {
    match s {
        StreamStatus::Backfilling => "backfilling",
        StreamStatus::InMemory => "in-memory",
        StreamStatus::Dead => "stream_is_dead",
    }
}

/// The `dcp-vbtakeover <vb> <name>` stat group (§7.10).
///
/// The estimate counts seqnos, not items: the engine keeps one version per key, so
/// seqnos still to send bound the items from above; it is also capped by the items
/// and tombstones the vbucket holds.
pub(crate) fn vbtakeover_stats(
    _state: &NodeState,
    b: &BucketEntry,
    vb: Vbid,
    name: &str,
) -> Result<Vec<(String, String)>, Status> {
    let s = b.bucket.vb_stats(vb).map_err(|e| e.status())?;
    let kv = |k: &str, v: String| (k.to_string(), v);
    let vb_items = s.items.to_string();
    let deletes = s.persisted_tombstones.to_string();
    let Some(conn) = b.dcp.find(name).filter(|_| !name.is_empty()) else {
        return Ok(vec![
            kv("status", "connection_does_not_exist".into()),
            kv("estimate", (s.items + s.persisted_tombstones).to_string()),
            kv("vb_items", vb_items),
            kv("on_disk_deletes", deletes),
        ]);
    };
    let name_stat = kv("name", format!("eq_dcpq:{name}"));
    let Some(st) = conn.stream(vb).filter(|_| conn.side == Side::Producer) else {
        return Ok(vec![
            name_stat,
            kv("status", "stream_does_not_exist".into()),
            kv("estimate", "0".into()),
            kv("backfillRemaining", "0".into()),
        ]);
    };
    if st.status == StreamStatus::Dead {
        return Ok(vec![
            name_stat,
            kv("status", "stream_is_dead".into()),
            kv("estimate", "0".into()),
            kv("backfillRemaining", "0".into()),
        ]);
    }
    let cap = s.high_seqno.min(st.end);
    let (backfill, chk) = match st.status {
        StreamStatus::Backfilling => (
            st.backfill_end.0.saturating_sub(st.last_sent.0),
            cap.0.saturating_sub(st.backfill_end.0.max(st.last_sent.0)),
        ),
        _ => (0, cap.0.saturating_sub(st.last_sent.0)),
    };
    let held = s.items + s.tombstones;
    let estimate = (backfill + chk).min(held);
    let mut v = vec![
        name_stat,
        kv("status", status_str(st.status).into()),
        kv("estimate", estimate.to_string()),
    ];
    if st.status == StreamStatus::Backfilling {
        v.push(kv("backfillRemaining", backfill.min(held).to_string()));
    }
    v.push(kv("chk_items", chk.min(held).to_string()));
    v.push(kv("vb_items", vb_items));
    v.push(kv("on_disk_deletes", deletes));
    Ok(v)
}
