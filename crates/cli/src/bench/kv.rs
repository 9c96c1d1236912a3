//! `conduit bench kv`: pipelined SET then GET load against any MCBP server — a
//! Conduit node or Debian's memcached — with the same client settings for both.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use clap::Args;
use kv_client::{Client, ClientConfig, Credentials};
use mcbp::kv::{Get, Store};
use mcbp::{Cas, Datatype, FrameDecoder, Message, Opaque, Opcode, Status, Vbid};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{percentile, vbucket_of};

/// Flags of `conduit bench kv`.
#[derive(Debug, Args, Clone)]
pub(crate) struct BenchKvArgs {
    /// Server address.
    #[arg(long)]
    addr: String,
    /// SASL PLAIN user (omit for servers without authentication, e.g. memcached).
    #[arg(long)]
    user: Option<String>,
    /// Password for --user.
    #[arg(long, default_value = "")]
    password: String,
    /// Bucket to select (omit when the user's bucket is selected automatically).
    #[arg(long)]
    bucket: Option<String>,
    /// Operations per phase (SET, then GET).
    #[arg(long, default_value_t = 100_000)]
    ops: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 4)]
    connections: u64,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 16)]
    pipeline: u64,
    /// Number of vbuckets of the bucket (keys are hashed like the SDK does); 0 sends
    /// vbucket 0, as memcached clients do.
    #[arg(long, default_value_t = 0)]
    vbuckets: u16,
    /// Per-wait bound, seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Pause between the SET and GET phases, in milliseconds: lets a persisting
    /// server finish writing the SETs so the GET phase measures reads alone.
    #[arg(long, default_value_t = 0)]
    settle_ms: u64,
}

struct Phase {
    elapsed: Duration,
    latencies_us: Vec<u64>,
    ops: u64,
}

pub(crate) async fn run(args: BenchKvArgs) -> anyhow::Result<serde_json::Value> {
    if args.connections == 0 || args.pipeline == 0 {
        bail!("--connections and --pipeline must be at least 1");
    }
    let value = Bytes::from(vec![b'v'; args.value_size]);
    let mut set_phase = run_phase(&args, Opcode::SetQ, &value)
        .await
        .context("SET phase")?;
    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    let mut get_phase = run_phase(&args, Opcode::Get, &value)
        .await
        .context("GET phase")?;
    set_phase.latencies_us.sort_unstable();
    get_phase.latencies_us.sort_unstable();
    let rate = |p: &Phase| (p.ops as f64 / p.elapsed.as_secs_f64()).round() as u64;
    Ok(json!({
        "addr": args.addr,
        "ops": args.ops,
        "value_size": args.value_size,
        "connections": args.connections,
        "pipeline": args.pipeline,
        "settle_ms": args.settle_ms,
        "set_ops_per_sec": rate(&set_phase),
        "get_ops_per_sec": rate(&get_phase),
        "set_p50_us": percentile(&set_phase.latencies_us, 50.0),
        "set_p99_us": percentile(&set_phase.latencies_us, 99.0),
        "get_p50_us": percentile(&get_phase.latencies_us, 50.0),
        "get_p99_us": percentile(&get_phase.latencies_us, 99.0),
    }))
}

async fn connect(args: &BenchKvArgs) -> anyhow::Result<(TcpStream, BytesMut)> {
    let cfg = ClientConfig {
        timeout: Duration::from_secs(args.timeout),
        ..ClientConfig::default()
    };
    let mut c = Client::connect(&args.addr, cfg).await?;
    if let Some(user) = &args.user {
        c.auth_plain(&Credentials {
            user: user.clone(),
            password: args.password.clone(),
        })
        .await?;
    }
    if let Some(b) = &args.bucket {
        c.select_bucket(b).await?;
    }
    Ok(c.into_parts())
}

async fn run_phase(args: &BenchKvArgs, op: Opcode, value: &Bytes) -> anyhow::Result<Phase> {
    let per_conn = args.ops.div_ceil(args.connections);
    let mut conns = Vec::new();
    for c in 0..args.connections {
        conns.push((c, connect(args).await?));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, (sock, buf)) in conns {
        let args = args.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            drive(&args, c, per_conn, op, &value, sock, buf).await
        }));
    }
    let mut latencies = Vec::new();
    let mut ops = 0;
    for t in tasks {
        let (n, mut l) = t.await.context("bench task")??;
        ops += n;
        latencies.append(&mut l);
    }
    Ok(Phase {
        elapsed: start.elapsed(),
        latencies_us: latencies,
        ops,
    })
}

/// One connection: batches of `pipeline` requests; a quiet SET batch is closed by a
/// NOOP so its completion is observable.
async fn drive(
    args: &BenchKvArgs,
    conn: u64,
    count: u64,
    op: Opcode,
    value: &Bytes,
    mut sock: TcpStream,
    mut inbuf: BytesMut,
) -> anyhow::Result<(u64, Vec<u64>)> {
    let decoder = FrameDecoder::default();
    let bound = Duration::from_secs(args.timeout);
    let mut latencies = Vec::with_capacity(count as usize);
    let mut out = BytesMut::new();
    let mut done = 0u64;
    while done < count {
        let batch = args.pipeline.min(count - done);
        out.clear();
        for i in 0..batch {
            let key = Bytes::from(format!("bench-{conn}-{}", done + i));
            let vbucket = Vbid(vbucket_of(&key, args.vbuckets));
            let opaque = Opaque((done + i) as u32);
            if op == Opcode::Get {
                Get {
                    opcode: Opcode::Get,
                    vbucket,
                    opaque,
                    key,
                }
                .encode(&mut out);
            } else {
                Store {
                    opcode: Opcode::SetQ,
                    vbucket,
                    opaque,
                    cas: Cas(0),
                    datatype: Datatype::RAW,
                    flags: 0,
                    expiry: 0,
                    key,
                    value: value.clone(),
                }
                .encode(&mut out);
            }
        }
        if op != Opcode::Get {
            mcbp::BareRequest::new(Opcode::Noop, Vbid(0), Opaque(u32::MAX)).encode(&mut out);
        }
        let sent = Instant::now();
        tokio::time::timeout(bound, sock.write_all(&out))
            .await
            .context("write timed out")??;
        let mut answered = 0;
        let expect = if op == Opcode::Get { batch } else { 1 };
        while answered < expect {
            let frame = loop {
                if let Some(f) = decoder.decode(&mut inbuf)? {
                    break f;
                }
                let n = tokio::time::timeout(bound, sock.read_buf(&mut inbuf))
                    .await
                    .context("read timed out")??;
                if n == 0 {
                    bail!("server closed the connection");
                }
            };
            if frame.status() != Status::Success {
                bail!("{} failed: {}", frame.opcode(), frame.status());
            }
            let us = sent.elapsed().as_micros() as u64;
            if op == Opcode::Get {
                latencies.push(us);
            } else {
                // The NOOP answers after every quiet SET before it was applied.
                latencies.extend(std::iter::repeat_n(us, batch as usize));
            }
            answered += 1;
        }
        done += batch;
    }
    Ok((done, latencies))
}
