//! A client that pipelines GETs of large documents and never reads the answers:
//! the node holds at most `max_conn_output` (plus one answer) of unsent output for
//! it, closes it once a write has made no progress for the idle timeout, and shuts
//! down without waiting for it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use kv_node::Node;
use mcbp::kv::Get;
use mcbp::{Cas, Datatype, Message, Opaque, Opcode, VbState, Vbid};
use testkit::node::*;
use testkit::wait_until;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

const OUTPUT_BOUND: usize = 1024 * 1024;
const DOC_LEN: usize = 512 * 1024;
/// 64 MiB of answers if all were buffered.
const GETS: u32 = 128;

/// A node with one active vbucket holding a large document, anonymous access, and
/// no connection open.
async fn node_with_big_doc(idle: Duration) -> anyhow::Result<TestNode> {
    let n = TestNode::start_with(|c| {
        c.max_conn_output = OUTPUT_BOUND;
        c.idle_timeout = idle;
        c.anonymous_bucket = Some("default".to_string());
    })
    .await?;
    n.create_bucket("default", 1, Some(VbState::Active)).await?;
    let mut c = n.client("default").await?;
    c.store(
        Opcode::Set,
        Vbid(0),
        b"big",
        &vec![b'x'; DOC_LEN],
        0,
        0,
        Cas(0),
        Datatype::RAW,
    )
    .await?;
    drop(c);
    let counters = &n.node.state().counters;
    wait_until("the set-up connection to close", || {
        counters.curr_connections.load(Ordering::Relaxed) == 0
    })
    .await?;
    Ok(n)
}

/// Connects and sends `GETS` GETs of the large document in one write; never reads.
async fn flood(n: &TestNode) -> anyhow::Result<TcpStream> {
    let mut s = timeout(BOUND, TcpStream::connect(n.node.kv_addr())).await??;
    let mut req = BytesMut::new();
    for i in 0..GETS {
        Get {
            opcode: Opcode::Get,
            vbucket: Vbid(0),
            opaque: Opaque(i),
            key: bytes::Bytes::from_static(b"big"),
        }
        .encode(&mut req);
    }
    timeout(BOUND, s.write_all(&req)).await??;
    Ok(s)
}

fn high_water(node: &Node) -> usize {
    node.state()
        .counters
        .conn_output_high_water
        .load(Ordering::Relaxed)
}

#[tokio::test]
async fn a_client_that_never_reads_makes_the_node_buffer_at_most_the_output_bound(
) -> anyhow::Result<()> {
    let n = node_with_big_doc(Duration::from_secs(300)).await?;
    let _client = flood(&n).await?;
    wait_until("output to be buffered", || {
        high_water(&n.node) >= OUTPUT_BOUND
    })
    .await?;
    let most = high_water(&n.node);
    assert!(
        most <= OUTPUT_BOUND + DOC_LEN + 1024,
        "the node buffered {most} bytes of output for a client that does not read \
         (bound {OUTPUT_BOUND})"
    );
    Ok(())
}

#[tokio::test]
async fn a_write_without_progress_for_the_idle_timeout_closes_the_connection() -> anyhow::Result<()>
{
    let n = node_with_big_doc(Duration::from_millis(500)).await?;
    let _client = flood(&n).await?;
    wait_until("output to be buffered", || {
        high_water(&n.node) >= OUTPUT_BOUND
    })
    .await?;
    let counters = &n.node.state().counters;
    wait_until("the stalled connection to be closed", || {
        counters.curr_connections.load(Ordering::Relaxed) == 0
    })
    .await
}

#[tokio::test]
async fn shutdown_is_not_blocked_by_a_client_that_never_reads() -> anyhow::Result<()> {
    // The idle timeout is far away: only shutdown can end the stuck connection.
    let n = node_with_big_doc(Duration::from_secs(300)).await?;
    let _client = flood(&n).await?;
    wait_until("output to be buffered", || {
        high_water(&n.node) >= OUTPUT_BOUND
    })
    .await?;
    let TestNode { node, dir: _dir } = n;
    timeout(Duration::from_secs(5), node.shutdown())
        .await
        .map_err(|_| anyhow::anyhow!("shutdown waited for a client that does not read"))?;
    Ok(())
}
