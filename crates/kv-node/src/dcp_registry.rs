//! DCP bookkeeping of one bucket, kept in its [`crate::state::BucketEntry`]: live
//! connections and their streams (for the `dcp` and `dcp-vbtakeover` stats), a
//! per-vbucket epoch bumped on every state change or rollback (it ends producer
//! streams, `mcbp-dcp.md` §7.8), the per-vbucket "receiving its initial disk
//! snapshot" flag (ETMPFAIL, §7.4) and the takeover write back-off (§7.9).
//!
//! It lives outside [`crate::dcp`] so the shared node state can hold it without
//! depending on the connection code; it imports nothing else from this crate.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kv_engine::Bucket;
use mcbp::{Opaque, Seqno, Status, Vbid};

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
    pub(crate) fn new(id: u64, name: String, side: Side, peer: SocketAddr) -> ConnInfo {
        ConnInfo {
            id,
            name,
            side,
            peer,
            streams: Mutex::new(BTreeMap::new()),
            flow_bytes: AtomicU64::new(0),
            flow_window: AtomicU64::new(0),
        }
    }

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

    pub(crate) fn register(&self, info: Arc<ConnInfo>) {
        self.conns().insert(info.name.clone(), info);
    }

    pub(crate) fn unregister(&self, name: &str, id: u64) {
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

/// The `dcp` stat group: one block per live connection of the bucket.
pub(crate) fn connection_stats(reg: &DcpRegistry) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for c in reg.all() {
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
    bucket: &Bucket,
    reg: &DcpRegistry,
    vb: Vbid,
    name: &str,
) -> Result<Vec<(String, String)>, Status> {
    let s = bucket.vb_stats(vb).map_err(|e| e.status())?;
    let kv = |k: &str, v: String| (k.to_string(), v);
    let vb_items = s.items.to_string();
    let deletes = s.persisted_tombstones.to_string();
    let Some(conn) = reg.find(name).filter(|_| !name.is_empty()) else {
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
