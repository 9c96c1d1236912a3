//! Bad input closes only the offending connection and loses nothing.

use std::time::Duration;

use kv_client::Client;
use mcbp::{Cas, Datatype, Opcode, VbState, Vbid};
use testkit::node::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn closed_by_peer(mut s: TcpStream) -> anyhow::Result<()> {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(BOUND, s.read(&mut buf)).await? {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn malformed_frames_close_that_connection_only() -> anyhow::Result<()> {
    let n = TestNode::start().await?;
    n.create_bucket("default", 4, Some(VbState::Active)).await?;
    let mut good = n.client("default").await?;
    good.store(
        Opcode::Set,
        Vbid(0),
        b"keep",
        b"me",
        0,
        0,
        Cas(0),
        Datatype::RAW,
    )
    .await?;

    // Key length larger than the body.
    let mut frame = mcbp::FrameSpec::request(Opcode::Get)
        .key(b"abc")
        .to_frame()
        .bytes()
        .to_vec();
    frame[2..4].copy_from_slice(&500u16.to_be_bytes());
    let mut bad = TcpStream::connect(n.node.kv_addr()).await?;
    bad.write_all(&frame).await?;
    closed_by_peer(bad).await?;

    // A body over the 30 MiB frame cap: refused from the header alone.
    let mut hdr = mcbp::FrameSpec::request(Opcode::Set)
        .to_frame()
        .bytes()
        .to_vec();
    hdr[8..12].copy_from_slice(&(31u32 * 1024 * 1024).to_be_bytes());
    let mut bad = TcpStream::connect(n.node.kv_addr()).await?;
    bad.write_all(&hdr).await?;
    closed_by_peer(bad).await?;

    // Unknown magic.
    let mut bad = TcpStream::connect(n.node.kv_addr()).await?;
    bad.write_all(&[0x42; 24]).await?;
    closed_by_peer(bad).await?;

    // The other connection and the data are untouched.
    assert_eq!(
        &good.get(Vbid(0), b"keep").await?.expect("kept").value[..],
        b"me"
    );
    Ok(())
}

#[tokio::test]
async fn idle_connections_time_out() -> anyhow::Result<()> {
    let n = TestNode::start_with(|c| c.idle_timeout = Duration::from_millis(300)).await?;
    let s = TcpStream::connect(n.node.kv_addr()).await?;
    closed_by_peer(s).await
}

#[tokio::test]
async fn the_connection_limit_refuses_extra_connections() -> anyhow::Result<()> {
    let n = TestNode::start_with(|c| c.max_connections = 2).await?;
    let mut a = Client::connect(&n.kv(), client_config()).await?;
    let mut b = Client::connect(&n.kv(), client_config()).await?;
    a.hello("a", &[]).await?;
    b.hello("b", &[]).await?;
    let third = TcpStream::connect(n.node.kv_addr()).await?;
    closed_by_peer(third).await?;
    drop(a);
    // Once one closes, a new connection is served again.
    let mut ok = None;
    for _ in 0..100 {
        let mut c = Client::connect(&n.kv(), client_config()).await?;
        if c.hello("c", &[]).await.is_ok() {
            ok = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok.is_some(), "a slot frees up after a close");
    Ok(())
}
