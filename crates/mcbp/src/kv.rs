//! KV messages.
