//! Conduit's data node: listener, sessions, KV dispatch, DCP producer and consumer.
//!
//! Placeholder: this crate is built out by issue #3; it holds no code yet.

#![warn(missing_docs)]
