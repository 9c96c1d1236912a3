//! Conduit's DCP replication layer: proxy pair, replicators, replication manager.
//!
//! Placeholder: this crate is built out by issue #5; it holds no code yet.

#![warn(missing_docs)]
