//! SASL as MCBP speaks it (`mcbp-dcp.md` §4.2): the SCRAM-SHA1/256/512 exchanges
//! (RFC 5802, no channel binding) from both ends, and PLAIN message parsing.
//!
//! Message logic only: no sockets, no runtime, no randomness (callers supply the
//! nonces). The node's session drives [`ScramServer`]; `kv-client` drives
//! [`ScramClient`]. Hashing, HMAC and PBKDF2 come from the RustCrypto crates.

#![warn(missing_docs)]

mod client;
pub mod plain;
mod scram;
mod server;

pub use client::{ScramClient, ScramClientError};
pub use scram::{mech_hash, mech_hmac, salted_password, ScramCredential, ScramMech, ITERATIONS};
pub use server::{ScramError, ScramServer};
