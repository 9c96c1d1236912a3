//! Sample frames shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

pub mod dcp_samples;
pub mod kv_samples;
