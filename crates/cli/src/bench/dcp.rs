//! `conduit bench dcp`: DCP throughput between two `conduit node` processes, node
//! to node with no replication proxy in between. The bench opens a DCP consumer
//! connection on B and a producer connection on A under one name, writes an
//! ADD_STREAM per vbucket into B's socket and splices the two sockets: bytes from A
//! go to B untouched; bytes from B go to A frame by frame, minus the answers to our
//! ADD_STREAMs, until all are answered, then untouched too.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::BytesMut;
use clap::{Args, ValueEnum};
use mcbp::dcp::{AddStream, OpenFlags, StreamFlags};
use mcbp::{FrameDecoder, Message, Opaque, Opcode, Vbid};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

use super::nodes::{
    high_seqnos, load, loaders, wait_caught_up, wait_persisted, LoadArgs, NodeChild,
};
use super::round3;

/// Flags of `conduit bench dcp`.
#[derive(Debug, Args)]
pub(crate) struct BenchDcpArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// `memory`: open the streams on empty vbuckets, then load while streaming.
    /// `disk`: load, wait until persisted, then stream (backfill).
    #[arg(long, value_enum, default_value_t = Source::Memory)]
    source: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Source {
    Memory,
    Disk,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Memory => "memory",
            Source::Disk => "disk",
        }
    }
}

/// Runs the bench; `mb_per_sec` counts key + value bytes (10^6 bytes per MB).
pub(crate) async fn run(args: BenchDcpArgs) -> anyhow::Result<serde_json::Value> {
    let a = &args.load;
    let bound = a.bound();
    let producer = NodeChild::start("producer", bound).await?;
    let consumer = NodeChild::start("consumer", bound).await?;
    producer.create_bucket(a, "active").await?;
    consumer.create_bucket(a, "replica").await?;
    let mut pc = producer.client(bound).await?;
    let mut cc = consumer.client(bound).await?;
    let acked = Arc::new(AtomicU64::new(0));

    // Disk: how fast the producer takes the load, and how long until all of it is
    // durable (the flusher's rate under a write load, measured from the first write).
    let mut persist = None;
    if args.source == Source::Disk {
        let writers = loaders(&producer, a).await?;
        let cpu0 = producer.cpu_seconds()?;
        let t = Instant::now();
        load(writers, a, &acked).await.context("loading")?;
        let loaded_in = t.elapsed();
        let loaded = high_seqnos(&mut pc).await?;
        wait_persisted(&mut pc, &loaded, bound).await?;
        persist = Some((loaded_in, t.elapsed(), producer.cpu_seconds()? - cpu0));
    }
    let cpu0 = (producer.cpu_seconds()?, consumer.cpu_seconds()?);
    let name = "conduit-bench-dcp";
    let consumer_value = json!({ "consumer_name": "bench" }).to_string();
    let to_consumer = consumer
        .dcp_open(
            bound,
            name,
            OpenFlags::REPLICATION_CONSUMER,
            consumer_value.as_bytes(),
        )
        .await
        .context("opening the consumer connection")?;
    let to_producer = producer
        .dcp_open(bound, name, OpenFlags::REPLICATION_PRODUCER, b"")
        .await
        .context("opening the producer connection")?;

    let writers = match args.source {
        Source::Memory => loaders(&producer, a).await?,
        Source::Disk => Vec::new(),
    };
    let started = Instant::now();
    let mut splice = timeout(bound, splice(to_producer, to_consumer, a.vbuckets))
        .await
        .context("stream set-up timed out")??;
    let load_started = Instant::now();
    if args.source == Source::Memory {
        load(writers, a, &acked).await.context("loading")?;
    }
    let want = high_seqnos(&mut pc).await?;
    let done = wait_caught_up(&mut cc, &want, bound, || splice_alive(&mut splice)).await?;
    // Memory: the clock starts at the first write; disk: at the first ADD_STREAM.
    let elapsed = done
        - match args.source {
            Source::Memory => load_started,
            Source::Disk => started,
        };
    let mutations: u64 = want.values().sum();
    let secs = elapsed.as_secs_f64();
    let per_m = |cpu: f64| round3(cpu / (mutations.max(1) as f64 / 1e6));
    let mut out = json!({
        "bench": "dcp",
        "source": args.source.name(),
        "docs": a.docs,
        "value_size": a.value_size,
        "vbuckets": a.vbuckets,
        "offered_rate": a.rate,
        "mutations": mutations,
        "mutations_per_sec": (mutations as f64 / secs).round() as u64,
        "payload_bytes": a.payload_bytes(),
        "mb_per_sec": round3(a.payload_bytes() as f64 / 1e6 / secs),
        "mb_per_sec_counts": "key+value bytes",
        "elapsed_ms": elapsed.as_millis() as u64,
        "producer_cpu_s_per_m": per_m(producer.cpu_seconds()? - cpu0.0),
        "consumer_cpu_s_per_m": per_m(consumer.cpu_seconds()? - cpu0.1),
    });
    super::nodes::add_peak_rss(&mut out, &producer, &consumer, a.payload_bytes())?;
    if let Some((loaded_in, persisted_in, cpu)) = persist {
        let rate = |d: Duration| (mutations as f64 / d.as_secs_f64().max(1e-9)).round() as u64;
        out["load_mutations_per_sec"] = json!(rate(loaded_in));
        out["load_persisted_mutations_per_sec"] = json!(rate(persisted_in));
        out["load_persist_lag_ms"] = json!((persisted_in - loaded_in).as_millis() as u64);
        out["load_producer_cpu_s_per_m"] = json!(per_m(cpu));
    }
    Ok(out)
}

/// A splice task ending early (EOF, I/O error) means the streams broke.
fn splice_alive(tasks: &mut JoinSet<anyhow::Result<()>>) -> anyhow::Result<()> {
    match tasks.try_join_next() {
        None => Ok(()),
        Some(Ok(Ok(()))) => bail!("a node closed its DCP connection"),
        Some(Ok(Err(e))) => Err(e.context("splice")),
        Some(Err(e)) => Err(anyhow::Error::from(e).context("splice task")),
    }
}

/// Writes the ADD_STREAMs, then forwards both ways; returns once every ADD_STREAM
/// was answered SUCCESS, leaving two blind copy tasks running (aborted on drop).
async fn splice(
    (producer, from_producer): (TcpStream, BytesMut),
    (consumer, mut from_consumer): (TcpStream, BytesMut),
    vbuckets: u16,
) -> anyhow::Result<JoinSet<anyhow::Result<()>>> {
    let (p_read, mut p_write) = producer.into_split();
    let (mut c_read, mut c_write) = consumer.into_split();
    let mut pending = BTreeMap::new();
    let mut out = BytesMut::new();
    for vb in (0..vbuckets).map(Vbid) {
        let opaque = Opaque(0xb0_0000 | u32::from(vb.0));
        pending.insert(opaque, vb);
        AddStream {
            vbucket: vb,
            opaque,
            flags: StreamFlags(0),
        }
        .encode(&mut out);
    }
    c_write.write_all(&out).await?;
    let mut tasks = JoinSet::new();
    // Nothing from the producer needs filtering: forward it blindly from the start.
    tasks.spawn(copy(p_read, from_producer, c_write));
    let decoder = FrameDecoder::default();
    loop {
        out.clear();
        filter_consumer_bytes(&mut from_consumer, &decoder, &mut pending, &mut out)?;
        p_write.write_all(&out).await?;
        if pending.is_empty() {
            break;
        }
        if c_read.read_buf(&mut from_consumer).await? == 0 {
            bail!("consumer node closed the connection during stream set-up");
        }
    }
    tasks.spawn(copy(c_read, BytesMut::new(), p_write));
    Ok(tasks)
}

async fn copy(
    from: impl AsyncRead + Unpin,
    leftover: BytesMut,
    mut to: impl AsyncWrite + Unpin,
) -> anyhow::Result<()> {
    to.write_all(&leftover).await?;
    tokio::io::copy_buf(&mut BufReader::with_capacity(256 * 1024, from), &mut to).await?;
    Ok(())
}

/// The consumer → producer direction while ADD_STREAM answers are outstanding:
/// moves whole frames from `buf` to `out` except the answers to our ADD_STREAMs
/// (opaques in `pending`, removed as they come), which are swallowed; a failed one
/// is an error. Once `pending` is empty, everything left in `buf`, a partial frame
/// included, is moved to `out`: from then on the bytes are copied blindly.
fn filter_consumer_bytes(
    buf: &mut BytesMut,
    decoder: &FrameDecoder,
    pending: &mut BTreeMap<Opaque, Vbid>,
    out: &mut BytesMut,
) -> anyhow::Result<()> {
    while !pending.is_empty() {
        let Some(frame) = decoder
            .decode(buf)
            .context("consumer node sent a corrupt frame")?
        else {
            return Ok(());
        };
        if frame.is_client_response(Opcode::DcpAddStream) {
            if let Some(vb) = pending.remove(&frame.opaque()) {
                if !frame.status().is_success() {
                    bail!("{vb}: ADD_STREAM failed: {}", frame.status());
                }
                continue;
            }
        }
        out.extend_from_slice(frame.bytes());
    }
    out.extend_from_slice(&buf.split());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcbp::dcp::AddStreamResponse;
    use mcbp::{BareRequest, Status};

    fn answer(opaque: u32, status: Status) -> BytesMut {
        let mut b = BytesMut::new();
        AddStreamResponse {
            opaque: Opaque(opaque),
            status,
            stream_opaque: status.is_success().then_some(Opaque(7)),
        }
        .encode(&mut b);
        b
    }

    fn noop(opaque: u32) -> BytesMut {
        let mut b = BytesMut::new();
        BareRequest::new(Opcode::DcpNoop, Vbid(0), Opaque(opaque)).encode(&mut b);
        b
    }

    #[test]
    fn add_stream_answers_are_swallowed_and_the_rest_passes_in_order_then_blindly() {
        let mut pending = BTreeMap::from([(Opaque(1), Vbid(0)), (Opaque(2), Vbid(1))]);
        let (n1, n2, tail) = (noop(10), noop(11), noop(12));
        let mut wire = BytesMut::new();
        for part in [
            &n1,
            &answer(1, Status::Success),
            &n2,
            &answer(2, Status::Success),
            &tail,
        ] {
            wire.extend_from_slice(part);
        }
        // Feed it in 5-byte chunks: partial frames wait, the hand-off keeps the tail's
        // partial bytes.
        let (decoder, mut buf, mut out) =
            (FrameDecoder::default(), BytesMut::new(), BytesMut::new());
        for chunk in wire.chunks(5) {
            buf.extend_from_slice(chunk);
            filter_consumer_bytes(&mut buf, &decoder, &mut pending, &mut out).expect("valid");
        }
        assert!(pending.is_empty());
        assert_eq!(&out[..], &[&n1[..], &n2[..], &tail[..]].concat()[..]);
    }

    #[test]
    fn a_failed_add_stream_names_its_vbucket() {
        let mut pending = BTreeMap::from([(Opaque(1), Vbid(3))]);
        let mut buf = answer(1, Status::NotMyVbucket);
        let err = filter_consumer_bytes(
            &mut buf,
            &FrameDecoder::default(),
            &mut pending,
            &mut BytesMut::new(),
        )
        .expect_err("must fail");
        assert!(err.to_string().contains("vb:3"), "{err}");
    }

    #[test]
    fn answers_with_unknown_opaques_are_forwarded() {
        let mut pending = BTreeMap::from([(Opaque(1), Vbid(0))]);
        let mut buf = answer(9, Status::Success);
        let expect = buf.clone();
        let mut out = BytesMut::new();
        filter_consumer_bytes(&mut buf, &FrameDecoder::default(), &mut pending, &mut out)
            .expect("valid");
        assert_eq!(out, expect);
        assert_eq!(pending.len(), 1);
    }
}
