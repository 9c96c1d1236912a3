//! Durability across restarts: clean close, simulated crash (drop without close),
//! group commit, durable rollback. Uses real log files in temp dirs.

use std::path::Path;

use bytes::Bytes;
use kv_engine::{
    Bucket, BucketConfig, DeleteSource, EngineError, FailoverEntry, Item, RollbackOutcome, StoreOp,
    UnixTime,
};
use kv_engine::{BucketStats, Document, VbStats};
use mcbp::{Cas, Seqno, VbState, VbUuid, Vbid};

const T0: u64 = 1_700_000_000;
const NUM_VBS: u16 = 8;

fn now() -> UnixTime {
    UnixTime::from_secs(T0)
}

fn config(dir: &Path, seed: u64) -> BucketConfig {
    let mut c = BucketConfig::new("travel-sample", dir);
    c.num_vbuckets = NUM_VBS;
    c.rng_seed = Some(seed);
    c
}

fn open(dir: &Path, seed: u64) -> Bucket {
    Bucket::open(config(dir, seed)).expect("open bucket")
}

fn doc(key: &str, value: &str, expiry: u32) -> Document {
    Document {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        flags: 0x0200_0000,
        expiry,
        datatype: 1,
    }
}

fn set(b: &Bucket, vb: u16, key: &str, value: &str) -> Seqno {
    b.store(Vbid(vb), StoreOp::Set, doc(key, value, 0), Cas(0), now())
        .expect("set")
        .seqno
}

fn replica_item(key: &str, seqno: u64) -> Item {
    Item {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::from(format!("value of {key}")),
        cas: Cas(5_000 + seqno),
        flags: 3,
        expiry: 0,
        datatype: 0,
        rev_seqno: 1,
        by_seqno: Seqno(seqno),
        deleted: false,
        delete_source: DeleteSource::Explicit,
        delete_time: 0,
    }
}

/// Everything observable about a vbucket.
#[derive(Debug, PartialEq)]
struct VbSnapshot {
    stats: VbStats,
    failover: Vec<FailoverEntry>,
    snapshot: (Seqno, Seqno),
    items: Vec<Item>,
}

fn snapshot(b: &Bucket) -> Vec<VbSnapshot> {
    (0..b.num_vbuckets())
        .map(|vb| {
            let vb = Vbid(vb);
            VbSnapshot {
                stats: b.vb_stats(vb).expect("stats"),
                failover: b.failover_log(vb).expect("log").entries().to_vec(),
                snapshot: b.snapshot_range(vb).expect("snapshot range"),
                items: b.items_since(vb, Seqno(0), usize::MAX).expect("items"),
            }
        })
        .collect()
}

/// vb 0, 1 active with documents, a tombstone, an overwrite, an expiring document and
/// a purged tombstone; vb 2 a replica with a snapshot and its producer's log.
fn populate(b: &Bucket) {
    b.set_state(Vbid(0), VbState::Active).expect("active");
    b.set_state(Vbid(1), VbState::Active).expect("active");
    b.set_state(Vbid(2), VbState::Replica).expect("replica");
    for i in 0..40 {
        set(b, i % 2, &format!("doc-{i}"), &format!("{{\"n\":{i}}}"));
    }
    set(b, 0, "doc-0", "overwritten");
    b.store(Vbid(0), StoreOp::Set, doc("ttl", "x", 3600), Cas(0), now())
        .expect("set with expiry");
    b.delete(Vbid(1), b"doc-1", Cas(0), now()).expect("delete");
    b.delete(Vbid(1), b"doc-3", Cas(0), UnixTime::from_secs(T0 - 1000))
        .expect("delete");
    assert_eq!(b.purge_tombstones(500, now()), 1);
    b.set_failover_log(
        Vbid(2),
        vec![
            FailoverEntry {
                vb_uuid: VbUuid(0xbbbb),
                seqno: Seqno(3),
            },
            FailoverEntry {
                vb_uuid: VbUuid(0xaaaa),
                seqno: Seqno(0),
            },
        ],
    )
    .expect("adopt log");
    b.apply_snapshot_marker(Vbid(2), Seqno(1), Seqno(10), 0x02)
        .expect("marker");
    for s in 1..=6 {
        b.apply_mutation(Vbid(2), replica_item(&format!("r{s}"), s), now())
            .expect("apply");
    }
    b.apply_deletion(Vbid(2), replica_item("r2", 7), now())
        .expect("apply deletion");
}

#[test]
fn clean_close_then_open_restores_every_vbucket_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = open(dir.path(), 1);
    populate(&b);
    let before = snapshot(&b);
    let last_cas = b.get(Vbid(0), b"doc-0", now()).expect("get").cas;
    let total = b.stats();
    b.close().expect("close");

    let b = open(dir.path(), 2);
    assert!(b.opened_after_clean_shutdown());
    let after = snapshot(&b);
    for (vb, (x, y)) in before.iter().zip(&after).enumerate() {
        // Persisted seqno: everything was flushed by close.
        assert_eq!(y.stats.persisted_seqno, y.stats.high_seqno, "vb:{vb}");
        let mut x_stats = x.stats;
        x_stats.persisted_seqno = y.stats.persisted_seqno;
        x_stats.persisted_tombstones = y.stats.persisted_tombstones;
        assert_eq!(x_stats, y.stats, "vb:{vb}");
        assert_eq!(
            (&x.failover, x.snapshot, &x.items),
            (&y.failover, y.snapshot, &y.items),
            "vb:{vb}"
        );
    }
    // The applied-DCP-items counter counts since open; everything else is restored.
    let total = BucketStats {
        dcp_items_applied: 0,
        ..total
    };
    assert_eq!(b.stats(), total);
    assert_eq!(b.vb_stats(Vbid(1)).expect("stats").purge_seqno, Seqno(22));
    assert_eq!(b.vb_stats(Vbid(1)).expect("stats").persisted_tombstones, 1);
    // The CAS clock never goes backwards across a restart, even with a stale clock.
    let info = b
        .store(
            Vbid(0),
            StoreOp::Set,
            doc("doc-0", "new", 0),
            Cas(0),
            UnixTime::from_secs(1),
        )
        .expect("set");
    assert!(info.cas > last_cas);
    assert_eq!(info.seqno, Seqno(before[0].stats.high_seqno.0 + 1));
    b.close().expect("close");

    // And once more: a clean reopen of a clean reopen adds no failover entries.
    let b = open(dir.path(), 3);
    assert_eq!(
        b.failover_log(Vbid(0)).expect("log").entries(),
        before[0].failover.as_slice()
    );
}

#[test]
fn crash_keeps_flushed_items_with_their_seqnos_and_adds_one_failover_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = open(dir.path(), 7);
    populate(&b);
    b.flush().expect("flush");
    let flushed = snapshot(&b);
    // Acknowledged but never flushed: lost by design.
    let lost = set(&b, 0, "unflushed", "gone");
    b.apply_mutation(Vbid(2), replica_item("r8", 8), now())
        .expect("apply");
    assert!(lost > flushed[0].stats.persisted_seqno);
    drop(b); // crash: no close, no clean-shutdown marker

    let b = open(dir.path(), 8);
    assert!(!b.opened_after_clean_shutdown());
    let after = snapshot(&b);
    for (vb, (x, y)) in flushed.iter().zip(&after).enumerate() {
        assert_eq!(
            x.items, y.items,
            "vb:{vb}: exactly the flushed items, same seqnos"
        );
        assert_eq!(y.stats.high_seqno, x.stats.persisted_seqno, "vb:{vb}");
        assert_eq!(y.stats.persisted_seqno, x.stats.persisted_seqno, "vb:{vb}");
        assert_eq!(y.stats.state, x.stats.state, "vb:{vb}");
        if x.failover.is_empty() {
            assert!(y.failover.is_empty(), "vb:{vb}: no log, no new entry");
            continue;
        }
        assert_eq!(y.failover.len(), x.failover.len() + 1, "vb:{vb}");
        assert_eq!(&y.failover[1..], x.failover.as_slice(), "vb:{vb}");
        assert_eq!(y.failover[0].seqno, x.stats.persisted_seqno, "vb:{vb}");
        assert_ne!(y.failover[0].vb_uuid, VbUuid(0));
        assert_ne!(y.failover[0].vb_uuid, x.failover[0].vb_uuid);
    }
    assert!(matches!(
        b.get(Vbid(0), b"unflushed", now()),
        Err(EngineError::KeyNotFound { .. })
    ));
    // The new entry is itself durable: another crash adds exactly one more.
    let logs: Vec<usize> = after.iter().map(|s| s.failover.len()).collect();
    drop(b);
    let b = open(dir.path(), 9);
    for (vb, n) in logs.iter().enumerate() {
        let expected = if *n == 0 { 0 } else { n + 1 };
        assert_eq!(
            b.failover_log(Vbid(vb as u16)).expect("log").len(),
            expected,
            "vb:{vb}"
        );
    }
}

#[test]
fn one_flush_commits_thousands_of_writes_across_vbuckets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = open(dir.path(), 1);
    for vb in 0..NUM_VBS {
        b.set_state(Vbid(vb), VbState::Active).expect("active");
    }
    for i in 0..4000u32 {
        let vb = (i % u32::from(NUM_VBS)) as u16;
        set(&b, vb, &format!("key-{i}"), &"x".repeat(64));
    }
    let stats = b.flush().expect("flush");
    assert_eq!(stats.vbuckets, usize::from(NUM_VBS));
    assert_eq!(stats.items_written, 4000);
    for vb in 0..NUM_VBS {
        assert_eq!(b.persisted_seqno(Vbid(vb)).expect("persisted"), Seqno(500));
    }
    drop(b);
    let b = open(dir.path(), 2);
    assert_eq!(b.stats().items, 4000);
    for vb in 0..NUM_VBS {
        let items = b
            .items_since(Vbid(vb), Seqno(0), usize::MAX)
            .expect("items");
        let seqnos: Vec<u64> = items.iter().map(|i| i.by_seqno.0).collect();
        assert_eq!(seqnos, (1..=500).collect::<Vec<_>>(), "vb:{vb}");
    }
    let item = b.get(Vbid(3), b"key-3", now()).expect("get");
    assert_eq!((item.by_seqno, item.flags), (Seqno(1), 0x0200_0000));
}

#[test]
fn overwritten_deleted_and_purged_versions_stay_gone_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = open(dir.path(), 1);
    b.set_state(Vbid(0), VbState::Active).expect("active");
    set(&b, 0, "a", "v1");
    set(&b, 0, "b", "v1");
    b.flush().expect("flush");
    set(&b, 0, "a", "v2");
    b.delete(Vbid(0), b"b", Cas(0), UnixTime::from_secs(T0 - 10_000))
        .expect("delete");
    b.flush().expect("flush");
    assert_eq!(b.purge_tombstones(60, now()), 1);
    b.flush().expect("flush");
    drop(b);
    let b = open(dir.path(), 2);
    let items = b.items_since(Vbid(0), Seqno(0), 10).expect("items");
    assert_eq!(items.len(), 1);
    assert_eq!(
        (items[0].key.as_ref(), items[0].value.as_ref()),
        (&b"a"[..], &b"v2"[..])
    );
    assert_eq!(items[0].by_seqno, Seqno(3));
    assert_eq!(b.purge_seqno(Vbid(0)).expect("purge"), Seqno(4));
    assert_eq!(b.high_seqno(Vbid(0)).expect("high"), Seqno(4));
}

#[test]
fn rollback_is_durable_before_it_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = open(dir.path(), 1);
    let vb = Vbid(5);
    b.set_state(vb, VbState::Replica).expect("replica");
    b.set_failover_log(
        vb,
        vec![FailoverEntry {
            vb_uuid: VbUuid(0xa),
            seqno: Seqno(0),
        }],
    )
    .expect("log");
    for s in 1..=10 {
        b.apply_mutation(vb, replica_item(&format!("k{s}"), s), now())
            .expect("apply");
    }
    b.flush().expect("flush");
    assert_eq!(
        b.rollback(vb, Seqno(6)).expect("rollback"),
        RollbackOutcome::To(Seqno(6))
    );
    drop(b); // crash right after the rollback returned
    let b = open(dir.path(), 2);
    let items = b.items_since(vb, Seqno(0), 100).expect("items");
    assert_eq!(
        items.iter().map(|i| i.by_seqno.0).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    assert_eq!(b.high_seqno(vb).expect("high"), Seqno(6));
    // Seqnos 7.. can be received again, and the replaced versions persist.
    b.apply_mutation(vb, replica_item("new7", 7), now())
        .expect("apply");
    b.close().expect("close");
    let b = open(dir.path(), 3);
    let items = b.items_since(vb, Seqno(6), 100).expect("items");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].key.as_ref(), b"new7");
}

#[test]
fn a_reset_to_zero_is_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = open(dir.path(), 1);
    let vb = Vbid(1);
    b.set_state(vb, VbState::Replica).expect("replica");
    for (key, s) in [("a", 1), ("b", 2), ("a", 3)] {
        b.apply_mutation(vb, replica_item(key, s), now())
            .expect("apply");
    }
    b.flush().expect("flush");
    assert_eq!(
        b.rollback(vb, Seqno(1)).expect("rollback"),
        RollbackOutcome::ResetToZero
    );
    drop(b);
    let b = open(dir.path(), 2);
    assert!(b.items_since(vb, Seqno(0), 100).expect("items").is_empty());
    assert_eq!(b.high_seqno(vb).expect("high"), Seqno(0));
    assert_eq!(b.vbucket_state(vb).expect("state"), VbState::Replica);
}

#[test]
fn deleted_vbuckets_stay_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = open(dir.path(), 1);
    b.set_state(Vbid(4), VbState::Active).expect("active");
    set(&b, 4, "k", "v");
    b.flush().expect("flush");
    b.delete_vbucket(Vbid(4)).expect("delete vbucket");
    drop(b);
    let b = open(dir.path(), 2);
    assert_eq!(b.vbucket_state(Vbid(4)).expect("state"), VbState::Dead);
    assert!(b
        .items_since(Vbid(4), Seqno(0), 10)
        .expect("items")
        .is_empty());
    assert!(b.failover_log(Vbid(4)).expect("log").is_empty());
}

#[test]
fn reopening_with_another_vbucket_count_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    open(dir.path(), 1).close().expect("close");
    let mut c = config(dir.path(), 1);
    c.num_vbuckets = NUM_VBS * 2;
    assert!(matches!(
        Bucket::open(c),
        Err(EngineError::InvalidConfig { .. })
    ));
    // The refusal changed nothing.
    assert!(open(dir.path(), 1).opened_after_clean_shutdown());
}
