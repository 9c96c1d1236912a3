//! The client's error type.

use std::time::Duration;

use mcbp::{BodyError, DecodeError, Opaque, Opcode, Status};

/// A failed client operation. Every variant names the peer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP connect failed.
    #[error("{peer}: connect failed")]
    Connect {
        /// The address dialled.
        peer: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("{peer}: i/o failed during {op}")]
    Io {
        /// The peer.
        peer: String,
        /// What we were doing.
        op: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The peer did not answer in time.
    #[error("{peer}: no answer to {op} within {after:?}")]
    Timeout {
        /// The peer.
        peer: String,
        /// What we waited for.
        op: &'static str,
        /// The bound that expired.
        after: Duration,
    },
    /// The peer closed the connection.
    #[error("{peer}: connection closed by peer during {op}")]
    Closed {
        /// The peer.
        peer: String,
        /// What we were doing.
        op: &'static str,
    },
    /// The byte stream cannot be framed.
    #[error("{peer}: corrupt stream")]
    Decode {
        /// The peer.
        peer: String,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// A frame's body does not fit its layout.
    #[error("{peer}: malformed answer")]
    Body {
        /// The peer.
        peer: String,
        /// Why.
        #[source]
        source: BodyError,
    },
    /// The peer answered with a non-success status.
    #[error("{peer}: {opcode} failed with {status}{}", if context.is_empty() { String::new() } else { format!(": {context}") })]
    Status {
        /// The peer.
        peer: String,
        /// The command.
        opcode: Opcode,
        /// The status.
        status: Status,
        /// Error context from the value, if any.
        context: String,
    },
    /// The peer sent a frame we did not expect.
    #[error("{peer}: expected the answer to {expected} (opaque {opaque}), got {got_magic} {got}")]
    Unexpected {
        /// The peer.
        peer: String,
        /// The command we waited on.
        expected: Opcode,
        /// Its opaque.
        opaque: Opaque,
        /// The frame's opcode.
        got: Opcode,
        /// The frame's magic.
        got_magic: mcbp::Magic,
    },
    /// SASL failed.
    #[error("{peer}: authentication as {user:?} with {mechanism} failed ({status})")]
    Auth {
        /// The peer.
        peer: String,
        /// User name.
        user: String,
        /// Mechanism.
        mechanism: String,
        /// The final status.
        status: Status,
    },
    /// The server's SCRAM messages were wrong.
    #[error("{peer}: SCRAM exchange failed")]
    Scram {
        /// The peer.
        peer: String,
        /// Why.
        #[source]
        source: sasl::ScramClientError,
    },
}

impl ClientError {
    /// The status, for [`ClientError::Status`] and [`ClientError::Auth`].
    #[must_use]
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Status { status, .. } | ClientError::Auth { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the peer did not answer in time.
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::Timeout { .. })
    }
}
