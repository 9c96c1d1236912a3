//! End to end with two real in-process nodes and the node's fault injection
//! (issue #5 "Tests"; `replication-layer.md` §5.9, §9, §10.3): replication and
//! vbucket moves verified document by document, and the seed's race (STREAM_END
//! before the ADD_STREAM answer) reproduced with real components.
//!
//! Node A is the producer (every vbucket active), node B the consumer (every
//! vbucket replica) unless a test says otherwise. `tokio::time::timeout` only
//! catches hangs; tests wait on conditions (seqno stats, replicator state), never
//! for a fixed time.

mod e2e_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use e2e_support::*;
use mcbp::dcp::{StreamEnd, StreamReq};
use mcbp::{Cas, Datatype, Message, Opcode, Status, VbState, Vbid};
use replication::core::{Side, StreamOp};
use replication::{
    move_vbucket, ManagerConfig, MoveConfig, MoveStep, ReplError, ReplicationManager,
    ReplicationMap, Replicator, WaitFor,
};
use serde_json::json;
use testkit::wait_for;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

/// Upper bound asserted on failures that must come from an event, not from a
/// configured timeout (the set-up timeout is 10 s in these tests).
const FAIL_FAST: Duration = Duration::from_secs(8);

async fn expect_err(
    what: &str,
    fut: impl std::future::Future<Output = Result<(), ReplError>>,
) -> anyhow::Result<ReplError> {
    match timeout(BOUND, fut).await {
        Err(_) => bail!("{what} hangs"),
        Ok(Ok(())) => bail!("{what} succeeded, expected an error"),
        Ok(Err(e)) => Ok(e),
    }
}

/// The replicator stopped with `end` as its termination reason, within the bound.
async fn closed_with(r: &Replicator) -> anyhow::Result<Result<(), ReplError>> {
    timeout(BOUND, r.closed())
        .await
        .context("replicator never closed")
}

/// Writes a few documents to `which` on A, waits for B to catch up and compares
/// every document of `expected`: the "data flows" check after a retry.
async fn data_flows(
    a: &TestNode,
    b: &TestNode,
    expected: &mut Expected,
    which: &BTreeSet<Vbid>,
    prefix: &str,
) -> anyhow::Result<()> {
    let (mut ca, mut cb) = (client(a).await?, client(b).await?);
    for vb in which {
        for i in 0..20u32 {
            let k = key(&format!("{prefix}-{}", vb.0), i);
            store(&mut ca, expected, *vb, &k, doc_for(i, 7)).await?;
        }
    }
    wait_converged(&mut ca, &mut cb, which).await?;
    let only: Expected = expected
        .iter()
        .filter(|((vb, _), _)| which.contains(&Vbid(*vb)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let live = assert_replicated(&mut ca, &mut cb, &only).await?;
    ensure!(
        live >= 20 * which.len(),
        "only {live} live documents checked"
    );
    Ok(())
}

/// Issue #5 "replication verified document by document": ~2000 documents (JSON and
/// raw, flags, far expiries, deletions) reach the replica exactly as the active
/// holds them, and so do writes made while replicating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_copies_every_document_and_keeps_up_with_writes() -> anyhow::Result<()> {
    let (a, b) = pair(false, false).await?;
    let mut ca = client(&a).await?;
    let mut expected = Expected::new();
    load(&mut ca, &mut expected, "pre", 0..2000, 0).await?;
    // Overwrite a few hundred of them, so the replica must get the latest version.
    load(&mut ca, &mut expected, "pre", 0..300, 1).await?;

    let r = start_replicator(replicator_config(&b, &a.kv())).await?;
    // A writer keeps going on its own connection while the streams are set up and
    // backfill, then for a while after.
    let mut writer_client = client(&a).await?;
    let writer = tokio::spawn(async move {
        let mut exp = Expected::new();
        load(&mut writer_client, &mut exp, "live", 0..600, 0).await?;
        load(&mut writer_client, &mut exp, "pre", 1000..1200, 2).await?;
        Ok::<_, anyhow::Error>(exp)
    });
    timeout(BOUND, r.setup_replication(all_vbs())).await??;
    assert_eq!(r.get_partitions(), all_vbs());
    let from_writer = timeout(BOUND, writer).await???;
    // The writer's keys are disjoint from the loader's, except its own overwrites of
    // pre-1000..1200, which happened after the loader's.
    expected.extend(from_writer);

    let mut cb = client(&b).await?;
    wait_converged(&mut ca, &mut cb, &all_vbs()).await?;
    let live = assert_replicated(&mut ca, &mut cb, &expected).await?;
    let deleted = expected.values().filter(|d| d.is_none()).count();
    assert!(
        live > 2000 && deleted > 200,
        "{live} live, {deleted} deleted"
    );
    assert_same_expiries(&a, &b, &all_vbs(), &expected)?;

    // More writes while replicating: new keys, updates and deletions of old ones.
    load(&mut ca, &mut expected, "pre", 1500..2300, 3).await?;
    for i in (0..2000).step_by(13) {
        let vb = Vbid((i % u32::from(VBUCKETS)) as u16);
        delete_if_live(&mut ca, &mut expected, vb, &key("pre", i)).await?;
    }
    wait_converged(&mut ca, &mut cb, &all_vbs()).await?;
    assert_replicated(&mut ca, &mut cb, &expected).await?;
    assert_same_expiries(&a, &b, &all_vbs(), &expected)?;
    assert_eq!(r.get_partitions(), all_vbs());
    assert!(r.is_running());

    timeout(BOUND, r.shut()).await??;
    assert!(matches!(closed_with(&r).await?, Ok(())));
    Ok(())
}

async fn delete_if_live(
    c: &mut kv_client::Client,
    expected: &mut Expected,
    vb: Vbid,
    k: &str,
) -> anyhow::Result<()> {
    if matches!(expected.get(&(vb.0, k.to_string())), Some(Some(_))) {
        delete(c, expected, vb, k).await?;
    }
    Ok(())
}

/// §5.9 / §10.3 case 1, the seed's race with real components: the consumer node
/// never answers ADD_STREAM(V) (its answer is lost) and the producer node ends V's
/// stream right after accepting its STREAM_REQ. The set-up fails at once with
/// `unexpected_stream_end` naming V, the STREAM_END's opaque (the consumer node's
/// STREAM_REQ opaque, seen on the wire) and reason 2; both sockets are closed; a new
/// replicator succeeds once the faults are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_race_stream_end_before_the_add_stream_answer_fails_the_setup_then_a_retry_succeeds(
) -> anyhow::Result<()> {
    const V: u16 = 5;
    const W: u16 = 6;
    let (a, b) = pair(true, true).await?;
    let mut expected = Expected::new();
    let mut ca = client(&a).await?;
    load(&mut ca, &mut expected, "pre", 0..160, 0).await?;
    b.add_fault(json!({"kind": "drop_add_stream_response", "vbucket": V}))
        .await?;
    a.add_fault(json!({"kind": "end_stream_after_stream_req", "vbucket": V, "reason": 2}))
        .await?;

    let tap = Tap::start(a.kv()).await?;
    let r = start_replicator(replicator_config(&b, &tap.addr)).await?;
    let name = r.connection_name().to_string();
    let t0 = Instant::now();
    let err = expect_err("the set-up", r.setup_replication(vbs([V, W]))).await?;
    let elapsed = t0.elapsed();
    assert!(elapsed < FAIL_FAST, "failed only after {elapsed:?}");
    let ReplError::UnexpectedStreamEnd {
        vb, opaque, reason, ..
    } = &err
    else {
        bail!("wrong error {err:?}");
    };
    assert_eq!(*vb, Vbid(V));
    assert_eq!(reason.to_raw(), 2);

    // The opaque is the one the consumer node chose for its STREAM_REQ(V) and the
    // producer node echoed in STREAM_END(V), as seen on the wire.
    let reqs: Vec<StreamReq> = tap
        .frames(|d, f| d == Dir::ToNode && f.is_client_request(Opcode::DcpStreamReq))
        .iter()
        .map(StreamReq::parse)
        .collect::<Result<_, _>>()?;
    let req_v: Vec<&StreamReq> = reqs.iter().filter(|q| q.vbucket == Vbid(V)).collect();
    assert_eq!(req_v.len(), 1, "{reqs:?}");
    let ends: Vec<StreamEnd> = tap
        .frames(|d, f| d == Dir::FromNode && f.opcode() == Opcode::DcpStreamEnd)
        .iter()
        .map(StreamEnd::parse)
        .collect::<Result<_, _>>()?;
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0].vbucket, Vbid(V));
    assert_eq!(ends[0].opaque, req_v[0].opaque);
    assert_eq!(*opaque, req_v[0].opaque);

    // Torn down: closed() reports the same error, both sockets are closed (the
    // replicator closed the producer connection; the consumer node dropped its DCP
    // connection), nothing is reported as established.
    match closed_with(&r).await? {
        Err(ReplError::UnexpectedStreamEnd { vb, opaque: o, .. }) => {
            assert_eq!((vb, o), (Vbid(V), *opaque));
        }
        other => bail!("closed() gave {other:?}"),
    }
    assert_eq!(tap.wait_closed(1).await?, [Dir::ToNode]);
    wait_for("the consumer node dropped the DCP connection", || async {
        Ok(!b.has_dcp_name(BUCKET, &name))
    })
    .await?;
    assert!(r.get_partitions().is_empty());
    assert!(!r.is_running());

    // A retry after the faults are gone starts clean and data flows.
    a.clear_faults().await?;
    b.clear_faults().await?;
    let r2 = start_replicator(replicator_config(&b, &a.kv())).await?;
    timeout(BOUND, r2.setup_replication(vbs([V, W]))).await??;
    assert_eq!(r2.get_partitions(), vbs([V, W]));
    data_flows(&a, &b, &mut expected, &vbs([V, W]), "retry").await?;
    timeout(BOUND, r2.shut()).await??;
    Ok(())
}

/// The producer-only half of the race: the consumer node answers ADD_STREAM
/// normally but the producer node ends the stream right after accepting it.
/// Depending on ordering the set-up either fails with `unexpected_stream_end` for V,
/// or succeeds and V then leaves the established set. Never a hang; run several
/// times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_ending_the_stream_right_after_accepting_it_never_hangs() -> anyhow::Result<()> {
    const V: u16 = 9;
    const W: u16 = 10;
    let (a, b) = pair(true, false).await?;
    a.add_fault(json!({"kind": "end_stream_after_stream_req", "vbucket": V, "reason": 2}))
        .await?;
    let mut outcomes = BTreeMap::<&str, usize>::new();
    for round in 0..5 {
        let r = start_replicator(replicator_config(&b, &a.kv())).await?;
        match timeout(BOUND, r.setup_replication(vbs([V, W])))
            .await
            .with_context(|| format!("round {round}: the set-up hangs"))?
        {
            Err(e) => {
                let ReplError::UnexpectedStreamEnd { vb, reason, .. } = &e else {
                    bail!("round {round}: unexpected error {e:?}");
                };
                assert_eq!((*vb, reason.to_raw()), (Vbid(V), 2));
                assert!(closed_with(&r).await?.is_err());
                *outcomes.entry("unexpected_stream_end").or_default() += 1;
            }
            Ok(()) => {
                let mut state = r.watch_state();
                timeout(BOUND, state.wait_for(|s| !s.partitions.contains(&Vbid(V))))
                    .await
                    .context("V never left the established set")??;
                assert_eq!(r.get_partitions(), vbs([W]));
                r.abort();
                assert!(closed_with(&r).await?.is_ok());
                *outcomes.entry("established_then_removed").or_default() += 1;
            }
        }
    }
    eprintln!("outcomes over 5 rounds: {outcomes:?}");
    Ok(())
}

/// §5.9 required timeout: the consumer node never answers ADD_STREAM(V) (producer
/// healthy): the set-up fails with `timeout` waiting for `add_stream` naming V after
/// the configured 1 s, and a retry after clearing the fault succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_add_stream_answer_times_out_naming_the_vbucket_then_a_retry_succeeds(
) -> anyhow::Result<()> {
    const V: u16 = 2;
    const W: u16 = 3;
    let (a, b) = pair(false, true).await?;
    b.add_fault(json!({"kind": "drop_add_stream_response", "vbucket": V}))
        .await?;
    let mut cfg = replicator_config(&b, &a.kv());
    cfg.core.setup_timeout = Duration::from_secs(1);
    let r = start_replicator(cfg).await?;
    let t0 = Instant::now();
    let err = expect_err("the set-up", r.setup_replication(vbs([V, W]))).await?;
    let elapsed = t0.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < FAIL_FAST,
        "{elapsed:?}"
    );
    match &err {
        ReplError::Timeout {
            waiting_for,
            vbuckets,
            ..
        } => {
            assert_eq!(*waiting_for, WaitFor::AddStream);
            assert_eq!(vbuckets, &[Vbid(V)]);
        }
        other => bail!("wrong error {other:?}"),
    }
    assert!(matches!(
        closed_with(&r).await?,
        Err(ReplError::Timeout { .. })
    ));

    b.clear_faults().await?;
    let r2 = start_replicator(replicator_config(&b, &a.kv())).await?;
    timeout(BOUND, r2.setup_replication(vbs([V, W]))).await??;
    assert_eq!(r2.get_partitions(), vbs([V, W]));
    let mut expected = Expected::new();
    data_flows(&a, &b, &mut expected, &vbs([V, W]), "retry").await?;
    timeout(BOUND, r2.shut()).await??;
    Ok(())
}

/// The producer node refuses STREAM_REQ(V) with ETMPFAIL (0x86): the consumer node
/// answers ADD_STREAM(V) with that status, the set-up fails with
/// `add_stream_failed` naming V and 0x86, the pair stays up with the other stream,
/// and the same replicator adds V once the fault is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_request_refused_with_etmpfail_fails_the_setup_with_add_stream_failed(
) -> anyhow::Result<()> {
    const V: u16 = 4;
    const W: u16 = 12;
    let (a, b) = pair(true, false).await?;
    a.add_fault(json!({"kind": "stream_req_status", "vbucket": V, "status": 0x86}))
        .await?;
    let r = start_replicator(replicator_config(&b, &a.kv())).await?;
    let t0 = Instant::now();
    let err = expect_err("the set-up", r.setup_replication(vbs([V, W]))).await?;
    assert!(t0.elapsed() < FAIL_FAST, "{:?}", t0.elapsed());
    let ReplError::StreamsFailed { failures, .. } = &err else {
        bail!("wrong error {err:?}");
    };
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].vb, Vbid(V));
    assert_eq!(failures[0].status, Status::Etmpfail);
    assert_eq!(failures[0].status.to_raw(), 0x86);
    assert_eq!(failures[0].op, StreamOp::AddStream);
    assert_eq!(failures[0].side, Side::Consumer);
    // Not a teardown: the other stream is established and the pair keeps going.
    assert_eq!(r.get_partitions(), vbs([W]));
    assert!(r.is_running());

    a.clear_faults().await?;
    timeout(BOUND, r.setup_replication(vbs([V, W]))).await??;
    assert_eq!(r.get_partitions(), vbs([V, W]));
    let mut expected = Expected::new();
    data_flows(&a, &b, &mut expected, &vbs([V, W]), "after").await?;
    timeout(BOUND, r.shut()).await??;
    Ok(())
}

/// The producer node closes the DCP connection after reading 9 frames (the
/// consumer node's 8 controls and one STREAM_REQ): the set-up and the replicator
/// end with `connection_closed` on the producer side; the fault is taken once, so a
/// new replicator succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_connection_closed_mid_setup_ends_the_replicator_then_a_new_one_succeeds(
) -> anyhow::Result<()> {
    let (a, b) = pair(true, false).await?;
    a.add_fault(json!({"kind": "close_after_frames", "frames": 9}))
        .await?;
    let r = start_replicator(replicator_config(&b, &a.kv())).await?;
    let t0 = Instant::now();
    let err = expect_err("the set-up", r.setup_replication(vbs(0..4))).await?;
    assert!(t0.elapsed() < FAIL_FAST, "{:?}", t0.elapsed());
    assert!(
        matches!(
            &err,
            ReplError::ConnectionClosed {
                side: Side::Producer,
                ..
            }
        ),
        "{err:?}"
    );
    match closed_with(&r).await? {
        Err(ReplError::ConnectionClosed {
            side: Side::Producer,
            peer,
            ..
        }) => assert_eq!(peer, a.kv()),
        other => bail!("closed() gave {other:?}"),
    }
    let name = r.connection_name().to_string();
    wait_for("the consumer node dropped the DCP connection", || async {
        Ok(!b.has_dcp_name(BUCKET, &name))
    })
    .await?;

    let r2 = start_replicator(replicator_config(&b, &a.kv())).await?;
    timeout(BOUND, r2.setup_replication(vbs(0..4))).await??;
    let mut expected = Expected::new();
    data_flows(&a, &b, &mut expected, &vbs(0..4), "after").await?;
    timeout(BOUND, r2.shut()).await??;
    Ok(())
}

/// One write target of the background writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Source,
    Destination,
}

/// Issue #5 item 5 / §9.2: `move_vbucket` while a client keeps writing to the
/// vbucket on the source. Writes refused with NOT_MY_VBUCKET are retried against
/// the destination once the move completed; every acknowledged write (and every
/// document loaded before) is on the destination with the right value. The
/// vbucket ends active on the destination and dead on the source. A second move of
/// the same vbucket is a bounded no-op; a move from the dead copy fails at the
/// preflight without touching the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_vbucket_under_writes_loses_no_acknowledged_write() -> anyhow::Result<()> {
    const V: Vbid = Vbid(3);
    let a = TestNode::start().await?;
    let b = TestNode::start().await?;
    create_bucket(&a, Some(VbState::Active)).await?;
    create_bucket(&b, None).await?;
    assert_eq!(b.vbucket_state(BUCKET, V), VbState::Dead);

    let mut ca = client(&a).await?;
    let mut expected = Expected::new();
    for i in 0..400u32 {
        store(&mut ca, &mut expected, V, &key("pre", i), doc_for(i, 0)).await?;
    }
    for i in (0..400u32).step_by(9) {
        delete(&mut ca, &mut expected, V, &key("pre", i)).await?;
    }

    // The writer: unique keys, one outstanding write at a time; a key is recorded
    // only once a node acknowledged it.
    let acked: Arc<Mutex<Vec<(String, String, Target)>>> = Arc::default();
    let (moved_tx, mut moved_rx) = watch::channel(false);
    let mut wa = client(&a).await?;
    let mut wb = client(&b).await?;
    let acked2 = acked.clone();
    let writer = tokio::spawn(async move {
        let mut target = Target::Source;
        let mut refused = 0u32;
        let mut on_destination = 0u32;
        for i in 0u32.. {
            let k = key("during", i);
            let v = format!("value of {k}");
            loop {
                let c = match target {
                    Target::Source => &mut wa,
                    Target::Destination => &mut wb,
                };
                let res = timeout(
                    BOUND,
                    c.store(
                        Opcode::Set,
                        V,
                        k.as_bytes(),
                        v.as_bytes(),
                        0,
                        0,
                        Cas(0),
                        Datatype::RAW,
                    ),
                )
                .await?;
                match res {
                    Ok(_) => {
                        acked2
                            .lock()
                            .expect("acked")
                            .push((k.clone(), v.clone(), target));
                        break;
                    }
                    Err(e)
                        if e.status() == Some(Status::NotMyVbucket) && target == Target::Source =>
                    {
                        refused += 1;
                        // Retry against the destination once the move completed.
                        timeout(BOUND, moved_rx.wait_for(|m| *m)).await??;
                        target = Target::Destination;
                    }
                    Err(e) if e.status() == Some(Status::Etmpfail) => {
                        tokio::task::yield_now().await;
                    }
                    Err(e) => bail!("{k} on {target:?}: {e}"),
                }
            }
            if target == Target::Destination {
                on_destination += 1;
                if on_destination == 50 {
                    break;
                }
            }
        }
        Ok::<_, anyhow::Error>(refused)
    });
    let acked_count = || acked.lock().expect("acked").len();
    wait_for("writes are flowing", || async { Ok(acked_count() >= 100) }).await?;

    let mut cfg = MoveConfig::new(BUCKET, V, a.kv(), b.kv(), creds());
    cfg.timeout = Duration::from_secs(15);
    cfg.source_node = "nodeA".into();
    cfg.destination_node = "nodeB".into();
    let before_move = acked_count();
    let report = timeout(BOUND, move_vbucket(&cfg))
        .await
        .context("the move hangs")??;
    moved_tx.send(true)?;
    let refused = timeout(BOUND, writer).await???;

    assert_eq!(a.vbucket_state(BUCKET, V), VbState::Dead);
    assert_eq!(b.vbucket_state(BUCKET, V), VbState::Active);
    assert_eq!(report.vb, V);
    // A takeover connection name of its own (issue #8 item 4, §4.3).
    assert!(
        report.connection_name.starts_with("replication:takeover:")
            && report.connection_name.ends_with(":nodeA->nodeB:default:3"),
        "{}",
        report.connection_name
    );
    assert_eq!(
        refused, 1,
        "one write was refused by the source, then retried"
    );
    let acked = acked.lock().expect("acked").clone();
    let on_source = acked.iter().filter(|w| w.2 == Target::Source).count();
    assert!(
        on_source > before_move,
        "writes acknowledged by the source during the move: {}",
        on_source - before_move
    );
    assert!(report.persisted_seqno.0 >= 400);

    // Every acknowledged write and every loaded document is on the new active.
    let mut cb = client(&b).await?;
    for (k, v, _) in &acked {
        let got = get(&mut cb, V, k).await?;
        let got = got.with_context(|| format!("acknowledged write {k} lost"))?;
        assert_eq!(got.value.as_ref(), v.as_bytes(), "{k}");
    }
    for ((_, k), want) in &expected {
        match (want, get(&mut cb, V, k).await?) {
            (None, None) => {}
            (Some(d), Some(got)) => {
                assert_eq!(
                    (&got.value, got.flags, got.datatype),
                    (&d.value, d.flags, d.datatype),
                    "{k}"
                );
            }
            (want, got) => bail!("{k}: expected {want:?}, destination has {got:?}"),
        }
    }
    // The source refuses the vbucket now.
    let err = timeout(BOUND, ca.get(V, b"pre-00001")).await?.err();
    assert_eq!(err.and_then(|e| e.status()), Some(Status::NotMyVbucket));

    // Moving it again is a bounded no-op: the preflight sees the source dead and the
    // destination active and touches neither.
    let live_on_destination = live_keys(&b, V);
    assert_eq!(
        live_on_destination.len(),
        acked.len() + expected.values().filter(|d| d.is_some()).count()
    );
    let mut again = cfg.clone();
    again.timeout = Duration::from_secs(5);
    let t0 = Instant::now();
    let report = timeout(BOUND, move_vbucket(&again))
        .await
        .context("the second move hangs")??;
    assert!(report.already_done, "{report:?}");
    assert!(t0.elapsed() < FAIL_FAST, "{:?}", t0.elapsed());
    assert_eq!(
        b.vbucket_state(BUCKET, V),
        VbState::Active,
        "the destination stays active"
    );
    // A move whose source copy is dead (vb 10 is dead on both nodes) fails at the
    // preflight and leaves the destination's copy as it was.
    let dead = Vbid(10);
    for n in [&a, &b] {
        let mut c = client(n).await?;
        timeout(BOUND, c.set_vbucket(dead, VbState::Dead)).await??;
    }
    let wrong = MoveConfig {
        vb: dead,
        ..again.clone()
    };
    let err = timeout(BOUND, move_vbucket(&wrong))
        .await
        .context("the refused move hangs")?
        .expect_err("the source is dead");
    let ReplError::Move { vb, step, source } = &err else {
        bail!("wrong error {err:?}");
    };
    assert_eq!((*vb, *step), (dead, MoveStep::Preflight), "{err}");
    assert!(
        matches!(&**source, ReplError::VbucketState { vb: v, state: VbState::Dead, .. } if *v == dead),
        "{err:?}"
    );
    assert_eq!(
        b.vbucket_state(BUCKET, dead),
        VbState::Dead,
        "the destination was not touched"
    );
    assert_eq!(a.vbucket_state(BUCKET, V), VbState::Dead);
    assert_eq!(live_keys(&b, V), live_on_destination);
    Ok(())
}

/// §7.3 on real nodes: after a set-up, `takeover(V)` leaves V active on the
/// consumer node and dead on the producer node, with every document, and V is no
/// longer among the replicator's partitions while the other stream keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_through_a_replicator_moves_the_vbucket_with_its_documents() -> anyhow::Result<()>
{
    const V: u16 = 7;
    const W: u16 = 8;
    let (a, b) = pair(false, false).await?;
    let mut ca = client(&a).await?;
    let mut expected = Expected::new();
    load(&mut ca, &mut expected, "pre", 0..320, 0).await?;
    let r = start_replicator(replicator_config(&b, &a.kv())).await?;
    timeout(BOUND, r.setup_replication(vbs([V, W]))).await??;
    let mut cb = client(&b).await?;
    wait_converged(&mut ca, &mut cb, &vbs([V, W])).await?;

    timeout(BOUND, r.takeover(Vbid(V))).await??;
    assert_eq!(b.vbucket_state(BUCKET, Vbid(V)), VbState::Active);
    assert_eq!(a.vbucket_state(BUCKET, Vbid(V)), VbState::Dead);
    assert_eq!(r.get_partitions(), vbs([W]));
    for ((vb, k), want) in expected.iter().filter(|((vb, _), _)| *vb == V) {
        match (want, get(&mut cb, Vbid(*vb), k).await?) {
            (None, None) => {}
            (Some(d), Some(got)) => assert_eq!(
                (&got.value, got.flags, got.datatype),
                (&d.value, d.flags, d.datatype),
                "{k}"
            ),
            (want, got) => bail!("{k}: expected {want:?}, new active has {got:?}"),
        }
    }
    // The new active takes writes; W still replicates.
    store(
        &mut cb,
        &mut Expected::new(),
        Vbid(V),
        "after",
        doc_for(0, 9),
    )
    .await?;
    let only_w: Expected = expected
        .into_iter()
        .filter(|((vb, _), _)| *vb == W)
        .collect();
    let mut only_w = only_w;
    data_flows(&a, &b, &mut only_w, &vbs([W]), "after").await?;
    assert!(r.is_running());
    timeout(BOUND, r.shut()).await??;
    Ok(())
}

/// §7.6 / §8.2: a manager with two connections per node pair replicates A's 16
/// vbuckets to B; vbucket v uses connection v mod 2 (seen in both nodes' `dcp`
/// stats under the connection names), data converges document by document, and
/// `change_vbucket_replication(vb, None)` removes exactly that vbucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_with_two_connections_maps_vbuckets_by_modulo_and_converges() -> anyhow::Result<()>
{
    let (a, b) = pair(false, false).await?;
    let mut ca = client(&a).await?;
    let mut expected = Expected::new();
    load(&mut ca, &mut expected, "pre", 0..800, 0).await?;

    let mut mc = ManagerConfig::new(BUCKET, "nodeB", b.kv(), creds());
    mc.nodes.insert("nodeA".into(), a.kv());
    mc.connection_count = 2;
    mc.connect_timeout = Duration::from_secs(5);
    mc.shut_timeout = Duration::from_secs(3);
    mc.core = replicator_config(&b, &a.kv()).core;
    let m = ReplicationManager::new(mc);
    let mut desired = ReplicationMap::new();
    desired.insert("nodeA".into(), all_vbs());
    timeout(BOUND, m.set_incoming_replication_map(desired)).await??;

    let names = [
        "replication:nodeA->nodeB:default",
        "replication:nodeA->nodeB:default/1",
    ];
    let reps = m.replicators();
    assert_eq!(
        reps.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        [("nodeA".to_string(), 0), ("nodeA".to_string(), 1)]
    );
    for ((_, index), r) in &reps {
        let i = usize::try_from(*index)?;
        assert_eq!(r.connection_name(), names[i]);
        assert_eq!(
            r.get_partitions(),
            vbs((0..VBUCKETS).filter(|v| usize::from(*v) % 2 == i))
        );
    }
    let mut actual = ReplicationMap::new();
    actual.insert("nodeA".into(), all_vbs());
    assert_eq!(m.get_actual_replications(), actual);

    // Both nodes' DCP stats show each vbucket's stream on connection v mod 2 only.
    let mut cb = client(&b).await?;
    for c in [&mut ca, &mut cb] {
        let stats: BTreeMap<String, String> =
            timeout(BOUND, c.stats("dcp")).await??.into_iter().collect();
        for v in 0..VBUCKETS {
            let i = usize::from(v) % 2;
            let has = |n: &str| stats.contains_key(&format!("eq_dcpq:{n}:stream_{v}_opaque"));
            assert!(has(names[i]), "vb {v} not on {}: {stats:?}", names[i]);
            assert!(!has(names[1 - i]), "vb {v} also on {}", names[1 - i]);
        }
    }

    wait_converged(&mut ca, &mut cb, &all_vbs()).await?;
    assert_replicated(&mut ca, &mut cb, &expected).await?;

    // Liveness (§3.3): both nodes were heard from, recently.
    let live = m.node_liveness();
    assert_eq!(
        live.keys().map(String::as_str).collect::<Vec<_>>(),
        ["nodeA", "nodeB"]
    );
    for (node, at) in &live {
        assert!(
            at.elapsed() < BOUND,
            "{node} last heard {:?} ago",
            at.elapsed()
        );
    }

    // Stop replicating vb 5 only (connection 1).
    timeout(BOUND, m.change_vbucket_replication(Vbid(5), None)).await??;
    let mut without5 = all_vbs();
    without5.remove(&Vbid(5));
    let mut actual = ReplicationMap::new();
    actual.insert("nodeA".into(), without5.clone());
    assert_eq!(m.get_actual_replications(), actual);
    let r1 = m.replicator("nodeA", 1).context("connection 1")?;
    assert_eq!(
        r1.get_partitions(),
        vbs((0..VBUCKETS).filter(|v| v % 2 == 1 && *v != 5))
    );
    let r0 = m.replicator("nodeA", 0).context("connection 0")?;
    assert_eq!(
        r0.get_partitions(),
        vbs((0..VBUCKETS).filter(|v| v % 2 == 0))
    );
    let key1 = format!("eq_dcpq:{}:num_streams", names[1]);
    let deadline = Instant::now() + BOUND;
    loop {
        let stats = timeout(BOUND, ca.stats("dcp")).await??;
        if stats.iter().any(|(k, v)| *k == key1 && v == "7") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the producer node never had 7 streams on connection 1: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // New writes to vb 5, then to vb 7 (same connection): vb 7 catches up, vb 5
    // does not.
    let before5 = high_seqnos(&mut cb).await?[&5];
    let mut more = Expected::new();
    for i in 0..20u32 {
        store(&mut ca, &mut more, Vbid(5), &key("v5", i), doc_for(i, 1)).await?;
    }
    for i in 0..20u32 {
        store(&mut ca, &mut more, Vbid(7), &key("v7", i), doc_for(i, 1)).await?;
    }
    wait_converged(&mut ca, &mut cb, &without5).await?;
    assert_eq!(high_seqnos(&mut cb).await?[&5], before5);
    assert!(high_seqnos(&mut ca).await?[&5] > before5);

    timeout(BOUND, m.shutdown()).await?;
    assert!(m.replicators().is_empty());
    Ok(())
}
