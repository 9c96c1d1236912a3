//! Request and result types of the front-end and DCP operations.

use bytes::Bytes;
use mcbp::{Cas, Seqno, VbState, VbUuid};

/// Which store command (SET/ADD/REPLACE, `mcbp-dcp.md` §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreOp {
    /// Store unconditionally (or only over `cas` when non-zero).
    Set,
    /// Store only if no visible document has the key.
    Add,
    /// Store only if a visible document has the key (and `cas` matches when non-zero).
    Replace,
}

/// APPEND or PREPEND.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConcatOp {
    /// Add bytes after the value.
    Append,
    /// Add bytes before the value.
    Prepend,
}

/// INCR or DECR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArithOp {
    /// Add `delta`, wrapping at 2^64 (memcached).
    Incr,
    /// Subtract `delta`, stopping at 0 (memcached).
    Decr,
}

/// The document half of a store command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// Key.
    pub key: Bytes,
    /// Value.
    pub value: Bytes,
    /// User flags, stored and returned unchanged.
    pub flags: u32,
    /// Expiry as sent on the wire (see [`crate::absolute_expiry`]).
    pub expiry: u32,
    /// Datatype bits.
    pub datatype: u8,
}

/// INCR/DECR extras (`mcbp-dcp.md` §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter {
    /// Amount to add or subtract.
    pub delta: u64,
    /// Value stored when the key is missing (the delta is not applied to it).
    pub initial: u64,
    /// Expiry as sent on the wire; [`Counter::NO_CREATE`] fails a missing key.
    pub expiry: u32,
}

impl Counter {
    /// The expiry value meaning "fail with KEY_ENOENT if the key is missing".
    pub const NO_CREATE: u32 = 0xffff_ffff;
}

/// What a successful mutation returns (the MUTATION_SEQNO extras plus the CAS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MutationInfo {
    /// The new document version.
    pub cas: Cas,
    /// The vbucket seqno assigned to the mutation.
    pub seqno: Seqno,
    /// The vbucket's current vb_uuid (newest failover entry).
    pub vb_uuid: VbUuid,
}

/// How a replica rollback ended (`mcbp-dcp.md` §7.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum RollbackOutcome {
    /// Everything above this seqno was discarded; it is the new high seqno.
    To(Seqno),
    /// The requested point could not be reached exactly; the vbucket is now empty.
    ResetToZero,
}

impl RollbackOutcome {
    /// The vbucket's high seqno after the rollback.
    #[must_use]
    pub fn high_seqno(self) -> Seqno {
        match self {
            RollbackOutcome::To(s) => s,
            RollbackOutcome::ResetToZero => Seqno(0),
        }
    }
}

/// What a consumer puts in its stream request (`mcbp-dcp.md` §7.2 step 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamRequestPosition {
    /// The vbucket's high seqno.
    pub start: Seqno,
    /// Newest failover uuid, or 0 when `start` is 0.
    pub vb_uuid: VbUuid,
    /// Start of the snapshot the replica is inside (or `start`).
    pub snap_start: Seqno,
    /// End of the snapshot the replica is inside (or `start`).
    pub snap_end: Seqno,
}

/// A consistent read of a vbucket's items for a DCP backfill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backfill {
    /// Items and tombstones with seqno above the start, ascending, at most the limit.
    pub items: Vec<crate::Item>,
    /// The vbucket's high seqno at the moment of the read.
    pub high_seqno: Seqno,
    /// The vbucket's purge seqno at the moment of the read.
    pub purge_seqno: Seqno,
    /// Whether `items` reaches the high seqno (no limit cut it short).
    pub complete: bool,
}

/// Per-vbucket statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VbStats {
    /// State.
    pub state: VbState,
    /// Highest seqno assigned or received.
    pub high_seqno: Seqno,
    /// Highest seqno durably written.
    pub persisted_seqno: Seqno,
    /// Highest seqno of a purged tombstone.
    pub purge_seqno: Seqno,
    /// Newest failover entry's uuid (0 when the log is empty).
    pub vb_uuid: VbUuid,
    /// Live (non-deleted) items, expired-but-not-yet-paged ones included.
    pub items: u64,
    /// Tombstones at or below the persisted seqno (`on_disk_deletes`, §7.10).
    pub persisted_tombstones: u64,
    /// All tombstones held.
    pub tombstones: u64,
    /// Approximate bytes held for this vbucket.
    pub mem_used: u64,
}

/// Per-bucket statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketStats {
    /// Live items over all vbuckets.
    pub items: u64,
    /// Approximate bytes held.
    pub mem_used: u64,
    /// The memory quota.
    pub quota: u64,
    /// DCP items (mutations, deletions, expirations) a consumer applied since the
    /// bucket was opened: what replication streamed into this node.
    pub dcp_items_applied: u64,
}

/// What one flush wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlushStats {
    /// vbuckets with dirty state.
    pub vbuckets: usize,
    /// Item versions written.
    pub items_written: usize,
    /// Item versions removed from disk (overwritten, purged or rolled back).
    pub items_removed: usize,
    /// A bounded step stopped at its batch bound before visiting every vbucket:
    /// more may be dirty, flush again without waiting.
    pub more: bool,
}
