//! Documents as the engine stores them, and the caller-supplied clock.

use bytes::Bytes;
use mcbp::{Cas, Seqno};

/// Wire expiry values up to this many seconds (30 days) are relative to now; larger
/// values are absolute unix seconds (memcached rule).
pub const RELATIVE_EXPIRY_LIMIT: u32 = 30 * 24 * 60 * 60;

/// The datatype bit for JSON (`mcbp-dcp.md` §1.6).
pub const DATATYPE_JSON: u8 = 0x01;

/// Wall-clock time supplied by the caller: nanoseconds since the unix epoch.
///
/// The engine never reads a clock; every operation that needs time takes one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixTime {
    nanos: u64,
}

impl UnixTime {
    /// A time `nanos` nanoseconds after the unix epoch.
    #[must_use]
    pub fn from_nanos(nanos: u64) -> UnixTime {
        UnixTime { nanos }
    }

    /// A time `secs` seconds after the unix epoch (saturating).
    #[must_use]
    pub fn from_secs(secs: u64) -> UnixTime {
        UnixTime {
            nanos: secs.saturating_mul(1_000_000_000),
        }
    }

    /// Converts a `SystemTime`; times before the epoch become the epoch.
    #[must_use]
    pub fn from_system_time(t: std::time::SystemTime) -> UnixTime {
        let nanos = t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        UnixTime { nanos }
    }

    /// Nanoseconds since the epoch.
    #[must_use]
    pub fn nanos(self) -> u64 {
        self.nanos
    }

    /// Whole seconds since the epoch.
    #[must_use]
    pub fn secs(self) -> u64 {
        self.nanos / 1_000_000_000
    }

    /// Whole seconds since the epoch as the u32 the protocol uses (saturating).
    #[must_use]
    pub fn secs_u32(self) -> u32 {
        u32::try_from(self.secs()).unwrap_or(u32::MAX)
    }
}

/// Converts an expiry as sent on the wire to absolute unix seconds (0 = never).
///
/// memcached rule: 0 means no expiry, values up to [`RELATIVE_EXPIRY_LIMIT`] are
/// relative to `now`, larger values are already absolute. An absolute time in the
/// past yields an item that is expired at once.
#[must_use]
pub fn absolute_expiry(wire: u32, now: UnixTime) -> u32 {
    match wire {
        0 => 0,
        rel if rel <= RELATIVE_EXPIRY_LIMIT => {
            let abs = now.secs().saturating_add(u64::from(rel));
            u32::try_from(abs).unwrap_or(u32::MAX)
        }
        abs => abs,
    }
}

/// Why a tombstone exists: DCP streams them as DELETION or EXPIRATION (§6.10, §6.11).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum DeleteSource {
    /// DELETE from a client, or a DCP deletion.
    #[default]
    Explicit,
    /// The expiry pager (or a DCP expiration).
    Expired,
}

/// One version of a document: a live item or a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// Document key (with the collection prefix if the caller uses collections).
    pub key: Bytes,
    /// Document body; empty (or xattrs only) for tombstones.
    pub value: Bytes,
    /// Document version.
    pub cas: Cas,
    /// User flags, stored and returned unchanged.
    pub flags: u32,
    /// Absolute expiry in unix seconds, 0 = never.
    pub expiry: u32,
    /// Datatype bits (§1.6).
    pub datatype: u8,
    /// Revision seqno: how many times the key was mutated.
    pub rev_seqno: u64,
    /// The vbucket seqno of this version.
    pub by_seqno: Seqno,
    /// Whether this is a tombstone.
    pub deleted: bool,
    /// Why the tombstone exists; meaningful only when `deleted`.
    pub delete_source: DeleteSource,
    /// When the tombstone was created (unix seconds); 0 for live items.
    pub delete_time: u32,
}

impl Item {
    /// Whether a live item has expired at `now` (tombstones never expire).
    #[must_use]
    pub fn is_expired(&self, now: UnixTime) -> bool {
        expired(self.deleted, self.expiry, now)
    }

    /// Whether a front-end read at `now` sees this version.
    #[must_use]
    pub fn is_visible(&self, now: UnixTime) -> bool {
        !self.deleted && !self.is_expired(now)
    }

    /// Approximate bytes this version costs in memory (key, value and fixed overhead).
    #[must_use]
    pub fn mem_size(&self) -> u64 {
        mem_size(self.key.len() + self.value.len())
    }
}

/// Whether a version with this expiry has expired at `now` (tombstones never do).
pub(crate) fn expired(deleted: bool, expiry: u32, now: UnixTime) -> bool {
    !deleted && expiry != 0 && u64::from(expiry) <= now.secs()
}

/// The quota charge of a version with `key_value_len` bytes of key and value.
pub(crate) fn mem_size(key_value_len: usize) -> u64 {
    key_value_len as u64 + ITEM_OVERHEAD
}

/// Fixed per-version overhead charged to the memory quota: the item's metadata plus
/// its entries in the key and seqno indexes.
pub const ITEM_OVERHEAD: u64 = 96;

/// A live item of `key` at `seqno` (CAS `seqno`, rev 1, no flags), for tests.
#[cfg(test)]
pub(crate) fn test_item(key: &[u8], value: &[u8], seqno: u64) -> Item {
    Item {
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(value),
        cas: Cas(seqno),
        flags: 0,
        expiry: 0,
        datatype: 0,
        rev_seqno: 1,
        by_seqno: Seqno(seqno),
        deleted: false,
        delete_source: DeleteSource::Explicit,
        delete_time: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_expiry_is_relative_up_to_thirty_days_then_absolute() {
        let now = UnixTime::from_secs(1_700_000_000);
        assert_eq!(absolute_expiry(0, now), 0);
        assert_eq!(absolute_expiry(10, now), 1_700_000_010);
        assert_eq!(
            absolute_expiry(RELATIVE_EXPIRY_LIMIT, now),
            1_700_000_000 + RELATIVE_EXPIRY_LIMIT
        );
        assert_eq!(
            absolute_expiry(RELATIVE_EXPIRY_LIMIT + 1, now),
            RELATIVE_EXPIRY_LIMIT + 1
        );
        assert_eq!(absolute_expiry(1_800_000_000, now), 1_800_000_000);
    }

    #[test]
    fn expiry_at_exactly_now_is_expired_and_tombstones_never_expire() {
        let mut item = Item {
            key: Bytes::from_static(b"k"),
            value: Bytes::new(),
            cas: Cas(1),
            flags: 0,
            expiry: 100,
            datatype: 0,
            rev_seqno: 1,
            by_seqno: Seqno(1),
            deleted: false,
            delete_source: DeleteSource::Explicit,
            delete_time: 0,
        };
        assert!(!item.is_expired(UnixTime::from_secs(99)));
        assert!(item.is_expired(UnixTime::from_secs(100)));
        item.deleted = true;
        assert!(!item.is_expired(UnixTime::from_secs(100)));
        assert!(!item.is_visible(UnixTime::from_secs(1)));
    }
}
