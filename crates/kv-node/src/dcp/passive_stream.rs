//! One consumer stream (`PassiveStream`): the per-vbucket state of a DCP consumer
//! connection (`mcbp-dcp.md` §7.2, §7.5, §7.8; `replication-layer.md` §10.2–10.5).
//! Pure bookkeeping; [`super::consumer::ConsumerConn`] drives it.

use std::collections::VecDeque;

use mcbp::dcp::StreamFlags;
use mcbp::{Opaque, Seqno, Vbid};

/// Where a passive stream is.
///
/// ```text
///  ADD_STREAM accepted, STREAM_REQ(W) sent
///        |
///        v
///  AwaitingStreamReq --ROLLBACK(r)--> RollingBack --rolled back: STREAM_REQ(W) again--+
///        |      ^                                                                    |
///        |      +--------------------------------------------------------------------+
///        |--SUCCESS: failover log adopted, ADD_STREAM answered--> Reading --STREAM_END--> (removed)
///        |
///  any state --CLOSE_STREAM / refused / vbucket gone--> Dead --STREAM_END(W)--> (removed)
///                                                        (messages absorbed meanwhile)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PState {
    AwaitingStreamReq,
    RollingBack,
    Reading,
    Dead,
}

/// A consumer stream for one vbucket.
#[derive(Debug)]
pub(crate) struct PassiveStream {
    pub(crate) vb: Vbid,
    /// The stream opaque W: the header opaque of our STREAM_REQ.
    pub(crate) opaque: Opaque,
    /// The ADD_STREAM's opaque, echoed in its answer.
    pub(crate) add_opaque: Opaque,
    pub(crate) flags: StreamFlags,
    pub(crate) state: PState,
    /// Whether the ADD_STREAM got its one answer.
    pub(crate) answered: bool,
    /// The start seqno of the last STREAM_REQ sent.
    pub(crate) requested_start: Seqno,
    /// End seqnos of ACK markers not yet answered, oldest first.
    pending_acks: VecDeque<Seqno>,
    /// End of the initial disk snapshot being received, if any (§7.4 ETMPFAIL).
    pub(crate) initial_disk_end: Option<Seqno>,
    /// Last seqno applied.
    pub(crate) last_seqno: Seqno,
}

impl PassiveStream {
    pub(crate) fn new(vb: Vbid, opaque: Opaque, add_opaque: Opaque, flags: StreamFlags) -> Self {
        PassiveStream {
            vb,
            opaque,
            add_opaque,
            flags,
            state: PState::AwaitingStreamReq,
            answered: false,
            requested_start: Seqno(0),
            pending_acks: VecDeque::new(),
            initial_disk_end: None,
            last_seqno: Seqno(0),
        }
    }

    /// Not closed or failed (a dead stream is replaced by a new ADD_STREAM).
    pub(crate) fn is_live(&self) -> bool {
        self.state != PState::Dead
    }

    /// Whether the ADD_STREAM still awaits the STREAM_REQ outcome.
    pub(crate) fn is_pending(&self) -> bool {
        matches!(self.state, PState::AwaitingStreamReq | PState::RollingBack)
    }

    /// A snapshot marker ending at `end` arrived. Returns how many earlier ACK
    /// markers are now complete (a new marker means the previous snapshot ended);
    /// an ACK marker is remembered until its end seqno is processed.
    pub(crate) fn on_marker(&mut self, end: Seqno, ack: bool) -> usize {
        let due = self.pending_acks.len();
        self.pending_acks.clear();
        if ack {
            if end <= self.last_seqno {
                return due + 1;
            }
            self.pending_acks.push_back(end);
        }
        due
    }

    /// The item with `seqno` was applied. Returns how many ACK markers are due.
    pub(crate) fn on_item(&mut self, seqno: Seqno) -> usize {
        self.last_seqno = seqno;
        let mut due = 0;
        while self.pending_acks.front().is_some_and(|e| *e <= seqno) {
            self.pending_acks.pop_front();
            due += 1;
        }
        due
    }

    /// Marks the stream dead; pending ACKs are dropped (the producer's stream is
    /// going away too).
    pub(crate) fn kill(&mut self) {
        self.state = PState::Dead;
        self.pending_acks.clear();
        self.initial_disk_end = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> PassiveStream {
        PassiveStream::new(Vbid(1), Opaque(7), Opaque(1), StreamFlags(0))
    }

    /// §6.8: an ACK marker is answered once the item at its end seqno is processed.
    #[test]
    fn ack_marker_is_due_once_its_end_seqno_is_processed() {
        let mut p = s();
        assert_eq!(p.on_marker(Seqno(3), true), 0);
        assert_eq!(p.on_item(Seqno(1)), 0);
        assert_eq!(p.on_item(Seqno(3)), 1);
        assert_eq!(p.on_item(Seqno(4)), 0, "answered once");
    }

    /// A new marker completes the previous snapshot, even if its end item never came.
    #[test]
    fn a_new_marker_completes_earlier_ack_markers() {
        let mut p = s();
        assert_eq!(p.on_marker(Seqno(5), true), 0);
        assert_eq!(p.on_item(Seqno(4)), 0);
        assert_eq!(p.on_marker(Seqno(9), false), 1);
        assert_eq!(
            p.on_marker(Seqno(2), true),
            1,
            "already processed: due at once"
        );
    }

    /// §7.8: a closed stream stays registered but is dead; pending states are distinct.
    #[test]
    fn closing_kills_and_pending_covers_rollback() {
        let mut p = s();
        assert!(p.is_pending() && p.is_live());
        p.state = PState::RollingBack;
        assert!(p.is_pending());
        p.kill();
        assert!(!p.is_live() && !p.is_pending());
    }
}
