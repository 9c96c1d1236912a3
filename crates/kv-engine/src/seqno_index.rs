//! The seqno index of one vbucket: seqno → the version with that seqno, in seqno
//! order (backfills, flushes and rollbacks read ranges of it).
//!
//! Seqnos arrive in increasing order (front-end writes and replica applies both
//! take the next one), so the index is a list of sorted chunks of at most
//! [`CHUNK`] `(seqno, version)` slots and an append fills the last chunk to the
//! brim: 16 bytes per version. A `BTreeMap` filled in order keeps its nodes about
//! half full, twice that. Removing a version (it was overwritten, purged or rolled
//! back) empties its slot; a chunk more than half empty is compacted and a chunk
//! left empty is dropped, so the index stays within twice its live size plus one
//! chunk header per chunk. Out-of-order inserts (never on the write paths) are
//! still correct: they go into the chunk that owns the seqno, which splits when it
//! doubles.

use mcbp::Seqno;

use crate::vbucket::Stored;

/// Slots per chunk filled by appends (4 KiB of slots).
const CHUNK: usize = 256;

#[derive(Debug, Default)]
pub(crate) struct SeqnoIndex {
    /// Sorted and disjoint: every seqno of `chunks[i]` is below those of
    /// `chunks[i + 1]`, and `chunks[i].first` is at most its first slot's seqno.
    chunks: Vec<Chunk>,
}

#[derive(Debug)]
struct Chunk {
    /// The lowest seqno this chunk owns (seqnos from here to the next chunk's
    /// `first` belong here).
    first: Seqno,
    /// Sorted by seqno; `None` = removed.
    slots: Vec<(Seqno, Option<Stored>)>,
    live: usize,
}

impl Chunk {
    fn new(first: Seqno) -> Chunk {
        Chunk {
            first,
            slots: Vec::new(),
            live: 0,
        }
    }

    fn last_seqno(&self) -> Option<Seqno> {
        self.slots.last().map(|(s, _)| *s)
    }

    fn position(&self, seqno: Seqno) -> Result<usize, usize> {
        self.slots.binary_search_by_key(&seqno, |(s, _)| *s)
    }
}

impl SeqnoIndex {
    /// How many versions it holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.chunks.iter().map(|c| c.live).sum()
    }

    /// The chunk that owns `seqno`, if any chunk exists.
    fn owner(&self, seqno: Seqno) -> Option<usize> {
        if self.chunks.is_empty() {
            return None;
        }
        Some(
            self.chunks
                .partition_point(|c| c.first <= seqno)
                .saturating_sub(1),
        )
    }

    /// Adds `version` at `seqno`; returns the version it replaced there, if any.
    pub(crate) fn insert(&mut self, seqno: Seqno, version: Stored) -> Option<Stored> {
        // The write paths: past the end.
        let appendable = match self.chunks.last() {
            None => true,
            Some(last) => last.last_seqno().is_none_or(|l| l < seqno) && last.first <= seqno,
        };
        if appendable {
            if self.chunks.last().is_none_or(|c| c.slots.len() >= CHUNK) {
                self.chunks.push(Chunk::new(seqno));
            }
            if let Some(last) = self.chunks.last_mut() {
                last.slots.push((seqno, Some(version)));
                last.live += 1;
            }
            return None;
        }
        let i = self.owner(seqno).unwrap_or(0);
        let chunk = &mut self.chunks[i];
        chunk.first = chunk.first.min(seqno);
        match chunk.position(seqno) {
            Ok(p) => {
                let old = chunk.slots[p].1.replace(version);
                if old.is_none() {
                    chunk.live += 1;
                }
                old
            }
            Err(p) => {
                chunk.slots.insert(p, (seqno, Some(version)));
                chunk.live += 1;
                if chunk.slots.len() >= 2 * CHUNK {
                    self.split(i);
                }
                None
            }
        }
    }

    fn split(&mut self, i: usize) {
        let chunk = &mut self.chunks[i];
        let upper = chunk.slots.split_off(chunk.slots.len() / 2);
        let moved = upper.iter().filter(|(_, v)| v.is_some()).count();
        chunk.live -= moved;
        let first = upper.first().map_or(chunk.first, |(s, _)| *s);
        self.chunks.insert(
            i + 1,
            Chunk {
                first,
                slots: upper,
                live: moved,
            },
        );
    }

    /// The version at `seqno`.
    pub(crate) fn get(&self, seqno: Seqno) -> Option<&Stored> {
        let chunk = &self.chunks[self.owner(seqno)?];
        let p = chunk.position(seqno).ok()?;
        chunk.slots[p].1.as_ref()
    }

    /// Removes and returns the version at `seqno`.
    pub(crate) fn remove(&mut self, seqno: Seqno) -> Option<Stored> {
        let i = self.owner(seqno)?;
        let last = i + 1 == self.chunks.len();
        let chunk = &mut self.chunks[i];
        let p = chunk.position(seqno).ok()?;
        let old = chunk.slots[p].1.take()?;
        chunk.live -= 1;
        if chunk.live == 0 && !last {
            self.chunks.remove(i);
        } else if chunk.live * 2 < chunk.slots.len() {
            chunk.slots.retain(|(_, v)| v.is_some());
            if !last {
                chunk.slots.shrink_to_fit();
            }
        }
        Some(old)
    }

    /// The versions with seqnos of at least `from`, in seqno order.
    pub(crate) fn range_from(&self, from: Seqno) -> impl Iterator<Item = &Stored> + '_ {
        let start = self.owner(from).unwrap_or(0);
        let skip = self
            .chunks
            .get(start)
            .map_or(0, |c| c.slots.partition_point(|(s, _)| *s < from));
        self.chunks
            .get(start..)
            .unwrap_or_default()
            .iter()
            .enumerate()
            .flat_map(move |(n, c)| c.slots[if n == 0 { skip } else { 0 }..].iter())
            .filter_map(|(_, v)| v.as_ref())
    }

    /// Every version, in seqno order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &Stored> + '_ {
        self.range_from(Seqno(0))
    }

    pub(crate) fn clear(&mut self) {
        self.chunks = Vec::new();
    }

    /// Slots allocated, live or not (for tests of the memory bound).
    #[cfg(test)]
    fn slots(&self) -> usize {
        self.chunks.iter().map(|c| c.slots.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn version(seqno: u64) -> Stored {
        crate::stored::test_version(format!("k{seqno}").as_bytes(), seqno)
    }

    fn seqnos<'a>(it: impl Iterator<Item = &'a Stored>) -> Vec<u64> {
        it.map(|v| v.by_seqno().0).collect()
    }

    #[test]
    fn appends_fill_chunks_and_removals_compact_them() {
        let mut idx = SeqnoIndex::default();
        for s in 1..=10 * CHUNK as u64 {
            assert!(idx.insert(Seqno(s), version(s)).is_none());
        }
        assert_eq!(idx.chunks.len(), 10, "appends fill every chunk");
        assert_eq!(idx.slots(), 10 * CHUNK);
        // Overwrite three quarters of the keys: their old versions go.
        for s in 1..=10 * CHUNK as u64 {
            if s % 4 != 0 {
                assert_eq!(idx.remove(Seqno(s)).map(|v| v.by_seqno()), Some(Seqno(s)));
            }
        }
        assert_eq!(idx.len(), 10 * CHUNK / 4);
        assert!(
            idx.slots() <= 2 * idx.len(),
            "compacted: {} slots",
            idx.slots()
        );
        assert_eq!(
            seqnos(idx.range_from(Seqno(5))),
            (8..=10 * CHUNK as u64).step_by(4).collect::<Vec<_>>()
        );
        assert!(idx.remove(Seqno(5)).is_none(), "already gone");
    }

    #[test]
    fn emptied_chunks_are_dropped() {
        let mut idx = SeqnoIndex::default();
        for s in 1..=3 * CHUNK as u64 {
            idx.insert(Seqno(s), version(s));
        }
        for s in 1..=2 * CHUNK as u64 {
            idx.remove(Seqno(s));
        }
        assert_eq!(idx.chunks.len(), 1);
        assert_eq!(idx.values().count(), CHUNK);
        idx.clear();
        assert_eq!((idx.len(), idx.values().count()), (0, 0));
    }

    proptest! {
        /// Any mix of inserts (in order or not), removes, gets and ranges agrees
        /// with a BTreeMap.
        #[test]
        fn behaves_like_a_btreemap(
            ops in proptest::collection::vec((0u8..4, 1u64..3000), 0..2000),
        ) {
            let mut idx = SeqnoIndex::default();
            let mut model: BTreeMap<u64, ()> = BTreeMap::new();
            let mut high = 0u64;
            for (op, s) in ops {
                match op {
                    // An append, as the write paths do.
                    0 => {
                        high += 1 + s % 3;
                        prop_assert!(idx.insert(Seqno(high), version(high)).is_none());
                        model.insert(high, ());
                    }
                    // Anywhere (as a replay could).
                    1 => {
                        let old = idx.insert(Seqno(s), version(s)).map(|v| v.by_seqno().0);
                        prop_assert_eq!(old, model.insert(s, ()).map(|()| s));
                        high = high.max(s);
                    }
                    2 => {
                        let got = idx.remove(Seqno(s)).map(|v| v.by_seqno().0);
                        prop_assert_eq!(got, model.remove(&s).map(|()| s));
                    }
                    _ => {
                        prop_assert_eq!(
                            seqnos(idx.range_from(Seqno(s))),
                            model.range(s..).map(|(k, ())| *k).collect::<Vec<_>>()
                        );
                        prop_assert_eq!(idx.get(Seqno(s)).is_some(), model.contains_key(&s));
                    }
                }
                prop_assert_eq!(idx.len(), model.len());
            }
            prop_assert_eq!(seqnos(idx.values()), model.keys().copied().collect::<Vec<_>>());
        }
    }
}
