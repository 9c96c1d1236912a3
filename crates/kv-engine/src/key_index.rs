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
//! line of its allocation): growing the table reads it instead of hashing the key
//! again, and a probe compares it before the key.

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;

use crate::stored::key_hash;
use crate::vbucket::Stored;

#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    table: HashTable<Stored>,
    /// How many times an insert grew the table (tests of the pre-sizing).
    #[cfg(test)]
    grew: u32,
}

fn is(v: &Stored, hash: u64, key: &[u8]) -> bool {
    v.key_hash() == hash && v.key() == key
}

impl KeyIndex {
    /// The key's current version.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&Stored> {
        self.find(key_hash(key), key).map(|(_, v)| v)
    }

    /// The current version of the key whose [`key_hash`] is `hash`, and the slot it
    /// sits in (for [`Self::replace_at`]). Taking the hash lets a write hash its key
    /// once, for this lookup and for the version it then builds.
    pub(crate) fn find(&self, hash: u64, key: &[u8]) -> Option<(usize, &Stored)> {
        let slot = self.table.find_bucket_index(hash, |v| is(v, hash, key))?;
        Some((slot, self.table.get_bucket(slot)?))
    }

    /// Makes `version` its key's current version (one probe: found and replaced, or
    /// inserted where the probe ended); returns the one it replaced.
    pub(crate) fn upsert(&mut self, version: Stored) -> Option<Stored> {
        let hash = version.key_hash();
        let key: &[u8] = version.key();
        #[cfg(test)]
        let capacity = self.table.capacity();
        let old = match self
            .table
            .entry(hash, |v| is(v, hash, key), Stored::key_hash)
        {
            Entry::Occupied(mut e) => Some(std::mem::replace(e.get_mut(), version)),
            Entry::Vacant(e) => {
                e.insert(version);
                None
            }
        };
        #[cfg(test)]
        {
            self.grew += u32::from(self.table.capacity() > capacity);
        }
        old
    }

    /// [`Self::upsert`] for a key that [`Self::find`] saw at `slot` with no change
    /// to the table since: the slot is checked, not searched for. A slot that no
    /// longer holds the key falls back to a search, so a stale slot costs time,
    /// never correctness.
    pub(crate) fn replace_at(&mut self, slot: usize, version: Stored) -> Option<Stored> {
        match self.table.get_bucket_mut(slot) {
            Some(current) if current.key() == version.key() => {
                Some(std::mem::replace(current, version))
            }
            _ => self.upsert(version),
        }
    }

    /// Removes the key whose [`key_hash`] is `hash`; returns its version.
    pub(crate) fn remove(&mut self, hash: u64, key: &[u8]) -> Option<Stored> {
        let entry = self.table.find_entry(hash, |v| is(v, hash, key)).ok()?;
        Some(entry.remove().0)
    }

    pub(crate) fn clear(&mut self) {
        self.table.clear();
    }

    /// Makes room for `additional` more keys at once, so a table filled from a
    /// known count (a warmup, a replica's backfill) is sized once instead of
    /// doubling and rehashing its way there.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.table.reserve(additional, Stored::key_hash);
    }

    /// Gives back what a [`Self::reserve`] took beyond need: a table less than a
    /// quarter full shrinks to fit its keys.
    pub(crate) fn shrink_if_sparse(&mut self) {
        if self.table.len() < self.table.capacity() / 4 {
            self.table.shrink_to(self.table.len(), Stored::key_hash);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.table.capacity()
    }

    /// How many inserts had to grow the table.
    #[cfg(test)]
    pub(crate) fn grew(&self) -> u32 {
        self.grew
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
        assert!(idx.replace_at(usize::MAX, version(b"new", 1)).is_none());
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

    proptest! {
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
