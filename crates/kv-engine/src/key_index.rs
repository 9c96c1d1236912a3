//! The key index of one vbucket: key → seqno of the key's current version.
//!
//! A hash table of `(key, seqno)` entries, so a write can replace a key's entry,
//! key included, in the probe that finds it: a SET or a replica apply costs one
//! lookup (to decide) and one upsert, where a map API needs a lookup, a remove and
//! an insert. The stored key is always the newest version's, so an overwritten
//! version's key (a slice of the frame it arrived in) is not kept alive by the index.
//! Each entry keeps its key's hash: growing the table then never reads the keys
//! (scattered in memory) to rehash them, and a probe compares hashes before bytes.

use bytes::Bytes;
use hashbrown::HashTable;
use mcbp::Seqno;

/// Keys come from clients, so the hasher must resist flooding; aHash is randomly
/// keyed and several times faster than SipHash on short keys.
#[derive(Debug)]
pub(crate) struct KeyIndex {
    table: HashTable<Entry>,
    hasher: ahash::RandomState,
}

#[derive(Debug)]
struct Entry {
    hash: u64,
    key: Bytes,
    seqno: Seqno,
}

impl Entry {
    fn is(&self, hash: u64, key: &[u8]) -> bool {
        self.hash == hash && self.key.as_ref() == key
    }
}

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex {
            table: HashTable::new(),
            hasher: ahash::RandomState::new(),
        }
    }
}

impl KeyIndex {
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The seqno of the key's current version.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Seqno> {
        let hash = self.hash(key);
        self.table.find(hash, |e| e.is(hash, key)).map(|e| e.seqno)
    }

    /// Points `key` at `seqno` (the entry takes this key); returns the seqno it
    /// pointed at before.
    pub(crate) fn upsert(&mut self, key: Bytes, seqno: Seqno) -> Option<Seqno> {
        let hash = self.hash(&key);
        if let Some(entry) = self.table.find_mut(hash, |e| e.is(hash, &key)) {
            let old = entry.seqno;
            entry.key = key;
            entry.seqno = seqno;
            return Some(old);
        }
        self.table
            .insert_unique(hash, Entry { hash, key, seqno }, |e| e.hash);
        None
    }

    /// Removes the key; returns the seqno it pointed at.
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<Seqno> {
        let hash = self.hash(key);
        let entry = self.table.find_entry(hash, |e| e.is(hash, key)).ok()?;
        Some(entry.remove().0.seqno)
    }

    pub(crate) fn clear(&mut self) {
        self.table.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use proptest::prelude::*;

    #[test]
    fn upsert_replaces_the_stored_key_with_the_newest_one() {
        let mut idx = KeyIndex::default();
        let first = Bytes::from(b"key".to_vec());
        assert_eq!(idx.upsert(first.clone(), Seqno(1)), None);
        let second = Bytes::from(b"key".to_vec());
        assert_eq!(idx.upsert(second.clone(), Seqno(2)), Some(Seqno(1)));
        assert_eq!(idx.get(b"key"), Some(Seqno(2)));
        let hash = idx.hash(b"key");
        let stored = idx
            .table
            .find(hash, |e| e.is(hash, b"key"))
            .map(|e| e.key.as_ptr());
        assert_eq!(stored, Some(second.as_ptr()), "the old key is released");
        assert_eq!(idx.remove(b"key"), Some(Seqno(2)));
        assert_eq!((idx.get(b"key"), idx.len()), (None, 0));
    }

    proptest! {
        /// Any sequence of upserts and removes agrees with a plain map.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec((any::<bool>(), 0u8..40, 1u64..1000), 0..400)) {
            let mut idx = KeyIndex::default();
            let mut model: HashMap<Vec<u8>, Seqno> = HashMap::new();
            for (upsert, k, s) in ops {
                let key = format!("k{k}").into_bytes();
                if upsert {
                    prop_assert_eq!(
                        idx.upsert(Bytes::from(key.clone()), Seqno(s)),
                        model.insert(key, Seqno(s))
                    );
                } else {
                    prop_assert_eq!(idx.remove(&key), model.remove(&key));
                }
                prop_assert_eq!(idx.len(), model.len());
            }
            for (k, s) in &model {
                prop_assert_eq!(idx.get(k), Some(*s));
            }
        }
    }
}
