//! Model-based test of `ConsumerConn` set-ups (STYLE "Testing"; spec §5.5–§5.9).
//!
//! For every set-up touching up to 3 vbuckets (each vbucket added, closed, kept or
//! absent) and every per-vbucket behaviour of the nodes (ADD answer success /
//! failure / lost, STREAM_REQ seen, STREAM_END with the recorded or an older
//! opaque, CLOSE answers from both sides, the producer's STREAM_END after its
//! close), plus a socket close and a Timeout at any point, a DFS delivers the
//! events in **every** order allowed by causality (an ADD success or a STREAM_END
//! of the new stream only after its STREAM_REQ was seen; the producer's
//! STREAM_END(CLOSED) only after its CLOSE answer), and checks after every step:
//!
//! * no panic;
//! * the set-up caller gets at most one reply, and exactly one once every event
//!   was delivered (a final Timeout is delivered if the nodes stayed silent);
//! * `partitions` never contains a vbucket whose ADD failed, whose new stream
//!   ended, or whose close was acknowledged, nor one the set-up never knew;
//! * after `Action::Close` no event produces any action;
//! * only STREAM_REQ frames are forwarded (never an ADD/CLOSE answer), unchanged,
//!   and no command is sent after the set-up's own;
//! * a successful reply leaves exactly the expected streams; a failure reply
//!   lists exactly the injected failures.
//!
//! Issue #8 extends it: ADD answers whose extras carry the stream opaque in the other
//! byte order, the producer ending a stream after it was established (it must leave
//! the partitions), and a Timeout before any deadline at any point (a shell stalled
//! by back-pressure waking early), which must change nothing.
//!
//! Symmetric orderings are pruned twice: vbuckets with the same role get their
//! behaviours as multisets, and states are memoised on (delivered events, state
//! machine hash, replies so far), so commuting events are explored once.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use mcbp::dcp::{AddStreamResponse, EndReason, StreamFlags, StreamReq};
use mcbp::{Frame, Message, Opaque, Opcode, Response, Seqno, Status, VbUuid, Vbid};
use replication::core::{
    Action, ConsumerConn, CoreConfig, Event, Outcome, Phase, ReplyTo, SetupError, Side, StreamOp,
};

const R: ReplyTo = ReplyTo(1);
const VBS: u16 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Add,
    Close,
    Keep,
    Absent,
}

const ROLES: [Role; 4] = [Role::Add, Role::Close, Role::Keep, Role::Absent];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AddAnswer {
    Success,
    /// Success, with the stream opaque in the extras in the other byte order
    /// (issue #8 item 6: the recorded STREAM_REQ opaque must still rule).
    SuccessReversed,
    Failure,
    Lost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AddEnd {
    None,
    Recorded,
    Old,
    /// The producer ends the new stream after it was established (issue #8 item 6:
    /// it must leave the partitions).
    AfterAnswer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConsumerClose {
    Success,
    NoStream,
    Failure,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProducerClose {
    Success,
    NoStream,
    Lost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Add(AddAnswer, AddEnd),
    Close(ConsumerClose, ProducerClose),
    Keep { ends: bool },
    Absent,
}

fn variants(role: Role) -> Vec<Variant> {
    match role {
        Role::Add => {
            let mut v = Vec::new();
            for a in [
                AddAnswer::Success,
                AddAnswer::SuccessReversed,
                AddAnswer::Failure,
                AddAnswer::Lost,
            ] {
                for e in [
                    AddEnd::None,
                    AddEnd::Recorded,
                    AddEnd::Old,
                    AddEnd::AfterAnswer,
                ] {
                    let established = matches!(a, AddAnswer::Success | AddAnswer::SuccessReversed);
                    if e != AddEnd::AfterAnswer || established {
                        v.push(Variant::Add(a, e));
                    }
                }
            }
            v
        }
        Role::Close => {
            let mut v = Vec::new();
            for c in [
                ConsumerClose::Success,
                ConsumerClose::NoStream,
                ConsumerClose::Failure,
            ] {
                for p in [
                    ProducerClose::Success,
                    ProducerClose::NoStream,
                    ProducerClose::Lost,
                ] {
                    v.push(Variant::Close(c, p));
                }
            }
            v
        }
        Role::Keep => vec![Variant::Keep { ends: false }, Variant::Keep { ends: true }],
        Role::Absent => vec![Variant::Absent],
    }
}

/// What a model event means for the invariants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    StreamReq,
    /// The stream of this vb is gone once this is delivered while live.
    Gone,
    Other,
    Global,
    /// A Timeout delivered before any deadline (a shell stalled by back-pressure
    /// wakes up early): must change nothing.
    Stall,
}

#[derive(Clone, Debug)]
struct ModelEvent {
    event: Event,
    after: Option<usize>,
    kind: Kind,
    vb: Option<Vbid>,
}

fn old_opaque(v: Vbid) -> Opaque {
    Opaque(0x10 + u32::from(v.0))
}

fn new_opaque(v: Vbid) -> Opaque {
    Opaque(0x100 + u32::from(v.0))
}

fn stream_req(v: Vbid, opaque: Opaque) -> Frame {
    StreamReq {
        vbucket: v,
        opaque,
        flags: StreamFlags(0),
        start: Seqno(0),
        end: Seqno(u64::MAX),
        vb_uuid: VbUuid(0),
        snap_start: Seqno(0),
        snap_end: Seqno(0),
        value: bytes::Bytes::new(),
    }
    .to_frame()
}

fn add_answer(opaque: Opaque, status: Status, stream: Option<Opaque>) -> Event {
    Event::FromConsumer(
        AddStreamResponse {
            opaque,
            status,
            stream_opaque: stream,
        }
        .to_frame(),
    )
}

fn config() -> CoreConfig {
    CoreConfig {
        setup_timeout: Duration::from_secs(10),
        close_timeout: Duration::from_secs(5),
        takeover_timeout: Duration::from_secs(60),
        shut_timeout: Duration::from_secs(7),
    }
}

struct Scenario {
    variants: Vec<Variant>,
    p0: BTreeSet<Vbid>,
    want: BTreeSet<Vbid>,
}

struct Checker {
    t0: Instant,
    late: Instant,
    scenario: Scenario,
    events: Vec<ModelEvent>,
    core_mask: u32,
    visited: HashSet<u64>,
    steps: u64,
}

#[derive(Clone)]
struct Path {
    conn: ConsumerConn,
    mask: u32,
    reply: Option<Result<Outcome, SetupError>>,
    closed: bool,
    trace: Vec<usize>,
}

impl Checker {
    fn fail(&self, path: &Path, what: &str) -> ! {
        let trace: Vec<String> = path
            .trace
            .iter()
            .map(|&i| format!("{:?}", self.events[i].event))
            .collect();
        panic!(
            "{what}\nscenario: {:?} p0={:?} want={:?}\ntrace:\n  {}\nstate: {:?}",
            self.scenario.variants,
            self.scenario.p0,
            self.scenario.want,
            trace.join("\n  "),
            path.conn
        );
    }

    fn gone(&self, mask: u32) -> BTreeSet<Vbid> {
        self.events
            .iter()
            .enumerate()
            .filter(|(i, e)| mask & (1 << i) != 0 && e.kind == Kind::Gone)
            .filter_map(|(_, e)| e.vb)
            .collect()
    }

    /// Applies actions of one step to the path and checks the per-step invariants.
    fn absorb(&self, path: &mut Path, delivered: Option<usize>, out: Vec<Action>) {
        if path.closed && !out.is_empty() {
            self.fail(path, &format!("actions after Close: {out:?}"));
        }
        for a in out {
            match a {
                Action::Reply(to, result) => {
                    if to != R {
                        self.fail(path, &format!("reply to a stranger {to:?}"));
                    }
                    if path.reply.is_some() {
                        self.fail(path, &format!("second reply {result:?}"));
                    }
                    path.reply = Some(result);
                }
                Action::Close(_) => {
                    if path.closed {
                        self.fail(path, "second Close");
                    }
                    path.closed = true;
                }
                Action::ForwardToProducer(f) => {
                    let ok = delivered.is_some_and(|i| {
                        let e = &self.events[i];
                        e.kind == Kind::StreamReq && e.event == Event::FromConsumer(f.clone())
                    });
                    if !ok || f.is_response() {
                        self.fail(path, &format!("forwarded {f:?}"));
                    }
                }
                Action::SendToConsumer(f) | Action::SendToProducer(f) => {
                    self.fail(path, &format!("unexpected command {f:?}"));
                }
            }
        }
        let parts = path.conn.partitions();
        let known: BTreeSet<Vbid> = self
            .scenario
            .p0
            .union(&self.scenario.want)
            .copied()
            .collect();
        if !parts.is_subset(&known) {
            self.fail(path, "partitions outside p0 ∪ want");
        }
        if !path.closed {
            let gone = self.gone(path.mask);
            if !parts.is_disjoint(&gone) {
                self.fail(path, &format!("partitions {parts:?} contain gone {gone:?}"));
            }
        }
    }

    fn enabled(&self, path: &Path, i: usize) -> bool {
        if path.mask & (1 << i) != 0 {
            return false;
        }
        let e = &self.events[i];
        if let Some(a) = e.after {
            if path.mask & (1 << a) == 0 {
                return false;
            }
        }
        match e.event {
            // A timer only fires while something is pending.
            Event::Timeout => matches!(path.conn.phase(), Phase::Setup | Phase::Shutting),
            _ => true,
        }
    }

    fn now_for(&self, i: usize) -> Instant {
        match (self.events[i].kind, &self.events[i].event) {
            (Kind::Stall, _) => self.t0 + Duration::from_secs(1),
            (_, Event::Timeout) => self.late,
            _ => self.t0,
        }
    }

    fn step(&mut self, path: &Path, i: usize) -> Path {
        self.steps += 1;
        let mut next = path.clone();
        next.trace.push(i);
        let now = self.now_for(i);
        let out = next.conn.handle(now, self.events[i].event.clone());
        if self.events[i].kind == Kind::Stall && !out.is_empty() {
            self.fail(&next, &format!("an early timeout acted: {out:?}"));
        }
        // Gone-ness counts only for events delivered while the pair was live.
        if !next.closed {
            next.mask |= 1 << i;
        }
        self.absorb(&mut next, Some(i), out);
        if next.closed {
            next.mask |= 1 << i;
        }
        next
    }

    fn dfs(&mut self, path: Path) {
        let mut h = DefaultHasher::new();
        path.mask.hash(&mut h);
        path.conn.hash(&mut h);
        reply_key(path.reply.as_ref()).hash(&mut h);
        if !self.visited.insert(h.finish()) {
            return;
        }
        if path.mask & self.core_mask == self.core_mask {
            self.leaf(&path);
        }
        for i in 0..self.events.len() {
            if !self.enabled(&path, i) {
                continue;
            }
            let next = self.step(&path, i);
            if next.closed {
                self.finish_closed(next);
            } else {
                self.dfs(next);
            }
        }
    }

    /// After a teardown nothing may happen any more: deliver the rest in one order.
    fn finish_closed(&mut self, mut path: Path) {
        for i in 0..self.events.len() {
            if path.mask & (1 << i) == 0 {
                path = self.step(&path, i);
            }
        }
        let out = path.conn.handle(self.late, Event::Timeout);
        self.absorb(&mut path, None, out);
        if path.reply.is_none() {
            self.fail(&path, "torn down without replying");
        }
    }

    /// Every node event was delivered: the reply must come now (after a Timeout if
    /// the nodes stayed silent) and match the scenario.
    fn leaf(&mut self, path: &Path) {
        let mut path = path.clone();
        if path.reply.is_none() {
            let out = path.conn.handle(self.late, Event::Timeout);
            self.absorb(&mut path, None, out);
        }
        let Some(reply) = path.reply.clone() else {
            self.fail(&path, "no reply after every event and a timeout");
        };
        match reply {
            Ok(Outcome::StreamsSetUp) => self.check_success(&path),
            Ok(other) => self.fail(&path, &format!("unexpected outcome {other:?}")),
            Err(SetupError::StreamsFailed { failures }) => {
                let got: BTreeSet<(StreamOp, Vbid, Side)> =
                    failures.iter().map(|f| (f.op, f.vb, f.side)).collect();
                let want: BTreeSet<(StreamOp, Vbid, Side)> = self.injected_failures();
                if got != want || failures.len() != got.len() {
                    self.fail(&path, &format!("failures {failures:?}, injected {want:?}"));
                }
            }
            Err(
                SetupError::UnexpectedStreamEnd { .. }
                | SetupError::Timeout { .. }
                | SetupError::ConnectionClosed { .. },
            ) => {
                if !path.closed {
                    self.fail(&path, "fatal reply without teardown");
                }
            }
            Err(e) => self.fail(&path, &format!("unexpected error {e:?}")),
        }
    }

    fn injected_failures(&self) -> BTreeSet<(StreamOp, Vbid, Side)> {
        let mut f = BTreeSet::new();
        for (i, v) in self.scenario.variants.iter().enumerate() {
            let vb = Vbid(i as u16);
            match v {
                Variant::Add(AddAnswer::Failure, _) => {
                    f.insert((StreamOp::AddStream, vb, Side::Consumer));
                }
                Variant::Close(ConsumerClose::Failure, _) => {
                    f.insert((StreamOp::CloseStream, vb, Side::Consumer));
                }
                _ => {}
            }
        }
        f
    }

    fn check_success(&self, path: &Path) {
        if !self.injected_failures().is_empty() {
            self.fail(path, "success despite injected failures");
        }
        let parts = path.conn.partitions();
        for (i, v) in self.scenario.variants.iter().enumerate() {
            let vb = Vbid(i as u16);
            let expected = match v {
                Variant::Add(AddAnswer::Success | AddAnswer::SuccessReversed, e) => {
                    *e != AddEnd::Recorded && *e != AddEnd::AfterAnswer
                }
                Variant::Keep { ends } => !ends,
                Variant::Add(..) | Variant::Close(..) | Variant::Absent => false,
            };
            // Events after the reply (a keep-stream's end) may still remove streams.
            if parts.contains(&vb) != expected && !path.closed {
                self.fail(
                    path,
                    &format!("after success {vb} present={}", parts.contains(&vb)),
                );
            }
        }
    }
}

/// A memo key for the reply so far that ignores the order of listed failures.
fn reply_key(reply: Option<&Result<Outcome, SetupError>>) -> String {
    match reply {
        Some(Err(SetupError::StreamsFailed { failures })) => {
            let set: BTreeSet<(StreamOp, Vbid, Side)> =
                failures.iter().map(|f| (f.op, f.vb, f.side)).collect();
            format!("failed {set:?}")
        }
        other => format!("{other:?}"),
    }
}

/// Establishes `p0` with wire opaques `old_opaque(v)` through the public API.
fn connection_with(p0: &BTreeSet<Vbid>, t0: Instant) -> ConsumerConn {
    let mut c = ConsumerConn::new(config());
    let out = c.handle(
        t0,
        Event::SetupStreams {
            want: p0.clone(),
            reply: ReplyTo(0),
        },
    );
    if p0.is_empty() {
        assert_eq!(
            out,
            vec![Action::Reply(ReplyTo(0), Ok(Outcome::StreamsSetUp))]
        );
        return c;
    }
    let mut last = Vec::new();
    for a in out {
        let Action::SendToConsumer(f) = a else {
            panic!("{a:?}")
        };
        let vb = f.vbucket();
        let req = stream_req(vb, old_opaque(vb));
        let _ = c.handle(t0, Event::FromConsumer(req));
        last = c.handle(
            t0,
            add_answer(f.opaque(), Status::Success, Some(old_opaque(vb))),
        );
    }
    assert_eq!(
        last,
        vec![Action::Reply(ReplyTo(0), Ok(Outcome::StreamsSetUp))]
    );
    assert_eq!(&c.partitions(), p0);
    c
}

fn run_scenario(variants: Vec<Variant>) -> u64 {
    let t0 = Instant::now();
    let mut p0 = BTreeSet::new();
    let mut want = BTreeSet::new();
    for (i, v) in variants.iter().enumerate() {
        let vb = Vbid(i as u16);
        match v {
            Variant::Add(..) => {
                want.insert(vb);
            }
            Variant::Close(..) => {
                p0.insert(vb);
            }
            Variant::Keep { .. } => {
                p0.insert(vb);
                want.insert(vb);
            }
            Variant::Absent => {}
        }
    }
    let mut conn = connection_with(&p0, t0);
    let out = conn.handle(
        t0,
        Event::SetupStreams {
            want: want.clone(),
            reply: R,
        },
    );
    let mut adds = BTreeMap::new();
    let mut consumer_closes = BTreeMap::new();
    let mut producer_closes = BTreeMap::new();
    let mut reply = None;
    for a in out {
        match a {
            Action::SendToConsumer(f) if f.opcode() == Opcode::DcpAddStream => {
                adds.insert(f.vbucket(), f.opaque());
            }
            Action::SendToConsumer(f) if f.opcode() == Opcode::DcpCloseStream => {
                consumer_closes.insert(f.vbucket(), f.opaque());
            }
            Action::SendToProducer(f) if f.opcode() == Opcode::DcpCloseStream => {
                producer_closes.insert(f.vbucket(), f.opaque());
            }
            Action::Reply(R, r) => reply = Some(r),
            other => panic!("unexpected set-up action {other:?}"),
        }
    }

    let mut events: Vec<ModelEvent> = Vec::new();
    let mut push = |event: Event, after: Option<usize>, kind: Kind, vb: Option<Vbid>| {
        events.push(ModelEvent {
            event,
            after,
            kind,
            vb,
        });
        events.len() - 1
    };
    for (i, v) in variants.iter().enumerate() {
        let vb = Vbid(i as u16);
        match *v {
            Variant::Add(answer, end) => {
                let o = adds[&vb];
                let req = push(
                    Event::FromConsumer(stream_req(vb, new_opaque(vb))),
                    None,
                    Kind::StreamReq,
                    Some(vb),
                );
                let mut answered = None;
                match answer {
                    AddAnswer::Success | AddAnswer::SuccessReversed => {
                        let extras = if answer == AddAnswer::Success {
                            new_opaque(vb)
                        } else {
                            new_opaque(vb).byte_reversed()
                        };
                        answered = Some(push(
                            add_answer(o, Status::Success, Some(extras)),
                            Some(req),
                            Kind::Other,
                            Some(vb),
                        ));
                    }
                    AddAnswer::Failure => {
                        push(
                            add_answer(o, Status::NotMyVbucket, None),
                            None,
                            Kind::Gone,
                            Some(vb),
                        );
                    }
                    AddAnswer::Lost => {}
                }
                match end {
                    AddEnd::None => {}
                    AddEnd::Recorded => {
                        push(
                            Event::ProducerStreamEnd {
                                vb,
                                opaque: new_opaque(vb),
                                reason: EndReason::StateChanged,
                            },
                            Some(req),
                            Kind::Gone,
                            Some(vb),
                        );
                    }
                    AddEnd::Old => {
                        push(
                            Event::ProducerStreamEnd {
                                vb,
                                opaque: old_opaque(vb),
                                reason: EndReason::Closed,
                            },
                            None,
                            Kind::Other,
                            Some(vb),
                        );
                    }
                    AddEnd::AfterAnswer => {
                        push(
                            Event::ProducerStreamEnd {
                                vb,
                                opaque: new_opaque(vb),
                                reason: EndReason::StateChanged,
                            },
                            answered,
                            Kind::Gone,
                            Some(vb),
                        );
                    }
                }
            }
            Variant::Close(consumer, producer) => {
                let (status, kind) = match consumer {
                    ConsumerClose::Success => (Status::Success, Kind::Gone),
                    ConsumerClose::NoStream => (Status::KeyEnoent, Kind::Gone),
                    ConsumerClose::Failure => (Status::Einval, Kind::Other),
                };
                push(
                    Event::FromConsumer(
                        Response::status_only(Opcode::DcpCloseStream, consumer_closes[&vb], status)
                            .to_frame(),
                    ),
                    None,
                    kind,
                    Some(vb),
                );
                let po = producer_closes[&vb];
                match producer {
                    ProducerClose::Success => {
                        let answer = push(
                            Event::ProducerCloseStreamResponse {
                                opaque: po,
                                status: Status::Success,
                            },
                            None,
                            Kind::Gone,
                            Some(vb),
                        );
                        push(
                            Event::ProducerStreamEnd {
                                vb,
                                opaque: old_opaque(vb),
                                reason: EndReason::Closed,
                            },
                            Some(answer),
                            Kind::Gone,
                            Some(vb),
                        );
                    }
                    ProducerClose::NoStream => {
                        push(
                            Event::ProducerCloseStreamResponse {
                                opaque: po,
                                status: Status::DcpStreamNotFound,
                            },
                            None,
                            Kind::Gone,
                            Some(vb),
                        );
                    }
                    ProducerClose::Lost => {}
                }
            }
            Variant::Keep { ends: true } => {
                push(
                    Event::ProducerStreamEnd {
                        vb,
                        opaque: old_opaque(vb),
                        reason: EndReason::StateChanged,
                    },
                    None,
                    Kind::Gone,
                    Some(vb),
                );
            }
            Variant::Keep { ends: false } | Variant::Absent => {}
        }
    }
    let first_global = push(
        Event::ConnectionClosed {
            side: Side::Consumer,
        },
        None,
        Kind::Global,
        None,
    );
    push(Event::Timeout, None, Kind::Global, None);
    push(Event::Timeout, None, Kind::Stall, None);
    let core_mask = (1u32 << first_global) - 1;

    let mut checker = Checker {
        t0,
        late: t0 + Duration::from_secs(3600),
        scenario: Scenario { variants, p0, want },
        events,
        core_mask,
        visited: HashSet::new(),
        steps: 0,
    };
    let start = Path {
        conn,
        mask: 0,
        reply,
        closed: false,
        trace: Vec::new(),
    };
    checker.dfs(start);
    checker.steps
}

/// All variant assignments for vbuckets 0..3 up to symmetry: roles as a sorted
/// multiset, and behaviours of equal-role vbuckets as multisets.
fn scenarios() -> Vec<Vec<Variant>> {
    let mut all = Vec::new();
    let n = usize::from(VBS);
    let mut roles = vec![0usize; n];
    loop {
        let rs: Vec<Role> = roles.iter().map(|&r| ROLES[r]).collect();
        let options: Vec<Vec<Variant>> = rs.iter().map(|&r| variants(r)).collect();
        let mut idx = vec![0usize; n];
        'variants: loop {
            let ok = (1..n).all(|i| rs[i] != rs[i - 1] || idx[i] >= idx[i - 1]);
            if ok {
                all.push((0..n).map(|i| options[i][idx[i]]).collect());
            }
            let mut i = n;
            loop {
                if i == 0 {
                    break 'variants;
                }
                i -= 1;
                idx[i] += 1;
                if idx[i] < options[i].len() {
                    break;
                }
                idx[i] = 0;
            }
        }
        // next non-decreasing role tuple
        let mut i = n;
        loop {
            if i == 0 {
                return all;
            }
            i -= 1;
            if roles[i] + 1 < ROLES.len() {
                roles[i] += 1;
                for j in i + 1..n {
                    roles[j] = roles[i];
                }
                break;
            }
        }
    }
}

#[test]
fn every_interleaving_of_setups_up_to_three_vbuckets_keeps_the_invariants() {
    let started = Instant::now();
    let all = scenarios();
    assert!(all.len() > 1000, "{} scenarios", all.len());
    let mut steps = 0;
    for variants in all.iter().cloned() {
        steps += run_scenario(variants);
    }
    eprintln!(
        "{} scenarios, {steps} events delivered in {:?}",
        all.len(),
        started.elapsed()
    );
}
