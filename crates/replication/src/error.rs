//! [`ReplError`]: the one error type of the replication layer's public API
//! (§11.16), and [`ConnectError`], the failure of a half's connection set-up
//! (§4.2, §11.15).
//!
//! Every variant names what it concerns (vbucket, opaque, peer, side). Errors of the
//! consumer-side core ([`SetupError`], [`ConnError`]) and of the proxy's socket tasks
//! are turned into a [`ReplError`] here and only here (`ReplError::from_setup`,
//! `ReplError::from_conn`, `ReplError::from_io`), adding the peer address of the
//! side that failed. Causes stay typed: an `io::Error` or a decode error is the
//! [`source`](std::error::Error::source), never flattened into the message. How the
//! CLI prints these errors (kinds, JSON fields) is the CLI's business
//! (`replication::json`).

use std::fmt;
use std::io;
use std::sync::Arc;

use kv_client::ClientError;
use mcbp::dcp::EndReason;
use mcbp::kv::Feature;
use mcbp::{DecodeError, Opaque, Status, VbState, Vbid};

use crate::core::{
    ConnError, Operation, SetupError, Side, StreamFailure, TakeoverStep, WaitingFor,
};
use crate::io::proxy::IoFailure;

/// The step of a half's connection set-up (§4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// TCP connect.
    Connect,
    /// SASL PLAIN authentication.
    Sasl,
    /// SELECT_BUCKET.
    SelectBucket,
    /// HELLO (feature negotiation).
    Hello,
    /// DCP_OPEN.
    DcpOpen,
}

impl Stage {
    /// `connect`, `sasl`, `select_bucket`, `hello` or `dcp_open` (the CLI's names).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Sasl => "sasl",
            Stage::SelectBucket => "select_bucket",
            Stage::Hello => "hello",
            Stage::DcpOpen => "dcp_open",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a connection set-up step failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ConnectCause {
    /// The client call failed (transport, timeout, status).
    #[error(transparent)]
    Client(Arc<ClientError>),
    /// HELLO succeeded but did not grant features we require (XATTR, JSON).
    #[error("required features not granted: {}", missing.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    FeaturesRefused {
        /// The required features the node did not grant.
        missing: Vec<Feature>,
    },
}

/// A half's connection set-up failed (§4.2; §11.15: reported, never asserted).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{side} {peer}: connection set-up failed at {stage}{}", status.map_or_else(String::new, |s| format!(" ({s})")))]
pub struct ConnectError {
    /// Which half.
    pub side: Side,
    /// The address dialled (or the peer's address once connected).
    pub peer: String,
    /// The failed step.
    pub stage: Stage,
    /// The node's status, when it answered with one.
    pub status: Option<Status>,
    /// The vbuckets whose replication waited for this connection (filled in by the
    /// manager; empty for a bare connect).
    pub vbuckets: Vec<Vbid>,
    /// The cause.
    #[source]
    pub source: ConnectCause,
}

impl ConnectError {
    /// Whether the step ran out of time (connect or a handshake answer).
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(&self.source, ConnectCause::Client(c) if c.is_timeout())
    }

    /// Whether SASL refused our credentials.
    #[must_use]
    pub fn is_auth(&self) -> bool {
        matches!(&self.source, ConnectCause::Client(c) if matches!(**c, ClientError::Auth { .. }))
    }

    /// Whether the peer was unreachable or closed/failed the connection.
    #[must_use]
    pub fn is_connection_lost(&self) -> bool {
        matches!(&self.source, ConnectCause::Client(c) if matches!(**c,
            ClientError::Connect { .. } | ClientError::Io { .. } | ClientError::Closed { .. }))
    }
}

/// What a [`ReplError::Timeout`] was waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WaitFor {
    /// Connection set-up (connect and handshake).
    Connect,
    /// ADD_STREAM answers of a set-up.
    AddStream,
    /// CLOSE_STREAM answers of a set-up.
    CloseStream,
    /// Completion of a takeover.
    Takeover,
    /// The consumer-side CLOSE_STREAM answers of a graceful shut.
    Shut,
    /// `dcp-vbtakeover` estimates below the done limit (§7.7).
    DataMove,
    /// The destination persisting a seqno (SEQNO_PERSISTENCE, §9.2 step 7).
    SeqnoPersistence,
    /// A move's repair: vbucket states and histories read, leftover takeover
    /// connections gone, state changes applied.
    Repair,
}

impl WaitFor {
    /// The CLI's name: `connect`, `add_stream`, `close_stream`, `takeover`, `shut`,
    /// `data_move`, `seqno_persistence`, `repair`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            WaitFor::Connect => "connect",
            WaitFor::AddStream => "add_stream",
            WaitFor::CloseStream => "close_stream",
            WaitFor::Takeover => "takeover",
            WaitFor::Shut => "shut",
            WaitFor::DataMove => "data_move",
            WaitFor::SeqnoPersistence => "seqno_persistence",
            WaitFor::Repair => "repair",
        }
    }
}

impl fmt::Display for WaitFor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<WaitingFor> for WaitFor {
    fn from(w: WaitingFor) -> Self {
        match w {
            WaitingFor::AddStream => WaitFor::AddStream,
            WaitingFor::CloseStream => WaitFor::CloseStream,
            WaitingFor::Takeover => WaitFor::Takeover,
            WaitingFor::Shut => WaitFor::Shut,
        }
    }
}

/// A step of [`crate::mover::move_vbucket`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MoveStep {
    /// Read both nodes' vbucket states before touching anything.
    Preflight,
    /// Set the vbucket to replica on the destination.
    SetReplica,
    /// Start the replicator and add the stream.
    Replicate,
    /// Wait for the data move (`dcp-vbtakeover` estimate).
    DataMove,
    /// Wait until the destination persisted the source's high seqno.
    Persistence,
    /// The takeover stream.
    Takeover,
    /// Set the final states (destination active, source dead).
    Finalize,
    /// After a failed takeover or finalize: wait until the move's connections are
    /// gone, then finish the move or make the source active again.
    Repair,
}

impl MoveStep {
    /// `preflight`, `set_replica`, `replicate`, `data_move`, `persistence`,
    /// `takeover`, `finalize`, `repair`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            MoveStep::Preflight => "preflight",
            MoveStep::SetReplica => "set_replica",
            MoveStep::Replicate => "replicate",
            MoveStep::DataMove => "data_move",
            MoveStep::Persistence => "persistence",
            MoveStep::Takeover => "takeover",
            MoveStep::Finalize => "finalize",
            MoveStep::Repair => "repair",
        }
    }
}

impl fmt::Display for MoveStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The replication layer's error (one type for every operation, §11.16).
///
/// `Clone`, so a termination reason can be handed to every pending caller.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ReplError {
    /// §5.9: the producer ended a stream that was being added (or the takeover
    /// stream before the takeover completed). The pair was torn down.
    #[error("producer {peer}: {vb} stream ended ({reason}) before it was established (stream opaque {opaque})")]
    UnexpectedStreamEnd {
        /// The vbucket.
        vb: Vbid,
        /// The opaque the STREAM_END carried (the consumer's STREAM_REQ opaque).
        opaque: Opaque,
        /// The end reason.
        reason: EndReason,
        /// The producer node's address.
        peer: String,
    },
    /// Some ADD_STREAM / CLOSE_STREAM commands of a set-up (or shut) were answered
    /// with a failure status; the pair stays up.
    #[error("{} stream command(s) failed (consumer {consumer}, producer {producer}), first: {}",
        failures.len(), failures.first().map_or_else(String::new, ToString::to_string))]
    StreamsFailed {
        /// Every failed command, in answer order.
        failures: Vec<StreamFailure>,
        /// The consumer node's address.
        consumer: String,
        /// The producer node's address.
        producer: String,
    },
    /// A takeover step was answered with an error status by the consumer node.
    #[error("consumer {peer}: takeover of {vb}: {step} failed (opaque {opaque}): {status}")]
    TakeoverFailed {
        /// The vbucket.
        vb: Vbid,
        /// Our ADD_STREAM opaque or the takeover stream's opaque.
        opaque: Opaque,
        /// The status.
        status: Status,
        /// The step.
        step: TakeoverStep,
        /// The consumer node's address.
        peer: String,
    },
    /// A bounded wait expired.
    #[error("timed out waiting for {waiting_for}{} (vbuckets {vbuckets:?})", peer.as_ref().map_or_else(String::new, |p| format!(" from {p}")))]
    Timeout {
        /// What it waited for.
        waiting_for: WaitFor,
        /// The vbuckets still pending.
        vbuckets: Vec<Vbid>,
        /// The peer that owed the answer, when one does.
        peer: Option<String>,
    },
    /// A socket was closed (or failed) under an operation.
    #[error("{side} {peer}: connection closed")]
    ConnectionClosed {
        /// Which half.
        side: Side,
        /// The peer's address.
        peer: String,
        /// What the socket task saw: the I/O error, an EOF
        /// ([`io::ErrorKind::UnexpectedEof`]) or a write that made no progress
        /// ([`io::ErrorKind::TimedOut`]). `None` when only the core saw the close.
        #[source]
        source: Option<Arc<io::Error>>,
    },
    /// A node broke the protocol (unknown opaque, a stream request for the wrong
    /// vbucket during a takeover, a corrupt stream, a malformed answer).
    #[error("{side} {peer}: protocol error")]
    Protocol {
        /// Which half.
        side: Side,
        /// The peer's address.
        peer: String,
        /// The vbucket concerned, if any.
        vb: Option<Vbid>,
        /// The opaque concerned, if any.
        opaque: Option<Opaque>,
        /// What was wrong.
        #[source]
        cause: ProtocolCause,
    },
    /// Connection set-up of a half failed (§4.2).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A node call outside the proxy (stats, SET_VBUCKET, SEQNO_PERSISTENCE) failed.
    #[error("{side} {peer}: {op} failed")]
    Node {
        /// The node's role in this replication.
        side: Side,
        /// The node's address.
        peer: String,
        /// What we asked.
        op: &'static str,
        /// The vbucket, if the call was about one.
        vb: Option<Vbid>,
        /// The client error.
        #[source]
        source: Arc<ClientError>,
    },
    /// `dcp-vbtakeover` reported a status that means the stream is not there
    /// (§7.7), or the node answered NOT_MY_VBUCKET (`no_status_stat_seen`).
    #[error("producer {peer}: {vb} on connection {connection}: unexpected dcp-vbtakeover status {status:?}")]
    UnexpectedStatus {
        /// The vbucket.
        vb: Vbid,
        /// The status string.
        status: String,
        /// The producer node's address.
        peer: String,
        /// The DCP connection name queried.
        connection: String,
    },
    /// A vbucket is not in the state an operation needs (e.g. a move whose source
    /// is not active).
    #[error("{peer}: {vb} is {state}, expected {expected}")]
    VbucketState {
        /// The vbucket.
        vb: Vbid,
        /// The node's address.
        peer: String,
        /// Its state there.
        state: VbState,
        /// What was needed.
        expected: &'static str,
    },
    /// The two copies of a vbucket each hold writes the other lacks (neither's
    /// history contains the other's): no choice of active copy keeps every
    /// acknowledged write, so the move changes nothing.
    #[error("{vb} diverged: source {source_peer} ({source_state}, high seqno {source_high_seqno}) and destination {destination_peer} ({destination_state}, high seqno {destination_high_seqno}) each hold writes the other lacks")]
    Diverged {
        /// The vbucket.
        vb: Vbid,
        /// The source node's address.
        source_peer: String,
        /// The vbucket's state there.
        source_state: VbState,
        /// Its high seqno there.
        source_high_seqno: u64,
        /// The destination node's address.
        destination_peer: String,
        /// The vbucket's state there.
        destination_state: VbState,
        /// Its high seqno there.
        destination_high_seqno: u64,
    },
    /// Another operation is in flight on this replicator.
    #[error("replicator busy with {in_progress}")]
    Busy {
        /// What is in flight.
        in_progress: Operation,
    },
    /// The replicator is shut (or shutting) and accepts no more work.
    #[error("replicator is shut")]
    Shut,
    /// The operation was abandoned because its owner stopped the replicator (abort,
    /// shut during a set-up, drop).
    #[error("interrupted")]
    Interrupted,
    /// The manager was asked about a node it cannot resolve to an address.
    #[error("unknown node {node:?}")]
    UnknownNode {
        /// The node name.
        node: String,
    },
    /// Several replicators failed in one manager operation (per producer node).
    #[error("{} replication(s) failed, first: {}", errors.len(), errors.first().map_or_else(String::new, |(n, e)| format!("{n}: {}", e.message())))]
    Replications {
        /// (producer node, error) pairs.
        errors: Vec<(String, ReplError)>,
    },
    /// A step of a vbucket move failed.
    #[error("move of {vb}: step {step} failed")]
    Move {
        /// The vbucket being moved.
        vb: Vbid,
        /// The failed step.
        step: MoveStep,
        /// Why.
        #[source]
        source: Box<ReplError>,
    },
}

/// What was wrong in a [`ReplError::Protocol`].
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProtocolCause {
    /// The consumer-side core tore the pair down (unknown opaque, unexpected
    /// stream request during a takeover).
    #[error(transparent)]
    Core(ConnError),
    /// The byte stream cannot be framed (or a frame exceeds the body cap).
    #[error("corrupt stream")]
    Decode(#[source] DecodeError),
    /// A node's answer outside the proxy could not be used.
    #[error("{0}")]
    Malformed(String),
}

/// The peer addresses of a replicator's two halves, for error mapping.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Peers {
    pub(crate) consumer: String,
    pub(crate) producer: String,
}

impl Peers {
    pub(crate) fn of(&self, side: Side) -> &str {
        match side {
            Side::Consumer => &self.consumer,
            Side::Producer => &self.producer,
        }
    }
}

impl ReplError {
    /// Maps a core reply error, adding peer addresses.
    pub(crate) fn from_setup(e: SetupError, peers: &Peers) -> ReplError {
        match e {
            SetupError::UnexpectedStreamEnd { vb, opaque, reason } => {
                ReplError::UnexpectedStreamEnd {
                    vb,
                    opaque,
                    reason,
                    peer: peers.producer.clone(),
                }
            }
            SetupError::StreamsFailed { failures } => ReplError::StreamsFailed {
                failures,
                consumer: peers.consumer.clone(),
                producer: peers.producer.clone(),
            },
            SetupError::Timeout {
                waiting_for,
                vbuckets,
                side,
            } => ReplError::Timeout {
                waiting_for: waiting_for.into(),
                vbuckets,
                peer: Some(peers.of(side).to_string()),
            },
            SetupError::ConnectionClosed { side } => ReplError::ConnectionClosed {
                side,
                peer: peers.of(side).to_string(),
                source: None,
            },
            SetupError::Protocol(c) | SetupError::TornDown(c) => ReplError::from_conn(&c, peers),
            SetupError::Busy { in_progress } => ReplError::Busy { in_progress },
            SetupError::Shut => ReplError::Shut,
            SetupError::SupersededByShut => ReplError::Interrupted,
            SetupError::TakeoverFailed {
                vb,
                opaque,
                status,
                step,
            } => ReplError::TakeoverFailed {
                vb,
                opaque,
                status,
                step,
                peer: peers.consumer.clone(),
            },
        }
    }

    /// Maps a core teardown reason, adding peer addresses.
    pub(crate) fn from_conn(e: &ConnError, peers: &Peers) -> ReplError {
        match e {
            ConnError::UnknownOpaque { side, opaque, .. } => ReplError::Protocol {
                side: *side,
                peer: peers.of(*side).to_string(),
                vb: None,
                opaque: Some(*opaque),
                cause: ProtocolCause::Core(e.clone()),
            },
            ConnError::UnexpectedStreamReq {
                expected, opaque, ..
            } => ReplError::Protocol {
                side: Side::Consumer,
                peer: peers.consumer.clone(),
                vb: Some(*expected),
                opaque: Some(*opaque),
                cause: ProtocolCause::Core(e.clone()),
            },
            ConnError::UnexpectedStreamEnd { vb, opaque, reason } => {
                ReplError::UnexpectedStreamEnd {
                    vb: *vb,
                    opaque: *opaque,
                    reason: *reason,
                    peer: peers.producer.clone(),
                }
            }
            ConnError::TakeoverFailed { vb, opaque, status } => ReplError::TakeoverFailed {
                vb: *vb,
                opaque: *opaque,
                status: *status,
                step: TakeoverStep::SetVbucketState,
                peer: peers.consumer.clone(),
            },
            ConnError::Timeout {
                waiting_for,
                vbuckets,
                side,
            } => ReplError::Timeout {
                waiting_for: (*waiting_for).into(),
                vbuckets: vbuckets.clone(),
                peer: Some(peers.of(*side).to_string()),
            },
            ConnError::PeerClosed { side } => ReplError::ConnectionClosed {
                side: *side,
                peer: peers.of(*side).to_string(),
                source: None,
            },
        }
    }

    /// Maps a socket task's failure, adding the failed side's peer address.
    pub(crate) fn from_io(f: &IoFailure, peers: &Peers) -> ReplError {
        let side = f.side();
        let peer = peers.of(side).to_string();
        let closed = |e: io::Error| ReplError::ConnectionClosed {
            side,
            peer: peer.clone(),
            source: Some(Arc::new(e)),
        };
        match f {
            IoFailure::Eof(_) => closed(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed by peer",
            )),
            IoFailure::Io(_, e) => ReplError::ConnectionClosed {
                side,
                peer,
                source: Some(Arc::clone(e)),
            },
            IoFailure::Decode(_, e) => ReplError::Protocol {
                side,
                peer,
                vb: None,
                opaque: None,
                cause: ProtocolCause::Decode(e.clone()),
            },
            IoFailure::ActorGone(_) => ReplError::Interrupted,
            IoFailure::WriteStalled(_, after) => closed(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no write progress for {after:?}: the node stopped reading"),
            )),
        }
    }

    /// During a teardown the core only knows that a socket closed; the socket task
    /// that saw it knows how (`precise`, from [`ReplError::from_io`]), which then
    /// replaces a bare [`ReplError::ConnectionClosed`].
    pub(crate) fn or_precise(self, precise: Option<&ReplError>) -> ReplError {
        match (precise, &self) {
            (Some(p), ReplError::ConnectionClosed { .. }) => p.clone(),
            _ => self,
        }
    }

    /// The full message: this error's text followed by its sources' (a source whose
    /// text is already in the message is not repeated). What the CLI shows.
    #[must_use]
    pub fn message(&self) -> String {
        let mut s = self.to_string();
        let mut src = std::error::Error::source(self);
        while let Some(e) = src {
            let t = e.to_string();
            if !s.contains(&t) {
                s.push_str(": ");
                s.push_str(&t);
            }
            src = e.source();
        }
        s
    }

    /// A kv-client failure of a node call outside the proxy.
    pub(crate) fn node(side: Side, op: &'static str, vb: Option<Vbid>, e: ClientError) -> Self {
        let peer = client_peer(&e).unwrap_or_default();
        ReplError::Node {
            side,
            peer,
            op,
            vb,
            source: Arc::new(e),
        }
    }
}

/// The peer a client error names.
pub(crate) fn client_peer(e: &ClientError) -> Option<String> {
    match e {
        ClientError::Connect { peer, .. }
        | ClientError::Io { peer, .. }
        | ClientError::Timeout { peer, .. }
        | ClientError::Closed { peer, .. }
        | ClientError::Decode { peer, .. }
        | ClientError::Body { peer, .. }
        | ClientError::Status { peer, .. }
        | ClientError::Unexpected { peer, .. }
        | ClientError::Auth { peer, .. }
        | ClientError::Scram { peer, .. } => Some(peer.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::time::Duration;

    use super::*;
    use crate::core::StreamOp;

    fn peers() -> Peers {
        Peers {
            consumer: "127.0.0.1:1".into(),
            producer: "127.0.0.1:2".into(),
        }
    }

    #[test]
    fn an_unexpected_stream_end_names_the_producer() {
        let e = ReplError::from_setup(
            SetupError::UnexpectedStreamEnd {
                vb: Vbid(5),
                opaque: Opaque(7),
                reason: EndReason::StateChanged,
            },
            &peers(),
        );
        assert!(
            matches!(&e, ReplError::UnexpectedStreamEnd { vb: Vbid(5), opaque: Opaque(7), reason: EndReason::StateChanged, peer } if peer == "127.0.0.1:2"),
            "{e:?}"
        );
    }

    #[test]
    fn failed_stream_commands_name_both_peers() {
        let f = StreamFailure {
            op: StreamOp::AddStream,
            vb: Vbid(3),
            side: Side::Consumer,
            opaque: Opaque(0x8000_0000),
            status: Status::NotMyVbucket,
        };
        let e = ReplError::from_setup(SetupError::StreamsFailed { failures: vec![f] }, &peers());
        assert!(
            matches!(&e, ReplError::StreamsFailed { failures, consumer, producer }
                if failures == &[f] && consumer == "127.0.0.1:1" && producer == "127.0.0.1:2"),
            "{e:?}"
        );
    }

    #[test]
    fn a_timeout_names_the_peer_that_owes_the_answer() {
        let e = ReplError::from_setup(
            SetupError::Timeout {
                waiting_for: WaitingFor::AddStream,
                vbuckets: vec![Vbid(1), Vbid(2)],
                side: Side::Consumer,
            },
            &peers(),
        );
        assert!(
            matches!(&e, ReplError::Timeout { waiting_for: WaitFor::AddStream, vbuckets, peer: Some(p) }
                if vbuckets == &[Vbid(1), Vbid(2)] && p == "127.0.0.1:1"),
            "{e:?}"
        );
        // Issue #8 item 9: a producer CLOSE_STREAM that is late names the producer.
        let e = ReplError::from_conn(
            &ConnError::Timeout {
                waiting_for: WaitingFor::CloseStream,
                vbuckets: vec![Vbid(3)],
                side: Side::Producer,
            },
            &peers(),
        );
        assert!(
            matches!(&e, ReplError::Timeout { waiting_for: WaitFor::CloseStream, peer: Some(p), .. } if p == "127.0.0.1:2"),
            "{e:?}"
        );
    }

    #[test]
    fn a_close_seen_by_the_core_names_the_side_and_has_no_source() {
        let e = ReplError::from_setup(
            SetupError::ConnectionClosed {
                side: Side::Producer,
            },
            &peers(),
        );
        assert!(
            matches!(&e, ReplError::ConnectionClosed { side: Side::Producer, peer, source: None } if peer == "127.0.0.1:2"),
            "{e:?}"
        );
        assert!(e.source().is_none());
    }

    #[test]
    fn a_protocol_error_wraps_the_cores_error_once() {
        let core = ConnError::UnknownOpaque {
            side: Side::Consumer,
            opcode: mcbp::Opcode::DcpAddStream,
            opaque: Opaque(0x1234),
        };
        for e in [
            ReplError::from_conn(&core, &peers()),
            ReplError::from_setup(SetupError::Protocol(core.clone()), &peers()),
            ReplError::from_setup(SetupError::TornDown(core.clone()), &peers()),
        ] {
            let ReplError::Protocol {
                side,
                peer,
                opaque,
                cause: ProtocolCause::Core(c),
                ..
            } = &e
            else {
                panic!("wrong error {e:?}");
            };
            assert_eq!(
                (*side, peer.as_str(), *opaque),
                (Side::Consumer, "127.0.0.1:1", Some(Opaque(0x1234)))
            );
            assert_eq!(c, &core);
            assert_eq!(e.source().map(ToString::to_string), Some(core.to_string()));
        }
    }

    #[test]
    fn socket_failures_keep_the_io_error_as_the_source() {
        let io = Arc::new(io::Error::from(io::ErrorKind::ConnectionReset));
        let e = ReplError::from_io(&IoFailure::Io(Side::Producer, Arc::clone(&io)), &peers());
        let ReplError::ConnectionClosed {
            side: Side::Producer,
            peer,
            source: Some(src),
        } = &e
        else {
            panic!("wrong error {e:?}");
        };
        assert_eq!(peer, "127.0.0.1:2");
        assert!(
            Arc::ptr_eq(src, &io),
            "the same io::Error, not a copy of its text"
        );
        assert_eq!(e.source().map(ToString::to_string), Some(io.to_string()));

        let kind_of = |f: IoFailure| match ReplError::from_io(&f, &peers()) {
            ReplError::ConnectionClosed {
                source: Some(src), ..
            } => (src.kind(), src.to_string()),
            other => panic!("wrong error {other:?}"),
        };
        assert_eq!(
            kind_of(IoFailure::Eof(Side::Consumer)),
            (io::ErrorKind::UnexpectedEof, "closed by peer".to_string())
        );
        let (kind, text) = kind_of(IoFailure::WriteStalled(
            Side::Consumer,
            Duration::from_secs(2),
        ));
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert!(text.contains("the node stopped reading"), "{text}");
        assert!(matches!(
            ReplError::from_io(&IoFailure::ActorGone(Side::Consumer), &peers()),
            ReplError::Interrupted
        ));
    }

    #[test]
    fn a_corrupt_stream_keeps_the_decode_error_as_the_source() {
        let d = DecodeError::BodyTooLarge {
            magic: mcbp::Magic::ClientRequest,
            opcode: 0x57,
            body_len: 99,
            max: 10,
        };
        let e = ReplError::from_io(&IoFailure::Decode(Side::Consumer, d.clone()), &peers());
        assert!(
            matches!(&e, ReplError::Protocol { side: Side::Consumer, cause: ProtocolCause::Decode(x), .. } if x == &d),
            "{e:?}"
        );
        let cause = e.source().expect("the cause");
        assert_eq!(cause.to_string(), "corrupt stream");
        assert_eq!(cause.source().map(ToString::to_string), Some(d.to_string()));
    }

    #[test]
    fn a_takeover_refusal_names_the_consumer() {
        let e = ReplError::from_conn(
            &ConnError::TakeoverFailed {
                vb: Vbid(1),
                opaque: Opaque(9),
                status: Status::Einval,
            },
            &peers(),
        );
        assert!(
            matches!(&e, ReplError::TakeoverFailed { vb: Vbid(1), step: TakeoverStep::SetVbucketState, status: Status::Einval, peer, .. } if peer == "127.0.0.1:1"),
            "{e:?}"
        );
    }

    #[test]
    fn a_set_up_superseded_by_a_shut_is_interrupted() {
        assert!(matches!(
            ReplError::from_setup(SetupError::SupersededByShut, &peers()),
            ReplError::Interrupted
        ));
    }
}
