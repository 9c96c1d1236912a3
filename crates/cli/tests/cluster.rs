//! The cluster with real `conduit node` processes on 127.0.0.1 (cluster.md §10):
//! the harness flow (T15), janitor repair (T6), fenced restart (T17), REST bad input
//! (T14) and the official SDK against 3 nodes with 1 replica, with invariants I1 and
//! I3–I7 checked along the way.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mcbp::kv::GetClusterConfig;
use mcbp::Opaque;

use serde_json::Value;
use testkit::{skip, NodeProcess};
use tokio::time::Instant;

const PW: &str = "node-pw";
const ADMIN: (&str, &str) = ("Administrator", "cluster-pw");
/// Every REST call is bounded (I3): 30 s is the spec's ceiling.
const CALL: Duration = Duration::from_secs(30);

fn conduit() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_conduit"))
}

/// One REST call with form parameters; (status, body).
async fn rest(
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

fn urlencode(s: &str) -> String {
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

async fn ok(
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
struct ConfigWatch {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<usize>>>,
}

fn without_this_node(mut v: Value) -> Value {
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
    fn start(nodes: &[&NodeProcess], bucket: &str) -> ConfigWatch {
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
    async fn finish(self) -> anyhow::Result<Vec<usize>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = vec![];
        for t in self.tasks {
            out.push(t.await??);
        }
        Ok(out)
    }
}

fn start_nodes(n: usize) -> anyhow::Result<Vec<NodeProcess>> {
    (0..n)
        .map(|_| NodeProcess::start(&conduit(), PW, &[]))
        .collect()
}

fn host_port(n: &NodeProcess) -> String {
    format!("127.0.0.1:{}", n.admin.port())
}

/// The harness flow (T15): legacy init, addNode ×(n−1), rebalance, poll progress.
async fn form_cluster(nodes: &[NodeProcess]) -> anyhow::Result<Vec<String>> {
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
async fn create_bucket(
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

async fn wait_healthy(a: SocketAddr, bucket: &str) -> anyhow::Result<Value> {
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
async fn states(
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
fn assert_single_active(st: &BTreeMap<u16, BTreeMap<u16, (String, u64)>>) {
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
fn mismatches(bucket: &Value, st: &BTreeMap<u16, BTreeMap<u16, (String, u64)>>) -> Vec<String> {
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
async fn incoming_mismatches(
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
async fn wait_states_match(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_flow_forms_a_cluster_whose_states_match_the_map_and_ejects_cleanly(
) -> anyhow::Result<()> {
    let nodes = start_nodes(4)?;
    let (three, spare) = nodes.split_at(3);
    let names = form_cluster(three).await?;
    let a = three[0].admin;
    // /pools is public and shows the cluster.
    let (s, t) = rest(a, "GET", "/pools", None, &[]).await?;
    assert_eq!(s, 200);
    let pools: Value = serde_json::from_str(&t)?;
    assert_eq!(pools["isEnterprise"], true);
    assert!(
        pools["uuid"].as_str().is_some_and(|u| u.len() == 32),
        "{pools}"
    );
    // Created through a member that is not the orchestrator: forwarded.
    let b = create_bucket(three[1].admin, a, "default", "1").await?;
    assert_eq!(b["vBucketServerMap"]["numReplicas"], 1);
    assert_eq!(
        b["vBucketServerMap"]["serverList"].as_array().map(Vec::len),
        Some(3)
    );
    let refs: Vec<&NodeProcess> = three.iter().collect();
    wait_states_match(a, &refs, "default", Duration::from_secs(15)).await?;
    let watch = ConfigWatch::start(&refs, "default");
    // Every node serves the same map version with the cluster's epoch (I5 at rest).
    let rev = b["rev"].as_u64().unwrap_or(0);
    assert!(rev > 0, "{b}");
    for n in three {
        let v = ok(n.admin, "GET", "/pools/default/b/default", &[], 200).await?;
        assert!(v["rev"].as_u64().unwrap_or(0) >= rev, "{v}");
    }
    // A fourth node added, then ejected before a rebalance: it leaves nothing behind (I7).
    let v = ok(
        a,
        "POST",
        "/controller/addNode",
        &[
            ("hostname", &host_port(&spare[0])),
            ("user", "admin"),
            ("password", PW),
        ],
        200,
    )
    .await?;
    let fourth = v["otpNode"].as_str().unwrap_or_default().to_owned();
    ok(
        a,
        "POST",
        "/controller/ejectNode",
        &[("otpNode", &fourth)],
        200,
    )
    .await?;
    let pd = ok(a, "GET", "/pools/default", &[], 200).await?;
    assert_eq!(pd["nodes"].as_array().map(Vec::len), Some(3), "{pd}");
    let (s, t) =
        testkit::http(spare[0].admin, "GET", "/buckets", Some(("admin", PW)), None).await?;
    assert_eq!((s, t.as_str()), (200, "[]"));
    let (_, t) = rest(spare[0].admin, "GET", "/pools", None, &[]).await?;
    assert_eq!(
        serde_json::from_str::<Value>(&t)?["uuid"],
        serde_json::json!([]),
        "the ejected node forgot the cluster"
    );
    watch.finish().await?;
    // Deleting the bucket removes it from every node.
    ok(a, "DELETE", "/pools/default/buckets/default", &[], 200).await?;
    for n in three {
        let (s, t) = testkit::http(n.admin, "GET", "/buckets", Some(("admin", PW)), None).await?;
        assert_eq!((s, t.as_str()), (200, "[]"), "node {}", n.admin);
    }
    assert_eq!(names.len(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn janitor_repairs_a_dead_active_a_stray_active_and_a_lost_replica() -> anyhow::Result<()> {
    let nodes = start_nodes(3)?;
    form_cluster(&nodes).await?;
    let a = nodes[0].admin;
    let b = create_bucket(a, a, "default", "1").await?;
    let refs: Vec<&NodeProcess> = nodes.iter().collect();
    wait_states_match(a, &refs, "default", Duration::from_secs(15)).await?;
    let smap = &b["vBucketServerMap"];
    let servers: Vec<u16> = smap["serverList"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str()?.rsplit(':').next()?.parse().ok())
        .collect();
    let node_of = |kv: u16| nodes.iter().find(|n| n.kv.port() == kv);
    let chain = |vb: usize| -> Vec<u16> {
        smap["vBucketMap"][vb]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| servers.get(usize::try_from(i.as_i64()?).ok()?).copied())
            .collect()
    };
    let set = |n: &NodeProcess, vb: usize, state: &str| {
        let path = format!("/buckets/default/vbuckets/{vb}");
        let body = format!(r#"{{"state":"{state}"}}"#);
        let addr = n.admin;
        async move { testkit::admin_call(addr, ("admin", PW), "PUT", &path, Some(&body), 200).await }
    };
    // An active made dead, a replica made active (its active demoted first so I1
    // holds), and a replica lost.
    let watch = ConfigWatch::start(&refs, "default");
    let c0 = chain(0);
    set(node_of(c0[0]).expect("node"), 0, "dead").await?;
    let c1 = chain(1);
    set(node_of(c1[0]).expect("node"), 1, "dead").await?;
    set(node_of(c1[1]).expect("node"), 1, "active").await?;
    let c2 = chain(2);
    set(node_of(c2[1]).expect("node"), 2, "dead").await?;
    let started = Instant::now();
    wait_states_match(a, &refs, "default", Duration::from_secs(10)).await?;
    assert!(started.elapsed() < Duration::from_secs(10));
    // J6: the stray active of vb 1 became its chain's head.
    let b2 = ok(a, "GET", "/pools/default/buckets/default", &[], 200).await?;
    let head1 = b2["vBucketServerMap"]["vBucketMap"][1][0]
        .as_i64()
        .and_then(|i| servers.get(usize::try_from(i).ok()?).copied());
    assert_eq!(
        head1,
        Some(c1[1]),
        "the janitor adopted the active copy as the head"
    );
    assert!(
        b2["rev"].as_u64() > b["rev"].as_u64(),
        "the map change bumped the rev (I5)"
    );
    // Every node saw the change as a newer version, never an older one.
    let seen = watch.finish().await?;
    assert!(
        seen.iter().all(|n| *n >= 2),
        "each node saw the old and the new map: {seen:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarts_fenced_and_the_janitor_restores_it() -> anyhow::Result<()> {
    let mut nodes = start_nodes(3)?;
    form_cluster(&nodes).await?;
    let a = nodes[0].admin;
    create_bucket(a, a, "default", "1").await?;
    {
        let refs: Vec<&NodeProcess> = nodes.iter().collect();
        wait_states_match(a, &refs, "default", Duration::from_secs(15)).await?;
    }
    let member = nodes.remove(2);
    let ports = (member.kv.port(), member.admin.port());
    let dir = member.terminate()?;
    // Hold the orchestrator still, so the janitor cannot act before we look.
    let orch_pid = nodes[0].pid().to_string();
    std::process::Command::new("kill")
        .args(["-STOP", &orch_pid])
        .status()?;
    let restarted = NodeProcess::start_on(dir, &conduit(), PW, ports, &[]);
    let fenced = match &restarted {
        Ok(n) => states(&[n], "default").await,
        Err(e) => Err(anyhow::anyhow!("{e}")),
    };
    std::process::Command::new("kill")
        .args(["-CONT", &orch_pid])
        .status()?;
    let restarted = restarted?;
    let fenced = fenced?;
    let vbs = fenced.get(&ports.0).cloned().unwrap_or_default();
    assert_eq!(vbs.len(), 64, "the bucket reopened with its data");
    assert!(
        vbs.values().all(|(s, _)| s == "dead"),
        "a member restarts with every vbucket dead: {vbs:?}"
    );
    nodes.push(restarted);
    {
        let refs: Vec<&NodeProcess> = nodes.iter().collect();
        wait_states_match(a, &refs, "default", Duration::from_secs(10)).await?;
    }
    // The orchestrator node restarts too: it resumes the orchestrator from its store,
    // comes back fenced, and its janitor restores it.
    let orch = nodes.remove(0);
    let ports = (orch.kv.port(), orch.admin.port());
    let dir = orch.terminate()?;
    let orch = NodeProcess::start_on(dir, &conduit(), PW, ports, &[])?;
    nodes.insert(0, orch);
    let refs: Vec<&NodeProcess> = nodes.iter().collect();
    wait_states_match(a, &refs, "default", Duration::from_secs(15)).await?;
    let pd = ok(a, "GET", "/pools/default", &[], 200).await?;
    assert_eq!(pd["nodes"].as_array().map(Vec::len), Some(3), "{pd}");
    Ok(())
}

/// Method, path, form, wanted status, a text the answer must contain.
type BadCase = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    u16,
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_bad_input_gets_its_status_and_kind() -> anyhow::Result<()> {
    let nodes = start_nodes(3)?;
    let a = nodes[0].admin;
    // Before init: /pools/default is 404, /pools shows no pools.
    let (s, _) = rest(a, "GET", "/pools/default", Some(("admin", PW)), &[]).await?;
    assert_eq!(s, 404);
    let (s, t) = rest(a, "GET", "/pools", None, &[]).await?;
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&t)?["pools"],
        serde_json::json!([])
    );
    // Init refusals.
    let (s, t) = rest(
        a,
        "POST",
        "/clusterInit",
        Some(("admin", PW)),
        &[
            ("username", "x"),
            ("password", "y"),
            ("services", "kv,n1ql"),
        ],
    )
    .await?;
    assert_eq!(s, 400, "{t}");
    assert!(t.contains("unsupported_service"), "{t}");
    let (s, t) = rest(
        a,
        "POST",
        "/clusterInit",
        Some(("admin", PW)),
        &[("username", "x"), ("password", "y"), ("bogus", "1")],
    )
    .await?;
    assert_eq!(s, 400, "{t}");
    assert!(t.contains("Unsupported key"), "{t}");
    form_cluster(&nodes[..2]).await?;
    let cases: Vec<BadCase> = vec![
        (
            "POST",
            "/clusterInit",
            vec![("username", "a"), ("password", "b")],
            400,
            "already_initialised",
        ),
        (
            "POST",
            "/pools/default/buckets",
            vec![
                ("name", "b1"),
                ("ramQuotaMB", "100"),
                ("replicaNumber", "4"),
            ],
            400,
            "replicaNumber",
        ),
        (
            "POST",
            "/pools/default/buckets",
            vec![("name", ".bad"), ("ramQuotaMB", "100")],
            400,
            "name",
        ),
        (
            "POST",
            "/pools/default/buckets",
            vec![
                ("name", "e"),
                ("ramQuotaMB", "100"),
                ("bucketType", "ephemeral"),
            ],
            400,
            "unsupported_bucket_type",
        ),
        (
            "POST",
            "/pools/default/buckets",
            vec![("name", "q"), ("ramQuotaMB", "100000")],
            400,
            "ramQuota",
        ),
        (
            "POST",
            "/pools/default/buckets",
            vec![("name", "n"), ("ramQuotaMB", "100"), ("numVBuckets", "0")],
            400,
            "numVBuckets",
        ),
        (
            "POST",
            "/pools/default/buckets",
            vec![("name", "u"), ("ramQuotaMB", "100"), ("whatever", "1")],
            400,
            "Unsupported key",
        ),
        (
            "POST",
            "/controller/addNode",
            vec![
                ("hostname", "127.0.0.1:1"),
                ("user", "a"),
                ("password", "b"),
            ],
            400,
            "Could not connect",
        ),
        (
            "POST",
            "/controller/addNode",
            vec![
                ("hostname", "https://127.0.0.1:1"),
                ("user", "a"),
                ("password", "b"),
            ],
            400,
            "kind",
        ),
        (
            "POST",
            "/controller/ejectNode",
            vec![("otpNode", "n_1@nowhere")],
            400,
            "Server does not exist.",
        ),
        (
            "POST",
            "/controller/rebalance",
            vec![("knownNodes", "")],
            400,
            "empty_known_nodes",
        ),
        (
            "POST",
            "/controller/rebalance",
            vec![("knownNodes", "n_1@nowhere")],
            400,
            "mismatch",
        ),
        ("GET", "/pools/default/buckets/nope", vec![], 404, "kind"),
        ("DELETE", "/pools/default/buckets/nope", vec![], 404, "kind"),
        ("POST", "/diag/eval", vec![], 400, "unsupported"),
    ];
    for (method, path, form, want, needle) in cases {
        let (s, t) = rest(a, method, path, Some(ADMIN), &form).await?;
        assert_eq!(s, want, "{method} {path} {form:?}: {t}");
        assert!(
            t.contains(needle),
            "{method} {path} {form:?}: {t} lacks {needle:?}"
        );
    }
    // The addNode with another node's wrong password.
    let (s, t) = rest(
        a,
        "POST",
        "/controller/addNode",
        Some(ADMIN),
        &[
            ("hostname", &host_port(&nodes[2])),
            ("user", "admin"),
            ("password", "wrong"),
        ],
    )
    .await?;
    assert_eq!(s, 400, "{t}");
    assert!(t.contains("Authentication failed"), "{t}");
    // A node already in this cluster cannot be added again.
    let (s, t) = rest(
        a,
        "POST",
        "/controller/addNode",
        Some(ADMIN),
        &[
            ("hostname", &host_port(&nodes[1])),
            ("user", "admin"),
            ("password", PW),
        ],
    )
    .await?;
    assert_eq!(s, 400, "{t}");
    // Ejecting an active node and the orchestrator is refused.
    let pd = ok(a, "GET", "/pools/default", &[], 200).await?;
    let member = pd["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["thisNode"] == false))
        .map(|n| n["otpNode"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let (s, t) = rest(
        a,
        "POST",
        "/controller/ejectNode",
        Some(ADMIN),
        &[("otpNode", &member)],
    )
    .await?;
    assert_eq!(s, 400, "{t}");
    assert!(t.contains("Cannot remove active server."), "{t}");
    let (s, t) = rest(
        a,
        "POST",
        "/controller/ejectNode",
        Some(ADMIN),
        &[("otpNode", "Self")],
    )
    .await?;
    assert_eq!(s, 400, "{t}");
    assert!(t.contains("orchestrator_immovable"), "{t}");
    // Auth: none -> 401 with the challenge; wrong -> 401; members forward with auth.
    let resp = reqwest::Client::new()
        .get(format!("http://{a}/pools/default"))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 401);
    assert!(resp.headers().get("www-authenticate").is_some());
    let (s, _) = rest(a, "GET", "/pools/default", Some((ADMIN.0, "nope")), &[]).await?;
    assert_eq!(s, 401);
    let (s, _) = rest(nodes[1].admin, "GET", "/pools/default", Some(ADMIN), &[]).await?;
    assert_eq!(s, 200, "a member forwards to the orchestrator");
    // Duplicate bucket.
    ok(
        a,
        "POST",
        "/pools/default/buckets",
        &[("name", "dup"), ("ramQuotaMB", "100")],
        202,
    )
    .await?;
    let (s, t) = rest(
        a,
        "POST",
        "/pools/default/buckets",
        Some(ADMIN),
        &[("name", "dup"), ("ramQuotaMB", "100")],
    )
    .await?;
    assert_eq!(s, 400, "{t}");
    assert!(t.contains("Bucket with given name already exists"), "{t}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdk_reads_every_copy_on_a_three_node_cluster() -> anyhow::Result<()> {
    let python = std::env::var("CONDUIT_SDK_PYTHON").unwrap_or_default();
    if python.is_empty() && skip("CONDUIT_REQUIRE_INTEROP", "CONDUIT_SDK_PYTHON is not set") {
        return Ok(());
    }
    let nodes = start_nodes(3)?;
    form_cluster(&nodes).await?;
    let a = nodes[0].admin;
    create_bucket(a, a, "default", "1").await?;
    let refs: Vec<&NodeProcess> = nodes.iter().collect();
    wait_states_match(a, &refs, "default", Duration::from_secs(15)).await?;
    let script = testkit::repo_root(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/sdk_cluster.py");
    // Bootstrapped from one member's KV port; the SDK finds the others in the config.
    let kv = nodes[1].kv.to_string();
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(&python)
                .arg(script)
                .args([kv.as_str(), "default", ADMIN.0, ADMIN.1, "400", "1"])
                .output()
        }),
    )
    .await???;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "SDK cluster probe failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))?;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["upserted"], 400);
    assert_eq!(v["copies_per_doc"], 2, "{v}");
    assert_eq!(v["replicas_equal"], true, "{v}");
    // Documents landed on all three nodes' actives.
    let st = states(&refs, "default").await?;
    for (port, vbs) in &st {
        let written = vbs
            .values()
            .filter(|(s, h)| s == "active" && *h > 0)
            .count();
        assert!(written > 0, "node :{port} holds no written active vbucket");
    }
    // Replica high seqnos equal the actives' (I6, quiet).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = states(&refs, "default").await?;
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
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "replicas never caught up: {high:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

fn cli(args: &[&str]) -> anyhow::Result<(i32, Vec<Value>)> {
    let out = std::process::Command::new(conduit()).args(args).output()?;
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Ok((out.status.code().unwrap_or(-1), lines))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_forms_a_cluster_creates_a_bucket_and_shows_the_state() -> anyhow::Result<()> {
    let nodes = start_nodes(3)?;
    let at = nodes[0].admin.to_string();
    let common = [
        "--cluster",
        at.as_str(),
        "--user",
        "admin",
        "--password",
        PW,
        "--json",
    ];
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = extra.to_vec();
        args.extend_from_slice(&common);
        tokio::task::block_in_place(|| cli(&args))
    };
    let (code, out) = run(&["cluster", "init", "--name", "c1", "--memory-quota", "1024"])?;
    assert_eq!(code, 0, "{out:?}");
    for n in &nodes[1..] {
        let hp = host_port(n);
        let (code, out) = run(&[
            "cluster",
            "add-node",
            hp.as_str(),
            "--node-user",
            "admin",
            "--node-password",
            PW,
        ])?;
        assert_eq!(code, 0, "{out:?}");
        assert!(
            out[0]["otpNode"]
                .as_str()
                .is_some_and(|o| o.ends_with("@127.0.0.1")),
            "{out:?}"
        );
    }
    let (code, out) = run(&["rebalance", "--wait", "--timeout", "60"])?;
    assert_eq!(
        (code, &out[0]["event"]),
        (0, &serde_json::json!("done")),
        "{out:?}"
    );
    let (code, out) = run(&[
        "bucket",
        "create",
        "default",
        "--replicas",
        "1",
        "--vbuckets",
        "16",
        "--ram-quota",
        "128",
        "--timeout",
        "60",
    ])?;
    assert_eq!(code, 0, "{out:?}");
    assert_eq!(out[0]["ready"], true);
    let (code, out) = run(&["status"])?;
    assert_eq!(code, 0, "{out:?}");
    let text = out[0].to_string();
    assert!(text.matches("\"active\"").count() >= 3, "{text}");
    let (code, out) = run(&["bucket", "list"])?;
    assert_eq!(code, 0);
    assert_eq!(
        out[0]["buckets"].as_array().map(Vec::len),
        Some(1),
        "{out:?}"
    );
    // A failure is a typed line and exit 1.
    let (code, out) = run(&["cluster", "eject-node", "n_1@nowhere"])?;
    assert_eq!(code, 1);
    assert_eq!(out[0]["ok"], false);
    assert!(out[0]["error"]["kind"].is_string(), "{out:?}");
    let (code, _) = run(&["bucket", "delete", "default"])?;
    assert_eq!(code, 0);
    Ok(())
}
