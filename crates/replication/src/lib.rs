//! Conduit's DCP replication layer (`replication-layer.md`): the proxy pair that
//! splices a consumer node's DCP consumer connection to a producer node's DCP
//! producer connection, the replicator that owns such a pair, and the replication
//! manager.
//!
//! Layout (STYLE "Pure cores, thin shells"):
//!
//! * [`core`]: pure, sans-IO state machines. [`core::ConsumerConn`] makes every
//!   protocol decision of the consumer half (stream set-up, takeover, shut, §5);
//!   [`core::producer_conn`] holds the producer half's per-frame decisions (§6);
//!   [`core::naming`] builds DCP connection and HELLO agent names (§4.3). No
//!   sockets, no clock reads (the caller passes `now`), no tasks, no channels.
//! * [`io`]: the tokio shell's socket side: connection set-up of a half (§4.2) and
//!   the proxy pair's reader/writer tasks (§2.4, §3).
//! * [`replicator`]: [`Replicator`], the actor owning one proxy pair and its
//!   [`core::ConsumerConn`], plus [`replicator::wait_for_data_move`] (§7).
//! * [`manager`]: [`ReplicationManager`], desired incoming map -> replicators (§8).
//! * [`mover`]: [`mover::move_vbucket`], one vbucket move built on the above (§9.2).
//! * [`error`]: [`ReplError`], the one error type of the public API; core and
//!   socket errors are wrapped into it once, with peer addresses.

#![warn(missing_docs)]

pub mod core;
pub mod error;
pub mod io;
pub mod json;
mod lock;
pub mod manager;
pub mod mover;
pub mod replicator;

pub use error::{ConnectCause, ConnectError, MoveStep, ProtocolCause, ReplError, Stage, WaitFor};

pub use manager::{ManagerConfig, ReplicationManager, ReplicationMap};
pub use mover::{move_vbucket, MoveConfig, MoveReport};
pub use replicator::{
    wait_for_data_move, DataMoveWait, Replicator, ReplicatorConfig, ReplicatorState,
};
