//! Shared by the cluster tests: REST helpers, cluster formation, the invariant
//! checks of cluster.md §10.1 (I1 sampled, I3, I4, I5, I6) and a routed writer.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mcbp::kv::GetClusterConfig;
use mcbp::Opaque;

use serde_json::Value;
use testkit::NodeProcess;
use tokio::time::Instant;

pub const PW: &str = "node-pw";
pub const ADMIN: (&str, &str) = ("Administrator", "cluster-pw");
/// Every REST call is bounded (I3): 30 s is the spec's ceiling.
pub const CALL: Duration = Duration::from_secs(30);

pub fn conduit() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_conduit"))
}

/// One REST call with form parameters; (status, body).
pub async fn rest(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let client = reqwest::Client::builder().timeout(CALL).build()?;
    let mut req = client.request(
        reqwest::Method::from_bytes(method.as_bytes())?,
        format!("http://{addr}{path}"),
    );
    if let Some((u, p)) = auth {
        req = req.basic_auth(u, Some(p));
    }
    if method != "GET" && method != "DELETE" {
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        req = req
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
    }
    let started = Instant::now();
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    assert!(
        started.elapsed() < CALL,
        "I3: {method} {path} took {:?}",
        started.elapsed()
    );
    if !(200..300).contains(&status) {
        // I4: every error is typed.
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(
            v.get("kind").is_some_and(Value::is_string),
            "I4: {method} {path} -> {status} without a kind: {text}"
        );
    }
    Ok((status, text))
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub async fn ok(
    addr: SocketAddr,
    method: &str,
    path: &str,
    form: &[(&str, &str)],
    want: u16,
) -> anyhow::Result<Value> {
    let (status, text) = rest(addr, method, path, Some(ADMIN), form).await?;
    anyhow::ensure!(
        status == want,
        "{method} {path}: {status} (wanted {want}): {text}"
    );
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// I5: a raw client per node polls GET_CLUSTER_CONFIG of one bucket; (revEpoch, rev)
/// never goes back and equal versions have equal content (ignoring `thisNode`).
pub struct ConfigWatch {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<usize>>>,
}

pub fn without_this_node(mut v: Value) -> Value {
    if let Some(ns) = v.get_mut("nodesExt").and_then(Value::as_array_mut) {
        for n in ns {
            if let Some(o) = n.as_object_mut() {
                o.remove("thisNode");
            }
        }
    }
    v
}

impl ConfigWatch {
    pub fn start(nodes: &[&NodeProcess], bucket: &str) -> ConfigWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = nodes
            .iter()
            .map(|n| {
                let (kv, stop, bucket) = (n.kv, stop.clone(), bucket.to_owned());
                tokio::spawn(async move {
                    let cfg = kv_client::ClientConfig {
                        timeout: Duration::from_secs(5),
                        ..Default::default()
                    };
                    let mut c = kv_client::Client::connect(&kv.to_string(), cfg).await?;
                    c.auth_plain(&kv_client::Credentials {
                        user: "admin".into(),
                        password: PW.into(),
                    })
                    .await?;
                    c.select_bucket(&bucket).await?;
                    let mut seen: BTreeMap<(i64, i64), Value> = BTreeMap::new();
                    let mut last = (i64::MIN, i64::MIN);
                    while !stop.load(Ordering::Relaxed) {
                        let f = c
                            .call_ok(&GetClusterConfig {
                                opaque: Opaque(9),
                                known: None,
                            })
                            .await?;
                        let v: Value = serde_json::from_slice(f.value())?;
                        let version = (
                            v["revEpoch"].as_i64().unwrap_or(-1),
                            v["rev"].as_i64().unwrap_or(-1),
                        );
                        anyhow::ensure!(
                            version >= last,
                            "I5: node {kv} went from {last:?} back to {version:?}"
                        );
                        last = version;
                        let content = without_this_node(v);
                        if let Some(prev) = seen.get(&version) {
                            anyhow::ensure!(
                                *prev == content,
                                "I5: node {kv} served two configs as {version:?}"
                            );
                        } else {
                            seen.insert(version, content);
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Ok(seen.len())
                })
            })
            .collect();
        ConfigWatch { stop, tasks }
    }

    /// Stops the watchers; fails on any I5 violation. Returns the versions each saw.
    pub async fn finish(self) -> anyhow::Result<Vec<usize>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = vec![];
        for t in self.tasks {
            out.push(t.await??);
        }
        Ok(out)
    }
}

pub fn start_nodes(n: usize) -> anyhow::Result<Vec<NodeProcess>> {
    (0..n)
        .map(|_| NodeProcess::start(&conduit(), PW, &[]))
        .collect()
}

pub fn host_port(n: &NodeProcess) -> String {
    format!("127.0.0.1:{}", n.admin.port())
}

/// The harness flow (T15): legacy init, addNode ×(n−1), rebalance, poll progress.
pub async fn form_cluster(nodes: &[NodeProcess]) -> anyhow::Result<Vec<String>> {
    let a = nodes[0].admin;
    let (s, _) = rest(
        a,
        "POST",
        "/node/controller/setupServices",
        Some(("admin", PW)),
        &[("services", "kv")],
    )
    .await?;
    assert_eq!(s, 200);
    let (s, _) = rest(
        a,
        "POST",
        "/nodes/self/controller/settings",
        Some(("admin", PW)),
        &[("path", "/tmp/data"), ("index_path", "/tmp/idx")],
    )
    .await?;
    assert_eq!(s, 200);
    let (s, t) = rest(
        a,
        "POST",
        "/pools/default",
        Some(("admin", PW)),
        &[("memoryQuota", "2048")],
    )
    .await?;
    assert_eq!(s, 200, "{t}");
    let (s, t) = rest(
        a,
        "POST",
        "/settings/web",
        Some(("admin", PW)),
        &[
            ("username", ADMIN.0),
            ("password", ADMIN.1),
            ("port", "SAME"),
        ],
    )
    .await?;
    assert_eq!(s, 200, "{t}");
    let mut names = vec![];
    let pd = ok(a, "GET", "/pools/default", &[], 200).await?;
    names.push(
        pd["nodes"][0]["otpNode"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    for n in &nodes[1..] {
        let v = ok(
            a,
            "POST",
            "/controller/addNode",
            &[
                ("hostname", &host_port(n)),
                ("user", "admin"),
                ("password", PW),
                ("services", "kv"),
            ],
            200,
        )
        .await?;
        names.push(v["otpNode"].as_str().unwrap_or_default().to_owned());
    }
    let pd = ok(a, "GET", "/pools/default", &[], 200).await?;
    let added = pd["nodes"].as_array().map(|ns| {
        ns.iter()
            .filter(|n| n["clusterMembership"] == "inactiveAdded")
            .count()
    });
    assert_eq!(added, Some(nodes.len() - 1), "{pd}");
    assert_eq!(
        pd["balanced"], false,
        "added nodes make the cluster unbalanced: {pd}"
    );
    let known = names.join(",");
    ok(
        a,
        "POST",
        "/controller/rebalance",
        &[("knownNodes", &known), ("ejectedNodes", "")],
        200,
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, t) = rest(
            a,
            "GET",
            "/pools/default/rebalanceProgress",
            Some(ADMIN),
            &[],
        )
        .await?;
        if s == 200 && t == r#"{"status":"none"}"# {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "rebalance progress never became exactly none: {t}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let pd = ok(a, "GET", "/pools/default", &[], 200).await?;
    let active = pd["nodes"].as_array().map(|ns| {
        ns.iter()
            .filter(|n| n["clusterMembership"] == "active")
            .count()
    });
    assert_eq!(active, Some(nodes.len()), "{pd}");
    Ok(names)
}

/// Creates a bucket with jepsen's parameters through `via` and waits until every
/// node serves it (healthy) and the map is complete.
pub async fn create_bucket(
    via: SocketAddr,
    orchestrator: SocketAddr,
    name: &str,
    replicas: &str,
) -> anyhow::Result<Value> {
    let (s, t) = rest(
        via,
        "POST",
        "/pools/default/buckets",
        Some(ADMIN),
        &[
            ("name", name),
            ("ramQuotaMB", "256"),
            ("bucketType", "membase"),
            ("replicaNumber", replicas),
            ("threadsNumber", "3"),
            ("flushEnabled", "1"),
            ("evictionPolicy", "valueOnly"),
            ("conflictResolutionType", "seqno"),
            ("maxTTL", "0"),
            ("compressionMode", "off"),
            ("storageBackend", "couchstore"),
            ("durabilityMinLevel", "none"),
            ("numVBuckets", "64"),
        ],
    )
    .await?;
    anyhow::ensure!(s == 202, "bucket create: {s} {t}");
    wait_healthy(orchestrator, name).await
}

pub async fn wait_healthy(a: SocketAddr, bucket: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pd = ok(a, "GET", "/pools/default", &[], 200).await?;
        let healthy = pd["nodes"]
            .as_array()
            .is_some_and(|ns| ns.iter().all(|n| n["status"] == "healthy"));
        let (s, t) = rest(
            a,
            "GET",
            &format!("/pools/default/buckets/{bucket}"),
            Some(ADMIN),
            &[],
        )
        .await?;
        if healthy && s == 200 {
            let b: Value = serde_json::from_str(&t)?;
            let full = b["vBucketServerMap"]["vBucketMap"]
                .as_array()
                .is_some_and(|rows| {
                    !rows.is_empty() && rows.iter().all(|r| r[0].as_i64().is_some_and(|i| i >= 0))
                });
            if full {
                return Ok(b);
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "bucket {bucket} never became healthy: {pd}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each node's vbucket states of `bucket`, read from the node's own admin API:
/// kv-port -> vb -> (state, high seqno).
pub async fn states(
    nodes: &[&NodeProcess],
    bucket: &str,
) -> anyhow::Result<BTreeMap<u16, BTreeMap<u16, (String, u64)>>> {
    let mut out = BTreeMap::new();
    for n in nodes {
        let (s, t) = testkit::http(
            n.admin,
            "GET",
            &format!("/buckets/{bucket}"),
            Some(("admin", PW)),
            None,
        )
        .await?;
        let mut m = BTreeMap::new();
        if s == 200 {
            let v: Value = serde_json::from_str(&t)?;
            for vb in v["vbuckets"].as_array().into_iter().flatten() {
                m.insert(
                    vb["vb"].as_u64().unwrap_or(0) as u16,
                    (
                        vb["state"].as_str().unwrap_or("").to_owned(),
                        vb["high_seqno"].as_u64().unwrap_or(0),
                    ),
                );
            }
        }
        out.insert(n.kv.port(), m);
    }
    Ok(out)
}

/// I1 (sampled): no vbucket active on two nodes.
pub fn assert_single_active(st: &BTreeMap<u16, BTreeMap<u16, (String, u64)>>) {
    let mut actives: BTreeMap<u16, Vec<u16>> = BTreeMap::new();
    for (port, vbs) in st {
        for (vb, (s, _)) in vbs {
            if s == "active" {
                actives.entry(*vb).or_default().push(*port);
            }
        }
    }
    for (vb, ports) in actives {
        assert!(ports.len() <= 1, "I1: vbucket {vb} active on {ports:?}");
    }
}

/// I6: states equal the map (heads active, tails replica, others dead).
pub fn mismatches(bucket: &Value, st: &BTreeMap<u16, BTreeMap<u16, (String, u64)>>) -> Vec<String> {
    let smap = &bucket["vBucketServerMap"];
    let servers: Vec<u16> = smap["serverList"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str()?.rsplit(':').next()?.parse().ok())
        .collect();
    let mut bad = vec![];
    for (vb, row) in smap["vBucketMap"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        for (port, vbs) in st {
            let pos = row.as_array().into_iter().flatten().position(|i| {
                i.as_i64()
                    .and_then(|i| servers.get(usize::try_from(i).ok()?))
                    == Some(port)
            });
            let want = match pos {
                Some(0) => "active",
                Some(_) => "replica",
                None => "dead",
            };
            let got = vbs.get(&(vb as u16)).map_or("missing", |(s, _)| s.as_str());
            if got != want && !(want == "dead" && got == "missing") {
                bad.push(format!("vb {vb} on :{port}: want {want}, got {got}"));
            }
        }
    }
    bad
}

/// I6, replications: each node's actual incoming replications (its agent's
/// listing) equal what the map implies (every replica streams from its head).
pub async fn incoming_mismatches(
    a: SocketAddr,
    nodes: &[&NodeProcess],
    bucket: &str,
    b: &Value,
) -> anyhow::Result<Vec<String>> {
    let pd = ok(a, "GET", "/pools/default", &[], 200).await?;
    let name_of_kv: BTreeMap<u16, String> = pd["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            Some((
                u16::try_from(n["ports"]["direct"].as_u64()?).ok()?,
                n["otpNode"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let smap = &b["vBucketServerMap"];
    let servers: Vec<u16> = smap["serverList"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str()?.rsplit(':').next()?.parse().ok())
        .collect();
    // consumer kv port -> producer name -> vbuckets
    let mut want: BTreeMap<u16, BTreeMap<String, Vec<u64>>> = BTreeMap::new();
    for (vb, row) in smap["vBucketMap"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let chain: Vec<Option<u16>> = row
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| servers.get(usize::try_from(i.as_i64()?).ok()?).copied())
            .collect();
        let Some(Some(head)) = chain.first() else {
            continue;
        };
        for r in chain.iter().skip(1).flatten() {
            let producer = name_of_kv.get(head).cloned().unwrap_or_default();
            want.entry(*r)
                .or_default()
                .entry(producer)
                .or_default()
                .push(vb as u64);
        }
    }
    let mut bad = vec![];
    for n in nodes {
        let (s, t) = testkit::http(
            n.admin,
            "GET",
            &format!("/agent/v1/buckets/{bucket}/vbuckets"),
            Some(("admin", PW)),
            None,
        )
        .await?;
        anyhow::ensure!(s == 200, "agent listing on {}: {s} {t}", n.admin);
        let v: Value = serde_json::from_str(&t)?;
        let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (producer, vbs) in v["incoming"].as_object().into_iter().flatten() {
            let mut list: Vec<u64> = vbs
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64)
                .collect();
            list.sort_unstable();
            if !list.is_empty() {
                got.insert(producer.clone(), list);
            }
        }
        let expected = want.get(&n.kv.port()).cloned().unwrap_or_default();
        if got != expected {
            bad.push(format!(
                "incoming on :{}: want {expected:?}, got {got:?}",
                n.kv.port()
            ));
        }
    }
    Ok(bad)
}

/// Waits (bounded) until I6 holds, checking I1 at every sample.
pub async fn wait_states_match(
    a: SocketAddr,
    nodes: &[&NodeProcess],
    bucket: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let b = ok(
            a,
            "GET",
            &format!("/pools/default/buckets/{bucket}"),
            &[],
            200,
        )
        .await?;
        let st = states(nodes, bucket).await?;
        assert_single_active(&st);
        let mut bad = mismatches(&b, &st);
        if bad.is_empty() {
            bad = incoming_mismatches(a, nodes, bucket, &b).await?;
        }
        if bad.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "I6 did not hold within {within:?}: {bad:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn cli(args: &[&str]) -> anyhow::Result<(i32, Vec<Value>)> {
    let out = std::process::Command::new(conduit()).args(args).output()?;
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Ok((out.status.code().unwrap_or(-1), lines))
}

/// The client map of a bucket: KV addresses and chains (indices into them).
#[derive(Debug, Clone)]
pub struct ClientMap {
    pub servers: Vec<String>,
    pub chains: Vec<Vec<i64>>,
}

impl ClientMap {
    pub async fn fetch(rest_addr: SocketAddr, bucket: &str) -> anyhow::Result<ClientMap> {
        let v = ok(
            rest_addr,
            "GET",
            &format!("/pools/default/b/{bucket}"),
            &[],
            200,
        )
        .await?;
        let smap = &v["vBucketServerMap"];
        let servers = smap["serverList"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect();
        let chains = smap["vBucketMap"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                r.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_i64)
                    .collect()
            })
            .collect();
        Ok(ClientMap { servers, chains })
    }

    pub fn vbucket_of(&self, key: &str) -> u16 {
        let n = self.chains.len().max(1) as u32;
        (((crc32fast::hash(key.as_bytes()) >> 16) & 0x7fff) % n) as u16
    }

    /// The KV address of copy `pos` (0 = active) of `vb`.
    pub fn node_of(&self, vb: u16, pos: usize) -> Option<&str> {
        let i = *self.chains.get(usize::from(vb))?.get(pos)?;
        self.servers
            .get(usize::try_from(i).ok()?)
            .map(String::as_str)
    }
}

pub async fn kv(addr: &str) -> anyhow::Result<kv_client::Client> {
    let cfg = kv_client::ClientConfig {
        timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let mut c = kv_client::Client::connect(addr, cfg).await?;
    c.auth_plain(&kv_client::Credentials {
        user: "admin".into(),
        password: PW.into(),
    })
    .await?;
    c.select_bucket("default").await?;
    Ok(c)
}

static NEXT_VALUE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// What a writer did: the last acknowledged value of every key it wrote.
#[derive(Debug, Default)]
pub struct WriterReport {
    pub acked: BTreeMap<String, u64>,
    /// Every acknowledged write of each key, oldest first: value, the KV address
    /// that acknowledged it, and when.
    pub history: BTreeMap<String, Vec<(u64, String, std::time::Instant)>>,
    pub writes: u64,
    pub failed: u64,
    pub retries: u64,
}

/// A routed writer (I2's load generator): upserts keys round-robin to each key's
/// active node by the client map, refreshing the map and retrying (bounded) on
/// NOT_MY_VBUCKET or a broken connection; logs every acknowledged write.
pub struct Writer {
    stop: Arc<AtomicBool>,
    writes: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<anyhow::Result<WriterReport>>,
}

impl Writer {
    pub fn start(rest_addr: SocketAddr, bucket: &str, keys: usize) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop2, writes2, bucket) = (stop.clone(), writes.clone(), bucket.to_owned());
        let task = tokio::spawn(async move {
            let mut report = WriterReport::default();
            let mut map = ClientMap::fetch(rest_addr, &bucket).await?;
            let mut conns: BTreeMap<String, kv_client::Client> = BTreeMap::new();
            while !stop2.load(Ordering::Relaxed) {
                // Values are unique across every writer of the test binary, so a
                // later writer never writes a value an earlier one acknowledged.
                let i = NEXT_VALUE.fetch_add(1, Ordering::Relaxed);
                let key = format!("key-{:05}", i % keys as u64);
                let vb = map.vbucket_of(&key);
                let mut done = false;
                for _attempt in 0..100 {
                    let Some(addr) = map.node_of(vb, 0).map(str::to_owned) else {
                        break;
                    };
                    if !conns.contains_key(&addr) {
                        match kv(&addr).await {
                            Ok(c) => {
                                conns.insert(addr.clone(), c);
                            }
                            Err(_) => {
                                report.retries += 1;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                map = ClientMap::fetch(rest_addr, &bucket).await.unwrap_or(map);
                                continue;
                            }
                        }
                    }
                    let Some(c) = conns.get_mut(&addr) else { break };
                    let value = i.to_string();
                    match c
                        .store(
                            mcbp::Opcode::Set,
                            mcbp::Vbid(vb),
                            key.as_bytes(),
                            value.as_bytes(),
                            0,
                            0,
                            mcbp::Cas(0),
                            mcbp::Datatype::RAW,
                        )
                        .await
                    {
                        Ok(_) => {
                            report.acked.insert(key.clone(), i);
                            report.history.entry(key.clone()).or_default().push((
                                i,
                                addr.clone(),
                                std::time::Instant::now(),
                            ));
                            writes2.fetch_add(1, Ordering::Relaxed);
                            done = true;
                            break;
                        }
                        Err(e) => {
                            report.retries += 1;
                            if !matches!(e, kv_client::ClientError::Status { .. }) {
                                conns.remove(&addr);
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            map = ClientMap::fetch(rest_addr, &bucket).await.unwrap_or(map);
                        }
                    }
                }
                if !done {
                    report.failed += 1;
                }
            }
            report.writes = writes2.load(Ordering::Relaxed);
            Ok(report)
        });
        Writer { stop, writes, task }
    }

    /// Waits until `n` writes were acknowledged (bounded by `within`).
    pub async fn wait_writes(&self, n: u64, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        while self.writes.load(Ordering::Relaxed) < n {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline && !self.task.is_finished(),
                "the writer acknowledged only {} of {n} writes",
                self.writes.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    pub async fn finish(self) -> anyhow::Result<WriterReport> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?
    }
}

/// Reads keys from their actives by the client map, one connection per node.
struct ActiveReader {
    map: ClientMap,
    conns: BTreeMap<String, kv_client::Client>,
}

impl ActiveReader {
    async fn new(rest_addr: SocketAddr, bucket: &str) -> anyhow::Result<ActiveReader> {
        Ok(ActiveReader {
            map: ClientMap::fetch(rest_addr, bucket).await?,
            conns: BTreeMap::new(),
        })
    }

    /// The key's vbucket and its value on the active (`None`: not found).
    async fn read(&mut self, key: &str) -> anyhow::Result<(u16, Option<String>)> {
        let vb = self.map.vbucket_of(key);
        let addr = self
            .map
            .node_of(vb, 0)
            .ok_or_else(|| anyhow::anyhow!("vb {vb} has no active"))?
            .to_owned();
        if !self.conns.contains_key(&addr) {
            self.conns.insert(addr.clone(), kv(&addr).await?);
        }
        let c = self
            .conns
            .get_mut(&addr)
            .ok_or_else(|| anyhow::anyhow!("no connection"))?;
        let got = c.get(mcbp::Vbid(vb), key.as_bytes()).await?;
        Ok((
            vb,
            got.map(|g| String::from_utf8_lossy(&g.value).into_owned()),
        ))
    }
}

/// I2: every acknowledged key reads its last acknowledged value from its active.
pub async fn verify_acked(
    rest_addr: SocketAddr,
    bucket: &str,
    acked: &BTreeMap<String, u64>,
) -> anyhow::Result<()> {
    let mut reader = ActiveReader::new(rest_addr, bucket).await?;
    for (key, want) in acked {
        let (vb, got) = reader.read(key).await?;
        anyhow::ensure!(
            got.as_deref() == Some(want.to_string().as_str()),
            "I2: {key} (vb {vb}) reads {got:?}, last acknowledged {want}"
        );
    }
    Ok(())
}

/// I2 across a kill -9 of a node holding actives: a write is acknowledged once the
/// active holds it in memory, so the writes `killed` acknowledged in the last
/// `window` before `killed_at` may be lost with it (neither persisted nor yet on
/// a replica: the spec's I2 asks failovers to keep only writes confirmed on a
/// replica, and a restart is no different). Every key must read its last
/// acknowledged value, or an earlier acknowledged value (or nothing) when every
/// newer write was acknowledged by `killed` in that window. Returns how many keys
/// read an earlier value.
pub async fn verify_acked_except_killed(
    rest_addr: SocketAddr,
    bucket: &str,
    report: &WriterReport,
    killed: SocketAddr,
    killed_at: std::time::Instant,
    window: Duration,
) -> anyhow::Result<usize> {
    let mut reader = ActiveReader::new(rest_addr, bucket).await?;
    let killed_port = format!(":{}", killed.port());
    let mut older = 0;
    for (key, writes) in &report.history {
        let (vb, got) = reader.read(key).await?;
        let got: Option<u64> = match got {
            None => None,
            Some(v) => Some(
                v.parse()
                    .map_err(|_| anyhow::anyhow!("I2: {key} reads {v:?}, not a written value"))?,
            ),
        };
        let newer_from = match got {
            None => 0,
            Some(v) => writes
                .iter()
                .position(|w| w.0 == v)
                .map(|p| p + 1)
                .ok_or_else(|| anyhow::anyhow!("I2: {key} reads {v}, never acknowledged"))?,
        };
        let lost = &writes[newer_from..];
        let excused = lost.iter().all(|(_, by, at)| {
            by.ends_with(&killed_port)
                && *at <= killed_at
                && killed_at.duration_since(*at) <= window
        });
        anyhow::ensure!(
            lost.is_empty() || excused,
            "I2: {key} (vb {vb}) reads {got:?}, last acknowledged {:?}; lost writes {:?}",
            writes.last().map(|w| w.0),
            lost.iter().map(|w| (w.0, w.1.as_str())).collect::<Vec<_>>()
        );
        older += usize::from(!lost.is_empty());
    }
    Ok(older)
}

/// The actives of `bucket` on one node (`None` when it does not answer).
pub async fn actives_on(admin: SocketAddr, bucket: &str) -> Option<BTreeSet<u64>> {
    let Ok((200, t)) = testkit::http(
        admin,
        "GET",
        &format!("/buckets/{bucket}"),
        Some(("admin", PW)),
        None,
    )
    .await
    else {
        return None;
    };
    let v: Value = serde_json::from_str(&t).ok()?;
    Some(
        v["vbuckets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|vb| vb["state"] == "active")
            .filter_map(|vb| vb["vb"].as_u64())
            .collect(),
    )
}

/// I1 sampled: every node's states every 100 ms. Without a false positive: the nodes are read one after the other, so a takeover finishing
/// between the read of the old active (still active) and the new one (already
/// active) looks like two actives although the old one went dead first. A vbucket
/// seen active on A (read first) and B (read later) is a violation only if A still
/// reads active after B's read: A was then active before and after the moment B
/// was read active.
#[derive(Debug)]
pub struct ActiveSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<u64>>,
}

impl ActiveSampler {
    pub fn start(admins: Vec<SocketAddr>, kv_ports: Vec<u16>, bucket: &str) -> ActiveSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, bucket) = (stop.clone(), bucket.to_owned());
        let task = tokio::spawn(async move {
            let mut samples = 0;
            while !stop2.load(Ordering::Relaxed) {
                // vb -> indices of the nodes (in read order) that read it active.
                let mut actives: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
                for (i, admin) in admins.iter().enumerate() {
                    for vb in actives_on(*admin, &bucket).await.unwrap_or_default() {
                        actives.entry(vb).or_default().push(i);
                    }
                }
                for (vb, seen) in &actives {
                    if seen.len() < 2 {
                        continue;
                    }
                    // Re-read every node but the last one that read it active.
                    let mut still = vec![kv_ports[seen[seen.len() - 1]]];
                    for &i in &seen[..seen.len() - 1] {
                        if actives_on(admins[i], &bucket)
                            .await
                            .is_some_and(|a| a.contains(vb))
                        {
                            still.push(kv_ports[i]);
                        }
                    }
                    if still.len() < 2 {
                        eprintln!(
                            "I1 sampler: vbucket {vb} read active on {:?} across a takeover (not confirmed)",
                            seen.iter().map(|&i| kv_ports[i]).collect::<Vec<_>>()
                        );
                    }
                    anyhow::ensure!(still.len() < 2, "I1: vbucket {vb} active on {still:?}");
                }
                samples += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(samples)
        });
        ActiveSampler { stop, task }
    }

    pub async fn finish(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?
    }
}

/// Waits until the rebalance ended; returns the final progress body.
pub async fn wait_rebalance_end(a: SocketAddr, within: Duration) -> anyhow::Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        let (s, t) = rest(
            a,
            "GET",
            "/pools/default/rebalanceProgress",
            Some(ADMIN),
            &[],
        )
        .await?;
        anyhow::ensure!(s == 200, "{t}");
        let v: Value = serde_json::from_str(&t)?;
        if v["status"] == "none" {
            return Ok(v);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the rebalance did not end within {within:?}: {t}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Names of every node, from `/pools/default`.
pub async fn node_names(a: SocketAddr) -> anyhow::Result<Vec<String>> {
    let pd = ok(a, "GET", "/pools/default", &[], 200).await?;
    Ok(pd["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["otpNode"].as_str().map(str::to_owned))
        .collect())
}

/// Waits (bounded) until every replica's high seqno equals its active's (quiet).
pub async fn wait_replicas_caught_up(
    nodes: &[&NodeProcess],
    bucket: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let st = states(nodes, bucket).await?;
        let mut high: BTreeMap<u16, (u64, Vec<u64>)> = BTreeMap::new();
        for vbs in st.values() {
            for (vb, (s, h)) in vbs {
                let e = high.entry(*vb).or_default();
                match s.as_str() {
                    "active" => e.0 = *h,
                    "replica" => e.1.push(*h),
                    _ => {}
                }
            }
        }
        if high.values().all(|(a, rs)| rs.iter().all(|r| r == a)) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "replicas did not catch up within {within:?}: {high:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Python that has the official Couchbase SDK (`CONDUIT_SDK_PYTHON`); `None`
/// when it is not set and the interop tests may skip (a skip is a failure under
/// `CONDUIT_REQUIRE_INTEROP`).
pub fn sdk_python() -> Option<String> {
    let python = std::env::var("CONDUIT_SDK_PYTHON").unwrap_or_default();
    if python.is_empty()
        && testkit::skip("CONDUIT_REQUIRE_INTEROP", "CONDUIT_SDK_PYTHON is not set")
    {
        return None;
    }
    Some(python)
}

/// The official Couchbase SDK running `tests/sdk/sdk_rebalance.py` (upserts and gets
/// in a loop, bootstrapped from one node) until [`SdkLoad::finish`].
pub struct SdkLoad {
    child: std::process::Child,
    stop: PathBuf,
    _tmp: tempfile::TempDir,
}

impl SdkLoad {
    /// Starts the script against `kv` with `keys` keys; `None` when the SDK is not
    /// installed and the interop tests may skip. Returns once the SDK is connected.
    pub async fn start(kv: SocketAddr, keys: u32) -> anyhow::Result<Option<SdkLoad>> {
        let Some(python) = sdk_python() else {
            return Ok(None);
        };
        let script =
            testkit::repo_root(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/sdk_rebalance.py");
        let tmp = tempfile::tempdir()?;
        let stop = tmp.path().join("stop");
        let ready = tmp.path().join("ready");
        let mut child = std::process::Command::new(&python)
            .arg(&script)
            .arg(kv.to_string())
            .args(["default", ADMIN.0, ADMIN.1, &keys.to_string(), "900"])
            .arg(&stop)
            .arg(&ready)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready.exists() {
            if let Some(status) = child.try_wait()? {
                let out = child.wait_with_output()?;
                anyhow::bail!(
                    "the SDK script exited early ({status}):\n{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                anyhow::bail!("the SDK never connected");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Some(SdkLoad {
            child,
            stop,
            _tmp: tmp,
        }))
    }

    /// Stops the loop and checks its report: 0 failed operations (after the SDK's
    /// own retries) and every acknowledged upsert read back. Returns the report.
    pub async fn finish(self) -> anyhow::Result<Value> {
        std::fs::write(&self.stop, "stop")?;
        let child = self.child;
        let out = tokio::time::timeout(
            Duration::from_secs(180),
            tokio::task::spawn_blocking(move || child.wait_with_output()),
        )
        .await???;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
            .map_err(|e| anyhow::anyhow!("{e}: {stdout}\n{stderr}"))?;
        eprintln!("SDK: {v}");
        anyhow::ensure!(v["failed"] == 0, "0 failed SDK operations: {v}\n{stderr}");
        anyhow::ensure!(
            v["reread_bad"].as_array().is_some_and(Vec::is_empty),
            "every acknowledged upsert reads back: {v}"
        );
        anyhow::ensure!(v["upserts_acked"].as_u64() > Some(100), "{v}");
        anyhow::ensure!(v["keys_acked"] == v["reread_ok"], "{v}");
        anyhow::ensure!(out.status.success(), "{v}\n{stderr}");
        Ok(v)
    }
}

/// Starts a rebalance of every node, ejecting `eject`; returns its id.
pub async fn start_rebalance(a: SocketAddr, eject: &[&str]) -> anyhow::Result<String> {
    let known = node_names(a).await?.join(",");
    let v = ok(
        a,
        "POST",
        "/controller/rebalance",
        &[("knownNodes", &known), ("ejectedNodes", &eject.join(","))],
        200,
    )
    .await?;
    Ok(v["rebalance_id"].as_str().unwrap_or_default().to_owned())
}

/// `POST path` with the cluster admin's credentials; 200 expected, the answer dropped.
pub async fn post_ok(a: SocketAddr, path: &str, form: &[(&str, &str)]) -> anyhow::Result<()> {
    ok(a, "POST", path, form, 200).await.map(|_| ())
}
