//! The proxy pair and replicator against scripted fake endpoints (issue #5 "Tests";
//! `replication-layer.md` §2.3, §5.5–§5.9, §11.4): one test per race of the spec.
//!
//! Each race test asserts the typed error, a bound on time, that both sockets were
//! closed (the fakes observe EOF) and that a retry with a new replicator succeeds.
//! `tokio::time::timeout` only catches hangs; nothing sleeps to wait for a condition.

use std::collections::BTreeSet;
use std::time::Duration;

use kv_client::Credentials;
use mcbp::dcp::EndReason;
use mcbp::{FrameSpec, Opaque, Opcode, Status, VbState, Vbid};
use replication::core::{CoreConfig, Side, StreamFailure, StreamOp, WaitingFor};
use replication::{ReplError, Replicator, ReplicatorConfig, WaitFor};
use testkit::fake::{FakeConn, FakeNode, WAIT};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

/// Upper bound asserted on every failing operation (the configured bounds are
/// lower; this only proves nothing waited on something that never came).
const FAIL_FAST: Duration = Duration::from_secs(3);

fn creds() -> Credentials {
    Credentials {
        user: "admin".into(),
        password: "password".into(),
    }
}

fn config(c: &FakeNode, p: &FakeNode) -> ReplicatorConfig {
    let mut cfg = ReplicatorConfig::new(c.addr(), p.addr(), "default", creds());
    cfg.consumer_node = "nodeB".into();
    cfg.producer_node = "nodeA".into();
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.shut_timeout = Duration::from_secs(2);
    cfg.core = CoreConfig {
        setup_timeout: Duration::from_secs(5),
        close_timeout: Duration::from_secs(5),
        takeover_timeout: Duration::from_secs(5),
        shut_timeout: Duration::from_secs(2),
    };
    cfg
}

struct Rig {
    c_node: FakeNode,
    p_node: FakeNode,
}

impl Rig {
    async fn new() -> Rig {
        Rig {
            c_node: FakeNode::default_node().await,
            p_node: FakeNode::default_node().await,
        }
    }

    async fn start_with(&mut self, cfg: ReplicatorConfig) -> (Replicator, FakeConn, FakeConn) {
        let r = timeout(WAIT, Replicator::start(cfg))
            .await
            .expect("start hangs")
            .expect("start fails");
        let c = self.c_node.accept().await;
        let p = self.p_node.accept().await;
        (r, c, p)
    }

    async fn start(&mut self) -> (Replicator, FakeConn, FakeConn) {
        let cfg = config(&self.c_node, &self.p_node);
        self.start_with(cfg).await
    }

    /// A retry after a failure: a new replicator on the same nodes establishes
    /// `vbs` cleanly.
    async fn retry_succeeds(&mut self, vbs: &[u16]) {
        let (r, mut c, mut p) = self.start().await;
        let with_w: Vec<(u16, u32)> = vbs.iter().map(|v| (*v, 0x200 + u32::from(*v))).collect();
        establish(&r, &mut c, &mut p, &with_w).await;
        assert_eq!(r.get_partitions(), vbset(vbs));
        r.abort();
        assert!(matches!(r.closed().await, Ok(())));
    }
}

fn vbset(v: &[u16]) -> BTreeSet<Vbid> {
    v.iter().copied().map(Vbid).collect()
}

fn spawn_setup(r: &Replicator, vbs: &[u16]) -> JoinHandle<Result<(), ReplError>> {
    let r = r.clone();
    let vbs: Vec<Vbid> = vbs.iter().copied().map(Vbid).collect();
    tokio::spawn(async move { r.setup_replication(vbs).await })
}

async fn join(h: JoinHandle<Result<(), ReplError>>) -> Result<(), ReplError> {
    timeout(WAIT, h)
        .await
        .expect("operation hangs")
        .expect("operation task panicked")
}

/// Drives the consumer and producer nodes through a successful set-up of `vbs`
/// (vb, wire stream opaque), from idle.
async fn establish(r: &Replicator, c: &mut FakeConn, p: &mut FakeConn, vbs: &[(u16, u32)]) {
    let setup = spawn_setup(r, &vbs.iter().map(|(v, _)| *v).collect::<Vec<_>>());
    let mut adds = Vec::new();
    for _ in vbs {
        adds.push(c.expect(Opcode::DcpAddStream).await);
    }
    for (add, (vb, w)) in adds.iter().zip(vbs) {
        assert_eq!(add.vbucket(), Vbid(*vb));
        open_stream(c, p, *vb, *w).await;
        c.send_add_answer(add, Status::Success, Some(*w)).await;
    }
    join(setup).await.expect("set-up succeeds");
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

/// Both sockets were closed by the proxy.
async fn both_closed(c: &mut FakeConn, p: &mut FakeConn) {
    c.expect_eof().await;
    p.expect_eof().await;
}

fn mutation(vb: u16, w: u32, key: &[u8]) -> mcbp::Frame {
    FrameSpec::request(Opcode::DcpMutation)
        .vbucket(Vbid(vb))
        .opaque(Opaque(w))
        .extras(&[0u8; 31])
        .key(key)
        .value(b"{\"v\":1}")
        .to_frame()
}

// ---- happy paths ------------------------------------------------------------------

/// §4.2, §5.6, §3.1: set-up of two streams; traffic is forwarded byte for byte in
/// both directions; partitions are served during the set-up (§7.5).
#[tokio::test]
async fn setup_establishes_streams_and_forwards_frames_unchanged() {
    let mut rig = Rig::new().await;
    let (r, mut c, mut p) = rig.start().await;
    assert_eq!(c.open_flags(), Some(0x124));
    assert_eq!(p.open_flags(), Some(0x125));
    assert_eq!(
        c.open.as_ref().map(|o| o.0.clone()),
        Some("replication:nodeA->nodeB:default".into())
    );

    let setup = spawn_setup(&r, &[3, 5]);
    let a3 = c.expect(Opcode::DcpAddStream).await;
    let a5 = c.expect(Opcode::DcpAddStream).await;
    // Served from state while the set-up waits.
    assert!(
        timeout(Duration::from_millis(100), async { r.get_partitions() })
            .await
            .is_ok()
    );
    assert!(r.get_partitions().is_empty());
    open_stream(&mut c, &mut p, 3, 0x11).await;
    c.send_add_answer(&a3, Status::Success, Some(0x11)).await;
    open_stream(&mut c, &mut p, 5, 0x12).await;
    c.send_add_answer(&a5, Status::Success, Some(0x12)).await;
    join(setup).await.expect("set-up succeeds");
    assert_eq!(r.get_partitions(), vbset(&[3, 5]));

    // Producer -> consumer data, several frames in one write, forwarded unchanged.
    let frames: Vec<_> = (0..50u8).map(|i| mutation(3, 0x11, &[b'k', i])).collect();
    let mut all = Vec::new();
    for f in &frames {
        all.extend_from_slice(f.bytes());
    }
    p.send_raw(&all).await;
    for f in &frames {
        let got = c.recv().await;
        assert_eq!(got.bytes(), f.bytes());
    }
    // Consumer -> producer (buffer ack), forwarded unchanged.
    let ack = FrameSpec::request(Opcode::DcpBufferAcknowledgement)
        .extras(&1000u32.to_be_bytes())
        .to_frame();
    c.send(&ack).await;
    assert_eq!(p.recv().await.bytes(), ack.bytes());
    assert!(r.liveness().last_heard(Side::Producer).is_some());
    assert!(r.liveness().last_heard(Side::Consumer).is_some());

    r.abort();
    assert!(matches!(timeout(WAIT, r.closed()).await, Ok(Ok(()))));
    both_closed(&mut c, &mut p).await;
}

// ---- §5.9: STREAM_END during a set-up -----------------------------------------------

/// §5.9 (MB-53445): the producer ends the new stream before the consumer node
/// answered our ADD_STREAM: the set-up fails with UnexpectedStreamEnd naming the vb,
/// the STREAM_END's opaque and reason; the pair is torn down.
#[tokio::test]
async fn stream_end_before_add_stream_answer_fails_setup_one_vbucket() {
    let mut rig = Rig::new().await;
    let (r, mut c, mut p) = rig.start().await;
    let t0 = Instant::now();
    let setup = spawn_setup(&r, &[7]);
    let _add = c.expect(Opcode::DcpAddStream).await;
    open_stream(&mut c, &mut p, 7, 0x21).await;
    p.send_stream_end(7, 0x21, EndReason::StateChanged).await;
    let err = join(setup).await.expect_err("set-up must fail");
    assert!(t0.elapsed() < FAIL_FAST);
    match &err {
        ReplError::UnexpectedStreamEnd {
            vb, opaque, reason, ..
        } => {
            assert_eq!(
                (*vb, *opaque, *reason),
                (Vbid(7), Opaque(0x21), EndReason::StateChanged)
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(
        matches!(&err, ReplError::UnexpectedStreamEnd { reason, .. } if reason.to_raw() == 2),
        "{err:?}"
    );
    both_closed(&mut c, &mut p).await;
    assert!(matches!(
        r.closed().await,
        Err(ReplError::UnexpectedStreamEnd { .. })
    ));
    assert!(r.get_partitions().is_empty());
    rig.retry_succeeds(&[7]).await;
}

/// §5.9 with 2 vbuckets: one stream is established, the other ends first.
#[tokio::test]
async fn stream_end_before_add_stream_answer_fails_setup_two_vbuckets() {
    let mut rig = Rig::new().await;
    let (r, mut c, mut p) = rig.start().await;
    let t0 = Instant::now();
    let setup = spawn_setup(&r, &[1, 2]);
    let a1 = c.expect(Opcode::DcpAddStream).await;
    let _a2 = c.expect(Opcode::DcpAddStream).await;
    open_stream(&mut c, &mut p, 1, 0x31).await;
    c.send_add_answer(&a1, Status::Success, Some(0x31)).await;
    open_stream(&mut c, &mut p, 2, 0x32).await;
    p.send_stream_end(2, 0x32, EndReason::BackfillFailed).await;
    let err = join(setup).await.expect_err("set-up must fail");
    assert!(t0.elapsed() < FAIL_FAST);
    assert!(
        matches!(
            err,
            ReplError::UnexpectedStreamEnd {
                vb: Vbid(2),
                opaque: Opaque(0x32),
                reason: EndReason::BackfillFailed,
                ..
            }
        ),
        "{err:?}"
    );
    both_closed(&mut c, &mut p).await;
    rig.retry_succeeds(&[1, 2]).await;
}

/// §5.9 second variant: the ADD_STREAM answer does arrive, after the STREAM_END; the
/// set-up has already failed and the stream is never reported established.
#[tokio::test]
async fn add_stream_answer_after_stream_end_still_fails_setup() {
    let mut rig = Rig::new().await;
    let (r, mut c, mut p) = rig.start().await;
    let t0 = Instant::now();
    let setup = spawn_setup(&r, &[4]);
    let add = c.expect(Opcode::DcpAddStream).await;
    open_stream(&mut c, &mut p, 4, 0x41).await;
    p.send_stream_end(4, 0x41, EndReason::StateChanged).await;
    // The consumer node forwards the end and then answers the ADD anyway.
    c.send_add_answer(&add, Status::Success, Some(0x41)).await;
    let err = join(setup).await.expect_err("set-up must fail");
    assert!(t0.elapsed() < FAIL_FAST);
    assert!(
        matches!(err, ReplError::UnexpectedStreamEnd { vb: Vbid(4), .. }),
        "{err:?}"
    );
    assert!(!r.get_partitions().contains(&Vbid(4)));
    both_closed(&mut c, &mut p).await;
    rig.retry_succeeds(&[4]).await;
}

/// §5.9 rule 3 (MB-34951): a STREAM_END carrying another opaque than the recorded
/// STREAM_REQ belongs to an older stream of the vbucket and must not fail the set-up.
#[tokio::test]
async fn stream_end_of_an_older_stream_does_not_fail_setup() {
    let mut rig = Rig::new().await;
    let (r, mut c, mut p) = rig.start().await;
    let setup = spawn_setup(&r, &[6]);
    let add = c.expect(Opcode::DcpAddStream).await;
    open_stream(&mut c, &mut p, 6, 0x61).await;
    p.send_stream_end(6, 0x05, EndReason::Closed).await;
    // Forwarded to the consumer node (it ignores it too).
    let end = c.expect(Opcode::DcpStreamEnd).await;
    assert_eq!(end.opaque(), Opaque(0x05));
    c.send_add_answer(&add, Status::Success, Some(0x61)).await;
    join(setup).await.expect("set-up succeeds");
    assert_eq!(r.get_partitions(), vbset(&[6]));
    r.abort();
    both_closed(&mut c, &mut p).await;
}

// ---- close-stream races (§5.5, §11.4a) ------------------------------------------------

/// §11.4(a), MB-15926: the producer answers our CLOSE and ends the stream; the
/// consumer node processed the end first and answers our CLOSE with KEY_ENOENT:
/// still a successful close.
#[tokio::test]
async fn close_stream_racing_stream_end_completes_setup() {
    let mut rig = Rig::new().await;
    let (r, mut c, mut p) = rig.start().await;
    establish(&r, &mut c, &mut p, &[(9, 0x91)]).await;
    let setup = spawn_setup(&r, &[]);
    let close_c = c.expect(Opcode::DcpCloseStream).await;
    let close_p = p.expect(Opcode::DcpCloseStream).await;
    assert_eq!((close_c.vbucket(), close_p.vbucket()), (Vbid(9), Vbid(9)));
    p.answer_status(&close_p, Status::Success).await;
    p.send_stream_end(9, 0x91, EndReason::Closed).await;
    let end = c.expect(Opcode::DcpStreamEnd).await;
    assert_eq!(end.vbucket(), Vbid(9));
    c.answer_status(&close_c, Status::KeyEnoent).await;
    join(setup).await.expect("close succeeds");
    assert!(r.get_partitions().is_empty());
    assert!(r.is_running());
    r.abort();
    both_closed(&mut c, &mut p).await;
}

/// §5.5 IMPROVE / §11.10: DCP_STREAM_NOT_FOUND (0x0a) from either node counts as
/// "already closed".
#[tokio::test]
async fn close_stream_not_found_from_both_sides_counts_as_closed() {
    let mut rig = Rig::new().await;
    let (r, mut c, mut p) = rig.start().await;
    establish(&r, &mut c, &mut p, &[(2, 0x22)]).await;
    let setup = spawn_setup(&r, &[]);
    let close_c = c.expect(Opcode::DcpCloseStream).await;
    let close_p = p.expect(Opcode::DcpCloseStream).await;
    c.answer_status(&close_c, Status::DcpStreamNotFound).await;
    p.answer_status(&close_p, Status::DcpStreamNotFound).await;
    join(setup).await.expect("close succeeds");
    assert!(r.get_partitions().is_empty());
    r.abort();
    both_closed(&mut c, &mut p).await;
}

/// §5.5: a failed close is reported with its vbucket, status and side; the pair
/// stays up and the producer's answer is never forwarded.
#[tokio::test]
async fn close_stream_failure_is_reported_and_pair_stays_up() {
    let mut rig = Rig::new().await;
    let (r, mut c, mut p) = rig.start().await;
    establish(&r, &mut c, &mut p, &[(8, 0x81)]).await;
    let setup = spawn_setup(&r, &[]);
    let close_c = c.expect(Opcode::DcpCloseStream).await;
    let close_p = p.expect(Opcode::DcpCloseStream).await;
    c.answer_status(&close_c, Status::Success).await;
    p.answer_status(&close_p, Status::Einval).await;
    let err = join(setup).await.expect_err("close must fail");
    match &err {
        ReplError::StreamsFailed { failures, .. } => {
            assert_eq!(failures.len(), 1);
            assert_eq!(
                (
                    failures[0].vb,
                    failures[0].side,
                    failures[0].status,
                    failures[0].op
                ),
                (
                    Vbid(8),
                    Side::Producer,
                    Status::Einval,
                    StreamOp::CloseStream
                )
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // Only CLOSE_STREAM failures: the CLI's `close_stream_failed`.
    assert!(
        matches!(&err, ReplError::StreamsFailed { failures, .. }
            if failures.iter().all(|f| f.op == StreamOp::CloseStream)),
        "{err:?}"
    );
    assert!(r.is_running());
    // The pair still works: a new set-up succeeds on the same replicator.
    establish(&r, &mut c, &mut p, &[(1, 0x85)]).await;
    r.abort();
    let _ = c.expect_eof().await;
    let _ = p.expect_eof().await;
}

/// ADD_STREAM answered with an error: add_stream_failed naming vb and status; the
/// answer is not forwarded to the producer and the pair stays up.
#[tokio::test]
async fn add_stream_error_is_reported_per_vbucket() {
    let mut rig = Rig::new().await;
    let (r, mut c, mut p) = rig.start().await;
    let setup = spawn_setup(&r, &[1, 2]);
    let a1 = c.expect(Opcode::DcpAddStream).await;
    let a2 = c.expect(Opcode::DcpAddStream).await;
    c.send_add_answer(&a1, Status::NotMyVbucket, None).await;
    open_stream(&mut c, &mut p, 2, 0x52).await;
    c.send_add_answer(&a2, Status::Success, Some(0x52)).await;
    let err = join(setup).await.expect_err("vb 1 fails");
    let ReplError::StreamsFailed { failures, .. } = &err else {
        panic!("unexpected {err:?}");
    };
    assert_eq!(
        failures,
        &[StreamFailure {
            op: StreamOp::AddStream,
            vb: Vbid(1),
            side: Side::Consumer,
            opaque: a1.opaque(),
            status: Status::NotMyVbucket,
        }]
    );
    assert_eq!(r.get_partitions(), vbset(&[2]));
    assert!(r.is_running());
    r.abort();
    let seen = p.expect_eof().await;
    assert!(
        seen.iter().all(|f| f.opcode() != Opcode::DcpAddStream),
        "{seen:?}"
    );
    let _ = c.expect_eof().await;
}

// ---- unknown opaque (§5.5) -------------------------------------------------------------

/// §5.5: during a set-up, an ADD_STREAM answer with an opaque we never issued is a
/// protocol error that tears the pair down.
#[tokio::test]
async fn unknown_opaque_answer_during_setup_tears_the_pair_down() {
    let mut rig = Rig::new().await;
    let (r, mut c, mut p) = rig.start().await;
    let t0 = Instant::now();
    let setup = spawn_setup(&r, &[3]);
    let _add = c.expect(Opcode::DcpAddStream).await;
    let bogus = mcbp::dcp::AddStreamResponse {
        opaque: Opaque(0x1234),
        status: Status::Success,
        stream_opaque: Some(Opaque(1)),
    };
    c.send(&mcbp::Message::to_frame(&bogus)).await;
    let err = join(setup).await.expect_err("must fail");
    assert!(t0.elapsed() < FAIL_FAST);
    match &err {
        ReplError::Protocol { side, opaque, .. } => {
            assert_eq!((*side, *opaque), (Side::Consumer, Some(Opaque(0x1234))));
        }
        other => panic!("unexpected {other:?}"),
    }
    both_closed(&mut c, &mut p).await;
    rig.retry_succeeds(&[3]).await;
}

/// §11.7: an ADD_STREAM answer nobody waits for (idle) is dropped, never forwarded.
#[tokio::test]
async fn unexpected_answer_in_idle_is_dropped_not_forwarded() {
    let mut rig = Rig::new().await;
    let (r, mut c, mut p) = rig.start().await;
    let bogus = mcbp::dcp::AddStreamResponse {
        opaque: Opaque(0x77),
        status: Status::Success,
        stream_opaque: None,
    };
    c.send(&mcbp::Message::to_frame(&bogus)).await;
    // A later frame arrives first at the producer: the bogus answer was dropped.
    let noop_resp = mcbp::Response::status_only(Opcode::DcpNoop, Opaque(1), Status::Success);
    c.send(&mcbp::Message::to_frame(&noop_resp)).await;
    let got = p.recv().await;
    assert_eq!(got.opcode(), Opcode::DcpNoop);
    assert!(r.is_running());
    r.abort();
    both_closed(&mut c, &mut p).await;
}

// ---- a socket closing in each state (§2.3) ---------------------------------------------

async fn closing_in_idle(side: Side) {
    let mut rig = Rig::new().await;
    let (r, mut c, mut p) = rig.start().await;
    establish(&r, &mut c, &mut p, &[(1, 0x11)]).await;
    let t0 = Instant::now();
    let mut survivor = match side {
        Side::Consumer => {
            c.close().await;
            p
        }
        Side::Producer => {
            p.close().await;
            c
        }
    };
    let err = timeout(WAIT, r.closed())
        .await
        .expect("closed hangs")
        .expect_err("abnormal end");
    assert!(t0.elapsed() < FAIL_FAST);
    match &err {
        ReplError::ConnectionClosed { side: s, .. } => assert_eq!(*s, side),
        other => panic!("unexpected {other:?}"),
    }
    survivor.expect_eof().await;
    // Calls after the end get the termination reason.
    let again = r.setup_replication([Vbid(1)]).await.expect_err("stopped");
    assert!(
        matches!(again, ReplError::ConnectionClosed { .. }),
        "{again:?}"
    );
    rig.retry_succeeds(&[1]).await;
}

/// §2.3: the consumer node closes its socket after the set-up.
#[tokio::test]
async fn consumer_socket_closing_in_idle_ends_the_replicator() {
    closing_in_idle(Side::Consumer).await;
}

/// §2.3: the producer node closes its socket after the set-up.
#[tokio::test]
async fn producer_socket_closing_in_idle_ends_the_replicator() {
    closing_in_idle(Side::Producer).await;
}

async fn closing_during_setup(side: Side) {
    let mut rig = Rig::new().await;
    let (r, mut c, mut p) = rig.start().await;
    let t0 = Instant::now();
    let setup = spawn_setup(&r, &[2]);
    let _add = c.expect(Opcode::DcpAddStream).await;
    let mut survivor = match side {
        Side::Consumer => {
            c.close().await;
            p
        }
        Side::Producer => {
            open_stream(&mut c, &mut p, 2, 0x22).await;
            p.close().await;
            c
        }
    };
    let err = join(setup).await.expect_err("must fail");
    assert!(t0.elapsed() < FAIL_FAST);
    assert!(
        matches!(&err, ReplError::ConnectionClosed { side: s, .. } if *s == side),
        "{err:?}"
    );
    survivor.expect_eof().await;
    rig.retry_succeeds(&[2]).await;
}

/// §2.3, MB-10720: the consumer node closes its socket while a set-up waits.
#[tokio::test]
async fn consumer_socket_closing_during_setup_fails_the_setup() {
    closing_during_setup(Side::Consumer).await;
}

/// §2.3, MB-10720: the producer node closes its socket while a set-up waits.
#[tokio::test]
async fn producer_socket_closing_during_setup_fails_the_setup() {
    closing_during_setup(Side::Producer).await;
}

async fn start_takeover(
    r: &Replicator,
    c: &mut FakeConn,
    p: &mut FakeConn,
    vb: u16,
    w: u32,
) -> (JoinHandle<Result<(), ReplError>>, mcbp::Frame) {
    let rr = r.clone();
    let h = tokio::spawn(async move { rr.takeover(Vbid(vb)).await });
    let add = c.expect(Opcode::DcpAddStream).await;
    assert_eq!(add.extras(), &1u32.to_be_bytes(), "takeover flag");
    c.send_stream_req(vb, w, true).await;
    let req = p.expect(Opcode::DcpStreamReq).await;
    assert_eq!(req.opaque(), Opaque(w));
    p.send_stream_req_ok(w).await;
    let _ = c.expect(Opcode::DcpStreamReq).await;
    (h, add)
}

async fn closing_during_takeover(side: Side) {
    let mut rig = Rig::new().await;
    let (r, mut c, mut p) = rig.start().await;
    let t0 = Instant::now();
    let (h, _add) = start_takeover(&r, &mut c, &mut p, 5, 0x55).await;
    p.send_set_vbucket_state(5, 0x55, VbState::Pending).await;
    let _ = c.expect(Opcode::DcpSetVbucketState).await;
    let mut survivor = match side {
        Side::Consumer => {
            c.close().await;
            p
        }
        Side::Producer => {
            p.close().await;
            c
        }
    };
    let err = join(h).await.expect_err("takeover must fail");
    assert!(t0.elapsed() < FAIL_FAST);
    assert!(
        matches!(&err, ReplError::ConnectionClosed { side: s, .. } if *s == side),
        "{err:?}"
    );
    survivor.expect_eof().await;
    rig.retry_succeeds(&[5]).await;
}

/// §2.3: the consumer node closes its socket during a takeover.
#[tokio::test]
async fn consumer_socket_closing_during_takeover_fails_the_takeover() {
    closing_during_takeover(Side::Consumer).await;
}

/// §2.3: the producer node closes its socket during a takeover.
#[tokio::test]
async fn producer_socket_closing_during_takeover_fails_the_takeover() {
    closing_during_takeover(Side::Producer).await;
}

/// §3.1: a corrupt byte stream (bad magic/length) is a protocol error naming the side.
#[tokio::test]
async fn corrupt_stream_from_producer_is_a_protocol_error() {
    let mut rig = Rig::new().await;
    let (r, mut c, mut p) = rig.start().await;
    let setup = spawn_setup(&r, &[1]);
    let _add = c.expect(Opcode::DcpAddStream).await;
    // A header whose extras+key exceed the body.
    let mut bad = vec![0u8; 24];
    bad[0] = 0x80;
    bad[1] = 0x57;
    bad[2] = 0xff;
    bad[3] = 0xff;
    p.send_raw(&bad).await;
    let err = join(setup).await.expect_err("must fail");
    assert!(
        matches!(
            &err,
            ReplError::Protocol {
                side: Side::Producer,
                ..
            }
        ),
        "{err:?}"
    );
    both_closed(&mut c, &mut p).await;
    rig.retry_succeeds(&[1]).await;
}

// ---- timeouts (§11.1) -------------------------------------------------------------

/// §5.9 / §11.1: a consumer node that never answers ADD_STREAM: the set-up fails
/// with a timeout naming the vbuckets, within the configured bound.
#[tokio::test]
async fn consumer_that_never_answers_times_out() {
    let mut rig = Rig::new().await;
    let mut cfg = config(&rig.c_node, &rig.p_node);
    cfg.core.setup_timeout = Duration::from_millis(300);
    let (r, mut c, mut p) = rig.start_with(cfg).await;
    let t0 = Instant::now();
    let setup = spawn_setup(&r, &[1, 2]);
    let _ = c.expect(Opcode::DcpAddStream).await;
    let _ = c.expect(Opcode::DcpAddStream).await;
    let err = join(setup).await.expect_err("must time out");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < FAIL_FAST,
        "{took:?}"
    );
    match &err {
        ReplError::Timeout {
            waiting_for,
            vbuckets,
            ..
        } => {
            assert_eq!(*waiting_for, WaitFor::AddStream);
            assert_eq!(vbuckets, &vec![Vbid(1), Vbid(2)]);
        }
        other => panic!("unexpected {other:?}"),
    }
    both_closed(&mut c, &mut p).await;
    let _ = WaitingFor::AddStream;
    rig.retry_succeeds(&[1, 2]).await;
}

/// §11.1: a producer that never answers our CLOSE_STREAM: close_stream timeout.
#[tokio::test]
async fn producer_that_never_answers_close_times_out() {
    let mut rig = Rig::new().await;
    let mut cfg = config(&rig.c_node, &rig.p_node);
    cfg.core.close_timeout = Duration::from_millis(300);
    let (r, mut c, mut p) = rig.start_with(cfg).await;
    establish(&r, &mut c, &mut p, &[(4, 0x44)]).await;
    let setup = spawn_setup(&r, &[]);
    let close_c = c.expect(Opcode::DcpCloseStream).await;
    let _close_p = p.expect(Opcode::DcpCloseStream).await;
    c.answer_status(&close_c, Status::Success).await;
    let err = join(setup).await.expect_err("must time out");
    assert!(
        matches!(&err, ReplError::Timeout { waiting_for: WaitFor::CloseStream, vbuckets, .. } if vbuckets == &vec![Vbid(4)]),
        "{err:?}"
    );
    both_closed(&mut c, &mut p).await;
    rig.retry_succeeds(&[4]).await;
}

// ---- takeover (§5.7, §5.8) ---------------------------------------------------------

/// §5.8 happy path, with the ADD_STREAM answer arriving last (MB-10779); the
/// takeover stream's STREAM_END after completion is ignored.
#[tokio::test]
async fn takeover_completes_after_active_ack_and_add_answer() {
    let mut rig = Rig::new().await;
    let (r, mut c, mut p) = rig.start().await;
    let (h, add) = start_takeover(&r, &mut c, &mut p, 3, 0x33).await;
    p.send_set_vbucket_state(3, 0x33, VbState::Pending).await;
    let s1 = c.expect(Opcode::DcpSetVbucketState).await;
    c.answer_status(&s1, Status::Success).await;
    let _ = p.expect(Opcode::DcpSetVbucketState).await;
    p.send_set_vbucket_state(3, 0x33, VbState::Active).await;
    let s2 = c.expect(Opcode::DcpSetVbucketState).await;
    c.answer_status(&s2, Status::Success).await;
    let _ = p.expect(Opcode::DcpSetVbucketState).await;
    // During the takeover, partitions are served at once (§7.5).
    assert!(r.get_partitions().is_empty());
    c.send_add_answer(&add, Status::Success, Some(0x33)).await;
    join(h).await.expect("takeover succeeds");
    p.send_stream_end(3, 0x33, EndReason::Ok).await;
    let _ = c.expect(Opcode::DcpStreamEnd).await;
    assert!(r.is_running());
    r.abort();
    both_closed(&mut c, &mut p).await;
}

/// §7.3: a takeover of a replicated vbucket first closes its stream on both sides.
#[tokio::test]
async fn takeover_of_a_replicated_vbucket_closes_the_stream_first() {
    let mut rig = Rig::new().await;
    let (r, mut c, mut p) = rig.start().await;
    establish(&r, &mut c, &mut p, &[(6, 0x66)]).await;
    let rr = r.clone();
    let h = tokio::spawn(async move { rr.takeover(Vbid(6)).await });
    let close_c = c.expect(Opcode::DcpCloseStream).await;
    let close_p = p.expect(Opcode::DcpCloseStream).await;
    c.answer_status(&close_c, Status::Success).await;
    p.answer_status(&close_p, Status::Einval).await;
    // §7.3 IMPROVE: the failed close fails the takeover; no takeover ADD is sent.
    let err = join(h).await.expect_err("takeover fails");
    assert!(matches!(&err, ReplError::StreamsFailed { .. }), "{err:?}");
    assert!(r.is_running());
    r.abort();
    let seen = c.expect_eof().await;
    assert!(seen.is_empty(), "{seen:?}");
    let _ = p.expect_eof().await;
}

/// §5.7 takeover IMPROVE (MUST): the takeover stream's STREAM_END before the
/// consumer acknowledged SET_VBUCKET_STATE(active) fails the takeover.
#[tokio::test]
async fn takeover_stream_end_before_completion_fails_the_takeover() {
    let mut rig = Rig::new().await;
    let (r, mut c, mut p) = rig.start().await;
    let t0 = Instant::now();
    let (h, _add) = start_takeover(&r, &mut c, &mut p, 2, 0x24).await;
    p.send_stream_end(2, 0x24, EndReason::StateChanged).await;
    let err = join(h).await.expect_err("takeover fails");
    assert!(t0.elapsed() < FAIL_FAST);
    assert!(
        matches!(
            &err,
            ReplError::UnexpectedStreamEnd {
                vb: Vbid(2),
                opaque: Opaque(0x24),
                ..
            }
        ),
        "{err:?}"
    );
    both_closed(&mut c, &mut p).await;
    rig.retry_succeeds(&[2]).await;
}

/// §11.8: a refused SET_VBUCKET_STATE during a takeover fails it (and the answer is
/// still forwarded to the producer).
#[tokio::test]
async fn takeover_set_vbucket_state_refused_fails_the_takeover() {
    let mut rig = Rig::new().await;
    let (r, mut c, mut p) = rig.start().await;
    let (h, _add) = start_takeover(&r, &mut c, &mut p, 1, 0x19).await;
    p.send_set_vbucket_state(1, 0x19, VbState::Pending).await;
    let s1 = c.expect(Opcode::DcpSetVbucketState).await;
    c.answer_status(&s1, Status::Einval).await;
    let err = join(h).await.expect_err("takeover fails");
    assert!(
        matches!(
            &err,
            ReplError::TakeoverFailed {
                vb: Vbid(1),
                status: Status::Einval,
                ..
            }
        ),
        "{err:?}"
    );
    both_closed(&mut c, &mut p).await;
    rig.retry_succeeds(&[1]).await;
}

// ---- shut and stop (§5.6, §7.4) ----------------------------------------------------

/// §7.4 `shutdown`: streams are closed on the consumer node only (MB-16064), then
/// both halves stop; `closed()` is Ok.
#[tokio::test]
async fn graceful_shut_closes_consumer_streams_only() {
    let mut rig = Rig::new().await;
    let (r, mut c, mut p) = rig.start().await;
    establish(&r, &mut c, &mut p, &[(1, 0x11), (2, 0x12)]).await;
    let rr = r.clone();
    let shut = tokio::spawn(async move { rr.shut().await });
    let c1 = c.expect(Opcode::DcpCloseStream).await;
    let c2 = c.expect(Opcode::DcpCloseStream).await;
    c.answer_status(&c1, Status::Success).await;
    c.answer_status(&c2, Status::KeyEnoent).await;
    join(shut).await.expect("shut succeeds");
    assert!(matches!(timeout(WAIT, r.closed()).await, Ok(Ok(()))));
    let seen = p.expect_eof().await;
    assert!(
        seen.iter().all(|f| f.opcode() != Opcode::DcpCloseStream),
        "{seen:?}"
    );
    c.expect_eof().await;
    let after = r.setup_replication([Vbid(1)]).await.expect_err("stopped");
    assert!(matches!(after, ReplError::Interrupted), "{after:?}");
}

/// §5.6 stuck shut IMPROVE: a shut while a set-up waits answers the set-up caller
/// at once (interrupted) and is itself bounded by the shut timeout.
#[tokio::test]
async fn shut_during_a_setup_interrupts_it_and_is_bounded() {
    let mut rig = Rig::new().await;
    let (r, mut c, mut p) = rig.start().await;
    let setup = spawn_setup(&r, &[3]);
    let _add = c.expect(Opcode::DcpAddStream).await;
    let t0 = Instant::now();
    let rr = r.clone();
    let shut = tokio::spawn(async move { rr.shut().await });
    let err = join(setup).await.expect_err("interrupted");
    assert!(matches!(err, ReplError::Interrupted), "{err:?}");
    // Nobody answers the close: the shut ends by its 2 s bound.
    let shut_result = join(shut).await;
    assert!(
        matches!(
            shut_result,
            Err(ReplError::Timeout {
                waiting_for: WaitFor::Shut,
                ..
            })
        ),
        "{shut_result:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(4));
    assert!(matches!(r.closed().await, Ok(())));
    both_closed(&mut c, &mut p).await;
}

/// §2.3 (MB-12158): a socket write blocked on a peer that stopped reading does not
/// block teardown; back-pressure stops the producer being read meanwhile.
#[tokio::test]
async fn teardown_completes_while_a_write_is_blocked() {
    let mut rig = Rig::new().await;
    let (r, c, mut p) = rig.start().await;
    // The consumer node never reads; the producer floods.
    let frame = FrameSpec::request(Opcode::DcpMutation)
        .vbucket(Vbid(0))
        .opaque(Opaque(1))
        .extras(&[0u8; 31])
        .key(b"k")
        .value(&vec![b'x'; 64 * 1024])
        .to_frame();
    let flood = tokio::spawn(async move {
        let mut sent = 0usize;
        // Stops once the proxy stops reading (back-pressure) or closes the socket.
        for _ in 0..4096 {
            if timeout(Duration::from_millis(500), p.send_raw(frame.bytes()))
                .await
                .is_err()
            {
                return (sent, p);
            }
            sent += 1;
        }
        (sent, p)
    });
    let (sent, mut p) = timeout(WAIT * 3, flood)
        .await
        .expect("flood hangs")
        .expect("flood task");
    // 4096 * 64 KiB = 256 MiB never fits in the proxy: back-pressure stopped it.
    assert!(sent < 4096, "no back-pressure: {sent} frames accepted");
    let t0 = Instant::now();
    r.abort();
    assert!(matches!(timeout(WAIT, r.closed()).await, Ok(Ok(()))));
    assert!(t0.elapsed() < FAIL_FAST);
    p.expect_eof().await;
    drop(c);
}
