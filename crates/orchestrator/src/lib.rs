//! The cluster manager's pieces (cluster.md §2, §4): vbucket map generation and the
//! metadata store seam.
//!
//! [`map`] is a pure core: no I/O, no clock, no global randomness; the caller passes the
//! seed. [`store`] is the seam behind which everything the cluster must remember lives,
//! with its embedded default (one redb file) and an in-memory double for tests. The
//! orchestrator actor, agents, REST routes, janitor and rebalance are not built yet.

#![warn(missing_docs)]

pub mod agent;
pub mod config;
pub mod http;
pub mod janitor;
pub mod map;
pub mod orch;
/// The REST surface (cluster.md §3): request parameters, validation and the error answer.
pub mod rest;
pub mod store;
