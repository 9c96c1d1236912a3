//! Store tests, run against both implementations where the behaviour is shared.

use std::sync::Arc;
use std::time::Duration;

use super::*;

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
    }
}

fn value<'a>(snapshot: &'a Snapshot, key: &str) -> Option<&'a [u8]> {
    snapshot.get(key).map(|e| e.value.as_slice())
}

async fn stores() -> Vec<(Box<dyn MetadataStore>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let redb = RedbStore::open(dir.path()).await.expect("opens");
    vec![
        (Box::new(MemoryStore::new()), None),
        (Box::new(redb), Some(dir)),
    ]
}

/// §2.5: a transaction applies only when every check holds; a refused one changes
/// nothing, not even the revision.
#[tokio::test]
async fn cas_conflicts_are_refused_and_change_nothing() {
    for (store, _dir) in stores().await {
        let empty = store.snapshot().await.expect("snapshot");
        assert_eq!(empty.rev, Rev(0));
        let r1 = store
            .transact(
                vec![empty.unchanged("cluster")],
                vec![put("cluster", "{\"a\":1}")],
            )
            .await
            .expect("absent key check holds");
        assert_eq!(r1, Rev(1));

        // The same "absent" check again: the key exists now.
        let refused = store
            .transact(
                vec![empty.unchanged("cluster")],
                vec![put("cluster", "{\"a\":2}")],
            )
            .await;
        assert_eq!(
            refused,
            Err(StoreError::Conflict {
                key: "cluster".to_owned()
            })
        );
        // A stale mod_rev.
        let stale = store
            .transact(
                vec![Check::ModRev {
                    key: "cluster".to_owned(),
                    rev: Rev(0),
                }],
                vec![put("cluster", "x"), put("other", "y")],
            )
            .await;
        assert!(matches!(stale, Err(StoreError::Conflict { .. })));

        let snap = store.snapshot().await.expect("snapshot");
        assert_eq!(snap.rev, Rev(1));
        assert_eq!(value(&snap, "cluster"), Some(&b"{\"a\":1}"[..]));
        assert_eq!(value(&snap, "other"), None);
        assert_eq!(snap.get("cluster").map(|e| e.mod_rev), Some(Rev(1)));

        // The current mod_rev passes; mod_revs of untouched keys stay.
        let r2 = store
            .transact(
                vec![snap.unchanged("cluster")],
                vec![put("other", "y"), Op::delete("missing")],
            )
            .await
            .expect("checks hold");
        assert_eq!(r2, Rev(2));
        let snap = store.snapshot().await.expect("snapshot");
        assert_eq!(snap.get("cluster").map(|e| e.mod_rev), Some(Rev(1)));
        assert_eq!(snap.get("other").map(|e| e.mod_rev), Some(Rev(2)));
        let r3 = store
            .transact(vec![snap.unchanged("other")], vec![Op::delete("other")])
            .await
            .expect("delete");
        assert_eq!(r3, Rev(3));
        assert_eq!(
            value(&store.snapshot().await.expect("snapshot"), "other"),
            None
        );
    }
}

/// Every transaction bumps the revision, even one without ops; watchers see it.
#[tokio::test]
async fn every_transaction_bumps_the_revision_and_wakes_watchers() {
    for (store, _dir) in stores().await {
        let mut watch = store.watch();
        assert_eq!(*watch.borrow_and_update(), Rev(0));
        let rev = store.transact(vec![], vec![]).await.expect("empty txn");
        assert_eq!(rev, Rev(1));
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("woken")
            .expect("sender alive");
        assert_eq!(*watch.borrow_and_update(), Rev(1));
        assert_eq!(store.snapshot().await.expect("snapshot").rev, Rev(1));
    }
}

/// §2.5: the revision never goes back, across restarts too.
#[tokio::test]
async fn revisions_strictly_increase_across_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut last = Rev(0);
    for round in 0..3 {
        let store = RedbStore::open(dir.path()).await.expect("opens");
        assert_eq!(store.path(), dir.path().join(FILE_NAME));
        let snap = store.snapshot().await.expect("snapshot");
        assert_eq!(snap.rev, last, "round {round}: the revision survived");
        assert_eq!(*store.watch().borrow(), last);
        if round > 0 {
            assert_eq!(
                snap.get("k").map(|e| e.json::<u32>().expect("json")),
                Some(round - 1)
            );
        }
        for _ in 0..2 {
            let rev = store
                .transact(vec![], vec![Op::put_json("k", &round).expect("json")])
                .await
                .expect("commit");
            assert!(rev > last);
            last = rev;
        }
        drop(store);
    }
    assert_eq!(last, Rev(6));
}

/// Concurrent writers serialise: read-modify-write with CAS and retry never loses an
/// increment, and every commit gets its own revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_serialize() {
    for (store, _dir) in stores().await {
        let store: Arc<dyn MetadataStore> = Arc::from(store);
        let writers = 8;
        let each = 5;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..writers {
            let store = Arc::clone(&store);
            tasks.spawn(async move {
                let mut revs = Vec::new();
                for _ in 0..each {
                    loop {
                        let snap = store.snapshot().await.expect("snapshot");
                        let n: u64 = snap.get("counter").map_or(0, |e| e.json().expect("json"));
                        match store
                            .transact(
                                vec![snap.unchanged("counter")],
                                vec![Op::put_json("counter", &(n + 1)).expect("json")],
                            )
                            .await
                        {
                            Ok(rev) => {
                                revs.push(rev);
                                break;
                            }
                            Err(StoreError::Conflict { .. }) => continue,
                            Err(e) => panic!("store failed: {e}"),
                        }
                    }
                }
                revs
            });
        }
        let mut all = Vec::new();
        while let Some(revs) = tasks.join_next().await {
            let revs = revs.expect("writer task");
            assert!(
                revs.windows(2).all(|w| w[0] < w[1]),
                "one writer's revs increase"
            );
            all.extend(revs);
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), writers * each, "no two commits share a revision");
        let snap = store.snapshot().await.expect("snapshot");
        assert_eq!(
            snap.get("counter").map(|e| e.json::<u64>().expect("json")),
            Some((writers * each) as u64)
        );
        assert_eq!(snap.rev, Rev((writers * each) as u64));
    }
}

/// Two writers holding the same snapshot: exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_writers_with_the_same_view_one_wins() {
    for (store, _dir) in stores().await {
        let store: Arc<dyn MetadataStore> = Arc::from(store);
        let snap = store.snapshot().await.expect("snapshot");
        let (a, b) = tokio::join!(
            store.transact(
                vec![snap.unchanged("buckets/b")],
                vec![put("buckets/b", "a")]
            ),
            store.transact(
                vec![snap.unchanged("buckets/b")],
                vec![put("buckets/b", "b")]
            ),
        );
        assert!(a.is_ok() != b.is_ok(), "exactly one wins: {a:?} {b:?}");
        assert_eq!(store.snapshot().await.expect("snapshot").rev, Rev(1));
    }
}

/// A crash between writing and committing leaves the old value and revision.
#[tokio::test]
async fn a_transaction_dropped_before_commit_leaves_the_old_value() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(dir.path()).await.expect("opens");
    store
        .transact(vec![], vec![put("cluster", "old")])
        .await
        .expect("commit");
    let db = store.database();
    tokio::task::spawn_blocking(move || {
        let staged =
            redb::stage(&db, &[], vec![put("cluster", "new"), put("extra", "x")]).expect("staged");
        drop(staged); // the process dies here
    })
    .await
    .expect("blocking task");
    let snap = store.snapshot().await.expect("snapshot");
    assert_eq!(value(&snap, "cluster"), Some(&b"old"[..]));
    assert_eq!(value(&snap, "extra"), None);
    assert_eq!(snap.rev, Rev(1));
    drop(store);

    let reopened = RedbStore::open(dir.path()).await.expect("reopens");
    let snap = reopened.snapshot().await.expect("snapshot");
    assert_eq!(value(&snap, "cluster"), Some(&b"old"[..]));
    assert_eq!(value(&snap, "extra"), None);
    assert_eq!(snap.rev, Rev(1));
    assert_eq!(
        reopened
            .transact(vec![], vec![put("cluster", "next")])
            .await
            .expect("commit"),
        Rev(2)
    );
}

#[tokio::test]
async fn retry_helper_rereads_after_a_conflict_and_gives_up_after_ten() {
    let store = MemoryStore::new();
    // The first attempt's view is stale (a check that cannot hold); the retry re-reads.
    let mut attempts = 0;
    let out = transact_with_retry::<(), _>(&store, |snap| {
        attempts += 1;
        let check = if attempts == 1 {
            Check::ModRev {
                key: "k".to_owned(),
                rev: Rev(7),
            }
        } else {
            snap.unchanged("k")
        };
        Ok(Some((vec![check], vec![put("k", "v")])))
    })
    .await;
    assert_eq!(out.ok().flatten(), Some(Rev(1)));
    assert_eq!(attempts, 2);

    // Always stale: the builder checks a revision that never exists.
    let mut calls = 0;
    let out = transact_with_retry::<(), _>(&store, |_| {
        calls += 1;
        Ok(Some((
            vec![Check::ModRev {
                key: "k".to_owned(),
                rev: Rev(99),
            }],
            vec![],
        )))
    })
    .await;
    assert!(matches!(
        out,
        Err(RetryError::Store(StoreError::Conflict { .. }))
    ));
    assert_eq!(calls, TRANSACTION_RETRIES);

    // Nothing to do.
    let out = transact_with_retry::<(), _>(&store, |_| Ok(None)).await;
    assert_eq!(out.ok().flatten(), None);

    store.set_unavailable(Some("no quorum".to_owned()));
    assert!(matches!(
        store.snapshot().await,
        Err(StoreError::Unavailable { .. })
    ));
}
