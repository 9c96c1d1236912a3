//! §7.9 takeover between two real nodes while a client keeps writing to the old
//! active: the vbucket ends active on the consumer node and dead on the producer
//! node, and every write the old active acknowledged is on the new active.

mod dcp_support;

use std::sync::{Arc, Mutex};

use mcbp::dcp::{MarkerFlags, SetVbucketState, SnapshotMarker, StreamEnd, StreamFlags};
use mcbp::{Cas, Datatype, Message, Opcode, Status, VbState, Vbid};
use testkit::node::*;
use tokio::time::timeout;

use dcp_support::*;

fn vb_state(n: &TestNode, vb: u16) -> VbState {
    n.node
        .state()
        .bucket("b")
        .expect("b")
        .bucket
        .vbucket_state(Vbid(vb))
        .expect("vb")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_moves_the_vbucket_without_losing_writes_made_during_the_move(
) -> anyhow::Result<()> {
    let a = TestNode::start().await?;
    let b = TestNode::start().await?;
    a.create_bucket("b", 4, Some(VbState::Active)).await?;
    b.create_bucket("b", 4, Some(VbState::Replica)).await?;
    let mut c = a.client("b").await?;
    for i in 0..300u32 {
        timeout(
            BOUND,
            c.store(
                Opcode::Set,
                Vbid(0),
                format!("pre{i}").as_bytes(),
                b"v",
                0,
                0,
                Cas(0),
                Datatype::RAW,
            ),
        )
        .await??;
    }
    let mut sp = Splice::open(&a, &b, "b", "replication:a->b:b").await?;
    assert_eq!(sp.add_streams([0], 0).await?[&0].status, Status::Success);
    wait_until("replica caught up", || {
        high_seqno(&a, "b", 0) == high_seqno(&b, "b", 0)
    })
    .await?;

    // A writer that keeps going until the old active refuses with NOT_MY_VBUCKET.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let acked2 = acked.clone();
    let writer = tokio::spawn(async move {
        for i in 0u32.. {
            let key = format!("during{i}");
            match timeout(
                BOUND,
                c.store(
                    Opcode::Set,
                    Vbid(0),
                    key.as_bytes(),
                    b"w",
                    0,
                    0,
                    Cas(0),
                    Datatype::RAW,
                ),
            )
            .await?
            {
                Ok(_) => acked2.lock().expect("acked").push(key),
                Err(e) if e.status() == Some(Status::NotMyVbucket) => {
                    return Ok::<_, anyhow::Error>(i)
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(0)
    });
    wait_until("writes are flowing", || {
        acked.lock().expect("acked").len() >= 50
    })
    .await?;

    // ns_server closes the replication stream, then adds a takeover stream.
    sp.close().await;
    let mut tk = Splice::open(&a, &b, "b", "replication:takeover:1:a->b:b:0").await?;
    let ans = tk.add_streams([0], StreamFlags::TAKEOVER).await?;
    assert_eq!(ans[&0].status, Status::Success);
    wait_until("the vbucket moved", || {
        vb_state(&a, 0) == VbState::Dead && vb_state(&b, 0) == VbState::Active
    })
    .await?;
    let refused_at = timeout(BOUND, writer).await???;
    assert!(refused_at > 0);
    wait_until("STREAM_END(OK)", || {
        !tk.frames(|d, f| d == Dir::ToConsumer && f.opcode() == Opcode::DcpStreamEnd)
            .is_empty()
    })
    .await?;

    // Nothing lost: every acknowledged write is on the new active, and the two
    // histories are identical.
    let live: std::collections::HashSet<Vec<u8>> = items(&b, "b", 0)
        .into_iter()
        .filter(|i| !i.deleted)
        .map(|i| i.key.to_vec())
        .collect();
    for k in acked.lock().expect("acked").iter() {
        assert!(live.contains(k.as_bytes()), "{k} lost");
    }
    assert_eq!(high_seqno(&a, "b", 0), high_seqno(&b, "b", 0));
    assert_same_items(&a, &b, "b", 0);

    // The wire sequence of §7.9: ACK markers, SET_VBUCKET_STATE(pending) and
    // (active) each answered, then STREAM_END(OK) last.
    let seq: Vec<String> = tk
        .frames(|d, _| d == Dir::ToConsumer)
        .iter()
        .filter_map(|(_, f)| match f.opcode() {
            Opcode::DcpSnapshotMarker if f.is_request() => {
                let m = SnapshotMarker::parse(f).ok()?;
                assert!(
                    m.flags.has(MarkerFlags::ACK),
                    "takeover markers ask for acks"
                );
                None
            }
            Opcode::DcpSetVbucketState => {
                Some(format!("svs:{}", SetVbucketState::parse(f).ok()?.state))
            }
            Opcode::DcpStreamEnd => Some(format!("end:{}", StreamEnd::parse(f).ok()?.reason)),
            _ => None,
        })
        .collect();
    assert_eq!(seq, ["svs:pending", "svs:active", "end:OK(0x0)"]);
    let svs_answers =
        tk.frames(|d, f| d == Dir::ToProducer && f.is_client_response(Opcode::DcpSetVbucketState));
    assert_eq!(svs_answers.len(), 2);
    let marker_acks =
        tk.frames(|d, f| d == Dir::ToProducer && f.is_client_response(Opcode::DcpSnapshotMarker));
    assert!(!marker_acks.is_empty());
    // The new active takes writes.
    let mut cb = b.client("b").await?;
    timeout(
        BOUND,
        cb.store(
            Opcode::Set,
            Vbid(0),
            b"after",
            b"x",
            0,
            0,
            Cas(0),
            Datatype::RAW,
        ),
    )
    .await??;
    Ok(())
}

/// §7.9 step 5: a takeover stream that stays in its sending phase longer than
/// `takeover_max_time` makes front-end writes to the vbucket get ETMPFAIL; once the
/// stream moves on (marker acknowledged, vbucket pending then dead) the pause is
/// released and writes get NOT_MY_VBUCKET from the now-dead vbucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_takeover_pauses_front_end_writes_until_it_moves_on() -> anyhow::Result<()> {
    use bytes::Bytes;
    use mcbp::dcp::{OpenFlags, StreamReq};
    use mcbp::{FrameSpec, Opaque, Seqno, VbUuid};

    let a =
        TestNode::start_with(|c| c.dcp.takeover_max_time = std::time::Duration::from_millis(300))
            .await?;
    a.create_bucket("b", 4, Some(VbState::Active)).await?;
    let mut c = a.client("b").await?;
    for i in 0..20u32 {
        c.store(
            Opcode::Set,
            Vbid(0),
            format!("k{i}").as_bytes(),
            b"v",
            0,
            0,
            Cas(0),
            Datatype::RAW,
        )
        .await?;
    }
    // A hand-driven consumer: takeover stream request, then never ack the marker.
    let mut d = a.client("b").await?;
    d.dcp_open("takeover-test", OpenFlags(OpenFlags::PRODUCER), b"")
        .await?;
    let req = StreamReq {
        vbucket: Vbid(0),
        opaque: Opaque(77),
        flags: StreamFlags(StreamFlags::TAKEOVER),
        start: Seqno(0),
        end: Seqno(u64::MAX),
        vb_uuid: VbUuid(0),
        snap_start: Seqno(0),
        snap_end: Seqno(0),
        value: Bytes::new(),
    };
    let resp = d.call(&req).await?;
    assert_eq!(resp.status(), Status::Success);
    let marker = loop {
        let f = timeout(BOUND, d.read_frame("marker")).await??;
        if f.is_client_request(Opcode::DcpSnapshotMarker) {
            break SnapshotMarker::parse(&f)?;
        }
    };
    assert!(
        marker.flags.has(MarkerFlags::ACK),
        "takeover markers ask for an ack"
    );

    // Past the bound, writes to vb 0 are paused; other vbuckets are not.
    let deadline = std::time::Instant::now() + BOUND;
    loop {
        match c
            .store(
                Opcode::Set,
                Vbid(0),
                b"late",
                b"x",
                0,
                0,
                Cas(0),
                Datatype::RAW,
            )
            .await
        {
            Err(e) if e.status() == Some(Status::Etmpfail) => break,
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "writes were never paused"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    c.store(
        Opcode::Set,
        Vbid(1),
        b"other",
        b"x",
        0,
        0,
        Cas(0),
        Datatype::RAW,
    )
    .await?;

    // Ack the marker(s); answer SET_VBUCKET_STATE(pending): the vbucket goes dead.
    let mut seen_marker = Some(marker);
    loop {
        if let Some(m) = seen_marker.take() {
            let ack = FrameSpec::response(Opcode::DcpSnapshotMarker, Status::Success)
                .opaque(m.opaque)
                .to_frame();
            d.send_bytes(ack.bytes()).await?;
        }
        let f = timeout(BOUND, d.read_frame("takeover")).await??;
        if f.is_client_request(Opcode::DcpSnapshotMarker) {
            seen_marker = Some(SnapshotMarker::parse(&f)?);
        } else if f.is_client_request(Opcode::DcpSetVbucketState) {
            let s = SetVbucketState::parse(&f)?;
            let ok = FrameSpec::response(Opcode::DcpSetVbucketState, Status::Success)
                .opaque(s.opaque)
                .to_frame();
            d.send_bytes(ok.bytes()).await?;
            if s.state == VbState::Active {
                break;
            }
        } else if f.is_client_request(Opcode::DcpNoop) {
            let ok = FrameSpec::response(Opcode::DcpNoop, Status::Success)
                .opaque(f.opaque())
                .to_frame();
            d.send_bytes(ok.bytes()).await?;
        }
    }
    let end = loop {
        let f = timeout(BOUND, d.read_frame("stream end")).await??;
        if f.is_client_request(Opcode::DcpStreamEnd) {
            break StreamEnd::parse(&f)?;
        }
    };
    assert_eq!(end.reason, mcbp::dcp::EndReason::Ok);
    assert_eq!(vb_state(&a, 0), VbState::Dead);
    let e = c
        .store(
            Opcode::Set,
            Vbid(0),
            b"after",
            b"x",
            0,
            0,
            Cas(0),
            Datatype::RAW,
        )
        .await
        .expect_err("dead now");
    assert_eq!(
        e.status(),
        Some(Status::NotMyVbucket),
        "the pause is released once the takeover moved on"
    );
    Ok(())
}
