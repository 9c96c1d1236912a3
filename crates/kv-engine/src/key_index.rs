//! The key index of one vbucket: key → the key's current version.
//!
//! A hash table of (hash, version) entries, each pointing at the same shared
//! version the seqno index holds, so a read is one probe: no second lookup by
//! seqno. A write does one lookup (to decide) and one upsert, which replaces the
//! entry in the probe that finds it. The key lives in the version, so an entry is
//! 16 bytes, and an overwritten version (with the frame its key and value are slices
//! of) is released as soon as both indexes let go of it.
//!
//! Each entry keeps its key's hash: growing the table never reads the versions
//! (scattered in memory) to rehash them, and a probe compares hashes before keys.

use std::sync::Arc;

use hashbrown::HashTable;

use crate::vbucket::Stored;

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
    version: Arc<Stored>,
}

impl Entry {
    fn is(&self, hash: u64, key: &[u8]) -> bool {
        self.hash == hash && self.version.item.key.as_ref() == key
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

    /// The key's current version.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&Arc<Stored>> {
        let hash = self.hash(key);
        self.table
            .find(hash, |e| e.is(hash, key))
            .map(|e| &e.version)
    }

    /// Makes `version` its key's current version; returns the one it replaced.
    pub(crate) fn upsert(&mut self, version: Arc<Stored>) -> Option<Arc<Stored>> {
        let hash = self.hash(&version.item.key);
        let key: &[u8] = &version.item.key;
        if let Some(entry) = self.table.find_mut(hash, |e| e.is(hash, key)) {
            return Some(std::mem::replace(&mut entry.version, version));
        }
        self.table
            .insert_unique(hash, Entry { hash, version }, |e| e.hash);
        None
    }

    /// Removes the key; returns its version.
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<Arc<Stored>> {
        let hash = self.hash(key);
        let entry = self.table.find_entry(hash, |e| e.is(hash, key)).ok()?;
        Some(entry.remove().0.version)
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

    use bytes::Bytes;
    use mcbp::{Cas, Seqno};
    use proptest::prelude::*;

    use crate::item::{DeleteSource, Item};

    fn version(key: &[u8], seqno: u64) -> Arc<Stored> {
        Arc::new(Stored {
            item: Item {
                key: Bytes::copy_from_slice(key),
                value: Bytes::new(),
                cas: Cas(seqno),
                flags: 0,
                expiry: 0,
                datatype: 0,
                rev_seqno: 1,
                by_seqno: Seqno(seqno),
                deleted: false,
                delete_source: DeleteSource::Explicit,
                delete_time: 0,
            },
            origin: Seqno(seqno),
        })
    }

    fn seqno(v: Option<impl AsRef<Stored>>) -> Option<u64> {
        v.map(|v| v.as_ref().item.by_seqno.0)
    }

    #[test]
    fn upsert_replaces_the_version_and_releases_the_old_one() {
        let mut idx = KeyIndex::default();
        let first = version(b"key", 1);
        assert!(idx.upsert(Arc::clone(&first)).is_none());
        let old = idx.upsert(version(b"key", 2)).expect("replaced");
        assert!(Arc::ptr_eq(&old, &first));
        drop(old);
        assert_eq!(Arc::strong_count(&first), 1, "the index let go of it");
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
