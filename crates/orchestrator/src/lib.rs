//! The cluster manager (cluster.md): every node runs the [`agent`] beside its data
//! node; the node where the cluster was initialised also runs the [`orch`]estrator,
//! which keeps everything it must remember in the [`store`] and serves the REST
//! routes of [`http`].
//!
//! Pure cores (no I/O, no clock, no global randomness; seeds are inputs): [`map`]
//! (vbucket map generation), [`janitor`] (chain rules and apply phases), [`config`]
//! (the client map JSON), [`rest`] (request parameters and error answers), [`schedule`]
//! (which rebalance moves start when), [`progress`] (rebalance progress) and [`retry`]
//! (the pending automatic retry).

#![warn(missing_docs)]

pub mod agent;
pub mod autofailover;
pub mod config;
pub mod failover;
pub mod http;
pub mod janitor;
pub mod map;
pub mod orch;
pub mod progress;
/// The REST surface (cluster.md §3): request parameters, validation and the error answer.
pub mod rest;
pub mod retry;
pub mod schedule;
pub mod store;
