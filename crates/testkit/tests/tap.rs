//! The frame tap against the node fixture: transparent by default, logs every frame
//! and how each connection ended, and cuts exactly the frame its trigger matches.

use mcbp::{Cas, Datatype, Frame, Opcode, Status, VbState, Vbid};
use testkit::node::{client_config, creds, ADMIN, PASSWORD};
use testkit::tap::{Cut, Dir, Tap};
use testkit::TestNode;

async fn client_via(tap: &Tap) -> anyhow::Result<kv_client::Client> {
    let mut c = kv_client::Client::connect(&tap.addr, client_config()).await?;
    c.auth_plain(&creds(ADMIN, PASSWORD)).await?;
    c.select_bucket("default").await?;
    Ok(c)
}

async fn set(c: &mut kv_client::Client, key: &str) -> anyhow::Result<()> {
    c.store(
        Opcode::Set,
        Vbid(0),
        key.as_bytes(),
        b"v",
        0,
        0,
        Cas(0),
        Datatype::RAW,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn transparent_tap_logs_frames_and_the_side_that_closed() -> anyhow::Result<()> {
    let n = TestNode::start().await?;
    n.create_bucket("default", 1, Some(VbState::Active)).await?;
    let tap = Tap::start(n.kv()).await?;
    let mut c = client_via(&tap).await?;
    set(&mut c, "k").await?;
    assert_eq!(
        c.get(Vbid(0), b"k").await?.map(|g| g.value),
        Some("v".into())
    );
    let sets = |d: Dir, f: &Frame| f.opcode() == Opcode::Set && d == Dir::ToNode;
    assert_eq!(tap.frames(|d, f| sets(d, f) && f.is_request()).len(), 1);
    assert_eq!(
        tap.frames(|d, f| d == Dir::FromNode && f.opcode() == Opcode::Get)
            .len(),
        1
    );
    drop(c);
    assert_eq!(tap.wait_closed(1).await?, [Dir::ToNode]);
    assert!(!tap.fired());
    Ok(())
}

#[tokio::test]
async fn cut_tap_refuses_only_the_first_matching_frame() -> anyhow::Result<()> {
    let n = TestNode::start().await?;
    n.create_bucket("default", 1, Some(VbState::Active)).await?;
    let tap = Tap::with_cut(n.kv(), Cut::Refuse(Status::Etmpfail), |d, f| {
        d == Dir::ToNode && f.is_request() && f.opcode() == Opcode::Set
    })
    .await?;
    let mut c = client_via(&tap).await?;
    let e = set(&mut c, "k").await.expect_err("refused by the tap");
    let status = e
        .downcast_ref::<kv_client::ClientError>()
        .and_then(|e| e.status());
    assert_eq!(status, Some(Status::Etmpfail));
    assert!(tap.fired());
    assert_eq!(c.get(Vbid(0), b"k").await?, None, "the node never saw it");
    set(&mut c, "k").await?;
    assert!(c.get(Vbid(0), b"k").await?.is_some());
    Ok(())
}

#[tokio::test]
async fn cut_tap_kill_drops_the_connection() -> anyhow::Result<()> {
    let n = TestNode::start().await?;
    n.create_bucket("default", 1, Some(VbState::Active)).await?;
    let tap = Tap::with_cut(n.kv(), Cut::Kill, |d, f| {
        d == Dir::ToNode && f.opcode() == Opcode::Set
    })
    .await?;
    let mut c = client_via(&tap).await?;
    assert!(set(&mut c, "k").await.is_err());
    assert_eq!(tap.wait_closed(1).await?, [Dir::ToNode]);
    let mut direct = n.client("default").await?;
    assert_eq!(direct.get(Vbid(0), b"k").await?, None);
    Ok(())
}
