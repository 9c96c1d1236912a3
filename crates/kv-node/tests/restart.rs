//! Persistence across restarts: clean shutdown and crash.

use kv_client::Client;
use mcbp::{Cas, Datatype, Opcode, Seqno, VbState, Vbid};
use testkit::node::*;

async fn write_docs(c: &mut Client, n: u32) -> anyhow::Result<()> {
    for i in 0..n {
        c.store(
            Opcode::Set,
            Vbid((i % 4) as u16),
            format!("doc{i}").as_bytes(),
            format!("value{i}").as_bytes(),
            i,
            0,
            Cas(0),
            Datatype::RAW,
        )
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_crash_after_persistence_keeps_documents_and_grows_the_failover_log() -> anyhow::Result<()>
{
    let n = TestNode::start().await?;
    n.create_bucket("default", 4, Some(VbState::Active)).await?;
    let mut c = n.client("default").await?;
    write_docs(&mut c, 200).await?;
    for vb in 0..4 {
        assert!(c.seqno_persistence(Vbid(vb), Seqno(50)).await?);
    }
    let before = c.failover_log(Vbid(0)).await?;
    drop(c);
    let TestNode { node, dir } = n;
    node.kill().await;

    let n = TestNode::start_in(dir, |_| {}).await?;
    let mut c = n.client("default").await?;
    for i in 0..200u32 {
        let g = c
            .get(Vbid((i % 4) as u16), format!("doc{i}").as_bytes())
            .await?
            .expect("persisted document survives");
        assert_eq!(g.value, format!("value{i}").as_bytes());
        assert_eq!(g.flags, i);
    }
    let stats = c.stats("vbucket-seqno 0").await?;
    assert!(
        stats.contains(&("vb_0:high_seqno".to_string(), "50".to_string())),
        "{stats:?}"
    );
    let after = c.failover_log(Vbid(0)).await?;
    assert_eq!(
        after.len(),
        before.len() + 1,
        "unclean shutdown adds one failover entry"
    );
    assert_eq!(after[0].seqno, Seqno(50), "at the persisted high seqno");
    assert_eq!(&after[1..], &before[..]);
    Ok(())
}

#[tokio::test]
async fn a_clean_shutdown_keeps_everything_and_the_same_failover_log() -> anyhow::Result<()> {
    let n = TestNode::start().await?;
    n.create_bucket("default", 4, Some(VbState::Active)).await?;
    let mut c = n.client("default").await?;
    write_docs(&mut c, 40).await?;
    c.set_vbucket(Vbid(3), VbState::Replica).await?;
    let before = c.failover_log(Vbid(0)).await?;
    drop(c);
    let TestNode { node, dir } = n;
    node.shutdown().await;

    let n = TestNode::start_in(dir, |_| {}).await?;
    let mut c = n.client("default").await?;
    assert_eq!(c.failover_log(Vbid(0)).await?, before);
    assert_eq!(
        &c.get(Vbid(1), b"doc1").await?.expect("kept").value[..],
        b"value1"
    );
    let stats = c.stats("vbucket").await?;
    assert!(
        stats.contains(&("vb_3".to_string(), "replica".to_string())),
        "{stats:?}"
    );
    Ok(())
}
