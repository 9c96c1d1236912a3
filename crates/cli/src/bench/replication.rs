//! `conduit bench replication`: end-to-end replication through the proxy pair
//! (`Replicator`, consumer = node B) between two `conduit node` processes, loading
//! node A while replicating. Throughput is docs over the time from the first write
//! to B holding every mutation; lag is measured per writer-side sample: replication
//! lag (acknowledged on A → in B's memory) and persistence lag (acknowledged on A →
//! durable on A, and on B). CPU is reported per process per million mutations.
//! With `--rate`, the load is paced (`offered_rate` in the report): at a rate the
//! nodes sustain, the lags are those of the pipeline, not of a growing backlog.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use mcbp::Vbid;
use replication::{Replicator, ReplicatorConfig};
use serde_json::json;
use tokio::time::{sleep, timeout, Instant};

use super::nodes::{cpu_seconds, load, loaders, seqno_sums, LoadArgs, NodeChild, BUCKET};
use super::{percentile, round3};

/// Flags of `conduit bench replication`.
#[derive(Debug, Args)]
pub(crate) struct BenchReplicationArgs {
    #[command(flatten)]
    pub(crate) load: LoadArgs,
}

/// Writer-side sampling period.
const SAMPLE_EVERY: Duration = Duration::from_millis(5);
/// Node-side sampling period (adds up to this much to each lag). Sampled, not a
/// tight poll, so that measuring does not load the nodes measured.
const POLL_EVERY: Duration = Duration::from_millis(5);

/// (microseconds since the first write, mutations).
type Point = (u64, u64);

pub(crate) async fn run(args: BenchReplicationArgs) -> anyhow::Result<serde_json::Value> {
    let a = &args.load;
    let bound = a.bound();
    let producer = NodeChild::start("producer", bound).await?;
    let consumer = NodeChild::start("consumer", bound).await?;
    producer.create_bucket(a, "active").await?;
    consumer.create_bucket(a, "replica").await?;
    let mut cfg = ReplicatorConfig::new(
        consumer.kv.to_string(),
        producer.kv.to_string(),
        BUCKET,
        producer.credentials(),
    );
    cfg.consumer_node = "bench-consumer".into();
    cfg.producer_node = "bench-producer".into();
    cfg.connect_timeout = bound;
    let repl = start_replicator(cfg, a.vbuckets, bound).await?;

    let acked = Arc::new(AtomicU64::new(0));
    let mut cc = consumer.client(bound).await?;
    let mut pc = producer.client(bound).await?;
    let writers = loaders(&producer, a).await?;
    let pids = [producer.pid().to_string(), consumer.pid().to_string()];
    let cpu0 = Cpu::read(&pids)?;
    let t0 = Instant::now();
    let since = move || t0.elapsed().as_micros() as u64;
    let sampler = tokio::spawn(sample(Arc::clone(&acked), a.docs, since));
    let docs = a.docs;
    // Both nodes are sampled until each has persisted every mutation; the consumer's
    // high seqnos reaching `docs` is the end of the replication (throughput) window.
    let poller = tokio::spawn(async move {
        let mut seen = Observed::default();
        let mut cpu_at_caught_up = None;
        loop {
            // Each observation is timed when its own answer arrives: a slow answer
            // from one node must not delay the other's.
            let asked = since();
            let (high, persisted) = seqno_sums(&mut cc).await?;
            let t = since();
            seen.replicated.push((t, high));
            seen.consumer_persisted.push((t, persisted));
            let (_, p_persisted) = seqno_sums(&mut pc).await?;
            let t = since();
            seen.producer_persisted.push((t, p_persisted));
            seen.poll_us.push(t - asked);
            if high >= docs && cpu_at_caught_up.is_none() {
                seen.caught_up_us = t;
                cpu_at_caught_up = Some(Cpu::read(&pids)?);
            }
            if high >= docs && persisted >= docs && p_persisted >= docs {
                return anyhow::Ok((seen, cpu_at_caught_up));
            }
            sleep(POLL_EVERY).await;
        }
    });
    load(writers, a, &acked).await.context("loading")?;
    let (seen, cpu1) = match timeout(bound, poller).await {
        Ok(r) => r.context("node poller")??,
        Err(_) => bail!(
            "the nodes did not catch up and persist within {bound:?} (replicator: {:?})",
            repl.termination()
        ),
    };
    let cpu1 = cpu1.context("caught up without a CPU reading")?;
    let samples = sampler.await.context("sampler")?;
    let caught_up_us = seen.caught_up_us;
    let lag = |name: &str, points: &[Point]| -> anyhow::Result<Vec<u64>> {
        let mut lags = lags_us(&samples, points)
            .with_context(|| format!("a sample was never reached ({name})"))?;
        lags.sort_unstable();
        Ok(lags)
    };
    let lags = lag("replication", &seen.replicated)?;
    let c_persist = lag("consumer persistence", &seen.consumer_persisted)?;
    let p_persist = lag("producer persistence", &seen.producer_persisted)?;
    let ms = |v: &[u64], p: f64| round3(percentile(v, p) as f64 / 1000.0);
    let mut poll_us = seen.poll_us;
    poll_us.sort_unstable();
    let per_m = |secs: f64| round3(secs / (a.docs as f64 / 1e6));
    let mut out = json!({
        "bench": "replication",
        "docs": a.docs,
        "value_size": a.value_size,
        "vbuckets": a.vbuckets,
        "offered_rate": a.rate,
        "mutations_per_sec": (a.docs as f64 / (caught_up_us.max(1) as f64 / 1e6)).round() as u64,
        "elapsed_ms": caught_up_us / 1000,
        "lag_samples": lags.len(),
        "lag_p50_ms": ms(&lags, 50.0),
        "lag_p99_ms": ms(&lags, 99.0),
        "producer_persisted_lag_p50_ms": ms(&p_persist, 50.0),
        "producer_persisted_lag_p99_ms": ms(&p_persist, 99.0),
        "consumer_persisted_lag_p50_ms": ms(&c_persist, 50.0),
        "consumer_persisted_lag_p99_ms": ms(&c_persist, 99.0),
        "poll_p99_ms": ms(&poll_us, 99.0),
        "poll_max_ms": ms(&poll_us, 100.0),
        "producer_cpu_s_per_m": per_m(cpu1.producer - cpu0.producer),
        "consumer_cpu_s_per_m": per_m(cpu1.consumer - cpu0.consumer),
        "bench_cpu_s_per_m": per_m(cpu1.bench - cpu0.bench),
    });
    super::nodes::add_peak_rss(&mut out, &producer, &consumer, a.payload_bytes())?;
    repl.abort();
    Ok(out)
}

/// What the node poller saw: per node, (time, mutations) observations.
#[derive(Default)]
struct Observed {
    replicated: Vec<Point>,
    consumer_persisted: Vec<Point>,
    producer_persisted: Vec<Point>,
    caught_up_us: u64,
    /// How long each round of both questions took: the resolution of the lags.
    poll_us: Vec<u64>,
}

/// CPU seconds used so far by the two nodes and by this process (the proxy pair,
/// the loaders and the samplers).
struct Cpu {
    producer: f64,
    consumer: f64,
    bench: f64,
}

impl Cpu {
    /// `pids`: the producer's and the consumer's.
    fn read(pids: &[String; 2]) -> anyhow::Result<Cpu> {
        Ok(Cpu {
            producer: cpu_seconds(&pids[0])?,
            consumer: cpu_seconds(&pids[1])?,
            bench: cpu_seconds("self")?,
        })
    }
}

async fn start_replicator(
    cfg: ReplicatorConfig,
    vbuckets: u16,
    bound: Duration,
) -> anyhow::Result<Replicator> {
    let repl = timeout(bound, Replicator::start(cfg))
        .await
        .context("replicator start timed out")?
        .context("starting the replicator")?;
    let all: BTreeSet<Vbid> = (0..vbuckets).map(Vbid).collect();
    timeout(bound, repl.setup_replication(all))
        .await
        .context("stream set-up timed out")?
        .context("setting up replication streams")?;
    Ok(repl)
}

/// Every `SAMPLE_EVERY`, the mutations the writer has seen acknowledged, recorded
/// when it grew; stops at `docs`.
async fn sample(acked: Arc<AtomicU64>, docs: u64, since: impl Fn() -> u64) -> Vec<Point> {
    let mut out: Vec<Point> = Vec::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tick.tick().await;
        let v = acked.load(Ordering::Relaxed);
        if out.last().is_none_or(|p| v > p.1) && v > 0 {
            out.push((since(), v));
        }
        if v >= docs {
            return out;
        }
    }
}

/// Lag of each writer-side sample `(t, v)`: the time from `t` to the first consumer
/// observation at or after `t` showing at least `v` mutations. `None` if some sample
/// was never reached. Observations are in time order; their counts only grow.
fn lags_us(samples: &[Point], seen: &[Point]) -> Option<Vec<u64>> {
    samples
        .iter()
        .map(|&(t, v)| {
            let from = seen.partition_point(|p| p.0 < t);
            let reached = seen.partition_point(|p| p.1 < v);
            seen.get(from.max(reached)).map(|p| p.0 - t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_time_to_the_first_later_observation_reaching_the_sample() {
        let seen = [(0, 0), (10, 100), (20, 150), (30, 300)];
        // 100 written at t=5 was seen at t=10; 200 at t=12 only at t=30.
        assert_eq!(lags_us(&[(5, 100), (12, 200)], &seen), Some(vec![5, 18]));
    }

    #[test]
    fn an_observation_before_the_sample_does_not_count() {
        // The consumer showed 100 at t=10, but the writer's view only got there at 15.
        let seen = [(10, 100), (25, 100)];
        assert_eq!(lags_us(&[(15, 100)], &seen), Some(vec![10]));
    }

    #[test]
    fn a_sample_never_reached_has_no_lag() {
        assert_eq!(lags_us(&[(5, 500)], &[(10, 100)]), None);
        assert_eq!(lags_us(&[(50, 100)], &[(10, 100)]), None);
    }
}
