//! Typed engine failures. Each names the vbucket it concerns, when it has one.

use mcbp::{Seqno, Status, VbState, Vbid};

/// Shorthand for results of engine operations.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The vbucket does not exist on this bucket, or its state forbids the operation.
    #[error("{vb}: not my vbucket (state {})", state.map_or("missing", VbState::as_str))]
    NotMyVbucket {
        /// The vbucket.
        vb: Vbid,
        /// Its current state; `None` when the id is beyond the bucket's vbucket count.
        state: Option<VbState>,
    },
    /// No visible document with that key.
    #[error("{vb}: key not found")]
    KeyNotFound {
        /// The vbucket.
        vb: Vbid,
    },
    /// ADD of an existing key, or a CAS mismatch.
    #[error("{vb}: key exists or cas mismatch")]
    KeyExists {
        /// The vbucket.
        vb: Vbid,
    },
    /// APPEND/PREPEND of a missing key.
    #[error("{vb}: not stored")]
    NotStored {
        /// The vbucket.
        vb: Vbid,
    },
    /// INCR/DECR on a value that is not an ASCII u64.
    #[error("{vb}: counter value is not an ascii u64")]
    DeltaBadval {
        /// The vbucket.
        vb: Vbid,
    },
    /// The value exceeds the bucket's item size limit.
    #[error("{vb}: value of {len} bytes exceeds the {max}-byte item limit")]
    TooBig {
        /// The vbucket.
        vb: Vbid,
        /// Value length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// Empty key or key longer than 250 bytes.
    #[error("{vb}: invalid key length {len}")]
    InvalidKey {
        /// The vbucket.
        vb: Vbid,
        /// Key length.
        len: usize,
    },
    /// The write would take the bucket over its memory quota.
    #[error("{vb}: memory quota of {quota} bytes exhausted ({used} used, {needed} more needed)")]
    NoMemory {
        /// The vbucket written to.
        vb: Vbid,
        /// Bytes in use.
        used: u64,
        /// Extra bytes the write needed.
        needed: u64,
        /// The bucket quota.
        quota: u64,
    },
    /// A DCP mutation/deletion/marker at or below what the replica already holds.
    #[error("{vb}: {seqno} out of range (high {high})")]
    Range {
        /// The vbucket.
        vb: Vbid,
        /// The offending seqno.
        seqno: Seqno,
        /// The vbucket's high seqno.
        high: Seqno,
    },
    /// A snapshot marker whose start lies after its end.
    #[error("{vb}: snapshot marker start {start} after end {end}")]
    InvalidSnapshot {
        /// The vbucket.
        vb: Vbid,
        /// Marker start.
        start: Seqno,
        /// Marker end.
        end: Seqno,
    },
    /// The bucket configuration is unusable (or disagrees with the database on disk).
    #[error("bucket {bucket}: invalid config: {reason}")]
    InvalidConfig {
        /// Bucket name.
        bucket: String,
        /// What is wrong.
        reason: String,
    },
    /// The database holds bytes this engine cannot decode.
    #[error("bucket {bucket}: corrupt {what}")]
    Corrupt {
        /// Bucket name.
        bucket: String,
        /// Which record.
        what: String,
    },
    /// Reading or writing the bucket's log failed.
    #[error("bucket {bucket}: storage failed during {during}")]
    Storage {
        /// Bucket name.
        bucket: String,
        /// The step that failed.
        during: &'static str,
        /// The i/o error.
        #[source]
        source: std::io::Error,
    },
    /// Creating the data directory failed.
    #[error("bucket {bucket}: cannot create data dir")]
    Io {
        /// Bucket name.
        bucket: String,
        /// The i/o error.
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    /// The vbucket the failure concerns, if any.
    #[must_use]
    pub fn vbucket(&self) -> Option<Vbid> {
        match self {
            EngineError::NotMyVbucket { vb, .. }
            | EngineError::KeyNotFound { vb }
            | EngineError::KeyExists { vb }
            | EngineError::NotStored { vb }
            | EngineError::DeltaBadval { vb }
            | EngineError::TooBig { vb, .. }
            | EngineError::InvalidKey { vb, .. }
            | EngineError::NoMemory { vb, .. }
            | EngineError::Range { vb, .. }
            | EngineError::InvalidSnapshot { vb, .. } => Some(*vb),
            EngineError::InvalidConfig { .. }
            | EngineError::Corrupt { .. }
            | EngineError::Storage { .. }
            | EngineError::Io { .. } => None,
        }
    }

    /// The MCBP status a node answers with.
    ///
    /// A quota refusal maps to ETMPFAIL: clients retry it, and memory frees up as
    /// documents are deleted or tombstones purged.
    #[must_use]
    pub fn status(&self) -> Status {
        match self {
            EngineError::NotMyVbucket { .. } => Status::NotMyVbucket,
            EngineError::KeyNotFound { .. } => Status::KeyEnoent,
            EngineError::KeyExists { .. } => Status::KeyEexists,
            EngineError::NotStored { .. } => Status::NotStored,
            EngineError::DeltaBadval { .. } => Status::DeltaBadval,
            EngineError::TooBig { .. } => Status::E2big,
            EngineError::InvalidKey { .. } | EngineError::InvalidSnapshot { .. } => Status::Einval,
            EngineError::NoMemory { .. } => Status::Etmpfail,
            EngineError::Range { .. } => Status::Erange,
            EngineError::InvalidConfig { .. }
            | EngineError::Corrupt { .. }
            | EngineError::Storage { .. }
            | EngineError::Io { .. } => Status::Einternal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_vbucket_and_map_to_statuses() {
        let e = EngineError::NotMyVbucket {
            vb: Vbid(7),
            state: Some(VbState::Replica),
        };
        assert_eq!(e.to_string(), "vb:7: not my vbucket (state replica)");
        assert_eq!(e.vbucket(), Some(Vbid(7)));
        assert_eq!(e.status(), Status::NotMyVbucket);
        let e = EngineError::Range {
            vb: Vbid(1),
            seqno: Seqno(3),
            high: Seqno(5),
        };
        assert_eq!(e.status(), Status::Erange);
        assert_eq!(e.to_string(), "vb:1: seqno:3 out of range (high seqno:5)");
    }
}
