//! Async MCBP client: auth, HELLO, select bucket, vbucket state, DCP open, stats.
//!
//! Placeholder: this crate is built out by issue #5; it holds no code yet.

#![warn(missing_docs)]
