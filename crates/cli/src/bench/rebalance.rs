//! `conduit bench rebalance`: forms an in-process cluster of `--nodes` (the demo's
//! machinery: data node + agent + cluster REST each), creates a bucket (1 replica,
//! 64 vbuckets), loads `--docs` documents of `--value-size` bytes, adds `--add` nodes
//! and times the rebalance from the POST to `{"status":"none"}`, after every node has
//! persisted the load (`load_persist_seconds`, so the flusher's backlog is not timed).
//!
//! Unless `--no-compare`, it then runs `bench replication` with the same documents
//! and reports `ratio`: the rebalance's MB/s over replication's (goal ≥ 0.8).
//!
//! `bytes_moved` is an estimate: for every (vbucket, node) copy in the map after the
//! rebalance that the map before did not have, the vbucket's documents (counted from
//! the loaded keys with `vbucket_of`) × (value size + key size). Metadata, DCP framing
//! and takeover traffic are not counted.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use serde_json::json;

use super::nodes::LoadArgs;
use super::replication::BenchReplicationArgs;
use super::{round3, vbucket_of};
use crate::demo::{diff_maps, start_member, KvRouter, LocalCluster, VbMap};

/// Flags of `conduit bench rebalance`.
#[derive(Debug, Args)]
pub(crate) struct BenchRebalanceArgs {
    /// Nodes in the cluster before the rebalance.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Nodes added and rebalanced in.
    #[arg(long, default_value_t = 1)]
    add: usize,
    /// Documents loaded before the rebalance.
    #[arg(long, default_value_t = 100_000)]
    docs: u32,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// vbuckets in the bucket.
    #[arg(long, default_value_t = 64)]
    vbuckets: u16,
    /// Bound, in seconds, on every wait (the rebalance included).
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Skip the `bench replication` run with the same documents that gives the
    /// `ratio` (the rebalance's MB/s over replication's).
    #[arg(long)]
    no_compare: bool,
}

fn key(i: u32) -> Bytes {
    Bytes::from(format!("bench-{i:010}"))
}

/// Estimated bytes copied to build the new copies: docs × (value + key size) of each
/// vbucket, once per copy the map after has and the map before had not.
pub(crate) fn bytes_moved(
    before: &VbMap,
    after: &VbMap,
    docs_per_vb: &[u64],
    doc_bytes: u64,
) -> u64 {
    (0..after.vbuckets())
        .map(|vb| {
            let b = before.chain(vb);
            let new = after.chain(vb).iter().filter(|n| !b.contains(n)).count() as u64;
            new * docs_per_vb.get(usize::from(vb)).copied().unwrap_or(0) * doc_bytes
        })
        .sum()
}

pub(crate) async fn run(a: BenchRebalanceArgs) -> anyhow::Result<serde_json::Value> {
    let t = Duration::from_secs(a.timeout);
    anyhow::ensure!(a.add >= 1, "--add must be at least 1");
    let mut c = LocalCluster::form(a.nodes, t)
        .await
        .context("forming the cluster")?;
    // The same documents for `bench replication`, and the same quota rule (per node,
    // generous enough for every copy of every document on one node).
    let load = LoadArgs {
        docs: u64::from(a.docs),
        value_size: a.value_size,
        vbuckets: a.vbuckets,
        load_connections: 4,
        rate: 0,
        timeout: a.timeout,
    };
    c.create_bucket(a.vbuckets, 1, load.ram_quota_mb()).await?;
    let value = Bytes::from(vec![b'x'; a.value_size]);
    let docs: Vec<(Bytes, Bytes)> = (0..a.docs).map(|i| (key(i), value.clone())).collect();
    let mut docs_per_vb = vec![0u64; usize::from(a.vbuckets)];
    let mut key_bytes = 0u64;
    for (k, _) in &docs {
        docs_per_vb[usize::from(vbucket_of(k, a.vbuckets))] += 1;
        key_bytes += k.len() as u64;
    }
    let mut router = KvRouter::new(c.rest.clone(), t).await?;
    router.store_all(&docs).await.context("loading")?;
    // Time the rebalance from a quiet disk, not the load's persistence backlog.
    let t_persist = std::time::Instant::now();
    c.wait_persisted()
        .await
        .context("waiting for the load to persist")?;
    let persist_seconds = t_persist.elapsed().as_secs_f64();
    let before = c.map().await?;
    for i in 0..a.add {
        let m = start_member()
            .await
            .with_context(|| format!("starting added node {i}"))?;
        c.add_node(&m.node).await?;
        c.members.push(m);
    }
    let seconds = c.rebalance(|_| {}).await?;
    let after = c.map().await?;
    let key_size = key_bytes.checked_div(u64::from(a.docs)).unwrap_or(0);
    let moved = bytes_moved(
        &before,
        &after,
        &docs_per_vb,
        a.value_size as u64 + key_size,
    );
    let d = diff_maps(&before, &after);
    c.shutdown().await;
    let mb_per_s = moved as f64 / 1e6 / seconds.max(1e-9);
    let (replication_mb_per_s, ratio) = if a.no_compare {
        (None, None)
    } else {
        let per_doc = load.payload_bytes() as f64 / f64::from(a.docs.max(1));
        let r = super::replication::run(BenchReplicationArgs { load })
            .await
            .context("the bench replication run to compare with")?;
        let rate = r["mutations_per_sec"].as_f64().unwrap_or(0.0) * per_doc / 1e6;
        (Some(round3(rate)), Some(round3(mb_per_s / rate.max(1e-9))))
    };
    Ok(json!({
        "bench": "rebalance",
        "nodes": a.nodes,
        "add": a.add,
        "docs": a.docs,
        "value_size": a.value_size,
        "load_persist_seconds": round3(persist_seconds),
        "seconds": round3(seconds),
        "bytes_moved": moved,
        "moves": d.moves,
        "mb_per_s": round3(mb_per_s),
        "replication_mb_per_s": replication_mb_per_s,
        "ratio": ratio,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_moved_counts_each_new_copy_once() {
        let map = |servers: &[&str], chains: &[&[i64]]| VbMap {
            servers: servers.iter().map(|s| (*s).to_owned()).collect(),
            chains: chains.iter().map(|c| c.to_vec()).collect(),
        };
        let before = map(&["a", "b", "c"], &[&[0, 1], &[1, 2], &[2, 0]]);
        let after = map(&["a", "b", "c", "d"], &[&[0, 1], &[3, 2], &[3, 0]]);
        // vb1 and vb2 each gain d (10 + 5 docs): 15 docs of 100 bytes.
        assert_eq!(bytes_moved(&before, &after, &[7, 10, 5], 100), 1500);
    }
}
