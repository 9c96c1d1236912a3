//! One producer stream (`ActiveStream`): what a vbucket sends next on a DCP producer
//! connection (`mcbp-dcp.md` §6.8–6.13, §7.4, §7.9).
//!
//! No I/O and no clock: the stream reads the engine (a synchronous, deterministic
//! dependency) and returns what to emit; the connection encodes it, counts flow
//! control and writes it.
//!
//! Snapshots come from the engine in batches: each batch of items with seqnos above
//! the last one sent becomes one snapshot whose end is the seqno of the batch's last
//! item. The engine keeps only each key's current version, so a snapshot read in
//! one piece is the only way to promise the consumer that the item at the marker's
//! end seqno will arrive (which ACK markers rely on).

use std::collections::VecDeque;

use kv_engine::{Bucket, Item};
use mcbp::dcp::{EndReason, MarkerFlags, StreamFlags};
use mcbp::{Opaque, Seqno, VbState, Vbid};

/// What a stream wants on the wire next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Emit {
    /// DCP_SNAPSHOT_MARKER (V1).
    Marker {
        start: Seqno,
        end: Seqno,
        flags: MarkerFlags,
    },
    /// A mutation, deletion or expiration (the connection picks the opcode).
    Item(Item),
    /// DCP_SET_VBUCKET_STATE (takeover); the stream waits for its answer.
    SetVbState(VbState),
    /// DCP_STREAM_END; the stream is over.
    End(EndReason),
}

/// Where a stream is.
///
/// ```text
///  STREAM_REQ accepted
///        |
///        v
///  Backfilling --(sent up to the high seqno at request time: DISK markers)--> InMemory
///        |                                                                       |
///        |            end seqno reached (not takeover) -> End(OK)                |
///        |                                                 takeover: caught up, every ACK marker acked
///        |                                                                       v
///        |                              TakeoverPending: SET_VBUCKET_STATE(pending) sent, waiting
///        |                                                                       | answer: local vbucket -> dead
///        |                                                                       v
///        |                              TakeoverDead: send what raced in; caught up + acked
///        |                                                                       v
///        |                              TakeoverActive: SET_VBUCKET_STATE(active) sent, waiting
///        |                                                                       | answer -> End(OK)
///        v                                                                       v
///   any phase: vbucket state change or rollback -> End(STATE_CHANGED)          Ended
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Backfilling,
    InMemory,
    TakeoverPending,
    TakeoverDead,
    TakeoverActive,
    Ended,
}

/// A producer stream for one vbucket.
#[derive(Debug)]
pub(crate) struct ActiveStream {
    pub(crate) vb: Vbid,
    pub(crate) opaque: Opaque,
    flags: StreamFlags,
    start: Seqno,
    end: Seqno,
    backfill_end: Seqno,
    last_sent: Seqno,
    first_marker: bool,
    queue: VecDeque<Item>,
    phase: Phase,
    unacked_markers: u32,
    epoch: u64,
    expected_state: VbState,
}

impl ActiveStream {
    /// A stream accepted at `start` whose vbucket's high seqno was `high`; `state`
    /// and `epoch` are the vbucket's at acceptance (a change of either ends it).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        vb: Vbid,
        opaque: Opaque,
        flags: StreamFlags,
        start: Seqno,
        end: Seqno,
        high: Seqno,
        state: VbState,
        epoch: u64,
    ) -> ActiveStream {
        ActiveStream {
            vb,
            opaque,
            flags,
            start,
            end,
            backfill_end: high,
            last_sent: start,
            first_marker: true,
            queue: VecDeque::new(),
            phase: if start < high {
                Phase::Backfilling
            } else {
                Phase::InMemory
            },
            unacked_markers: 0,
            epoch,
            expected_state: state,
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    pub(crate) fn last_sent(&self) -> Seqno {
        self.last_sent
    }

    pub(crate) fn backfill_end(&self) -> Seqno {
        self.backfill_end
    }

    pub(crate) fn end(&self) -> Seqno {
        self.end
    }

    fn takeover(&self) -> bool {
        self.flags.has(StreamFlags::TAKEOVER)
    }

    /// A takeover stream still sending while its vbucket accepts front-end writes
    /// (before SET_VBUCKET_STATE(pending) went out): the phase that
    /// `dcp_takeover_max_time` bounds (§7.9 step 5).
    pub(crate) fn takeover_sending(&self) -> bool {
        self.takeover() && matches!(self.phase, Phase::Backfilling | Phase::InMemory)
    }

    /// Whether the vbucket changed under the stream (§7.8: any state change or a
    /// rollback ends producer streams with STATE_CHANGED).
    pub(crate) fn vbucket_changed(&self, state: Option<VbState>, epoch: u64) -> bool {
        self.phase != Phase::Ended && (epoch != self.epoch || state != Some(self.expected_state))
    }

    /// The stream itself changed its vbucket's state (takeover): adopt it.
    pub(crate) fn rebase(&mut self, state: VbState, epoch: u64) {
        self.expected_state = state;
        self.epoch = epoch;
    }

    /// Ends the stream from outside (state change, close).
    pub(crate) fn kill(&mut self) {
        self.phase = Phase::Ended;
        self.queue.clear();
    }

    /// An ACK marker was acknowledged.
    pub(crate) fn marker_acked(&mut self) {
        self.unacked_markers = self.unacked_markers.saturating_sub(1);
    }

    /// The consumer answered our SET_VBUCKET_STATE. Returns the state the local
    /// vbucket must take now (dead after the pending answer), or `Some(End)` through
    /// [`ActiveStream::next`] after the active answer.
    pub(crate) fn set_state_acked(&mut self) -> Option<VbState> {
        match self.phase {
            Phase::TakeoverPending => {
                self.phase = Phase::TakeoverDead;
                Some(VbState::Dead)
            }
            Phase::TakeoverActive => {
                self.phase = Phase::Ended;
                None
            }
            _ => None,
        }
    }

    /// Whether the active answer completed the takeover (the connection then sends
    /// STREAM_END(OK) at once).
    pub(crate) fn takeover_done(&self) -> bool {
        self.takeover() && self.phase == Phase::Ended
    }

    /// The next thing to send, reading at most `batch` items from the engine when
    /// the current snapshot is exhausted. `None` = nothing now (caught up, or
    /// waiting for an answer).
    pub(crate) fn next(&mut self, bucket: &Bucket, batch: usize) -> Option<Emit> {
        match self.phase {
            Phase::Ended | Phase::TakeoverPending | Phase::TakeoverActive => return None,
            Phase::Backfilling | Phase::InMemory | Phase::TakeoverDead => {}
        }
        if let Some(item) = self.queue.pop_front() {
            self.last_sent = item.by_seqno;
            if self.phase == Phase::Backfilling && self.last_sent >= self.backfill_end {
                self.phase = Phase::InMemory;
            }
            return Some(Emit::Item(item));
        }
        if self.last_sent >= self.end {
            self.phase = Phase::Ended;
            return Some(Emit::End(EndReason::Ok));
        }
        let Ok(read) = bucket.backfill(self.vb, self.last_sent, batch.max(1)) else {
            self.phase = Phase::Ended;
            return Some(Emit::End(EndReason::StateChanged));
        };
        let beyond_end = read.items.first().is_some_and(|i| i.by_seqno > self.end);
        let end = self.end;
        let items: VecDeque<Item> = read
            .items
            .into_iter()
            .take_while(|i| i.by_seqno <= end)
            .collect();
        let Some(last) = items.back().map(|i| i.by_seqno) else {
            if beyond_end {
                // Everything up to the end seqno was sent (its own item may have been
                // superseded by a newer version of the key).
                self.phase = Phase::Ended;
                return Some(Emit::End(EndReason::Ok));
            }
            if self.phase == Phase::Backfilling {
                self.phase = Phase::InMemory;
            }
            if self.takeover() && self.unacked_markers == 0 {
                match self.phase {
                    Phase::InMemory => {
                        self.phase = Phase::TakeoverPending;
                        return Some(Emit::SetVbState(VbState::Pending));
                    }
                    Phase::TakeoverDead => {
                        self.phase = Phase::TakeoverActive;
                        return Some(Emit::SetVbState(VbState::Active));
                    }
                    _ => {}
                }
            }
            return None;
        };
        let mut flags = if self.phase == Phase::Backfilling {
            MarkerFlags::DISK
        } else {
            MarkerFlags::MEMORY
        } | MarkerFlags::CHECKPOINT;
        if self.takeover() {
            flags |= MarkerFlags::ACK;
            self.unacked_markers += 1;
        }
        let start = if self.first_marker {
            self.start
        } else {
            Seqno(self.last_sent.0 + 1)
        };
        self.first_marker = false;
        self.queue = items;
        Some(Emit::Marker {
            start,
            end: last,
            flags: MarkerFlags(flags),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kv_engine::{BucketConfig, Document, StoreOp, UnixTime};
    use mcbp::Cas;

    pub(crate) fn bucket(dir: &std::path::Path) -> Bucket {
        let mut c = BucketConfig::new("b", dir);
        c.num_vbuckets = 4;
        c.rng_seed = Some(7);
        let b = Bucket::open(c).expect("bucket opens");
        b.set_state(Vbid(0), VbState::Active).expect("state");
        b.set_state(Vbid(1), VbState::Replica).expect("state");
        b
    }

    pub(crate) fn put(b: &Bucket, key: &str) -> Seqno {
        b.store(
            Vbid(0),
            StoreOp::Set,
            Document {
                key: bytes::Bytes::copy_from_slice(key.as_bytes()),
                value: bytes::Bytes::from_static(b"v"),
                flags: 0,
                expiry: 0,
                datatype: 0,
            },
            Cas(0),
            UnixTime::from_secs(1_700_000_000),
        )
        .expect("store")
        .seqno
    }

    fn stream(flags: u32, start: u64, end: u64, high: Seqno) -> ActiveStream {
        ActiveStream::new(
            Vbid(0),
            Opaque(9),
            StreamFlags(flags),
            Seqno(start),
            Seqno(end),
            high,
            VbState::Active,
            0,
        )
    }

    fn drain(s: &mut ActiveStream, b: &Bucket) -> Vec<Emit> {
        let mut v = Vec::new();
        while let Some(e) = s.next(b, 2) {
            v.push(e);
            if v.len() > 100 {
                panic!("stream never went idle");
            }
        }
        v
    }

    /// §6.8: backfill uses DISK markers, later snapshots MEMORY markers; each marker's
    /// end is an item that is sent.
    #[test]
    fn backfill_sends_disk_snapshots_then_memory_snapshots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = bucket(dir.path());
        for k in ["a", "b", "c"] {
            put(&b, k);
        }
        let mut s = stream(0, 0, u64::MAX, Seqno(3));
        let out = drain(&mut s, &b);
        let markers: Vec<_> = out
            .iter()
            .filter_map(|e| match e {
                Emit::Marker { start, end, flags } => Some((start.0, end.0, flags.0)),
                _ => None,
            })
            .collect();
        let disk = MarkerFlags::DISK | MarkerFlags::CHECKPOINT;
        assert_eq!(markers, vec![(0, 2, disk), (3, 3, disk)]);
        assert_eq!(s.phase(), Phase::InMemory);
        put(&b, "d");
        let out = drain(&mut s, &b);
        assert!(matches!(
            out[0],
            Emit::Marker { start: Seqno(4), end: Seqno(4), flags }
                if flags.0 == MarkerFlags::MEMORY | MarkerFlags::CHECKPOINT
        ));
        assert!(matches!(&out[1], Emit::Item(i) if i.by_seqno == Seqno(4)));
    }

    /// §6.7 reason 0: the end seqno reached ends the stream, even when the item at
    /// the end seqno was superseded by a newer version of its key.
    #[test]
    fn end_seqno_reached_ends_the_stream_ok_even_if_that_item_was_deduplicated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = bucket(dir.path());
        put(&b, "a");
        put(&b, "b");
        put(&b, "b"); // seqno 2 is gone, 3 holds b
        let mut s = stream(0, 0, 2, Seqno(3));
        let out = drain(&mut s, &b);
        assert_eq!(out.last(), Some(&Emit::End(EndReason::Ok)));
        assert!(out
            .iter()
            .all(|e| !matches!(e, Emit::Item(i) if i.by_seqno > Seqno(2))));
        assert_eq!(s.next(&b, 2), None);
    }

    /// §7.9: ACK markers, SET_VBUCKET_STATE(pending) only once every marker is
    /// acknowledged, local vbucket dead on its answer, the rest, then (active).
    #[test]
    fn takeover_waits_for_marker_acks_then_pending_then_dead_then_active() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = bucket(dir.path());
        put(&b, "a");
        let mut s = stream(StreamFlags::TAKEOVER, 0, u64::MAX, Seqno(1));
        let out = drain(&mut s, &b);
        assert!(matches!(out[0], Emit::Marker { flags, .. } if flags.has(MarkerFlags::ACK)));
        assert_eq!(out.len(), 2, "no state message before the marker ack");
        s.marker_acked();
        assert_eq!(s.next(&b, 2), Some(Emit::SetVbState(VbState::Pending)));
        assert_eq!(s.next(&b, 2), None, "waits for the answer");
        put(&b, "raced"); // accepted before the vbucket turned dead
        assert_eq!(s.set_state_acked(), Some(VbState::Dead));
        b.set_state(Vbid(0), VbState::Dead).expect("state");
        s.rebase(VbState::Dead, 1);
        assert!(!s.vbucket_changed(Some(VbState::Dead), 1));
        let out = drain(&mut s, &b);
        assert!(matches!(&out[1], Emit::Item(i) if i.key.as_ref() == b"raced"));
        assert_eq!(out.len(), 2);
        s.marker_acked();
        assert_eq!(s.next(&b, 2), Some(Emit::SetVbState(VbState::Active)));
        assert_eq!(s.set_state_acked(), None);
        assert!(s.takeover_done());
    }

    /// §7.8: any state change (or a rollback, which bumps the epoch) ends the stream.
    #[test]
    fn a_state_change_or_new_epoch_is_noticed() {
        let s = stream(0, 0, u64::MAX, Seqno(0));
        assert!(!s.vbucket_changed(Some(VbState::Active), 0));
        assert!(s.vbucket_changed(Some(VbState::Replica), 0));
        assert!(s.vbucket_changed(Some(VbState::Active), 1));
        assert!(s.vbucket_changed(None, 0));
    }
}
