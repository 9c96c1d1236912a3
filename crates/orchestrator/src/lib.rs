//! Rebalance: a pure plan (current map + target map -> ordered moves) and an async
//! executor.
//!
//! Not built yet: no issue has asked for multi-vbucket rebalance. A single vbucket
//! move already exists as `replication::mover::move_vbucket` (and
//! `conduit move-vbucket`); the executor will drive it.

#![warn(missing_docs)]
