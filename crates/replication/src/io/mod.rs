//! The tokio shell around [`crate::core`]: connection set-up of a half
//! ([`connect`]) and the proxy pair's socket tasks ([`proxy`]). The replicator
//! actor that owns the core lives in [`crate::replicator`].

pub mod connect;
pub mod proxy;

pub use connect::{
    connect_half, open_flags, open_value, requested_features, Connected, HalfConfig,
};
pub use proxy::{Liveness, ProxyConfig};
