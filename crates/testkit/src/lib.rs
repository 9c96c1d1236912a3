//! Test-only helpers shared by Conduit's crates.
//!
//! Placeholder: this crate is built out by issue #2; it holds no code yet.

#![warn(missing_docs)]
