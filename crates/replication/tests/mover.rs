//! The vbucket mover and the data-move wait against automatic fake nodes (issue #5
//! item 5; `replication-layer.md` §7.7, §9.2).

mod e2e_support;

use std::time::Duration;

use e2e_support::{self as e2e, Expected, Tap, TestNode};
use kv_client::Credentials;
use mcbp::{Status, VbState, Vbid};
use replication::core::Side;
use replication::mover::Repair;
use replication::{
    move_vbucket, wait_for_data_move, DataMoveWait, MoveConfig, MoveReport, MoveStep, ReplError,
    WaitFor,
};
use testkit::fake::{AutoEvent, AutoRole, FakeNode, WAIT};
use testkit::tap::Cut;
use tokio::time::{timeout, Instant};

fn creds() -> Credentials {
    Credentials {
        user: "admin".into(),
        password: "password".into(),
    }
}

fn takeover_stat(status: &str, estimate: u64) -> Result<Vec<(String, String)>, Status> {
    Ok(vec![
        ("status".into(), status.into()),
        ("estimate".into(), estimate.to_string()),
        ("chk_items".into(), "0".into()),
    ])
}

fn wait_cfg(node: &FakeNode, timeout: Duration) -> DataMoveWait {
    DataMoveWait {
        producer_addr: node.addr(),
        bucket: "default".into(),
        credentials: creds(),
        targets: vec![(Vbid(3), "replication:a->b:default".into())],
        done_limit: 1000,
        timeout,
        poll_interval: Duration::from_millis(10),
    }
}

/// §7.7: calculating-item-count polls again; backfilling/in-memory compare the
/// estimate with the done limit.
#[tokio::test]
async fn data_move_waits_until_the_estimate_is_below_the_limit() {
    let node = FakeNode::default_node().await;
    {
        let mut s = node.script.lock().expect("lock");
        s.vbtakeover
            .push_back(takeover_stat("calculating-item-count", 0));
        s.vbtakeover.push_back(takeover_stat("backfilling", 5000));
        s.vbtakeover.push_back(takeover_stat("in-memory", 999));
    }
    timeout(
        WAIT,
        wait_for_data_move(&wait_cfg(&node, Duration::from_secs(5))),
    )
    .await
    .expect("hangs")
    .expect("caught up");
    let groups = node.script.lock().expect("lock").stat_groups.clone();
    assert_eq!(groups.len(), 3);
    assert_eq!(groups[0], "dcp-vbtakeover 3 replication:a->b:default");
}

/// §7.7 (MB-59522): any other status fails with unexpected_status naming vb and
/// status; NOT_MY_VBUCKET counts as `no_status_stat_seen`.
#[tokio::test]
async fn data_move_fails_on_an_unexpected_status() {
    for (answer, expect) in [
        (takeover_stat("stream_is_dead", 0), "stream_is_dead"),
        (Err(Status::NotMyVbucket), "no_status_stat_seen"),
    ] {
        let node = FakeNode::default_node().await;
        node.script
            .lock()
            .expect("lock")
            .vbtakeover
            .push_back(answer);
        let err = timeout(
            WAIT,
            wait_for_data_move(&wait_cfg(&node, Duration::from_secs(5))),
        )
        .await
        .expect("hangs")
        .expect_err("must fail");
        assert!(
            matches!(&err, ReplError::UnexpectedStatus { vb: Vbid(3), status, .. } if status == expect),
            "{err:?}"
        );
    }
}

/// §11.1: the data-move wait is bounded (`waiting_for: data_move`).
#[tokio::test]
async fn data_move_is_bounded() {
    let node = FakeNode::default_node().await;
    node.script
        .lock()
        .expect("lock")
        .vbtakeover
        .push_back(takeover_stat("backfilling", 1_000_000));
    let t0 = Instant::now();
    let err = timeout(
        WAIT,
        wait_for_data_move(&wait_cfg(&node, Duration::from_millis(300))),
    )
    .await
    .expect("hangs")
    .expect_err("must time out");
    assert!(t0.elapsed() < Duration::from_secs(4));
    assert!(
        matches!(&err, ReplError::Timeout { waiting_for: WaitFor::DataMove, vbuckets, .. } if vbuckets == &vec![Vbid(3)]),
        "{err:?}"
    );
}

fn move_cfg(src: &FakeNode, dst: &FakeNode) -> MoveConfig {
    let mut cfg = MoveConfig::new("default", Vbid(5), src.addr(), dst.addr(), creds());
    cfg.timeout = Duration::from_secs(5);
    cfg
}

/// Issue #5 item 5: replica on the destination, replicate, data move, persistence
/// of the source's high seqno, takeover, destination active and source dead.
#[tokio::test]
async fn move_vbucket_runs_every_step() {
    let src = FakeNode::auto(AutoRole::Producer).await;
    let dst = FakeNode::auto(AutoRole::Consumer).await;
    {
        let mut s = src.script.lock().expect("lock");
        s.vbtakeover
            .push_back(takeover_stat("calculating-item-count", 0));
        s.vbtakeover.push_back(takeover_stat("in-memory", 0));
        s.high_seqnos.push((5, 42));
    }
    dst.script.lock().expect("lock").persistence_tmpfails = 2;
    let report = timeout(WAIT, move_vbucket(&move_cfg(&src, &dst)))
        .await
        .expect("hangs")
        .expect("move succeeds");
    assert_eq!(report.vb, Vbid(5));
    assert_eq!(report.persisted_seqno.0, 42);
    let (set_vbuckets, persistence_calls) = {
        let d = dst.script.lock().expect("lock");
        (d.set_vbuckets.clone(), d.persistence_calls.clone())
    };
    assert_eq!(
        set_vbuckets,
        vec![(5, VbState::Replica), (5, VbState::Active)]
    );
    assert_eq!(persistence_calls.len(), 3);
    assert!(persistence_calls.iter().all(|c| *c == (5, 42)));
    assert_eq!(
        src.script.lock().expect("lock").set_vbuckets,
        vec![(5, VbState::Dead)]
    );
    let name = report.connection_name.clone();
    assert!(src.events().contains(&AutoEvent::TookOver(name.clone(), 5)));
    src.wait_events("the replicator's producer connection closed", |e| {
        e.contains(&AutoEvent::Eof(name.clone()))
    })
    .await;
}

/// A failing step is named, nothing is left active on the destination, and a rerun
/// starts clean and succeeds.
#[tokio::test]
async fn move_failure_names_the_step_and_a_rerun_succeeds() {
    let src = FakeNode::auto(AutoRole::Producer).await;
    let dst = FakeNode::auto(AutoRole::Consumer).await;
    {
        let mut s = src.script.lock().expect("lock");
        s.vbtakeover
            .push_back(takeover_stat("stream_does_not_exist", 0));
        s.high_seqnos.push((5, 7));
    }
    let err = timeout(WAIT, move_vbucket(&move_cfg(&src, &dst)))
        .await
        .expect("hangs")
        .expect_err("data move fails");
    assert!(
        matches!(
            &err,
            ReplError::Move {
                step: MoveStep::DataMove,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        matches!(&err, ReplError::Move { source, .. }
            if matches!(&**source, ReplError::UnexpectedStatus { status, .. } if status == "stream_does_not_exist")),
        "{err:?}"
    );
    assert_eq!(
        dst.script.lock().expect("lock").set_vbuckets,
        vec![(5, VbState::Replica)]
    );

    src.script
        .lock()
        .expect("lock")
        .vbtakeover
        .push_back(takeover_stat("in-memory", 0));
    let report = timeout(WAIT, move_vbucket(&move_cfg(&src, &dst)))
        .await
        .expect("hangs")
        .expect("rerun succeeds");
    assert_eq!(report.persisted_seqno.0, 7);
}

// ---- real nodes: repairing failed moves (issue #8 item 1) ----

const V: Vbid = Vbid(5);

/// A move of `vb` from node A to `to` (node B or a tap in front of it), node names
/// `nodeA`/`nodeB` like the e2e replicators.
fn real_move(a: &TestNode, to: &str, vb: Vbid, secs: u64) -> MoveConfig {
    let mut cfg = MoveConfig::new(e2e::BUCKET, vb, a.kv(), to, e2e::creds());
    cfg.timeout = Duration::from_secs(secs);
    cfg.source_node = "nodeA".into();
    cfg.destination_node = "nodeB".into();
    cfg
}

async fn run_move(cfg: &MoveConfig) -> Result<MoveReport, ReplError> {
    timeout(e2e::BOUND, move_vbucket(cfg))
        .await
        .expect("the move hangs")
}

/// Brings B's copy of `vb` up to A's with a regular replicator, then shuts it.
async fn replicate_until_converged(a: &TestNode, b: &TestNode, vb: Vbid) -> anyhow::Result<()> {
    let r = e2e::start_replicator(e2e::replicator_config(b, &a.kv())).await?;
    timeout(e2e::BOUND, r.setup_replication([vb])).await??;
    let (mut ca, mut cb) = (e2e::client(a).await?, e2e::client(b).await?);
    e2e::wait_converged(&mut ca, &mut cb, &e2e::vbs([vb.0])).await?;
    timeout(e2e::BOUND, r.shut()).await??;
    Ok(())
}

fn set(side: Side, state: VbState) -> Repair {
    Repair { side, state }
}

/// The move's end state: dead on A, active on B with every acknowledged write.
async fn assert_moved(
    a: &TestNode,
    b: &TestNode,
    vb: Vbid,
    expected: &Expected,
) -> anyhow::Result<()> {
    assert_eq!(a.vbucket_state(e2e::BUCKET, vb), VbState::Dead, "source");
    assert_eq!(
        b.vbucket_state(e2e::BUCKET, vb),
        VbState::Active,
        "destination"
    );
    let mut cb = e2e::client(b).await?;
    let live = e2e::assert_active_has(&mut cb, vb, expected).await?;
    assert_eq!(live, expected.keys().filter(|(v, _)| *v == vb.0).count());
    Ok(())
}

/// Node pair, `n` documents written into V on A.
async fn loaded_pair(n: u32) -> anyhow::Result<(TestNode, TestNode, Expected)> {
    let (a, b) = e2e::pair(false, false).await?;
    let mut expected = Expected::new();
    let mut ca = e2e::client(&a).await?;
    e2e::load_vb(&mut ca, &mut expected, V, "pre", 0..n).await?;
    Ok((a, b, expected))
}

/// The takeover breaks after the producer's SET_VBUCKET_STATE(pending) was
/// acknowledged (A dead) and before B became active. The failed move leaves A
/// active again with every acknowledged write, B not active; A keeps taking writes,
/// and a rerun completes the move.
async fn takeover_broken_between_pending_and_active(cut: Cut, secs: u64) -> anyhow::Result<()> {
    let (a, b, mut expected) = loaded_pair(60).await?;
    let tap = Tap::with_cut(b.kv(), cut, |d, f| {
        e2e::takeover_state_to_node(d, f, VbState::Active)
    })
    .await?;
    let err = run_move(&real_move(&a, &tap.addr, V, secs))
        .await
        .expect_err("the takeover is broken");
    assert!(tap.fired(), "the takeover never reached the active state");
    assert!(
        matches!(&err, ReplError::Move { vb, step: MoveStep::Takeover, .. } if *vb == V),
        "{err:?}"
    );
    assert_eq!(
        a.vbucket_state(e2e::BUCKET, V),
        VbState::Active,
        "source after {err}"
    );
    assert_ne!(
        b.vbucket_state(e2e::BUCKET, V),
        VbState::Active,
        "destination after {err}"
    );
    let mut ca = e2e::client(&a).await?;
    e2e::assert_active_has(&mut ca, V, &expected).await?;
    e2e::load_vb(&mut ca, &mut expected, V, "post", 0..20).await?;

    let report = run_move(&real_move(&a, &b.kv(), V, 10)).await?;
    assert!(!report.already_done);
    assert_moved(&a, &b, V, &expected).await
}

/// Issue #8 item 1: the consumer socket drops between pending and active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_whose_consumer_socket_drops_after_pending_leaves_the_source_active(
) -> anyhow::Result<()> {
    takeover_broken_between_pending_and_active(Cut::Kill, 10).await
}

/// Issue #8 item 1: the consumer refuses the active state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_whose_consumer_refuses_active_leaves_the_source_active() -> anyhow::Result<()> {
    takeover_broken_between_pending_and_active(Cut::Refuse(Status::Einval), 10).await
}

/// Issue #8 item 1: the active state never reaches the consumer; the takeover
/// times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_timing_out_after_pending_leaves_the_source_active() -> anyhow::Result<()> {
    takeover_broken_between_pending_and_active(Cut::Swallow, 3).await
}

/// The consumer node applied SET_VBUCKET_STATE(active) but its answer never
/// reaches the producer (the consumer socket drops): the takeover fails, yet the
/// destination is active with every write, so the move reports success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_failing_after_the_destination_became_active_completes_the_move(
) -> anyhow::Result<()> {
    let (a, b, expected) = loaded_pair(60).await?;
    let answers = std::sync::atomic::AtomicUsize::new(0);
    let tap = Tap::with_cut(b.kv(), Cut::Kill, move |d, f| {
        // The second SET_VBUCKET_STATE answer is the one to (active).
        d == e2e::Dir::FromNode
            && !f.is_request()
            && f.opcode() == mcbp::Opcode::DcpSetVbucketState
            && answers.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await?;
    let report = run_move(&real_move(&a, &tap.addr, V, 10)).await?;
    assert!(tap.fired(), "the takeover never got to the active state");
    assert!(!report.already_done);
    assert_eq!(report.repairs, vec![]);
    assert!(report.persisted_seqno.0 >= 60, "{report:?}");
    assert_moved(&a, &b, V, &expected).await
}

/// Source dead, destination pending or replica and behind (the source holds writes
/// the destination never got): the rerun reactivates the source and moves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_from_dead_source_and_pending_or_replica_destination_completes_the_move(
) -> anyhow::Result<()> {
    for dest in [VbState::Pending, VbState::Replica] {
        let (a, b, mut expected) = loaded_pair(50).await?;
        replicate_until_converged(&a, &b, V).await?;
        let mut ca = e2e::client(&a).await?;
        e2e::load_vb(&mut ca, &mut expected, V, "late", 0..30).await?;
        a.set_vbucket(e2e::BUCKET, V, VbState::Dead).await?;
        b.set_vbucket(e2e::BUCKET, V, dest).await?;
        assert!(e2e::high_seqno(&b, V).await? < e2e::high_seqno(&a, V).await?);

        let report = run_move(&real_move(&a, &b.kv(), V, 10)).await?;
        assert!(!report.already_done, "{dest}: {report:?}");
        assert_eq!(report.repairs, vec![set(Side::Producer, VbState::Active)]);
        assert_moved(&a, &b, V, &expected).await?;
    }
    Ok(())
}

/// Source active, destination pending: the rerun moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_from_active_source_and_pending_destination_completes_the_move() -> anyhow::Result<()>
{
    let (a, b, expected) = loaded_pair(50).await?;
    replicate_until_converged(&a, &b, V).await?;
    b.set_vbucket(e2e::BUCKET, V, VbState::Pending).await?;
    let report = run_move(&real_move(&a, &b.kv(), V, 10)).await?;
    assert!(!report.already_done);
    assert_eq!(report.repairs, vec![]);
    assert_moved(&a, &b, V, &expected).await
}

/// Destination active but behind a dead source that holds newer acknowledged
/// writes: not "already done"; the destination is demoted, the source reactivated
/// and the move runs, so nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_with_active_destination_behind_the_dead_source_loses_no_write() -> anyhow::Result<()>
{
    let (a, b, mut expected) = loaded_pair(50).await?;
    replicate_until_converged(&a, &b, V).await?;
    let mut ca = e2e::client(&a).await?;
    e2e::load_vb(&mut ca, &mut expected, V, "late", 0..30).await?;
    a.set_vbucket(e2e::BUCKET, V, VbState::Dead).await?;
    b.set_vbucket(e2e::BUCKET, V, VbState::Active).await?;

    let report = run_move(&real_move(&a, &b.kv(), V, 10)).await?;
    assert!(!report.already_done, "{report:?}");
    assert_eq!(
        report.repairs,
        vec![
            set(Side::Consumer, VbState::Replica),
            set(Side::Producer, VbState::Active)
        ]
    );
    assert_moved(&a, &b, V, &expected).await
}

/// Destination active with everything (a completed move whose destination took
/// writes), source active again without writes of its own: the source is set
/// dead, the destination keeps its writes. A further rerun is already done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_with_both_active_demotes_the_stale_source() -> anyhow::Result<()> {
    let (a, b, mut expected) = loaded_pair(40).await?;
    run_move(&real_move(&a, &b.kv(), V, 10)).await?;
    let mut cb = e2e::client(&b).await?;
    e2e::load_vb(&mut cb, &mut expected, V, "after", 0..20).await?;
    a.set_vbucket(e2e::BUCKET, V, VbState::Active).await?;

    let report = run_move(&real_move(&a, &b.kv(), V, 10)).await?;
    assert!(report.already_done, "{report:?}");
    assert_eq!(report.repairs, vec![set(Side::Producer, VbState::Dead)]);
    assert_moved(&a, &b, V, &expected).await?;
    let report = run_move(&real_move(&a, &b.kv(), V, 10)).await?;
    assert!(report.already_done, "{report:?}");
    assert_eq!(report.repairs, vec![]);
    assert_moved(&a, &b, V, &expected).await
}

/// Source active and taking writes, destination set active by mistake while
/// behind (no writes of its own): the destination is demoted and the move runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_with_both_active_demotes_the_stale_destination() -> anyhow::Result<()> {
    let (a, b, mut expected) = loaded_pair(40).await?;
    replicate_until_converged(&a, &b, V).await?;
    b.set_vbucket(e2e::BUCKET, V, VbState::Active).await?;
    let mut ca = e2e::client(&a).await?;
    e2e::load_vb(&mut ca, &mut expected, V, "late", 0..20).await?;

    let report = run_move(&real_move(&a, &b.kv(), V, 10)).await?;
    assert!(!report.already_done);
    assert_eq!(report.repairs, vec![set(Side::Consumer, VbState::Replica)]);
    assert_moved(&a, &b, V, &expected).await
}

/// Both copies took writes the other lacks: no choice keeps every acknowledged
/// write, so the move refuses (typed, naming both peers) and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diverged_copies_are_refused_and_left_untouched() -> anyhow::Result<()> {
    let (a, b, mut expected) = loaded_pair(40).await?;
    run_move(&real_move(&a, &b.kv(), V, 10)).await?;
    let mut cb = e2e::client(&b).await?;
    e2e::load_vb(&mut cb, &mut expected, V, "on-b", 0..10).await?;
    a.set_vbucket(e2e::BUCKET, V, VbState::Active).await?;
    let mut ca = e2e::client(&a).await?;
    let mut on_a = Expected::new();
    e2e::load_vb(&mut ca, &mut on_a, V, "on-a", 0..10).await?;

    let err = run_move(&real_move(&a, &b.kv(), V, 10))
        .await
        .expect_err("diverged");
    assert!(
        matches!(&err, ReplError::Move { vb, step: MoveStep::Preflight, .. } if *vb == V),
        "{err:?}"
    );
    let ReplError::Move { source, .. } = &err else {
        unreachable!("matched above");
    };
    let ReplError::Diverged {
        vb,
        source_peer,
        destination_peer,
        ..
    } = &**source
    else {
        panic!("wrong error {err:?}");
    };
    assert_eq!(*vb, V);
    assert_eq!(source_peer, &a.kv());
    assert_eq!(destination_peer, &b.kv());
    assert_eq!(a.vbucket_state(e2e::BUCKET, V), VbState::Active);
    assert_eq!(b.vbucket_state(e2e::BUCKET, V), VbState::Active);
    e2e::assert_active_has(&mut ca, V, &on_a).await?;
    e2e::assert_active_has(&mut cb, V, &expected).await?;
    Ok(())
}

// ---- real nodes: movers and replications of one node pair (issue #8 item 4) ----

/// A move A→B uses its own takeover connection name, so a running regular
/// replication A→B (same node names) keeps its connections and keeps replicating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_does_not_break_a_running_replication_of_the_same_node_pair() -> anyhow::Result<()> {
    let (a, b, mut expected) = loaded_pair(30).await?;
    let replicated = e2e::vbs([0, 1, 2]);
    let r = e2e::start_replicator(e2e::replicator_config(&b, &a.kv())).await?;
    timeout(e2e::BOUND, r.setup_replication(replicated.clone())).await??;
    let regular = r.connection_name().to_string();
    assert_eq!(regular, "replication:nodeA->nodeB:default");

    let report = run_move(&real_move(&a, &b.kv(), V, 10)).await?;
    assert_moved(&a, &b, V, &expected).await?;
    assert!(
        report.connection_name.starts_with("replication:takeover:")
            && report.connection_name.ends_with(":nodeA->nodeB:default:5"),
        "{}",
        report.connection_name
    );
    assert!(r.is_running(), "{:?}", r.termination());
    assert_eq!(r.get_partitions(), replicated);
    assert!(b.has_dcp_name(e2e::BUCKET, &regular) && a.has_dcp_name(e2e::BUCKET, &regular));
    // ... and keeps replicating.
    let mut ca = e2e::client(&a).await?;
    e2e::load_vb(&mut ca, &mut expected, Vbid(1), "later", 0..10).await?;
    let mut cb = e2e::client(&b).await?;
    e2e::wait_converged(&mut ca, &mut cb, &replicated).await?;
    timeout(e2e::BOUND, r.shut()).await??;
    Ok(())
}

/// Two concurrent moves A→B of different vbuckets both succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_moves_of_the_same_node_pair_both_succeed() -> anyhow::Result<()> {
    const W: Vbid = Vbid(6);
    let (a, b, mut expected) = loaded_pair(30).await?;
    let mut ca = e2e::client(&a).await?;
    e2e::load_vb(&mut ca, &mut expected, W, "w", 0..30).await?;
    let (one, two) = (real_move(&a, &b.kv(), V, 10), real_move(&a, &b.kv(), W, 10));
    let (r1, r2) = tokio::join!(run_move(&one), run_move(&two));
    let (r1, r2) = (r1?, r2?);
    assert_ne!(r1.connection_name, r2.connection_name);
    assert_moved(&a, &b, V, &expected).await?;
    assert_moved(&a, &b, W, &expected).await
}
