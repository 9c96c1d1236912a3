//! The key index of one vbucket: key → the key's current version.
//!
//! A hash table whose entries are the versions themselves (one pointer each, 8
//! bytes), shared with the seqno index, so a read is one probe: no second lookup by
//! seqno. A write searches once: its lookup ([`KeyIndex::find`]) also gives the
//! slot, where the new version is then put without a search
//! ([`KeyIndex::replace_at`]); a new key is inserted with one probe. An
//! overwritten version is released as soon as both indexes let go of it.
//!
//! Each version carries its key's hash ([`Stored::key_hash`], in the first cache
//! line of its allocation): moving an entry to a bigger table reads it instead of
//! hashing the key again, and a probe compares it before the key.
//!
//! **The table grows a little at a time.** A hash table that doubles all at once
//! moves every entry in one call, and each move reads a version from memory at
//! random: 10–20 ms for a table of 100 k keys, under the vbucket's lock. Keys spread
//! evenly over vbuckets, so all of a bucket's tables double within moments of each
//! other, and a replica applying one stream for them all stalled for 16 such
//! moves in a row (`bench replication` saw lag spikes of ~200 ms at 1.2, 2.4, 4.7
//! and 9.4 s into a paced run). Here a full table becomes the *old* table, a new one
//! of twice the capacity takes the inserts, and every write moves the entries of
//! [`MOVE_BUCKETS`] of the old table's buckets into the new one (and the flusher
//! moves some on each visit, [`KeyIndex::grow_while_idle`]); reads and writes look
//! in both until the old one is empty. The new table cannot fill before the old one
//! is empty: it has room for as many keys again as the old one held, and the old
//! one empties after fewer inserts than that. The price is memory: until the old
//! table is empty it is held besides the new one (a table that doubles all at once
//! frees it at once).

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;

use crate::stored::key_hash;
use crate::vbucket::Stored;

/// Buckets of the old table moved by each insert while the table grows (each holds
/// at most one entry; about 7 in 8 do): a growth lasts about 1/14 of the inserts
/// to the next one. Moved one at a time, 16 still left lag spikes of ~100 ms in a
/// paced `bench replication` (16 vbuckets growing at once); moved in groups (see
/// [`KeyIndex::move_buckets`]), they do not.
const MOVE_BUCKETS: usize = 16;

/// Buckets moved as one group (see [`KeyIndex::move_buckets`]).
const MOVE_GROUP: usize = 16;

/// Buckets moved by [`KeyIndex::grow_while_idle`]: a vbucket that stops taking
/// inserts mid-growth still finishes within seconds.
const IDLE_MOVE_BUCKETS: usize = 256;

/// Where a key's version sits, as [`KeyIndex::find`] saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    /// In the old table of a growth in progress.
    old: bool,
    bucket: usize,
}

#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    table: HashTable<Stored>,
    /// A growth in progress: the table being emptied into `table`, and the next of
    /// its buckets to move.
    old: Option<(HashTable<Stored>, usize)>,
    /// How many times the table began to grow (tests of the pre-sizing).
    #[cfg(test)]
    grew: u32,
}

fn is(v: &Stored, hash: u64, key: &[u8]) -> bool {
    v.key_hash() == hash && v.key() == key
}

fn find_in(table: &HashTable<Stored>, hash: u64, key: &[u8]) -> Option<usize> {
    table.find_bucket_index(hash, |v| is(v, hash, key))
}

impl KeyIndex {
    /// The key's current version.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&Stored> {
        self.find(key_hash(key), key).map(|(_, v)| v)
    }

    /// The current version of the key whose [`key_hash`] is `hash`, and the slot it
    /// sits in (for [`Self::replace_at`]). Taking the hash lets a write hash its key
    /// once, for this lookup and for the version it then builds.
    pub(crate) fn find(&self, hash: u64, key: &[u8]) -> Option<(Slot, &Stored)> {
        if let Some(bucket) = find_in(&self.table, hash, key) {
            let slot = Slot { old: false, bucket };
            return Some((slot, self.table.get_bucket(bucket)?));
        }
        let (old, _) = self.old.as_ref()?;
        let bucket = find_in(old, hash, key)?;
        Some((Slot { old: true, bucket }, old.get_bucket(bucket)?))
    }

    /// Makes `version` its key's current version (one probe: found and replaced, or
    /// inserted where the probe ended; a second probe of the old table while the
    /// table grows); returns the one it replaced.
    pub(crate) fn upsert(&mut self, version: Stored) -> Option<Stored> {
        let hash = version.key_hash();
        if let Some((old, _)) = self.old.as_mut() {
            if let Ok(e) = old.find_entry(hash, |v| is(v, hash, version.key())) {
                let replaced = e.remove().0;
                self.table.insert_unique(hash, version, Stored::key_hash);
                self.grow_step();
                return Some(replaced);
            }
        }
        let key: &[u8] = version.key();
        let replaced = match self
            .table
            .entry(hash, |v| is(v, hash, key), Stored::key_hash)
        {
            Entry::Occupied(mut e) => Some(std::mem::replace(e.get_mut(), version)),
            Entry::Vacant(e) => {
                e.insert(version);
                None
            }
        };
        if replaced.is_none() {
            self.grow_step();
        }
        replaced
    }

    /// One step of growth, after an insert: starts a growth when the table is
    /// full, or moves the next buckets of the old table.
    fn grow_step(&mut self) {
        match self.old.as_mut() {
            None if self.table.len() >= self.table.capacity() => {
                let room = (self.table.capacity() * 2).max(16);
                let full = std::mem::replace(&mut self.table, HashTable::with_capacity(room));
                self.old = Some((full, 0));
                #[cfg(test)]
                {
                    self.grew += 1;
                }
            }
            None => {}
            Some(_) => self.move_buckets(MOVE_BUCKETS),
        }
    }

    /// Moves the entries of up to `n` more buckets of the old table into the table;
    /// drops the old table once it is empty.
    fn move_buckets(&mut self, n: usize) {
        let Some((old, next)) = self.old.as_mut() else {
            return;
        };
        let end = old.num_buckets().min(next.saturating_add(n));
        // In groups: first take a group's versions out, then read their hashes in
        // a loop of independent loads (the reads that miss the cache overlap
        // instead of waiting for each other), then insert them.
        let mut group: [Option<(u64, Stored)>; MOVE_GROUP] = Default::default();
        let mut bucket = *next;
        while bucket < end {
            let group_end = end.min(bucket + MOVE_GROUP);
            let mut taken = 0;
            for b in bucket..group_end {
                if let Ok(e) = old.get_bucket_entry(b) {
                    group[taken] = Some((0, e.remove().0));
                    taken += 1;
                }
            }
            for (hash, v) in group[..taken].iter_mut().flatten() {
                *hash = v.key_hash();
            }
            for (hash, v) in group[..taken].iter_mut().filter_map(Option::take) {
                self.table.insert_unique(hash, v, Stored::key_hash);
            }
            bucket = group_end;
        }
        *next = end;
        if end == old.num_buckets() || old.is_empty() {
            debug_assert!(old.is_empty(), "every bucket was moved");
            self.old = None;
        }
    }

    /// Moves a share of a growth in progress along without a write (the flusher
    /// calls it on each visit), so that a table that stopped taking inserts does
    /// not keep its old table, and a second probe per lookup, for good.
    pub(crate) fn grow_while_idle(&mut self) {
        self.move_buckets(IDLE_MOVE_BUCKETS);
    }

    /// Finishes a growth in progress at once.
    fn finish_growth(&mut self) {
        self.move_buckets(usize::MAX);
    }

    /// [`Self::upsert`] for a key that [`Self::find`] saw at `slot` with no change
    /// to the index since: the slot is checked, not searched for. A slot that no
    /// longer holds the key falls back to a search, so a stale slot costs time,
    /// never correctness.
    pub(crate) fn replace_at(&mut self, slot: Slot, version: Stored) -> Option<Stored> {
        let table = if slot.old {
            self.old.as_mut().map(|(old, _)| old)
        } else {
            Some(&mut self.table)
        };
        match table.and_then(|t| t.get_bucket_mut(slot.bucket)) {
            Some(current) if current.key() == version.key() => {
                let replaced = std::mem::replace(current, version);
                if slot.old {
                    self.move_buckets(MOVE_BUCKETS);
                }
                Some(replaced)
            }
            _ => self.upsert(version),
        }
    }

    /// Removes the key whose [`key_hash`] is `hash`; returns its version.
    pub(crate) fn remove(&mut self, hash: u64, key: &[u8]) -> Option<Stored> {
        if let Ok(e) = self.table.find_entry(hash, |v| is(v, hash, key)) {
            return Some(e.remove().0);
        }
        let (old, _) = self.old.as_mut()?;
        let e = old.find_entry(hash, |v| is(v, hash, key)).ok()?;
        Some(e.remove().0)
    }

    pub(crate) fn clear(&mut self) {
        self.table.clear();
        self.old = None;
    }

    /// Makes room for `additional` more keys at once, so a table filled from a
    /// known count (a warmup, a replica's backfill) is sized once instead of
    /// growing its way there.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.finish_growth();
        self.table.reserve(additional, Stored::key_hash);
    }

    /// Gives back what a [`Self::reserve`] took beyond need: a table less than a
    /// quarter full shrinks to fit its keys.
    pub(crate) fn shrink_if_sparse(&mut self) {
        self.finish_growth();
        if self.table.len() < self.table.capacity() / 4 {
            self.table.shrink_to(self.table.len(), Stored::key_hash);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len() + self.old.as_ref().map_or(0, |(old, _)| old.len())
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.table.capacity()
    }

    /// How many times the table began to grow.
    #[cfg(test)]
    pub(crate) fn grew(&self) -> u32 {
        self.grew
    }

    #[cfg(test)]
    pub(crate) fn growing(&self) -> bool {
        self.old.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use proptest::prelude::*;

    fn version(key: &[u8], seqno: u64) -> Stored {
        crate::stored::test_version(key, seqno)
    }

    fn seqno(v: Option<impl std::borrow::Borrow<Stored>>) -> Option<u64> {
        v.map(|v| v.borrow().by_seqno().0)
    }

    #[test]
    fn upsert_replaces_the_version_and_releases_the_old_one() {
        let mut idx = KeyIndex::default();
        let first = version(b"key", 1);
        assert!(idx.upsert(first.clone()).is_none());
        let old = idx.upsert(version(b"key", 2)).expect("replaced");
        assert!(old.ptr_eq(&first));
        drop(old);
        assert!(first.is_unique(), "the index let go of it");
        assert_eq!(seqno(idx.get(b"key")), Some(2));
        assert_eq!(seqno(idx.remove(key_hash(b"key"), b"key")), Some(2));
        assert!(idx.get(b"key").is_none());
        assert_eq!(idx.len(), 0);
    }

    #[test]
    fn replace_at_uses_the_slot_find_saw_and_survives_a_stale_one() {
        let mut idx = KeyIndex::default();
        for i in 0..100u64 {
            idx.upsert(version(format!("k{i}").as_bytes(), i + 1));
        }
        let (slot, v) = idx.find(key_hash(b"k7"), b"k7").expect("present");
        assert_eq!(v.by_seqno().0, 8);
        let old = idx.replace_at(slot, version(b"k7", 500)).expect("replaced");
        assert_eq!(old.by_seqno().0, 8);
        assert_eq!(seqno(idx.get(b"k7")), Some(500));
        // A slot that now holds another key (or nothing) still replaces the right
        // entry, found by a search.
        let (other, _) = idx.find(key_hash(b"k8"), b"k8").expect("present");
        assert_eq!(seqno(idx.replace_at(other, version(b"k7", 501))), Some(500));
        assert_eq!(seqno(idx.get(b"k7")), Some(501));
        assert_eq!(seqno(idx.get(b"k8")), Some(9));
        let stale = Slot {
            old: false,
            bucket: usize::MAX,
        };
        assert!(idx.replace_at(stale, version(b"new", 1)).is_none());
        assert_eq!(seqno(idx.get(b"new")), Some(1));
        assert_eq!(idx.len(), 101);
    }

    #[test]
    fn a_reserved_table_takes_its_keys_without_growing_and_gives_back_the_rest() {
        let mut idx = KeyIndex::default();
        idx.reserve(1000);
        assert!(idx.capacity() >= 1000);
        for i in 0..1000u64 {
            idx.upsert(version(format!("k{i}").as_bytes(), i + 1));
        }
        assert_eq!(idx.grew(), 0, "no rehash on the way to the reserved size");
        idx.upsert(version(b"one more than reserved", 5000));
        let mut unreserved = KeyIndex::default();
        for i in 0..1000u64 {
            unreserved.upsert(version(format!("k{i}").as_bytes(), i + 1));
        }
        assert!(unreserved.grew() > 5, "{}", unreserved.grew());

        let mut sparse = KeyIndex::default();
        sparse.reserve(100_000);
        for i in 0..10u64 {
            sparse.upsert(version(format!("k{i}").as_bytes(), i + 1));
        }
        let reserved = sparse.capacity();
        sparse.shrink_if_sparse();
        assert!(sparse.capacity() < reserved / 100, "{}", sparse.capacity());
        assert_eq!(seqno(sparse.get(b"k3")), Some(4));
        idx.shrink_if_sparse();
        assert!(idx.capacity() >= 1001, "a full table is left alone");
    }

    /// A full table grows over the next writes, a few buckets each, never all at
    /// once; every key stays reachable throughout.
    #[test]
    fn a_full_table_grows_a_few_entries_per_write() {
        let mut idx = KeyIndex::default();
        let mut n = 0u64;
        let add = |idx: &mut KeyIndex, n: &mut u64| {
            *n += 1;
            idx.upsert(version(format!("k{n}").as_bytes(), *n));
        };
        while idx.grew() < 10 {
            add(&mut idx, &mut n);
        }
        // The growth just began: the whole old table is still to move.
        assert!(idx.growing());
        let old_len = |idx: &KeyIndex| idx.old.as_ref().map_or(0, |(o, _)| o.len());
        let start = old_len(&idx);
        assert!(start > 3000, "{start}");
        let mut writes = 0;
        while idx.growing() {
            let before = old_len(&idx);
            add(&mut idx, &mut n);
            assert!(
                before - old_len(&idx) <= MOVE_BUCKETS,
                "one write moves a few"
            );
            writes += 1;
        }
        assert!(
            writes > start / MOVE_BUCKETS,
            "{writes} writes for {start} keys"
        );
        assert!(
            idx.capacity() > idx.len(),
            "the new table did not fill first"
        );
        for i in 1..=n {
            let key = format!("k{i}");
            assert_eq!(seqno(idx.get(key.as_bytes())), Some(i), "{key}");
        }
        // A table that stops taking inserts mid-growth finishes while idle.
        while idx.grew() < 11 {
            add(&mut idx, &mut n);
        }
        let buckets = idx.old.as_ref().map_or(0, |(o, _)| o.num_buckets());
        let mut visits = 0;
        while idx.growing() {
            idx.grow_while_idle();
            visits += 1;
        }
        assert_eq!(visits, buckets.div_ceil(IDLE_MOVE_BUCKETS));
        // A write to a key still in the old table replaces it there (via its slot).
        while idx.grew() < 12 {
            add(&mut idx, &mut n);
        }
        let (slot, _) = idx.find(key_hash(b"k1"), b"k1").expect("present");
        assert!(slot.old);
        assert_eq!(seqno(idx.replace_at(slot, version(b"k1", 99_999))), Some(1));
        assert_eq!(seqno(idx.get(b"k1")), Some(99_999));
        assert_eq!(seqno(idx.remove(key_hash(b"k2"), b"k2")), Some(2));
        assert!(idx.get(b"k2").is_none());
    }

    proptest! {
        /// Any sequence of upserts, slot replacements and removes agrees with a
        /// plain map, through many growths.
        #[test]
        fn behaves_like_a_map_while_growing(ops in proptest::collection::vec((0u8..3, 0u16..3000, 1u64..1000), 0..4000)) {
            let mut idx = KeyIndex::default();
            let mut model: HashMap<Vec<u8>, u64> = HashMap::new();
            for (op, k, s) in ops {
                let key = format!("k{k}").into_bytes();
                let hash = key_hash(&key);
                match op {
                    0 => prop_assert_eq!(seqno(idx.upsert(version(&key, s))), model.insert(key, s)),
                    1 => prop_assert_eq!(seqno(idx.remove(hash, &key)), model.remove(&key)),
                    _ => {
                        let replaced = match idx.find(hash, &key) {
                            Some((slot, _)) => idx.replace_at(slot, version(&key, s)),
                            None => idx.upsert(version(&key, s)),
                        };
                        prop_assert_eq!(seqno(replaced), model.insert(key, s));
                    }
                }
                prop_assert_eq!(idx.len(), model.len());
            }
            for (k, s) in &model {
                prop_assert_eq!(seqno(idx.get(k)), Some(*s));
            }
        }

        /// Any sequence of upserts and removes agrees with a plain map.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec((any::<bool>(), 0u8..40, 1u64..1000), 0..400)) {
            let mut idx = KeyIndex::default();
            let mut model: HashMap<Vec<u8>, u64> = HashMap::new();
            for (upsert, k, s) in ops {
                let key = format!("k{k}").into_bytes();
                if upsert {
                    prop_assert_eq!(seqno(idx.upsert(version(&key, s))), model.insert(key, s));
                } else {
                    prop_assert_eq!(seqno(idx.remove(key_hash(&key), &key)), model.remove(&key));
                }
                prop_assert_eq!(idx.len(), model.len());
            }
            for (k, s) in &model {
                prop_assert_eq!(seqno(idx.get(k)), Some(*s));
            }
        }
    }
}
