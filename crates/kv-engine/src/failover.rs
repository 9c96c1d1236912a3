//! Failover logs and the producer's rollback decision (`mcbp-dcp.md` §7.5).

use mcbp::{Seqno, VbUuid};

/// Maximum entries a failover log keeps (`mcbp-dcp.md` §10).
pub const MAX_FAILOVER_ENTRIES: usize = 25;

/// One history branch: the vbucket took `vb_uuid` when its high seqno was `seqno`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FailoverEntry {
    /// The branch id.
    pub vb_uuid: VbUuid,
    /// The high seqno when the branch began.
    pub seqno: Seqno,
}

/// A vbucket's failover log, newest entry first, at most [`MAX_FAILOVER_ENTRIES`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailoverLog {
    entries: Vec<FailoverEntry>,
}

impl FailoverLog {
    /// An empty log.
    #[must_use]
    pub fn new() -> FailoverLog {
        FailoverLog::default()
    }

    /// A log holding `entries` (newest first); entries beyond the cap are dropped
    /// from the old end.
    #[must_use]
    pub fn from_entries(mut entries: Vec<FailoverEntry>) -> FailoverLog {
        entries.truncate(MAX_FAILOVER_ENTRIES);
        FailoverLog { entries }
    }

    /// The entries, newest first.
    #[must_use]
    pub fn entries(&self) -> &[FailoverEntry] {
        &self.entries
    }

    /// The newest entry.
    #[must_use]
    pub fn newest(&self) -> Option<FailoverEntry> {
        self.entries.first().copied()
    }

    /// The newest entry's uuid, or 0 when the log is empty.
    #[must_use]
    pub fn current_uuid(&self) -> VbUuid {
        self.newest().map_or(VbUuid(0), |e| e.vb_uuid)
    }

    /// Number of entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the log has no entries.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The wire form of §6.5/§6.6: `{u64 vb_uuid, u64 seqno}` big-endian per entry,
    /// newest first.
    #[must_use]
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 16);
        for e in &self.entries {
            out.extend_from_slice(&e.vb_uuid.0.to_be_bytes());
            out.extend_from_slice(&e.seqno.0.to_be_bytes());
        }
        out
    }

    /// Pushes a new newest entry, dropping the oldest beyond the cap.
    pub(crate) fn push(&mut self, entry: FailoverEntry) {
        self.entries.insert(0, entry);
        self.entries.truncate(MAX_FAILOVER_ENTRIES);
    }

    /// Drops entries whose seqno lies beyond `high` (after a rollback, §7.5).
    pub(crate) fn drop_above(&mut self, high: Seqno) {
        self.entries.retain(|e| e.seqno <= high);
    }
}

/// What a consumer sent in its stream request, as the rollback decision needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StreamStart {
    /// Start seqno: the last seqno the consumer has.
    pub start: Seqno,
    /// The consumer's vb_uuid (0 = no history).
    pub vb_uuid: VbUuid,
    /// Snapshot start of the consumer's last marker.
    pub snap_start: Seqno,
    /// Snapshot end of the consumer's last marker.
    pub snap_end: Seqno,
    /// STRICT_VBUUID flag: a start of 0 must still match a uuid.
    pub strict_vbuuid: bool,
    /// IGNORE_PURGED_TOMBSTONES flag: the purge seqno is taken as 0.
    pub ignore_purged: bool,
    /// `purge_seqno` from the request's JSON value, if the consumer sent one.
    pub consumer_purge_seqno: Option<Seqno>,
}

/// The producer's answer to a stream request's history check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum RollbackDecision {
    /// The consumer's history is a prefix of ours: stream from its start.
    NoRollback,
    /// Answer ROLLBACK with this seqno.
    RollbackTo(Seqno),
}

/// The producer's rollback decision, exactly the pseudo-code of `mcbp-dcp.md` §7.5.
///
/// `high` is the producer's high seqno, `purge` its purge seqno and `log` its
/// failover log (newest first).
pub fn decide_rollback(
    req: &StreamStart,
    high: Seqno,
    purge: Seqno,
    log: &FailoverLog,
) -> RollbackDecision {
    let s = req.start;
    let u = req.vb_uuid;
    let p = if req.ignore_purged { Seqno(0) } else { purge };

    if s == Seqno(0) && (!req.strict_vbuuid || u == VbUuid(0)) {
        return RollbackDecision::NoRollback;
    }
    if s < p && s != Seqno(0) && req.consumer_purge_seqno != Some(p) {
        return RollbackDecision::RollbackTo(Seqno(0));
    }
    // Search oldest -> newest; `entries` is newest first, so index 0 is the newest.
    let entries = log.entries();
    let Some(idx) = entries.iter().rposition(|e| e.vb_uuid == u) else {
        return RollbackDecision::RollbackTo(Seqno(0));
    };
    let upper = if idx == 0 {
        high
    } else {
        entries[idx - 1].seqno
    };
    let mut ss = req.snap_start;
    let mut se = req.snap_end;
    if s == ss {
        se = s;
    }
    if se <= upper {
        return RollbackDecision::NoRollback;
    }
    if s == se {
        ss = s;
    }
    RollbackDecision::RollbackTo(if upper < ss { upper } else { ss })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(uuid: u64, seqno: u64) -> FailoverEntry {
        FailoverEntry {
            vb_uuid: VbUuid(uuid),
            seqno: Seqno(seqno),
        }
    }

    /// Branch A began at 0, branch B (newest) at 100.
    fn log_ab() -> FailoverLog {
        FailoverLog::from_entries(vec![entry(0xb, 100), entry(0xa, 0)])
    }

    fn req(start: u64, uuid: u64, ss: u64, se: u64) -> StreamStart {
        StreamStart {
            start: Seqno(start),
            vb_uuid: VbUuid(uuid),
            snap_start: Seqno(ss),
            snap_end: Seqno(se),
            ..StreamStart::default()
        }
    }

    fn decide(r: &StreamStart, high: u64, purge: u64) -> RollbackDecision {
        decide_rollback(r, Seqno(high), Seqno(purge), &log_ab())
    }

    #[test]
    fn start_zero_never_rolls_back_without_strict_vbuuid() {
        assert_eq!(
            decide(&req(0, 0, 0, 0), 500, 0),
            RollbackDecision::NoRollback
        );
        // Even an unknown uuid is fine at 0 without STRICT_VBUUID.
        assert_eq!(
            decide(&req(0, 0xdead, 0, 0), 500, 0),
            RollbackDecision::NoRollback
        );
        // Purged tombstones do not matter at start 0.
        assert_eq!(
            decide(&req(0, 0, 0, 0), 500, 40),
            RollbackDecision::NoRollback
        );
    }

    #[test]
    fn strict_vbuuid_at_start_zero_requires_a_known_uuid() {
        let mut r = req(0, 0, 0, 0);
        r.strict_vbuuid = true;
        assert_eq!(decide(&r, 500, 0), RollbackDecision::NoRollback);
        r.vb_uuid = VbUuid(0xdead);
        assert_eq!(decide(&r, 500, 0), RollbackDecision::RollbackTo(Seqno(0)));
        r.vb_uuid = VbUuid(0xa);
        assert_eq!(decide(&r, 500, 0), RollbackDecision::NoRollback);
    }

    #[test]
    fn start_below_purge_seqno_rolls_back_to_zero_unless_purge_matches_or_ignored() {
        let r = req(30, 0xb, 30, 30);
        assert_eq!(decide(&r, 500, 40), RollbackDecision::RollbackTo(Seqno(0)));
        let mut matching = r;
        matching.consumer_purge_seqno = Some(Seqno(40));
        assert_eq!(decide(&matching, 500, 40), RollbackDecision::NoRollback);
        let mut stale = r;
        stale.consumer_purge_seqno = Some(Seqno(39));
        assert_eq!(
            decide(&stale, 500, 40),
            RollbackDecision::RollbackTo(Seqno(0))
        );
        let mut ignoring = r;
        ignoring.ignore_purged = true;
        assert_eq!(decide(&ignoring, 500, 40), RollbackDecision::NoRollback);
        // At or above the purge seqno the rule does not apply.
        assert_eq!(
            decide(&req(40, 0xb, 40, 40), 500, 40),
            RollbackDecision::NoRollback
        );
    }

    #[test]
    fn unknown_uuid_rolls_back_to_zero() {
        assert_eq!(
            decide(&req(50, 0xc, 50, 50), 500, 0),
            RollbackDecision::RollbackTo(Seqno(0))
        );
    }

    #[test]
    fn consumer_on_the_newest_branch_within_high_seqno_streams_on() {
        assert_eq!(
            decide(&req(300, 0xb, 300, 300), 500, 0),
            RollbackDecision::NoRollback
        );
        assert_eq!(
            decide(&req(500, 0xb, 450, 500), 500, 0),
            RollbackDecision::NoRollback
        );
    }

    #[test]
    fn consumer_ahead_of_the_producer_on_the_newest_branch_rolls_back_to_high() {
        assert_eq!(
            decide(&req(600, 0xb, 600, 600), 500, 0),
            RollbackDecision::RollbackTo(Seqno(500))
        );
    }

    #[test]
    fn consumer_that_diverged_on_an_old_branch_rolls_back_to_the_branch_point() {
        // Consumer stayed on A past 100, where the producer switched to B.
        assert_eq!(
            decide(&req(150, 0xa, 150, 150), 500, 0),
            RollbackDecision::RollbackTo(Seqno(100))
        );
        // On A but not past the branch point: nothing to undo.
        assert_eq!(
            decide(&req(80, 0xa, 80, 80), 500, 0),
            RollbackDecision::NoRollback
        );
    }

    #[test]
    fn partial_snapshot_rolls_back_to_the_lower_of_snap_start_and_branch_point() {
        // Inside snapshot [90, 200] having seen up to 120: upper 100 < SE, roll to SS=90.
        assert_eq!(
            decide(&req(120, 0xa, 90, 200), 500, 0),
            RollbackDecision::RollbackTo(Seqno(90))
        );
        // Snapshot [110, 200]: branch point 100 is lower.
        assert_eq!(
            decide(&req(120, 0xa, 110, 200), 500, 0),
            RollbackDecision::RollbackTo(Seqno(100))
        );
    }

    #[test]
    fn start_equal_to_snap_start_ignores_a_snap_end_beyond_the_branch() {
        // The consumer has nothing of the snapshot (S == SS): SE collapses to S.
        assert_eq!(
            decide(&req(100, 0xa, 100, 250), 500, 0),
            RollbackDecision::NoRollback
        );
        // §7.4 note: S == SS and SE beyond the producer's high seqno: no rollback.
        assert_eq!(
            decide(&req(500, 0xb, 500, 900), 500, 0),
            RollbackDecision::NoRollback
        );
    }

    #[test]
    fn the_oldest_matching_entry_is_used_when_a_uuid_repeats() {
        // Searching oldest -> newest finds (0xa, 0); the next newer entry is (0xb, 100).
        let log = FailoverLog::from_entries(vec![entry(0xa, 300), entry(0xb, 100), entry(0xa, 0)]);
        assert_eq!(
            decide_rollback(&req(150, 0xa, 150, 150), Seqno(500), Seqno(0), &log),
            RollbackDecision::RollbackTo(Seqno(100))
        );
    }

    #[test]
    fn failover_log_is_capped_newest_first_and_encodes_big_endian() {
        let mut log = FailoverLog::new();
        for i in 0..30u64 {
            log.push(entry(i + 1, i * 10));
        }
        assert_eq!(log.len(), MAX_FAILOVER_ENTRIES);
        assert_eq!(log.newest(), Some(entry(30, 290)));
        assert_eq!(log.entries()[24], entry(6, 50));
        let wire = FailoverLog::from_entries(vec![entry(0x1234, 7)]).to_wire();
        assert_eq!(
            wire,
            [0, 0, 0, 0, 0, 0, 0x12, 0x34, 0, 0, 0, 0, 0, 0, 0, 7].to_vec()
        );
        log.drop_above(Seqno(100));
        assert!(log.entries().iter().all(|e| e.seqno <= Seqno(100)));
        assert_eq!(log.newest(), Some(entry(11, 100)));
    }
}
