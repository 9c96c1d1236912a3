//! Conduit's storage engine: one node's buckets, their vbuckets, seqnos, failover
//! logs, snapshots and rollback, stored durably in an append-only log per bucket.
//!
//! Synchronous and deterministic: no tokio, no clock, no OS randomness unless asked
//! for. Every operation that needs time takes a [`UnixTime`]; vb_uuids come from a
//! seedable `StdRng` owned by the bucket ([`BucketConfig::rng_seed`]). It is not a
//! network server and knows nothing of frames beyond [`EngineError::status`].
//!
//! # Design
//!
//! * **Storage layout.** One append-only log file per bucket (`<data_dir>/<name>.clog`):
//!   buckets flush independently, deleting a bucket is deleting a file, and quotas and
//!   clean-shutdown markers are naturally per bucket. A flush appends item versions,
//!   removals of overwritten or purged versions, rollback truncations and vbucket
//!   records (state, high/purge seqno, snapshot range, failover log), then a COMMIT
//!   record carrying the highest CAS and the clean-shutdown flag, and syncs. Every
//!   record has a length and a CRC; replay applies a commit only when its COMMIT
//!   record is intact, so a torn tail is cut off at the last commit. The log is
//!   rewritten from memory (compacted) once it exceeds twice the bucket's memory
//!   use. See `logstore` for the format.
//! * **Memory.** Every current version (live items and tombstones) is held in memory,
//!   indexed by key and by seqno; the log is the durable copy, read only on open. The
//!   quota therefore covers all items: key + value + a fixed [`ITEM_OVERHEAD`] per
//!   version. Writes that would exceed it fail with [`EngineError::NoMemory`];
//!   deletions, expirations and replica tombstones are always accepted so a full
//!   bucket can shrink.
//! * **CAS.** A hybrid logical clock per bucket: `max(last + 1, now in ns)`. Unique and
//!   increasing even when the caller's clock stalls or steps back; CASes received over
//!   DCP advance it, and the highest CAS is persisted with every flush so a restart
//!   never goes backwards.
//! * **Durability.** Mutations are acknowledged once applied in memory (like
//!   kv_engine); [`Bucket::flush_step`] appends the dirty state of whole vbuckets, up
//!   to a bound, as one commit (group commit) and then advances their persisted
//!   seqnos; [`Bucket::flush`] repeats it until nothing is dirty. Items not flushed before
//!   a crash are lost, and reopening after a crash (no clean-shutdown marker from
//!   [`Bucket::close`]) adds a failover entry to every vbucket that has a log.
//! * **Rollback.** Each stored version records the oldest seqno of its key's
//!   unbroken history. Rolling back to `to` is exact iff no version above `to` has
//!   history at or below `to` and no tombstone above `to` was purged; otherwise the
//!   vbucket is reset to empty ([`RollbackOutcome::ResetToZero`]), which is always
//!   correct because the producer then resends everything.
//! * **Concurrency.** [`Bucket`] is `Send + Sync`; each vbucket has its own
//!   `std::sync::Mutex` held only for in-memory work. See [`Bucket`].

#![warn(missing_docs)]

mod bucket;
mod error;
mod failover;
mod item;
mod key_index;
mod logstore;
mod ops;
mod seqno_index;
mod store;
mod stored;
mod vbucket;

pub use bucket::{
    Bucket, BucketConfig, CommitHook, DEFAULT_COMPACT_FLOOR_BYTES, DEFAULT_FLUSH_BATCH_ITEMS,
    DEFAULT_MAX_ITEM_SIZE, DEFAULT_NUM_VBUCKETS, DEFAULT_QUOTA_BYTES,
};
pub use error::{EngineError, Result};
pub use failover::{
    decide_rollback, FailoverEntry, FailoverLog, RollbackDecision, StreamStart,
    MAX_FAILOVER_ENTRIES,
};
pub use item::{
    absolute_expiry, DeleteSource, Item, UnixTime, DATATYPE_JSON, ITEM_OVERHEAD,
    RELATIVE_EXPIRY_LIMIT,
};
pub use ops::{
    ArithOp, Backfill, BucketStats, ConcatOp, Counter, Document, FlushStats, MutationInfo,
    RollbackOutcome, StoreOp, StreamRequestPosition, VbStats,
};
pub use vbucket::MAX_KEY_LEN;
