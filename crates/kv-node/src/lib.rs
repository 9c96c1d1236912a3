//! Conduit's data node: buckets split into vbuckets, served over MCBP, with a DCP
//! producer and consumer. Storage is `kv-engine`; this crate is the network shell,
//! sessions, authentication and the admin API.

#![warn(missing_docs)]

pub mod scram;
pub mod users;
