//! The DCP consumer connection (`mcbp-dcp.md` §6.3–6.16, §7.2–7.9;
//! `replication-layer.md` §10): a pure core, [`ConsumerConn`], and its async shell,
//! [`run`].
//!
//! Rules the core guarantees:
//! * nothing is written before the first ADD_STREAM (MB-29117); then the controls go
//!   out one at a time, and ADD_STREAMs wait until every control is answered;
//! * every accepted ADD_STREAM gets exactly one answer, written before any later
//!   message of its stream is processed; where kv_engine stays silent
//!   (`replication-layer.md` §10.3 cases 1–4) we answer with an error instead —
//!   unless the `drop_add_stream_response` fault says otherwise;
//! * a ROLLBACK is handled durably and the STREAM_REQ re-sent with the same opaque.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kv_engine::{Bucket, DeleteSource, EngineError, FailoverEntry, Item, UnixTime};
use mcbp::dcp::{
    flow_control_size, AddStream, AddStreamResponse, BufferAck, Control, Deletion, Expiration,
    MarkerFlags, Mutation, SetVbucketState, SnapshotMarker, StreamFlags, StreamReq,
    StreamReqOutcome, StreamReqResponse,
};
use mcbp::{
    Datatype, Frame, FrameSpec, Message, Opaque, Opcode, Response, Seqno, Status, VbState, Vbid,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

use super::flow::ConsumerAcker;
use super::passive_stream::{PState, PassiveStream};
use super::wire::{now, Wake, Wire};
use super::{ConnError, ConnInfo, DcpOpen, DcpPeer, DcpRegistry, Side, StreamInfo, StreamStatus};
use crate::faults::{Fault, Faults};

/// How often processed bytes are acknowledged when the 20 % rule has not fired.
const ACK_INTERVAL: Duration = Duration::from_secs(5);

/// Status of the ADD_STREAM answer when the stream went away before the STREAM_REQ
/// outcome (closed, ended): kv_engine stays silent here (§10.3 cases 1–2).
pub(crate) const GONE: Status = Status::KeyEnoent;

/// Consumer settings, from the node's DCP config.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerSettings {
    pub(crate) noop_interval: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) buffer_size: u32,
}

/// What the core reads and writes: the engine (replica writes), the registry, the
/// faults, and the wall-clock time the engine stamps tombstones with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub(crate) bucket: &'a Bucket,
    pub(crate) reg: &'a DcpRegistry,
    pub(crate) faults: &'a Faults,
    pub(crate) unix_now: UnixTime,
}

/// What the shell must do, in order, before writing anything further.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub(crate) enum Action {
    /// Roll `vb` back durably to `to`, then call [`ConsumerConn::rollback_done`].
    Rollback { vb: Vbid, opaque: Opaque, to: Seqno },
    /// Set the vbucket's state (takeover) through the node, before the answer
    /// already encoded is written.
    SetVbState { vb: Vbid, state: VbState },
    /// The `delay_add_stream_response` fault: hold the output this long.
    Delay(Duration),
}

#[derive(Debug)]
struct PendingControl {
    opaque: Opaque,
    key: &'static str,
    value: String,
    retried: bool,
}

/// A consumer connection's state.
#[derive(Debug)]
pub(crate) struct ConsumerConn {
    s: ConsumerSettings,
    started: bool,
    controls: VecDeque<(&'static str, String)>,
    control_pending: Option<PendingControl>,
    controls_done: bool,
    queued_adds: VecDeque<AddStream>,
    next_opaque: u32,
    streams: BTreeMap<Vbid, PassiveStream>,
    noop_enabled: bool,
    v7: bool,
    last_recv: Instant,
    acker: ConsumerAcker,
    changed: bool,
}

fn respond(out: &mut BytesMut, req: &Frame, status: Status) {
    Response::to_request(req, status).encode(out);
}

/// `set_noop_interval` as a decimal fraction of seconds (§6.16).
fn noop_interval_value(d: Duration) -> String {
    format!("{:.6}", d.as_secs_f64())
}

impl ConsumerConn {
    pub(crate) fn new(now: Instant, s: ConsumerSettings) -> ConsumerConn {
        let controls = VecDeque::from([
            ("enable_noop", "true".to_string()),
            ("set_noop_interval", noop_interval_value(s.noop_interval)),
            ("set_priority", "high".to_string()),
            ("send_stream_end_on_client_close_stream", "true".to_string()),
            ("enable_expiry_opcode", "true".to_string()),
            ("include_deleted_user_xattrs", "true".to_string()),
            ("v7_dcp_status_codes", "true".to_string()),
            ("connection_buffer_size", s.buffer_size.to_string()),
        ]);
        ConsumerConn {
            s,
            started: false,
            controls,
            control_pending: None,
            controls_done: false,
            queued_adds: VecDeque::new(),
            next_opaque: 0,
            streams: BTreeMap::new(),
            noop_enabled: false,
            v7: false,
            last_recv: now,
            acker: ConsumerAcker::new(now, ACK_INTERVAL),
            changed: false,
        }
    }

    /// A fresh opaque from the connection's counter (shared by controls, stream
    /// requests and buffer acks, §7.2 step 4).
    fn new_opaque(&mut self) -> Opaque {
        self.next_opaque = self.next_opaque.wrapping_add(1);
        Opaque(self.next_opaque)
    }

    /// Whether replica data changed since the last call (the shell then wakes
    /// producers).
    pub(crate) fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    fn not_found(&self) -> Status {
        if self.v7 {
            Status::DcpStreamNotFound
        } else {
            Status::KeyEnoent
        }
    }

    fn opaque_mismatch(&self) -> Status {
        if self.v7 {
            Status::OpaqueNoMatch
        } else {
            Status::KeyEexists
        }
    }

    /// Handles one frame, appending answers to `out`.
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
        let mut actions = Vec::new();
        if f.is_response() {
            match f.opcode() {
                Opcode::DcpControl => self.control_answered(f, ctx, out, &mut actions)?,
                Opcode::DcpStreamReq => self.stream_req_answered(f, ctx, out, &mut actions)?,
                op => debug!(opcode = %op, status = %f.status(), "response ignored"),
            }
        } else {
            match f.opcode() {
                Opcode::DcpAddStream => self.add_stream(f, ctx, out, &mut actions),
                Opcode::DcpCloseStream => self.close_stream(f, out),
                Opcode::DcpNoop => {
                    trace!("noop");
                    respond(out, f, Status::Success);
                }
                Opcode::DcpStreamEnd
                | Opcode::DcpSnapshotMarker
                | Opcode::DcpMutation
                | Opcode::DcpDeletion
                | Opcode::DcpExpiration
                | Opcode::DcpSetVbucketState
                | Opcode::DcpSeqnoAdvanced
                | Opcode::DcpSystemEvent => {
                    self.acker.processed(flow_control_size(f));
                    self.stream_message(f, ctx, out, &mut actions)?;
                }
                Opcode::DcpOpen => respond(out, f, Status::Einval),
                Opcode::DcpStreamReq | Opcode::DcpControl | Opcode::DcpBufferAcknowledgement => {
                    return Err(ConnError::WrongSide {
                        opcode: f.opcode(),
                        side: Side::Consumer,
                    })
                }
                op if op.is_dcp() => {
                    self.acker.processed(flow_control_size(f));
                    respond(out, f, Status::NotSupported);
                }
                Opcode::Noop => respond(out, f, Status::Success),
                _ => respond(out, f, Status::NotSupported),
            }
        }
        self.maybe_ack(now, out);
        Ok(actions)
    }

    fn maybe_ack(&mut self, now: Instant, out: &mut BytesMut) {
        if let Some(bytes) = self.acker.take_ack(now) {
            trace!(bytes, "buffer ack");
            let opaque = self.new_opaque();
            BufferAck {
                vbucket: Vbid(0),
                opaque,
                bytes,
            }
            .encode(out);
        }
    }

    // ---- controls (§6.16) ----

    fn send_next_control(&mut self, ctx: Ctx<'_>, out: &mut BytesMut, actions: &mut Vec<Action>) {
        if let Some((key, value)) = self.controls.pop_front() {
            let opaque = self.new_opaque();
            debug!(key, %value, "control");
            Control::new(opaque, key, &value).encode(out);
            self.control_pending = Some(PendingControl {
                opaque,
                key,
                value,
                retried: false,
            });
            return;
        }
        self.controls_done = true;
        while let Some(a) = self.queued_adds.pop_front() {
            self.process_add(a, true, ctx, out, actions);
        }
    }

    fn control_answered(
        &mut self,
        f: &Frame,
        ctx: Ctx<'_>,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) -> Result<(), ConnError> {
        let Some(p) = self.control_pending.take_if(|p| p.opaque == f.opaque()) else {
            debug!(opaque = %f.opaque(), "control answer for no pending control");
            return Ok(());
        };
        let status = f.status();
        let ok = status.is_success();
        match p.key {
            "enable_noop" => self.noop_enabled = ok,
            "set_noop_interval" if !ok => {
                if p.retried {
                    return Err(ConnError::ControlRefused {
                        key: p.key.into(),
                        status,
                    });
                }
                // Older producers take whole seconds only.
                let secs = self.s.noop_interval.as_secs_f64().round().max(1.0);
                let value = format!("{secs:.0}");
                let opaque = self.new_opaque();
                Control::new(opaque, p.key, &value).encode(out);
                self.control_pending = Some(PendingControl {
                    opaque,
                    key: p.key,
                    value,
                    retried: true,
                });
                return Ok(());
            }
            "v7_dcp_status_codes" => self.v7 = ok,
            "connection_buffer_size" if !ok => {
                return Err(ConnError::ControlRefused {
                    key: p.key.into(),
                    status,
                })
            }
            "connection_buffer_size" => {
                self.acker.enable(p.value.parse().unwrap_or(0));
            }
            _ => {}
        }
        if !ok {
            debug!(key = p.key, value = %p.value, %status, "control refused; feature stays off");
        }
        self.send_next_control(ctx, out, actions);
        Ok(())
    }

    // ---- ADD_STREAM / STREAM_REQ (§7.2, §7.5) ----

    fn add_stream(
        &mut self,
        f: &Frame,
        ctx: Ctx<'_>,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        let Ok(a) = AddStream::parse(f) else {
            return respond(out, f, Status::Einval);
        };
        if a.flags.has(StreamFlags::NO_VALUE) || a.flags.has(StreamFlags::CACHE_TRANSFER) {
            return respond(out, f, Status::Einval);
        }
        if !self.started {
            self.started = true;
            info!(vb = %a.vbucket, "first ADD_STREAM: negotiating controls");
            self.send_next_control(ctx, out, actions);
        }
        if !self.controls_done {
            self.queued_adds.push_back(a);
            return;
        }
        self.process_add(a, false, ctx, out, actions);
    }

    fn process_add(
        &mut self,
        a: AddStream,
        queued: bool,
        ctx: Ctx<'_>,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        let vb = a.vbucket;
        // A queued ADD_STREAM failing locally answers with stream opaque 0 (§6.3).
        let refuse = |out: &mut BytesMut, status: Status| {
            debug!(%vb, %status, "ADD_STREAM refused");
            AddStreamResponse {
                opaque: a.opaque,
                status,
                stream_opaque: queued.then_some(Opaque(0)),
            }
            .encode(out);
        };
        match ctx.bucket.vbucket_state(vb) {
            Ok(VbState::Replica | VbState::Pending | VbState::Dead) => {}
            Ok(VbState::Active) | Err(_) => return refuse(out, Status::NotMyVbucket),
        }
        if self.streams.get(&vb).is_some_and(PassiveStream::is_live) {
            return refuse(out, Status::KeyEexists);
        }
        if let Some(old) = self.streams.remove(&vb) {
            self.clear_initial_disk(ctx, &old);
        }
        let w = self.new_opaque();
        let mut s = PassiveStream::new(vb, w, a.opaque, a.flags);
        debug!(%vb, add_opaque = %a.opaque, stream_opaque = %w, flags = a.flags.0, "ADD_STREAM accepted");
        if let Err(status) = send_stream_req(&mut s, ctx, out) {
            self.answer_add(&mut s, status, ctx, out, actions);
            s.kill();
        }
        self.streams.insert(vb, s);
    }

    /// The one answer of an accepted ADD_STREAM (§6.3, §1.7).
    fn answer_add(
        &mut self,
        s: &mut PassiveStream,
        status: Status,
        ctx: Ctx<'_>,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        if std::mem::replace(&mut s.answered, true) {
            return;
        }
        let vb = s.vb;
        if ctx.faults.enabled() {
            if ctx
                .faults
                .find(|f| {
                    matches!(f, Fault::DropAddStreamResponse { vbucket } if *vbucket == vb.0)
                        .then_some(())
                })
                .is_some()
            {
                warn!(%vb, %status, "fault: ADD_STREAM answer dropped");
                return;
            }
            if let Some(ms) = ctx.faults.find(|f| match f {
                Fault::DelayAddStreamResponse { vbucket, ms } if *vbucket == vb.0 => Some(*ms),
                _ => None,
            }) {
                warn!(%vb, ms, "fault: ADD_STREAM answer delayed");
                actions.push(Action::Delay(Duration::from_millis(ms)));
            }
        }
        debug!(%vb, %status, stream_opaque = %s.opaque, "ADD_STREAM answered");
        AddStreamResponse {
            opaque: s.add_opaque,
            status,
            stream_opaque: Some(s.opaque),
        }
        .encode(out);
    }

    fn stream_req_answered(
        &mut self,
        f: &Frame,
        ctx: Ctx<'_>,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) -> Result<(), ConnError> {
        let w = f.opaque();
        let Some(vb) = self.streams.values().find(|s| s.opaque == w).map(|s| s.vb) else {
            return Err(ConnError::UnknownOpaque(w));
        };
        let resp = StreamReqResponse::parse(f).map_err(|e| ConnError::Malformed {
            opcode: f.opcode(),
            reason: e.to_string(),
        })?;
        let Some(mut s) = self.streams.remove(&vb) else {
            return Err(ConnError::UnknownOpaque(w));
        };
        self.on_stream_req_outcome(&mut s, resp.outcome, ctx, out, actions);
        self.streams.insert(vb, s);
        Ok(())
    }

    fn on_stream_req_outcome(
        &mut self,
        s: &mut PassiveStream,
        outcome: StreamReqOutcome,
        ctx: Ctx<'_>,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        let vb = s.vb;
        if s.state != PState::AwaitingStreamReq {
            // Closed while the request was in flight: its answer went out at the close.
            debug!(%vb, state = ?s.state, "stream request answer for a stream no longer waiting; ignored");
            return;
        }
        match outcome {
            StreamReqOutcome::Success { failover_log } => {
                if !matches!(
                    ctx.bucket.vbucket_state(vb),
                    Ok(VbState::Replica | VbState::Pending)
                ) {
                    // §10.3 case 3: kv_engine would skip the answer.
                    self.answer_add(s, Status::NotMyVbucket, ctx, out, actions);
                    s.kill();
                    return;
                }
                let log = failover_log
                    .iter()
                    .map(|e| FailoverEntry {
                        vb_uuid: e.vb_uuid,
                        seqno: e.seqno,
                    })
                    .collect();
                if ctx.bucket.set_failover_log(vb, log).is_err() {
                    self.answer_add(s, Status::NotMyVbucket, ctx, out, actions);
                    s.kill();
                    return;
                }
                s.state = PState::Reading;
                s.last_seqno = s.requested_start;
                self.answer_add(s, Status::Success, ctx, out, actions);
            }
            StreamReqOutcome::Rollback { to } => {
                let Ok(log) = ctx.bucket.failover_log(vb) else {
                    self.answer_add(s, Status::NotMyVbucket, ctx, out, actions);
                    s.kill();
                    return;
                };
                let entries = log.entries();
                if to == Seqno(0)
                    && entries.len() > 1
                    && entries
                        .first()
                        .is_some_and(|e| e.seqno == s.requested_start)
                {
                    // §7.5 (MB-21488): drop the newest entry and retry with the next uuid.
                    debug!(%vb, "rollback to 0 at a branch point: dropping the newest failover entry");
                    let rest = entries[1..].to_vec();
                    let _ = ctx.bucket.set_failover_log(vb, rest);
                    if let Err(status) = send_stream_req(s, ctx, out) {
                        self.answer_add(s, status, ctx, out, actions);
                        s.kill();
                    }
                    return;
                }
                info!(%vb, %to, "producer asked for a rollback");
                s.state = PState::RollingBack;
                actions.push(Action::Rollback {
                    vb,
                    opaque: s.opaque,
                    to,
                });
            }
            StreamReqOutcome::Refused(status) => {
                debug!(%vb, %status, "stream request refused by the producer");
                self.answer_add(s, status, ctx, out, actions);
                s.kill();
            }
        }
    }

    /// The shell finished (or failed) the rollback of `vb`.
    pub(crate) fn rollback_done(
        &mut self,
        vb: Vbid,
        opaque: Opaque,
        result: Result<Seqno, Status>,
        ctx: Ctx<'_>,
        out: &mut BytesMut,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        self.changed = true;
        let Some(mut s) = self.streams.remove(&vb) else {
            return actions;
        };
        if s.opaque != opaque || s.state != PState::RollingBack {
            self.streams.insert(vb, s);
            return actions;
        }
        match result {
            Ok(high) => {
                info!(%vb, %high, "rolled back; requesting the stream again");
                s.state = PState::AwaitingStreamReq;
                if let Err(status) = send_stream_req(&mut s, ctx, out) {
                    self.answer_add(&mut s, status, ctx, out, &mut actions);
                    s.kill();
                }
            }
            Err(status) => {
                // §10.3 case 4: kv_engine would leave the ADD_STREAM unanswered.
                warn!(%vb, %status, "rollback failed; failing the stream");
                self.answer_add(&mut s, status, ctx, out, &mut actions);
                s.kill();
            }
        }
        self.streams.insert(vb, s);
        actions
    }

    fn close_stream(&mut self, f: &Frame, out: &mut BytesMut) {
        let vb = f.vbucket();
        let status = self.not_found();
        let Some(s) = self.streams.get_mut(&vb) else {
            return respond(out, f, status);
        };
        if s.is_pending() && !s.answered {
            // §10.3 case 2: kv_engine would never answer this ADD_STREAM.
            s.answered = true;
            debug!(%vb, "closed while pending: answering the ADD_STREAM now");
            AddStreamResponse {
                opaque: s.add_opaque,
                status: GONE,
                stream_opaque: Some(s.opaque),
            }
            .encode(out);
        }
        debug!(%vb, opaque = %s.opaque, "stream closed by the proxy; kept until STREAM_END");
        s.kill();
        respond(out, f, Status::Success);
    }

    // ---- stream messages ----

    fn clear_initial_disk(&self, ctx: Ctx<'_>, s: &PassiveStream) {
        if s.initial_disk_end.is_some() {
            ctx.reg.set_receiving_initial_disk(s.vb, false);
        }
    }

    fn stream_message(
        &mut self,
        f: &Frame,
        ctx: Ctx<'_>,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) -> Result<(), ConnError> {
        let vb = f.vbucket();
        let op = f.opcode();
        let is_end = op == Opcode::DcpStreamEnd;
        let (not_found, mismatch) = (self.not_found(), self.opaque_mismatch());
        let Some(s) = self.streams.get_mut(&vb) else {
            debug!(%vb, opcode = %op, "message for no stream");
            respond(out, f, not_found);
            return Ok(());
        };
        if f.opaque() != s.opaque {
            if is_end {
                debug!(%vb, opaque = %f.opaque(), "stale STREAM_END ignored");
            } else {
                debug!(%vb, opcode = %op, opaque = %f.opaque(), "message for an older stream");
                respond(out, f, mismatch);
            }
            return Ok(());
        }
        match s.state {
            PState::Dead => {
                if is_end {
                    debug!(%vb, "STREAM_END for a closed stream: removed");
                    if let Some(old) = self.streams.remove(&vb) {
                        self.clear_initial_disk(ctx, &old);
                    }
                }
                return Ok(());
            }
            PState::AwaitingStreamReq | PState::RollingBack => {
                if is_end {
                    // §10.3 case 1 cannot happen here (we answer synchronously), but a
                    // STREAM_END before the STREAM_REQ answer still gets the one answer.
                    if let Some(mut old) = self.streams.remove(&vb) {
                        self.answer_add(&mut old, GONE, ctx, out, actions);
                        self.clear_initial_disk(ctx, &old);
                    }
                } else {
                    debug!(%vb, opcode = %op, "stream message before the stream request answer; dropped");
                }
                return Ok(());
            }
            PState::Reading => {}
        }
        let malformed = |e: mcbp::BodyError| ConnError::Malformed {
            opcode: op,
            reason: e.to_string(),
        };
        match op {
            Opcode::DcpStreamEnd => {
                debug!(%vb, "stream ended by the producer");
                if let Some(old) = self.streams.remove(&vb) {
                    self.clear_initial_disk(ctx, &old);
                }
            }
            Opcode::DcpSnapshotMarker => {
                let m = SnapshotMarker::parse(f).map_err(malformed)?;
                match ctx
                    .bucket
                    .apply_snapshot_marker(vb, m.start, m.end, m.flags.0)
                {
                    Ok(()) => {}
                    Err(e) => return self.apply_failed(vb, e, ctx),
                }
                let Some(s) = self.streams.get_mut(&vb) else {
                    return Ok(());
                };
                if m.flags.has(MarkerFlags::DISK) && s.requested_start == Seqno(0) {
                    s.initial_disk_end = Some(m.end);
                    ctx.reg.set_receiving_initial_disk(vb, true);
                } else if s.initial_disk_end.take().is_some() {
                    ctx.reg.set_receiving_initial_disk(vb, false);
                }
                let due = s.on_marker(m.end, m.flags.has(MarkerFlags::ACK));
                let opaque = s.opaque;
                ack_markers(opaque, due, out);
            }
            Opcode::DcpMutation | Opcode::DcpDeletion | Opcode::DcpExpiration => {
                let (item, kind) = item_of(f).map_err(malformed)?;
                let item = inflate(item).map_err(|what| ConnError::Replica { vb, what })?;
                let seqno = item.by_seqno;
                let res = match kind {
                    Kind::Mutation => ctx.bucket.apply_mutation(vb, item, ctx.unix_now),
                    Kind::Deletion => ctx.bucket.apply_deletion(vb, item, ctx.unix_now),
                    Kind::Expiration => ctx.bucket.apply_expiration(vb, item, ctx.unix_now),
                };
                if let Err(e) = res {
                    return self.apply_failed(vb, e, ctx);
                }
                self.changed = true;
                let Some(s) = self.streams.get_mut(&vb) else {
                    return Ok(());
                };
                if s.initial_disk_end.is_some_and(|e| seqno >= e) {
                    s.initial_disk_end = None;
                    ctx.reg.set_receiving_initial_disk(vb, false);
                }
                let due = s.on_item(seqno);
                let opaque = s.opaque;
                ack_markers(opaque, due, out);
            }
            Opcode::DcpSetVbucketState => {
                let m = SetVbucketState::parse(f).map_err(malformed)?;
                info!(%vb, state = %m.state, "takeover: producer sets the vbucket state");
                actions.push(Action::SetVbState { vb, state: m.state });
                // Encoded now, written after the shell applied the state.
                respond(out, f, Status::Success);
            }
            _ => trace!(%vb, opcode = %op, "ignored (no collections, no sync writes)"),
        }
        Ok(())
    }

    /// The engine refused a replica write. NOT_MY_VBUCKET means the vbucket left
    /// replica/pending (promoted or deleted outside a takeover): the stream is
    /// closed silently (§7.8). Anything else leaves the replica unable to follow the
    /// producer: the connection is dropped so the proxy re-creates it.
    fn apply_failed(&mut self, vb: Vbid, e: EngineError, ctx: Ctx<'_>) -> Result<(), ConnError> {
        if e.status() == Status::NotMyVbucket {
            debug!(%vb, "vbucket no longer a replica: stream closed silently");
            if let Some(s) = self.streams.get_mut(&vb) {
                let had_disk = s.initial_disk_end.is_some();
                s.kill();
                if had_disk {
                    ctx.reg.set_receiving_initial_disk(vb, false);
                }
            }
            return Ok(());
        }
        Err(ConnError::Replica {
            vb,
            what: e.to_string(),
        })
    }

    /// Idle check (§7.7) and the periodic buffer ack.
    ///
    /// # Errors
    /// [`ConnError::Idle`].
    pub(crate) fn on_timer(&mut self, now: Instant, out: &mut BytesMut) -> Result<(), ConnError> {
        if self.noop_enabled && now.saturating_duration_since(self.last_recv) >= self.s.idle_timeout
        {
            return Err(ConnError::Idle(self.s.idle_timeout));
        }
        self.maybe_ack(now, out);
        Ok(())
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let idle = self
            .noop_enabled
            .then(|| self.last_recv + self.s.idle_timeout);
        match (idle, self.acker.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn stream_infos(&self) -> BTreeMap<Vbid, StreamInfo> {
        self.streams
            .iter()
            .map(|(vb, s)| {
                let status = match s.state {
                    PState::Dead => StreamStatus::Dead,
                    PState::Reading => StreamStatus::InMemory,
                    PState::AwaitingStreamReq | PState::RollingBack => StreamStatus::Backfilling,
                };
                (
                    *vb,
                    StreamInfo {
                        opaque: s.opaque,
                        status,
                        last_sent: s.last_seqno,
                        backfill_end: s.requested_start,
                        end: Seqno(u64::MAX),
                    },
                )
            })
            .collect()
    }

    pub(crate) fn acker(&self) -> &ConsumerAcker {
        &self.acker
    }

    /// The open streams and their states (tests).
    #[cfg(test)]
    pub(crate) fn stream_state(&self, vb: Vbid) -> Option<PState> {
        self.streams.get(&vb).map(|s| s.state)
    }
}

/// STREAM_REQ(W) from the replica's position (§7.2 step 5): start = high seqno,
/// uuid = newest failover uuid (0 when start is 0), snapshot range of the snapshot
/// being received (collapsed when none or complete), end = 2^64-1, no value.
fn send_stream_req(s: &mut PassiveStream, ctx: Ctx<'_>, out: &mut BytesMut) -> Result<(), Status> {
    let p = ctx
        .bucket
        .stream_request_position(s.vb)
        .map_err(|e| e.status())?;
    debug!(vb = %s.vb, opaque = %s.opaque, start = %p.start, uuid = %p.vb_uuid, snap_start = %p.snap_start, snap_end = %p.snap_end, "stream request");
    StreamReq {
        vbucket: s.vb,
        opaque: s.opaque,
        flags: s.flags,
        start: p.start,
        end: Seqno(u64::MAX),
        vb_uuid: p.vb_uuid,
        snap_start: p.snap_start,
        snap_end: p.snap_end,
        value: Bytes::new(),
    }
    .encode(out);
    s.requested_start = p.start;
    Ok(())
}

/// Answers `n` snapshot markers with ACK (§6.8: opcode 0x56, stream opaque, SUCCESS).
fn ack_markers(opaque: Opaque, n: usize, out: &mut BytesMut) {
    for _ in 0..n {
        FrameSpec::response(Opcode::DcpSnapshotMarker, Status::Success)
            .opaque(opaque)
            .encode(out);
    }
}

enum Kind {
    Mutation,
    Deletion,
    Expiration,
}

fn item_of(f: &Frame) -> Result<(Item, Kind), mcbp::BodyError> {
    let base = |key: Bytes, value: Bytes, cas, datatype: Datatype, by_seqno, rev_seqno| Item {
        key,
        value,
        cas,
        flags: 0,
        expiry: 0,
        datatype: datatype.0,
        rev_seqno,
        by_seqno,
        deleted: false,
        delete_source: DeleteSource::Explicit,
        delete_time: 0,
    };
    Ok(match f.opcode() {
        Opcode::DcpMutation => {
            let m = Mutation::parse(f)?;
            let mut i = base(m.key, m.value, m.cas, m.datatype, m.by_seqno, m.rev_seqno);
            i.flags = m.flags;
            i.expiry = m.expiration;
            (i, Kind::Mutation)
        }
        Opcode::DcpDeletion => {
            let d = Deletion::parse(f)?;
            let mut i = base(d.key, d.value, d.cas, d.datatype, d.by_seqno, d.rev_seqno);
            i.deleted = true;
            i.delete_time = d.delete_time.unwrap_or(0);
            (i, Kind::Deletion)
        }
        _ => {
            let x = Expiration::parse(f)?;
            let mut i = base(x.key, x.value, x.cas, x.datatype, x.by_seqno, x.rev_seqno);
            i.deleted = true;
            i.delete_source = DeleteSource::Expired;
            i.delete_time = x.delete_time;
            (i, Kind::Expiration)
        }
    })
}

/// The store holds plain values: a Snappy value is inflated on receipt.
fn inflate(mut item: Item) -> Result<Item, String> {
    let dt = Datatype(item.datatype);
    if dt.contains(Datatype::SNAPPY) {
        let plain = snap::raw::Decoder::new()
            .decompress_vec(&item.value)
            .map_err(|e| format!("invalid snappy value: {e}"))?;
        item.value = Bytes::from(plain);
        item.datatype = dt.without(Datatype::SNAPPY).0;
    }
    Ok(item)
}

/// The async shell.
pub(super) async fn run(
    s: &DcpPeer,
    open: &DcpOpen,
    info: &Arc<ConnInfo>,
    mut wire: Wire,
    shutdown: &CancellationToken,
) -> Result<(), ConnError> {
    let entry = open.bucket.clone();
    let state = s.state.clone();
    let cfg = &state.config.dcp;
    let mut core = ConsumerConn::new(
        now(),
        ConsumerSettings {
            noop_interval: cfg.noop_interval,
            idle_timeout: cfg.idle_timeout,
            buffer_size: cfg.consumer_buffer_size,
        },
    );
    loop {
        if entry.deleted.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::info!(bucket = %entry.meta.name, "bucket deleted: closing the DCP connection");
            return Ok(());
        }
        let t = now();
        wire.check_stall(&state.faults, t);
        while let Some(f) = wire.next_frame(t)? {
            let ctx = Ctx {
                bucket: &entry.bucket,
                reg: &entry.dcp,
                faults: &state.faults,
                unix_now: crate::state::now(),
            };
            let mut actions: VecDeque<Action> = core.handle_frame(t, &f, ctx, wire.out())?.into();
            while let Some(a) = actions.pop_front() {
                match a {
                    Action::Rollback { vb, opaque, to } => {
                        let e = entry.clone();
                        let res = tokio::task::spawn_blocking(move || e.bucket.rollback(vb, to))
                            .await
                            .map_err(|_| Status::Einternal)
                            .and_then(|r| r.map_err(|e| e.status()))
                            .map(kv_engine::RollbackOutcome::high_seqno);
                        entry.dcp.bump_epoch(vb);
                        entry.notify_change();
                        let ctx = Ctx {
                            unix_now: crate::state::now(),
                            ..ctx
                        };
                        actions.extend(core.rollback_done(vb, opaque, res, ctx, wire.out()));
                    }
                    Action::SetVbState { vb, state: st } => {
                        state
                            .set_vbucket_state_off_runtime(&entry, vb, st)
                            .await
                            .map_err(|e| ConnError::SetState {
                                vb,
                                what: e.to_string(),
                            })?;
                    }
                    Action::Delay(d) => {
                        tokio::select! {
                            () = tokio::time::sleep(d) => {}
                            () = shutdown.cancelled() => return Ok(()),
                            () = open.replaced.cancelled() => return Ok(()),
                        }
                    }
                }
            }
        }
        if core.take_changed() {
            entry.notify_change();
        }
        core.on_timer(now(), wire.out())?;
        info.publish(
            core.stream_infos(),
            core.acker().unacked(),
            u64::from(cfg.consumer_buffer_size),
        );
        match wire
            .wait(core.next_deadline(), None, shutdown, &open.replaced)
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
    use crate::dcp::active_stream::tests::bucket;
    use mcbp::dcp::{EndReason, StreamEnd};
    use mcbp::{Cas, FrameDecoder, VbUuid};

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
                unix_now: UnixTime::from_secs(1_700_000_000),
            }
        }
    }

    fn settings() -> ConsumerSettings {
        ConsumerSettings {
            noop_interval: Duration::from_millis(100),
            idle_timeout: Duration::from_secs(10),
            buffer_size: 1000,
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

    fn add_stream(vb: u16, flags: u32) -> Frame {
        AddStream {
            vbucket: Vbid(vb),
            opaque: Opaque(u32::from(vb) + 100),
            flags: StreamFlags(flags),
        }
        .to_frame()
    }

    fn feed(c: &mut ConsumerConn, fx: &Fx, f: &Frame) -> (Vec<Frame>, Vec<Action>) {
        let mut out = BytesMut::new();
        let a = c
            .handle_frame(Instant::now(), f, fx.ctx(), &mut out)
            .expect("no connection error");
        (frames(&mut out), a)
    }

    /// Answers every control with `status_for(key)` until none is left; returns what
    /// followed the last control answer.
    fn negotiate(
        c: &mut ConsumerConn,
        fx: &Fx,
        mut pending: Vec<Frame>,
        status_for: impl Fn(&str, &str) -> Status,
    ) -> (Vec<String>, Vec<Frame>) {
        let mut keys = Vec::new();
        loop {
            let Some(ctl) = pending
                .iter()
                .find(|f| f.opcode() == Opcode::DcpControl)
                .cloned()
            else {
                return (keys, pending);
            };
            assert_eq!(
                pending
                    .iter()
                    .filter(|f| f.opcode() == Opcode::DcpControl)
                    .count(),
                1,
                "one control at a time"
            );
            let k = String::from_utf8_lossy(ctl.key()).into_owned();
            let v = String::from_utf8_lossy(ctl.value()).into_owned();
            keys.push(format!("{k}={v}"));
            let answer = FrameSpec::response_to(&ctl, status_for(&k, &v)).to_frame();
            pending = feed(c, fx, &answer).0;
        }
    }

    fn ready(c: &mut ConsumerConn, fx: &Fx, vb: u16) -> Frame {
        let (out, _) = feed(c, fx, &add_stream(vb, 0));
        let (_, rest) = negotiate(c, fx, out, |_, _| Status::Success);
        let req = rest
            .into_iter()
            .find(|f| f.opcode() == Opcode::DcpStreamReq);
        req.expect("stream request after the controls")
    }

    fn success(req: &Frame, uuid: u64) -> Frame {
        StreamReqResponse {
            opaque: req.opaque(),
            outcome: StreamReqOutcome::Success {
                failover_log: vec![mcbp::dcp::FailoverEntry {
                    vb_uuid: VbUuid(uuid),
                    seqno: Seqno(0),
                }],
            },
        }
        .to_frame()
    }

    /// §10.1: nothing before the first ADD_STREAM; then the controls one at a time in
    /// the order; the STREAM_REQ only after the last answer.
    #[test]
    fn controls_wait_for_the_first_add_stream_and_go_one_at_a_time_in_order() {
        let fx = Fx::new();
        let mut c = ConsumerConn::new(Instant::now(), settings());
        let mut out = BytesMut::new();
        c.on_timer(Instant::now() + Duration::from_secs(60), &mut out)
            .expect("ok");
        assert!(out.is_empty(), "nothing written before ADD_STREAM");
        let (first, _) = feed(&mut c, &fx, &add_stream(1, 0));
        assert_eq!(first.len(), 1);
        let (keys, rest) = negotiate(&mut c, &fx, first, |_, _| Status::Success);
        assert_eq!(
            keys,
            [
                "enable_noop=true",
                "set_noop_interval=0.100000",
                "set_priority=high",
                "send_stream_end_on_client_close_stream=true",
                "enable_expiry_opcode=true",
                "include_deleted_user_xattrs=true",
                "v7_dcp_status_codes=true",
                "connection_buffer_size=1000",
            ]
        );
        let req = StreamReq::parse(&rest[0]).expect("stream request");
        assert_eq!(
            (req.vbucket, req.start, req.vb_uuid),
            (Vbid(1), Seqno(0), VbUuid(0))
        );
        assert!(req.value.is_empty());
    }

    /// §6.16: a refused decimal noop interval is retried once as whole seconds; a
    /// second refusal, or a refused buffer size, disconnects.
    #[test]
    fn noop_interval_falls_back_to_whole_seconds_then_disconnects() {
        let fx = Fx::new();
        let mut c = ConsumerConn::new(Instant::now(), settings());
        let (out, _) = feed(&mut c, &fx, &add_stream(1, 0));
        let (out, _) = feed(
            &mut c,
            &fx,
            &FrameSpec::response_to(&out[0], Status::Success).to_frame(),
        );
        assert_eq!(out[0].value(), b"0.100000");
        let (out, _) = feed(
            &mut c,
            &fx,
            &FrameSpec::response_to(&out[0], Status::Einval).to_frame(),
        );
        assert_eq!(out[0].key(), b"set_noop_interval");
        assert_eq!(out[0].value(), b"1");
        let mut o = BytesMut::new();
        let again = FrameSpec::response_to(&out[0], Status::Einval).to_frame();
        assert!(matches!(
            c.handle_frame(Instant::now(), &again, fx.ctx(), &mut o),
            Err(ConnError::ControlRefused { .. })
        ));
    }

    /// §7.2/§1.7: ADD_STREAM answered after the failover log is adopted, with the
    /// stream opaque; NMVB for an active vbucket; KEY_EEXISTS for a live stream.
    #[test]
    fn add_stream_is_answered_once_after_the_stream_request_succeeds() {
        let fx = Fx::new();
        let mut c = ConsumerConn::new(Instant::now(), settings());
        let req = ready(&mut c, &fx, 1);
        let (out, _) = feed(&mut c, &fx, &success(&req, 0x77));
        let a = AddStreamResponse::parse(&out[0]).expect("answer");
        assert_eq!(
            (a.opaque, a.status, a.stream_opaque),
            (Opaque(101), Status::Success, Some(req.opaque()))
        );
        assert_eq!(fx.b.vb_uuid(Vbid(1)).expect("uuid"), VbUuid(0x77));
        let (out, _) = feed(&mut c, &fx, &add_stream(1, 0));
        assert_eq!(out[0].status(), Status::KeyEexists);
        let (out, _) = feed(&mut c, &fx, &add_stream(0, 0));
        assert_eq!(out[0].status(), Status::NotMyVbucket);
        assert!(out[0].extras().is_empty());
    }

    /// §7.5: ROLLBACK -> durable rollback (by the shell) -> STREAM_REQ again with the
    /// same opaque; no ADD_STREAM answer until the final outcome.
    #[test]
    fn rollback_re_requests_with_the_same_opaque() {
        let fx = Fx::new();
        let mut c = ConsumerConn::new(Instant::now(), settings());
        let req = ready(&mut c, &fx, 1);
        let rb = StreamReqResponse {
            opaque: req.opaque(),
            outcome: StreamReqOutcome::Rollback { to: Seqno(0) },
        }
        .to_frame();
        let (out, actions) = feed(&mut c, &fx, &rb);
        assert!(out.is_empty(), "no ADD_STREAM answer on ROLLBACK");
        assert_eq!(
            actions,
            vec![Action::Rollback {
                vb: Vbid(1),
                opaque: req.opaque(),
                to: Seqno(0)
            }]
        );
        let mut o = BytesMut::new();
        let _ = c.rollback_done(Vbid(1), req.opaque(), Ok(Seqno(0)), fx.ctx(), &mut o);
        let again = frames(&mut o);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].opcode(), Opcode::DcpStreamReq);
        assert_eq!(again[0].opaque(), req.opaque());
        // A failed rollback answers the ADD_STREAM instead of going silent.
        let (_, actions) = feed(&mut c, &fx, &rb);
        assert_eq!(actions.len(), 1);
        let _ = c.rollback_done(
            Vbid(1),
            req.opaque(),
            Err(Status::NotMyVbucket),
            fx.ctx(),
            &mut o,
        );
        let a = AddStreamResponse::parse(&frames(&mut o)[0]).expect("answer");
        assert_eq!(a.status, Status::NotMyVbucket);
    }

    /// §7.5 (MB-21488): rollback to 0 at the newest branch point drops that entry and
    /// retries with the previous uuid, without discarding data.
    #[test]
    fn rollback_to_zero_at_a_branch_point_drops_the_newest_failover_entry() {
        let fx = Fx::new();
        fx.b.set_failover_log(
            Vbid(1),
            vec![
                FailoverEntry {
                    vb_uuid: VbUuid(2),
                    seqno: Seqno(0),
                },
                FailoverEntry {
                    vb_uuid: VbUuid(1),
                    seqno: Seqno(0),
                },
            ],
        )
        .expect("log");
        let mut c = ConsumerConn::new(Instant::now(), settings());
        let req = ready(&mut c, &fx, 1);
        let rb = StreamReqResponse {
            opaque: req.opaque(),
            outcome: StreamReqOutcome::Rollback { to: Seqno(0) },
        }
        .to_frame();
        let (out, actions) = feed(&mut c, &fx, &rb);
        assert!(actions.is_empty());
        assert_eq!(out[0].opcode(), Opcode::DcpStreamReq);
        assert_eq!(fx.b.failover_log(Vbid(1)).expect("log").len(), 1);
    }

    /// §10.3 case 2 (IMPROVE): CLOSE_STREAM while the request is in flight answers the
    /// ADD_STREAM at once; the late STREAM_REQ answer is absorbed.
    #[test]
    fn close_while_pending_answers_the_add_stream_exactly_once() {
        let fx = Fx::new();
        let mut c = ConsumerConn::new(Instant::now(), settings());
        let req = ready(&mut c, &fx, 1);
        let close = FrameSpec::request(Opcode::DcpCloseStream)
            .vbucket(Vbid(1))
            .to_frame();
        let (out, _) = feed(&mut c, &fx, &close);
        assert_eq!(
            AddStreamResponse::parse(&out[0]).expect("answer").status,
            GONE
        );
        assert_eq!(out[1].status(), Status::Success);
        let (out, _) = feed(&mut c, &fx, &success(&req, 1));
        assert!(out.is_empty(), "exactly one answer");
        assert_eq!(c.stream_state(Vbid(1)), Some(PState::Dead));
        // Messages of the dead stream are absorbed; its STREAM_END removes it.
        let end = StreamEnd {
            vbucket: Vbid(1),
            opaque: req.opaque(),
            reason: EndReason::Closed,
        }
        .to_frame();
        let (out, _) = feed(&mut c, &fx, &end);
        assert!(out.is_empty());
        assert_eq!(c.stream_state(Vbid(1)), None);
        // No stream: 0x0a now that v7 codes are on.
        let (out, _) = feed(&mut c, &fx, &close);
        assert_eq!(out[0].status(), Status::DcpStreamNotFound);
    }

    /// §6.8/§6.13: data applied with the producer's metadata, ACK markers answered
    /// after their end, SET_VBUCKET_STATE applied and answered; stale STREAM_END ignored.
    #[test]
    fn data_is_applied_acks_and_takeover_state_are_answered() {
        let fx = Fx::new();
        let mut c = ConsumerConn::new(Instant::now(), settings());
        let req = ready(&mut c, &fx, 1);
        let w = req.opaque();
        let _ = feed(&mut c, &fx, &success(&req, 5));
        let marker = SnapshotMarker {
            vbucket: Vbid(1),
            opaque: w,
            start: Seqno(0),
            end: Seqno(2),
            flags: MarkerFlags(MarkerFlags::MEMORY | MarkerFlags::ACK),
            version: mcbp::dcp::MarkerVersion::V1,
        }
        .to_frame();
        assert!(feed(&mut c, &fx, &marker).0.is_empty());
        let m = Mutation {
            vbucket: Vbid(1),
            opaque: w,
            cas: Cas(42),
            datatype: Datatype::JSON,
            by_seqno: Seqno(1),
            rev_seqno: 3,
            flags: 9,
            expiration: 0,
            lock_time: 0,
            nru: 0,
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"{}"),
        }
        .to_frame();
        assert!(feed(&mut c, &fx, &m).0.is_empty());
        assert!(c.take_changed());
        let d = Deletion {
            vbucket: Vbid(1),
            opaque: w,
            cas: Cas(43),
            datatype: Datatype::RAW,
            by_seqno: Seqno(2),
            rev_seqno: 4,
            delete_time: Some(1_700_000_000),
            key: Bytes::from_static(b"k"),
            value: Bytes::new(),
        }
        .to_frame();
        let (out, _) = feed(&mut c, &fx, &d);
        assert!(out[0].is_client_response(Opcode::DcpSnapshotMarker));
        assert_eq!(out[0].opaque(), w);
        let item = &fx.b.items_since(Vbid(1), Seqno(0), 10).expect("items")[0];
        assert_eq!((item.cas, item.rev_seqno, item.deleted), (Cas(43), 4, true));
        let svs = SetVbucketState {
            vbucket: Vbid(1),
            opaque: w,
            state: VbState::Pending,
        }
        .to_frame();
        let (out, actions) = feed(&mut c, &fx, &svs);
        assert_eq!(
            actions,
            vec![Action::SetVbState {
                vb: Vbid(1),
                state: VbState::Pending
            }]
        );
        assert_eq!((out[0].status(), out[0].opaque()), (Status::Success, w));
        let stale = StreamEnd {
            vbucket: Vbid(1),
            opaque: Opaque(w.0 + 50),
            reason: EndReason::Ok,
        }
        .to_frame();
        let (out, _) = feed(&mut c, &fx, &stale);
        assert!(out
            .iter()
            .all(|f| f.opcode() == Opcode::DcpBufferAcknowledgement));
        assert_eq!(c.stream_state(Vbid(1)), Some(PState::Reading));
    }

    /// Issue #4 faults: the ADD_STREAM answer can be dropped or delayed.
    #[test]
    fn add_stream_answer_faults_drop_or_delay_it() {
        let fx = Fx::new();
        fx.faults.add(Fault::DropAddStreamResponse { vbucket: 1 });
        fx.faults
            .add(Fault::DelayAddStreamResponse { vbucket: 2, ms: 50 });
        fx.b.set_state(Vbid(2), VbState::Replica).expect("state");
        let mut c = ConsumerConn::new(Instant::now(), settings());
        let req = ready(&mut c, &fx, 1);
        let (out, _) = feed(&mut c, &fx, &success(&req, 1));
        assert!(out.is_empty());
        let (out, _) = feed(&mut c, &fx, &add_stream(2, 0));
        let (out, actions) = feed(&mut c, &fx, &success(&out[0], 1));
        assert_eq!(actions, vec![Action::Delay(Duration::from_millis(50))]);
        assert_eq!(out[0].opcode(), Opcode::DcpAddStream);
    }

    /// §7.6: processed bytes are acknowledged past 20 % of the buffer.
    #[test]
    fn processed_bytes_are_acknowledged() {
        let fx = Fx::new();
        let mut c = ConsumerConn::new(Instant::now(), settings());
        let req = ready(&mut c, &fx, 1);
        let _ = feed(&mut c, &fx, &success(&req, 5));
        let marker = SnapshotMarker {
            vbucket: Vbid(1),
            opaque: req.opaque(),
            start: Seqno(0),
            end: Seqno(500),
            flags: MarkerFlags(MarkerFlags::MEMORY),
            version: mcbp::dcp::MarkerVersion::V1,
        }
        .to_frame();
        let mut acked = 0;
        for _ in 0..10 {
            let (out, _) = feed(&mut c, &fx, &marker);
            for f in out {
                acked += BufferAck::parse(&f).expect("ack").bytes;
            }
        }
        assert_eq!(u64::from(acked) + c.acker().unacked(), 440);
        assert!(acked >= 200);
    }
}
