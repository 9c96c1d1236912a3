//! The append-only log under damage: torn and corrupt tails, records that do not
//! decode, compaction and what a crash during it leaves behind.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use kv_engine::{Bucket, BucketConfig, Document, EngineError, Item, StoreOp, UnixTime};
use mcbp::{Cas, Seqno, VbState, Vbid};

const T0: u64 = 1_700_000_000;

fn now() -> UnixTime {
    UnixTime::from_secs(T0)
}

fn config(dir: &Path) -> BucketConfig {
    let mut c = BucketConfig::new("logged", dir);
    c.num_vbuckets = 4;
    c.rng_seed = Some(1);
    c
}

fn open(dir: &Path) -> Bucket {
    Bucket::open(config(dir)).expect("open bucket")
}

fn set(b: &Bucket, vb: u16, key: &str, value: &str) {
    let doc = Document {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        flags: 1,
        expiry: 0,
        datatype: 0,
    };
    b.store(Vbid(vb), StoreOp::Set, doc, Cas(0), now())
        .expect("set");
}

fn items(b: &Bucket) -> Vec<Vec<Item>> {
    (0..b.num_vbuckets())
        .map(|vb| {
            b.items_since(Vbid(vb), Seqno(0), usize::MAX)
                .expect("items")
        })
        .collect()
}

fn file_len(b: &Bucket) -> u64 {
    std::fs::metadata(b.path()).expect("log metadata").len()
}

/// Two flushed commits; returns the log length after the first and after the
/// second, and the items after the first.
fn two_commits(dir: &Path) -> (u64, u64, Vec<Vec<Item>>) {
    let b = open(dir);
    b.set_state(Vbid(0), VbState::Active).expect("active");
    b.set_state(Vbid(1), VbState::Active).expect("active");
    for i in 0..50 {
        set(&b, i % 2, &format!("first-{i}"), "v");
    }
    b.flush().expect("flush");
    let (after_first, first) = (file_len(&b), items(&b));
    for i in 0..50 {
        set(&b, i % 2, &format!("second-{i}"), "v");
    }
    set(&b, 0, "first-0", "overwritten");
    b.flush().expect("flush");
    let after_second = file_len(&b);
    drop(b); // crash: no clean close
    (after_first, after_second, first)
}

#[test]
fn a_torn_commit_is_cut_off_and_the_log_stays_appendable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (first_len, second_len, first) = two_commits(dir.path());
    let path = config(dir.path()).db_path();
    // A crash halfway through writing the second commit.
    let torn = first_len + (second_len - first_len) / 2;
    OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open log")
        .set_len(torn)
        .expect("tear");

    let b = open(dir.path());
    assert!(!b.opened_after_clean_shutdown());
    assert_eq!(items(&b), first, "exactly the first commit survives");
    assert_eq!(b.high_seqno(Vbid(0)).expect("high"), Seqno(25));
    // The tail was cut, so what is written now is replayed after the next crash.
    set(&b, 1, "after-the-tear", "v");
    b.flush().expect("flush");
    drop(b);
    let b = open(dir.path());
    let vb1 = b.items_since(Vbid(1), Seqno(0), usize::MAX).expect("items");
    assert_eq!(vb1.len(), 26);
    assert_eq!(vb1[25].key.as_ref(), b"after-the-tear");
}

#[test]
fn a_commit_whose_checksum_fails_is_not_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, second_len, first) = two_commits(dir.path());
    let path = config(dir.path()).db_path();
    let mut bytes = std::fs::read(&path).expect("read log");
    // The second commit's COMMIT record ends the file as it was after that flush
    // (the crash added nothing); flip its clean flag.
    let at = usize::try_from(second_len).expect("small") - 1;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write log");

    let b = open(dir.path());
    assert_eq!(items(&b), first);
}

#[test]
fn a_record_that_passes_its_checksum_but_does_not_decode_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    two_commits(dir.path());
    let path = config(dir.path()).db_path();
    let body = [99u8, 1, 2, 3];
    let mut record = Vec::new();
    record.extend_from_slice(&(body.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    record.extend_from_slice(&body);
    OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open log")
        .write_all(&record)
        .expect("append");
    match Bucket::open(config(dir.path())) {
        Err(EngineError::Corrupt { what, .. }) => {
            assert!(what.contains("unknown record kind 99"), "{what}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_file_that_is_not_a_log_is_refused_not_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config(dir.path()).db_path();
    std::fs::write(&path, b"SQLite format 3\0 and more bytes").expect("write");
    assert!(matches!(
        Bucket::open(config(dir.path())),
        Err(EngineError::Corrupt { .. })
    ));
    assert_eq!(
        std::fs::read(&path).expect("read"),
        b"SQLite format 3\0 and more bytes"
    );
}

#[test]
fn overwrites_are_compacted_away_and_the_compacted_log_reopens_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = config(dir.path());
    c.compact_floor_bytes = 0;
    let b = Bucket::open(c.clone()).expect("open");
    b.set_state(Vbid(0), VbState::Active).expect("active");
    b.set_state(Vbid(2), VbState::Active).expect("active");
    let value = "x".repeat(100);
    let mut largest = 0;
    for round in 0..200 {
        for k in 0..20 {
            set(&b, if k % 2 == 0 { 0 } else { 2 }, &format!("k{k}"), &value);
        }
        if round == 100 {
            b.delete(Vbid(0), b"k0", Cas(0), UnixTime::from_secs(T0 - 10_000))
                .expect("delete");
            assert_eq!(b.purge_tombstones(60, now()), 1);
        }
        b.flush().expect("flush");
        largest = largest.max(file_len(&b));
    }
    // 4,000 versions of ~150 bytes were written; the live data is 20 of them.
    assert!(largest < 40_000, "the log grew to {largest} bytes");
    let before = items(&b);
    let stats: Vec<_> = (0..4)
        .map(|vb| b.vb_stats(Vbid(vb)).expect("stats"))
        .collect();
    drop(b); // crash right after the last flush
    let b = Bucket::open(c).expect("reopen");
    assert_eq!(items(&b), before);
    for (vb, s) in stats.iter().enumerate() {
        let after = b.vb_stats(Vbid(vb as u16)).expect("stats");
        assert_eq!(
            (
                after.high_seqno,
                after.purge_seqno,
                after.items,
                after.state
            ),
            (s.high_seqno, s.purge_seqno, s.items, s.state),
            "vb:{vb}"
        );
    }
}

#[test]
fn a_compaction_cut_short_by_a_crash_leaves_the_log_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, _, _) = two_commits(dir.path());
    let expected = items(&open(dir.path()));
    // What a crash before the rename leaves: a partial side file.
    let mut side = config(dir.path()).db_path().into_os_string();
    side.push(".compacting");
    std::fs::write(&side, b"half a log").expect("write side file");
    let b = open(dir.path());
    assert_eq!(items(&b), expected);
    assert!(!Path::new(&side).exists(), "the leftover is removed");
}
