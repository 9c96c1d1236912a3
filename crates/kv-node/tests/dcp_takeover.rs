//! §7.9 takeover between two real nodes while a client keeps writing to the old
//! active: the vbucket ends active on the consumer node and dead on the producer
//! node, and every write the old active acknowledged is on the new active.

mod dcp_support;
mod support;

use std::sync::{Arc, Mutex};

use mcbp::dcp::{MarkerFlags, SetVbucketState, SnapshotMarker, StreamEnd, StreamFlags};
use mcbp::{Cas, Datatype, Message, Opcode, Status, VbState, Vbid};
use support::*;
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
    let a = start().await?;
    let b = start().await?;
    a.create_bucket("b", 4, Some(VbState::Active))?;
    b.create_bucket("b", 4, Some(VbState::Replica))?;
    let mut c = a.admin_client("b").await?;
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
    let mut cb = b.admin_client("b").await?;
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
