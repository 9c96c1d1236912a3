//! The key index of one vbucket: key → the key's current version.
//!
//! A hash table whose entries are the versions themselves (one pointer each, 8
//! bytes), shared with the seqno index, so a read is one probe: no second lookup by
//! seqno. A write does one lookup (to decide) and one upsert, which replaces the
//! entry in the probe that finds it. An overwritten version is released as soon as
//! both indexes let go of it.
//!
//! Each version carries its key's hash ([`Stored::key_hash`], in the first cache
//! line of its allocation): growing the table reads it instead of hashing the key
//! again, and a probe compares it before the key.

use hashbrown::HashTable;

use crate::stored::key_hash;
use crate::vbucket::Stored;

#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    table: HashTable<Stored>,
}

fn is(v: &Stored, hash: u64, key: &[u8]) -> bool {
    v.key_hash() == hash && v.key() == key
}

impl KeyIndex {
    /// The key's current version.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&Stored> {
        let hash = key_hash(key);
        self.table.find(hash, |v| is(v, hash, key))
    }

    /// Makes `version` its key's current version; returns the one it replaced.
    pub(crate) fn upsert(&mut self, version: Stored) -> Option<Stored> {
        let hash = version.key_hash();
        let key: &[u8] = version.key();
        if let Some(current) = self.table.find_mut(hash, |v| is(v, hash, key)) {
            return Some(std::mem::replace(current, version));
        }
        self.table.insert_unique(hash, version, Stored::key_hash);
        None
    }

    /// Removes the key; returns its version.
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<Stored> {
        let hash = key_hash(key);
        let entry = self.table.find_entry(hash, |v| is(v, hash, key)).ok()?;
        Some(entry.remove().0)
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
        assert_eq!(seqno(idx.remove(b"key")), Some(2));
        assert!(idx.get(b"key").is_none());
        assert_eq!(idx.len(), 0);
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
                    prop_assert_eq!(seqno(idx.remove(&key)), model.remove(&key));
                }
                prop_assert_eq!(idx.len(), model.len());
            }
            for (k, s) in &model {
                prop_assert_eq!(seqno(idx.get(k)), Some(*s));
            }
        }
    }
}
