//! `conduit demo`: the whole cluster on one machine (cluster.md §9). N nodes start
//! in-process (data node + cluster agent + cluster REST each, on 127.0.0.1 ephemeral
//! ports and temporary data directories); the first is initialised and becomes the
//! orchestrator, the others are added and rebalanced in; bucket `demo` is created and
//! documents are loaded through MCBP to each key's active node. Then one more node is
//! added and rebalanced in while a writer keeps upserting, and everything is verified:
//! values, vbucket states against the map, replica seqnos and every document on both
//! copies. `--no-grow` stops before the extra node (quick mode).
//!
//! The in-process cluster machinery ([`LocalCluster`], [`VbMap`], [`KvRouter`]) is
//! shared with `conduit bench rebalance`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kv_client::{Client, ClientConfig, ClientError, Credentials};
use mcbp::kv::{Get, Store};
use mcbp::{Cas, Datatype, Frame, Message, Opaque, Opcode, Status, Vbid};
use reqwest::Method;
use serde_json::Value;

use crate::bench::vbucket_of;
use crate::cluster_node::{self, ClusterNode, ClusterNodeOpts};
use crate::rest_client::RestClient;

/// Flags of `conduit demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Documents to load.
    #[arg(long, default_value_t = 20_000)]
    docs: u32,
    /// Nodes in the initial cluster (one more is rebalanced in afterwards).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// vbuckets in the bucket.
    #[arg(long, default_value_t = 64)]
    vbuckets: u16,
    /// Replicas per vbucket.
    #[arg(long, default_value_t = 1)]
    replicas: u8,
    /// Bound, in seconds, on every wait.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Quick mode: form the cluster, load and verify, but do not add and rebalance in
    /// the extra node.
    #[arg(long)]
    no_grow: bool,
}

/// The cluster administrator (REST and KV).
pub(crate) const USER: &str = "Administrator";
pub(crate) const PASSWORD: &str = "demo-password";
/// Each node's own admin user (node-local admin API, and the addNode credentials).
const NODE_USER: &str = "admin";
const NODE_PASSWORD: &str = "demo-node-password";
pub(crate) const BUCKET: &str = "demo";
/// Documents per pipelined batch.
const BATCH: usize = 500;
/// Poll period of every wait on the cluster.
const POLL: Duration = Duration::from_millis(250);

fn creds() -> Credentials {
    Credentials {
        user: USER.into(),
        password: PASSWORD.into(),
    }
}

/// A node's data directory and the node running on it.
pub(crate) struct Member {
    pub(crate) node: ClusterNode,
    _dir: tempfile::TempDir,
}

/// Several cluster nodes in this process; the first is the orchestrator.
pub(crate) struct LocalCluster {
    pub(crate) members: Vec<Member>,
    /// The REST API of the first node.
    pub(crate) rest: RestClient,
    pub(crate) timeout: Duration,
}

/// Starts one node on ephemeral ports in a fresh temporary directory.
pub(crate) async fn start_member() -> anyhow::Result<Member> {
    let dir = tempfile::tempdir().context("creating a data directory")?;
    let mut opts = ClusterNodeOpts::ephemeral(dir.path(), NODE_USER, NODE_PASSWORD);
    opts.janitor_period = Duration::from_millis(1000);
    let node = cluster_node::start(opts).await?;
    Ok(Member { node, _dir: dir })
}

/// `CliError` is not a `std::error::Error`; carry its text into anyhow.
pub(crate) trait Ax<T> {
    fn ax(self) -> anyhow::Result<T>;
}

impl<T> Ax<T> for Result<T, crate::rest_client::CliError> {
    fn ax(self) -> anyhow::Result<T> {
        self.map_err(|e| anyhow::anyhow!("{e}"))
    }
}

fn form(pairs: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    pairs.to_vec()
}

impl LocalCluster {
    /// Starts `n` nodes, initialises the cluster on the first, adds the others and
    /// rebalances them in (no bucket yet, so nothing moves).
    pub(crate) async fn form(n: usize, timeout: Duration) -> anyhow::Result<LocalCluster> {
        anyhow::ensure!(n >= 1, "--nodes must be at least 1");
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            members.push(
                start_member()
                    .await
                    .with_context(|| format!("starting node {i}"))?,
            );
        }
        // Before init the node's own admin authenticates.
        let init = RestClient::new(
            &members[0].node.admin_addr().to_string(),
            NODE_USER,
            NODE_PASSWORD,
        )
        .ax()?;
        let rest =
            RestClient::new(&members[0].node.admin_addr().to_string(), USER, PASSWORD).ax()?;
        init.post(
            "/clusterInit",
            &form(&[
                ("username", USER.into()),
                ("password", PASSWORD.into()),
                ("port", "SAME".into()),
                ("services", "kv".into()),
                ("memoryQuota", "4096".into()),
                ("clusterName", "demo".into()),
            ]),
        )
        .await
        .ax()
        .context("POST /clusterInit")?;
        let c = LocalCluster {
            members,
            rest,
            timeout,
        };
        for m in &c.members[1..] {
            c.add_node(&m.node).await?;
        }
        if n > 1 {
            c.rebalance(|_| {})
                .await
                .context("rebalancing the nodes in")?;
        }
        Ok(c)
    }

    /// `POST /controller/addNode` for `node`; returns its otpNode.
    pub(crate) async fn add_node(&self, node: &ClusterNode) -> anyhow::Result<String> {
        let a = self
            .rest
            .post(
                "/controller/addNode",
                &form(&[
                    (
                        "hostname",
                        format!("127.0.0.1:{}", node.admin_addr().port()),
                    ),
                    ("user", NODE_USER.into()),
                    ("password", NODE_PASSWORD.into()),
                    ("services", "kv".into()),
                ]),
            )
            .await
            .ax()
            .with_context(|| format!("POST /controller/addNode {}", node.admin_addr()))?;
        Ok(a.body["otpNode"].as_str().unwrap_or_default().to_owned())
    }

    /// Rebalances with every node known (none ejected) and waits until the progress
    /// is exactly `{"status":"none"}`. `progress` gets the overall percent (0–100)
    /// every poll. Returns the time from the POST to done.
    pub(crate) async fn rebalance(&self, mut progress: impl FnMut(f64)) -> anyhow::Result<f64> {
        let pd = self.rest.get_json("/pools/default").await.ax()?;
        let known: Vec<String> = pd["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["otpNode"].as_str().map(str::to_owned))
            .collect();
        let started = Instant::now();
        self.rest
            .post(
                "/controller/rebalance",
                &form(&[
                    ("knownNodes", known.join(",")),
                    ("ejectedNodes", String::new()),
                ]),
            )
            .await
            .ax()?;
        let deadline = started + self.timeout;
        loop {
            let (a, raw) = self
                .rest
                .call_raw(
                    Method::GET,
                    "/pools/default/rebalanceProgress",
                    None,
                    self.timeout,
                )
                .await
                .ax()?;
            if a.status == 200 && raw == br#"{"status":"none"}"# {
                progress(100.0);
                return Ok(started.elapsed().as_secs_f64());
            }
            if a.body["status"] == "none" {
                bail!(
                    "rebalance failed: {}",
                    a.body["errorMessage"].as_str().unwrap_or("(no message)")
                );
            }
            if let Ok(tasks) = self.rest.get_json("/pools/default/tasks").await {
                let p = tasks
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|t| t["type"] == "rebalance")
                    .and_then(|t| t["progress"].as_f64());
                if let Some(p) = p {
                    progress(p);
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "rebalance not done within {} s: {}",
                    self.timeout.as_secs(),
                    String::from_utf8_lossy(&raw)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Creates the bucket and waits until it is ready (every node healthy, every
    /// vbucket with an active in the map).
    pub(crate) async fn create_bucket(
        &self,
        vbuckets: u16,
        replicas: u8,
        ram_quota_mb: u64,
    ) -> anyhow::Result<()> {
        self.rest
            .post(
                "/pools/default/buckets",
                &form(&[
                    ("name", BUCKET.into()),
                    ("ramQuotaMB", ram_quota_mb.to_string()),
                    ("replicaNumber", replicas.to_string()),
                    ("numVBuckets", vbuckets.to_string()),
                ]),
            )
            .await
            .ax()
            .context("POST /pools/default/buckets")?;
        self.wait_ready().await
    }

    /// Waits until every node is healthy and the map is complete.
    pub(crate) async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let last = match self.not_ready().await {
                Ok(None) => return Ok(()),
                Ok(Some(why)) => why,
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "bucket {BUCKET} not ready within {} s: {last}",
                    self.timeout.as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn not_ready(&self) -> anyhow::Result<Option<String>> {
        let pd = self.rest.get_json("/pools/default").await.ax()?;
        for n in pd["nodes"].as_array().into_iter().flatten() {
            if n["status"] != "healthy" {
                return Ok(Some(format!("node {} is {}", n["otpNode"], n["status"])));
            }
        }
        let map = self.map().await?;
        if map.chains.is_empty() {
            return Ok(Some("the map is empty".into()));
        }
        if let Some(vb) = map.chains.iter().position(|c| map.active_of(c).is_none()) {
            return Ok(Some(format!("vb:{vb} has no active")));
        }
        Ok(None)
    }

    /// The bucket's current map.
    pub(crate) async fn map(&self) -> anyhow::Result<VbMap> {
        fetch_map(&self.rest).await
    }

    /// Each member's vbuckets of the bucket, from the node's own admin API (`GET
    /// /buckets/demo`, `vbuckets`; empty unless it answers 200): (kv address, list).
    async fn node_vbuckets(&self) -> anyhow::Result<Vec<(String, Vec<Value>)>> {
        let mut out = Vec::new();
        for m in &self.members {
            let rest =
                RestClient::new(&m.node.admin_addr().to_string(), NODE_USER, NODE_PASSWORD).ax()?;
            let (mut a, _) = rest
                .call_raw(
                    Method::GET,
                    &format!("/buckets/{BUCKET}"),
                    None,
                    self.timeout,
                )
                .await
                .ax()?;
            let vbs = match a.body["vbuckets"].take() {
                Value::Array(v) if a.status == 200 => v,
                _ => Vec::new(),
            };
            out.push((m.node.kv_addr().to_string(), vbs));
        }
        Ok(out)
    }

    /// Every node's vbucket states of the bucket: kv address -> vb -> (state, high
    /// seqno).
    pub(crate) async fn states(&self) -> anyhow::Result<BTreeMap<String, NodeStates>> {
        let mut out = BTreeMap::new();
        for (addr, list) in self.node_vbuckets().await? {
            let vbs = list
                .iter()
                .map(|v| {
                    let vb = u16::try_from(v["vb"].as_u64().unwrap_or(0)).unwrap_or(0);
                    let state = v["state"].as_str().unwrap_or("").to_owned();
                    (vb, (state, v["high_seqno"].as_u64().unwrap_or(0)))
                })
                .collect();
            out.insert(addr, vbs);
        }
        Ok(out)
    }

    /// Waits until every node has persisted every mutation of its vbuckets (bounded
    /// by the cluster's timeout): benchmarks start from a quiet disk.
    pub(crate) async fn wait_persisted(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let behind: u64 = self
                .node_vbuckets()
                .await?
                .iter()
                .flat_map(|(_, list)| list)
                .map(|v| {
                    let high = v["high_seqno"].as_u64().unwrap_or(0);
                    high.saturating_sub(v["persisted_seqno"].as_u64().unwrap_or(0))
                })
                .sum();
            if behind == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{behind} mutations still not persisted after {} s",
                    self.timeout.as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub(crate) async fn shutdown(self) {
        for m in self.members {
            m.node.shutdown().await;
        }
    }
}

/// One node's vbuckets: vb -> (state, high seqno).
pub(crate) type NodeStates = BTreeMap<u16, (String, u64)>;

/// The bucket's `vBucketServerMap`: KV addresses and chains of indices into them.
#[derive(Debug, Clone, Default)]
pub(crate) struct VbMap {
    pub(crate) servers: Vec<String>,
    pub(crate) chains: Vec<Vec<i64>>,
}

impl VbMap {
    pub(crate) fn parse(bucket: &Value) -> anyhow::Result<VbMap> {
        let m = &bucket["vBucketServerMap"];
        let servers = m["serverList"]
            .as_array()
            .context("no serverList")?
            .iter()
            .map(|s| s.as_str().unwrap_or_default().to_owned())
            .collect();
        let chains = m["vBucketMap"]
            .as_array()
            .context("no vBucketMap")?
            .iter()
            .map(|c| {
                c.as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| i.as_i64().unwrap_or(-1))
                    .collect()
            })
            .collect();
        Ok(VbMap { servers, chains })
    }

    fn server(&self, i: i64) -> Option<&str> {
        usize::try_from(i)
            .ok()
            .and_then(|i| self.servers.get(i))
            .map(String::as_str)
    }

    fn active_of(&self, chain: &[i64]) -> Option<&str> {
        chain.first().and_then(|&i| self.server(i))
    }

    /// The KV address of `vb`'s active.
    pub(crate) fn active(&self, vb: u16) -> Option<&str> {
        self.chains
            .get(usize::from(vb))
            .and_then(|c| self.active_of(c))
    }

    /// The KV addresses of `vb`'s replicas.
    pub(crate) fn replicas(&self, vb: u16) -> Vec<&str> {
        self.chains
            .get(usize::from(vb))
            .map(|c| c.iter().skip(1).filter_map(|&i| self.server(i)).collect())
            .unwrap_or_default()
    }

    /// `vb`'s chain as KV addresses (nulls dropped).
    pub(crate) fn chain(&self, vb: u16) -> Vec<&str> {
        self.chains
            .get(usize::from(vb))
            .map(|c| c.iter().filter_map(|&i| self.server(i)).collect())
            .unwrap_or_default()
    }

    pub(crate) fn vbuckets(&self) -> u16 {
        u16::try_from(self.chains.len()).unwrap_or(u16::MAX)
    }
}

/// What a rebalance changed, from the maps before and after.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapDiff {
    /// vbuckets whose chain changed.
    pub(crate) moves: usize,
    /// (vbucket, node) copies in the new map that the old one did not have.
    pub(crate) copies_built: usize,
    /// vbuckets whose active changed.
    pub(crate) takeovers: usize,
}

/// Compares two maps by node address (server indices may differ between them).
pub(crate) fn diff_maps(before: &VbMap, after: &VbMap) -> MapDiff {
    let mut d = MapDiff::default();
    for vb in 0..after.vbuckets() {
        let (b, a) = (before.chain(vb), after.chain(vb));
        if b != a {
            d.moves += 1;
        }
        d.copies_built += a.iter().filter(|n| !b.contains(n)).count();
        if before.active(vb) != after.active(vb) {
            d.takeovers += 1;
        }
    }
    d
}

/// `GET /pools/default/buckets/demo` as a map.
pub(crate) async fn fetch_map(rest: &RestClient) -> anyhow::Result<VbMap> {
    let b = rest
        .get_json(&format!("/pools/default/buckets/{BUCKET}"))
        .await
        .ax()?;
    VbMap::parse(&b)
}

/// MCBP connections to every node, authenticated and on the bucket, and the map
/// that routes each key to its vbucket's active.
pub(crate) struct KvRouter {
    pub(crate) map: VbMap,
    clients: HashMap<String, Client>,
    rest: RestClient,
    timeout: Duration,
}

/// Whether a failed KV operation should be retried after a map refresh.
fn retryable(e: &ClientError) -> bool {
    match e.status() {
        Some(s) => matches!(
            s,
            Status::NotMyVbucket | Status::Etmpfail | Status::Ebusy | Status::NotInitialized
        ),
        // Transport errors: the node may be changing; reconnect.
        None => true,
    }
}

impl KvRouter {
    pub(crate) async fn new(rest: RestClient, timeout: Duration) -> anyhow::Result<KvRouter> {
        let map = fetch_map(&rest).await?;
        Ok(KvRouter {
            map,
            clients: HashMap::new(),
            rest,
            timeout,
        })
    }

    pub(crate) async fn refresh(&mut self) -> anyhow::Result<()> {
        self.map = fetch_map(&self.rest).await?;
        Ok(())
    }

    /// The connection to `addr`, opened on first use.
    pub(crate) async fn client(&mut self, addr: &str) -> anyhow::Result<&mut Client> {
        if !self.clients.contains_key(addr) {
            let mut c = Client::connect(
                addr,
                ClientConfig {
                    timeout: self.timeout.min(Duration::from_secs(10)),
                    ..ClientConfig::default()
                },
            )
            .await?;
            c.auth_plain(&creds()).await?;
            c.select_bucket(BUCKET).await?;
            c.hello("conduit-demo", &[mcbp::kv::Feature::Json]).await?;
            self.clients.insert(addr.to_owned(), c);
        }
        self.clients
            .get_mut(addr)
            .context("connection just inserted")
    }

    pub(crate) fn drop_client(&mut self, addr: &str) {
        self.clients.remove(addr);
    }

    /// Stores every document at its active, pipelined per node; documents refused
    /// (NOT_MY_VBUCKET, temporary failure, a broken connection) are retried after a
    /// map refresh until the timeout.
    pub(crate) async fn store_all(&mut self, docs: &[(Bytes, Bytes)]) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.timeout;
        let n = self.map.vbuckets();
        let mut pending: Vec<usize> = (0..docs.len()).collect();
        let mut last = String::new();
        while !pending.is_empty() {
            let mut by_node: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            let mut retry = vec![];
            for i in pending {
                let vb = vbucket_of(&docs[i].0, n);
                match self.map.active(vb) {
                    Some(a) => by_node.entry(a.to_owned()).or_default().push(i),
                    None => retry.push(i),
                }
            }
            for (addr, idx) in by_node {
                for chunk in idx.chunks(BATCH) {
                    let reqs = chunk.iter().map(|&i| {
                        let (k, v) = &docs[i];
                        let mut out = BytesMut::new();
                        Store {
                            opcode: Opcode::Set,
                            vbucket: Vbid(vbucket_of(k, n)),
                            opaque: Opaque(u32::try_from(i).unwrap_or(u32::MAX)),
                            cas: Cas(0),
                            datatype: if v.first() == Some(&b'{') {
                                Datatype::JSON
                            } else {
                                Datatype::RAW
                            },
                            flags: 0x0200_0000,
                            expiry: 0,
                            key: k.clone(),
                            value: v.clone(),
                        }
                        .encode(&mut out);
                        out
                    });
                    match self.pipeline(&addr, reqs, chunk.len()).await {
                        Ok(frames) => {
                            let mut ok = BTreeSet::new();
                            for f in frames {
                                if f.status() == Status::Success {
                                    ok.insert(f.opaque().0 as usize);
                                } else {
                                    last = format!("{addr}: {:?}", f.status());
                                }
                            }
                            retry.extend(chunk.iter().filter(|i| !ok.contains(i)));
                        }
                        Err(e) => {
                            last = format!("{e:#}");
                            self.drop_client(&addr);
                            retry.extend_from_slice(chunk);
                        }
                    }
                }
            }
            pending = retry;
            if !pending.is_empty() {
                if Instant::now() >= deadline {
                    bail!(
                        "{} documents not stored within {} s (last: {last})",
                        pending.len(),
                        self.timeout.as_secs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Err(e) = self.refresh().await {
                    last = format!("{e:#}");
                }
            }
        }
        Ok(())
    }

    /// Sends the requests in one write and reads exactly `n` answers.
    pub(crate) async fn pipeline(
        &mut self,
        addr: &str,
        reqs: impl Iterator<Item = BytesMut>,
        n: usize,
    ) -> anyhow::Result<Vec<Frame>> {
        let mut buf = BytesMut::new();
        for r in reqs {
            buf.extend_from_slice(&r);
        }
        let c = self.client(addr).await?;
        c.send_bytes(&buf).await?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(c.read_frame("pipelined request").await?);
        }
        Ok(out)
    }

    /// One upsert at the key's active, retried (map refresh, reconnect) on
    /// NOT_MY_VBUCKET, temporary failures and transport errors until `bound`.
    pub(crate) async fn upsert(
        &mut self,
        key: &[u8],
        value: &[u8],
        bound: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + bound;
        let vb = vbucket_of(key, self.map.vbuckets());
        loop {
            let err = match self.map.active(vb).map(str::to_owned) {
                None => anyhow::anyhow!("vb:{vb} has no active in the map"),
                Some(addr) => match self.client(&addr).await {
                    Err(e) => {
                        self.drop_client(&addr);
                        e
                    }
                    Ok(c) => match c
                        .store(
                            Opcode::Set,
                            Vbid(vb),
                            key,
                            value,
                            0x0200_0000,
                            0,
                            Cas(0),
                            Datatype::JSON,
                        )
                        .await
                    {
                        Ok(_) => return Ok(()),
                        Err(e) if retryable(&e) => {
                            if e.status().is_none() {
                                self.drop_client(&addr);
                            }
                            anyhow::Error::from(e)
                        }
                        Err(e) => return Err(e.into()),
                    },
                },
            };
            if Instant::now() >= deadline {
                return Err(err.context(format!("upsert not completed within {bound:?}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            // A failed refresh keeps the old map; the next attempt retries it.
            let _ = self.refresh().await;
        }
    }
}

fn key(i: u32) -> Bytes {
    Bytes::from(format!("user::{i:06}"))
}

fn value(i: u32, generation: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"id":{i},"name":"user {i}","score":{},"gen":{generation}}}"#,
        i.wrapping_mul(7919) % 1000
    ))
}

/// What the writer did during the rebalance.
struct WriterReport {
    acked: u64,
    failed: u64,
    first_failure: Option<String>,
    last: HashMap<u32, Bytes>,
}

impl WriterReport {
    fn broken(why: String) -> WriterReport {
        WriterReport {
            acked: 0,
            failed: 1,
            first_failure: Some(why),
            last: HashMap::new(),
        }
    }
}

/// Upserts keys of `0..docs` in a scattered order until `stop`; counts acknowledged
/// writes and keeps the last acknowledged value per key. An operation fails only if
/// it cannot complete within its bounded retries.
async fn writer(
    rest: RestClient,
    docs: u32,
    timeout: Duration,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<WriterReport> {
    let mut r = KvRouter::new(rest, timeout).await?;
    let mut rep = WriterReport {
        acked: 0,
        failed: 0,
        first_failure: None,
        last: HashMap::new(),
    };
    let op_bound = timeout.min(Duration::from_secs(30));
    let mut generation = 1u64;
    while !stop.load(Ordering::Relaxed) && docs > 0 {
        let i = u32::try_from((generation * 7919) % u64::from(docs)).unwrap_or(0);
        let (k, v) = (key(i), value(i, generation));
        match r.upsert(&k, &v, op_bound).await {
            Ok(()) => {
                rep.acked += 1;
                acked.fetch_add(1, Ordering::Relaxed);
                rep.last.insert(i, v);
            }
            Err(e) => {
                rep.failed += 1;
                rep.first_failure
                    .get_or_insert_with(|| format!("{}: {e:#}", String::from_utf8_lossy(&k)));
            }
        }
        generation += 1;
    }
    Ok(rep)
}

/// One check of the final state.
struct Check {
    name: &'static str,
    result: Result<String, String>,
}

impl Check {
    fn line(&self) -> String {
        match &self.result {
            Ok(s) => format!("check {}: ok ({s})", self.name),
            Err(e) => format!("check {}: FAILED: {e}", self.name),
        }
    }
}

/// Every document reads `want` from its active per `map`. Returns the count checked.
async fn check_actives(
    r: &mut KvRouter,
    want: &BTreeMap<Bytes, Bytes>,
) -> Result<(usize, HashMap<Bytes, Cas>), String> {
    let n = r.map.vbuckets();
    let keys: Vec<&Bytes> = want.keys().collect();
    let mut by_node: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, k) in keys.iter().enumerate() {
        let vb = vbucket_of(k, n);
        let a = r
            .map
            .active(vb)
            .ok_or_else(|| format!("vb:{vb} has no active"))?;
        by_node.entry(a.to_owned()).or_default().push(i);
    }
    let mut cas = HashMap::new();
    for (addr, idx) in by_node {
        for chunk in idx.chunks(BATCH) {
            let reqs = chunk.iter().map(|&i| {
                let mut out = BytesMut::new();
                Get {
                    opcode: Opcode::Get,
                    vbucket: Vbid(vbucket_of(keys[i], n)),
                    opaque: Opaque(u32::try_from(i).unwrap_or(u32::MAX)),
                    key: keys[i].clone(),
                }
                .encode(&mut out);
                out
            });
            let frames = r
                .pipeline(&addr, reqs, chunk.len())
                .await
                .map_err(|e| format!("{e:#}"))?;
            for f in frames {
                let k = keys[f.opaque().0 as usize];
                let key = String::from_utf8_lossy(k);
                if f.status() != Status::Success {
                    return Err(format!("{key} at its active {addr}: {:?}", f.status()));
                }
                if f.value() != &want[k][..] {
                    return Err(format!(
                        "{key} at its active {addr}: {} (wanted {})",
                        String::from_utf8_lossy(f.value()),
                        String::from_utf8_lossy(&want[k])
                    ));
                }
                cas.insert(k.clone(), f.cas());
            }
        }
    }
    Ok((keys.len(), cas))
}

/// Every document is on every replica (GET_REPLICA) with the active's value and CAS.
async fn check_replica_copies(
    r: &mut KvRouter,
    want: &BTreeMap<Bytes, Bytes>,
    cas: &HashMap<Bytes, Cas>,
) -> Result<usize, String> {
    let n = r.map.vbuckets();
    let keys: Vec<&Bytes> = want.keys().collect();
    let mut by_node: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, k) in keys.iter().enumerate() {
        for rep in r.map.replicas(vbucket_of(k, n)) {
            by_node.entry(rep.to_owned()).or_default().push(i);
        }
    }
    let mut copies = 0;
    for (addr, idx) in by_node {
        for chunk in idx.chunks(BATCH) {
            let reqs = chunk.iter().map(|&i| {
                let mut out = BytesMut::new();
                Get {
                    opcode: Opcode::GetReplica,
                    vbucket: Vbid(vbucket_of(keys[i], n)),
                    opaque: Opaque(u32::try_from(i).unwrap_or(u32::MAX)),
                    key: keys[i].clone(),
                }
                .encode(&mut out);
                out
            });
            let frames = r
                .pipeline(&addr, reqs, chunk.len())
                .await
                .map_err(|e| format!("{e:#}"))?;
            for f in frames {
                let k = keys[f.opaque().0 as usize];
                let key = String::from_utf8_lossy(k);
                if f.status() != Status::Success {
                    return Err(format!("{key} GET_REPLICA at {addr}: {:?}", f.status()));
                }
                if f.value() != &want[k][..] || cas.get(k) != Some(&f.cas()) {
                    return Err(format!(
                        "{key}: the replica at {addr} differs from the active"
                    ));
                }
                copies += 1;
            }
        }
    }
    Ok(copies)
}

/// Why the nodes' vbucket states differ from the map (`None` = they match): the
/// head active, each replica in the chain replica, no other node active or replica.
fn states_mismatch(map: &VbMap, st: &BTreeMap<String, NodeStates>) -> Option<String> {
    for vb in 0..map.vbuckets() {
        let chain = map.chain(vb);
        let active = map.active(vb);
        let actives: Vec<&String> = st
            .iter()
            .filter(|(_, s)| s.get(&vb).is_some_and(|(s, _)| s == "active"))
            .map(|(n, _)| n)
            .collect();
        if actives.len() != 1 || Some(actives[0].as_str()) != active {
            return Some(format!(
                "vb:{vb} active on {actives:?}, map says {active:?}"
            ));
        }
        for (node, s) in st {
            let state = s.get(&vb).map_or("missing", |(s, _)| s.as_str());
            let is_replica = state == "replica";
            let want_replica = chain.iter().skip(1).any(|n| n == node);
            if is_replica != want_replica {
                return Some(format!("vb:{vb} is {state} on {node}; map chain {chain:?}"));
            }
        }
    }
    None
}

/// Why replicas lag their actives (`None` = every replica's high seqno equals its
/// active's).
fn seqno_lag(map: &VbMap, st: &BTreeMap<String, NodeStates>) -> Option<String> {
    let seq = |node: &str, vb: u16| st.get(node).and_then(|s| s.get(&vb)).map(|(_, q)| *q);
    for vb in 0..map.vbuckets() {
        let Some(a) = map.active(vb) else {
            return Some(format!("vb:{vb} has no active"));
        };
        let want = seq(a, vb);
        for r in map.replicas(vb) {
            if seq(r, vb) != want {
                return Some(format!(
                    "vb:{vb} replica {r} at {:?}, active {a} at {want:?}",
                    seq(r, vb)
                ));
            }
        }
    }
    None
}

/// Polls the nodes' states until `why` is `None` or the timeout; the last reason.
async fn wait_states(
    c: &LocalCluster,
    map: &VbMap,
    why: fn(&VbMap, &BTreeMap<String, NodeStates>) -> Option<String>,
) -> Result<(), String> {
    let deadline = Instant::now() + c.timeout;
    loop {
        let last = match c.states().await {
            Ok(st) => match why(map, &st) {
                None => return Ok(()),
                Some(w) => w,
            },
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            return Err(format!("after {} s: {last}", c.timeout.as_secs()));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The rebalance report's plan (moves, copies to build, active changes), if the
/// orchestrator wrote one.
async fn report_plan(rest: &RestClient) -> Option<MapDiff> {
    let r = rest.get_json("/logs/rebalanceReport").await.ok()?;
    let plan = &r["stageInfo"]["data"]["details"][BUCKET]["plan"];
    let n = |k: &str| plan[k].as_u64().and_then(|v| usize::try_from(v).ok());
    Some(MapDiff {
        moves: n("moves")?,
        copies_built: n("copiesToBuild")?,
        takeovers: n("activeChanges")?,
    })
}

fn bar(timeout: Duration) -> ProgressBar {
    let b = ProgressBar::new(100);
    b.set_style(
        ProgressStyle::with_template("rebalancing in {msg} {bar:40} {pos}% ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b.enable_steady_tick(Duration::from_millis(250).min(timeout));
    b
}

pub(crate) async fn run(a: DemoArgs) -> anyhow::Result<()> {
    let t = Duration::from_secs(a.timeout);
    let started = Instant::now();
    anyhow::ensure!(a.vbuckets >= 1, "--vbuckets must be at least 1");
    let mut c = LocalCluster::form(a.nodes, t)
        .await
        .context("forming the cluster")?;
    for (i, m) in c.members.iter().enumerate() {
        println!(
            "node {i}: kv {} admin {}{}",
            m.node.kv_addr(),
            m.node.admin_addr(),
            if i == 0 { " (orchestrator)" } else { "" }
        );
    }
    println!(
        "cluster of {} nodes formed in {:.2} s",
        a.nodes,
        started.elapsed().as_secs_f64()
    );
    c.create_bucket(a.vbuckets, a.replicas, 256)
        .await
        .context("creating bucket demo")?;
    println!(
        "bucket {BUCKET}: {} vbuckets, {} replica(s), ready on every node",
        a.vbuckets, a.replicas
    );

    // Load through MCBP, each key to its active.
    let docs: Vec<(Bytes, Bytes)> = (0..a.docs).map(|i| (key(i), value(i, 0))).collect();
    let mut router = KvRouter::new(c.rest.clone(), t).await?;
    let t0 = Instant::now();
    router.store_all(&docs).await.context("loading")?;
    let load_secs = t0.elapsed().as_secs_f64();
    println!(
        "loaded {} JSON documents in {load_secs:.2} s ({:.0} docs/s)",
        a.docs,
        f64::from(a.docs) / load_secs.max(1e-9)
    );
    let mut want: BTreeMap<Bytes, Bytes> = docs.into_iter().collect();

    let mut checks = vec![];
    let mut grow = None;
    if !a.no_grow {
        let before = c.map().await?;
        let member = start_member().await.context("starting the new node")?;
        println!(
            "node {}: kv {} admin {} (new)",
            c.members.len(),
            member.node.kv_addr(),
            member.node.admin_addr()
        );
        let added = c.add_node(&member.node).await;
        c.members.push(member);
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let w = tokio::spawn(writer(
            c.rest.clone(),
            a.docs,
            t,
            Arc::clone(&stop),
            Arc::clone(&acked),
        ));
        // The rebalance starts once the writer is writing (bounded).
        let warm = Instant::now() + t;
        while acked.load(Ordering::Relaxed) == 0 && !w.is_finished() && Instant::now() < warm {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let t1 = Instant::now();
        let outcome = match added {
            Err(e) => Err(e),
            Ok(name) => {
                let b = bar(t);
                b.set_message(name);
                let r = c
                    .rebalance(|p| b.set_position(p.clamp(0.0, 100.0) as u64))
                    .await;
                match &r {
                    Ok(_) => b.finish(),
                    Err(_) => b.abandon(),
                }
                r
            }
        };
        stop.store(true, Ordering::Relaxed);
        let rep = match w.await {
            Ok(Ok(rep)) => rep,
            Ok(Err(e)) => WriterReport::broken(format!("the writer could not start: {e:#}")),
            Err(e) => WriterReport::broken(format!("the writer panicked: {e}")),
        };
        let secs = outcome
            .as_ref()
            .map_or_else(|_| t1.elapsed().as_secs_f64(), |s| *s);
        for (i, v) in &rep.last {
            want.insert(key(*i), v.clone());
        }
        checks.push(Check {
            name: "rebalance-in",
            result: outcome
                .as_ref()
                .map(|s| format!("done in {s:.2} s"))
                .map_err(|e| format!("{e:#}")),
        });
        checks.push(Check {
            name: "writer",
            result: match &rep.first_failure {
                None => Ok(format!("{} acknowledged writes", rep.acked)),
                Some(f) => Err(format!("{} failed operations; first: {f}", rep.failed)),
            },
        });
        grow = Some((before, outcome.ok(), rep, secs));
    }

    // Verify against the final map.
    c.wait_ready()
        .await
        .map_err(|e| {
            checks.push(Check {
                name: "ready",
                result: Err(format!("{e:#}")),
            })
        })
        .ok();
    router.refresh().await?;
    let map = router.map.clone();
    let actives = check_actives(&mut router, &want).await;
    let verified = actives.as_ref().map_or(0, |(n, _)| *n);
    checks.push(Check {
        name: "values at the actives",
        result: actives
            .as_ref()
            .map(|(n, _)| format!("{n} documents read their last acknowledged value"))
            .map_err(Clone::clone),
    });
    checks.push(Check {
        name: "vbucket states",
        result: wait_states(&c, &map, states_mismatch).await.map(|()| {
            format!(
                "{} vbuckets: one active, replicas exactly as the map",
                map.vbuckets()
            )
        }),
    });
    checks.push(Check {
        name: "replica seqnos",
        result: wait_states(&c, &map, seqno_lag)
            .await
            .map(|()| "every replica's high seqno equals its active's".to_string()),
    });
    let copies = match &actives {
        Ok((_, cas)) => check_replica_copies(&mut router, &want, cas).await,
        Err(_) => Err("skipped: the actives did not verify".to_string()),
    };
    checks.push(Check {
        name: "replica copies",
        result: copies.map(|n| format!("{n} replica copies equal their active")),
    });

    // Summary.
    println!("nodes: {}", c.members.len());
    if let Some((before, done, rep, secs)) = &grow {
        let d = match done {
            Some(_) => Some(match report_plan(&c.rest).await {
                Some(p) => p,
                None => diff_maps(before, &map),
            }),
            None => None,
        };
        let show =
            |f: fn(&MapDiff) -> usize| d.as_ref().map_or("n/a".to_string(), |d| f(d).to_string());
        println!("moves: {}", show(|d| d.moves));
        println!("copies built: {}", show(|d| d.copies_built));
        println!("takeovers: {}", show(|d| d.takeovers));
        println!("rebalance time: {secs:.2} s");
        println!("writes during the rebalance: {}", rep.acked);
        println!("failed operations: {}", rep.failed);
    } else {
        println!("moves: 0 (--no-grow)");
        println!("failed operations: 0");
    }
    println!("documents verified: {verified}");
    println!("time: {:.2} s", started.elapsed().as_secs_f64());
    for ch in &checks {
        println!("{}", ch.line());
    }
    c.shutdown().await;
    let failed: Vec<&str> = checks
        .iter()
        .filter(|ch| ch.result.is_err())
        .map(|ch| ch.name)
        .collect();
    if failed.is_empty() {
        println!("demo complete");
        Ok(())
    } else {
        println!("demo failed: {}", failed.join(", "));
        bail!("failed checks: {}", failed.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(servers: &[&str], chains: &[&[i64]]) -> VbMap {
        VbMap {
            servers: servers.iter().map(|s| (*s).to_owned()).collect(),
            chains: chains.iter().map(|c| c.to_vec()).collect(),
        }
    }

    #[test]
    fn map_diff_compares_by_address() {
        let before = map(&["a", "b", "c"], &[&[0, 1], &[1, 2], &[2, 0]]);
        // "d" added: indices shift only where servers change.
        let after = map(&["a", "b", "c", "d"], &[&[0, 1], &[3, 2], &[2, 3]]);
        let d = diff_maps(&before, &after);
        assert_eq!(
            d,
            MapDiff {
                moves: 2,
                copies_built: 2,
                takeovers: 1
            }
        );
    }

    #[test]
    fn states_must_match_the_map() {
        let m = map(&["a", "b"], &[&[0, 1]]);
        let st = |sa: &str, sb: &str| -> BTreeMap<String, NodeStates> {
            [("a", sa), ("b", sb)]
                .into_iter()
                .map(|(n, s)| (n.to_owned(), [(0u16, (s.to_owned(), 5u64))].into()))
                .collect()
        };
        assert_eq!(states_mismatch(&m, &st("active", "replica")), None);
        assert!(states_mismatch(&m, &st("active", "dead")).is_some());
        assert!(states_mismatch(&m, &st("replica", "active")).is_some());
        assert!(states_mismatch(&m, &st("active", "active")).is_some());
        assert_eq!(seqno_lag(&m, &st("active", "replica")), None);
    }

    /// The writer rides through a vbucket that stops being active (NOT_MY_VBUCKET)
    /// until the janitor restores it: no failed operation, every acknowledged value
    /// readable afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_retries_not_my_vbucket_until_the_map_serves_it() -> anyhow::Result<()> {
        let t = Duration::from_secs(30);
        let c = LocalCluster::form(2, t).await?;
        c.create_bucket(4, 1, 256).await?;
        let docs = 200u32;
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let w = tokio::spawn(writer(
            c.rest.clone(),
            docs,
            t,
            Arc::clone(&stop),
            Arc::clone(&acked),
        ));
        while acked.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Make vb:0 dead on its active, behind the cluster's back.
        let map = c.map().await?;
        let active = map.active(0).context("vb:0 has an active")?.to_owned();
        let m = c
            .members
            .iter()
            .find(|m| m.node.kv_addr().to_string() == active)
            .context("the active is a member")?;
        let http = reqwest::Client::new();
        let r = http
            .put(format!(
                "http://{}/buckets/{BUCKET}/vbuckets/0",
                m.node.admin_addr()
            ))
            .basic_auth(NODE_USER, Some(NODE_PASSWORD))
            .json(&serde_json::json!({"state": "dead"}))
            .send()
            .await?;
        assert!(r.status().is_success(), "{r:?}");
        let before = acked.load(Ordering::Relaxed);
        // The janitor (1 s period) makes it active again; the writer keeps going.
        let deadline = Instant::now() + t;
        while acked.load(Ordering::Relaxed) < before + 500 {
            assert!(Instant::now() < deadline, "the writer stalled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.store(true, Ordering::Relaxed);
        let rep = w.await??;
        assert_eq!(rep.failed, 0, "{:?}", rep.first_failure);
        let want: BTreeMap<Bytes, Bytes> =
            rep.last.iter().map(|(i, v)| (key(*i), v.clone())).collect();
        let mut r = KvRouter::new(c.rest.clone(), t).await?;
        let (n, _) = check_actives(&mut r, &want)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        assert_eq!(n, want.len());
        c.shutdown().await;
        Ok(())
    }
}
