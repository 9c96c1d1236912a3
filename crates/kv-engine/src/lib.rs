//! Conduit's storage engine: vbuckets, seqnos, failover logs, rollback. Sync; the caller supplies time.
//!
//! Placeholder: this crate is built out by issue #3; it holds no code yet.

#![warn(missing_docs)]
