//! Producer and consumer nodes talking directly through a byte splice: full
//! replication with deletions and expirations, rollback of a diverged replica,
//! flow control with a tiny buffer, the vbtakeover stat.

mod dcp_support;

use std::time::Duration;

use kv_client::Client;
use kv_engine::DeleteSource;
use mcbp::dcp::{StreamReqOutcome, StreamReqResponse};
use mcbp::{Cas, Datatype, Message, Opcode, Seqno, Status, VbState, Vbid};
use testkit::node::*;
use tokio::time::timeout;

use dcp_support::*;

const VBS: u16 = 16;

async fn write(
    c: &mut Client,
    vb: u16,
    key: &str,
    value: &str,
    flags: u32,
    expiry: u32,
    dt: Datatype,
) -> anyhow::Result<()> {
    timeout(
        BOUND,
        c.store(
            Opcode::Set,
            Vbid(vb),
            key.as_bytes(),
            value.as_bytes(),
            flags,
            expiry,
            Cas(0),
            dt,
        ),
    )
    .await??;
    Ok(())
}

async fn pair(
    consumer_cfg: impl FnOnce(&mut kv_node::NodeConfig),
) -> anyhow::Result<(TestNode, TestNode)> {
    let a = TestNode::start().await?;
    let b = TestNode::start_with(consumer_cfg).await?;
    a.create_bucket("b", VBS, Some(VbState::Active)).await?;
    b.create_bucket("b", VBS, Some(VbState::Replica)).await?;
    Ok((a, b))
}

/// Issue #4: 16 vbuckets, a few thousand documents with deletions and expirations,
/// part backfilled and part streamed from memory; the replica equals the active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_equals_active_after_catch_up_with_deletions_and_expirations() -> anyhow::Result<()>
{
    let (a, b) = pair(|_| {}).await?;
    let mut c = a.client("b").await?;
    c.hello("t", &[mcbp::kv::Feature::Json]).await?;
    // Backfill part: plain, JSON, flags, far expiry, soon-expiring.
    for i in 0..1600u32 {
        let vb = (i % u32::from(VBS)) as u16;
        let (value, dt) = if i % 3 == 0 {
            (format!("{{\"n\":{i}}}"), Datatype::JSON)
        } else {
            (format!("value-{i}"), Datatype::RAW)
        };
        let expiry = match i % 10 {
            0 => 1, // expires in a second: the pager makes it an expiration
            1 => 4_000_000_000,
            _ => 0,
        };
        write(&mut c, vb, &format!("k{i}"), &value, i, expiry, dt).await?;
    }
    let mut sp = Splice::open(&a, &b, "b", "replication:a->b:b").await?;
    let answers = sp.add_streams(0..VBS, 0).await?;
    for (vb, ans) in &answers {
        assert_eq!(ans.status, Status::Success, "vb {vb}");
        assert!(ans.stream_opaque.is_some());
    }
    // In-memory part: new docs, overwrites, deletions.
    for i in 1600..3200u32 {
        let vb = (i % u32::from(VBS)) as u16;
        write(&mut c, vb, &format!("k{i}"), "fresh", 7, 0, Datatype::RAW).await?;
        if i % 4 == 0 && (i - 1600) % 10 != 0 {
            let old = i - 1600;
            let ovb = (old % u32::from(VBS)) as u16;
            timeout(BOUND, c.delete(Vbid(ovb), format!("k{old}").as_bytes())).await??;
        }
    }
    // The expiry pager turns the 1-second documents into expirations.
    wait_until("the active expired its documents", || {
        (0..VBS)
            .map(|vb| {
                items(&a, "b", vb)
                    .iter()
                    .filter(|i| i.delete_source == DeleteSource::Expired && i.deleted)
                    .count()
            })
            .sum::<usize>()
            == 160
    })
    .await?;
    wait_until("the replica caught up", || {
        (0..VBS).all(|vb| high_seqno(&a, "b", vb) == high_seqno(&b, "b", vb))
    })
    .await?;
    for vb in 0..VBS {
        assert_same_items(&a, &b, "b", vb);
        let fa = a
            .node
            .state()
            .bucket("b")
            .expect("b")
            .bucket
            .failover_log(Vbid(vb))?;
        let fb = b
            .node
            .state()
            .bucket("b")
            .expect("b")
            .bucket
            .failover_log(Vbid(vb))?;
        assert_eq!(
            fa, fb,
            "vb {vb}: the replica adopted the producer's failover log"
        );
    }
    // Expirations went out as DCP_EXPIRATION (enable_expiry_opcode + delete times).
    assert!(!sp
        .frames(|d, f| d == Dir::ToConsumer && f.opcode() == Opcode::DcpExpiration)
        .is_empty());
    // Controls came first, in order, one at a time; nothing preceded them.
    let to_producer = sp.frames(|d, f| d == Dir::ToProducer && f.is_request());
    let keys: Vec<String> = to_producer
        .iter()
        .take(8)
        .map(|(_, f)| String::from_utf8_lossy(f.key()).into_owned())
        .collect();
    assert_eq!(
        keys,
        [
            "enable_noop",
            "set_noop_interval",
            "set_priority",
            "send_stream_end_on_client_close_stream",
            "enable_expiry_opcode",
            "include_deleted_user_xattrs",
            "v7_dcp_status_codes",
            "connection_buffer_size"
        ]
    );
    // vbtakeover: caught up -> in-memory with nothing left; unknown name.
    let mut st = a.client("b").await?;
    let s = timeout(BOUND, st.stats("dcp-vbtakeover 3 replication:a->b:b")).await??;
    assert!(s.contains(&("status".into(), "in-memory".into())), "{s:?}");
    assert!(s.contains(&("estimate".into(), "0".into())), "{s:?}");
    let s = timeout(BOUND, st.stats("dcp-vbtakeover 3 nobody")).await??;
    assert!(
        s.contains(&("status".into(), "connection_does_not_exist".into())),
        "{s:?}"
    );
    let s = timeout(BOUND, st.stats("dcp")).await??;
    assert!(
        s.iter()
            .any(|(k, v)| k == "eq_dcpq:replication:a->b:b:type" && v == "producer"),
        "{s:?}"
    );
    sp.close().await;
    Ok(())
}

/// §7.5: the replica is ahead on a history the new active never had. It rolls back
/// to the branch point (not to zero) and converges on the new active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_ahead_on_a_diverged_history_rolls_back_to_the_branch_point() -> anyhow::Result<()>
{
    let a = TestNode::start().await?;
    let b = TestNode::start().await?;
    let n = TestNode::start().await?;
    a.create_bucket("b", 4, Some(VbState::Active)).await?;
    b.create_bucket("b", 4, Some(VbState::Replica)).await?;
    n.create_bucket("b", 4, Some(VbState::Replica)).await?;
    let mut c = a.client("b").await?;
    for i in 0..10 {
        write(&mut c, 0, &format!("base{i}"), "v", 0, 0, Datatype::RAW).await?;
    }
    // Both replicas take the first 10; then only `b` gets 5 more.
    let mut to_b = Splice::open(&a, &b, "b", "repl:a->b").await?;
    let mut to_n = Splice::open(&a, &n, "b", "repl:a->n").await?;
    assert_eq!(to_b.add_streams([0], 0).await?[&0].status, Status::Success);
    assert_eq!(to_n.add_streams([0], 0).await?[&0].status, Status::Success);
    wait_until("n has 10", || high_seqno(&n, "b", 0) == Seqno(10)).await?;
    to_n.close().await;
    for i in 0..5 {
        write(&mut c, 0, &format!("lost{i}"), "v", 0, 0, Datatype::RAW).await?;
    }
    wait_until("b has 15", || high_seqno(&b, "b", 0) == Seqno(15)).await?;
    to_b.close().await;
    // Failover: n becomes active at 10 and takes its own writes.
    let ne = n.node.state().bucket("b").expect("b");
    n.node
        .state()
        .set_vbucket_state(&ne, Vbid(0), VbState::Active)?;
    let mut cn = n.client("b").await?;
    for i in 0..3 {
        write(&mut cn, 0, &format!("new{i}"), "v", 0, 0, Datatype::RAW).await?;
    }
    let mut sp = Splice::open(&n, &b, "b", "repl:n->b").await?;
    assert_eq!(sp.add_streams([0], 0).await?[&0].status, Status::Success);
    let rollbacks: Vec<Seqno> = sp
        .frames(|d, f| d == Dir::ToConsumer && f.is_client_response(Opcode::DcpStreamReq))
        .iter()
        .filter_map(|(_, f)| match StreamReqResponse::parse(f).ok()?.outcome {
            StreamReqOutcome::Rollback { to } => Some(to),
            _ => None,
        })
        .collect();
    assert_eq!(rollbacks, vec![Seqno(10)]);
    let reqs = sp.frames(|d, f| d == Dir::ToProducer && f.opcode() == Opcode::DcpStreamReq);
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[0].1.opaque(),
        reqs[1].1.opaque(),
        "re-sent with the same opaque"
    );
    wait_until("b converged on n", || high_seqno(&b, "b", 0) == Seqno(13)).await?;
    assert_same_items(&n, &b, "b", 0);
    assert!(items(&b, "b", 0)
        .iter()
        .all(|i| !i.key.starts_with(b"lost")));
    Ok(())
}

/// §7.6: a tiny consumer buffer still replicates everything; BUFFER_ACKs flow and
/// the producer never has much more than the window outstanding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_flow_control_buffer_still_replicates_everything() -> anyhow::Result<()> {
    let (a, b) = pair(|c| c.dcp.consumer_buffer_size = 600).await?;
    let mut c = a.client("b").await?;
    let big = "x".repeat(300);
    for i in 0..400u32 {
        write(
            &mut c,
            (i % 4) as u16,
            &format!("k{i}"),
            &big,
            0,
            0,
            Datatype::RAW,
        )
        .await?;
    }
    let mut sp = Splice::open(&a, &b, "b", "fc").await?;
    sp.add_streams(0..4, 0).await?;
    let mut st = a.client("b").await?;
    let mut max_unacked = 0u64;
    let deadline = tokio::time::Instant::now() + BOUND;
    while !(0..4).all(|vb| high_seqno(&a, "b", vb) == high_seqno(&b, "b", vb)) {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "replica never caught up"
        );
        let s = timeout(BOUND, st.stats("dcp")).await??;
        if let Some((_, v)) = s.iter().find(|(k, _)| k == "eq_dcpq:fc:unacked_bytes") {
            max_unacked = max_unacked.max(v.parse()?);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for vb in 0..4 {
        assert_same_items(&a, &b, "b", vb);
    }
    assert!(max_unacked < 600 + 400, "outstanding {max_unacked}");
    let acks =
        sp.frames(|d, f| d == Dir::ToProducer && f.opcode() == Opcode::DcpBufferAcknowledgement);
    assert!(acks.len() > 50, "{} acks", acks.len());
    Ok(())
}
