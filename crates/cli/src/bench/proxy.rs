//! `conduit bench proxy`: DCP mutation throughput over loopback, sent directly
//! sender → receiver and through the replication proxy pair (`Replicator`) between
//! two fake nodes. The same sender and validating receiver serve both runs, so the
//! ratio isolates the proxy's cost.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use kv_client::Credentials;
use mcbp::{Opaque, Vbid};
use replication::{Replicator, ReplicatorConfig};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Duration};

use super::fake::{self, Flood};
use super::round3;

/// Flags of `conduit bench proxy`.
#[derive(Debug, Args)]
pub(crate) struct BenchProxyArgs {
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// DCP_MUTATION frames per run.
    #[arg(long, default_value_t = 1_000_000)]
    frames: u64,
    /// Bound, in seconds, on each run.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// Runs both measurements; MB/s count whole frames on the wire (10^6 bytes per MB).
pub(crate) async fn run(a: BenchProxyArgs) -> anyhow::Result<serde_json::Value> {
    let bound = Duration::from_secs(a.timeout);
    let direct = timeout(bound, direct(a.frames, a.value_size))
        .await
        .context("direct run timed out")??;
    let relayed = timeout(bound, relayed(a.frames, a.value_size))
        .await
        .context("relay run timed out")??;
    let proxied = timeout(bound, proxied(a.frames, a.value_size))
        .await
        .context("proxy run timed out")??;
    let flood = Flood {
        vb: Vbid(0),
        opaque: Opaque(0),
        frames: a.frames,
        value_size: a.value_size,
    };
    let per_sec = |d: Duration| a.frames as f64 / d.as_secs_f64();
    let mb = |d: Duration| round3(flood.wire_bytes() as f64 / 1e6 / d.as_secs_f64());
    Ok(json!({
        "bench": "proxy",
        "frames": a.frames,
        "value_size": a.value_size,
        "frame_bytes": flood.template().len(),
        "direct_frames_per_sec": per_sec(direct).round() as u64,
        "direct_mb_per_sec": mb(direct),
        "proxy_frames_per_sec": per_sec(proxied).round() as u64,
        "proxy_mb_per_sec": mb(proxied),
        "relay_frames_per_sec": per_sec(relayed).round() as u64,
        "ratio": round3(direct.as_secs_f64() / proxied.as_secs_f64()),
        "ratio_to_relay": round3(relayed.as_secs_f64() / proxied.as_secs_f64()),
    }))
}

async fn listener() -> anyhow::Result<TcpListener> {
    Ok(TcpListener::bind("127.0.0.1:0").await?)
}

/// Sender → receiver on one loopback connection; time from the first write to the
/// last validated frame.
async fn direct(frames: u64, value_size: usize) -> anyhow::Result<Duration> {
    let (receiver, addr) = receiver(frames, value_size).await?;
    send_and_time(addr, receiver, frames, value_size).await
}

/// The flood both the direct and the relayed run send.
fn plain_flood(frames: u64, value_size: usize) -> Flood {
    Flood {
        vb: Vbid(0),
        opaque: Opaque(1),
        frames,
        value_size,
    }
}

type Receiver = tokio::task::JoinHandle<anyhow::Result<tokio::time::Instant>>;

/// A validating receiver on a new listener: its task and address.
async fn receiver(frames: u64, value_size: usize) -> anyhow::Result<(Receiver, SocketAddr)> {
    let l = listener().await?;
    let addr = l.local_addr()?;
    let flood = plain_flood(frames, value_size);
    let task = tokio::spawn(async move {
        let (mut sock, _) = l.accept().await?;
        fake::receive_mutations(&mut sock, &mut bytes::BytesMut::new(), flood).await
    });
    Ok((task, addr))
}

/// Sends the flood to `addr`; the time from the first write until `receiver` saw
/// the last frame.
async fn send_and_time(
    addr: SocketAddr,
    receiver: Receiver,
    frames: u64,
    value_size: usize,
) -> anyhow::Result<Duration> {
    let mut sock = TcpStream::connect(addr).await?;
    sock.set_nodelay(true)?;
    let started = fake::send_mutations(&mut sock, plain_flood(frames, value_size)).await?;
    let done = receiver.await.context("receiver task")??;
    Ok(done - started)
}

/// Sender → a plain frame-parsing relay → receiver, in this process like the proxy
/// pair: the relay reads into one buffer, walks every whole frame's header in place
/// (magic and length checked) and writes each read's whole frames with one write.
/// The yardstick for the proxy's own cost (what `pipe_limit`'s `frame` case does,
/// here with the same sender, receiver and runtime as the other two runs).
async fn relayed(frames: u64, value_size: usize) -> anyhow::Result<Duration> {
    let (receiver, raddr) = receiver(frames, value_size).await?;
    let sl = listener().await?;
    let saddr = sl.local_addr()?;
    let relay = tokio::spawn(async move {
        let (mut from, _) = sl.accept().await?;
        let mut to = TcpStream::connect(raddr).await?;
        to.set_nodelay(true)?;
        relay_frames(&mut from, &mut to).await
    });
    let took = send_and_time(saddr, receiver, frames, value_size).await?;
    relay.await.context("relay task")??;
    Ok(took)
}

/// The plain relay's loop, until the sender closes.
async fn relay_frames(from: &mut TcpStream, to: &mut TcpStream) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BUF: usize = 1 << 20;
    let mut buf = vec![0u8; BUF];
    let (mut start, mut end) = (0usize, 0usize);
    loop {
        if BUF - end < BUF / 4 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        let n = from.read(&mut buf[end..]).await?;
        if n == 0 {
            return Ok(());
        }
        end += n;
        let mut at = start;
        // Only the bytes read so far: the rest of the buffer is stale.
        while let Some(h) = buf[..end].get(at..at + mcbp::HEADER_LEN) {
            anyhow::ensure!(matches!(h[0], 0x80 | 0x81 | 0x08 | 0x18), "bad magic");
            let len = mcbp::HEADER_LEN + u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
            anyhow::ensure!(len <= BUF / 2, "frame too large");
            if end - at < len {
                break;
            }
            at += len;
        }
        to.write_all(&buf[start..at]).await?;
        start = at;
    }
}

/// Fake producer node → proxy pair → fake consumer node; the replicator sets up one
/// stream (ADD_STREAM, the consumer's STREAM_REQ through the proxy, answers).
async fn proxied(frames: u64, value_size: usize) -> anyhow::Result<Duration> {
    let (pl, cl) = (listener().await?, listener().await?);
    let cfg = ReplicatorConfig::new(
        cl.local_addr()?.to_string(),
        pl.local_addr()?.to_string(),
        "bench",
        Credentials {
            user: "bench".into(),
            password: "bench".into(),
        },
    );
    let producer = tokio::spawn(fake::producer_node(pl, frames, value_size));
    let consumer = tokio::spawn(fake::consumer_node(cl, frames, value_size));
    let repl = Replicator::start(cfg)
        .await
        .context("starting the replicator")?;
    repl.setup_replication([Vbid(0)])
        .await
        .context("setting up the stream")?;
    // Both fake nodes' sockets stay open until the replicator is stopped: a closed
    // one would tear the pair down, perhaps before everything was delivered.
    let (done, _consumer_sock) = consumer.await.context("consumer task")??;
    let (started, _producer_sock) = producer.await.context("producer task")??;
    repl.abort();
    let _ = repl.closed().await;
    Ok(done - started)
}
