//! Dead-connection detection with NOOPs (§7.7), DCP_OPEN validation, and each
//! issue #4 fault observed on the wire.

mod dcp_support;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use kv_node::faults::Fault;
use mcbp::dcp::{AddStream, Control, EndReason, OpenFlags, StreamEnd, StreamFlags};
use mcbp::{Frame, FrameDecoder, FrameSpec, Message, Opaque, Opcode, Status, VbState, Vbid};
use testkit::node::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use dcp_support::*;

/// Reads the next frame, or `None` once the peer closed.
async fn read_frame(s: &mut TcpStream, buf: &mut BytesMut) -> anyhow::Result<Option<Frame>> {
    let dec = FrameDecoder::default();
    loop {
        if let Some(f) = dec.decode(buf)? {
            return Ok(Some(f));
        }
        if timeout(BOUND, s.read_buf(buf)).await?? == 0 {
            return Ok(None);
        }
    }
}

async fn pair_with(
    fa: impl FnOnce(&mut kv_node::NodeConfig),
    fb: impl FnOnce(&mut kv_node::NodeConfig),
) -> anyhow::Result<(TestNode, TestNode)> {
    let a = TestNode::start_with(fa).await?;
    let b = TestNode::start_with(fb).await?;
    a.create_bucket("b", 4, Some(VbState::Active)).await?;
    b.create_bucket("b", 4, Some(VbState::Replica)).await?;
    Ok((a, b))
}

fn faulty(c: &mut kv_node::NodeConfig) {
    c.enable_fault_injection = true;
}

/// §7.7: once noop is on, a producer whose consumer goes silent sends noops and then
/// closes the connection after the idle timeout.
#[tokio::test]
async fn producer_closes_a_silent_consumer_after_the_idle_timeout() -> anyhow::Result<()> {
    let a = TestNode::start_with(|c| c.dcp.idle_timeout = Duration::from_millis(800)).await?;
    a.create_bucket("b", 4, Some(VbState::Active)).await?;
    let (mut s, mut buf) = dcp_conn(&a, "b", "silent", true).await?;
    for (i, (k, v)) in [("enable_noop", "true"), ("set_noop_interval", "0.100000")]
        .into_iter()
        .enumerate()
    {
        let mut out = BytesMut::new();
        Control::new(Opaque(i as u32), k, v).encode(&mut out);
        s.write_all(&out).await?;
    }
    let t0 = Instant::now();
    let mut noops = 0;
    while let Some(f) = read_frame(&mut s, &mut buf).await? {
        if f.opcode() == Opcode::DcpControl {
            assert_eq!(f.status(), Status::Success);
        }
        if f.opcode() == Opcode::DcpNoop {
            noops += 1;
        }
    }
    assert_eq!(noops, 1, "never a second noop while one is unanswered");
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t0.elapsed()
    );
    Ok(())
}

/// §7.7: a consumer whose producer goes silent closes after the idle timeout; and
/// before the first ADD_STREAM it writes nothing at all (§10.1).
#[tokio::test]
async fn consumer_writes_nothing_before_add_stream_and_closes_on_a_silent_producer(
) -> anyhow::Result<()> {
    let b = TestNode::start_with(|c| c.dcp.idle_timeout = Duration::from_millis(800)).await?;
    b.create_bucket("b", 4, Some(VbState::Replica)).await?;
    let (mut s, mut buf) = dcp_conn(&b, "b", "silent", false).await?;
    let early = timeout(Duration::from_millis(300), s.read_buf(&mut buf)).await;
    assert!(early.is_err(), "the consumer wrote before any ADD_STREAM");
    let mut out = BytesMut::new();
    AddStream {
        vbucket: Vbid(1),
        opaque: Opaque(1),
        flags: StreamFlags(0),
    }
    .encode(&mut out);
    s.write_all(&out).await?;
    let t0 = Instant::now();
    // Play a producer that accepts every control, then never answers the STREAM_REQ.
    let mut saw_req = false;
    while let Some(f) = read_frame(&mut s, &mut buf).await? {
        match f.opcode() {
            Opcode::DcpControl => {
                let mut out = BytesMut::new();
                FrameSpec::response_to(&f, Status::Success).encode(&mut out);
                s.write_all(&out).await?;
            }
            Opcode::DcpStreamReq => saw_req = true,
            _ => {}
        }
    }
    assert!(saw_req);
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t0.elapsed()
    );
    Ok(())
}

/// §6.2: bad flags and a value other than `{"consumer_name": ...}` on a consumer are
/// EINVAL; a connection opened with an existing name disconnects the old one.
#[tokio::test]
async fn dcp_open_validates_and_a_reused_name_disconnects_the_old_connection() -> anyhow::Result<()>
{
    let a = TestNode::start().await?;
    a.create_bucket("b", 4, Some(VbState::Active)).await?;
    let mut c = a.client("b").await?;
    let e = timeout(BOUND, c.dcp_open("x", OpenFlags(0x002), b""))
        .await?
        .expect_err("notifier");
    assert_eq!(e.status(), Some(Status::Einval));
    let e = timeout(
        BOUND,
        c.dcp_open(
            "x",
            OpenFlags::REPLICATION_PRODUCER,
            br#"{"consumer_name":"n"}"#,
        ),
    )
    .await?
    .expect_err("value on a producer");
    assert_eq!(e.status(), Some(Status::Einval));
    let e = timeout(
        BOUND,
        c.dcp_open("x", OpenFlags::REPLICATION_CONSUMER, br#"{"other":1}"#),
    )
    .await?
    .expect_err("unknown key");
    assert_eq!(e.status(), Some(Status::Einval));
    let (mut old, mut buf) = dcp_conn(&a, "b", "nuke-me", true).await?;
    let _new = dcp_conn(&a, "b", "nuke-me", true).await?;
    assert!(
        read_frame(&mut old, &mut buf).await?.is_none(),
        "old connection closed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_add_stream_response_fault_leaves_the_add_stream_unanswered() -> anyhow::Result<()> {
    let (a, b) = pair_with(|_| {}, faulty).await?;
    b.node
        .state()
        .faults
        .add(Fault::DropAddStreamResponse { vbucket: 1 });
    let mut sp = Splice::open(&a, &b, "b", "f").await?;
    sp.send_add_stream(1, 0);
    assert!(sp.answer(Duration::from_millis(500)).await.is_none());
    // The stream itself was set up: the producer accepted it.
    let ok = sp.frames(|d, f| d == Dir::ToConsumer && f.is_client_response(Opcode::DcpStreamReq));
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].1.status(), Status::Success);
    assert_eq!(sp.add_streams([2], 0).await?[&2].status, Status::Success);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_add_stream_response_fault_delays_the_answer() -> anyhow::Result<()> {
    let (a, b) = pair_with(|_| {}, faulty).await?;
    b.node.state().faults.add(Fault::DelayAddStreamResponse {
        vbucket: 1,
        ms: 400,
    });
    let mut sp = Splice::open(&a, &b, "b", "f").await?;
    let t0 = Instant::now();
    assert_eq!(sp.add_streams([1], 0).await?[&1].status, Status::Success);
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_stream_after_stream_req_fault_ends_the_new_stream() -> anyhow::Result<()> {
    let (a, b) = pair_with(faulty, |_| {}).await?;
    a.node.state().faults.add(Fault::EndStreamAfterStreamReq {
        vbucket: 1,
        reason: 2,
    });
    let mut sp = Splice::open(&a, &b, "b", "f").await?;
    assert_eq!(sp.add_streams([1], 0).await?[&1].status, Status::Success);
    wait_until("STREAM_END seen", || {
        !sp.frames(|d, f| d == Dir::ToConsumer && f.opcode() == Opcode::DcpStreamEnd)
            .is_empty()
    })
    .await?;
    let ends = sp.frames(|d, f| d == Dir::ToConsumer && f.opcode() == Opcode::DcpStreamEnd);
    assert_eq!(
        StreamEnd::parse(&ends[0].1)?.reason,
        EndReason::StateChanged
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_req_status_fault_fails_the_add_stream_with_that_status() -> anyhow::Result<()> {
    let (a, b) = pair_with(faulty, |_| {}).await?;
    a.node.state().faults.add(Fault::StreamReqStatus {
        vbucket: 1,
        status: 0x86,
    });
    let mut sp = Splice::open(&a, &b, "b", "f").await?;
    assert_eq!(sp.add_streams([1], 0).await?[&1].status, Status::Etmpfail);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_after_frames_fault_closes_the_next_dcp_connection() -> anyhow::Result<()> {
    let (a, b) = pair_with(|_| {}, faulty).await?;
    b.node
        .state()
        .faults
        .add(Fault::CloseAfterFrames { frames: 3 });
    let sp = Splice::open(&a, &b, "b", "f").await?;
    sp.send_add_stream(1, 0);
    wait_until("the consumer connection closed", || sp.closed()).await?;
    let from_proxy_side = sp.frames(|d, _| d == Dir::ToConsumer).len();
    assert_eq!(
        from_proxy_side, 2,
        "two control answers reached it before the close"
    );
    // Taken once: the next connection is unaffected.
    let mut sp = Splice::open(&a, &b, "b", "g").await?;
    assert_eq!(sp.add_streams([1], 0).await?[&1].status, Status::Success);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_fault_stops_dcp_connections_from_reading() -> anyhow::Result<()> {
    let (a, b) = pair_with(faulty, |_| {}).await?;
    a.node.state().faults.add(Fault::Stall { ms: 600 });
    // The stall starts when the producer connection opens, after t0: the stream
    // cannot be set up sooner than 600 ms after t0, however loaded the machine is.
    let t0 = Instant::now();
    let mut sp = Splice::open(&a, &b, "b", "f").await?;
    assert_eq!(sp.add_streams([1], 0).await?[&1].status, Status::Success);
    assert!(
        t0.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t0.elapsed()
    );
    Ok(())
}
