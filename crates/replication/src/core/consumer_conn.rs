//! The consumer half's replication state machine (`replication-layer.md` §5).
//!
//! [`ConsumerConn`] sees every interesting frame of the consumer socket, the
//! producer half's notifications and the replicator's commands, and answers with
//! [`Action`]s. It owns no socket, reads no clock (`now` is an argument) and holds
//! no channel: a reply is `Action::Reply(ReplyTo, ..)` and the shell maps the
//! [`ReplyTo`] token to whatever it uses (a oneshot).
//!
//! ```text
//!                  SetupStreams / CloseStream (something to do)
//!          +-------------------------------------------------+
//!          |                                                 v
//!      +------+   all answers in (reply)                 +-------+
//!  --->| Idle |<-----------------------------------------| Setup |<--+ Shut while
//!      +------+                                          +-------+   | set-up waits
//!        |  ^ \ Shut, streams open (consumer closes)       |   |     | (stuck shut)
//!        |  |  +----------------------------> Setup{next_state: Shut}-+
//!        |  |                                              |   |
//!        |  | ADD error answer /               answers in  |   | STREAM_END of the
//!        |  | open_ack && sub == active                    v   | stream being added,
//!        |  |                                          +------+ | unknown opaque,
//!  Takeover |                                          | Shut | | timeout, peer close
//!        v  |                                          +------+ v
//!      +----------+  wrong STREAM_REQ, SET_VBUCKET_STATE   +--------+
//!      | Takeover |--------------------------------------->| Closed |
//!      +----------+  error, early STREAM_END, timeout      +--------+
//!   sub: Requested --STREAM_REQ--> OpaqueKnown --SVBS(active) ack--> Active
//! ```
//!
//! `Closed` is reached from every state on `ConnectionClosed` and on any fatal
//! condition; it emits `Action::Close` once and ignores everything afterwards
//! (commands are still answered, with [`SetupError::TornDown`]).
//!
//! # Per-vbucket state
//!
//! The diagram above is the connection's operation (`State`). What each vbucket's
//! stream is doing lives in one map, `streams: BTreeMap<Vbid, VbStream>`, one enum
//! per vbucket (`Adding`, `Established`, `Closing`; its doc comment has the
//! diagram). The spec's `partitions` are the entries that count as established, and
//! its `to_add`, `to_close` and `to_close_on_producer` lists (§5.1) are the pending
//! commands held in the entries: an answer, which names only our command opaque, is
//! matched by finding the entry that waits for that opaque, then the entry makes
//! one transition on (its state, the answer). A set-up (`Setup`) keeps only what
//! belongs to the operation: its owner, the failures to report, what follows it,
//! and whether producer answers are still accounted (§5.5 `ignore`). The takeover
//! stream (one vbucket at a time, never in `partitions`) stays in `Takeover`, whose
//! `sub` is that stream's state machine (§5.8).
//!
//! # Conduit rules on top of the original (§5.9, §11)
//!
//! * **Command opaques** come from a counter starting at [`COMMAND_OPAQUE_BASE`]
//!   (never `opaque == vb`); a pending command is found by its opaque in its
//!   vbucket's entry (op, vb and side follow from it), an abandoned one in a bounded
//!   map opaque -> (op, vb, side). KV consumers
//!   number their own requests (controls, STREAM_REQs, buffer acks) from 0 upwards,
//!   so the upper half of the opaque space never meets theirs, on either socket (§6).
//! * **§5.9**: the wire opaque of the consumer's STREAM_REQ is recorded per pending
//!   ADD; a STREAM_END is only ever compared with that, never with our ADD opaques.
//! * **Stale STREAM_END**: once a stream is established we remember its wire opaque
//!   (the recorded STREAM_REQ's, else the ADD_STREAM answer's extras in either byte
//!   order). A STREAM_END for an established vbucket removes it from `partitions`
//!   unless it carries a *different* known opaque: then it belongs to an older
//!   stream, which the consumer node ignores too (MB-34951), so our view stays with
//!   KV's.
//! * **Takeover of a replicated vbucket** closes its stream on both nodes first and
//!   then starts the takeover stream: one command, one reply, sequenced here rather
//!   than by the shell (§7.3).
//! * **Timeouts** tear the pair down: after a timeout the consumer node's state is
//!   unknown (an ADD may still be answered, a stream may exist), so a retry must start
//!   from a fresh connection (the replicator is recreated; the DCP_OPEN of the new
//!   consumer connection replaces the old one on the node, §4.4).
//! * **Answers nobody waits for** (ADD/CLOSE_STREAM answers in Idle, Shut, after a
//!   takeover's ADD was acknowledged, or to an abandoned command) are dropped and
//!   logged, never forwarded (§11.7). Abandoned opaques are remembered in a bounded
//!   set; during a set-up an answer with an opaque that is neither pending nor
//!   abandoned is a protocol error that tears the pair down.
//! * **Stuck shut** (§5.6 IMPROVE): the superseded set-up caller gets
//!   [`SetupError::SupersededByShut`] at once; a pending ADD for `v` is resolved once
//!   the CLOSE for `v` is acknowledged; the producer's STREAM_END for such a stream is
//!   not an error (the shut wants it closed anyway).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use mcbp::dcp::{AddStream, AddStreamResponse, EndReason, StreamFlags};
use mcbp::{BareRequest, Frame, Message, Opaque, Opcode, Status, VbState, Vbid};
use tracing::{debug, warn};

use super::error::{
    ConnError, Operation, SetupError, StreamFailure, StreamOp, TakeoverStep, WaitingFor,
};
use super::Side;

/// First command opaque we issue. KV numbers its own requests from 0 upwards, so
/// ours (0x8000_0000..=0xffff_ffff, wrapping within that range) never collide.
pub const COMMAND_OPAQUE_BASE: u32 = 0x8000_0000;

/// How many abandoned command opaques are remembered (oldest forgotten first).
const ABANDONED_CAP: usize = 1024;

/// Opaque token naming whoever waits for a command's reply; the shell maps it to a
/// oneshot sender (or anything else).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplyTo(pub u64);

/// Time bounds of the operations (§11.1). Expiry fails the operation with a
/// [`SetupError::Timeout`] and tears the pair down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoreConfig {
    /// Bound on each ADD_STREAM answer of a set-up (§5.9, required).
    pub setup_timeout: Duration,
    /// Bound on each CLOSE_STREAM answer of a set-up, from either node.
    pub close_timeout: Duration,
    /// Bound on a whole takeover (regular path, §11.1).
    pub takeover_timeout: Duration,
    /// Bound on a shut (`dcp_shut_consumer`); keep it below the replicator's stop
    /// budget (§11.17).
    pub shut_timeout: Duration,
}

impl Default for CoreConfig {
    /// 120 s per ADD (an answer waits for the producer's STREAM_REQ answer, which
    /// may include a rollback), 30 s per CLOSE, 300 s per takeover, 30 s per shut
    /// (below the 60 s stop budget).
    fn default() -> Self {
        CoreConfig {
            setup_timeout: Duration::from_secs(120),
            close_timeout: Duration::from_secs(30),
            takeover_timeout: Duration::from_secs(300),
            shut_timeout: Duration::from_secs(30),
        }
    }
}

/// An input to [`ConsumerConn::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole frame read from the consumer node's socket. Only the frames
    /// [`route_from_consumer`](super::route_from_consumer) sends to the core need to
    /// come here; any other frame is forwarded (or dropped once shut).
    FromConsumer(Frame),
    /// The producer sent STREAM_END (the producer half forwards it *after* this
    /// event was queued, §2.4).
    ProducerStreamEnd {
        /// Header vbucket.
        vb: Vbid,
        /// Header opaque: the wire stream opaque.
        opaque: Opaque,
        /// The end reason.
        reason: EndReason,
    },
    /// The producer sent SET_VBUCKET_STATE (forwarded after this event).
    ProducerSetVbucketState {
        /// Header vbucket.
        vb: Vbid,
        /// Header opaque: the wire stream opaque.
        opaque: Opaque,
        /// The requested state.
        state: VbState,
    },
    /// The producer answered one of our CLOSE_STREAMs (never forwarded).
    ProducerCloseStreamResponse {
        /// Our command opaque.
        opaque: Opaque,
        /// The status.
        status: Status,
    },
    /// `setup_streams`: make the set of established streams equal to `want` (§5.2).
    SetupStreams {
        /// The wanted vbuckets.
        want: BTreeSet<Vbid>,
        /// Who gets the reply.
        reply: ReplyTo,
    },
    /// `maybe_close_stream`: `SetupStreams` with `partitions - {vb}`.
    CloseStream {
        /// The vbucket to stop replicating.
        vb: Vbid,
        /// Who gets the reply.
        reply: ReplyTo,
    },
    /// Run a takeover stream for `vb` (§5.6, §5.8).
    Takeover {
        /// The vbucket.
        vb: Vbid,
        /// Who gets the reply.
        reply: ReplyTo,
    },
    /// `shut_connection`: close every stream on the consumer node, then refuse work.
    Shut {
        /// Who gets the reply.
        reply: ReplyTo,
    },
    /// A socket of the pair was closed by its peer (or failed).
    ConnectionClosed {
        /// Which one.
        side: Side,
    },
    /// The deadline returned by [`ConsumerConn::next_deadline`] has passed. A
    /// `Timeout` before any deadline is harmless.
    Timeout,
}

/// What the shell must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Action {
    /// Write this frame, the bytes as received, to the producer socket.
    ForwardToProducer(Frame),
    /// Write our own command (ADD_STREAM, CLOSE_STREAM) to the consumer socket.
    SendToConsumer(Frame),
    /// Write our own CLOSE_STREAM to the producer socket.
    SendToProducer(Frame),
    /// Answer a command.
    Reply(ReplyTo, Result<Outcome, SetupError>),
    /// Tear the pair down: close both sockets, fail everything pending (§2.3).
    /// Emitted at most once; afterwards the core produces no frames or closes.
    Close(ConnError),
}

/// The success half of an [`Action::Reply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The established streams are now the wanted set (`SetupStreams`,
    /// `CloseStream`).
    StreamsSetUp,
    /// The takeover of `vb` completed (§5.8 step 8 plus the ADD_STREAM answer).
    TakeoverComplete {
        /// The vbucket.
        vb: Vbid,
    },
    /// Every stream was closed on the consumer node; the connection is shut.
    Shut,
}

/// Which state the machine is in (for the shell and for tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// No operation in flight.
    Idle,
    /// A set-up is waiting for answers.
    Setup,
    /// A shut is waiting for the consumer's CLOSE_STREAM answers.
    Shutting,
    /// A takeover is running.
    Takeover,
    /// Shut: consumer traffic is dropped, commands are refused.
    Shut,
    /// Torn down (`Action::Close` was emitted).
    Closed,
}

/// The takeover sub-state (`sub` of §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TakeoverPhase {
    /// ADD_STREAM(takeover) sent; the consumer's STREAM_REQ not seen yet.
    Requested,
    /// The takeover stream's wire opaque is known.
    OpaqueKnown,
    /// The consumer acknowledged SET_VBUCKET_STATE(active).
    Active,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum AfterSetup {
    Idle,
    Shut,
    /// The close of `vb`'s replication stream that precedes its takeover (§7.3
    /// `maybe_close_stream`): on success the takeover starts, on failure the
    /// takeover's owner gets the close failure.
    Takeover(Vbid),
}

/// What a set-up does with the producer's CLOSE_STREAM answers (§5.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ProducerAnswers {
    /// Each must match a pending producer close; an unknown opaque is fatal.
    Accounted,
    /// Stuck shut: the pending producer closes were abandoned and every producer
    /// answer is logged and dropped (the `ignore` marker of §5.5).
    Ignored,
}

/// One operation waiting for answers (§5.1 Setup). What it waits for is not here:
/// it is the [`VbStream::Adding`] and [`VbStream::Closing`] entries of
/// [`ConsumerConn::streams`], and the set-up is done when none is left.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Setup {
    owner: ReplyTo,
    errors: Vec<StreamFailure>,
    next_state: AfterSetup,
    producer_answers: ProducerAnswers,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Takeover {
    owner: ReplyTo,
    sub: TakeoverPhase,
    vb: Vbid,
    add_opaque: Opaque,
    stream_opaque: Option<Opaque>,
    requested_vb_state: Option<VbState>,
    open_ack: bool,
    deadline: Option<Instant>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum State {
    Idle,
    Setup(Setup),
    Takeover(Takeover),
    Shut,
    Closed(ConnError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Cmd {
    op: StreamOp,
    vb: Vbid,
    side: Side,
}

/// Command opaques whose answers we no longer wait for (timed out, superseded,
/// resolved otherwise). Bounded; the oldest are forgotten first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Abandoned {
    map: BTreeMap<Opaque, Cmd>,
    order: VecDeque<Opaque>,
}

impl Abandoned {
    fn insert(&mut self, opaque: Opaque, cmd: Cmd) {
        if self.map.insert(opaque, cmd).is_none() {
            self.order.push_back(opaque);
        }
        while self.order.len() > ABANDONED_CAP {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    fn get(&self, opaque: Opaque) -> Option<Cmd> {
        self.map.get(&opaque).copied()
    }
}

/// Where the wire stream opaque of an established stream came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum StreamOpaque {
    /// The header opaque of the consumer's STREAM_REQ, seen on its way to the
    /// producer: the same encoding as the producer's STREAM_END header. Exact match.
    Recorded(Opaque),
    /// Only the ADD_STREAM answer's extras named it (the STREAM_REQ was not seen):
    /// nodes write those extras in either byte order, so both match.
    Answered(Opaque),
}

impl StreamOpaque {
    fn matches(self, opaque: Opaque) -> bool {
        match self {
            StreamOpaque::Recorded(o) => o == opaque,
            StreamOpaque::Answered(o) => o == opaque || o.byte_reversed() == opaque,
        }
    }
}

/// One of our stream commands waiting for its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Pending {
    /// Our command opaque: the answer carries it.
    opaque: Opaque,
    /// When the operation fails if the answer has not come.
    deadline: Option<Instant>,
}

/// The state of one vbucket's replication stream on this connection (§5.1), one
/// entry of [`ConsumerConn::streams`]. A vbucket without an entry has no stream and
/// nothing pending. The takeover stream is not here (see [`Takeover`]).
///
/// ```text
///                                ADD ok
///  SetupStreams --> Adding -----------------------------> Established
///  wants v          |  |                                   |    |    ^
///       ADD error   |  | Shut supersedes the set-up        |    |    | every CLOSE
///  (none) <---------+  | (stuck shut): consumer CLOSE too  |    |    | answered,
///    ^  ^              v                                   |    |    | each failed
///    |  |  CLOSE ok  Adding{close}                         |    |    |
///    |  +------------+  |                                  |    | SetupStreams without v,
///    | (ADD resolved)   | ADD answered (ok or error)       |    | Takeover(v), Shut
///    |                  +-------------------------------------->+--> Closing
///    |                                                     |              |
///    +---------- STREAM_END of the current stream ---------+              |
///    +---------- every CLOSE answered, one succeeded (or STREAM_END) -----+
/// ```
///
/// * `Adding`: our ADD_STREAM is unanswered; not in `partitions`. The consumer's
///   STREAM_REQ for the vbucket records its wire opaque (§5.9); a STREAM_END with
///   that opaque fails the set-up (or is ignored while shutting), one with another
///   opaque is an older stream's and is ignored. A failed CLOSE of `Adding{close}`
///   leaves it `Adding`.
/// * `Established`: in `partitions`. A STREAM_END of the current stream (or of a
///   stream whose opaque is unknown) removes the entry (MB-17241); one with another
///   known opaque belongs to an older stream and is ignored (MB-34951).
/// * `Closing`: our CLOSE_STREAM to the consumer and/or the producer is unanswered
///   (at least one is). The vbucket stays in `partitions` until one node confirms
///   the close (success or "no stream", §5.5) or the producer ends the stream.
///   Once nothing is pending it settles: `Established` again if the stream still
///   counts (every close failed), else the entry goes.
///
/// `Adding` and `Closing` exist only while the machine is in Setup: the set-up is
/// done when none is left, and a teardown drops them (keeping what counts as
/// established), so Idle, Takeover, Shut and Closed see only `Established` entries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum VbStream {
    /// Our ADD_STREAM waits for its answer.
    Adding {
        /// The ADD_STREAM.
        add: Pending,
        /// §5.9: header opaque of the consumer's STREAM_REQ for this vb, once seen.
        stream_req: Option<Opaque>,
        /// Stuck shut (§5.6): the consumer CLOSE_STREAM sent while the ADD was
        /// still unanswered. Its acknowledgement resolves the ADD (IMPROVE).
        close: Option<Pending>,
    },
    /// A replication stream is established, with its wire opaque where known.
    Established {
        /// The stream's wire opaque, if known.
        opaque: Option<StreamOpaque>,
    },
    /// Our CLOSE_STREAMs wait for their answers.
    Closing {
        /// `Some(wire opaque if known)` while the stream still counts as
        /// established (in `partitions`); `None` once a node confirmed the close or
        /// the producer ended the stream.
        stream: Option<Option<StreamOpaque>>,
        /// Our CLOSE_STREAM to the consumer node, while unanswered.
        consumer: Option<Pending>,
        /// Our CLOSE_STREAM to the producer node, while unanswered (and not
        /// abandoned by a stuck shut).
        producer: Option<Pending>,
    },
}

/// An answer to one of our commands for a vbucket, as an input of
/// [`ConsumerConn::become_answered`].
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// ADD_STREAM succeeded; the stream opaque the answer's extras name, if any.
    AddOk { answered: Option<Opaque> },
    /// ADD_STREAM failed.
    AddFailed,
    /// CLOSE_STREAM answered by `side`; `closed` if it counts as closed (§5.5).
    Close { side: Side, closed: bool },
}

impl VbStream {
    /// The stream if it counts as established (`partitions`): its wire opaque if
    /// known.
    fn established(&self) -> Option<Option<StreamOpaque>> {
        match self {
            VbStream::Established { opaque } => Some(*opaque),
            VbStream::Closing { stream, .. } => *stream,
            VbStream::Adding { .. } => None,
        }
    }

    /// The commands this vbucket waits for (at most two): (op, side, command).
    fn pending(&self) -> [Option<(StreamOp, Side, Pending)>; 2] {
        match self {
            VbStream::Adding { add, close, .. } => [
                Some((StreamOp::AddStream, Side::Consumer, *add)),
                close.map(|c| (StreamOp::CloseStream, Side::Consumer, c)),
            ],
            VbStream::Established { .. } => [None, None],
            VbStream::Closing {
                consumer, producer, ..
            } => [
                consumer.map(|c| (StreamOp::CloseStream, Side::Consumer, c)),
                producer.map(|c| (StreamOp::CloseStream, Side::Producer, c)),
            ],
        }
    }

    fn is_pending(&self) -> bool {
        !matches!(self, VbStream::Established { .. })
    }

    /// A `Closing` whose answers are all in settles: back to `Established` if the
    /// stream still counts as established, else no entry.
    fn settle(self) -> Option<VbStream> {
        match self {
            VbStream::Closing {
                stream,
                consumer: None,
                producer: None,
            } => stream.map(|opaque| VbStream::Established { opaque }),
            other => Some(other),
        }
    }
}

/// The consumer half's state machine (§5). See the module docs for the diagram
/// and the Conduit rules.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConsumerConn {
    config: CoreConfig,
    state: State,
    /// Per-vbucket stream state, one [`VbStream`] per vbucket that has a stream or
    /// a pending command (the takeover stream excepted). `partitions` (§5.1) are
    /// the entries that count as established; what a set-up waits for are the
    /// pending commands of its entries. Answers are matched to their vbucket by
    /// command opaque ([`Self::find_command`]).
    streams: BTreeMap<Vbid, VbStream>,
    /// Set when the close that precedes a takeover succeeded: [`Self::handle`]
    /// starts the takeover before it returns (never set between events).
    takeover_next: Option<(Vbid, ReplyTo)>,
    next_opaque: u32,
    abandoned: Abandoned,
}

impl ConsumerConn {
    /// A new connection in Idle with no streams.
    #[must_use]
    pub fn new(config: CoreConfig) -> ConsumerConn {
        ConsumerConn {
            config,
            state: State::Idle,
            streams: BTreeMap::new(),
            takeover_next: None,
            next_opaque: COMMAND_OPAQUE_BASE,
            abandoned: Abandoned::default(),
        }
    }

    /// The vbuckets with an established replication stream (`get_partitions`,
    /// §5.2). Served in every state without waiting (§7.5 IMPROVE).
    #[must_use]
    pub fn partitions(&self) -> BTreeSet<Vbid> {
        self.streams
            .iter()
            .filter(|(_, s)| s.established().is_some())
            .map(|(vb, _)| *vb)
            .collect()
    }

    fn is_established(&self, vb: Vbid) -> bool {
        self.streams
            .get(&vb)
            .is_some_and(|s| s.established().is_some())
    }

    /// The current state.
    #[must_use]
    pub fn phase(&self) -> Phase {
        match &self.state {
            State::Idle => Phase::Idle,
            State::Setup(s) if s.next_state == AfterSetup::Shut => Phase::Shutting,
            State::Setup(_) => Phase::Setup,
            State::Takeover(_) => Phase::Takeover,
            State::Shut => Phase::Shut,
            State::Closed(_) => Phase::Closed,
        }
    }

    /// The takeover sub-state, while a takeover runs.
    #[must_use]
    pub fn takeover_phase(&self) -> Option<TakeoverPhase> {
        match &self.state {
            State::Takeover(t) => Some(t.sub),
            _ => None,
        }
    }

    /// Whether frames from the consumer node that the core never sees may still be
    /// forwarded to the producer. False once shut or torn down (§5.7 Shut table:
    /// every consumer packet is dropped).
    #[must_use]
    pub fn forwards_consumer_traffic(&self) -> bool {
        !matches!(self.state, State::Shut | State::Closed(_))
    }

    /// The earliest deadline of the operation in flight, if any. The shell sleeps
    /// until then and delivers [`Event::Timeout`].
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Setup(_) => self
                .streams
                .values()
                .flat_map(VbStream::pending)
                .flatten()
                .filter_map(|(_, _, p)| p.deadline)
                .min(),
            State::Takeover(t) => t.deadline,
            State::Idle | State::Shut | State::Closed(_) => None,
        }
    }

    /// Feeds one event; returns the actions to perform, in order.
    #[must_use]
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        let state = std::mem::replace(&mut self.state, State::Idle);
        self.state = match event {
            Event::FromConsumer(frame) => self.on_consumer_frame(state, frame, &mut out),
            Event::ProducerStreamEnd { vb, opaque, reason } => {
                self.on_producer_stream_end(state, vb, opaque, reason, &mut out)
            }
            Event::ProducerSetVbucketState {
                vb,
                opaque,
                state: vb_state,
            } => on_producer_set_vbucket_state(state, vb, opaque, vb_state),
            Event::ProducerCloseStreamResponse { opaque, status } => {
                self.on_producer_close_answer(state, opaque, status, &mut out)
            }
            Event::SetupStreams { want, reply } => {
                self.on_setup_streams(state, now, &want, reply, &mut out)
            }
            Event::CloseStream { vb, reply } => {
                let mut want = self.partitions();
                want.remove(&vb);
                self.on_setup_streams(state, now, &want, reply, &mut out)
            }
            Event::Takeover { vb, reply } => self.on_takeover(state, now, vb, reply, &mut out),
            Event::Shut { reply } => self.on_shut(state, now, reply, &mut out),
            Event::ConnectionClosed { side } => self.on_connection_closed(state, side, &mut out),
            Event::Timeout => self.on_timeout(state, now, &mut out),
        };
        if let Some((vb, owner)) = self.takeover_next.take() {
            let state = std::mem::replace(&mut self.state, State::Idle);
            self.state = self.on_takeover(state, now, vb, owner, &mut out);
        }
        out
    }

    // ---- commands -------------------------------------------------------------

    fn on_setup_streams(
        &mut self,
        state: State,
        now: Instant,
        want: &BTreeSet<Vbid>,
        reply: ReplyTo,
        out: &mut Vec<Action>,
    ) -> State {
        if !matches!(state, State::Idle) {
            out.push(Action::Reply(reply, Err(refusal(&state))));
            return state;
        }
        let partitions = self.partitions();
        let to_start: Vec<Vbid> = want.difference(&partitions).copied().collect();
        let to_stop: Vec<Vbid> = partitions.difference(want).copied().collect();
        if to_start.is_empty() && to_stop.is_empty() {
            out.push(Action::Reply(reply, Ok(Outcome::StreamsSetUp)));
            return State::Idle;
        }
        debug!(add = ?to_start, close = ?to_stop, "stream set-up");
        self.start_setup(
            now,
            &to_start,
            &to_stop,
            Setup::new(reply, AfterSetup::Idle),
            out,
        )
    }

    /// Sends the ADD_STREAMs and the CLOSE_STREAMs (to both nodes) of a set-up,
    /// in this order: every ADD in vbucket order, then per closed vbucket the
    /// consumer's CLOSE and the producer's. Called in Idle only, where every entry
    /// is `Established`.
    fn start_setup(
        &mut self,
        now: Instant,
        to_start: &[Vbid],
        to_stop: &[Vbid],
        s: Setup,
        out: &mut Vec<Action>,
    ) -> State {
        let add_deadline = now.checked_add(self.config.setup_timeout);
        for &vb in to_start {
            let opaque = self.alloc_opaque();
            out.push(Action::SendToConsumer(add_stream(vb, opaque, false)));
            let add = Pending {
                opaque,
                deadline: add_deadline,
            };
            self.streams.insert(
                vb,
                VbStream::Adding {
                    add,
                    stream_req: None,
                    close: None,
                },
            );
        }
        let deadline = now.checked_add(self.config.close_timeout);
        for &vb in to_stop {
            let on_consumer = self.alloc_opaque();
            out.push(Action::SendToConsumer(close_stream(vb, on_consumer)));
            let on_producer = self.alloc_opaque();
            out.push(Action::SendToProducer(close_stream(vb, on_producer)));
            let stream = self.streams.get(&vb).and_then(VbStream::established);
            self.streams.insert(
                vb,
                VbStream::Closing {
                    stream,
                    consumer: Some(Pending {
                        opaque: on_consumer,
                        deadline,
                    }),
                    producer: Some(Pending {
                        opaque: on_producer,
                        deadline,
                    }),
                },
            );
        }
        State::Setup(s)
    }

    fn on_takeover(
        &mut self,
        state: State,
        now: Instant,
        vb: Vbid,
        reply: ReplyTo,
        out: &mut Vec<Action>,
    ) -> State {
        if !matches!(state, State::Idle) {
            out.push(Action::Reply(reply, Err(refusal(&state))));
            return state;
        }
        if self.is_established(vb) {
            // §7.3: close the replication stream on both nodes first; the takeover
            // starts when both closes are acknowledged (and fails if one is not).
            debug!(vb = %vb, "takeover: closing the replication stream first");
            let s = Setup::new(reply, AfterSetup::Takeover(vb));
            return self.start_setup(now, &[], &[vb], s, out);
        }
        let opaque = self.alloc_opaque();
        debug!(vb = %vb, opaque = %opaque, "takeover: add-stream");
        out.push(Action::SendToConsumer(add_stream(vb, opaque, true)));
        State::Takeover(Takeover {
            owner: reply,
            sub: TakeoverPhase::Requested,
            vb,
            add_opaque: opaque,
            stream_opaque: None,
            requested_vb_state: None,
            open_ack: false,
            deadline: now.checked_add(self.config.takeover_timeout),
        })
    }

    fn on_shut(
        &mut self,
        state: State,
        now: Instant,
        reply: ReplyTo,
        out: &mut Vec<Action>,
    ) -> State {
        let deadline = now.checked_add(self.config.shut_timeout);
        match state {
            State::Idle => {
                let open = self.partitions();
                if open.is_empty() {
                    out.push(Action::Reply(reply, Ok(Outcome::Shut)));
                    return State::Shut;
                }
                // §5.6: consumer side only (MB-16064).
                for vb in open {
                    let opaque = self.alloc_opaque();
                    out.push(Action::SendToConsumer(close_stream(vb, opaque)));
                    let stream = self.streams.get(&vb).and_then(VbStream::established);
                    self.streams.insert(
                        vb,
                        VbStream::Closing {
                            stream,
                            consumer: Some(Pending { opaque, deadline }),
                            producer: None,
                        },
                    );
                }
                State::Setup(Setup::new(reply, AfterSetup::Shut))
            }
            State::Setup(mut s) if s.next_state != AfterSetup::Shut => {
                // §5.6 stuck shut (MB-46253), with the IMPROVE.
                debug!("shut while a set-up waits: superseding it");
                out.push(Action::Reply(s.owner, Err(SetupError::SupersededByShut)));
                self.become_shutting(deadline, out);
                s.producer_answers = ProducerAnswers::Ignored;
                s.errors.clear();
                s.next_state = AfterSetup::Shut;
                s.owner = reply;
                self.check_setup_done(s, out)
            }
            other => {
                out.push(Action::Reply(reply, Err(refusal(&other))));
                other
            }
        }
    }

    /// Stuck shut, per vbucket: a consumer CLOSE for every vbucket being added or
    /// established without a pending consumer CLOSE (in vbucket order); every
    /// pending command gets the shut's deadline; pending producer closes are
    /// abandoned.
    fn become_shutting(&mut self, deadline: Option<Instant>, out: &mut Vec<Action>) {
        let more: Vec<Vbid> = self
            .streams
            .iter()
            .filter(|(_, s)| match s {
                VbStream::Adding { close, .. } => close.is_none(),
                VbStream::Established { .. } => true,
                VbStream::Closing {
                    stream, consumer, ..
                } => stream.is_some() && consumer.is_none(),
            })
            .map(|(vb, _)| *vb)
            .collect();
        for vb in more {
            let opaque = self.alloc_opaque();
            out.push(Action::SendToConsumer(close_stream(vb, opaque)));
            let close = Some(Pending { opaque, deadline });
            if let Some(entry) = self.streams.get_mut(&vb) {
                match entry {
                    VbStream::Adding { close: c, .. } | VbStream::Closing { consumer: c, .. } => {
                        *c = close;
                    }
                    VbStream::Established { opaque } => {
                        let opaque = *opaque;
                        *entry = VbStream::Closing {
                            stream: Some(opaque),
                            consumer: close,
                            producer: None,
                        };
                    }
                }
            }
        }
        // Everything still pending now belongs to the shut and its bound; the
        // producer's answers are no longer waited for.
        let mut abandoned: Vec<(Opaque, Vbid)> = Vec::new();
        for (vb, entry) in &mut self.streams {
            match entry {
                VbStream::Adding { add, close, .. } => {
                    add.deadline = deadline;
                    if let Some(c) = close {
                        c.deadline = deadline;
                    }
                }
                VbStream::Established { .. } => {}
                VbStream::Closing {
                    consumer, producer, ..
                } => {
                    if let Some(c) = consumer {
                        c.deadline = deadline;
                    }
                    if let Some(p) = producer.take() {
                        abandoned.push((p.opaque, *vb));
                    }
                }
            }
        }
        abandoned.sort_unstable();
        for (opaque, vb) in abandoned {
            self.abandon(opaque, StreamOp::CloseStream, vb, Side::Producer);
            self.settle(vb);
        }
    }

    fn on_timeout(&mut self, state: State, now: Instant, out: &mut Vec<Action>) -> State {
        let expired = |d: Option<Instant>| d.is_some_and(|d| d <= now);
        match state {
            State::Setup(s) => {
                // Every pending command, by kind, in command opaque order.
                let mut adds: Vec<(Opaque, Vbid, Option<Instant>)> = Vec::new();
                let mut consumer_closes = Vec::new();
                let mut producer_closes = Vec::new();
                for (vb, entry) in &self.streams {
                    for (op, side, p) in entry.pending().into_iter().flatten() {
                        let list = match (op, side) {
                            (StreamOp::AddStream, _) => &mut adds,
                            (StreamOp::CloseStream, Side::Consumer) => &mut consumer_closes,
                            (StreamOp::CloseStream, Side::Producer) => &mut producer_closes,
                        };
                        list.push((p.opaque, *vb, p.deadline));
                    }
                }
                adds.sort_unstable();
                consumer_closes.sort_unstable();
                producer_closes.sort_unstable();
                let late = |l: &[(Opaque, Vbid, Option<Instant>)]| -> BTreeSet<Vbid> {
                    l.iter()
                        .filter(|(_, _, d)| expired(*d))
                        .map(|(_, vb, _)| *vb)
                        .collect()
                };
                let late_adds = late(&adds);
                let mut late_closes = late(&consumer_closes);
                // The consumer owes the answer unless only producer closes are late.
                let side = if late_adds.is_empty() && late_closes.is_empty() {
                    Side::Producer
                } else {
                    Side::Consumer
                };
                late_closes.extend(late(&producer_closes));
                if late_adds.is_empty() && late_closes.is_empty() {
                    return State::Setup(s);
                }
                let waiting_for = match s.next_state {
                    AfterSetup::Shut => WaitingFor::Shut,
                    AfterSetup::Idle if !late_adds.is_empty() => WaitingFor::AddStream,
                    AfterSetup::Idle | AfterSetup::Takeover(_) => WaitingFor::CloseStream,
                };
                let vbuckets: Vec<Vbid> = late_adds.union(&late_closes).copied().collect();
                warn!(?waiting_for, ?vbuckets, "set-up timed out");
                for (list, op, side) in [
                    (&adds, StreamOp::AddStream, Side::Consumer),
                    (&consumer_closes, StreamOp::CloseStream, Side::Consumer),
                    (&producer_closes, StreamOp::CloseStream, Side::Producer),
                ] {
                    for (o, vb, _) in list {
                        self.abandon(*o, op, *vb, side);
                    }
                }
                self.teardown(
                    Some(s.owner),
                    ConnError::Timeout {
                        waiting_for,
                        vbuckets,
                        side,
                    },
                    out,
                )
            }
            State::Takeover(t) if expired(t.deadline) => {
                warn!(vb = %t.vb, sub = ?t.sub, open_ack = t.open_ack, "takeover timed out");
                if !t.open_ack {
                    self.abandon(t.add_opaque, StreamOp::AddStream, t.vb, Side::Consumer);
                }
                // The producer owes the next step only once the stream exists and
                // no state change is waiting for the consumer's answer.
                let side = if t.sub == TakeoverPhase::OpaqueKnown && t.requested_vb_state.is_none()
                {
                    Side::Producer
                } else {
                    Side::Consumer
                };
                self.teardown(
                    Some(t.owner),
                    ConnError::Timeout {
                        waiting_for: WaitingFor::Takeover,
                        vbuckets: vec![t.vb],
                        side,
                    },
                    out,
                )
            }
            other => other,
        }
    }

    // ---- frames from the consumer node ---------------------------------------

    fn on_consumer_frame(&mut self, state: State, frame: Frame, out: &mut Vec<Action>) -> State {
        match state {
            State::Idle => {
                if is_our_answer(&frame) {
                    // §11.7 IMPROVE: nobody waits for it; never forward it.
                    debug!(opcode = %frame.opcode(), opaque = %frame.opaque(), status = %frame.status(),
                        "dropping unexpected answer in idle");
                } else {
                    out.push(Action::ForwardToProducer(frame));
                }
                State::Idle
            }
            State::Setup(s) => self.setup_consumer_frame(s, frame, out),
            State::Takeover(t) => self.takeover_consumer_frame(t, frame, out),
            State::Shut => {
                debug!(opcode = %frame.opcode(), opaque = %frame.opaque(), "shut: dropping consumer packet");
                State::Shut
            }
            closed @ State::Closed(_) => closed,
        }
    }

    fn setup_consumer_frame(&mut self, mut s: Setup, frame: Frame, out: &mut Vec<Action>) -> State {
        let opaque = frame.opaque();
        if frame.is_client_response(Opcode::DcpAddStream) {
            let Some(vb) = self.find_command(opaque, StreamOp::AddStream, Side::Consumer) else {
                return self.unmatched_answer(State::Setup(s), Side::Consumer, &frame, out);
            };
            let status = frame.status();
            if status.is_success() {
                // Malformed extras do not change the outcome; the status decides.
                let answered = AddStreamResponse::parse(&frame)
                    .ok()
                    .and_then(|r| r.stream_opaque);
                debug!(vb = %vb, opaque = %opaque, "stream established");
                self.become_answered(vb, Answer::AddOk { answered });
            } else {
                if s.next_state == AfterSetup::Shut {
                    debug!(vb = %vb, opaque = %opaque, %status, "add-stream failed while shutting");
                } else {
                    debug!(vb = %vb, opaque = %opaque, %status, "add-stream failed");
                    s.errors.push(StreamFailure {
                        op: StreamOp::AddStream,
                        vb,
                        side: Side::Consumer,
                        opaque,
                        status,
                    });
                }
                self.become_answered(vb, Answer::AddFailed);
            }
            return self.check_setup_done(s, out);
        }
        if frame.is_client_response(Opcode::DcpCloseStream) {
            let Some(vb) = self.find_command(opaque, StreamOp::CloseStream, Side::Consumer) else {
                return self.unmatched_answer(State::Setup(s), Side::Consumer, &frame, out);
            };
            let status = frame.status();
            let closed = close_succeeded(status);
            if closed {
                debug!(vb = %vb, opaque = %opaque, %status, "consumer closed stream");
            } else {
                debug!(vb = %vb, opaque = %opaque, %status, "consumer close-stream failed");
                s.errors.push(StreamFailure {
                    op: StreamOp::CloseStream,
                    vb,
                    side: Side::Consumer,
                    opaque,
                    status,
                });
            }
            self.become_answered(
                vb,
                Answer::Close {
                    side: Side::Consumer,
                    closed,
                },
            );
            return self.check_setup_done(s, out);
        }
        if frame.is_client_request(Opcode::DcpStreamReq) {
            // §5.9 register-before-forward: note the wire opaque of the new stream.
            let vb = frame.vbucket();
            if let Some(VbStream::Adding { stream_req, .. }) = self.streams.get_mut(&vb) {
                debug!(vb = %vb, stream_opaque = %opaque, "stream request for pending add");
                *stream_req = Some(opaque);
            }
        }
        out.push(Action::ForwardToProducer(frame));
        State::Setup(s)
    }

    fn takeover_consumer_frame(
        &mut self,
        mut t: Takeover,
        frame: Frame,
        out: &mut Vec<Action>,
    ) -> State {
        let opaque = frame.opaque();
        if frame.is_client_request(Opcode::DcpStreamReq) {
            if t.sub == TakeoverPhase::Requested {
                let got = frame.vbucket();
                if got != t.vb {
                    debug!(expected = %t.vb, got = %got, opaque = %opaque, "stream request for another vbucket during takeover");
                    return self.teardown(
                        Some(t.owner),
                        ConnError::UnexpectedStreamReq {
                            expected: t.vb,
                            got,
                            opaque,
                        },
                        out,
                    );
                }
                // MB-10465: learn the stream opaque before the producer can use it.
                debug!(vb = %t.vb, stream_opaque = %opaque, "takeover stream requested");
                t.stream_opaque = Some(opaque);
                t.sub = TakeoverPhase::OpaqueKnown;
            }
            out.push(Action::ForwardToProducer(frame));
            return State::Takeover(t);
        }
        if frame.is_client_response(Opcode::DcpAddStream) {
            if !t.open_ack && opaque == t.add_opaque {
                let status = frame.status();
                if status.is_success() {
                    debug!(vb = %t.vb, opaque = %opaque, "takeover stream opened");
                    t.open_ack = true;
                    return maybe_finish_takeover(t, out);
                }
                debug!(vb = %t.vb, opaque = %opaque, %status, "takeover add-stream failed");
                out.push(Action::Reply(
                    t.owner,
                    Err(SetupError::TakeoverFailed {
                        vb: t.vb,
                        opaque,
                        status,
                        step: TakeoverStep::AddStream,
                    }),
                ));
                return State::Idle;
            }
            if t.open_ack {
                debug!(opaque = %opaque, "dropping add-stream answer after the takeover's was seen");
                return State::Takeover(t);
            }
            return self.unmatched_answer(State::Takeover(t), Side::Consumer, &frame, out);
        }
        if frame.is_client_response(Opcode::DcpCloseStream) {
            debug!(opaque = %opaque, status = %frame.status(), "dropping close-stream answer during takeover");
            return State::Takeover(t);
        }
        if frame.is_client_response(Opcode::DcpSetVbucketState) {
            let status = frame.status();
            // Always forwarded: the producer waits for it (§5.7).
            out.push(Action::ForwardToProducer(frame));
            if t.sub == TakeoverPhase::OpaqueKnown && t.stream_opaque == Some(opaque) {
                if !status.is_success() {
                    debug!(vb = %t.vb, opaque = %opaque, %status, requested = ?t.requested_vb_state,
                        "set-vbucket-state refused during takeover");
                    return self.teardown(
                        Some(t.owner),
                        ConnError::TakeoverFailed {
                            vb: t.vb,
                            opaque,
                            status,
                        },
                        out,
                    );
                }
                if t.requested_vb_state == Some(VbState::Active) {
                    debug!(vb = %t.vb, "takeover: consumer vbucket active");
                    t.sub = TakeoverPhase::Active;
                    return maybe_finish_takeover(t, out);
                }
                debug!(vb = %t.vb, state = ?t.requested_vb_state, "takeover: state change acknowledged");
                t.requested_vb_state = None;
            }
            return State::Takeover(t);
        }
        out.push(Action::ForwardToProducer(frame));
        State::Takeover(t)
    }

    /// An ADD/CLOSE_STREAM answer matching nothing pending. Abandoned commands'
    /// answers are dropped; otherwise it is a protocol error.
    fn unmatched_answer(
        &mut self,
        state: State,
        side: Side,
        frame: &Frame,
        out: &mut Vec<Action>,
    ) -> State {
        let opaque = frame.opaque();
        let opcode = frame.opcode();
        if let Some(cmd) = self.abandoned.get(opaque) {
            debug!(%side, %opcode, opaque = %opaque, vb = %cmd.vb, status = %frame.status(),
                "dropping answer to an abandoned command");
            return state;
        }
        debug!(%side, %opcode, opaque = %opaque, "answer with unknown opaque");
        self.teardown(
            owner_of(&state),
            ConnError::UnknownOpaque {
                side,
                opcode,
                opaque,
            },
            out,
        )
    }

    // ---- notifications from the producer half --------------------------------

    fn on_producer_stream_end(
        &mut self,
        state: State,
        vb: Vbid,
        opaque: Opaque,
        reason: EndReason,
        out: &mut Vec<Action>,
    ) -> State {
        match state {
            State::Idle => {
                self.end_established(vb, opaque, reason);
                State::Idle
            }
            State::Setup(s) => {
                // §5.9 required rule, one match on the vbucket's state.
                match self.streams.get(&vb) {
                    Some(entry) if entry.established().is_some() => {
                        self.end_established(vb, opaque, reason);
                        State::Setup(s)
                    }
                    Some(VbStream::Adding { stream_req, .. }) if *stream_req == Some(opaque) => {
                        if s.next_state == AfterSetup::Shut {
                            debug!(vb = %vb, opaque = %opaque, %reason,
                                "stream being added ended while shutting; its close resolves it");
                            return State::Setup(s);
                        }
                        debug!(vb = %vb, opaque = %opaque, %reason, "stream ended before its add-stream answer");
                        self.teardown(
                            Some(s.owner),
                            ConnError::UnexpectedStreamEnd { vb, opaque, reason },
                            out,
                        )
                    }
                    Some(VbStream::Adding { stream_req, .. }) => {
                        debug!(vb = %vb, opaque = %opaque, recorded = ?stream_req, %reason,
                            "stream end of an older stream of a vbucket being added: ignored");
                        State::Setup(s)
                    }
                    Some(VbStream::Closing { .. } | VbStream::Established { .. }) | None => {
                        debug!(vb = %vb, opaque = %opaque, %reason, "stream end ignored");
                        State::Setup(s)
                    }
                }
            }
            State::Takeover(mut t) => {
                if self.is_established(vb) {
                    self.end_established(vb, opaque, reason);
                    return State::Takeover(t);
                }
                if vb == t.vb && t.stream_opaque == Some(opaque) {
                    if t.sub != TakeoverPhase::Active {
                        // §5.7 Takeover IMPROVE (MUST).
                        debug!(vb = %vb, opaque = %opaque, %reason, sub = ?t.sub, "takeover stream ended early");
                        return self.teardown(
                            Some(t.owner),
                            ConnError::UnexpectedStreamEnd { vb, opaque, reason },
                            out,
                        );
                    }
                    if reason == EndReason::Ok && !t.open_ack {
                        // The consumer is active and the producer finished the stream:
                        // the takeover happened whether or not the ADD_STREAM answer
                        // ever comes (it is dropped if it does).
                        debug!(vb = %vb, opaque = %opaque, "takeover stream finished before its add-stream answer");
                        self.abandon(t.add_opaque, StreamOp::AddStream, t.vb, Side::Consumer);
                        t.open_ack = true;
                        return maybe_finish_takeover(t, out);
                    }
                    debug!(vb = %vb, opaque = %opaque, %reason, "takeover stream ended after the state change");
                } else {
                    debug!(vb = %vb, opaque = %opaque, %reason, "stream end ignored during takeover");
                }
                State::Takeover(t)
            }
            State::Shut => State::Shut,
            closed @ State::Closed(_) => closed,
        }
    }

    fn on_producer_close_answer(
        &mut self,
        state: State,
        opaque: Opaque,
        status: Status,
        out: &mut Vec<Action>,
    ) -> State {
        let State::Setup(mut s) = state else {
            debug!(opaque = %opaque, %status, "producer close-stream answer ignored");
            return state;
        };
        if s.producer_answers == ProducerAnswers::Ignored {
            debug!(opaque = %opaque, %status, "producer close-stream answer ignored while shutting");
            return State::Setup(s);
        }
        let Some(vb) = self.find_command(opaque, StreamOp::CloseStream, Side::Producer) else {
            if let Some(cmd) = self.abandoned.get(opaque) {
                debug!(opaque = %opaque, vb = %cmd.vb, %status, "dropping producer answer to an abandoned close");
                return State::Setup(s);
            }
            debug!(opaque = %opaque, %status, "producer close-stream answer with unknown opaque");
            return self.teardown(
                Some(s.owner),
                ConnError::UnknownOpaque {
                    side: Side::Producer,
                    opcode: Opcode::DcpCloseStream,
                    opaque,
                },
                out,
            );
        };
        let closed = close_succeeded(status);
        if closed {
            debug!(vb = %vb, opaque = %opaque, %status, "producer closed stream");
        } else {
            debug!(vb = %vb, opaque = %opaque, %status, "producer close-stream failed");
            s.errors.push(StreamFailure {
                op: StreamOp::CloseStream,
                vb,
                side: Side::Producer,
                opaque,
                status,
            });
        }
        self.become_answered(
            vb,
            Answer::Close {
                side: Side::Producer,
                closed,
            },
        );
        self.check_setup_done(s, out)
    }

    // ---- per-vbucket transitions ---------------------------------------------

    /// The vbucket whose pending `op` to `side` carries command opaque `opaque`.
    /// Answers name only our opaque; the entries are the index (at most two
    /// pending commands per vbucket, so a scan is cheap and nothing is duplicated).
    fn find_command(&self, opaque: Opaque, op: StreamOp, side: Side) -> Option<Vbid> {
        self.streams.iter().find_map(|(vb, entry)| {
            entry
                .pending()
                .into_iter()
                .flatten()
                .any(|(o, sd, p)| o == op && sd == side && p.opaque == opaque)
                .then_some(*vb)
        })
    }

    /// The transition of `vb`'s entry on an answer to one of its pending commands
    /// (found by [`Self::find_command`]): one match on (entry, answer).
    fn become_answered(&mut self, vb: Vbid, answer: Answer) {
        let Some(entry) = self.streams.remove(&vb) else {
            return;
        };
        let next = match (entry, answer) {
            (
                VbStream::Adding {
                    stream_req, close, ..
                },
                Answer::AddOk { answered },
            ) => {
                // The recorded STREAM_REQ opaque is authoritative (same header
                // encoding as the STREAM_END); the answer's extras are only a
                // cross-check, in either byte order (both are seen in the wild).
                if let (Some(a), Some(r)) = (answered, stream_req) {
                    if a != r && a.byte_reversed() != r {
                        debug!(vb = %vb, answered = %a, recorded = %r,
                            "add-stream answer names another stream opaque than the recorded stream request");
                    }
                }
                let opaque = match (stream_req, answered) {
                    (Some(r), _) => Some(StreamOpaque::Recorded(r)),
                    (None, Some(a)) => Some(StreamOpaque::Answered(a)),
                    (None, None) => None,
                };
                match close {
                    None => Some(VbStream::Established { opaque }),
                    // Stuck shut: established, and its close is on the way.
                    Some(c) => Some(VbStream::Closing {
                        stream: Some(opaque),
                        consumer: Some(c),
                        producer: None,
                    }),
                }
            }
            (VbStream::Adding { close, .. }, Answer::AddFailed) => {
                close.map(|c| VbStream::Closing {
                    stream: None,
                    consumer: Some(c),
                    producer: None,
                })
            }
            (
                VbStream::Adding { add, .. },
                Answer::Close {
                    side: Side::Consumer,
                    closed: true,
                },
            ) => {
                // §5.6 IMPROVE: a pending ADD is resolved by the close
                // acknowledgement (the node may never answer it, §10.3 case 2).
                self.abandon(add.opaque, StreamOp::AddStream, vb, Side::Consumer);
                None
            }
            (
                VbStream::Adding {
                    add, stream_req, ..
                },
                Answer::Close {
                    side: Side::Consumer,
                    closed: false,
                },
            ) => Some(VbStream::Adding {
                add,
                stream_req,
                close: None,
            }),
            (
                VbStream::Closing {
                    stream,
                    consumer,
                    producer,
                },
                Answer::Close { side, closed },
            ) => {
                let (consumer, producer) = match side {
                    Side::Consumer => (None, producer),
                    Side::Producer => (consumer, None),
                };
                let stream = if closed { None } else { stream };
                VbStream::Closing {
                    stream,
                    consumer,
                    producer,
                }
                .settle()
            }
            // Not reachable: `find_command` found the command in this entry.
            (entry, answer) => {
                debug!(vb = %vb, ?entry, ?answer, "answer for a command the vbucket does not wait for: ignored");
                Some(entry)
            }
        };
        if let Some(next) = next {
            self.streams.insert(vb, next);
        }
    }

    /// MB-17241: the producer ended an established stream; follow KV's view.
    fn end_established(&mut self, vb: Vbid, opaque: Opaque, reason: EndReason) {
        let Some(known) = self.streams.get(&vb).and_then(VbStream::established) else {
            debug!(vb = %vb, opaque = %opaque, %reason, "stream end for a vbucket without stream: ignored");
            return;
        };
        match known {
            Some(known) if !known.matches(opaque) => {
                debug!(vb = %vb, opaque = %opaque, current = ?known, %reason,
                    "stream end of an older stream: ignored (the consumer ignores it too)");
            }
            _ => {
                debug!(vb = %vb, opaque = %opaque, %reason, "producer ended stream");
                match self.streams.get_mut(&vb) {
                    // Its closes are still answered; the stream no longer counts.
                    Some(VbStream::Closing { stream, .. }) => *stream = None,
                    _ => {
                        self.streams.remove(&vb);
                    }
                }
            }
        }
    }

    /// Settles `vb`'s entry once a pending command was dropped from it.
    fn settle(&mut self, vb: Vbid) {
        if let Some(entry) = self.streams.remove(&vb) {
            if let Some(entry) = entry.settle() {
                self.streams.insert(vb, entry);
            }
        }
    }

    /// Leaving Setup other than by completion: forget every pending command; the
    /// streams that count as established stay, as `Established`.
    fn drop_pending(&mut self) {
        self.streams = std::mem::take(&mut self.streams)
            .into_iter()
            .filter_map(|(vb, entry)| {
                entry
                    .established()
                    .map(|opaque| (vb, VbStream::Established { opaque }))
            })
            .collect();
    }

    fn alloc_opaque(&mut self) -> Opaque {
        let o = Opaque(self.next_opaque);
        self.next_opaque = self
            .next_opaque
            .checked_add(1)
            .unwrap_or(COMMAND_OPAQUE_BASE);
        o
    }

    fn abandon(&mut self, opaque: Opaque, op: StreamOp, vb: Vbid, side: Side) {
        self.abandoned.insert(opaque, Cmd { op, vb, side });
    }

    /// §5.5 completion check: reply once nothing is pending, then move on.
    fn check_setup_done(&mut self, s: Setup, out: &mut Vec<Action>) -> State {
        if self.streams.values().any(VbStream::is_pending) {
            return State::Setup(s);
        }
        let (outcome, next) = match s.next_state {
            AfterSetup::Idle => (Outcome::StreamsSetUp, State::Idle),
            AfterSetup::Shut => (Outcome::Shut, State::Shut),
            AfterSetup::Takeover(vb) if s.errors.is_empty() => {
                debug!(vb = %vb, "replication stream closed; starting the takeover");
                self.takeover_next = Some((vb, s.owner));
                return State::Idle;
            }
            AfterSetup::Takeover(_) => (Outcome::StreamsSetUp, State::Idle),
        };
        let result = if s.errors.is_empty() {
            Ok(outcome)
        } else {
            Err(SetupError::StreamsFailed { failures: s.errors })
        };
        debug!(?result, "set-up finished");
        out.push(Action::Reply(s.owner, result));
        next
    }

    fn on_connection_closed(&mut self, state: State, side: Side, out: &mut Vec<Action>) -> State {
        match state {
            closed @ State::Closed(_) => closed,
            other => self.teardown(owner_of(&other), ConnError::PeerClosed { side }, out),
        }
    }

    /// Fails the operation in flight (if any) and tears the pair down.
    fn teardown(&mut self, owner: Option<ReplyTo>, e: ConnError, out: &mut Vec<Action>) -> State {
        self.drop_pending();
        if let Some(owner) = owner {
            out.push(Action::Reply(owner, Err(SetupError::from_teardown(&e))));
        }
        out.push(Action::Close(e.clone()));
        State::Closed(e)
    }
}

impl Setup {
    fn new(owner: ReplyTo, next_state: AfterSetup) -> Setup {
        Setup {
            owner,
            errors: Vec::new(),
            next_state,
            producer_answers: ProducerAnswers::Accounted,
        }
    }
}

/// §5.7 "maybe finish": both the ADD_STREAM answer and the active state change are
/// needed, in either order (MB-10779).
fn maybe_finish_takeover(t: Takeover, out: &mut Vec<Action>) -> State {
    if t.open_ack && t.sub == TakeoverPhase::Active {
        debug!(vb = %t.vb, "takeover complete");
        out.push(Action::Reply(
            t.owner,
            Ok(Outcome::TakeoverComplete { vb: t.vb }),
        ));
        return State::Idle;
    }
    State::Takeover(t)
}

fn on_producer_set_vbucket_state(
    state: State,
    vb: Vbid,
    opaque: Opaque,
    vb_state: VbState,
) -> State {
    match state {
        State::Takeover(mut t)
            if t.sub == TakeoverPhase::OpaqueKnown
                && t.requested_vb_state.is_none()
                && t.stream_opaque == Some(opaque) =>
        {
            debug!(vb = %vb, opaque = %opaque, state = %vb_state, "takeover: producer requests state");
            t.requested_vb_state = Some(vb_state);
            State::Takeover(t)
        }
        other => {
            debug!(vb = %vb, opaque = %opaque, state = %vb_state, "set-vbucket-state ignored");
            other
        }
    }
}

fn owner_of(state: &State) -> Option<ReplyTo> {
    match state {
        State::Setup(s) => Some(s.owner),
        State::Takeover(t) => Some(t.owner),
        State::Idle | State::Shut | State::Closed(_) => None,
    }
}

/// The typed refusal of a command in a state that does not accept it (§11.9).
fn refusal(state: &State) -> SetupError {
    match state {
        State::Setup(s) if s.next_state == AfterSetup::Shut => SetupError::Shut,
        State::Setup(s) => SetupError::Busy {
            in_progress: match s.next_state {
                AfterSetup::Takeover(vb) => Operation::Takeover { vb },
                _ => Operation::SetupStreams,
            },
        },
        State::Takeover(t) => SetupError::Busy {
            in_progress: Operation::Takeover { vb: t.vb },
        },
        State::Shut => SetupError::Shut,
        State::Closed(e) => SetupError::TornDown(e.clone()),
        State::Idle => unreachable!("idle accepts every command"),
    }
}

/// §5.5 with the 0x0A IMPROVE: "already closed" counts as closed.
fn close_succeeded(status: Status) -> bool {
    status.is_success() || status.is_no_stream()
}

/// Answers to commands only we send (ADD_STREAM, CLOSE_STREAM).
fn is_our_answer(frame: &Frame) -> bool {
    frame.is_client_response(Opcode::DcpAddStream)
        || frame.is_client_response(Opcode::DcpCloseStream)
}

fn add_stream(vb: Vbid, opaque: Opaque, takeover: bool) -> Frame {
    let flags = if takeover { StreamFlags::TAKEOVER } else { 0 };
    AddStream {
        vbucket: vb,
        opaque,
        flags: StreamFlags(flags),
    }
    .to_frame()
}

fn close_stream(vb: Vbid, opaque: Opaque) -> Frame {
    BareRequest::new(Opcode::DcpCloseStream, vb, opaque).to_frame()
}

#[cfg(test)]
mod tests {
    //! One test per row and race of §5.7, §5.9 and the Conduit rules. Frames are
    //! real, built with mcbp's typed messages; actions are asserted exactly.

    use mcbp::dcp::{AddStreamResponse, StreamReq};
    use mcbp::{Response, Seqno, VbUuid};

    use super::*;

    const R: ReplyTo = ReplyTo(1);
    const R2: ReplyTo = ReplyTo(2);

    fn vb(n: u16) -> Vbid {
        Vbid(n)
    }

    fn vbs(v: &[u16]) -> BTreeSet<Vbid> {
        v.iter().copied().map(Vbid).collect()
    }

    /// Our i-th command opaque.
    fn op(i: u32) -> Opaque {
        Opaque(COMMAND_OPAQUE_BASE + i)
    }

    /// The consumer node's wire stream opaque for a new stream of `vb`.
    fn w(v: u16) -> Opaque {
        Opaque(0x100 + u32::from(v))
    }

    /// The wire opaque of the stream that was open before the test started.
    fn w_old(v: u16) -> Opaque {
        Opaque(0x10 + u32::from(v))
    }

    fn cfg() -> CoreConfig {
        CoreConfig {
            setup_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            takeover_timeout: Duration::from_secs(60),
            shut_timeout: Duration::from_secs(7),
        }
    }

    fn conn() -> ConsumerConn {
        ConsumerConn::new(cfg())
    }

    /// A connection in Idle whose streams for `open` were established earlier
    /// with wire opaques `w_old(v)`.
    fn with_open_streams(open: &[u16]) -> ConsumerConn {
        let mut c = conn();
        for &v in open {
            c.streams.insert(
                vb(v),
                VbStream::Established {
                    opaque: Some(StreamOpaque::Recorded(w_old(v))),
                },
            );
        }
        c
    }

    fn add_frame(v: u16, opaque: Opaque, takeover: bool) -> Frame {
        let flags = if takeover { StreamFlags::TAKEOVER } else { 0 };
        AddStream {
            vbucket: vb(v),
            opaque,
            flags: StreamFlags(flags),
        }
        .to_frame()
    }

    fn close_frame(v: u16, opaque: Opaque) -> Frame {
        BareRequest::new(Opcode::DcpCloseStream, vb(v), opaque).to_frame()
    }

    fn add_ok(opaque: Opaque, stream: Opaque) -> Event {
        Event::FromConsumer(
            AddStreamResponse {
                opaque,
                status: Status::Success,
                stream_opaque: Some(stream),
            }
            .to_frame(),
        )
    }

    fn add_err(opaque: Opaque, status: Status) -> Event {
        Event::FromConsumer(
            AddStreamResponse {
                opaque,
                status,
                stream_opaque: None,
            }
            .to_frame(),
        )
    }

    fn close_answer(opaque: Opaque, status: Status) -> Event {
        Event::FromConsumer(
            Response::status_only(Opcode::DcpCloseStream, opaque, status).to_frame(),
        )
    }

    fn producer_close(opaque: Opaque, status: Status) -> Event {
        Event::ProducerCloseStreamResponse { opaque, status }
    }

    fn stream_req_frame(v: u16, opaque: Opaque, takeover: bool) -> Frame {
        let flags = if takeover { StreamFlags::TAKEOVER } else { 0 };
        StreamReq {
            vbucket: vb(v),
            opaque,
            flags: StreamFlags(flags),
            start: Seqno(0),
            end: Seqno(u64::MAX),
            vb_uuid: VbUuid(0),
            snap_start: Seqno(0),
            snap_end: Seqno(0),
            value: bytes::Bytes::new(),
        }
        .to_frame()
    }

    fn end(v: u16, opaque: Opaque, reason: EndReason) -> Event {
        Event::ProducerStreamEnd {
            vb: vb(v),
            opaque,
            reason,
        }
    }

    fn svbs_answer(opaque: Opaque, status: Status) -> Frame {
        Response::status_only(Opcode::DcpSetVbucketState, opaque, status).to_frame()
    }

    fn svbs(v: u16, opaque: Opaque, state: VbState) -> Event {
        Event::ProducerSetVbucketState {
            vb: vb(v),
            opaque,
            state,
        }
    }

    fn setup(want: &[u16]) -> Event {
        Event::SetupStreams {
            want: vbs(want),
            reply: R,
        }
    }

    fn t0() -> Instant {
        Instant::now()
    }

    fn reply_ok(o: Outcome) -> Vec<Action> {
        vec![Action::Reply(R, Ok(o))]
    }

    fn reply_err(e: SetupError) -> Vec<Action> {
        vec![Action::Reply(R, Err(e))]
    }

    fn failure(op: StreamOp, v: u16, side: Side, opaque: Opaque, status: Status) -> StreamFailure {
        StreamFailure {
            op,
            vb: vb(v),
            side,
            opaque,
            status,
        }
    }

    /// Drives a set-up of `want` from an empty connection to completion.
    fn established(want: &[u16]) -> ConsumerConn {
        let t = t0();
        let mut c = conn();
        let out = c.handle(t, setup(want));
        assert_eq!(out.len(), want.len());
        for (i, &v) in want.iter().enumerate() {
            let req = stream_req_frame(v, w(v), false);
            assert_eq!(
                c.handle(t, Event::FromConsumer(req.clone())),
                vec![Action::ForwardToProducer(req)]
            );
            let out = c.handle(t, add_ok(op(i as u32), w(v)));
            if i + 1 == want.len() {
                assert_eq!(out, reply_ok(Outcome::StreamsSetUp));
            } else {
                assert!(out.is_empty());
            }
        }
        assert_eq!(c.partitions(), vbs(want));
        c
    }

    // ---- Idle ------------------------------------------------------------------

    /// §5.6: nothing to add or close -> `ok` at once, stay Idle.
    #[test]
    fn setup_with_nothing_to_change_replies_at_once() {
        let mut c = with_open_streams(&[1, 2]);
        assert_eq!(
            c.handle(t0(), setup(&[1, 2])),
            reply_ok(Outcome::StreamsSetUp)
        );
        assert_eq!(c.phase(), Phase::Idle);
        assert_eq!(c.next_deadline(), None);
    }

    /// §5.6 steps 1–3: ADDs to the consumer, CLOSEs to both nodes, pipelined, each
    /// with its own opaque.
    #[test]
    fn setup_in_idle_sends_add_streams_and_closes_on_both_sides() {
        let mut c = with_open_streams(&[1, 2]);
        let out = c.handle(t0(), setup(&[2, 3, 4]));
        assert_eq!(
            out,
            vec![
                Action::SendToConsumer(add_frame(3, op(0), false)),
                Action::SendToConsumer(add_frame(4, op(1), false)),
                Action::SendToConsumer(close_frame(1, op(2))),
                Action::SendToProducer(close_frame(1, op(3))),
            ]
        );
        assert_eq!(c.phase(), Phase::Setup);
        // get_partitions is served while the set-up waits (§7.5).
        assert_eq!(c.partitions(), vbs(&[1, 2]));
    }

    /// §5.5: the reply comes once every ADD is answered; successes join partitions.
    #[test]
    fn setup_completes_when_every_add_is_answered() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(t, setup(&[3, 4]));
        assert!(c.handle(t, add_ok(op(1), w(4))).is_empty());
        assert_eq!(c.partitions(), vbs(&[4]));
        assert_eq!(
            c.handle(t, add_ok(op(0), w(3))),
            reply_ok(Outcome::StreamsSetUp)
        );
        assert_eq!(c.partitions(), vbs(&[3, 4]));
        assert_eq!(c.phase(), Phase::Idle);
    }

    /// §5.5: a failed ADD is reported with vb, opaque, side and status, and the vb
    /// stays out of partitions; the others are still accounted for.
    #[test]
    fn setup_reports_failed_add_streams_and_keeps_them_out_of_partitions() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(t, setup(&[3, 4]));
        assert!(c.handle(t, add_err(op(0), Status::NotMyVbucket)).is_empty());
        assert_eq!(
            c.handle(t, add_ok(op(1), w(4))),
            reply_err(SetupError::StreamsFailed {
                failures: vec![failure(
                    StreamOp::AddStream,
                    3,
                    Side::Consumer,
                    op(0),
                    Status::NotMyVbucket
                )]
            })
        );
        assert_eq!(c.partitions(), vbs(&[4]));
        assert_eq!(c.phase(), Phase::Idle);
    }

    /// §5.6: a close waits for both nodes' answers.
    #[test]
    fn setup_waits_for_both_close_answers() {
        let t = t0();
        let mut c = with_open_streams(&[1]);
        let _ = c.handle(t, setup(&[]));
        assert!(c.handle(t, close_answer(op(0), Status::Success)).is_empty());
        assert!(c.partitions().is_empty());
        assert_eq!(c.phase(), Phase::Setup);
        assert_eq!(
            c.handle(t, producer_close(op(1), Status::Success)),
            reply_ok(Outcome::StreamsSetUp)
        );
        assert_eq!(c.phase(), Phase::Idle);
    }

    /// §5.5 + IMPROVE: SUCCESS, KEY_ENOENT and DCP_STREAM_NOT_FOUND (0x0a) all count
    /// as closed, from either side.
    #[test]
    fn close_answers_key_enoent_and_stream_not_found_count_as_success_on_both_sides() {
        for consumer in [
            Status::Success,
            Status::KeyEnoent,
            Status::DcpStreamNotFound,
        ] {
            for producer in [
                Status::Success,
                Status::KeyEnoent,
                Status::DcpStreamNotFound,
            ] {
                let t = t0();
                let mut c = with_open_streams(&[1]);
                let _ = c.handle(t, setup(&[]));
                assert!(c.handle(t, producer_close(op(1), producer)).is_empty());
                assert_eq!(
                    c.handle(t, close_answer(op(0), consumer)),
                    reply_ok(Outcome::StreamsSetUp),
                    "{consumer} {producer}"
                );
                assert!(c.partitions().is_empty());
            }
        }
    }

    /// §5.5: a failed close is reported with its side.
    #[test]
    fn close_failures_are_reported_with_their_side() {
        let t = t0();
        let mut c = with_open_streams(&[1, 2]);
        let _ = c.handle(t, setup(&[]));
        // op(0)/op(1): consumer/producer close of vb 1; op(2)/op(3): of vb 2.
        assert!(c.handle(t, close_answer(op(0), Status::Einval)).is_empty());
        assert!(c
            .handle(t, producer_close(op(1), Status::Success))
            .is_empty());
        assert!(c.handle(t, close_answer(op(2), Status::Success)).is_empty());
        assert_eq!(
            c.handle(t, producer_close(op(3), Status::Etmpfail)),
            reply_err(SetupError::StreamsFailed {
                failures: vec![
                    failure(
                        StreamOp::CloseStream,
                        1,
                        Side::Consumer,
                        op(0),
                        Status::Einval
                    ),
                    failure(
                        StreamOp::CloseStream,
                        2,
                        Side::Producer,
                        op(3),
                        Status::Etmpfail
                    ),
                ]
            })
        );
        // Each side's success removes the vb (§5.5); both vbs had one.
        assert!(c.partitions().is_empty());
    }

    /// §5.2 maybe_close_stream = setup_streams(partitions - {v}).
    #[test]
    fn close_stream_command_closes_only_that_vbucket() {
        let t = t0();
        let mut c = with_open_streams(&[1, 2]);
        let out = c.handle(
            t,
            Event::CloseStream {
                vb: vb(2),
                reply: R,
            },
        );
        assert_eq!(
            out,
            vec![
                Action::SendToConsumer(close_frame(2, op(0))),
                Action::SendToProducer(close_frame(2, op(1))),
            ]
        );
        assert!(c.handle(t, close_answer(op(0), Status::Success)).is_empty());
        assert_eq!(
            c.handle(t, producer_close(op(1), Status::Success)),
            reply_ok(Outcome::StreamsSetUp)
        );
        assert_eq!(c.partitions(), vbs(&[1]));
    }

    /// §5.6: maybe_close_stream of a vb that is not open -> immediate `ok`.
    #[test]
    fn close_stream_of_a_vbucket_without_stream_replies_at_once() {
        let mut c = with_open_streams(&[1]);
        assert_eq!(
            c.handle(
                t0(),
                Event::CloseStream {
                    vb: vb(5),
                    reply: R
                }
            ),
            reply_ok(Outcome::StreamsSetUp)
        );
    }

    /// §5.7 Idle / §11.7 IMPROVE: answers nobody waits for are dropped, not forwarded.
    #[test]
    fn idle_drops_unexpected_add_and_close_answers() {
        let t = t0();
        let mut c = with_open_streams(&[1]);
        assert!(c.handle(t, add_ok(op(7), w(1))).is_empty());
        assert!(c
            .handle(t, add_err(Opaque(1), Status::KeyEexists))
            .is_empty());
        assert!(c
            .handle(t, close_answer(Opaque(1), Status::Success))
            .is_empty());
        assert_eq!(c.partitions(), vbs(&[1]));
        assert_eq!(c.phase(), Phase::Idle);
    }

    /// §5.7 Idle: STREAM_REQ, SET_VBUCKET_STATE answers and anything else are
    /// forwarded unchanged.
    #[test]
    fn idle_forwards_stream_requests_and_other_frames() {
        let t = t0();
        let mut c = with_open_streams(&[1]);
        for f in [
            stream_req_frame(1, w_old(1), false),
            svbs_answer(w_old(1), Status::Success),
            mcbp::dcp::BufferAck {
                vbucket: vb(0),
                opaque: Opaque(0),
                bytes: 100,
            }
            .to_frame(),
        ] {
            assert_eq!(
                c.handle(t, Event::FromConsumer(f.clone())),
                vec![Action::ForwardToProducer(f)]
            );
        }
    }

    /// §5.7 Idle, MB-17241: the producer ended an established stream.
    #[test]
    fn idle_stream_end_for_an_open_vbucket_removes_it() {
        let mut c = with_open_streams(&[1, 2]);
        assert!(c
            .handle(t0(), end(1, w_old(1), EndReason::StateChanged))
            .is_empty());
        assert_eq!(c.partitions(), vbs(&[2]));
    }

    /// A stream established without a known wire opaque is removed by any end.
    #[test]
    fn idle_stream_end_for_an_open_vbucket_with_unknown_opaque_removes_it() {
        let mut c = with_open_streams(&[1]);
        c.streams
            .insert(vb(1), VbStream::Established { opaque: None });
        assert!(c
            .handle(t0(), end(1, Opaque(0x999), EndReason::Closed))
            .is_empty());
        assert!(c.partitions().is_empty());
    }

    /// §5.7 Idle: STREAM_END for another vb is ignored.
    #[test]
    fn idle_stream_end_for_another_vbucket_is_ignored() {
        let mut c = with_open_streams(&[1]);
        assert!(c
            .handle(t0(), end(2, w_old(2), EndReason::Closed))
            .is_empty());
        assert_eq!(c.partitions(), vbs(&[1]));
    }

    /// MB-34951: a late STREAM_END of an older stream of an open vb (its opaque is
    /// not the current stream's) is ignored by the consumer node, and by us.
    #[test]
    fn idle_stream_end_of_an_older_stream_keeps_the_current_stream() {
        let mut c = established(&[1]);
        assert!(c
            .handle(t0(), end(1, w_old(1), EndReason::Closed))
            .is_empty());
        assert_eq!(c.partitions(), vbs(&[1]));
        assert!(c
            .handle(t0(), end(1, w(1), EndReason::StateChanged))
            .is_empty());
        assert!(c.partitions().is_empty());
    }

    /// §5.7 Idle: producer close answers and SET_VBUCKET_STATE are ignored.
    #[test]
    fn idle_ignores_producer_close_answers_and_set_vbucket_state() {
        let t = t0();
        let mut c = with_open_streams(&[1]);
        let before = c.clone();
        assert!(c
            .handle(t, producer_close(op(3), Status::Success))
            .is_empty());
        assert!(c.handle(t, svbs(1, w_old(1), VbState::Active)).is_empty());
        assert_eq!(c, before);
    }

    // ---- Setup -----------------------------------------------------------------

    /// §5.7 Setup + §11.9: commands get a typed Busy, not silence.
    #[test]
    fn commands_during_setup_are_refused_as_busy() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(t, setup(&[1]));
        let busy = Err(SetupError::Busy {
            in_progress: Operation::SetupStreams,
        });
        assert_eq!(
            c.handle(
                t,
                Event::SetupStreams {
                    want: vbs(&[2]),
                    reply: R2
                }
            ),
            vec![Action::Reply(R2, busy.clone())]
        );
        assert_eq!(
            c.handle(
                t,
                Event::CloseStream {
                    vb: vb(1),
                    reply: R2
                }
            ),
            vec![Action::Reply(R2, busy.clone())]
        );
        assert_eq!(
            c.handle(
                t,
                Event::Takeover {
                    vb: vb(2),
                    reply: R2
                }
            ),
            vec![Action::Reply(R2, busy)]
        );
        // The set-up itself is unaffected and answered exactly once.
        assert_eq!(
            c.handle(t, add_ok(op(0), w(1))),
            reply_ok(Outcome::StreamsSetUp)
        );
    }

    /// §5.7 Setup: STREAM_REQ (recorded first), SET_VBUCKET_STATE answers and
    /// other frames are forwarded unchanged.
    #[test]
    fn setup_forwards_stream_requests_and_other_frames() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(t, setup(&[1]));
        for f in [
            stream_req_frame(1, w(1), false),
            stream_req_frame(9, w(9), false),
            svbs_answer(w(1), Status::Success),
            Response::status_only(Opcode::DcpNoop, Opaque(4), Status::Success).to_frame(),
        ] {
            assert_eq!(
                c.handle(t, Event::FromConsumer(f.clone())),
                vec![Action::ForwardToProducer(f)]
            );
        }
        assert_eq!(c.phase(), Phase::Setup, "still in set-up");
        let Some(VbStream::Adding {
            add, stream_req, ..
        }) = c.streams.get(&vb(1))
        else {
            panic!("vb 1 is being added")
        };
        assert_eq!((add.opaque, *stream_req), (op(0), Some(w(1))));
    }

    /// §5.7 Setup: set_vbucket_state is ignored.
    #[test]
    fn setup_ignores_producer_set_vbucket_state() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(t, setup(&[1]));
        let before = c.clone();
        assert!(c.handle(t, svbs(1, w(1), VbState::Active)).is_empty());
        assert_eq!(c, before);
    }

    /// §5.5 `unrecognized_opaque`: an ADD answer we never asked for tears down.
    #[test]
    fn setup_add_answer_with_unknown_opaque_tears_the_pair_down() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(t, setup(&[1]));
        let e = ConnError::UnknownOpaque {
            side: Side::Consumer,
            opcode: Opcode::DcpAddStream,
            opaque: Opaque(1),
        };
        assert_eq!(
            c.handle(t, add_ok(Opaque(1), w(1))),
            vec![
                Action::Reply(R, Err(SetupError::Protocol(e.clone()))),
                Action::Close(e)
            ]
        );
        assert_eq!(c.phase(), Phase::Closed);
    }

    /// An answer carrying the opaque of a *different* command (a CLOSE opaque on an
    /// ADD answer) is unknown too.
    #[test]
    fn setup_add_answer_carrying_a_close_opaque_tears_the_pair_down() {
        let t = t0();
        let mut c = with_open_streams(&[1]);
        let _ = c.handle(t, setup(&[2])); // op(0) ADD 2, op(1)/op(2) CLOSE 1
        let out = c.handle(t, add_ok(op(1), w(2)));
        assert!(matches!(
            &out[..],
            [
                Action::Reply(
                    R,
                    Err(SetupError::Protocol(ConnError::UnknownOpaque { .. }))
                ),
                Action::Close(ConnError::UnknownOpaque {
                    side: Side::Consumer,
                    ..
                })
            ]
        ));
    }

    /// §5.5: a consumer CLOSE answer we never asked for tears down.
    #[test]
    fn setup_consumer_close_answer_with_unknown_opaque_tears_the_pair_down() {
        let t = t0();
        let mut c = with_open_streams(&[1]);
        let _ = c.handle(t, setup(&[]));
        let e = ConnError::UnknownOpaque {
            side: Side::Consumer,
            opcode: Opcode::DcpCloseStream,
            opaque: Opaque(1),
        };
        assert_eq!(
            c.handle(t, close_answer(Opaque(1), Status::Success)),
            vec![
                Action::Reply(R, Err(SetupError::Protocol(e.clone()))),
                Action::Close(e)
            ]
        );
    }

    /// §5.5: a producer CLOSE answer we never asked for tears down.
    #[test]
    fn setup_producer_close_answer_with_unknown_opaque_tears_the_pair_down() {
        let t = t0();
        let mut c = with_open_streams(&[1]);
        let _ = c.handle(t, setup(&[]));
        let e = ConnError::UnknownOpaque {
            side: Side::Producer,
            opcode: Opcode::DcpCloseStream,
            opaque: op(0),
        };
        // op(0) is the *consumer* close's opaque: on the producer side it is unknown.
        assert_eq!(
            c.handle(t, producer_close(op(0), Status::Success)),
            vec![
                Action::Reply(R, Err(SetupError::Protocol(e.clone()))),
                Action::Close(e)
            ]
        );
    }

    /// §5.9 rule 2 (MB-53445), one vbucket: the producer ends the stream we are
    /// adding before the consumer answered the ADD -> error naming vb, opaque and
    /// reason, and teardown.
    #[test]
    fn stream_end_before_add_stream_answer_fails_the_setup_and_tears_down() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(t, setup(&[5]));
        let _ = c.handle(t, Event::FromConsumer(stream_req_frame(5, w(5), false)));
        let e = ConnError::UnexpectedStreamEnd {
            vb: vb(5),
            opaque: w(5),
            reason: EndReason::StateChanged,
        };
        assert_eq!(
            c.handle(t, end(5, w(5), EndReason::StateChanged)),
            vec![
                Action::Reply(
                    R,
                    Err(SetupError::UnexpectedStreamEnd {
                        vb: vb(5),
                        opaque: w(5),
                        reason: EndReason::StateChanged
                    })
                ),
                Action::Close(e)
            ]
        );
        assert!(c.partitions().is_empty());
        assert_eq!(c.phase(), Phase::Closed);
    }

    /// §5.9 rule 2 with two vbuckets: the other vb's success does not hide it.
    #[test]
    fn stream_end_before_add_stream_answer_with_two_vbuckets() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(t, setup(&[5, 6]));
        let _ = c.handle(t, Event::FromConsumer(stream_req_frame(5, w(5), false)));
        let _ = c.handle(t, Event::FromConsumer(stream_req_frame(6, w(6), false)));
        assert!(c.handle(t, add_ok(op(0), w(5))).is_empty());
        let out = c.handle(t, end(6, w(6), EndReason::BackfillFailed));
        assert_eq!(
            out,
            vec![
                Action::Reply(
                    R,
                    Err(SetupError::UnexpectedStreamEnd {
                        vb: vb(6),
                        opaque: w(6),
                        reason: EndReason::BackfillFailed
                    })
                ),
                Action::Close(ConnError::UnexpectedStreamEnd {
                    vb: vb(6),
                    opaque: w(6),
                    reason: EndReason::BackfillFailed
                })
            ]
        );
        assert_eq!(c.partitions(), vbs(&[5]));
    }

    /// §5.9 second variant: the ADD answer still arrives after the end; the pair is
    /// already torn down, the answer changes nothing and is never forwarded.
    #[test]
    fn add_stream_answer_after_stream_end_is_ignored() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(t, setup(&[5]));
        let _ = c.handle(t, Event::FromConsumer(stream_req_frame(5, w(5), false)));
        let _ = c.handle(t, end(5, w(5), EndReason::StateChanged));
        assert!(c.handle(t, add_ok(op(0), w(5))).is_empty());
        assert!(c.partitions().is_empty(), "never reported established");
        assert_eq!(c.next_deadline(), None);
    }

    /// §5.9 rule 1: the new stream was established, then ended: just removed.
    #[test]
    fn stream_end_after_the_add_stream_answer_removes_the_vbucket() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(t, setup(&[5, 6]));
        let _ = c.handle(t, Event::FromConsumer(stream_req_frame(5, w(5), false)));
        assert!(c.handle(t, add_ok(op(0), w(5))).is_empty());
        assert!(c
            .handle(t, end(5, w(5), EndReason::StateChanged))
            .is_empty());
        assert!(c.partitions().is_empty());
        assert_eq!(
            c.handle(t, add_ok(op(1), w(6))),
            reply_ok(Outcome::StreamsSetUp)
        );
        assert_eq!(c.partitions(), vbs(&[6]));
    }

    /// §5.9 rule 3 (MB-34951): a late STREAM_END of an older stream of the same vb
    /// (different opaque than the recorded STREAM_REQ) does not fail the set-up.
    #[test]
    fn stream_end_of_an_older_stream_does_not_fail_a_healthy_setup() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(t, setup(&[5]));
        let _ = c.handle(t, Event::FromConsumer(stream_req_frame(5, w(5), false)));
        assert!(c.handle(t, end(5, w_old(5), EndReason::Closed)).is_empty());
        assert_eq!(
            c.handle(t, add_ok(op(0), w(5))),
            reply_ok(Outcome::StreamsSetUp)
        );
        assert_eq!(c.partitions(), vbs(&[5]));
    }

    /// §5.9 rule 3: before the STREAM_REQ is seen, any end belongs to an older stream.
    #[test]
    fn stream_end_before_the_stream_request_is_seen_is_ignored() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(t, setup(&[5]));
        assert!(c.handle(t, end(5, w(5), EndReason::Closed)).is_empty());
        assert_eq!(c.phase(), Phase::Setup);
        assert_eq!(
            c.handle(t, add_ok(op(0), w(5))),
            reply_ok(Outcome::StreamsSetUp)
        );
    }

    /// §5.9 defect of the seed: a STREAM_END whose opaque happens to equal our ADD
    /// command opaque (different number spaces) must not fail the set-up.
    #[test]
    fn stream_end_opaque_equal_to_an_add_command_opaque_is_not_confused_with_it() {
        let t = t0();
        let mut c = with_open_streams(&[9]);
        let _ = c.handle(t, setup(&[5, 9]));
        let _ = c.handle(t, Event::FromConsumer(stream_req_frame(5, w(5), false)));
        // A stale end for vb 5 carrying our ADD's opaque, and one for another vb.
        assert!(c.handle(t, end(5, op(0), EndReason::Closed)).is_empty());
        assert!(c.handle(t, end(7, op(0), EndReason::Closed)).is_empty());
        assert_eq!(
            c.handle(t, add_ok(op(0), w(5))),
            reply_ok(Outcome::StreamsSetUp)
        );
        assert_eq!(c.partitions(), vbs(&[5, 9]));
    }

    /// §5.9 rule 4: an end for a vb the set-up does not touch is ignored.
    #[test]
    fn stream_end_for_an_unrelated_vbucket_during_setup_is_ignored() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(t, setup(&[5]));
        let before = c.clone();
        assert!(c.handle(t, end(8, w(8), EndReason::Closed)).is_empty());
        assert_eq!(c, before);
    }

    /// Close-stream race, producer first (§11.4a, MB-15926): the producer ends the
    /// stream we are closing before the consumer answers our CLOSE; the consumer
    /// then says KEY_ENOENT, which still completes the set-up.
    #[test]
    fn producer_stream_end_racing_our_close_stream_still_completes_setup() {
        let t = t0();
        let mut c = with_open_streams(&[7]);
        let _ = c.handle(t, setup(&[]));
        assert!(c
            .handle(t, end(7, w_old(7), EndReason::StateChanged))
            .is_empty());
        assert!(c.partitions().is_empty());
        assert!(c
            .handle(t, producer_close(op(1), Status::KeyEnoent))
            .is_empty());
        assert_eq!(
            c.handle(t, close_answer(op(0), Status::KeyEnoent)),
            reply_ok(Outcome::StreamsSetUp)
        );
    }

    /// Close-stream race, consumer first: the consumer closes (SUCCESS), the
    /// producer's answer and its STREAM_END(CLOSED) follow; the end is ignored.
    #[test]
    fn consumer_close_answer_before_the_producer_stream_end_completes_setup() {
        let t = t0();
        let mut c = with_open_streams(&[7]);
        let _ = c.handle(t, setup(&[]));
        assert!(c.handle(t, close_answer(op(0), Status::Success)).is_empty());
        assert!(c.partitions().is_empty());
        assert_eq!(
            c.handle(t, producer_close(op(1), Status::Success)),
            reply_ok(Outcome::StreamsSetUp)
        );
        assert!(c.handle(t, end(7, w_old(7), EndReason::Closed)).is_empty());
        assert_eq!(c.phase(), Phase::Idle);
    }

    /// Close-stream race, both nodes already closed it (stream gone on both sides).
    #[test]
    fn close_answers_no_stream_from_both_sides_complete_setup() {
        let t = t0();
        let mut c = with_open_streams(&[7]);
        let _ = c.handle(t, setup(&[]));
        assert!(c
            .handle(t, producer_close(op(1), Status::DcpStreamNotFound))
            .is_empty());
        assert_eq!(
            c.handle(t, close_answer(op(0), Status::KeyEnoent)),
            reply_ok(Outcome::StreamsSetUp)
        );
        assert!(c.partitions().is_empty());
    }

    // ---- Timeouts --------------------------------------------------------------

    /// The earliest pending deadline is reported (CLOSE bound < ADD bound here).
    #[test]
    fn next_deadline_is_the_earliest_pending_answer() {
        let t = t0();
        let mut c = with_open_streams(&[1]);
        assert_eq!(c.next_deadline(), None);
        let _ = c.handle(t, setup(&[2]));
        assert_eq!(c.next_deadline(), Some(t + cfg().close_timeout));
        let _ = c.handle(t, close_answer(op(1), Status::Success));
        let _ = c.handle(t, producer_close(op(2), Status::Success));
        assert_eq!(c.next_deadline(), Some(t + cfg().setup_timeout));
    }

    /// A Timeout delivered before the deadline changes nothing.
    #[test]
    fn timeout_before_the_deadline_is_harmless() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(t, setup(&[1]));
        let before = c.clone();
        assert!(c
            .handle(t + Duration::from_secs(9), Event::Timeout)
            .is_empty());
        assert_eq!(c, before);
    }

    /// §5.9 / §11.1: an unanswered ADD fails the set-up with a Timeout naming the
    /// vbuckets and tears the pair down; a late answer is then dropped.
    #[test]
    fn add_stream_timeout_fails_the_setup_and_tears_down() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(t, setup(&[1, 2]));
        let _ = c.handle(t, add_ok(op(0), w(1)));
        let e = ConnError::Timeout {
            waiting_for: WaitingFor::AddStream,
            vbuckets: vec![vb(2)],
            side: Side::Consumer,
        };
        assert_eq!(
            c.handle(t + cfg().setup_timeout, Event::Timeout),
            vec![
                Action::Reply(
                    R,
                    Err(SetupError::Timeout {
                        waiting_for: WaitingFor::AddStream,
                        vbuckets: vec![vb(2)],
                        side: Side::Consumer,
                    })
                ),
                Action::Close(e)
            ]
        );
        assert!(c.abandoned.get(op(1)).is_some());
        assert!(c.handle(t, add_ok(op(1), w(2))).is_empty());
        assert_eq!(c.next_deadline(), None);
    }

    /// §11.1: a close the producer never answers fails with a CloseStream timeout.
    #[test]
    fn close_stream_timeout_fails_the_setup_and_tears_down() {
        let t = t0();
        let mut c = with_open_streams(&[3]);
        let _ = c.handle(t, setup(&[]));
        let _ = c.handle(t, close_answer(op(0), Status::Success));
        let out = c.handle(t + cfg().close_timeout, Event::Timeout);
        assert_eq!(
            out,
            vec![
                Action::Reply(
                    R,
                    Err(SetupError::Timeout {
                        waiting_for: WaitingFor::CloseStream,
                        vbuckets: vec![vb(3)],
                        side: Side::Producer,
                    })
                ),
                Action::Close(ConnError::Timeout {
                    waiting_for: WaitingFor::CloseStream,
                    vbuckets: vec![vb(3)],
                    side: Side::Producer,
                })
            ]
        );
    }

    /// §11.1: the takeover is bounded as a whole.
    #[test]
    fn takeover_timeout_fails_the_takeover_and_tears_down() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(
            t,
            Event::Takeover {
                vb: vb(4),
                reply: R,
            },
        );
        assert_eq!(c.next_deadline(), Some(t + cfg().takeover_timeout));
        let _ = c.handle(t, Event::FromConsumer(stream_req_frame(4, w(4), true)));
        let out = c.handle(t + cfg().takeover_timeout, Event::Timeout);
        assert_eq!(
            out,
            vec![
                Action::Reply(
                    R,
                    Err(SetupError::Timeout {
                        waiting_for: WaitingFor::Takeover,
                        vbuckets: vec![vb(4)],
                        side: Side::Producer,
                    })
                ),
                Action::Close(ConnError::Timeout {
                    waiting_for: WaitingFor::Takeover,
                    vbuckets: vec![vb(4)],
                    side: Side::Producer,
                })
            ]
        );
    }

    /// §5.2 shut_connection(timeout): a shut whose closes are not answered fails
    /// with a Shut timeout.
    #[test]
    fn shut_timeout_fails_the_shut_and_tears_down() {
        let t = t0();
        let mut c = with_open_streams(&[1, 2]);
        let _ = c.handle(t, Event::Shut { reply: R });
        assert_eq!(c.next_deadline(), Some(t + cfg().shut_timeout));
        let _ = c.handle(t, close_answer(op(0), Status::Success));
        let out = c.handle(t + cfg().shut_timeout, Event::Timeout);
        assert_eq!(
            out,
            vec![
                Action::Reply(
                    R,
                    Err(SetupError::Timeout {
                        waiting_for: WaitingFor::Shut,
                        vbuckets: vec![vb(2)],
                        side: Side::Consumer,
                    })
                ),
                Action::Close(ConnError::Timeout {
                    waiting_for: WaitingFor::Shut,
                    vbuckets: vec![vb(2)],
                    side: Side::Consumer,
                })
            ]
        );
    }

    // ---- Takeover --------------------------------------------------------------

    /// Drives a takeover of vb 4 up to the point where both SET_VBUCKET_STATE
    /// requests were acknowledged, optionally with the ADD answer first.
    fn run_takeover(c: &mut ConsumerConn, add_answer_first: bool) -> Vec<Action> {
        let t = t0();
        let out = c.handle(
            t,
            Event::Takeover {
                vb: vb(4),
                reply: R,
            },
        );
        assert_eq!(out, vec![Action::SendToConsumer(add_frame(4, op(0), true))]);
        assert_eq!(c.takeover_phase(), Some(TakeoverPhase::Requested));
        let req = stream_req_frame(4, w(4), true);
        assert_eq!(
            c.handle(t, Event::FromConsumer(req.clone())),
            vec![Action::ForwardToProducer(req)]
        );
        assert_eq!(c.takeover_phase(), Some(TakeoverPhase::OpaqueKnown));
        if add_answer_first {
            assert!(c.handle(t, add_ok(op(0), w(4))).is_empty());
        }
        assert!(c.handle(t, svbs(4, w(4), VbState::Pending)).is_empty());
        let ack = svbs_answer(w(4), Status::Success);
        assert_eq!(
            c.handle(t, Event::FromConsumer(ack.clone())),
            vec![Action::ForwardToProducer(ack.clone())]
        );
        assert_eq!(c.takeover_phase(), Some(TakeoverPhase::OpaqueKnown));
        assert!(c.handle(t, svbs(4, w(4), VbState::Active)).is_empty());
        c.handle(t, Event::FromConsumer(ack))
    }

    /// §5.8 happy path, ADD_STREAM answer before the state changes.
    #[test]
    fn takeover_happy_path_with_add_stream_answer_first() {
        let mut c = conn();
        let out = run_takeover(&mut c, true);
        assert_eq!(
            out,
            vec![
                Action::ForwardToProducer(svbs_answer(w(4), Status::Success)),
                Action::Reply(R, Ok(Outcome::TakeoverComplete { vb: vb(4) })),
            ]
        );
        assert_eq!(c.phase(), Phase::Idle);
        // Takeover streams never join partitions; their final end is ignored.
        assert!(c.handle(t0(), end(4, w(4), EndReason::Ok)).is_empty());
        assert!(c.partitions().is_empty());
    }

    /// MB-10779: the ADD_STREAM answer arrives after both state changes.
    #[test]
    fn takeover_happy_path_with_add_stream_answer_last() {
        let t = t0();
        let mut c = conn();
        let out = run_takeover(&mut c, false);
        assert_eq!(
            out,
            vec![Action::ForwardToProducer(svbs_answer(
                w(4),
                Status::Success
            ))]
        );
        assert_eq!(c.takeover_phase(), Some(TakeoverPhase::Active));
        assert_eq!(
            c.handle(t, add_ok(op(0), w(4))),
            reply_ok(Outcome::TakeoverComplete { vb: vb(4) })
        );
        assert_eq!(c.phase(), Phase::Idle);
    }

    /// Issue #8 item 8: STREAM_END(OK) on the takeover stream after the active state
    /// was acknowledged completes the takeover although the consumer never answered
    /// the ADD_STREAM; the late answer is then dropped, not a protocol error.
    #[test]
    fn takeover_stream_end_ok_after_active_completes_without_the_add_stream_answer() {
        let t = t0();
        let mut c = conn();
        let _ = run_takeover(&mut c, false);
        assert_eq!(c.takeover_phase(), Some(TakeoverPhase::Active));
        assert_eq!(
            c.handle(t, end(4, w(4), EndReason::Ok)),
            reply_ok(Outcome::TakeoverComplete { vb: vb(4) })
        );
        assert_eq!(c.phase(), Phase::Idle);
        assert!(c.handle(t, add_ok(op(0), w(4))).is_empty());
        assert_eq!(c.phase(), Phase::Idle);
        assert!(c.partitions().is_empty());
    }

    /// A STREAM_END other than OK after the active ack does not claim completion:
    /// the ADD_STREAM answer still decides.
    #[test]
    fn takeover_stream_end_not_ok_after_active_still_waits_for_the_add_stream_answer() {
        let t = t0();
        let mut c = conn();
        let _ = run_takeover(&mut c, false);
        assert!(c
            .handle(t, end(4, w(4), EndReason::StateChanged))
            .is_empty());
        assert_eq!(c.takeover_phase(), Some(TakeoverPhase::Active));
        assert_eq!(
            c.handle(t, add_ok(op(0), w(4))),
            reply_ok(Outcome::TakeoverComplete { vb: vb(4) })
        );
    }

    /// Issue #8 item 6: the STREAM_REQ opaque recorded on its way to the producer is
    /// authoritative. An ADD_STREAM answer whose extras carry the opaque in the other
    /// byte order must not make the producer's STREAM_END for the established stream
    /// look like an older stream's.
    #[test]
    fn stream_end_matches_the_recorded_stream_request_opaque_whatever_the_answer_extras_say() {
        let t = t0();
        for answered in [w(3), w(3).byte_reversed(), Opaque(0xdead_beef)] {
            let mut c = conn();
            let _ = c.handle(t, setup(&[3]));
            let req = stream_req_frame(3, w(3), false);
            let _ = c.handle(t, Event::FromConsumer(req));
            assert_eq!(
                c.handle(t, add_ok(op(0), answered)),
                reply_ok(Outcome::StreamsSetUp)
            );
            assert_eq!(c.partitions(), vbs(&[3]));
            assert!(c
                .handle(t, end(3, w(3), EndReason::StateChanged))
                .is_empty());
            assert!(c.partitions().is_empty(), "answer extras {answered}");
        }
    }

    /// Without a recorded STREAM_REQ, the answer's extras match in either byte order.
    #[test]
    fn stream_end_matches_an_answered_opaque_in_either_byte_order() {
        for stream_end_opaque in [w(3), w(3).byte_reversed()] {
            let t = t0();
            let mut c = conn();
            let _ = c.handle(t, setup(&[3]));
            let _ = c.handle(t, add_ok(op(0), w(3)));
            assert_eq!(c.partitions(), vbs(&[3]));
            let _ = c.handle(t, end(3, stream_end_opaque, EndReason::Closed));
            assert!(c.partitions().is_empty());
        }
    }

    /// §7.3, issue #8 (sequencing in the core): a takeover of a vbucket with an open
    /// replication stream first closes it on both nodes, then starts the takeover
    /// stream, as one operation with one reply.
    #[test]
    fn takeover_of_an_open_stream_closes_it_on_both_sides_then_takes_over() {
        let t = t0();
        let mut c = with_open_streams(&[4, 5]);
        let out = c.handle(
            t,
            Event::Takeover {
                vb: vb(4),
                reply: R,
            },
        );
        assert_eq!(
            out,
            vec![
                Action::SendToConsumer(close_frame(4, op(0))),
                Action::SendToProducer(close_frame(4, op(1))),
            ]
        );
        assert_eq!(c.phase(), Phase::Setup);
        assert!(c.handle(t, close_answer(op(0), Status::Success)).is_empty());
        assert_eq!(c.partitions(), vbs(&[5]));
        // The producer's answer completes the close: the takeover ADD goes out.
        assert_eq!(
            c.handle(t, producer_close(op(1), Status::Success)),
            vec![Action::SendToConsumer(add_frame(4, op(2), true))]
        );
        assert_eq!(c.takeover_phase(), Some(TakeoverPhase::Requested));
        assert_eq!(c.next_deadline(), Some(t + cfg().takeover_timeout));
    }

    /// §7.3 IMPROVE: a failed close fails the takeover; no takeover ADD is sent.
    #[test]
    fn takeover_whose_close_fails_is_answered_with_the_close_failure() {
        let t = t0();
        let mut c = with_open_streams(&[4]);
        let _ = c.handle(
            t,
            Event::Takeover {
                vb: vb(4),
                reply: R,
            },
        );
        assert!(c.handle(t, close_answer(op(0), Status::Success)).is_empty());
        assert_eq!(
            c.handle(t, producer_close(op(1), Status::Einval)),
            reply_err(SetupError::StreamsFailed {
                failures: vec![failure(
                    StreamOp::CloseStream,
                    4,
                    Side::Producer,
                    op(1),
                    Status::Einval
                )]
            })
        );
        assert_eq!(c.phase(), Phase::Idle);
    }

    /// A shut during the close that precedes a takeover supersedes the takeover.
    #[test]
    fn shut_during_the_close_before_a_takeover_supersedes_it() {
        let t = t0();
        let mut c = with_open_streams(&[4]);
        let _ = c.handle(
            t,
            Event::Takeover {
                vb: vb(4),
                reply: R,
            },
        );
        let out = c.handle(t, Event::Shut { reply: R2 });
        assert_eq!(out[0], Action::Reply(R, Err(SetupError::SupersededByShut)));
        assert_eq!(c.phase(), Phase::Shutting);
    }

    /// §5.7 Takeover: an ADD_STREAM error fails the takeover with the status; Idle.
    #[test]
    fn takeover_add_stream_error_fails_the_takeover_and_returns_to_idle() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(
            t,
            Event::Takeover {
                vb: vb(4),
                reply: R,
            },
        );
        let _ = c.handle(t, Event::FromConsumer(stream_req_frame(4, w(4), true)));
        assert_eq!(
            c.handle(t, add_err(op(0), Status::NotMyVbucket)),
            reply_err(SetupError::TakeoverFailed {
                vb: vb(4),
                opaque: op(0),
                status: Status::NotMyVbucket,
                step: TakeoverStep::AddStream
            })
        );
        assert_eq!(c.phase(), Phase::Idle);
    }

    /// §5.7 Takeover: a STREAM_REQ for another vb is fatal.
    #[test]
    fn takeover_stream_request_for_another_vbucket_tears_down() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(
            t,
            Event::Takeover {
                vb: vb(4),
                reply: R,
            },
        );
        let e = ConnError::UnexpectedStreamReq {
            expected: vb(4),
            got: vb(5),
            opaque: w(5),
        };
        assert_eq!(
            c.handle(t, Event::FromConsumer(stream_req_frame(5, w(5), true))),
            vec![
                Action::Reply(R, Err(SetupError::Protocol(e.clone()))),
                Action::Close(e)
            ]
        );
    }

    /// §5.7 Takeover: a re-request (after rollback) in a later sub-state is forwarded.
    #[test]
    fn takeover_repeated_stream_request_is_forwarded() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(
            t,
            Event::Takeover {
                vb: vb(4),
                reply: R,
            },
        );
        let req = stream_req_frame(4, w(4), true);
        let _ = c.handle(t, Event::FromConsumer(req.clone()));
        assert_eq!(
            c.handle(t, Event::FromConsumer(req.clone())),
            vec![Action::ForwardToProducer(req)]
        );
        assert_eq!(c.takeover_phase(), Some(TakeoverPhase::OpaqueKnown));
    }

    /// §11.8: a refused SET_VBUCKET_STATE(pending) fails the takeover (forwarded
    /// first: the producer waits for it).
    #[test]
    fn takeover_refused_pending_state_fails_the_takeover() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(
            t,
            Event::Takeover {
                vb: vb(4),
                reply: R,
            },
        );
        let _ = c.handle(t, Event::FromConsumer(stream_req_frame(4, w(4), true)));
        let _ = c.handle(t, svbs(4, w(4), VbState::Pending));
        let nack = svbs_answer(w(4), Status::Einval);
        assert_eq!(
            c.handle(t, Event::FromConsumer(nack.clone())),
            vec![
                Action::ForwardToProducer(nack),
                Action::Reply(
                    R,
                    Err(SetupError::TakeoverFailed {
                        vb: vb(4),
                        opaque: w(4),
                        status: Status::Einval,
                        step: TakeoverStep::SetVbucketState
                    })
                ),
                Action::Close(ConnError::TakeoverFailed {
                    vb: vb(4),
                    opaque: w(4),
                    status: Status::Einval
                }),
            ]
        );
    }

    /// §11.8: a refused SET_VBUCKET_STATE(active) fails the takeover too.
    #[test]
    fn takeover_refused_active_state_fails_the_takeover() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(
            t,
            Event::Takeover {
                vb: vb(4),
                reply: R,
            },
        );
        let _ = c.handle(t, Event::FromConsumer(stream_req_frame(4, w(4), true)));
        let _ = c.handle(t, add_ok(op(0), w(4)));
        let _ = c.handle(t, svbs(4, w(4), VbState::Pending));
        let _ = c.handle(t, Event::FromConsumer(svbs_answer(w(4), Status::Success)));
        let _ = c.handle(t, svbs(4, w(4), VbState::Active));
        let out = c.handle(
            t,
            Event::FromConsumer(svbs_answer(w(4), Status::NotMyVbucket)),
        );
        assert!(matches!(
            &out[..],
            [
                Action::ForwardToProducer(_),
                Action::Reply(
                    R,
                    Err(SetupError::TakeoverFailed {
                        status: Status::NotMyVbucket,
                        ..
                    })
                ),
                Action::Close(ConnError::TakeoverFailed { .. })
            ]
        ));
    }

    /// §5.7 Takeover: SET_VBUCKET_STATE answers with another opaque change nothing.
    #[test]
    fn takeover_set_vbucket_state_answer_with_another_opaque_is_only_forwarded() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(
            t,
            Event::Takeover {
                vb: vb(4),
                reply: R,
            },
        );
        let _ = c.handle(t, Event::FromConsumer(stream_req_frame(4, w(4), true)));
        let _ = c.handle(t, svbs(4, w(4), VbState::Active));
        for f in [
            svbs_answer(w(9), Status::Success),
            svbs_answer(w(9), Status::Einval),
        ] {
            assert_eq!(
                c.handle(t, Event::FromConsumer(f.clone())),
                vec![Action::ForwardToProducer(f)]
            );
        }
        assert_eq!(c.takeover_phase(), Some(TakeoverPhase::OpaqueKnown));
    }

    /// §5.7 Takeover: set_vbucket_state with another opaque, or while one is still
    /// unacknowledged, is ignored.
    #[test]
    fn takeover_set_vbucket_state_is_only_noted_for_the_stream_when_none_is_pending() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(
            t,
            Event::Takeover {
                vb: vb(4),
                reply: R,
            },
        );
        // Before the opaque is known: ignored.
        let _ = c.handle(t, svbs(4, w(4), VbState::Active));
        let _ = c.handle(t, Event::FromConsumer(stream_req_frame(4, w(4), true)));
        let _ = c.handle(t, svbs(4, w(9), VbState::Active));
        let _ = c.handle(t, svbs(4, w(4), VbState::Pending));
        let _ = c.handle(t, svbs(4, w(4), VbState::Active)); // pending not acked yet
        let _ = c.handle(t, add_ok(op(0), w(4)));
        // This success acknowledges "pending", not "active".
        let _ = c.handle(t, Event::FromConsumer(svbs_answer(w(4), Status::Success)));
        assert_eq!(c.takeover_phase(), Some(TakeoverPhase::OpaqueKnown));
    }

    /// §5.7 Takeover IMPROVE (MUST): the takeover stream ending before the
    /// active state was acknowledged fails the takeover.
    #[test]
    fn takeover_stream_end_before_completion_fails_the_takeover() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(
            t,
            Event::Takeover {
                vb: vb(4),
                reply: R,
            },
        );
        let _ = c.handle(t, Event::FromConsumer(stream_req_frame(4, w(4), true)));
        let _ = c.handle(t, add_ok(op(0), w(4)));
        let _ = c.handle(t, svbs(4, w(4), VbState::Pending));
        assert_eq!(
            c.handle(t, end(4, w(4), EndReason::StateChanged)),
            vec![
                Action::Reply(
                    R,
                    Err(SetupError::UnexpectedStreamEnd {
                        vb: vb(4),
                        opaque: w(4),
                        reason: EndReason::StateChanged
                    })
                ),
                Action::Close(ConnError::UnexpectedStreamEnd {
                    vb: vb(4),
                    opaque: w(4),
                    reason: EndReason::StateChanged
                })
            ]
        );
    }

    /// A STREAM_END of an older stream of the takeover vb (MB-34951's classic
    /// sequence: our close, the takeover ADD, the late end) is ignored.
    #[test]
    fn takeover_stream_end_of_an_older_stream_is_ignored() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(
            t,
            Event::Takeover {
                vb: vb(4),
                reply: R,
            },
        );
        assert!(c.handle(t, end(4, w_old(4), EndReason::Closed)).is_empty());
        let _ = c.handle(t, Event::FromConsumer(stream_req_frame(4, w(4), true)));
        assert!(c.handle(t, end(4, w_old(4), EndReason::Closed)).is_empty());
        assert_eq!(c.phase(), Phase::Takeover);
    }

    /// §5.7 Takeover: another vb's replication stream ending is removed.
    #[test]
    fn takeover_stream_end_for_an_open_partition_removes_it() {
        let t = t0();
        let mut c = with_open_streams(&[1]);
        let _ = c.handle(
            t,
            Event::Takeover {
                vb: vb(4),
                reply: R,
            },
        );
        assert!(c
            .handle(t, end(1, w_old(1), EndReason::StateChanged))
            .is_empty());
        assert!(c.partitions().is_empty());
        assert_eq!(c.phase(), Phase::Takeover);
    }

    /// §5.7 Takeover "anything else": forwarded unchanged; get_partitions is served.
    #[test]
    fn takeover_forwards_other_frames_and_serves_partitions() {
        let t = t0();
        let mut c = with_open_streams(&[1]);
        let _ = c.handle(
            t,
            Event::Takeover {
                vb: vb(4),
                reply: R,
            },
        );
        for f in [
            Response::status_only(Opcode::DcpSnapshotMarker, w(4), Status::Success).to_frame(),
            Response::status_only(Opcode::DcpNoop, Opaque(9), Status::Success).to_frame(),
            stream_req_frame(4, w(4), true),
        ] {
            assert_eq!(
                c.handle(t, Event::FromConsumer(f.clone())),
                vec![Action::ForwardToProducer(f)]
            );
        }
        assert_eq!(c.partitions(), vbs(&[1]));
        assert_eq!(c.takeover_phase(), Some(TakeoverPhase::OpaqueKnown));
    }

    /// §5.7 Takeover + §11.9: every command is Busy (shut included).
    #[test]
    fn commands_during_a_takeover_are_refused_as_busy() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(
            t,
            Event::Takeover {
                vb: vb(4),
                reply: R,
            },
        );
        let busy = Err(SetupError::Busy {
            in_progress: Operation::Takeover { vb: vb(4) },
        });
        for cmd in [
            Event::SetupStreams {
                want: vbs(&[1]),
                reply: R2,
            },
            Event::CloseStream {
                vb: vb(1),
                reply: R2,
            },
            Event::Takeover {
                vb: vb(5),
                reply: R2,
            },
            Event::Shut { reply: R2 },
        ] {
            assert_eq!(c.handle(t, cmd), vec![Action::Reply(R2, busy.clone())]);
        }
    }

    /// §11.7: ADD answers after the takeover's own was seen and CLOSE answers are
    /// dropped; producer close answers are ignored.
    #[test]
    fn takeover_drops_answers_nobody_waits_for() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(
            t,
            Event::Takeover {
                vb: vb(4),
                reply: R,
            },
        );
        assert!(c
            .handle(t, close_answer(Opaque(3), Status::Success))
            .is_empty());
        let _ = c.handle(t, add_ok(op(0), w(4)));
        assert!(c.handle(t, add_ok(op(0), w(4))).is_empty());
        assert!(c.handle(t, add_ok(Opaque(77), w(4))).is_empty());
        assert!(c
            .handle(t, producer_close(Opaque(3), Status::Success))
            .is_empty());
        assert_eq!(c.phase(), Phase::Takeover);
    }

    /// §5.7 Takeover: an ADD answer with an unknown opaque before ours is fatal.
    #[test]
    fn takeover_add_answer_with_unknown_opaque_tears_down() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(
            t,
            Event::Takeover {
                vb: vb(4),
                reply: R,
            },
        );
        let out = c.handle(t, add_ok(Opaque(77), w(4)));
        let e = ConnError::UnknownOpaque {
            side: Side::Consumer,
            opcode: Opcode::DcpAddStream,
            opaque: Opaque(77),
        };
        assert_eq!(
            out,
            vec![
                Action::Reply(R, Err(SetupError::Protocol(e.clone()))),
                Action::Close(e)
            ]
        );
    }

    /// §7.3: close the replication stream, then take over.
    #[test]
    fn takeover_after_closing_the_replication_stream() {
        let t = t0();
        let mut c = established(&[4]);
        let _ = c.handle(
            t,
            Event::CloseStream {
                vb: vb(4),
                reply: R,
            },
        );
        let _ = c.handle(t, close_answer(op(1), Status::Success));
        let _ = c.handle(t, producer_close(op(2), Status::Success));
        let out = c.handle(
            t,
            Event::Takeover {
                vb: vb(4),
                reply: R2,
            },
        );
        assert_eq!(out, vec![Action::SendToConsumer(add_frame(4, op(3), true))]);
    }

    // ---- Shut ------------------------------------------------------------------

    /// §5.6: shut without streams -> `ok`, Shut.
    #[test]
    fn shut_in_idle_without_streams_replies_at_once() {
        let mut c = conn();
        assert_eq!(
            c.handle(t0(), Event::Shut { reply: R }),
            reply_ok(Outcome::Shut)
        );
        assert_eq!(c.phase(), Phase::Shut);
        assert!(!c.forwards_consumer_traffic());
    }

    /// §5.6 (MB-16064): shut closes on the consumer only.
    #[test]
    fn shut_in_idle_closes_every_stream_on_the_consumer_only() {
        let t = t0();
        let mut c = with_open_streams(&[1, 2]);
        assert_eq!(
            c.handle(t, Event::Shut { reply: R }),
            vec![
                Action::SendToConsumer(close_frame(1, op(0))),
                Action::SendToConsumer(close_frame(2, op(1))),
            ]
        );
        assert_eq!(c.phase(), Phase::Shutting);
        assert!(c
            .handle(t, close_answer(op(1), Status::KeyEnoent))
            .is_empty());
        assert_eq!(
            c.handle(t, close_answer(op(0), Status::Success)),
            reply_ok(Outcome::Shut)
        );
        assert_eq!(c.phase(), Phase::Shut);
        assert!(c.partitions().is_empty());
    }

    /// A failed close during a shut is reported; the connection is shut anyway.
    #[test]
    fn shut_reports_failed_consumer_closes() {
        let t = t0();
        let mut c = with_open_streams(&[1]);
        let _ = c.handle(t, Event::Shut { reply: R });
        assert_eq!(
            c.handle(t, close_answer(op(0), Status::Einval)),
            reply_err(SetupError::StreamsFailed {
                failures: vec![failure(
                    StreamOp::CloseStream,
                    1,
                    Side::Consumer,
                    op(0),
                    Status::Einval
                )]
            })
        );
        assert_eq!(c.phase(), Phase::Shut);
    }

    /// §5.7 Shut: consumer packets dropped, producer events ignored, commands refused.
    #[test]
    fn shut_drops_consumer_packets_and_refuses_commands() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(t, Event::Shut { reply: R });
        let before = c.clone();
        assert!(c
            .handle(t, Event::FromConsumer(stream_req_frame(1, w(1), false)))
            .is_empty());
        assert!(c.handle(t, add_ok(op(0), w(1))).is_empty());
        assert!(c.handle(t, end(1, w(1), EndReason::Closed)).is_empty());
        assert!(c.handle(t, svbs(1, w(1), VbState::Active)).is_empty());
        assert!(c
            .handle(t, producer_close(op(0), Status::Success))
            .is_empty());
        assert!(c.handle(t, Event::Timeout).is_empty());
        for cmd in [
            Event::SetupStreams {
                want: vbs(&[1]),
                reply: R2,
            },
            Event::Takeover {
                vb: vb(1),
                reply: R2,
            },
            Event::Shut { reply: R2 },
        ] {
            assert_eq!(
                c.handle(t, cmd),
                vec![Action::Reply(R2, Err(SetupError::Shut))]
            );
        }
        assert_eq!(c, before);
    }

    /// §5.6 stuck shut with the IMPROVE: the set-up caller is answered at once,
    /// every stream (pending ADDs included) is closed on the consumer, producer close
    /// answers are ignored from now on.
    #[test]
    fn shut_during_setup_supersedes_the_setup_caller() {
        let t = t0();
        let mut c = with_open_streams(&[1, 2]);
        // op(0): ADD 3; op(1)/op(2): CLOSE 1 consumer/producer.
        let _ = c.handle(t, setup(&[2, 3]));
        let out = c.handle(t, Event::Shut { reply: R2 });
        assert_eq!(
            out,
            vec![
                Action::Reply(R, Err(SetupError::SupersededByShut)),
                Action::SendToConsumer(close_frame(2, op(3))),
                Action::SendToConsumer(close_frame(3, op(4))),
            ]
        );
        assert_eq!(c.phase(), Phase::Shutting);
        assert_eq!(c.next_deadline(), Some(t + cfg().shut_timeout));
        // The dead producer's answer no longer matters; a late one is dropped.
        assert!(c
            .handle(t, producer_close(op(2), Status::Success))
            .is_empty());
        assert!(c.handle(t, close_answer(op(1), Status::Success)).is_empty());
        assert!(c.handle(t, close_answer(op(3), Status::Success)).is_empty());
        assert!(c.handle(t, add_ok(op(0), w(3))).is_empty());
        assert_eq!(c.partitions(), vbs(&[3]));
        assert_eq!(
            c.handle(t, close_answer(op(4), Status::Success)),
            vec![Action::Reply(R2, Ok(Outcome::Shut))]
        );
        assert!(c.partitions().is_empty());
        assert_eq!(c.phase(), Phase::Shut);
    }

    /// §5.6 IMPROVE: a pending ADD is resolved by the CLOSE acknowledgement (the
    /// consumer node may never answer an ADD whose stream was closed, §10.3 case 2);
    /// its late answer is dropped.
    #[test]
    fn shut_during_setup_resolves_a_pending_add_by_its_close_acknowledgement() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(t, setup(&[3]));
        let _ = c.handle(t, Event::FromConsumer(stream_req_frame(3, w(3), false)));
        let _ = c.handle(t, Event::Shut { reply: R2 });
        // The producer ends the stream we are adding: not an error while shutting.
        assert!(c
            .handle(t, end(3, w(3), EndReason::StateChanged))
            .is_empty());
        assert_eq!(
            c.handle(t, close_answer(op(1), Status::KeyEnoent)),
            vec![Action::Reply(R2, Ok(Outcome::Shut))]
        );
        assert!(c.handle(t, add_ok(op(0), w(3))).is_empty());
        assert!(c.partitions().is_empty());
    }

    /// An ADD failure while shutting is not the shut's failure.
    #[test]
    fn shut_during_setup_ignores_add_failures() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(t, setup(&[3]));
        let _ = c.handle(t, Event::Shut { reply: R2 });
        assert!(c.handle(t, add_err(op(0), Status::NotMyVbucket)).is_empty());
        assert_eq!(
            c.handle(t, close_answer(op(1), Status::KeyEnoent)),
            vec![Action::Reply(R2, Ok(Outcome::Shut))]
        );
    }

    /// Stuck shut where only the producer's close answer was missing: nothing left
    /// to close on the consumer, so the shut completes at once.
    #[test]
    fn shut_during_setup_waiting_only_for_the_producer_completes_at_once() {
        let t = t0();
        let mut c = with_open_streams(&[1]);
        let _ = c.handle(t, setup(&[]));
        let _ = c.handle(t, close_answer(op(0), Status::Success));
        assert_eq!(
            c.handle(t, Event::Shut { reply: R2 }),
            vec![
                Action::Reply(R, Err(SetupError::SupersededByShut)),
                Action::Reply(R2, Ok(Outcome::Shut)),
            ]
        );
        assert_eq!(c.phase(), Phase::Shut);
    }

    /// A second shut while shutting is refused with `Shut`.
    #[test]
    fn shut_while_shutting_is_refused() {
        let t = t0();
        let mut c = with_open_streams(&[1]);
        let _ = c.handle(t, Event::Shut { reply: R });
        assert_eq!(
            c.handle(t, Event::Shut { reply: R2 }),
            vec![Action::Reply(R2, Err(SetupError::Shut))]
        );
    }

    // ---- Connection closed, teardown -------------------------------------------

    /// §2.3: a socket close fails the pending call (never hangs) and tears down.
    #[test]
    fn connection_closed_during_setup_fails_the_caller_and_tears_down() {
        let t = t0();
        let mut c = conn();
        let _ = c.handle(t, setup(&[1]));
        assert_eq!(
            c.handle(
                t,
                Event::ConnectionClosed {
                    side: Side::Producer
                }
            ),
            vec![
                Action::Reply(
                    R,
                    Err(SetupError::ConnectionClosed {
                        side: Side::Producer
                    })
                ),
                Action::Close(ConnError::PeerClosed {
                    side: Side::Producer
                })
            ]
        );
        assert_eq!(c.next_deadline(), None);
    }

    /// After teardown nothing is emitted any more, except typed refusals.
    #[test]
    fn after_teardown_everything_is_ignored_and_commands_are_refused() {
        let t = t0();
        let mut c = with_open_streams(&[1]);
        let e = ConnError::PeerClosed {
            side: Side::Consumer,
        };
        assert_eq!(
            c.handle(
                t,
                Event::ConnectionClosed {
                    side: Side::Consumer
                }
            ),
            vec![Action::Close(e.clone())]
        );
        for ev in [
            Event::FromConsumer(stream_req_frame(1, w(1), false)),
            add_ok(op(0), w(1)),
            end(1, w_old(1), EndReason::Closed),
            producer_close(op(0), Status::Success),
            Event::ConnectionClosed {
                side: Side::Producer,
            },
            Event::Timeout,
        ] {
            assert!(c.handle(t + Duration::from_secs(3600), ev).is_empty());
        }
        assert_eq!(
            c.handle(
                t,
                Event::SetupStreams {
                    want: vbs(&[]),
                    reply: R2
                }
            ),
            vec![Action::Reply(R2, Err(SetupError::TornDown(e)))]
        );
        assert_eq!(c.phase(), Phase::Closed);
    }

    // ---- Opaques ---------------------------------------------------------------

    /// §11.3: unique command opaques, never the vb id, from the upper half.
    #[test]
    fn command_opaques_are_unique_and_never_the_vbucket() {
        let t = t0();
        let mut c = with_open_streams(&[0, 1, 2]);
        let out = c.handle(t, setup(&[3, 4]));
        let mut seen = BTreeSet::new();
        for a in &out {
            let (Action::SendToConsumer(f) | Action::SendToProducer(f)) = a else {
                panic!("only commands expected: {a:?}")
            };
            assert!(f.opaque().0 >= COMMAND_OPAQUE_BASE);
            assert_ne!(f.opaque().0, u32::from(f.vbucket().0));
            assert!(seen.insert(f.opaque()), "duplicate opaque {}", f.opaque());
        }
        assert_eq!(seen.len(), 2 + 3 * 2);
    }

    #[test]
    fn command_opaques_wrap_within_the_upper_half() {
        let mut c = conn();
        c.next_opaque = u32::MAX;
        assert_eq!(c.alloc_opaque(), Opaque(u32::MAX));
        assert_eq!(c.alloc_opaque(), Opaque(COMMAND_OPAQUE_BASE));
    }

    #[test]
    fn abandoned_opaques_are_bounded() {
        let mut a = Abandoned::default();
        for i in 0..(ABANDONED_CAP as u32 + 10) {
            a.insert(
                Opaque(i),
                Cmd {
                    op: StreamOp::AddStream,
                    vb: vb(0),
                    side: Side::Consumer,
                },
            );
        }
        assert_eq!(a.map.len(), ABANDONED_CAP);
        assert!(a.get(Opaque(0)).is_none());
        assert!(a.get(Opaque(ABANDONED_CAP as u32 + 9)).is_some());
    }

    /// Errors name vb, opaque and side (STYLE "Errors").
    #[test]
    fn error_messages_name_vbucket_opaque_and_side() {
        let e = SetupError::UnexpectedStreamEnd {
            vb: vb(5),
            opaque: Opaque(0x101),
            reason: EndReason::StateChanged,
        };
        assert_eq!(
            e.to_string(),
            "producer vb:5: stream ended (STATE_CHANGED(0x2)) before it was established (stream opaque 0x00000101)"
        );
        let e = ConnError::UnknownOpaque {
            side: Side::Producer,
            opcode: Opcode::DcpCloseStream,
            opaque: Opaque(7),
        };
        assert_eq!(
            e.to_string(),
            "producer: DCP_CLOSE_STREAM(0x52) response with unknown opaque 0x00000007"
        );
        assert_eq!(e.side(), Some(Side::Producer));
        let e = SetupError::StreamsFailed {
            failures: vec![failure(
                StreamOp::AddStream,
                3,
                Side::Consumer,
                op(0),
                Status::NotMyVbucket,
            )],
        };
        assert_eq!(
            e.to_string(),
            "1 stream command(s) failed, first: consumer vb:3 add-stream (opaque 0x80000000): NOT_MY_VBUCKET(0x7)"
        );
    }
}
