//! `conduit bench proxy`: DCP mutation throughput over loopback, sent directly
//! sender → receiver and through the replication proxy pair (`Replicator`) between
//! two fake nodes. The same sender and validating receiver serve both runs, so the
//! ratio isolates the proxy's cost.

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
        "ratio": round3(direct.as_secs_f64() / proxied.as_secs_f64()),
    }))
}

async fn listener() -> anyhow::Result<TcpListener> {
    Ok(TcpListener::bind("127.0.0.1:0").await?)
}

/// Sender → receiver on one loopback connection; time from the first write to the
/// last validated frame.
async fn direct(frames: u64, value_size: usize) -> anyhow::Result<Duration> {
    let flood = Flood {
        vb: Vbid(0),
        opaque: Opaque(1),
        frames,
        value_size,
    };
    let l = listener().await?;
    let addr = l.local_addr()?;
    let receiver = tokio::spawn(async move {
        let (mut sock, _) = l.accept().await?;
        fake::receive_mutations(&mut sock, &mut bytes::BytesMut::new(), flood).await
    });
    let mut sock = TcpStream::connect(addr).await?;
    sock.set_nodelay(true)?;
    let started = fake::send_mutations(&mut sock, flood).await?;
    let done = receiver.await.context("receiver task")??;
    Ok(done - started)
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
