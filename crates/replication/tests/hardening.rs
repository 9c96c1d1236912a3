//! Issue #8 (hardening before the cluster), replication items 2, 3, 5, 7 and 10,
//! against scripted fake endpoints on 127.0.0.1. Every test failed on the code
//! before the fix; `timeout` only catches hangs, nothing sleeps to wait for a
//! condition.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kv_client::Credentials;
use mcbp::dcp::EndReason;
use mcbp::{Frame, Opaque, Opcode, Status, VbState, Vbid};
use replication::core::{CoreConfig, Side};
use replication::{
    ManagerConfig, ReplError, ReplicationManager, ReplicationMap, Replicator, ReplicatorConfig,
    Stage, WaitFor,
};
use testkit::fake::{AutoRole, FakeConfig, FakeConn, FakeNode, WAIT};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

/// What "takes effect at once" means for a stop path (issue #8 item 2).
const STOP_BOUND: Duration = Duration::from_secs(1);

fn creds() -> Credentials {
    Credentials {
        user: "admin".into(),
        password: "password".into(),
    }
}

fn core(op: Duration) -> CoreConfig {
    CoreConfig {
        setup_timeout: op,
        close_timeout: op,
        takeover_timeout: op,
        shut_timeout: Duration::from_secs(2),
    }
}

fn replicator_config(c: &FakeNode, p: &FakeNode, op: Duration) -> ReplicatorConfig {
    let mut cfg = ReplicatorConfig::new(c.addr(), p.addr(), "default", creds());
    cfg.consumer_node = "nodeB".into();
    cfg.producer_node = "nodeA".into();
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.shut_timeout = Duration::from_secs(2);
    cfg.core = core(op);
    cfg
}

fn manager(consumer: &FakeNode, producers: &[(&str, &FakeNode)]) -> Arc<ReplicationManager> {
    let mut cfg = ManagerConfig::new("default", "nodeC", consumer.addr(), creds());
    for (name, node) in producers {
        cfg.nodes.insert((*name).to_string(), node.addr());
    }
    // Long bounds: only the stop paths may end the waits quickly.
    cfg.connect_timeout = Duration::from_secs(30);
    cfg.shut_timeout = Duration::from_secs(5);
    cfg.core = core(Duration::from_secs(30));
    Arc::new(ReplicationManager::new(cfg))
}

fn map(entries: &[(&str, &[u16])]) -> ReplicationMap {
    entries
        .iter()
        .map(|(n, vbs)| ((*n).to_string(), vbs.iter().copied().map(Vbid).collect()))
        .collect()
}

fn vbset(v: &[u16]) -> BTreeSet<Vbid> {
    v.iter().copied().map(Vbid).collect()
}

async fn start(
    c: &mut FakeNode,
    p: &mut FakeNode,
    op: Duration,
) -> (Replicator, FakeConn, FakeConn) {
    let r = timeout(WAIT, Replicator::start(replicator_config(c, p, op)))
        .await
        .expect("start hangs")
        .expect("start fails");
    let cc = c.accept().await;
    let pc = p.accept().await;
    (r, cc, pc)
}

async fn join<T>(h: JoinHandle<T>) -> T {
    timeout(WAIT, h)
        .await
        .expect("operation hangs")
        .expect("operation task panicked")
}

/// The consumer node requests the stream, the producer accepts (both forwarded).
async fn open_stream(c: &mut FakeConn, p: &mut FakeConn, vb: u16, w: u32) {
    c.send_stream_req(vb, w, false).await;
    let req = p.expect(Opcode::DcpStreamReq).await;
    assert_eq!((req.vbucket(), req.opaque()), (Vbid(vb), Opaque(w)));
    p.send_stream_req_ok(w).await;
    let resp = c.expect(Opcode::DcpStreamReq).await;
    assert!(resp.is_response());
}

/// A successful set-up of `vbs` (vb, wire stream opaque) from idle.
async fn establish(r: &Replicator, c: &mut FakeConn, p: &mut FakeConn, vbs: &[(u16, u32)]) {
    let rr = r.clone();
    let want: Vec<Vbid> = vbs.iter().map(|(v, _)| Vbid(*v)).collect();
    let setup = tokio::spawn(async move { rr.setup_replication(want).await });
    let mut adds = Vec::new();
    for _ in vbs {
        adds.push(c.expect(Opcode::DcpAddStream).await);
    }
    for (add, (vb, w)) in adds.iter().zip(vbs) {
        open_stream(c, p, *vb, *w).await;
        c.send_add_answer(add, Status::Success, Some(*w)).await;
    }
    join(setup).await.expect("set-up succeeds");
}

/// The manager's set-up of vb `vb` with a scripted consumer and producer.
async fn manager_establish(
    m: &Arc<ReplicationManager>,
    c_node: &mut FakeNode,
    p_node: &mut FakeNode,
    vb: u16,
    w: u32,
) -> (FakeConn, FakeConn) {
    let m2 = Arc::clone(m);
    let h = tokio::spawn(async move {
        m2.set_incoming_replication_map(map(&[("nodeA", &[vb])]))
            .await
    });
    let mut c = c_node.accept().await;
    let mut p = p_node.accept().await;
    let add = c.expect(Opcode::DcpAddStream).await;
    open_stream(&mut c, &mut p, vb, w).await;
    c.send_add_answer(&add, Status::Success, Some(w)).await;
    join(h).await.expect("set-up succeeds");
    (c, p)
}

/// What `conduit replicate` reports as `interrupted`: the error itself, or the
/// first of several.
fn reports_interrupted(err: &ReplError) -> bool {
    match err {
        ReplError::Interrupted => true,
        ReplError::Replications { errors } => {
            errors.first().is_some_and(|(_, e)| reports_interrupted(e))
        }
        _ => false,
    }
}

fn is_interrupted_for(err: &ReplError, node: &str) -> bool {
    match err {
        ReplError::Replications { errors } => errors
            .iter()
            .any(|(n, e)| n == node && matches!(e, ReplError::Interrupted)),
        _ => false,
    }
}

// ---- item 2: stopping never waits behind a set-up or a connect ----------------

#[derive(Clone, Copy, Debug)]
enum StopPath {
    StopNodes,
    Shutdown,
    RemoveFromMap,
}

async fn stop(m: &Arc<ReplicationManager>, how: StopPath) {
    match how {
        StopPath::StopNodes => m.stop_nodes(&["nodeA"]).await.expect("stop_nodes"),
        StopPath::Shutdown => m.shutdown().await,
        StopPath::RemoveFromMap => m
            .set_incoming_replication_map(ReplicationMap::new())
            .await
            .expect("removing every node"),
    }
}

/// A producer that accepted TCP but never answers SASL holds a set-up in its
/// connect (30 s bound); each stop path still takes effect within 1 s, and the
/// superseded call gets a typed `interrupted` at once.
#[tokio::test]
async fn stop_paths_do_not_wait_behind_a_connect_to_a_producer_that_never_answers_sasl() {
    for how in [
        StopPath::StopNodes,
        StopPath::Shutdown,
        StopPath::RemoveFromMap,
    ] {
        let c = FakeNode::auto(AutoRole::Consumer).await;
        let p = FakeNode::start(FakeConfig {
            mute_sasl: true,
            ..FakeConfig::default()
        })
        .await;
        let m = manager(&c, &[("nodeA", &p)]);
        let m2 = Arc::clone(&m);
        let stuck = tokio::spawn(async move {
            m2.set_incoming_replication_map(map(&[("nodeA", &[3])]))
                .await
        });
        p.wait_accepted(1).await;
        let t0 = Instant::now();
        stop(&m, how).await;
        assert!(t0.elapsed() < STOP_BOUND, "{how:?} took {:?}", t0.elapsed());
        let err = timeout(STOP_BOUND, stuck)
            .await
            .unwrap_or_else(|_| panic!("{how:?}: the superseded call still waits"))
            .expect("task")
            .expect_err("superseded");
        assert!(is_interrupted_for(&err, "nodeA"), "{how:?}: {err:?}");
        assert!(reports_interrupted(&err), "{how:?}: {err:?}");
        assert!(m.get_actual_replications().is_empty());
        assert!(m.replicators().is_empty(), "{how:?}");
    }
}

/// A set-up waiting for a black-holed producer's CLOSE_STREAM answer does not hold
/// up `stop_nodes`, `shutdown` or a removal from the map.
#[tokio::test]
async fn stop_paths_do_not_wait_behind_a_close_stream_to_a_black_holed_producer() {
    for how in [
        StopPath::StopNodes,
        StopPath::Shutdown,
        StopPath::RemoveFromMap,
    ] {
        let mut c_node = FakeNode::default_node().await;
        let mut p_node = FakeNode::default_node().await;
        let m = manager(&c_node, &[("nodeA", &p_node)]);
        let (mut c, mut p) = manager_establish(&m, &mut c_node, &mut p_node, 1, 0x101).await;
        // Move vb 1 away: CLOSE_STREAM to both; the producer never answers.
        let m2 = Arc::clone(&m);
        let pending = tokio::spawn(async move {
            m2.set_incoming_replication_map(map(&[("nodeA", &[2])]))
                .await
        });
        // The set-up sends ADD_STREAM(vb 2) and CLOSE_STREAM(vb 1) to the consumer.
        for _ in 0..2 {
            let f = c.recv().await;
            if f.opcode() == Opcode::DcpCloseStream {
                c.answer_status(&f, Status::Success).await;
            }
        }
        let _close_p = p.expect(Opcode::DcpCloseStream).await;
        let t0 = Instant::now();
        stop(&m, how).await;
        assert!(t0.elapsed() < STOP_BOUND, "{how:?} took {:?}", t0.elapsed());
        let r = timeout(STOP_BOUND, pending)
            .await
            .unwrap_or_else(|_| panic!("{how:?}: the superseded call still waits"))
            .expect("task");
        let err = r.expect_err("superseded");
        assert!(reports_interrupted(&err), "{how:?}: {err:?}");
        assert!(m.get_actual_replications().is_empty());
        // Both sockets of the stopped pair are closed.
        let _ = p.expect_eof().await;
        let _ = c.expect_eof().await;
    }
}

/// After `stop_nodes`, a set-up of the same node works again (nothing is left
/// registered, the epoch does not block later calls).
#[tokio::test]
async fn a_node_stopped_during_a_connect_can_be_replicated_again() {
    let c = FakeNode::auto(AutoRole::Consumer).await;
    let mute = FakeNode::start(FakeConfig {
        mute_sasl: true,
        ..FakeConfig::default()
    })
    .await;
    let good = FakeNode::auto(AutoRole::Producer).await;
    let m = manager(&c, &[("nodeA", &mute)]);
    let m2 = Arc::clone(&m);
    let stuck = tokio::spawn(async move {
        m2.set_incoming_replication_map(map(&[("nodeA", &[3])]))
            .await
    });
    mute.wait_accepted(1).await;
    m.stop_nodes(&["nodeA"]).await.expect("stop");
    let _ = join(stuck).await;
    m.set_node_address("nodeA", good.addr());
    timeout(
        WAIT,
        m.set_incoming_replication_map(map(&[("nodeA", &[3])])),
    )
    .await
    .expect("hangs")
    .expect("a later set-up of the node succeeds");
    assert_eq!(m.get_actual_replications(), map(&[("nodeA", &[3])]));
    m.shutdown().await;
}

// ---- item 3: back-pressure does not stop the clocks -----------------------------

/// The consumer stops reading; the producer floods until every buffer is full,
/// then resets its connection. The proxy notices the reset although its producer
/// reader is blocked by back-pressure: typed error and both sockets closed within
/// 2 s.
#[tokio::test]
async fn a_flooding_producer_that_resets_is_noticed_while_the_consumer_does_not_read() {
    let mut c_node = FakeNode::default_node().await;
    let mut p_node = FakeNode::default_node().await;
    let (r, mut c, mut p) = start(&mut c_node, &mut p_node, Duration::from_secs(30)).await;
    establish(&r, &mut c, &mut p, &[(1, 0x11)]).await;
    let written = p.flood(1, 0x11).await;
    assert!(written > 0);
    let t0 = Instant::now();
    p.reset();
    let end = timeout(Duration::from_secs(2), r.closed())
        .await
        .expect("the reset went unnoticed behind back-pressure");
    match end {
        Err(ReplError::ConnectionClosed {
            side: Side::Producer,
            ..
        }) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(r.get_partitions().is_empty());
    let _ = c.expect_eof().await;
}

/// A replicator with vb 1 established whose consumer never reads while the producer
/// has filled every buffer between them; the fakes are returned to stay alive.
async fn flooded_pair(bound: Duration) -> (Replicator, (FakeNode, FakeNode, FakeConn, FakeConn)) {
    let mut c_node = FakeNode::default_node().await;
    let mut p_node = FakeNode::default_node().await;
    let (r, mut c, mut p) = start(&mut c_node, &mut p_node, bound).await;
    establish(&r, &mut c, &mut p, &[(1, 0x11)]).await;
    let _ = p.flood(1, 0x11).await;
    (r, (c_node, p_node, c, p))
}

/// A consumer that never reads (its queue full behind a flooding producer) cannot
/// stop a set-up's clock: typed timeout at the configured bound.
#[tokio::test]
async fn a_setup_times_out_at_its_bound_while_the_consumer_never_reads() {
    let bound = Duration::from_secs(2);
    let (r, _held) = flooded_pair(bound).await;
    let t0 = Instant::now();
    let err = timeout(bound * 3, r.setup_replication([Vbid(1), Vbid(2)]))
        .await
        .expect("the set-up's clock stopped behind back-pressure")
        .expect_err("times out");
    assert!(
        matches!(
            &err,
            ReplError::Timeout {
                waiting_for: WaitFor::AddStream,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(t0.elapsed() >= bound);
    let _ = timeout(WAIT, r.closed()).await.expect("closes");
}

/// The same for a takeover.
#[tokio::test]
async fn a_takeover_times_out_at_its_bound_while_the_consumer_never_reads() {
    let bound = Duration::from_secs(2);
    let (r, _held) = flooded_pair(bound).await;
    let t0 = Instant::now();
    let err = timeout(bound * 3, r.takeover(Vbid(5)))
        .await
        .expect("the takeover's clock stopped behind back-pressure")
        .expect_err("times out");
    assert!(
        matches!(
            &err,
            ReplError::Timeout {
                waiting_for: WaitFor::Takeover,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(t0.elapsed() >= bound);
}

// ---- item 5: operations on one replicator are ordered, not refused --------------

/// Runs a takeover of `vb` to completion from the point where its ADD_STREAM was
/// read by the consumer.
async fn finish_takeover(c: &mut FakeConn, p: &mut FakeConn, add: &Frame, vb: u16, w: u32) {
    c.send_stream_req(vb, w, true).await;
    let _ = p.expect(Opcode::DcpStreamReq).await;
    p.send_stream_req_ok(w).await;
    let _ = c.expect(Opcode::DcpStreamReq).await;
    for state in [VbState::Pending, VbState::Active] {
        p.send_set_vbucket_state(vb, w, state).await;
        let s = c.expect(Opcode::DcpSetVbucketState).await;
        c.answer_status(&s, Status::Success).await;
        let _ = p.expect(Opcode::DcpSetVbucketState).await;
    }
    c.send_add_answer(add, Status::Success, Some(w)).await;
}

/// A set-up sent while a takeover runs waits for it, then runs: no `busy`.
#[tokio::test]
async fn a_setup_during_a_takeover_is_queued_not_refused() {
    let mut c_node = FakeNode::default_node().await;
    let mut p_node = FakeNode::default_node().await;
    let (r, mut c, mut p) = start(&mut c_node, &mut p_node, Duration::from_secs(10)).await;
    let rr = r.clone();
    let takeover = tokio::spawn(async move { rr.takeover(Vbid(4)).await });
    let add = c.expect(Opcode::DcpAddStream).await;
    let rr = r.clone();
    let setup = tokio::spawn(async move { rr.setup_replication([Vbid(1)]).await });
    // Give the set-up time to reach the actor: it must not be answered `busy`.
    assert!(
        timeout(Duration::from_millis(300), async {
            while !setup.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_err(),
        "the set-up was answered while the takeover ran: {:?}",
        join(setup).await
    );
    finish_takeover(&mut c, &mut p, &add, 4, 0x44).await;
    join(takeover).await.expect("takeover succeeds");
    let add1 = c.expect(Opcode::DcpAddStream).await;
    assert_eq!(add1.vbucket(), Vbid(1));
    open_stream(&mut c, &mut p, 1, 0x11).await;
    c.send_add_answer(&add1, Status::Success, Some(0x11)).await;
    join(setup).await.expect("queued set-up succeeds");
    assert_eq!(r.get_partitions(), vbset(&[1]));
    r.abort();
}

/// A takeover sent while a set-up waits for answers runs after it: no `busy`.
#[tokio::test]
async fn a_takeover_during_a_setup_is_queued_not_refused() {
    let mut c_node = FakeNode::default_node().await;
    let mut p_node = FakeNode::default_node().await;
    let (r, mut c, mut p) = start(&mut c_node, &mut p_node, Duration::from_secs(10)).await;
    let rr = r.clone();
    let setup = tokio::spawn(async move { rr.setup_replication([Vbid(1)]).await });
    let add1 = c.expect(Opcode::DcpAddStream).await;
    let rr = r.clone();
    let takeover = tokio::spawn(async move { rr.takeover(Vbid(4)).await });
    open_stream(&mut c, &mut p, 1, 0x11).await;
    assert!(!takeover.is_finished());
    c.send_add_answer(&add1, Status::Success, Some(0x11)).await;
    join(setup).await.expect("set-up succeeds");
    let add = c.expect(Opcode::DcpAddStream).await;
    assert_eq!(add.vbucket(), Vbid(4));
    finish_takeover(&mut c, &mut p, &add, 4, 0x44).await;
    join(takeover).await.expect("queued takeover succeeds");
    r.abort();
}

/// The manager does not call a replicator whose wanted set is unchanged: the same
/// map again returns at once while that replicator runs a takeover.
#[tokio::test]
async fn an_unchanged_map_skips_a_replicator_busy_with_a_takeover() {
    let mut c_node = FakeNode::default_node().await;
    let mut p_node = FakeNode::default_node().await;
    let m = manager(&c_node, &[("nodeA", &p_node)]);
    let (mut c, _p) = manager_establish(&m, &mut c_node, &mut p_node, 1, 0x11).await;
    let m2 = Arc::clone(&m);
    let _takeover = tokio::spawn(async move { m2.takeover("nodeA", Vbid(4)).await });
    let _add = c.expect(Opcode::DcpAddStream).await;
    timeout(
        STOP_BOUND,
        m.set_incoming_replication_map(map(&[("nodeA", &[1])])),
    )
    .await
    .expect("an unchanged map waited behind the takeover")
    .expect("an unchanged map succeeds");
    let m2 = Arc::clone(&m);
    let changed =
        tokio::spawn(async move { m2.change_vbucket_replication(Vbid(2), Some("nodeA")).await });
    // A changed set queues behind the takeover instead of failing `busy`.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!changed.is_finished(), "{:?}", join(changed).await);
    m.stop_nodes(&["nodeA"]).await.expect("stop");
}

/// `conduit replicate --takeover` without a prior set-up: the manager starts the
/// connection for the takeover.
#[tokio::test]
async fn a_takeover_starts_its_connection_when_none_exists() {
    let c = FakeNode::auto(AutoRole::Consumer).await;
    let p = FakeNode::auto(AutoRole::Producer).await;
    let m = manager(&c, &[("nodeA", &p)]);
    timeout(WAIT, m.takeover("nodeA", Vbid(11)))
        .await
        .expect("hangs")
        .expect("takeover without a set-up succeeds");
    p.wait_events("the takeover", |ev| {
        ev.iter()
            .any(|e| matches!(e, testkit::fake::AutoEvent::TookOver(_, 11)))
    })
    .await;
    m.shutdown().await;
}

// ---- item 7: teardown flushes what was already read -----------------------------

/// The seed race: STREAM_END for a stream whose ADD_STREAM answer is pending. The
/// STREAM_REQ answer and the STREAM_END, read from the producer before the failure,
/// still reach the consumer before its socket closes.
#[tokio::test]
async fn teardown_forwards_the_stream_request_answer_and_the_stream_end_already_read() {
    for _ in 0..5 {
        let mut c_node = FakeNode::default_node().await;
        let mut p_node = FakeNode::default_node().await;
        let (r, mut c, mut p) = start(&mut c_node, &mut p_node, Duration::from_secs(10)).await;
        let rr = r.clone();
        let setup = tokio::spawn(async move { rr.setup_replication([Vbid(2)]).await });
        let _add = c.expect(Opcode::DcpAddStream).await;
        c.send_stream_req(2, 0x22, false).await;
        let _ = p.expect(Opcode::DcpStreamReq).await;
        p.send_stream_req_ok(0x22).await;
        p.send_stream_end(2, 0x22, EndReason::StateChanged).await;
        let err = join(setup).await.expect_err("fails");
        assert!(
            matches!(&err, ReplError::UnexpectedStreamEnd { vb: Vbid(2), .. }),
            "{err:?}"
        );
        let seen = c.expect_eof().await;
        let ops: Vec<(Opcode, bool)> = seen.iter().map(|f| (f.opcode(), f.is_response())).collect();
        assert!(
            ops.contains(&(Opcode::DcpStreamReq, true)),
            "stream request answer lost: {ops:?}"
        );
        assert!(
            ops.contains(&(Opcode::DcpStreamEnd, false)),
            "stream end lost: {ops:?}"
        );
        let _ = p.expect_eof().await;
    }
}

// ---- item 10: dead replicators leave no state ------------------------------------

/// A torn-down replicator reports no partitions, and the manager's liveness view
/// drops its producer within 1 s.
#[tokio::test]
async fn a_dead_replicator_keeps_no_partitions_and_leaves_the_liveness_view() {
    let mut c_node = FakeNode::default_node().await;
    let mut p_node = FakeNode::default_node().await;
    let m = manager(&c_node, &[("nodeA", &p_node)]);
    let (_c, p) = manager_establish(&m, &mut c_node, &mut p_node, 1, 0x11).await;
    let r = m.replicator("nodeA", 0).expect("replicator");
    assert!(m.node_liveness().contains_key("nodeA"));
    p.close().await;
    let _ = timeout(WAIT, r.closed()).await.expect("closes");
    assert!(r.get_partitions().is_empty());
    assert!(m.get_actual_replications().is_empty());
    let t0 = Instant::now();
    while m.node_liveness().contains_key("nodeA") {
        assert!(
            t0.elapsed() < STOP_BOUND,
            "liveness still lists the dead replicator's node"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---- item 9: error contract --------------------------------------------------------

/// A connect that times out says `waiting_for: connect` and names the vbuckets
/// that waited for it.
#[tokio::test]
async fn a_connect_timeout_names_connect_and_the_pending_vbuckets() {
    let c = FakeNode::auto(AutoRole::Consumer).await;
    let p = FakeNode::start(FakeConfig {
        mute_sasl: true,
        ..FakeConfig::default()
    })
    .await;
    let mut cfg = ManagerConfig::new("default", "nodeC", c.addr(), creds());
    cfg.nodes.insert("nodeA".into(), p.addr());
    cfg.connect_timeout = Duration::from_millis(300);
    cfg.core = core(Duration::from_secs(5));
    let m = ReplicationManager::new(cfg);
    let err = timeout(
        WAIT,
        m.set_incoming_replication_map(map(&[("nodeA", &[3, 4])])),
    )
    .await
    .expect("hangs")
    .expect_err("times out");
    let ReplError::Replications { errors } = &err else {
        panic!("wrong error {err:?}");
    };
    let Some((_, ReplError::Connect(c))) = errors.first() else {
        panic!("wrong error {err:?}");
    };
    assert!(c.is_timeout(), "{c:?}");
    assert_eq!((c.stage, c.side), (Stage::Sasl, Side::Producer), "{c:?}");
    assert_eq!(c.vbuckets, vec![Vbid(3), Vbid(4)], "{c:?}");
}

/// A producer that never answers our CLOSE_STREAM: the timeout names the producer.
#[tokio::test]
async fn a_late_producer_close_stream_answer_names_the_producer() {
    let mut c_node = FakeNode::default_node().await;
    let mut p_node = FakeNode::default_node().await;
    let (r, mut c, mut p) = start(&mut c_node, &mut p_node, Duration::from_millis(500)).await;
    establish(&r, &mut c, &mut p, &[(4, 0x44)]).await;
    let rr = r.clone();
    let h = tokio::spawn(async move { rr.setup_replication([]).await });
    let close_c = c.expect(Opcode::DcpCloseStream).await;
    let _close_p = p.expect(Opcode::DcpCloseStream).await;
    c.answer_status(&close_c, Status::Success).await;
    let err = join(h).await.expect_err("times out");
    assert!(
        matches!(&err, ReplError::Timeout { waiting_for: WaitFor::CloseStream, peer: Some(peer), .. }
            if *peer == p_node.addr()),
        "{err:?}"
    );
}
