//! One vbucket in memory: its documents (indexed by key and by seqno), seqnos,
//! failover log and the dirty state the next flush must write.
//!
//! Every method runs under the vbucket's mutex; the bucket-wide counters it touches
//! ([`Shared`]) are atomics.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use mcbp::{Cas, Seqno, VbState, Vbid};

use crate::error::{EngineError, Result};
use crate::failover::{FailoverEntry, FailoverLog};
use crate::item::{self, absolute_expiry, DeleteSource, Item, UnixTime, DATATYPE_JSON};
use crate::key_index::{KeyIndex, Slot};
use crate::ops::{
    ArithOp, ConcatOp, Counter, Document, MutationInfo, RollbackOutcome, StoreOp,
    StreamRequestPosition, VbStats,
};
use crate::seqno_index::SeqnoIndex;
use crate::stored::key_hash;
pub(crate) use crate::stored::Stored;

/// Longest accepted key: 250 bytes plus up to 5 bytes of LEB128 collection prefix.
pub const MAX_KEY_LEN: usize = 255;

/// Bytes of keys and values one `items_since` copies into its shared buffer.
const BATCH_COPY_BYTES: usize = 1 << 20;
/// Versions larger than this are never copied by `items_since`.
const COPY_ITEM_MAX: usize = 16 * 1024;

/// Bucket-wide state shared by all vbuckets.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Last CAS handed out or observed (hybrid logical clock, see `next_cas`).
    cas: AtomicU64,
    mem_used: AtomicU64,
    pub(crate) quota: u64,
    pub(crate) max_item_size: usize,
    changes: AtomicU64,
}

impl Shared {
    pub(crate) fn new(quota: u64, max_item_size: usize, max_cas: u64) -> Shared {
        Shared {
            cas: AtomicU64::new(max_cas),
            mem_used: AtomicU64::new(0),
            quota,
            max_item_size,
            changes: AtomicU64::new(0),
        }
    }

    /// Hybrid logical clock: the wall clock in nanoseconds, unless that would not be
    /// above the last CAS, in which case last + 1. Unique and increasing per bucket
    /// even when the caller's clock stalls or steps back.
    fn next_cas(&self, now: UnixTime) -> Cas {
        let mut next = 0;
        self.cas
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                next = last.saturating_add(1).max(now.nanos());
                Some(next)
            })
            .expect("the update closure always returns Some");
        Cas(next)
    }

    /// Lets a CAS received from a producer advance the clock, so that writes after a
    /// promotion to active are newer than everything replicated.
    fn observe_cas(&self, cas: Cas) {
        self.cas.fetch_max(cas.0, Ordering::AcqRel);
    }

    pub(crate) fn max_cas(&self) -> u64 {
        self.cas.load(Ordering::Acquire)
    }

    pub(crate) fn mem_used(&self) -> u64 {
        self.mem_used.load(Ordering::Acquire)
    }

    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    fn bump_changes(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// Takes `bytes` more of the quota; with `enforce` it fails rather than exceed it.
    fn reserve(&self, vb: Vbid, bytes: u64, enforce: bool) -> Result<()> {
        if !enforce {
            self.mem_used.fetch_add(bytes, Ordering::AcqRel);
            return Ok(());
        }
        self.mem_used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|n| *n <= self.quota)
            })
            .map(|_| ())
            .map_err(|used| EngineError::NoMemory {
                vb,
                used,
                needed: bytes,
                quota: self.quota,
            })
    }

    fn release(&self, bytes: u64) {
        // Saturate: accounting is approximate, never let it wrap.
        let _ = self
            .mem_used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }
}

/// The vbucket fields persisted as one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VbMeta {
    pub(crate) state: VbState,
    pub(crate) high_seqno: Seqno,
    pub(crate) purge_seqno: Seqno,
    pub(crate) snap_start: Seqno,
    pub(crate) snap_end: Seqno,
    pub(crate) failover: FailoverLog,
}

/// Dirty state taken from a vbucket by a flush.
#[derive(Debug)]
pub(crate) struct FlushBatch {
    pub(crate) vb: Vbid,
    /// The vbucket's versions above this seqno were unwritten when it was taken.
    pub(crate) dirty_from: Seqno,
    /// Remove every on-disk version above this seqno first (rollback/reset).
    pub(crate) truncate_above: Option<Seqno>,
    pub(crate) deletes: Vec<Seqno>,
    pub(crate) puts: Vec<Stored>,
    pub(crate) meta: VbMeta,
}

/// What a write needs of the key's current version: its rev, its quota charge, the
/// origin of its history (which the new version inherits) and, when the lookup went
/// through the key table, the slot it sits in (so installing the new version does
/// not search the table again).
#[derive(Clone, Copy, Debug)]
struct Prev {
    rev: u64,
    size: u64,
    origin: Seqno,
    slot: Option<Slot>,
}

impl Prev {
    fn of(current: &Stored, slot: Option<Slot>) -> Prev {
        Prev {
            rev: current.rev_seqno(),
            size: current.mem_size(),
            origin: current.origin(),
            slot,
        }
    }
}

/// Where a write puts its new version: the key's hash (computed once, by the
/// write's lookup, and kept in the new version) and what the write needs of the
/// key's current version, if there is one.
#[derive(Clone, Copy, Debug)]
struct Target {
    hash: u64,
    prev: Option<Prev>,
}

impl Target {
    /// The target of a write replacing `current`, found without a key-table lookup.
    fn replacing(current: &Stored) -> Target {
        Target {
            hash: current.key_hash(),
            prev: Some(Prev::of(current, None)),
        }
    }
}

/// The fields of a new version the operation decides; seqno, cas and rev are assigned.
struct NewVersion {
    value: Bytes,
    flags: u32,
    expiry: u32,
    datatype: u8,
    tombstone: Option<(DeleteSource, u32)>,
}

impl NewVersion {
    /// A tombstone keeping the document's flags, deleted at `now`.
    fn tombstone(source: DeleteSource, flags: u32, now: UnixTime) -> NewVersion {
        NewVersion {
            value: Bytes::new(),
            flags,
            expiry: 0,
            datatype: 0,
            tombstone: Some((source, now.secs_u32())),
        }
    }
}

#[derive(Debug)]
pub(crate) struct VBucket {
    pub(crate) id: Vbid,
    pub(crate) state: VbState,
    pub(crate) high_seqno: Seqno,
    pub(crate) persisted_seqno: Seqno,
    pub(crate) purge_seqno: Seqno,
    pub(crate) snap_start: Seqno,
    pub(crate) snap_end: Seqno,
    pub(crate) failover: FailoverLog,
    by_key: KeyIndex,
    /// Joins a new version's key and value before they are copied into it.
    scratch: Vec<u8>,
    /// Exactly one version per key: the current one.
    by_seqno: SeqnoIndex,
    live_items: u64,
    tombstones: u64,
    /// The seqnos of the tombstones, so the purger never walks live items.
    tombstone_seqnos: BTreeSet<Seqno>,
    /// The seqnos of live items with an expiry, so the expiry pager walks only them.
    expiring: BTreeSet<Seqno>,
    mem: u64,
    /// Versions in memory not yet written.
    dirty: Dirty,
    /// Versions removed from memory that may be on disk.
    disk_deletes: Vec<Seqno>,
    truncate_above: Option<Seqno>,
    meta_dirty: bool,
    /// The end of the disk snapshot the key table was sized for, until it arrives.
    presized_until: Option<Seqno>,
}

/// Versions in memory not yet written. A flush takes a vbucket's dirty state whole
/// and every new version gets a seqno above all others, so the unwritten versions
/// are exactly the current versions above `above` (the high seqno at the last
/// take): a flush reads them with one range scan of the seqno index, and writes
/// keep only a tombstone counter (for the O(1) stats) instead of a set.
#[derive(Debug, Default)]
struct Dirty {
    above: Seqno,
    /// How many of them are tombstones, so that stats read a counter.
    tombstones: u64,
}

impl Dirty {
    fn insert(&mut self, seqno: Seqno, deleted: bool) {
        debug_assert!(
            seqno > self.above,
            "new versions are above every written one"
        );
        self.tombstones += u64::from(deleted);
    }

    /// Whether it was dirty.
    fn remove(&mut self, seqno: Seqno, deleted: bool) -> bool {
        let was = seqno > self.above;
        if was && deleted {
            self.tombstones = self.tombstones.saturating_sub(1);
        }
        was
    }

    /// Everything above `above` is dirty again (a failed flush, a rollback).
    fn reset_above(&mut self, above: Seqno, by_seqno: &SeqnoIndex) {
        self.above = above;
        self.tombstones = by_seqno
            .range_from(next(above))
            .filter(|v| v.deleted())
            .count() as u64;
    }

    /// The unwritten versions, oldest first.
    fn versions<'a>(&self, by_seqno: &'a SeqnoIndex) -> impl Iterator<Item = &'a Stored> {
        by_seqno.range_from(next(self.above))
    }
}

fn visible_item(current: Option<&Stored>, now: UnixTime) -> Option<&Stored> {
    current.filter(|s| s.is_visible(now))
}

fn next(s: Seqno) -> Seqno {
    Seqno(s.0.saturating_add(1))
}

impl VBucket {
    /// A new, empty, dead vbucket.
    pub(crate) fn new(id: Vbid) -> VBucket {
        VBucket {
            id,
            state: VbState::Dead,
            high_seqno: Seqno(0),
            persisted_seqno: Seqno(0),
            purge_seqno: Seqno(0),
            snap_start: Seqno(0),
            snap_end: Seqno(0),
            failover: FailoverLog::new(),
            by_key: KeyIndex::default(),
            scratch: Vec::new(),
            by_seqno: SeqnoIndex::default(),
            live_items: 0,
            tombstones: 0,
            tombstone_seqnos: BTreeSet::new(),
            expiring: BTreeSet::new(),
            mem: 0,
            dirty: Dirty::default(),
            disk_deletes: Vec::new(),
            truncate_above: None,
            meta_dirty: false,
            presized_until: None,
        }
    }

    /// A vbucket restored from its persisted record (items are added by `load_version`).
    pub(crate) fn from_meta(id: Vbid, meta: VbMeta) -> VBucket {
        let mut vb = VBucket::new(id);
        vb.state = meta.state;
        vb.high_seqno = meta.high_seqno;
        vb.persisted_seqno = meta.high_seqno;
        // Versions loaded from disk are written.
        vb.dirty.above = meta.high_seqno;
        vb.purge_seqno = meta.purge_seqno;
        vb.snap_start = meta.snap_start;
        vb.snap_end = meta.snap_end;
        vb.failover = meta.failover;
        vb
    }

    pub(crate) fn meta(&self) -> VbMeta {
        VbMeta {
            state: self.state,
            high_seqno: self.high_seqno,
            purge_seqno: self.purge_seqno,
            snap_start: self.snap_start,
            snap_end: self.snap_end,
            failover: self.failover.clone(),
        }
    }

    /// Sizes the key table for `keys` more keys at once (a warmup loading a known
    /// number of versions).
    pub(crate) fn reserve_keys(&mut self, keys: usize) {
        self.by_key.reserve(keys);
    }

    /// How many inserts grew the key table (tests of the pre-sizing).
    #[cfg(test)]
    pub(crate) fn key_table_grew(&self) -> u32 {
        self.by_key.grew()
    }

    /// Adds a version read from disk. If the key already has a version (only possible
    /// if an earlier process died between writing and removing), the newer one wins
    /// and the older one is scheduled for removal from disk.
    pub(crate) fn load_version(&mut self, sh: &Shared, stored: Stored) {
        let seqno = stored.by_seqno();
        let existing = self.by_key.find(stored.key_hash(), stored.key());
        if let Some(existing) = existing.map(|(_, s)| s.by_seqno()) {
            if existing > seqno {
                self.disk_deletes.push(seqno);
                return;
            }
            self.remove_version(sh, existing, true);
        }
        // Loading never refuses: a bucket over quota only refuses new writes.
        let _ = sh.reserve(self.id, stored.mem_size(), false);
        self.account_add(seqno, &stored);
        self.by_key.upsert(stored.clone());
        self.by_seqno.insert(seqno, stored);
    }

    fn account_add(&mut self, seqno: Seqno, item: &Stored) {
        self.mem += item.mem_size();
        if item.deleted() {
            self.tombstones += 1;
            self.tombstone_seqnos.insert(seqno);
        } else {
            self.live_items += 1;
            if item.expiry() != 0 {
                self.expiring.insert(seqno);
            }
        }
    }

    fn not_my_vbucket(&self) -> EngineError {
        EngineError::NotMyVbucket {
            vb: self.id,
            state: Some(self.state),
        }
    }

    fn require_active(&self) -> Result<()> {
        if self.state == VbState::Active {
            Ok(())
        } else {
            Err(self.not_my_vbucket())
        }
    }

    fn require_replica(&self) -> Result<()> {
        match self.state {
            VbState::Replica | VbState::Pending => Ok(()),
            VbState::Active | VbState::Dead => Err(self.not_my_vbucket()),
        }
    }

    fn visible(&self, key: &[u8], now: UnixTime) -> Option<&Stored> {
        visible_item(self.by_key.get(key), now)
    }

    /// The one key lookup of a write (one hash of the key, one probe of the key
    /// table): where the new version goes (with what the write needs of the
    /// current version, visible or not), and the current version if it is visible.
    fn lookup(&self, key: &[u8], now: UnixTime) -> (Target, Option<&Stored>) {
        let hash = key_hash(key);
        match self.by_key.find(hash, key) {
            Some((slot, current)) => (
                Target {
                    hash,
                    prev: Some(Prev::of(current, Some(slot))),
                },
                visible_item(Some(current), now),
            ),
            None => (Target { hash, prev: None }, None),
        }
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(EngineError::InvalidKey {
                vb: self.id,
                len: key.len(),
            });
        }
        Ok(())
    }

    fn check_value(&self, sh: &Shared, len: usize) -> Result<()> {
        if len > sh.max_item_size {
            return Err(EngineError::TooBig {
                vb: self.id,
                len,
                max: sh.max_item_size,
            });
        }
        Ok(())
    }

    fn check_cas(&self, item: &Stored, cas: Cas) -> Result<()> {
        if cas != Cas(0) && cas != item.cas() {
            return Err(EngineError::KeyExists { vb: self.id });
        }
        Ok(())
    }

    /// Removes the current version at `seqno` from memory and returns its bytes to
    /// the quota. With `on_disk`, a version that was already flushed is queued for
    /// removal from disk.
    fn remove_version(&mut self, sh: &Shared, seqno: Seqno, on_disk: bool) -> Option<Stored> {
        let stored = self.detach_version(seqno, on_disk)?;
        sh.release(stored.mem_size());
        Some(stored)
    }

    /// `remove_version` without touching the bucket's quota (the caller settles it).
    fn detach_version(&mut self, seqno: Seqno, on_disk: bool) -> Option<Stored> {
        let stored = self.unindex_seqno(seqno, on_disk)?;
        let removed = self.by_key.remove(stored.key_hash(), stored.key());
        debug_assert!(
            removed.is_some_and(|r| r.ptr_eq(&stored)),
            "{} key index out of sync",
            self.id
        );
        Some(stored)
    }

    /// Removes the version at `seqno` from everything but the key index (the caller
    /// repoints or removes the key) and from the vbucket's accounting.
    fn unindex_seqno(&mut self, seqno: Seqno, on_disk: bool) -> Option<Stored> {
        let stored = self.by_seqno.remove(seqno)?;
        self.mem = self.mem.saturating_sub(stored.mem_size());
        if stored.deleted() {
            self.tombstones = self.tombstones.saturating_sub(1);
            self.tombstone_seqnos.remove(&seqno);
        } else {
            self.live_items = self.live_items.saturating_sub(1);
            self.expiring.remove(&seqno);
        }
        if !self.dirty.remove(seqno, stored.deleted()) && on_disk {
            self.disk_deletes.push(seqno);
        }
        Some(stored)
    }

    /// Settles the quota for replacing the key's current version with `item`. With
    /// `enforce` false the write always succeeds: deletions must stay possible, or a
    /// full bucket could never shrink.
    fn reserve_for(
        &self,
        sh: &Shared,
        prev: Option<Prev>,
        item: &Item,
        enforce: bool,
    ) -> Result<()> {
        let old_size = prev.map_or(0, |p| p.size);
        let new_size = item.mem_size();
        if new_size > old_size {
            sh.reserve(self.id, new_size - old_size, enforce)
        } else {
            sh.release(old_size - new_size);
            Ok(())
        }
    }

    /// Makes `item` the current version of its key; `reserve_for` was called for it
    /// and `target` was found for its key in the same call.
    fn install_reserved(&mut self, sh: &Shared, item: Item, target: Target) {
        let seqno = item.by_seqno;
        let origin = target.prev.map_or(seqno, |p| p.origin);
        let stored = Stored::with_hash(&item, origin, target.hash, &mut self.scratch);
        drop(item);
        let replaced = match target.prev.and_then(|p| p.slot) {
            Some(slot) => self.by_key.replace_at(slot, stored.clone()),
            None => self.by_key.upsert(stored.clone()),
        };
        if let Some(old) = replaced {
            self.unindex_seqno(old.by_seqno(), true)
                .expect("key index points at a stored version");
        }
        self.account_add(seqno, &stored);
        self.dirty.insert(seqno, stored.deleted());
        self.by_seqno.insert(seqno, stored);
        self.high_seqno = seqno;
        if seqno > self.snap_end {
            // Keeps snap_start <= high <= snap_end even if a producer skipped a marker.
            self.snap_end = seqno;
        }
        if self.state == VbState::Active {
            self.snap_start = seqno;
        }
        sh.bump_changes();
    }

    /// Assigns seqno, cas and rev to a new front-end version of `key` and installs it.
    fn mutate(
        &mut self,
        sh: &Shared,
        key: Bytes,
        nv: NewVersion,
        target: Target,
        now: UnixTime,
    ) -> Result<MutationInfo> {
        let rev_seqno = target.prev.map_or(1, |p| p.rev + 1);
        let seqno = next(self.high_seqno);
        let (deleted, delete_source, delete_time) = match nv.tombstone {
            Some((source, time)) => (true, source, time),
            None => (false, DeleteSource::Explicit, 0),
        };
        let mut item = Item {
            key,
            value: nv.value,
            cas: Cas(0),
            flags: nv.flags,
            expiry: nv.expiry,
            datatype: nv.datatype,
            rev_seqno,
            by_seqno: seqno,
            deleted,
            delete_source,
            delete_time,
        };
        // Reserve before taking a CAS, so a refused write consumes nothing.
        self.reserve_for(sh, target.prev, &item, !deleted)?;
        item.cas = sh.next_cas(now);
        let cas = item.cas;
        self.install_reserved(sh, item, target);
        Ok(MutationInfo {
            cas,
            seqno,
            vb_uuid: self.failover.current_uuid(),
        })
    }

    // ---- front end (active only) ----

    pub(crate) fn get(&self, key: &[u8], now: UnixTime) -> Result<Item> {
        self.require_active()?;
        self.visible(key, now)
            .map(Stored::to_item)
            .ok_or(EngineError::KeyNotFound { vb: self.id })
    }

    pub(crate) fn get_replica(&self, key: &[u8], now: UnixTime) -> Result<Item> {
        if self.state != VbState::Replica {
            return Err(self.not_my_vbucket());
        }
        self.visible(key, now)
            .map(Stored::to_item)
            .ok_or(EngineError::KeyNotFound { vb: self.id })
    }

    pub(crate) fn store(
        &mut self,
        sh: &Shared,
        op: StoreOp,
        doc: Document,
        cas: Cas,
        now: UnixTime,
    ) -> Result<MutationInfo> {
        self.require_active()?;
        self.check_key(&doc.key)?;
        self.check_value(sh, doc.value.len())?;
        let (target, existing) = self.lookup(&doc.key, now);
        match (op, existing) {
            (StoreOp::Add, Some(_)) => return Err(EngineError::KeyExists { vb: self.id }),
            (StoreOp::Add, None) => {}
            (StoreOp::Set, None) if cas != Cas(0) => {
                return Err(EngineError::KeyNotFound { vb: self.id })
            }
            (StoreOp::Set, None) => {}
            (StoreOp::Replace, None) => return Err(EngineError::KeyNotFound { vb: self.id }),
            (StoreOp::Set | StoreOp::Replace, Some(item)) => self.check_cas(item, cas)?,
        }
        let nv = NewVersion {
            value: doc.value,
            flags: doc.flags,
            expiry: absolute_expiry(doc.expiry, now),
            datatype: doc.datatype,
            tombstone: None,
        };
        self.mutate(sh, doc.key, nv, target, now)
    }

    pub(crate) fn delete(
        &mut self,
        sh: &Shared,
        key: &[u8],
        cas: Cas,
        now: UnixTime,
    ) -> Result<MutationInfo> {
        self.require_active()?;
        let (target, item) = self.lookup(key, now);
        let item = item.ok_or(EngineError::KeyNotFound { vb: self.id })?;
        self.check_cas(item, cas)?;
        let (key, flags) = (Bytes::copy_from_slice(item.key()), item.flags());
        let nv = NewVersion::tombstone(DeleteSource::Explicit, flags, now);
        self.mutate(sh, key, nv, target, now)
    }

    pub(crate) fn concat(
        &mut self,
        sh: &Shared,
        op: ConcatOp,
        key: &[u8],
        data: &[u8],
        cas: Cas,
        now: UnixTime,
    ) -> Result<MutationInfo> {
        self.require_active()?;
        let (target, item) = self.lookup(key, now);
        let item = item.ok_or(EngineError::NotStored { vb: self.id })?;
        self.check_cas(item, cas)?;
        let len = item.value().len() + data.len();
        self.check_value(sh, len)?;
        let mut value = BytesMut::with_capacity(len);
        match op {
            ConcatOp::Append => {
                value.extend_from_slice(item.value());
                value.extend_from_slice(data);
            }
            ConcatOp::Prepend => {
                value.extend_from_slice(data);
                value.extend_from_slice(item.value());
            }
        }
        let nv = NewVersion {
            value: value.freeze(),
            flags: item.flags(),
            expiry: item.expiry(),
            // Concatenation rarely keeps a document valid JSON.
            datatype: item.datatype() & !DATATYPE_JSON,
            tombstone: None,
        };
        let key = Bytes::copy_from_slice(item.key());
        self.mutate(sh, key, nv, target, now)
    }

    pub(crate) fn arithmetic(
        &mut self,
        sh: &Shared,
        op: ArithOp,
        key: &[u8],
        counter: Counter,
        cas: Cas,
        now: UnixTime,
    ) -> Result<(u64, MutationInfo)> {
        self.require_active()?;
        self.check_key(key)?;
        let (target, item) = self.lookup(key, now);
        let (value, flags, expiry) = match item {
            None if counter.expiry == Counter::NO_CREATE => {
                return Err(EngineError::KeyNotFound { vb: self.id })
            }
            None => (counter.initial, 0, absolute_expiry(counter.expiry, now)),
            Some(item) => {
                self.check_cas(item, cas)?;
                let current =
                    parse_counter(item.value()).ok_or(EngineError::DeltaBadval { vb: self.id })?;
                let value = match op {
                    ArithOp::Incr => current.wrapping_add(counter.delta),
                    ArithOp::Decr => current.saturating_sub(counter.delta),
                };
                (value, item.flags(), item.expiry())
            }
        };
        let nv = NewVersion {
            value: Bytes::from(value.to_string()),
            flags,
            expiry,
            datatype: DATATYPE_JSON,
            tombstone: None,
        };
        let info = self.mutate(sh, Bytes::copy_from_slice(key), nv, target, now)?;
        Ok((value, info))
    }

    pub(crate) fn touch(
        &mut self,
        sh: &Shared,
        key: &[u8],
        expiry: u32,
        now: UnixTime,
    ) -> Result<(Item, MutationInfo)> {
        self.require_active()?;
        let (target, item) = self.lookup(key, now);
        let item = item.ok_or(EngineError::KeyNotFound { vb: self.id })?;
        let nv = NewVersion {
            value: Bytes::copy_from_slice(item.value()),
            flags: item.flags(),
            expiry: absolute_expiry(expiry, now),
            datatype: item.datatype(),
            tombstone: None,
        };
        let key = Bytes::copy_from_slice(item.key());
        let info = self.mutate(sh, key, nv, target, now)?;
        let item = self
            .by_seqno
            .get(info.seqno)
            .map(Stored::to_item)
            .expect("the version just installed is current");
        Ok((item, info))
    }

    /// Turns expired live items into expiration tombstones (active vbuckets only).
    pub(crate) fn expire(&mut self, sh: &Shared, now: UnixTime) -> Vec<(Bytes, Seqno)> {
        if self.state != VbState::Active {
            return Vec::new();
        }
        // The seqno index holds only current versions: each of these is its key's.
        let expired: Vec<(Bytes, Target, u32)> = self
            .expiring
            .iter()
            .filter_map(|seqno| self.by_seqno.get(*seqno))
            .filter(|s| s.is_expired(now))
            .map(|s| {
                (
                    Bytes::copy_from_slice(s.key()),
                    Target::replacing(s),
                    s.flags(),
                )
            })
            .collect();
        let mut out = Vec::with_capacity(expired.len());
        for (key, target, flags) in expired {
            let nv = NewVersion::tombstone(DeleteSource::Expired, flags, now);
            match self.mutate(sh, key.clone(), nv, target, now) {
                Ok(info) => out.push((key, info.seqno)),
                Err(e) => debug_assert!(false, "{}: tombstones bypass the quota: {e}", self.id),
            }
        }
        out
    }

    /// Removes tombstones deleted at least `older_than` seconds before `now`.
    pub(crate) fn purge_tombstones(
        &mut self,
        sh: &Shared,
        older_than: u32,
        now: UnixTime,
    ) -> usize {
        let cutoff = now.secs().saturating_sub(u64::from(older_than));
        let doomed: Vec<Seqno> = self
            .tombstone_seqnos
            .iter()
            .filter(|seqno| {
                self.by_seqno
                    .get(**seqno)
                    .is_some_and(|s| u64::from(s.delete_time()) <= cutoff)
            })
            .copied()
            .collect();
        for seqno in &doomed {
            self.remove_version(sh, *seqno, true);
            self.purge_seqno = self.purge_seqno.max(*seqno);
        }
        if !doomed.is_empty() {
            self.meta_dirty = true;
        }
        doomed.len()
    }

    // ---- DCP consumer side (replica/pending only) ----

    /// Records a snapshot marker's range. A disk snapshot (a backfill) brings at
    /// most one version per seqno of its range: the key table is sized for them at
    /// once, as far as the bucket's free quota could hold them (each key costs at
    /// least [`item::mem_size`] of a one-byte key), so a marker with an absurd
    /// range reserves no more than the quota allows. A snapshot that deduplicated
    /// most of its range gives the excess back when its end arrives.
    pub(crate) fn apply_snapshot_marker(
        &mut self,
        sh: &Shared,
        start: Seqno,
        end: Seqno,
        disk: bool,
    ) -> Result<()> {
        self.require_replica()?;
        if start > end {
            return Err(EngineError::InvalidSnapshot {
                vb: self.id,
                start,
                end,
            });
        }
        if end < self.high_seqno {
            return Err(EngineError::Range {
                vb: self.id,
                seqno: end,
                high: self.high_seqno,
            });
        }
        self.snap_start = start;
        self.snap_end = end;
        self.meta_dirty = true;
        if self.presized_until.take().is_some() {
            // The last sized snapshot ended early (its stream closed).
            self.by_key.shrink_if_sparse();
        }
        if disk {
            let coming = end.0 - self.high_seqno.0.max(start.0.saturating_sub(1));
            let room = sh.quota.saturating_sub(sh.mem_used()) / item::mem_size(1);
            let keys = usize::try_from(coming.min(room)).unwrap_or(usize::MAX);
            if keys > 0 {
                self.by_key.reserve(keys);
                self.presized_until = Some(end);
            }
        }
        Ok(())
    }

    pub(crate) fn apply(&mut self, sh: &Shared, mut item: Item, now: UnixTime) -> Result<()> {
        self.require_replica()?;
        if item.by_seqno <= self.high_seqno {
            return Err(EngineError::Range {
                vb: self.id,
                seqno: item.by_seqno,
                high: self.high_seqno,
            });
        }
        self.check_key(&item.key)?;
        if item.deleted {
            item.expiry = 0;
            if item.delete_time == 0 {
                // In-memory deletes carry delete time 0 (§6.10); date them on receipt
                // so the tombstone purger measures their age.
                item.delete_time = now.secs_u32();
            }
        } else {
            item.delete_time = 0;
            item.delete_source = DeleteSource::Explicit;
        }
        let (target, _) = self.lookup(&item.key, now);
        self.reserve_for(sh, target.prev, &item, !item.deleted)?;
        sh.observe_cas(item.cas);
        let seqno = item.by_seqno;
        self.install_reserved(sh, item, target);
        if self.presized_until.is_some_and(|end| seqno >= end) {
            self.presized_until = None;
            self.by_key.shrink_if_sparse();
        }
        Ok(())
    }

    pub(crate) fn stream_request_position(&self) -> StreamRequestPosition {
        let start = self.high_seqno;
        let vb_uuid = if start == Seqno(0) {
            mcbp::VbUuid(0)
        } else {
            self.failover.current_uuid()
        };
        let (snap_start, snap_end) = if start <= self.snap_start || start >= self.snap_end {
            (start, start)
        } else {
            (self.snap_start, self.snap_end)
        };
        StreamRequestPosition {
            start,
            vb_uuid,
            snap_start,
            snap_end,
        }
    }

    /// Discards everything above `to`, exactly if possible, else empties the vbucket.
    pub(crate) fn rollback(&mut self, sh: &Shared, to: Seqno) -> Result<RollbackOutcome> {
        self.require_replica()?;
        if to >= self.high_seqno {
            return Ok(RollbackOutcome::To(self.high_seqno));
        }
        let exact = self.purge_seqno <= to
            && self
                .by_seqno
                .range_from(next(to))
                .all(|stored| stored.origin() > to);
        let outcome = if exact {
            let doomed: Vec<Seqno> = self
                .by_seqno
                .range_from(next(to))
                .map(Stored::by_seqno)
                .collect();
            for seqno in doomed {
                // The truncation below removes them from disk.
                self.remove_version(sh, seqno, false);
            }
            self.high_seqno = to;
            RollbackOutcome::To(to)
        } else {
            self.clear(sh);
            RollbackOutcome::ResetToZero
        };
        let high = self.high_seqno;
        self.truncate_above = Some(self.truncate_above.map_or(high, |t| t.min(high)));
        // Rare (rollback): recount rather than track each removal.
        let above = self.dirty.above.min(high);
        self.dirty.reset_above(above, &self.by_seqno);
        self.disk_deletes.retain(|s| *s <= high);
        self.persisted_seqno = self.persisted_seqno.min(high);
        self.snap_start = high;
        self.snap_end = high;
        self.failover.drop_above(high);
        self.meta_dirty = true;
        sh.bump_changes();
        Ok(outcome)
    }

    /// Drops every version; seqnos, purge seqno and snapshot go back to 0.
    fn clear(&mut self, sh: &Shared) {
        sh.release(self.mem);
        self.by_key.clear();
        self.by_seqno.clear();
        self.dirty = Dirty::default();
        self.disk_deletes.clear();
        self.live_items = 0;
        self.tombstones = 0;
        self.tombstone_seqnos.clear();
        self.expiring.clear();
        self.mem = 0;
        self.high_seqno = Seqno(0);
        self.persisted_seqno = Seqno(0);
        self.purge_seqno = Seqno(0);
        self.snap_start = Seqno(0);
        self.snap_end = Seqno(0);
        self.truncate_above = Some(Seqno(0));
        self.meta_dirty = true;
    }

    /// DEL_VBUCKET: the vbucket becomes dead and empty, with no failover log.
    pub(crate) fn delete_all(&mut self, sh: &Shared) {
        self.clear(sh);
        self.state = VbState::Dead;
        self.failover = FailoverLog::new();
        sh.bump_changes();
    }

    // ---- admin ----

    /// Changes state; becoming active starts a new history branch (§7.5).
    pub(crate) fn set_state(&mut self, state: VbState, new_uuid: impl FnOnce() -> mcbp::VbUuid) {
        if state == VbState::Active && self.state != VbState::Active {
            self.failover.push(FailoverEntry {
                vb_uuid: new_uuid(),
                seqno: self.high_seqno,
            });
            self.snap_start = self.high_seqno;
            self.snap_end = self.high_seqno;
        }
        self.state = state;
        self.meta_dirty = true;
    }

    pub(crate) fn set_failover_log(&mut self, log: FailoverLog) {
        self.failover = log;
        self.meta_dirty = true;
    }

    /// After an unclean shutdown: a new branch at the persisted high seqno (§7.5).
    pub(crate) fn push_failover(&mut self, entry: FailoverEntry) {
        self.failover.push(entry);
        self.meta_dirty = true;
    }

    // ---- reads for DCP and stats ----

    /// Up to `limit` versions above `start`, in seqno order. The keys and values of
    /// small versions are copied into one buffer that their items share, up to
    /// [`BATCH_COPY_BYTES`] (one allocation and one sequential copy per batch
    /// instead of an allocation per item: backfills read millions of them); larger
    /// versions, and any beyond that budget, are handed out without a copy.
    pub(crate) fn items_since(&self, start: Seqno, limit: usize) -> Vec<Item> {
        let versions: Vec<&Stored> = self.by_seqno.range_from(next(start)).take(limit).collect();
        let mut budget = BATCH_COPY_BYTES;
        let copied: Vec<bool> = versions
            .iter()
            .map(|v| {
                let len = v.key_value().len();
                let copy = len <= COPY_ITEM_MAX && len <= budget;
                if copy {
                    budget -= len;
                }
                copy
            })
            .collect();
        let mut buf = BytesMut::with_capacity(BATCH_COPY_BYTES - budget);
        for (v, _) in versions.iter().zip(&copied).filter(|(_, c)| **c) {
            buf.extend_from_slice(v.key_value());
        }
        let buf = buf.freeze();
        let mut at = 0;
        versions
            .iter()
            .zip(copied)
            .map(|(v, copy)| {
                if !copy {
                    return v.to_item();
                }
                let (key_len, len) = (v.key().len(), v.key_value().len());
                let key = buf.slice(at..at + key_len);
                let value = buf.slice(at + key_len..at + len);
                at += len;
                v.item_with(key, value)
            })
            .collect()
    }

    /// Every current version, in seqno order (a compaction's copy).
    pub(crate) fn all_versions(&self) -> Vec<Stored> {
        self.by_seqno.values().cloned().collect()
    }

    pub(crate) fn stats(&self) -> VbStats {
        // O(1): stats are polled often (data-move waits, vbucket-seqno,
        // GET_ALL_VB_SEQNOS) and must never walk items or unflushed versions.
        let persisted_tombstones = self.tombstones.saturating_sub(self.dirty.tombstones);
        VbStats {
            state: self.state,
            high_seqno: self.high_seqno,
            persisted_seqno: self.persisted_seqno,
            purge_seqno: self.purge_seqno,
            vb_uuid: self.failover.current_uuid(),
            items: self.live_items,
            persisted_tombstones,
            tombstones: self.tombstones,
            mem_used: self.mem,
        }
    }

    pub(crate) fn live_items(&self) -> u64 {
        self.live_items
    }

    // ---- flushing ----

    /// Takes the vbucket's dirty state for a flush. Flush steps visit the vbuckets
    /// through here in turn, every vbucket of an idle bucket each step, so the visit
    /// also moves a key-table growth along ([`KeyIndex::grow_while_idle`]).
    pub(crate) fn take_flush_batch(&mut self) -> Option<FlushBatch> {
        self.by_key.grow_while_idle();
        if !self.meta_dirty
            && self.dirty.versions(&self.by_seqno).next().is_none()
            && self.disk_deletes.is_empty()
            && self.truncate_above.is_none()
        {
            return None;
        }
        let from = self.dirty.above;
        let puts: Vec<Stored> = self.dirty.versions(&self.by_seqno).cloned().collect();
        self.dirty = Dirty {
            above: self.high_seqno,
            tombstones: 0,
        };
        self.meta_dirty = false;
        Some(FlushBatch {
            vb: self.id,
            dirty_from: from,
            truncate_above: self.truncate_above.take(),
            deletes: std::mem::take(&mut self.disk_deletes),
            puts,
            meta: self.meta(),
        })
    }

    /// Puts back what a failed flush took, so the next flush retries it.
    pub(crate) fn restore_flush_batch(&mut self, batch: FlushBatch) {
        let above = self.dirty.above.min(batch.dirty_from);
        self.dirty.reset_above(above, &self.by_seqno);
        self.disk_deletes.extend(batch.deletes);
        if let Some(t) = batch.truncate_above {
            self.truncate_above = Some(self.truncate_above.map_or(t, |mine| mine.min(t)));
        }
        self.meta_dirty = true;
    }

    /// The vbucket record was written outside a flush (on open).
    pub(crate) fn meta_written(&mut self) {
        self.meta_dirty = false;
    }

    pub(crate) fn mark_persisted(&mut self, high: Seqno) {
        self.persisted_seqno = self.persisted_seqno.max(high).min(self.high_seqno);
    }
}

/// memcached's counter parse: optional surrounding ASCII whitespace around 1..=20
/// decimal digits that fit a u64.
fn parse_counter(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?.trim_ascii();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared::new(1 << 30, 1 << 20, 0)
    }

    fn active() -> VBucket {
        let mut vb = VBucket::new(Vbid(0));
        vb.set_state(VbState::Active, || mcbp::VbUuid(0xabc));
        vb
    }

    fn doc(key: &'static str, value: &'static str) -> Document {
        Document {
            key: Bytes::from_static(key.as_bytes()),
            value: Bytes::from_static(value.as_bytes()),
            flags: 0,
            expiry: 0,
            datatype: 0,
        }
    }

    const T: u64 = 1_700_000_000;

    /// A DCP read hands out exactly what is stored; small versions share one copy
    /// (adjacent in it), large ones and those past the copy budget are not copied.
    #[test]
    fn items_since_copies_small_versions_into_one_buffer_within_its_budget() {
        let sh = shared();
        let mut vb = active();
        let big = 20_000;
        let sizes: Vec<usize> = [10, 20, big, 30]
            .into_iter()
            .chain(std::iter::repeat_n(15_000, 80))
            .collect();
        for (i, n) in sizes.iter().enumerate() {
            let d = Document {
                key: Bytes::from(format!("k{i:03}")),
                value: Bytes::from(vec![i as u8; *n]),
                flags: 0,
                expiry: 0,
                datatype: 0,
            };
            vb.store(&sh, StoreOp::Set, d, Cas(0), now()).expect("set");
        }
        let items = vb.items_since(Seqno(0), 1000);
        let want: Vec<Item> = vb.by_seqno.values().map(Stored::to_item).collect();
        assert_eq!(items, want);
        let adjacent = |a: &Item, b: &Item| a.value.as_ptr_range().end == b.key.as_ptr();
        assert!(
            adjacent(&items[0], &items[1]),
            "small versions share one buffer"
        );
        assert!(
            !adjacent(&items[1], &items[2]),
            "a large version is not copied"
        );
        assert!(adjacent(&items[1], &items[3]), "the copies skip it");
        let copied: usize = items
            .windows(2)
            .filter(|w| adjacent(&w[0], &w[1]))
            .map(|w| w[1].key.len() + w[1].value.len())
            .sum();
        assert!(copied <= BATCH_COPY_BYTES, "{copied}");
        let last = items.len() - 1;
        assert!(
            !adjacent(&items[last - 1], &items[last]),
            "the budget ran out"
        );
        assert_eq!(vb.items_since(Seqno(2), 2), want[2..4]);
    }

    fn now() -> UnixTime {
        UnixTime::from_secs(T)
    }

    fn replica() -> VBucket {
        let mut vb = VBucket::new(Vbid(1));
        vb.set_state(VbState::Replica, || mcbp::VbUuid(0xdef));
        vb
    }

    fn replicated(key: &str, seqno: u64) -> Item {
        crate::item::test_item(key.as_bytes(), b"v", seqno)
    }

    /// Every write path hashes its key once: the lookup's hash goes into the new
    /// version and the key table's insert.
    #[test]
    fn writes_and_replica_applies_hash_their_key_once() {
        use crate::stored::hash_count;
        let sh = shared();
        let mut vb = active();
        let hashes = |f: &mut dyn FnMut()| {
            let before = hash_count::get();
            f();
            hash_count::get() - before
        };
        let set = |vb: &mut VBucket, key: &'static str| {
            vb.store(&sh, StoreOp::Set, doc(key, "v"), Cas(0), now())
                .expect("set");
        };
        assert_eq!(hashes(&mut || set(&mut vb, "new")), 1, "a new key");
        assert_eq!(hashes(&mut || set(&mut vb, "new")), 1, "an overwrite");
        let sh = shared();
        let n = hashes(&mut || {
            vb.delete(&sh, b"new", Cas(0), now()).expect("delete");
        });
        assert_eq!(n, 1, "a delete");
        let n = hashes(&mut || {
            vb.get(b"new", now()).expect_err("deleted");
        });
        assert_eq!(n, 1, "a get");
        let mut r = replica();
        let n = hashes(&mut || r.apply(&sh, replicated("k", 1), now()).expect("apply"));
        assert_eq!(n, 1, "a replica apply of a new key");
        let n = hashes(&mut || r.apply(&sh, replicated("k", 2), now()).expect("apply"));
        assert_eq!(n, 1, "a replica apply over a key");
    }

    /// The flusher's visits finish a key-table growth that inserts left halfway.
    #[test]
    fn flush_visits_finish_a_growth_inserts_left_halfway() {
        let sh = shared();
        let mut vb = replica();
        let mut s = 0;
        while vb.by_key.grew() < 8 {
            s += 1;
            vb.apply(&sh, replicated(&format!("k{s}"), s), now())
                .expect("apply");
        }
        assert!(vb.by_key.growing());
        let mut visits = 0;
        while vb.by_key.growing() {
            let _ = vb.take_flush_batch();
            visits += 1;
            assert!(visits < 1000, "bounded");
        }
        assert!(visits > 1, "a share per visit");
        for k in [1, s / 2, s] {
            assert!(vb.by_key.get(format!("k{k}").as_bytes()).is_some());
        }
    }

    /// A disk snapshot marker sizes the key table for the whole snapshot, bounded by
    /// what the free quota could hold; memory snapshots do not; a snapshot that
    /// brought far fewer keys than its range gives the room back at its end.
    #[test]
    fn a_disk_snapshot_sizes_the_key_table_once_within_the_quota() {
        let sh = shared();
        let mut vb = replica();
        vb.apply_snapshot_marker(&sh, Seqno(1), Seqno(3000), true)
            .expect("marker");
        assert!(vb.by_key.capacity() >= 3000, "{}", vb.by_key.capacity());
        for s in 1..=3000 {
            vb.apply(&sh, replicated(&format!("k{s}"), s), now())
                .expect("apply");
        }
        assert_eq!(vb.by_key.grew(), 0);

        let mut mem = replica();
        mem.apply_snapshot_marker(&sh, Seqno(1), Seqno(3000), false)
            .expect("marker");
        for s in 1..=3000 {
            mem.apply(&sh, replicated(&format!("k{s}"), s), now())
                .expect("apply");
        }
        assert!(mem.by_key.grew() > 5, "{}", mem.by_key.grew());

        // A range no quota could fill: the reservation stops at what it could.
        let room = 1000;
        let small = Shared::new(room * crate::item::mem_size(1), 1 << 20, 0);
        let mut vb = replica();
        vb.apply_snapshot_marker(&small, Seqno(1), Seqno(u64::MAX), true)
            .expect("marker");
        let cap = vb.by_key.capacity();
        assert!((1000..2 * 1000).contains(&cap), "{cap}");

        // A deduplicated snapshot: 10 keys over a range of 100 000 seqnos.
        let mut vb = replica();
        vb.apply_snapshot_marker(&sh, Seqno(1), Seqno(100_000), true)
            .expect("marker");
        let reserved = vb.by_key.capacity();
        for s in (10_000..=100_000).step_by(10_000) {
            vb.apply(&sh, replicated(&format!("k{s}"), s), now())
                .expect("apply");
            let cap = vb.by_key.capacity();
            if s < 100_000 {
                assert_eq!(cap, reserved, "kept until the snapshot's end");
            } else {
                assert!(cap < 100, "given back at its end: {cap}");
            }
        }
        // One that ends early (its stream closed) gives the room back at the next
        // marker.
        vb.apply_snapshot_marker(&sh, Seqno(100_001), Seqno(200_000), true)
            .expect("marker");
        vb.apply(&sh, replicated("one", 100_001), now())
            .expect("apply");
        vb.apply_snapshot_marker(&sh, Seqno(100_002), Seqno(100_002), false)
            .expect("marker");
        assert!(vb.by_key.capacity() < 100, "{}", vb.by_key.capacity());
    }

    /// The tombstone count of unflushed versions the stats read is kept, not
    /// computed: after any mix of writes, deletes, flushes and failed flushes it
    /// equals a count made by walking the versions.
    #[test]
    fn the_dirty_tombstone_counter_matches_a_walk_after_any_mix_of_operations() {
        let sh = shared();
        let mut vb = active();
        let keys: Vec<Bytes> = (0..16).map(|i| Bytes::from(format!("k{i}"))).collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut taken: Vec<FlushBatch> = Vec::new();
        for step in 0..4000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = keys[(x % 16) as usize].clone();
            match (x >> 8) % 10 {
                0..=4 => {
                    let d = Document {
                        key,
                        value: Bytes::from_static(b"v"),
                        flags: 0,
                        // Half of the writes expire (in an hour).
                        expiry: if x & 1 == 0 { 0 } else { 3600 },
                        datatype: 0,
                    };
                    vb.store(&sh, StoreOp::Set, d, Cas(0), now()).expect("set");
                }
                5..=7 => {
                    let _ = vb.delete(&sh, &key, Cas(0), now());
                }
                8 => taken.extend(vb.take_flush_batch()),
                _ => {
                    if let Some(b) = taken.pop() {
                        vb.restore_flush_batch(b);
                    }
                }
            }
            let walked = vb
                .dirty
                .versions(&vb.by_seqno)
                .filter(|v| v.deleted())
                .count() as u64;
            assert_eq!(vb.dirty.tombstones, walked, "step {step}");
            // What an outstanding batch holds is not counted dirty a second time.
            assert!(
                taken
                    .iter()
                    .flat_map(|b| &b.puts)
                    .all(|p| p.by_seqno() <= vb.dirty.above),
                "step {step}"
            );
            // The tombstone and expiry indexes hold exactly what a walk finds.
            let tombs: BTreeSet<Seqno> = vb
                .by_seqno
                .values()
                .filter(|v| v.deleted())
                .map(Stored::by_seqno)
                .collect();
            assert_eq!(vb.tombstone_seqnos, tombs, "step {step}");
            let expiring: BTreeSet<Seqno> = vb
                .by_seqno
                .values()
                .filter(|v| !v.deleted() && v.expiry() != 0)
                .map(Stored::by_seqno)
                .collect();
            assert_eq!(vb.expiring, expiring, "step {step}");
            assert_eq!(
                vb.stats().persisted_tombstones,
                vb.tombstones - walked,
                "step {step}"
            );
        }
    }

    #[test]
    fn counter_parse_follows_memcached() {
        assert_eq!(parse_counter(b"42"), Some(42));
        assert_eq!(parse_counter(b" 7\r\n"), Some(7));
        assert_eq!(parse_counter(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_counter(b"18446744073709551616"), None);
        assert_eq!(parse_counter(b"-1"), None);
        assert_eq!(parse_counter(b"1.5"), None);
        assert_eq!(parse_counter(b""), None);
        assert_eq!(parse_counter(b"abc"), None);
    }

    #[test]
    fn cas_is_the_clock_unless_the_clock_does_not_advance() {
        let sh = shared();
        let a = sh.next_cas(UnixTime::from_nanos(1000));
        let b = sh.next_cas(UnixTime::from_nanos(1000));
        let c = sh.next_cas(UnixTime::from_nanos(500));
        let d = sh.next_cas(UnixTime::from_nanos(5000));
        assert_eq!((a, b, c, d), (Cas(1000), Cas(1001), Cas(1002), Cas(5000)));
        sh.observe_cas(Cas(9000));
        assert_eq!(sh.next_cas(UnixTime::from_nanos(6000)), Cas(9001));
    }

    #[test]
    fn overwrite_keeps_one_version_per_key_and_inherits_its_origin() {
        let sh = shared();
        let mut vb = active();
        vb.store(&sh, StoreOp::Set, doc("a", "1"), Cas(0), now())
            .expect("set");
        vb.store(&sh, StoreOp::Set, doc("b", "1"), Cas(0), now())
            .expect("set");
        vb.store(&sh, StoreOp::Set, doc("a", "2"), Cas(0), now())
            .expect("set");
        let seqnos: Vec<u64> = vb.by_seqno.values().map(|s| s.by_seqno().0).collect();
        assert_eq!(seqnos, vec![2, 3]);
        let at = |s: u64| vb.by_seqno.get(Seqno(s)).expect("stored");
        assert_eq!(at(3).origin(), Seqno(1));
        assert_eq!(at(2).origin(), Seqno(2));
        assert_eq!(vb.live_items(), 2);
        assert_eq!(at(3).rev_seqno(), 2);
    }

    #[test]
    fn memory_accounting_returns_to_zero_when_everything_is_removed() {
        let sh = shared();
        let mut vb = active();
        vb.store(&sh, StoreOp::Set, doc("a", "hello"), Cas(0), now())
            .expect("set");
        vb.store(&sh, StoreOp::Set, doc("a", "hello world"), Cas(0), now())
            .expect("set");
        assert_eq!(sh.mem_used(), vb.mem);
        assert_eq!(vb.mem, 1 + 11 + crate::item::ITEM_OVERHEAD);
        vb.delete(&sh, b"a", Cas(0), now()).expect("delete");
        assert_eq!(vb.mem, 1 + crate::item::ITEM_OVERHEAD);
        let purged = vb.purge_tombstones(&sh, 0, now());
        assert_eq!(purged, 1);
        assert_eq!((vb.mem, sh.mem_used()), (0, 0));
        assert_eq!(vb.purge_seqno, Seqno(3));
    }

    #[test]
    fn stream_request_position_collapses_snapshot_when_nothing_or_everything_received() {
        let sh = shared();
        let mut vb = VBucket::new(Vbid(3));
        vb.set_state(VbState::Replica, || mcbp::VbUuid(1));
        let p = vb.stream_request_position();
        assert_eq!(
            (p.start, p.vb_uuid, p.snap_start, p.snap_end),
            (Seqno(0), mcbp::VbUuid(0), Seqno(0), Seqno(0))
        );
        vb.set_failover_log(FailoverLog::from_entries(vec![FailoverEntry {
            vb_uuid: mcbp::VbUuid(0x77),
            seqno: Seqno(0),
        }]));
        vb.apply_snapshot_marker(&sh, Seqno(1), Seqno(10), false)
            .expect("marker");
        // Nothing of the snapshot received yet.
        let p = vb.stream_request_position();
        assert_eq!(
            (p.start, p.snap_start, p.snap_end),
            (Seqno(0), Seqno(0), Seqno(0))
        );
        for s in 1..=4u64 {
            let item = Item {
                key: Bytes::from(format!("k{s}")),
                value: Bytes::from_static(b"v"),
                cas: Cas(s),
                flags: 0,
                expiry: 0,
                datatype: 0,
                rev_seqno: 1,
                by_seqno: Seqno(s),
                deleted: false,
                delete_source: DeleteSource::Explicit,
                delete_time: 0,
            };
            vb.apply(&sh, item, now()).expect("apply");
        }
        let p = vb.stream_request_position();
        assert_eq!(
            (p.start, p.vb_uuid, p.snap_start, p.snap_end),
            (Seqno(4), mcbp::VbUuid(0x77), Seqno(1), Seqno(10))
        );
        vb.apply_snapshot_marker(&sh, Seqno(5), Seqno(5), false)
            .expect("marker");
        let p = vb.stream_request_position();
        assert_eq!((p.snap_start, p.snap_end), (Seqno(4), Seqno(4)));
    }
}
