//! An async MCBP client for Conduit's tools, tests and the replication layer's
//! connection set-up: connect, SASL (PLAIN and SCRAM), HELLO, SELECT_BUCKET,
//! DCP_OPEN, vbucket state, stats and a few KV commands.
//!
//! One request at a time; every wait on the peer is bounded by the configured
//! timeout, and every error names the peer. After set-up a connection can be taken
//! apart with [`Client::into_parts`] so a proxy can splice the socket.

#![warn(missing_docs)]

mod client;
mod error;

pub use client::{Client, ClientConfig, Credentials};
pub use error::ClientError;
/// The SCRAM client exchange and mechanisms, from the `sasl` crate (kept under
/// this name for existing callers).
pub use sasl as scram;
