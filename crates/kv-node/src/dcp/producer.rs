//! The DCP producer connection (`mcbp-dcp.md` §6, §7.4–7.9): a pure core,
//! [`ProducerConn`], and its async shell, [`run`].
//!
//! The core answers frames from the consumer (controls, stream requests, close,
//! buffer acks, noop and takeover answers) and, on [`ProducerConn::fill`], encodes the
//! next stream messages as far as flow control and the output budget allow. It
//! reads the engine but never the clock; the shell passes `now`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use kv_engine::{Bucket, DeleteSource, Item, RollbackDecision, StreamStart};
use mcbp::dcp::{
    BufferAck, Control, Deletion, EndReason, Expiration, FailoverLogResponse, MarkerVersion,
    Mutation, OpenFlags, SetVbucketState, SnapshotMarker, StreamEnd, StreamFlags, StreamReq,
    StreamReqOutcome, StreamReqResponse,
};
use mcbp::{
    BareRequest, Datatype, Frame, FrameSpec, Message, Opaque, Opcode, Response, Seqno, Status,
    VbState, Vbid,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};

use super::active_stream::{ActiveStream, Emit, Phase};
use super::flow::ProducerWindow;
use super::wire::{now, Wake, Wire};
use super::{ConnError, ConnInfo, DcpOpen, DcpPeer, DcpRegistry, Side, StreamInfo, StreamStatus};
use crate::faults::{Fault, Faults};

/// Output budget: stream messages are encoded only while less than this is
/// waiting to be written, so a slow consumer costs bounded memory.
pub(crate) const OUT_BUDGET: usize = 256 * 1024;

/// Connection-level settings fixed at DCP_OPEN.
#[derive(Debug, Clone)]
pub(crate) struct ProducerSettings {
    /// DCP_OPEN flags.
    pub(crate) open: OpenFlags,
    /// HELLO granted JSON: otherwise the JSON datatype bit is cleared.
    pub(crate) json: bool,
    /// DCP idle timeout (§7.7).
    pub(crate) idle_timeout: Duration,
    /// Items read per snapshot.
    pub(crate) batch: usize,
}

/// What the engine side of the node must do for the core.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub(crate) enum Action {
    /// Set the local vbucket's state (takeover: dead after the pending answer);
    /// then call [`ProducerConn::rebase`].
    SetVbState { vb: Vbid, state: VbState },
}

/// What the core reads: the engine, the bucket's DCP registry and the faults.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub(crate) bucket: &'a Bucket,
    pub(crate) reg: &'a DcpRegistry,
    pub(crate) faults: &'a Faults,
}

/// A producer connection's state.
#[derive(Debug)]
pub(crate) struct ProducerConn {
    s: ProducerSettings,
    noop_enabled: bool,
    noop_interval: Duration,
    noop_pending: Option<Opaque>,
    last_noop: Instant,
    next_opaque: u32,
    last_recv: Instant,
    window: ProducerWindow,
    stream_end_on_close: bool,
    expiry_opcode: bool,
    streams: BTreeMap<Vbid, ActiveStream>,
    /// Streams that ended, for the stats (`stream_is_dead`) until replaced.
    ended: BTreeMap<Vbid, StreamInfo>,
    cursor: u16,
}

fn respond(out: &mut BytesMut, req: &Frame, status: Status) {
    Response::to_request(req, status).encode(out);
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// `set_noop_interval`: seconds, decimal fraction allowed (§6.16); at least 0.1 s.
pub(crate) fn parse_noop_interval(v: &str) -> Option<Duration> {
    let secs: f64 = v.trim().parse().ok()?;
    if !secs.is_finite() || !(0.1 - 1e-9..=10_800.0).contains(&secs) {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

impl ProducerConn {
    pub(crate) fn new(now: Instant, s: ProducerSettings) -> ProducerConn {
        ProducerConn {
            s,
            noop_enabled: false,
            noop_interval: Duration::from_secs(1),
            noop_pending: None,
            last_noop: now,
            next_opaque: 1,
            last_recv: now,
            window: ProducerWindow::default(),
            stream_end_on_close: false,
            expiry_opcode: false,
            streams: BTreeMap::new(),
            ended: BTreeMap::new(),
            cursor: 0,
        }
    }

    /// Handles one frame from the consumer, appending answers to `out`.
    ///
    /// # Errors
    /// A [`ConnError`] ends the connection.
    pub(crate) fn handle_frame(
        &mut self,
        now: Instant,
        f: &Frame,
        ctx: Ctx<'_>,
        out: &mut BytesMut,
    ) -> Result<Vec<Action>, ConnError> {
        self.last_recv = now;
        if f.is_response() {
            return self.handle_response(f, out);
        }
        match f.opcode() {
            Opcode::DcpControl => self.control(now, f, out),
            Opcode::DcpStreamReq => self.stream_req(f, ctx, out),
            Opcode::DcpCloseStream => self.close_stream(f, out),
            Opcode::DcpBufferAcknowledgement => match BufferAck::parse(f) {
                Ok(a) => {
                    trace!(bytes = a.bytes, "buffer ack");
                    self.window.acked(a.bytes);
                }
                Err(e) => {
                    return Err(ConnError::Malformed {
                        opcode: f.opcode(),
                        reason: e.to_string(),
                    })
                }
            },
            Opcode::DcpGetFailoverLog => match BareRequest::parse(f) {
                Ok(g) => {
                    failover_log_response(ctx.bucket, g.vbucket, f, Opcode::DcpGetFailoverLog, out)
                }
                Err(_) => respond(out, f, Status::Einval),
            },
            Opcode::DcpOpen => respond(out, f, Status::Einval),
            Opcode::DcpNoop => respond(out, f, Status::Success),
            op if op.is_dcp() => {
                return Err(ConnError::WrongSide {
                    opcode: op,
                    side: Side::Producer,
                })
            }
            Opcode::Noop => respond(out, f, Status::Success),
            _ => respond(out, f, Status::NotSupported),
        }
        Ok(Vec::new())
    }

    fn handle_response(&mut self, f: &Frame, out: &mut BytesMut) -> Result<Vec<Action>, ConnError> {
        let opaque = f.opaque();
        match f.opcode() {
            Opcode::DcpNoop => {
                if self.noop_pending == Some(opaque) {
                    self.noop_pending = None;
                    Ok(Vec::new())
                } else {
                    Err(ConnError::NoopMismatch {
                        got: opaque,
                        expected: self.noop_pending,
                    })
                }
            }
            Opcode::DcpSnapshotMarker => {
                if let Some(s) = self.streams.values_mut().find(|s| s.opaque == opaque) {
                    if f.status().is_success() {
                        s.marker_acked();
                    } else {
                        debug!(vb = %s.vb, status = %f.status(), "snapshot marker answered with an error");
                    }
                }
                Ok(Vec::new())
            }
            Opcode::DcpSetVbucketState => {
                let Some(vb) = self
                    .streams
                    .values()
                    .find(|s| s.opaque == opaque)
                    .map(|s| s.vb)
                else {
                    debug!(%opaque, "set vbucket state answer for no stream");
                    return Ok(Vec::new());
                };
                if !f.status().is_success() {
                    warn!(%vb, status = %f.status(), "takeover: consumer refused SET_VBUCKET_STATE; ending the stream");
                    self.end_stream(vb, EndReason::StateChanged, out);
                    return Ok(Vec::new());
                }
                let Some(s) = self.streams.get_mut(&vb) else {
                    return Ok(Vec::new());
                };
                let next = s.set_state_acked();
                if s.takeover_done() {
                    debug!(%vb, "takeover complete");
                    self.end_stream(vb, EndReason::Ok, out);
                }
                Ok(next
                    .map(|state| vec![Action::SetVbState { vb, state }])
                    .unwrap_or_default())
            }
            op => {
                // Stream-level errors (no stream, opaque mismatch, not my vbucket)
                // are tolerated (MB-37009).
                debug!(opcode = %op, status = %f.status(), %opaque, "consumer answered a stream message");
                Ok(Vec::new())
            }
        }
    }

    fn control(&mut self, now: Instant, f: &Frame, out: &mut BytesMut) {
        let Ok(c) = Control::parse(f) else {
            return respond(out, f, Status::Einval);
        };
        let key = String::from_utf8_lossy(&c.key).into_owned();
        let value = String::from_utf8_lossy(&c.value).into_owned();
        let ok = match key.as_str() {
            "enable_noop" => parse_bool(&value).map(|b| {
                if b && !self.noop_enabled {
                    self.last_noop = now;
                }
                self.noop_enabled = b;
            }),
            "set_noop_interval" => parse_noop_interval(&value).map(|d| self.noop_interval = d),
            "set_priority" => matches!(value.as_str(), "high" | "medium" | "low").then_some(()),
            "send_stream_end_on_client_close_stream" => {
                (value == "true").then(|| self.stream_end_on_close = true)
            }
            "enable_expiry_opcode" => parse_bool(&value).map(|b| self.expiry_opcode = b),
            "include_deleted_user_xattrs" => (value == "true"
                && self.s.open.has(OpenFlags::INCLUDE_DELETED_USER_XATTRS))
            .then_some(()),
            "v7_dcp_status_codes" => (value == "true").then_some(()),
            "connection_buffer_size" => value.parse::<u32>().ok().map(|n| self.window.set_size(n)),
            "supports_cursor_dropping"
            | "supports_cursor_dropping_vulcan"
            | "supports_hifi_MFU" => parse_bool(&value).map(drop),
            _ => None,
        };
        debug!(%key, %value, accepted = ok.is_some(), "control");
        respond(
            out,
            f,
            if ok.is_some() {
                Status::Success
            } else {
                Status::Einval
            },
        );
    }

    /// STREAM_REQ, checks in exactly the order of §7.4 / issue #4.
    fn stream_req(&mut self, f: &Frame, ctx: Ctx<'_>, out: &mut BytesMut) {
        let Ok(req) = StreamReq::parse(f) else {
            return respond(out, f, Status::Einval);
        };
        let vb = req.vbucket;
        let refuse = |out: &mut BytesMut, status: Status| {
            debug!(%vb, opaque = %req.opaque, %status, "stream request refused");
            StreamReqResponse {
                opaque: req.opaque,
                outcome: StreamReqOutcome::Refused(status),
            }
            .encode(out);
        };
        if let Some(status) = ctx.faults.find(|x| match x {
            Fault::StreamReqStatus { vbucket, status } if *vbucket == vb.0 => Some(*status),
            _ => None,
        }) {
            let status = Status::from_raw(status);
            warn!(%vb, %status, "fault: answering the stream request with a fixed status");
            if status == Status::Rollback {
                StreamReqResponse {
                    opaque: req.opaque,
                    outcome: StreamReqOutcome::Rollback { to: Seqno(0) },
                }
                .encode(out);
            } else {
                refuse(out, status);
            }
            return;
        }
        if !req.value.is_empty() || req.flags.has(StreamFlags::NO_VALUE) {
            return refuse(out, Status::Einval);
        }
        let state = match ctx.bucket.vbucket_state(vb) {
            Ok(s) => s,
            Err(_) => return refuse(out, Status::NotMyVbucket),
        };
        let allowed = match state {
            VbState::Active => true,
            VbState::Replica => !req.flags.has(StreamFlags::ACTIVE_VB_ONLY),
            VbState::Pending | VbState::Dead => false,
        };
        if !allowed {
            return refuse(out, Status::NotMyVbucket);
        }
        let epoch = ctx.reg.epoch(vb);
        let (mut start, mut snap_start, mut snap_end) = (req.start, req.snap_start, req.snap_end);
        if req.flags.has(StreamFlags::FROM_LATEST) {
            let high = ctx.bucket.high_seqno(vb).unwrap_or(Seqno(0));
            (start, snap_start, snap_end) = (high, high, high);
        }
        if self.s.open.has(OpenFlags::INCLUDE_XATTRS) && !self.noop_enabled {
            return refuse(out, Status::NotSupported);
        }
        let mut end = req.end;
        if !(start <= end && snap_start <= start && start <= snap_end) {
            return refuse(out, Status::Erange);
        }
        if self.streams.contains_key(&vb) {
            return refuse(out, Status::KeyEexists);
        }
        let decision = ctx.bucket.rollback_decision(
            vb,
            &StreamStart {
                start,
                vb_uuid: req.vb_uuid,
                snap_start,
                snap_end,
                strict_vbuuid: req.flags.has(StreamFlags::STRICT_VBUUID),
                ignore_purged: req.flags.has(StreamFlags::IGNORE_PURGED_TOMBSTONES),
                consumer_purge_seqno: None,
            },
        );
        match decision {
            Ok(RollbackDecision::NoRollback) => {}
            Ok(RollbackDecision::RollbackTo(to)) => {
                debug!(%vb, opaque = %req.opaque, %start, %to, "stream request: rollback");
                StreamReqResponse {
                    opaque: req.opaque,
                    outcome: StreamReqOutcome::Rollback { to },
                }
                .encode(out);
                return;
            }
            Err(_) => return refuse(out, Status::NotMyVbucket),
        }
        let Ok(high) = ctx.bucket.high_seqno(vb) else {
            return refuse(out, Status::NotMyVbucket);
        };
        if req.flags.has(StreamFlags::TO_LATEST) {
            end = high;
        } else if req.flags.has(StreamFlags::DISK_ONLY) {
            end = ctx.bucket.persisted_seqno(vb).unwrap_or(Seqno(0));
        }
        if start > end || start > high {
            return refuse(out, Status::Erange);
        }
        if ctx.reg.receiving_initial_disk(vb) {
            return refuse(out, Status::Etmpfail);
        }
        let Ok(log) = ctx.bucket.failover_log(vb) else {
            return refuse(out, Status::NotMyVbucket);
        };
        StreamReqResponse {
            opaque: req.opaque,
            outcome: StreamReqOutcome::Success {
                failover_log: wire_log(&log),
            },
        }
        .encode(out);
        debug!(%vb, opaque = %req.opaque, %start, %end, %high, flags = req.flags.0, "stream request accepted");
        let stream = ActiveStream::new(vb, req.opaque, req.flags, start, end, high, state, epoch);
        self.ended.remove(&vb);
        if let Some(reason) = ctx.faults.find(|x| match x {
            Fault::EndStreamAfterStreamReq { vbucket, reason } if *vbucket == vb.0 => Some(*reason),
            _ => None,
        }) {
            warn!(%vb, reason, "fault: ending the stream right after accepting it");
            self.streams.insert(vb, stream);
            self.end_stream(vb, EndReason::from_raw(reason), out);
            return;
        }
        self.streams.insert(vb, stream);
    }

    fn close_stream(&mut self, f: &Frame, out: &mut BytesMut) {
        let vb = f.vbucket();
        match self.streams.remove(&vb) {
            Some(mut s) => {
                s.kill();
                respond(out, f, Status::Success);
                debug!(%vb, opaque = %s.opaque, "stream closed by the consumer");
                self.ended.insert(vb, info_of(&s, StreamStatus::Dead));
                if self.stream_end_on_close {
                    self.encode_end(vb, s.opaque, EndReason::Closed, out);
                }
            }
            None => respond(out, f, Status::KeyEnoent),
        }
    }

    fn encode_end(&mut self, vb: Vbid, opaque: Opaque, reason: EndReason, out: &mut BytesMut) {
        let before = out.len();
        StreamEnd {
            vbucket: vb,
            opaque,
            reason,
        }
        .encode(out);
        self.window.sent(out.len() - before);
    }

    fn end_stream(&mut self, vb: Vbid, reason: EndReason, out: &mut BytesMut) {
        if let Some(mut s) = self.streams.remove(&vb) {
            s.kill();
            debug!(%vb, opaque = %s.opaque, %reason, "stream end");
            self.ended.insert(vb, info_of(&s, StreamStatus::Dead));
            self.encode_end(vb, s.opaque, reason, out);
        }
    }

    /// The shell changed the vbucket's state for a takeover stream.
    pub(crate) fn rebase(&mut self, vb: Vbid, state: VbState, epoch: u64) {
        if let Some(s) = self.streams.get_mut(&vb) {
            s.rebase(state, epoch);
        }
    }

    /// Encodes stream messages round-robin over the streams while flow control
    /// allows and `out` holds less than `budget` bytes. Returns how many were
    /// encoded.
    pub(crate) fn fill(&mut self, ctx: Ctx<'_>, out: &mut BytesMut, budget: usize) -> usize {
        let mut sent = 0;
        loop {
            let vbs: Vec<Vbid> = self
                .streams
                .range(Vbid(self.cursor)..)
                .chain(self.streams.range(..Vbid(self.cursor)))
                .map(|(vb, _)| *vb)
                .collect();
            let mut progressed = false;
            for vb in vbs {
                if out.len() >= budget || !self.window.may_send() {
                    return sent;
                }
                self.cursor = vb.0.wrapping_add(1);
                let state = ctx.bucket.vbucket_state(vb).ok();
                let epoch = ctx.reg.epoch(vb);
                let Some(s) = self.streams.get_mut(&vb) else {
                    continue;
                };
                if s.vbucket_changed(state, epoch) {
                    debug!(%vb, ?state, "vbucket changed under the stream");
                    self.end_stream(vb, EndReason::StateChanged, out);
                    sent += 1;
                    progressed = true;
                    continue;
                }
                let Some(emit) = s.next(ctx.bucket, self.s.batch) else {
                    continue;
                };
                let opaque = s.opaque;
                progressed = true;
                sent += 1;
                if let Emit::End(reason) = emit {
                    self.end_stream(vb, reason, out);
                    continue;
                }
                let before = out.len();
                self.encode(vb, opaque, emit, out);
                self.window.sent(out.len() - before);
            }
            if !progressed {
                return sent;
            }
        }
    }

    fn encode(&self, vb: Vbid, opaque: Opaque, emit: Emit, out: &mut BytesMut) {
        match emit {
            Emit::Marker { start, end, flags } => {
                trace!(%vb, %start, %end, flags = flags.0, "snapshot marker");
                SnapshotMarker {
                    vbucket: vb,
                    opaque,
                    start,
                    end,
                    flags,
                    version: MarkerVersion::V1,
                }
                .encode(out);
            }
            Emit::Item(item) => self.encode_item(vb, opaque, item, out),
            Emit::SetVbState(state) => {
                debug!(%vb, %state, "takeover: set vbucket state");
                SetVbucketState {
                    vbucket: vb,
                    opaque,
                    state,
                }
                .encode(out);
            }
            Emit::End(reason) => StreamEnd {
                vbucket: vb,
                opaque,
                reason,
            }
            .encode(out),
        }
    }

    /// The value and datatype this connection may see (§1.6, §6.2): xattrs only
    /// with INCLUDE_XATTRS, bodies stripped with NO_VALUE(_WITH_UNDERLYING_DATATYPE),
    /// JSON bit only if HELLO granted JSON. Stored values are never compressed, so
    /// nothing is sent compressed and SNAPPY is never set.
    fn egress(&self, item: &Item) -> (Datatype, bytes::Bytes) {
        let open = self.s.open;
        let mut dt = Datatype(item.datatype).without(Datatype::SNAPPY);
        let mut value = item.value.clone();
        if dt.contains(Datatype::XATTR) && !open.has(OpenFlags::INCLUDE_XATTRS) {
            value = crate::xattr::strip_xattrs(&value);
            dt = dt.without(Datatype::XATTR);
        }
        if open.has(OpenFlags::NO_VALUE) {
            value = bytes::Bytes::new();
            dt = Datatype::RAW;
        } else if open.has(OpenFlags::NO_VALUE_WITH_UNDERLYING_DATATYPE) {
            value = bytes::Bytes::new();
        }
        if !self.s.json {
            dt = dt.without(Datatype::JSON);
        }
        (dt, value)
    }

    fn encode_item(&self, vb: Vbid, opaque: Opaque, item: Item, out: &mut BytesMut) {
        let (datatype, value) = self.egress(&item);
        let times = self.s.open.has(OpenFlags::INCLUDE_DELETE_TIMES);
        if !item.deleted {
            Mutation {
                vbucket: vb,
                opaque,
                cas: item.cas,
                datatype,
                by_seqno: item.by_seqno,
                rev_seqno: item.rev_seqno,
                flags: item.flags,
                expiration: item.expiry,
                lock_time: 0,
                nru: 0,
                key: item.key,
                value,
            }
            .encode(out);
        } else if item.delete_source == DeleteSource::Expired && self.expiry_opcode && times {
            Expiration {
                vbucket: vb,
                opaque,
                cas: item.cas,
                datatype,
                by_seqno: item.by_seqno,
                rev_seqno: item.rev_seqno,
                delete_time: item.delete_time,
                key: item.key,
                value,
            }
            .encode(out);
        } else {
            Deletion {
                vbucket: vb,
                opaque,
                cas: item.cas,
                datatype,
                by_seqno: item.by_seqno,
                rev_seqno: item.rev_seqno,
                delete_time: times.then_some(item.delete_time),
                key: item.key,
                value,
            }
            .encode(out);
        }
    }

    /// Noops and the idle check (§7.7).
    ///
    /// # Errors
    /// [`ConnError::Idle`] once nothing arrived for the idle timeout.
    pub(crate) fn on_timer(&mut self, now: Instant, out: &mut BytesMut) -> Result<(), ConnError> {
        if !self.noop_enabled {
            return Ok(());
        }
        if now.saturating_duration_since(self.last_recv) >= self.s.idle_timeout {
            return Err(ConnError::Idle(self.s.idle_timeout));
        }
        if self.noop_pending.is_none()
            && now.saturating_duration_since(self.last_noop) >= self.noop_interval
        {
            let opaque = Opaque(self.next_opaque);
            self.next_opaque = self.next_opaque.wrapping_add(1);
            trace!(%opaque, "noop");
            FrameSpec::request(Opcode::DcpNoop)
                .opaque(opaque)
                .encode(out);
            self.noop_pending = Some(opaque);
            self.last_noop = now;
        }
        Ok(())
    }

    /// When [`ProducerConn::on_timer`] next has something to do.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        if !self.noop_enabled {
            return None;
        }
        let idle = self.last_recv + self.s.idle_timeout;
        Some(if self.noop_pending.is_none() {
            idle.min(self.last_noop + self.noop_interval)
        } else {
            idle
        })
    }

    /// Stream progress for the stats.
    pub(crate) fn stream_infos(&self) -> BTreeMap<Vbid, StreamInfo> {
        let mut m = self.ended.clone();
        for (vb, s) in &self.streams {
            let status = match s.phase() {
                Phase::Backfilling => StreamStatus::Backfilling,
                Phase::Ended => StreamStatus::Dead,
                _ => StreamStatus::InMemory,
            };
            m.insert(*vb, info_of(s, status));
        }
        m
    }

    pub(crate) fn window(&self) -> &ProducerWindow {
        &self.window
    }

    /// Whether any stream may have something to send.
    pub(crate) fn has_streams(&self) -> bool {
        !self.streams.is_empty()
    }
}

fn info_of(s: &ActiveStream, status: StreamStatus) -> StreamInfo {
    StreamInfo {
        opaque: s.opaque,
        status,
        last_sent: s.last_sent(),
        backfill_end: s.backfill_end(),
        end: s.end(),
    }
}

fn wire_log(log: &kv_engine::FailoverLog) -> Vec<mcbp::dcp::FailoverEntry> {
    log.entries()
        .iter()
        .map(|e| mcbp::dcp::FailoverEntry {
            vb_uuid: e.vb_uuid,
            seqno: e.seqno,
        })
        .collect()
}

fn failover_log_response(b: &Bucket, vb: Vbid, f: &Frame, opcode: Opcode, out: &mut BytesMut) {
    match b.failover_log(vb) {
        Ok(log) => FailoverLogResponse {
            opcode,
            opaque: f.opaque(),
            status: Status::Success,
            entries: wire_log(&log),
        }
        .encode(out),
        Err(e) => respond(out, f, e.status()),
    }
}

impl ProducerConn {
    /// The vbuckets whose takeover stream is still in its sending phase.
    pub(crate) fn takeovers_sending(&self) -> Vec<Vbid> {
        self.streams
            .iter()
            .filter(|(_, st)| st.takeover_sending())
            .map(|(vb, _)| *vb)
            .collect()
    }
}

/// Applies `dcp_takeover_max_time` (§7.9 step 5): once a takeover stream has been
/// sending for longer than the bound, front-end writes to its vbucket get ETMPFAIL so
/// the stream can catch up. Released when the stream leaves that phase or the
/// connection ends (the guard's drop).
struct TakeoverBackoff<'a> {
    reg: &'a DcpRegistry,
    max: Duration,
    started: BTreeMap<Vbid, Instant>,
    paused: BTreeSet<Vbid>,
}

impl<'a> TakeoverBackoff<'a> {
    fn new(reg: &'a DcpRegistry, max: Duration) -> Self {
        TakeoverBackoff {
            reg,
            max,
            started: BTreeMap::new(),
            paused: BTreeSet::new(),
        }
    }

    fn update(&mut self, now: Instant, sending: &[Vbid]) {
        self.started.retain(|vb, _| sending.contains(vb));
        let gone: Vec<Vbid> = self
            .paused
            .iter()
            .filter(|vb| !sending.contains(vb))
            .copied()
            .collect();
        for vb in gone {
            self.paused.remove(&vb);
            self.reg.set_takeover_backoff(vb, false);
            tracing::info!(vb = %vb, "takeover left its sending phase: front-end writes resume");
        }
        for vb in sending {
            let since = *self.started.entry(*vb).or_insert(now);
            if now.duration_since(since) > self.max && self.paused.insert(*vb) {
                self.reg.set_takeover_backoff(*vb, true);
                tracing::warn!(vb = %vb, max_secs = self.max.as_secs_f64(), "takeover is taking too long: front-end writes get ETMPFAIL until it catches up");
            }
        }
    }

    /// When the next check is due, if a takeover is sending.
    fn next_check(&self) -> Option<Instant> {
        self.started
            .iter()
            .filter(|(vb, _)| !self.paused.contains(vb))
            .map(|(_, t)| *t + self.max)
            .min()
    }
}

impl Drop for TakeoverBackoff<'_> {
    fn drop(&mut self) {
        for vb in &self.paused {
            self.reg.set_takeover_backoff(*vb, false);
        }
    }
}

/// The async shell: reads frames, waits on the bucket's change notification (with
/// a timeout, so a lost wake-up costs at most one poll interval), flushes, runs
/// the noop timer.
pub(super) async fn run(
    s: &DcpPeer,
    open: &DcpOpen,
    info: &Arc<ConnInfo>,
    mut wire: Wire,
    shutdown: &CancellationToken,
) -> Result<(), ConnError> {
    const POLL: Duration = Duration::from_millis(100);
    let entry = open.bucket.clone();
    let state = s.state.clone();
    let cfg = &state.config.dcp;
    let mut core = ProducerConn::new(
        now(),
        ProducerSettings {
            open: open.flags,
            json: s.json,
            idle_timeout: cfg.idle_timeout,
            batch: cfg.backfill_batch.max(1),
        },
    );
    let ctx = Ctx {
        bucket: &entry.bucket,
        reg: &entry.dcp,
        faults: &state.faults,
    };
    let mut backoff = TakeoverBackoff::new(&entry.dcp, cfg.takeover_max_time);
    loop {
        if entry.deleted.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::info!(bucket = %entry.meta.name, "bucket deleted: closing the DCP connection");
            return Ok(());
        }
        let t = now();
        wire.check_stall(&state.faults, t);
        while let Some(f) = wire.next_frame(t)? {
            let actions = core.handle_frame(t, &f, ctx, wire.out())?;
            for a in actions {
                match a {
                    Action::SetVbState { vb, state: st } => {
                        state
                            .set_vbucket_state_off_runtime(&entry, vb, st)
                            .await
                            .map_err(|e| ConnError::SetState {
                                vb,
                                what: e.to_string(),
                            })?;
                        core.rebase(vb, st, entry.dcp.epoch(vb));
                    }
                }
            }
        }
        core.on_timer(t, wire.out())?;
        // Register for the change notification before reading the engine, so a
        // change between the read and the wait is not lost.
        let changed = entry.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        core.fill(ctx, wire.out(), OUT_BUDGET);
        info.publish(
            core.stream_infos(),
            core.window().outstanding(),
            core.window().size(),
        );
        backoff.update(t, &core.takeovers_sending());
        let mut deadline = core.next_deadline();
        if let Some(check) = backoff.next_check() {
            deadline = Some(deadline.map_or(check, |d| d.min(check)));
        }
        if core.has_streams() {
            let poll = t + POLL;
            deadline = Some(deadline.map_or(poll, |d| d.min(poll)));
        }
        match wire
            .wait(deadline, Some(changed), shutdown, &open.replaced)
            .await?
        {
            Wake::Cancelled => {
                wire.flush(Duration::from_millis(100)).await;
                return Ok(());
            }
            Wake::Read | Wake::Wrote | Wake::Changed | Wake::Timer => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcp::active_stream::tests::{bucket, put};
    use mcbp::{FrameDecoder, VbUuid};

    fn settings() -> ProducerSettings {
        ProducerSettings {
            open: OpenFlags::REPLICATION_PRODUCER,
            json: true,
            idle_timeout: Duration::from_secs(10),
            batch: 16,
        }
    }

    fn frames(out: &mut BytesMut) -> Vec<Frame> {
        let d = FrameDecoder::default();
        let mut v = Vec::new();
        while let Some(f) = d.decode(out).expect("decodes") {
            v.push(f);
        }
        v
    }

    fn control(key: &str, value: &str) -> Frame {
        Control::new(Opaque(1), key, value).to_frame()
    }

    fn stream_req(vb: u16, opaque: u32, start: u64, uuid: u64) -> Frame {
        StreamReq {
            vbucket: Vbid(vb),
            opaque: Opaque(opaque),
            flags: StreamFlags(0),
            start: Seqno(start),
            end: Seqno(u64::MAX),
            vb_uuid: VbUuid(uuid),
            snap_start: Seqno(start),
            snap_end: Seqno(start),
            value: bytes::Bytes::new(),
        }
        .to_frame()
    }

    struct Fx {
        _dir: tempfile::TempDir,
        b: Bucket,
        reg: DcpRegistry,
        faults: Faults,
    }

    impl Fx {
        fn new() -> Fx {
            let dir = tempfile::tempdir().expect("tempdir");
            let b = bucket(dir.path());
            Fx {
                _dir: dir,
                b,
                reg: DcpRegistry::new(4),
                faults: Faults::new(true),
            }
        }
        fn ctx(&self) -> Ctx<'_> {
            Ctx {
                bucket: &self.b,
                reg: &self.reg,
                faults: &self.faults,
            }
        }
    }

    fn status_of(c: &mut ProducerConn, fx: &Fx, f: &Frame) -> Status {
        let mut out = BytesMut::new();
        let _ = c
            .handle_frame(Instant::now(), f, fx.ctx(), &mut out)
            .expect("ok");
        frames(&mut out)[0].status()
    }

    /// §6.16: the controls our consumer sends are accepted, unknown keys are EINVAL.
    #[test]
    fn controls_our_consumer_sends_are_accepted_and_others_refused() {
        let fx = Fx::new();
        let mut c = ProducerConn::new(Instant::now(), settings());
        for (k, v) in [
            ("enable_noop", "true"),
            ("set_noop_interval", "0.100000"),
            ("set_priority", "high"),
            ("send_stream_end_on_client_close_stream", "true"),
            ("enable_expiry_opcode", "true"),
            ("include_deleted_user_xattrs", "true"),
            ("v7_dcp_status_codes", "true"),
            ("connection_buffer_size", "1000"),
            ("supports_cursor_dropping_vulcan", "true"),
            ("supports_hifi_MFU", "true"),
        ] {
            assert_eq!(
                status_of(&mut c, &fx, &control(k, v)),
                Status::Success,
                "{k}"
            );
        }
        for (k, v) in [
            ("enable_sync_writes", "true"),
            ("bogus", "1"),
            ("set_noop_interval", "0.01"),
            ("connection_buffer_size", "-1"),
            ("send_stream_end_on_client_close_stream", "false"),
        ] {
            assert_eq!(
                status_of(&mut c, &fx, &control(k, v)),
                Status::Einval,
                "{k}={v}"
            );
        }
    }

    /// §7.4: xattrs requested without noop -> NOT_SUPPORTED, before ERANGE checks.
    #[test]
    fn stream_request_checks_run_in_the_documented_order() {
        let fx = Fx::new();
        put(&fx.b, "a");
        let mut c = ProducerConn::new(Instant::now(), settings());
        // Missing / dead vbucket first.
        assert_eq!(
            status_of(&mut c, &fx, &stream_req(9, 1, 5, 0)),
            Status::NotMyVbucket
        );
        assert_eq!(
            status_of(&mut c, &fx, &stream_req(2, 1, 0, 0)),
            Status::NotMyVbucket
        );
        // Xattrs without noop beats a bad range.
        assert_eq!(
            status_of(&mut c, &fx, &stream_req(0, 1, 5, 0)),
            Status::NotSupported
        );
        let _ = status_of(&mut c, &fx, &control("enable_noop", "true"));
        let mut bad = StreamReq::parse(&stream_req(0, 1, 5, 0)).expect("parses");
        bad.snap_start = Seqno(6);
        assert_eq!(status_of(&mut c, &fx, &bad.to_frame()), Status::Erange);
        // Unknown uuid at start 5 -> rollback to 0.
        assert_eq!(
            status_of(&mut c, &fx, &stream_req(0, 1, 5, 77)),
            Status::Rollback
        );
        // Right uuid but beyond the high seqno -> ERANGE.
        let uuid = fx.b.vb_uuid(Vbid(0)).expect("uuid");
        assert_eq!(
            status_of(&mut c, &fx, &stream_req(0, 1, 1, uuid.0)),
            Status::Success
        );
        assert_eq!(
            status_of(&mut c, &fx, &stream_req(0, 2, 0, 0)),
            Status::KeyEexists
        );
        // Replica is allowed, but not with ACTIVE_VB_ONLY.
        let mut r = StreamReq::parse(&stream_req(1, 3, 0, 0)).expect("parses");
        r.flags = StreamFlags(StreamFlags::ACTIVE_VB_ONLY);
        assert_eq!(status_of(&mut c, &fx, &r.to_frame()), Status::NotMyVbucket);
        assert_eq!(
            status_of(&mut c, &fx, &stream_req(1, 3, 0, 0)),
            Status::Success
        );
        // Receiving its initial disk snapshot -> ETMPFAIL.
        fx.reg.set_receiving_initial_disk(Vbid(3), true);
        fx.b.set_state(Vbid(3), VbState::Active).expect("state");
        assert_eq!(
            status_of(&mut c, &fx, &stream_req(3, 4, 0, 0)),
            Status::Etmpfail
        );
    }

    /// §7.4: the success answer (with the failover log) precedes every stream message;
    /// deletions are V2 with INCLUDE_DELETE_TIMES; close sends STREAM_END(CLOSED).
    #[test]
    fn accepted_stream_answers_first_then_streams_and_close_ends_it() {
        let fx = Fx::new();
        put(&fx.b, "a");
        fx.b.delete(
            Vbid(0),
            b"a",
            mcbp::Cas(0),
            kv_engine::UnixTime::from_secs(1_700_000_001),
        )
        .expect("delete");
        let mut c = ProducerConn::new(Instant::now(), settings());
        let _ = status_of(&mut c, &fx, &control("enable_noop", "true"));
        let _ = status_of(
            &mut c,
            &fx,
            &control("send_stream_end_on_client_close_stream", "true"),
        );
        let mut out = BytesMut::new();
        let _ = c
            .handle_frame(
                Instant::now(),
                &stream_req(0, 0xabc, 0, 0),
                fx.ctx(),
                &mut out,
            )
            .expect("ok");
        c.fill(fx.ctx(), &mut out, OUT_BUDGET);
        let fs = frames(&mut out);
        assert!(fs[0].is_client_response(Opcode::DcpStreamReq));
        assert_eq!(fs[1].opcode(), Opcode::DcpSnapshotMarker);
        let del = Deletion::parse(&fs[2]).expect("deletion");
        assert_eq!(del.opaque, Opaque(0xabc));
        assert!(del.delete_time.is_some_and(|t| t > 0));
        let close = FrameSpec::request(Opcode::DcpCloseStream)
            .vbucket(Vbid(0))
            .to_frame();
        let _ = c
            .handle_frame(Instant::now(), &close, fx.ctx(), &mut out)
            .expect("ok");
        let fs = frames(&mut out);
        assert_eq!(fs[0].status(), Status::Success);
        assert_eq!(
            StreamEnd::parse(&fs[1]).expect("end").reason,
            EndReason::Closed
        );
        assert_eq!(status_of(&mut c, &fx, &close), Status::KeyEnoent);
    }

    /// §7.6: with a window of N, sending stops once N bytes are outstanding.
    #[test]
    fn flow_control_stops_at_the_window_and_resumes_on_buffer_ack() {
        let fx = Fx::new();
        for i in 0..50 {
            put(&fx.b, &format!("k{i}"));
        }
        let mut c = ProducerConn::new(Instant::now(), settings());
        let _ = status_of(&mut c, &fx, &control("enable_noop", "true"));
        let _ = status_of(&mut c, &fx, &control("connection_buffer_size", "200"));
        let _ = status_of(&mut c, &fx, &stream_req(0, 1, 0, 0));
        let mut out = BytesMut::new();
        c.fill(fx.ctx(), &mut out, OUT_BUDGET);
        let first = out.len();
        assert!((200..300).contains(&first), "sent {first}");
        assert_eq!(c.fill(fx.ctx(), &mut out, OUT_BUDGET), 0);
        let ack = BufferAck {
            vbucket: Vbid(0),
            opaque: Opaque(0),
            bytes: u32::try_from(first).expect("small"),
        }
        .to_frame();
        let _ = c
            .handle_frame(Instant::now(), &ack, fx.ctx(), &mut out)
            .expect("ok");
        assert!(c.fill(fx.ctx(), &mut out, OUT_BUDGET) > 0);
    }

    /// §7.7: a noop every interval, never two outstanding; idle timeout closes.
    #[test]
    fn noops_go_out_every_interval_and_silence_closes_the_connection() {
        let fx = Fx::new();
        let t0 = Instant::now();
        let mut c = ProducerConn::new(t0, settings());
        let mut out = BytesMut::new();
        c.on_timer(t0 + Duration::from_secs(60), &mut out)
            .expect("noop off: nothing");
        assert!(out.is_empty());
        let _ = c.handle_frame(t0, &control("enable_noop", "true"), fx.ctx(), &mut out);
        let _ = c.handle_frame(t0, &control("set_noop_interval", "1"), fx.ctx(), &mut out);
        out.clear();
        c.on_timer(t0 + Duration::from_secs(1), &mut out)
            .expect("ok");
        let noop = frames(&mut out).remove(0);
        assert_eq!(noop.opcode(), Opcode::DcpNoop);
        c.on_timer(t0 + Duration::from_secs(3), &mut out)
            .expect("ok");
        assert!(out.is_empty(), "one outstanding at a time");
        let answer = FrameSpec::response_to(&noop, Status::Success).to_frame();
        let _ = c
            .handle_frame(t0 + Duration::from_secs(3), &answer, fx.ctx(), &mut out)
            .expect("ok");
        let wrong = FrameSpec::response(Opcode::DcpNoop, Status::Success)
            .opaque(Opaque(999))
            .to_frame();
        assert!(c.handle_frame(t0, &wrong, fx.ctx(), &mut out).is_err());
        assert!(matches!(
            c.on_timer(t0 + Duration::from_secs(13), &mut out),
            Err(ConnError::Idle(_))
        ));
    }

    /// Issue #4 faults: fixed STREAM_REQ status; STREAM_END right after accepting.
    #[test]
    fn stream_request_faults_change_the_answer_and_end_the_stream() {
        let fx = Fx::new();
        let mut c = ProducerConn::new(Instant::now(), settings());
        let _ = status_of(&mut c, &fx, &control("enable_noop", "true"));
        fx.faults.add(Fault::StreamReqStatus {
            vbucket: 0,
            status: 0x86,
        });
        assert_eq!(
            status_of(&mut c, &fx, &stream_req(0, 1, 0, 0)),
            Status::Etmpfail
        );
        fx.faults.clear();
        fx.faults.add(Fault::EndStreamAfterStreamReq {
            vbucket: 0,
            reason: 2,
        });
        let mut out = BytesMut::new();
        let _ = c
            .handle_frame(Instant::now(), &stream_req(0, 5, 0, 0), fx.ctx(), &mut out)
            .expect("ok");
        let fs = frames(&mut out);
        assert_eq!(fs[0].status(), Status::Success);
        let end = StreamEnd::parse(&fs[1]).expect("end");
        assert_eq!(
            (end.opaque, end.reason),
            (Opaque(5), EndReason::StateChanged)
        );
        assert!(!c.has_streams());
    }
}
