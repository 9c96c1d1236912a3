//! Vbucket moves and rebalance: a pure plan and an async executor.
//!
//! Placeholder: this crate is built out by issue #5; it holds no code yet.

#![warn(missing_docs)]
