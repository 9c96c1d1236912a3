//! Errors of the consumer-half state machine (STYLE "Errors": one enum per concern).
//!
//! * [`SetupError`] is what the caller of a command (set-up, takeover, shut) gets
//!   back in its reply. Expected per-stream outcomes (an ADD_STREAM answered with
//!   NOT_MY_VBUCKET) are collected in [`SetupError::StreamsFailed`].
//! * [`ConnError`] is why the connection pair is torn down ([`Action::Close`]); the
//!   caller of the operation in flight gets the matching [`SetupError`] first.
//!
//! Every variant names the vbucket, opaque and [`Side`] it has. Peer addresses are
//! added by the I/O shell, which wraps these values with the address of the socket
//! the `side` names.
//!
//! [`Action::Close`]: crate::core::Action::Close

use std::fmt;

use mcbp::dcp::EndReason;
use mcbp::{Opaque, Opcode, Status, Vbid};

use super::Side;

/// What a timed-out operation was waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WaitingFor {
    /// ADD_STREAM answers of a set-up (`CoreConfig::setup_timeout`).
    AddStream,
    /// CLOSE_STREAM answers of a set-up (`CoreConfig::close_timeout`).
    CloseStream,
    /// Completion of a takeover (`CoreConfig::takeover_timeout`).
    Takeover,
    /// The consumer-side CLOSE_STREAM answers of a shut (`CoreConfig::shut_timeout`).
    Shut,
}

impl fmt::Display for WaitingFor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WaitingFor::AddStream => "add-stream answers",
            WaitingFor::CloseStream => "close-stream answers",
            WaitingFor::Takeover => "takeover completion",
            WaitingFor::Shut => "shut close-stream answers",
        })
    }
}

/// The command a [`StreamFailure`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StreamOp {
    /// DCP_ADD_STREAM (always sent to the consumer node).
    AddStream,
    /// DCP_CLOSE_STREAM (sent to either node).
    CloseStream,
}

impl fmt::Display for StreamOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamOp::AddStream => "add-stream",
            StreamOp::CloseStream => "close-stream",
        })
    }
}

/// One command of a set-up that a node answered with a failure status (§5.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamFailure {
    /// Which command.
    pub op: StreamOp,
    /// The vbucket it was for.
    pub vb: Vbid,
    /// The node that answered.
    pub side: Side,
    /// Our command opaque.
    pub opaque: Opaque,
    /// The status it got.
    pub status: Status,
}

impl fmt::Display for StreamFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} (opaque {}): {}",
            self.side, self.vb, self.op, self.opaque, self.status
        )
    }
}

/// The operation that keeps the state machine busy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// A `SetupStreams`/`CloseStream` command is waiting for answers.
    SetupStreams,
    /// A takeover of this vbucket is running.
    Takeover {
        /// The vbucket being taken over.
        vb: Vbid,
    },
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::SetupStreams => f.write_str("stream set-up"),
            Operation::Takeover { vb } => write!(f, "takeover of {vb}"),
        }
    }
}

/// The takeover step a [`SetupError::TakeoverFailed`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TakeoverStep {
    /// The consumer node answered our takeover ADD_STREAM with an error.
    AddStream,
    /// The consumer node answered the producer's SET_VBUCKET_STATE with an error.
    SetVbucketState,
}

impl fmt::Display for TakeoverStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TakeoverStep::AddStream => "add-stream",
            TakeoverStep::SetVbucketState => "set-vbucket-state",
        })
    }
}

/// Why a command failed: the error half of an `Action::Reply`.
///
/// One type for every command (§11.16). Variants that come from a teardown
/// ([`ConnError`]) say so in their docs; the pair is gone after them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// §5.9: the producer ended the stream we are adding (its STREAM_END carried the
    /// opaque of the consumer's STREAM_REQ for the pending ADD), or ended the takeover
    /// stream before the takeover completed. The pair is torn down.
    #[error(
        "producer {vb}: stream ended ({reason}) before it was established (stream opaque {opaque})"
    )]
    UnexpectedStreamEnd {
        /// The vbucket.
        vb: Vbid,
        /// The wire stream opaque carried by the STREAM_END.
        opaque: Opaque,
        /// The producer's end reason.
        reason: EndReason,
    },
    /// Some commands of the set-up (or shut) were answered with a failure status.
    /// Every other command was accounted for; the pair stays up.
    #[error("{} stream command(s) failed, first: {}", failures.len(), failures.first().map_or_else(String::new, ToString::to_string))]
    StreamsFailed {
        /// Every failed command, in the order the answers arrived.
        failures: Vec<StreamFailure>,
    },
    /// The operation did not finish in time. The pair is torn down.
    #[error("timed out waiting for {waiting_for} from the {side} ({vbuckets:?})")]
    Timeout {
        /// What it was waiting for.
        waiting_for: WaitingFor,
        /// The vbuckets whose answers were overdue.
        vbuckets: Vec<Vbid>,
        /// The node that owed the answer.
        side: Side,
    },
    /// A socket of the pair was closed by its peer while the operation ran.
    #[error("{side}: connection closed by peer")]
    ConnectionClosed {
        /// Which socket.
        side: Side,
    },
    /// A node broke the protocol (unknown opaque, wrong STREAM_REQ during a
    /// takeover). The pair is torn down.
    #[error("protocol error")]
    Protocol(#[source] ConnError),
    /// Another operation is in flight; only get-partitions is served meanwhile.
    #[error("busy with {in_progress}")]
    Busy {
        /// What is in flight.
        in_progress: Operation,
    },
    /// The connection is shut or being shut; it accepts no more work.
    #[error("connection is shut")]
    Shut,
    /// A shut arrived while this set-up was still waiting; the set-up is abandoned
    /// (§5.6 IMPROVE: the superseded caller is answered at once).
    #[error("stream set-up superseded by a shut")]
    SupersededByShut,
    /// The consumer node answered a takeover step with an error status. After an
    /// ADD_STREAM error the pair stays up; after a SET_VBUCKET_STATE error it is torn
    /// down (the consumer's vbucket state is unknown).
    #[error("consumer {vb}: takeover {step} failed (opaque {opaque}): {status}")]
    TakeoverFailed {
        /// The vbucket.
        vb: Vbid,
        /// Our ADD_STREAM opaque, or the stream opaque of the SET_VBUCKET_STATE.
        opaque: Opaque,
        /// The status.
        status: Status,
        /// Which step.
        step: TakeoverStep,
    },
    /// The pair had already been torn down for this reason.
    #[error("connection pair torn down")]
    TornDown(#[source] ConnError),
}

impl SetupError {
    /// The error a caller gets when its operation ends with the pair torn down.
    #[must_use]
    pub fn from_teardown(e: &ConnError) -> SetupError {
        match e {
            ConnError::UnexpectedStreamEnd { vb, opaque, reason } => {
                SetupError::UnexpectedStreamEnd {
                    vb: *vb,
                    opaque: *opaque,
                    reason: *reason,
                }
            }
            ConnError::TakeoverFailed { vb, opaque, status } => SetupError::TakeoverFailed {
                vb: *vb,
                opaque: *opaque,
                status: *status,
                step: TakeoverStep::SetVbucketState,
            },
            ConnError::Timeout {
                waiting_for,
                vbuckets,
                side,
            } => SetupError::Timeout {
                waiting_for: *waiting_for,
                vbuckets: vbuckets.clone(),
                side: *side,
            },
            ConnError::PeerClosed { side } => SetupError::ConnectionClosed { side: *side },
            ConnError::UnknownOpaque { .. } | ConnError::UnexpectedStreamReq { .. } => {
                SetupError::Protocol(e.clone())
            }
        }
    }
}

/// Why the connection pair is torn down (`Action::Close`): both sockets are closed
/// and every pending call fails (§2.3).
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ConnError {
    /// An ADD_STREAM/CLOSE_STREAM answer carries an opaque we never issued (§5.5
    /// `unrecognized_opaque`).
    #[error("{side}: {opcode} response with unknown opaque {opaque}")]
    UnknownOpaque {
        /// The socket it arrived on.
        side: Side,
        /// The answered opcode.
        opcode: Opcode,
        /// The unknown opaque.
        opaque: Opaque,
    },
    /// During a takeover the consumer node requested a stream for another vbucket
    /// (§5.7 Takeover table).
    #[error(
        "consumer: stream request for {got} (opaque {opaque}) during the takeover of {expected}"
    )]
    UnexpectedStreamReq {
        /// The vbucket being taken over.
        expected: Vbid,
        /// The vbucket of the STREAM_REQ.
        got: Vbid,
        /// The STREAM_REQ's opaque.
        opaque: Opaque,
    },
    /// §5.9 / §5.7 Takeover IMPROVE: a stream being set up (or taken over) ended.
    #[error(
        "producer {vb}: stream ended ({reason}) before it was established (stream opaque {opaque})"
    )]
    UnexpectedStreamEnd {
        /// The vbucket.
        vb: Vbid,
        /// The stream opaque of the STREAM_END.
        opaque: Opaque,
        /// The end reason.
        reason: EndReason,
    },
    /// §11.8: the consumer node refused a takeover SET_VBUCKET_STATE.
    #[error("consumer {vb}: set-vbucket-state during takeover failed (opaque {opaque}): {status}")]
    TakeoverFailed {
        /// The vbucket.
        vb: Vbid,
        /// The takeover stream opaque.
        opaque: Opaque,
        /// The status.
        status: Status,
    },
    /// An operation ran out of time; the consumer node's state is unknown, so the
    /// pair is restarted clean.
    #[error("timed out waiting for {waiting_for} from the {side} ({vbuckets:?})")]
    Timeout {
        /// What it was waiting for.
        waiting_for: WaitingFor,
        /// The overdue vbuckets.
        vbuckets: Vec<Vbid>,
        /// The node that owed the answer.
        side: Side,
    },
    /// A socket was closed by its peer (`socket_closed`, §3.4).
    #[error("{side}: connection closed by peer")]
    PeerClosed {
        /// Which socket.
        side: Side,
    },
}

impl ConnError {
    /// The socket this error is about, when it is about one; the shell adds that
    /// socket's peer address.
    #[must_use]
    pub fn side(&self) -> Option<Side> {
        match self {
            ConnError::UnknownOpaque { side, .. } | ConnError::PeerClosed { side } => Some(*side),
            ConnError::UnexpectedStreamReq { .. } | ConnError::TakeoverFailed { .. } => {
                Some(Side::Consumer)
            }
            ConnError::UnexpectedStreamEnd { .. } => Some(Side::Producer),
            ConnError::Timeout { side, .. } => Some(*side),
        }
    }
}
