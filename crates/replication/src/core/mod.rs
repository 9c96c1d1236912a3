//! The pure, sans-IO core of the replication layer (`replication-layer.md` §2–§6).
//!
//! Nothing in here owns a socket, reads a clock, spawns a task or holds a channel.
//! The I/O shell (one actor per replicator, one reader and one writer task per
//! socket, §2.4) feeds these state machines whole frames, commands and the current
//! time, and carries out the actions they return, in order.
//!
//! * [`consumer_conn`]: [`ConsumerConn`], the replication state machine of the
//!   consumer half (§5): stream set-up, takeover, shut, and every race of §5.7/§5.9.
//! * [`producer_conn`]: the producer half's per-frame decisions (§6) and the
//!   fast-path routing helpers for both sockets.
//! * [`naming`]: DCP connection names (§4.3) and HELLO agent names (§4.2).
//! * [`error`]: [`SetupError`] (what a caller gets back) and [`ConnError`] (why the
//!   connection pair is torn down).
//!
//! Peer addresses are not known here: every error carries the [`Side`] it is about
//! and the shell wraps it with the peer's address when it logs or propagates it.

use std::fmt;

pub mod consumer_conn;
pub mod error;
pub mod naming;
pub mod producer_conn;

pub use consumer_conn::{
    Action, ConsumerConn, CoreConfig, Event, Outcome, Phase, ReplyTo, TakeoverPhase,
    COMMAND_OPAQUE_BASE,
};
pub use error::{
    ConnError, Operation, SetupError, StreamFailure, StreamOp, TakeoverStep, WaitingFor,
};
pub use naming::{agent_name, connection_name, takeover_connection_name};
pub use producer_conn::{
    classify_from_producer, route_from_consumer, route_from_producer, ProducerDecision, Route,
};

/// Which of the two sockets of a connection pair something happened on, named for
/// the node each half faces (STYLE: `ConsumerConn`/`ProducerConn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// The socket to the local KV node, opened as a DCP consumer.
    Consumer,
    /// The socket to the remote KV node, opened as a DCP producer.
    Producer,
}

impl Side {
    /// `consumer` or `producer`, as used in HELLO agent names and logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Consumer => "consumer",
            Side::Producer => "producer",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
