//! Conduit's data node: buckets split into vbuckets, served over MCBP, with a DCP
//! producer and consumer. Storage is `kv-engine`; this crate is the network shell:
//! sessions, authentication, the admin API and background tasks.
//!
//! Start one with [`Node::start`] (binds the configured ports) or
//! [`Node::start_with_listeners`] (tests bind `127.0.0.1:0` themselves).

#![warn(missing_docs)]

mod admin;
pub mod cluster;
pub mod config;
mod dcp;
mod dcp_registry;
pub mod faults;
pub mod node;
mod session;
mod state;
mod stats;
pub mod users;
mod xattr;

/// The SCRAM server exchange and credentials, from the `sasl` crate (kept under
/// this name for existing callers).
pub use sasl as scram;

pub use config::{AdminExtension, BucketUserConfig, ConfigError, DcpConfig, NodeConfig};
pub use node::Node;
pub use state::{BucketEntry, BucketMeta, NodeCounters, NodeError, NodeState};
