//! The cluster manager's pieces (cluster.md §2, §4): vbucket map generation and the
//! metadata store seam.
//!
//! [`map`] is a pure core: no I/O, no clock, no global randomness; the caller passes the
//! seed. [`store`] is the seam behind which everything the cluster must remember lives,
//! with its embedded default (one redb file) and an in-memory double for tests.
//! [`agent`] is the node agent (§2.6) and the client the orchestrator calls it with.
//! The orchestrator actor, REST routes, janitor and rebalance are not built yet.

#![warn(missing_docs)]

pub mod agent;
pub mod map;
pub mod store;
