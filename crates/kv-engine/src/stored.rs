//! A version as the engine keeps it in memory: metadata, key and value in one
//! reference-counted allocation, shared by the key index, the seqno index and flush
//! batches.
//!
//! An [`Item`] (key and value as `Bytes`) is what crosses the engine's API. Kept as
//! an `Item`, a version held its metadata in one allocation and its key and value as
//! slices of the frame they arrived in, so the whole frame (header, extras and the
//! read buffer around it) stayed alive as long as the version did. A [`Stored`]
//! copies key and value once, at the write, into an allocation of exactly
//! `72 + key + value` bytes behind a one-word pointer; reads hand out `Bytes` that
//! share it ([`Stored::to_item`]).
//!
//! The version also keeps its key's hash (in what would otherwise be padding), so
//! the key index can grow without hashing keys again and compares hashes before
//! keys, while its entries stay one pointer each.

use std::sync::OnceLock;

use bytes::Bytes;
use mcbp::{Cas, Seqno};
use triomphe::ThinArc;

use crate::item::{self, DeleteSource, Item, UnixTime};

/// The hash of a key as the key index uses it. Keys come from clients, so the
/// hasher must resist flooding: aHash, randomly keyed once per process (several
/// times faster than SipHash on short keys).
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    static HASHER: OnceLock<ahash::RandomState> = OnceLock::new();
    #[cfg(test)]
    hash_count::bump();
    HASHER.get_or_init(ahash::RandomState::new).hash_one(key)
}

/// How many keys this thread has hashed: tests hold the write paths to one hash
/// per write.
#[cfg(test)]
pub(crate) mod hash_count {
    use std::cell::Cell;

    thread_local!(static HASHES: Cell<u64> = const { Cell::new(0) });

    pub(super) fn bump() {
        HASHES.with(|h| h.set(h.get() + 1));
    }

    /// Keys hashed on this thread so far.
    pub(crate) fn get() -> u64 {
        HASHES.with(Cell::get)
    }
}

/// Everything of a version but its key and value: 56 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Meta {
    cas: Cas,
    rev_seqno: u64,
    by_seqno: Seqno,
    origin: Seqno,
    key_hash: u64,
    flags: u32,
    expiry: u32,
    delete_time: u32,
    key_len: u16,
    datatype: u8,
    /// `Some` for a tombstone, with why it exists (a live version's source is
    /// always [`DeleteSource::Explicit`]).
    tombstone: Option<DeleteSource>,
}

/// One stored version plus the bookkeeping rollback needs; cloning shares it.
#[derive(Clone)]
pub(crate) struct Stored(ThinArc<Meta, u8>);

impl Stored {
    /// Copies `item` into a new version. `origin` is the seqno of the oldest version
    /// of this key since the key was last absent from the store: a rollback to `to`
    /// is exact only if every version above `to` has `origin > to` (otherwise an
    /// older version was overwritten and is gone). `scratch` is reused between calls
    /// to join key and value.
    #[cfg(test)]
    pub(crate) fn new(item: &Item, origin: Seqno, scratch: &mut Vec<u8>) -> Stored {
        Stored::with_hash(item, origin, key_hash(&item.key), scratch)
    }

    /// [`Stored::new`] for a write that already hashed the key (its key-table
    /// lookup did): `hash` must be [`key_hash`] of `item.key`.
    pub(crate) fn with_hash(
        item: &Item,
        origin: Seqno,
        hash: u64,
        scratch: &mut Vec<u8>,
    ) -> Stored {
        scratch.clear();
        scratch.extend_from_slice(&item.key);
        scratch.extend_from_slice(&item.value);
        let fields = RecordFields {
            cas: item.cas,
            rev_seqno: item.rev_seqno,
            by_seqno: item.by_seqno,
            origin,
            flags: item.flags,
            expiry: item.expiry,
            delete_time: item.delete_time,
            datatype: item.datatype,
            deleted: item.deleted,
            delete_source: item.delete_source,
        };
        // Keys are checked against MAX_KEY_LEN before they get here.
        Stored::from_parts(fields, hash, item.key.len(), scratch)
            .expect("a checked key fits its version")
    }

    /// A version decoded from a log record: `key_value` is the key followed by the
    /// value, `key_len` bytes of key. `None` if the key does not fit.
    pub(crate) fn from_record(
        fields: RecordFields,
        key_len: usize,
        key_value: &[u8],
    ) -> Option<Stored> {
        let key = key_value.get(..key_len)?;
        Stored::from_parts(fields, key_hash(key), key_len, key_value)
    }

    /// The version of `key_value`, whose first `key_len` bytes are the key (both
    /// callers make sure they are there) and whose key hashes to `key_hash`.
    fn from_parts(
        fields: RecordFields,
        key_hash: u64,
        key_len: usize,
        key_value: &[u8],
    ) -> Option<Stored> {
        let meta = Meta {
            cas: fields.cas,
            rev_seqno: fields.rev_seqno,
            by_seqno: fields.by_seqno,
            origin: fields.origin,
            flags: fields.flags,
            expiry: fields.expiry,
            delete_time: fields.delete_time,
            key_hash,
            key_len: u16::try_from(key_len).ok()?,
            datatype: fields.datatype,
            tombstone: fields.deleted.then_some(fields.delete_source),
        };
        Some(Stored(ThinArc::from_header_and_slice(meta, key_value)))
    }

    fn meta(&self) -> &Meta {
        &self.0.header.header
    }

    fn key_len(&self) -> usize {
        // key_len <= the slice's length by construction.
        usize::from(self.meta().key_len).min(self.0.slice.len())
    }

    pub(crate) fn key(&self) -> &[u8] {
        &self.0.slice[..self.key_len()]
    }

    pub(crate) fn value(&self) -> &[u8] {
        &self.0.slice[self.key_len()..]
    }

    /// The key followed by the value, as one slice.
    pub(crate) fn key_value(&self) -> &[u8] {
        &self.0.slice
    }

    /// [`key_hash`] of the key, computed once.
    pub(crate) fn key_hash(&self) -> u64 {
        self.meta().key_hash
    }

    pub(crate) fn cas(&self) -> Cas {
        self.meta().cas
    }

    pub(crate) fn rev_seqno(&self) -> u64 {
        self.meta().rev_seqno
    }

    pub(crate) fn by_seqno(&self) -> Seqno {
        self.meta().by_seqno
    }

    pub(crate) fn origin(&self) -> Seqno {
        self.meta().origin
    }

    pub(crate) fn flags(&self) -> u32 {
        self.meta().flags
    }

    pub(crate) fn expiry(&self) -> u32 {
        self.meta().expiry
    }

    pub(crate) fn delete_time(&self) -> u32 {
        self.meta().delete_time
    }

    pub(crate) fn datatype(&self) -> u8 {
        self.meta().datatype
    }

    pub(crate) fn deleted(&self) -> bool {
        self.meta().tombstone.is_some()
    }

    pub(crate) fn delete_source(&self) -> DeleteSource {
        self.meta().tombstone.unwrap_or_default()
    }

    /// As [`Item::is_expired`].
    pub(crate) fn is_expired(&self, now: UnixTime) -> bool {
        item::expired(self.deleted(), self.expiry(), now)
    }

    /// As [`Item::is_visible`].
    pub(crate) fn is_visible(&self, now: UnixTime) -> bool {
        !self.deleted() && !self.is_expired(now)
    }

    /// As [`Item::mem_size`]: the quota charge.
    pub(crate) fn mem_size(&self) -> u64 {
        item::mem_size(self.0.slice.len())
    }

    /// The same version (not merely an equal one).
    pub(crate) fn ptr_eq(&self, other: &Stored) -> bool {
        self.0.ptr() == other.0.ptr()
    }

    /// Whether nothing else holds this version.
    #[cfg(test)]
    pub(crate) fn is_unique(&self) -> bool {
        self.0.with_arc(triomphe::Arc::is_unique)
    }

    /// The version as the API hands it out; key and value share this allocation.
    pub(crate) fn to_item(&self) -> Item {
        let key_len = self.key_len();
        let whole = Bytes::from_owner(Shared(self.clone()));
        self.item_with(whole.slice(..key_len), whole.slice(key_len..))
    }

    /// The version as an [`Item`] whose key and value are `key` and `value` (equal
    /// to this version's, held elsewhere).
    pub(crate) fn item_with(&self, key: Bytes, value: Bytes) -> Item {
        debug_assert!(key == self.key() && value == self.value());
        let m = *self.meta();
        Item {
            key,
            value,
            cas: m.cas,
            flags: m.flags,
            expiry: m.expiry,
            datatype: m.datatype,
            rev_seqno: m.rev_seqno,
            by_seqno: m.by_seqno,
            deleted: m.tombstone.is_some(),
            delete_source: m.tombstone.unwrap_or_default(),
            delete_time: m.delete_time,
        }
    }
}

/// A version's key and value as one byte string, to back `Bytes`.
struct Shared(Stored);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0 .0.slice
    }
}

/// The metadata of a version as a log record (or an [`Item`]) carries it, for
/// [`Stored::from_record`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordFields {
    pub(crate) cas: Cas,
    pub(crate) rev_seqno: u64,
    pub(crate) by_seqno: Seqno,
    pub(crate) origin: Seqno,
    pub(crate) flags: u32,
    pub(crate) expiry: u32,
    pub(crate) delete_time: u32,
    pub(crate) datatype: u8,
    pub(crate) deleted: bool,
    pub(crate) delete_source: DeleteSource,
}

impl PartialEq for Stored {
    fn eq(&self, other: &Stored) -> bool {
        self.meta() == other.meta() && self.0.slice == other.0.slice
    }
}

impl Eq for Stored {}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field("meta", self.meta())
            .field("key", &Bytes::copy_from_slice(self.key()))
            .field("value_len", &self.value().len())
            .finish()
    }
}

/// A live version of `key` at `seqno` with an empty value (tests of the indexes).
#[cfg(test)]
pub(crate) fn test_version(key: &[u8], seqno: u64) -> Stored {
    let item = crate::item::test_item(key, b"", seqno);
    Stored::new(&item, Seqno(seqno), &mut Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &'static [u8], value: &'static [u8]) -> Item {
        Item {
            key: Bytes::from_static(key),
            value: Bytes::from_static(value),
            cas: Cas(7),
            flags: 0x0200_0000,
            expiry: 1_800_000_000,
            datatype: 1,
            rev_seqno: 3,
            by_seqno: Seqno(42),
            deleted: false,
            delete_source: DeleteSource::Explicit,
            delete_time: 0,
        }
    }

    #[test]
    fn a_version_gives_back_the_item_it_was_made_of() {
        let mut scratch = b"left over from an earlier write".to_vec();
        for (k, v) in [(&b"key"[..], &b"{\"a\":1}"[..]), (b"k", b""), (b"", b"v")] {
            let it = item(k, v);
            let s = Stored::new(&it, Seqno(5), &mut scratch);
            assert_eq!(s.to_item(), it);
            assert_eq!((s.key(), s.value()), (k, v));
            assert_eq!(s.origin(), Seqno(5));
            assert_eq!(s.mem_size(), it.mem_size());
        }
    }

    #[test]
    fn metadata_fits_in_56_bytes_and_tombstones_keep_their_source() {
        // 8 (count) + 56 + 8 (length) before the key: one allocation of 72 + key +
        // value bytes, with the key's hash in the first cache line.
        assert_eq!(std::mem::size_of::<Meta>(), 56);
        let mut it = item(b"k", b"");
        it.deleted = true;
        it.delete_source = DeleteSource::Expired;
        let s = Stored::new(&it, Seqno(1), &mut Vec::new());
        assert!(s.deleted());
        assert_eq!(s.delete_source(), DeleteSource::Expired);
        assert_eq!(s.to_item(), it);
        assert_eq!(s.key_hash(), key_hash(b"k"));
    }

    #[test]
    fn handed_out_bytes_outlive_the_indexes_hold() {
        let s = Stored::new(&item(b"key", b"value"), Seqno(1), &mut Vec::new());
        let out = s.to_item();
        assert!(!s.is_unique(), "the handed-out bytes share the version");
        drop(s);
        assert_eq!((&out.key[..], &out.value[..]), (&b"key"[..], &b"value"[..]));
    }

    #[test]
    fn clones_are_the_same_version_and_equal_copies_are_not() {
        let it = item(b"key", b"value");
        let a = Stored::new(&it, Seqno(1), &mut Vec::new());
        let b = Stored::new(&it, Seqno(1), &mut Vec::new());
        assert!(a.ptr_eq(&a.clone()));
        assert!(!a.ptr_eq(&b));
        assert_eq!(a, b);
        assert_ne!(a, Stored::new(&it, Seqno(2), &mut Vec::new()));
    }

    #[test]
    fn expiry_and_visibility_follow_the_item_rules() {
        let now = UnixTime::from_secs(1_800_000_000);
        let mut it = item(b"k", b"v");
        for (expiry, deleted) in [
            (0, false),
            (1_800_000_000, false),
            (1_900_000_000, false),
            (0, true),
        ] {
            it.expiry = expiry;
            it.deleted = deleted;
            let s = Stored::new(&it, Seqno(1), &mut Vec::new());
            assert_eq!(s.is_expired(now), it.is_expired(now), "{expiry} {deleted}");
            assert_eq!(s.is_visible(now), it.is_visible(now), "{expiry} {deleted}");
        }
    }
}
