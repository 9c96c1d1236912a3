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
//! * The tokio shell (replicator actor, socket reader/writer tasks) builds on
//!   `core` and `kv-client`; it is not part of this crate yet.

#![warn(missing_docs)]

pub mod core;
