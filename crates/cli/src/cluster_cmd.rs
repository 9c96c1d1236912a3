//! `conduit cluster …`, `conduit bucket …` and `conduit status` (cluster.md §9): thin
//! clients of the cluster REST API (§3), for operators and black-box tests.
//!
//! Output: human lines on stdout by default; with `--json` one JSON object per line
//! (`{"ok":true,…}`). A failure always prints one typed error line
//! `{"ok":false,"error":{"kind","message","status"?,…the REST error's fields}}` on stdout
//! (as `conduit replicate` does), and without `--json` also a human line on stderr.
//! Exit codes: 0 ok, 1 the operation failed, 2 usage error (clap).

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::rest_client::{path_segment, CliError, RestClient};

/// Poll period of `bucket create`'s wait (§9).
const POLL: Duration = Duration::from_millis(250);

/// Flags every cluster command takes.
#[derive(Debug, Args)]
pub(crate) struct RestArgs {
    /// The cluster's REST address: any member node's admin port (HOST:PORT).
    #[arg(long, env = "CONDUIT_CLUSTER", default_value = "127.0.0.1:8091")]
    pub(crate) cluster: String,
    /// Cluster admin user.
    #[arg(long, default_value = "Administrator")]
    pub(crate) user: String,
    /// Cluster admin password.
    #[arg(
        long,
        env = "CONDUIT_ADMIN_PASSWORD",
        default_value = "password",
        hide_env_values = true
    )]
    pub(crate) password: String,
    /// One JSON object per line instead of human text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `conduit cluster …`.
#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Initialise the cluster on the node at --cluster (POST /clusterInit): it becomes the
    /// orchestrator and its first member.
    Init(InitArgs),
    /// Add a node (POST /controller/addNode); prints its otpNode. A rebalance makes it active.
    AddNode(AddNodeArgs),
    /// Remove an added (not yet active) or failed-over node (POST /controller/ejectNode).
    EjectNode(EjectNodeArgs),
}

/// Flags of `conduit cluster init`.
#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    #[command(flatten)]
    rest: RestArgs,
    /// The address the cluster reaches this node by (default: what the node chooses).
    #[arg(long)]
    hostname: Option<String>,
    /// Cluster memory quota, MiB.
    #[arg(long)]
    memory_quota: Option<u64>,
    /// Cluster name.
    #[arg(long)]
    name: Option<String>,
}

/// Flags of `conduit cluster add-node`.
#[derive(Debug, Args)]
pub(crate) struct AddNodeArgs {
    #[command(flatten)]
    rest: RestArgs,
    /// The joining node's admin address: HOST, HOST:PORT or http://HOST:PORT.
    node: String,
    /// The joining node's own admin user.
    #[arg(long)]
    node_user: String,
    /// That user's password.
    #[arg(long, env = "CONDUIT_NODE_PASSWORD", hide_env_values = true)]
    node_password: String,
    /// Server group (default: the server's, `Group 1`).
    #[arg(long)]
    group: Option<String>,
}

/// Flags of `conduit cluster eject-node`.
#[derive(Debug, Args)]
pub(crate) struct EjectNodeArgs {
    #[command(flatten)]
    rest: RestArgs,
    /// The node: its name (ns_1@h) or HOST:PORT, passed through as otpNode.
    node: String,
}

/// `conduit bucket …`.
#[derive(Debug, Subcommand)]
pub(crate) enum BucketCommand {
    /// Create a bucket over the cluster and wait until every node serves it.
    Create(BucketCreateArgs),
    /// List the buckets.
    List(BucketListArgs),
    /// Delete a bucket from every node.
    Delete(BucketDeleteArgs),
}

pub(crate) fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("{s:?} is not a number of seconds in (0, 86400]")),
    }
}

/// Flags of `conduit bucket create`.
#[derive(Debug, Args)]
pub(crate) struct BucketCreateArgs {
    #[command(flatten)]
    rest: RestArgs,
    /// Bucket name.
    name: String,
    /// Replicas (0–3).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=3))]
    replicas: u8,
    /// vbuckets (1–1024) [default: the cluster's default, 64 unless changed]
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    vbuckets: Option<u16>,
    /// RAM quota, MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    ram_quota: u64,
    /// Return once the server accepted the bucket, without waiting for the nodes.
    #[arg(long)]
    no_wait: bool,
    /// Bound, in seconds, on the wait for every node to serve the bucket.
    #[arg(long, default_value = "60", value_parser = parse_seconds)]
    timeout: Duration,
}

/// Flags of `conduit bucket list`.
#[derive(Debug, Args)]
pub(crate) struct BucketListArgs {
    #[command(flatten)]
    rest: RestArgs,
}

/// Flags of `conduit bucket delete`.
#[derive(Debug, Args)]
pub(crate) struct BucketDeleteArgs {
    #[command(flatten)]
    rest: RestArgs,
    /// Bucket name.
    name: String,
}

/// Flags of `conduit status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    rest: RestArgs,
}

/// What a successful command prints: the JSON line and the human lines.
#[derive(Debug)]
pub(crate) struct Report {
    json: Value,
    human: Vec<String>,
}

impl Report {
    pub(crate) fn new(fields: Value, human: impl Into<String>) -> Report {
        Report::lines(fields, vec![human.into()])
    }

    /// `fields` (an object) after `"ok":true`.
    pub(crate) fn lines(fields: Value, human: Vec<String>) -> Report {
        let mut o = Map::new();
        o.insert("ok".into(), Value::Bool(true));
        if let Value::Object(f) = fields {
            o.extend(f);
        }
        Report {
            json: Value::Object(o),
            human,
        }
    }
}

/// Prints the outcome; returns the exit code.
pub(crate) fn finish(json: bool, r: Result<Report, CliError>) -> u8 {
    match r {
        Ok(rep) => {
            if json {
                println!("{}", rep.json);
            } else {
                for l in rep.human {
                    println!("{l}");
                }
            }
            0
        }
        Err(e) => {
            println!("{}", e.to_line());
            if !json {
                eprintln!("conduit: {e}");
            }
            1
        }
    }
}

pub(crate) async fn with_client<F, Fut>(rest: &RestArgs, f: F) -> u8
where
    F: FnOnce(RestClient) -> Fut,
    Fut: std::future::Future<Output = Result<Report, CliError>>,
{
    let r = match RestClient::new(&rest.cluster, &rest.user, &rest.password) {
        Ok(c) => f(c).await,
        Err(e) => Err(e),
    };
    finish(rest.json, r)
}

/// Runs `conduit cluster …`; returns the exit code.
pub(crate) async fn run_cluster(cmd: ClusterCommand) -> u8 {
    match cmd {
        ClusterCommand::Init(a) => with_client(&a.rest, |c| init(c, &a)).await,
        ClusterCommand::AddNode(a) => with_client(&a.rest, |c| add_node(c, &a)).await,
        ClusterCommand::EjectNode(a) => with_client(&a.rest, |c| eject_node(c, &a)).await,
    }
}

/// Runs `conduit bucket …`; returns the exit code.
pub(crate) async fn run_bucket(cmd: BucketCommand) -> u8 {
    match cmd {
        BucketCommand::Create(a) => with_client(&a.rest, |c| bucket_create(c, &a)).await,
        BucketCommand::List(a) => with_client(&a.rest, bucket_list).await,
        BucketCommand::Delete(a) => with_client(&a.rest, |c| bucket_delete(c, &a)).await,
    }
}

/// Runs `conduit status`; returns the exit code.
pub(crate) async fn run_status(a: StatusArgs) -> u8 {
    with_client(&a.rest, status).await
}

async fn init(c: RestClient, a: &InitArgs) -> Result<Report, CliError> {
    let mut form = vec![
        ("username", a.rest.user.clone()),
        ("password", a.rest.password.clone()),
        ("port", "SAME".to_string()),
        ("services", "kv".to_string()),
    ];
    if let Some(h) = &a.hostname {
        form.push(("hostname", h.clone()));
    }
    if let Some(q) = a.memory_quota {
        form.push(("memoryQuota", q.to_string()));
    }
    if let Some(n) = &a.name {
        form.push(("clusterName", n.clone()));
    }
    c.post("/clusterInit", &form).await?;
    Ok(Report::new(
        json!({"cluster": c.cluster()}),
        format!("cluster initialised at {}", c.cluster()),
    ))
}

async fn add_node(c: RestClient, a: &AddNodeArgs) -> Result<Report, CliError> {
    let mut form = vec![
        ("hostname", a.node.clone()),
        ("user", a.node_user.clone()),
        ("password", a.node_password.clone()),
        ("services", "kv".to_string()),
    ];
    if let Some(g) = &a.group {
        form.push(("serverGroup", g.clone()));
    }
    let answer = c.post("/controller/addNode", &form).await?;
    let Some(otp) = answer.body.get("otpNode").and_then(Value::as_str) else {
        return Err(CliError::new(
            "bad_response",
            format!(
                "POST /controller/addNode answered without an otpNode: {}",
                answer.body
            ),
        )
        .with("status", Value::from(answer.status)));
    };
    Ok(Report::new(json!({"otpNode": otp}), otp))
}

async fn eject_node(c: RestClient, a: &EjectNodeArgs) -> Result<Report, CliError> {
    c.post("/controller/ejectNode", &[("otpNode", a.node.clone())])
        .await?;
    Ok(Report::new(
        json!({"otpNode": a.node}),
        format!("ejected {}", a.node),
    ))
}

async fn bucket_create(c: RestClient, a: &BucketCreateArgs) -> Result<Report, CliError> {
    let mut form = vec![
        ("name", a.name.clone()),
        ("bucketType", "membase".to_string()),
        ("replicaNumber", a.replicas.to_string()),
        ("ramQuota", a.ram_quota.to_string()),
    ];
    if let Some(v) = a.vbuckets {
        form.push(("numVBuckets", v.to_string()));
    }
    c.post("/pools/default/buckets", &form).await?;
    if a.no_wait {
        return Ok(Report::new(
            json!({"bucket": a.name, "ready": false}),
            format!("bucket {} accepted", a.name),
        ));
    }
    let started = tokio::time::Instant::now();
    wait_bucket_ready(&c, &a.name, a.timeout).await?;
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(Report::new(
        json!({"bucket": a.name, "ready": true, "waited_ms": ms}),
        format!("bucket {} created; every node serves it", a.name),
    ))
}

/// Why the bucket is not ready yet (`None` = ready): every active node `healthy` in
/// `/pools/default`, and the bucket's map has an active for every vbucket.
async fn bucket_not_ready(
    c: &RestClient,
    name: &str,
    bound: Duration,
) -> Result<Option<String>, CliError> {
    let (pool, raw) = c
        .call_raw(Method::GET, "/pools/default", None, bound)
        .await?;
    if pool.status != 200 {
        return Err(CliError::from_answer(
            "GET",
            "/pools/default",
            pool.status,
            &raw,
        ));
    }
    let nodes = pool.body["nodes"].as_array().cloned().unwrap_or_default();
    let active: Vec<&Value> = nodes
        .iter()
        .filter(|n| n["clusterMembership"].as_str().unwrap_or("active") == "active")
        .collect();
    if active.is_empty() {
        return Ok(Some("no active node in /pools/default".into()));
    }
    for n in active {
        let st = n["status"].as_str().unwrap_or("unknown");
        if st != "healthy" {
            let who = n["otpNode"].as_str().unwrap_or("?");
            return Ok(Some(format!("node {who} is {st}")));
        }
    }
    let path = format!("/pools/default/buckets/{}", path_segment(name));
    let (b, raw) = c.call_raw(Method::GET, &path, None, bound).await?;
    match b.status {
        200 => {}
        404 => return Ok(Some(format!("bucket {name} not created yet"))),
        s => return Err(CliError::from_answer("GET", &path, s, &raw)),
    }
    let Some(map) = b.body["vBucketServerMap"]["vBucketMap"].as_array() else {
        return Ok(Some(format!("bucket {name} has no vBucketMap yet")));
    };
    if map.is_empty() {
        return Ok(Some(format!("bucket {name} has an empty vBucketMap")));
    }
    if let Some(want) = b.body["numVBuckets"].as_u64() {
        if map.len() as u64 != want {
            return Ok(Some(format!(
                "bucket {name} map has {} of {want} vbuckets",
                map.len()
            )));
        }
    }
    if let Some(vb) = map
        .iter()
        .position(|chain| chain.get(0).and_then(Value::as_i64).unwrap_or(-1) < 0)
    {
        return Ok(Some(format!("bucket {name} vb:{vb} has no active yet")));
    }
    Ok(None)
}

async fn wait_bucket_ready(c: &RestClient, name: &str, timeout: Duration) -> Result<(), CliError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = "no answer yet".to_string();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(CliError::new(
                "timeout",
                format!(
                    "bucket {name} not ready within {:.1} s: {last}",
                    timeout.as_secs_f64()
                ),
            )
            .with("bucket", Value::from(name))
            .with("waiting_for", Value::from("bucket_ready"))
            .with("last", Value::from(last)));
        }
        match bucket_not_ready(c, name, left).await {
            Ok(None) => return Ok(()),
            Ok(Some(why)) => last = why,
            Err(e) if matches!(e.kind(), "unauthorized" | "forbidden") => return Err(e),
            Err(e) => last = e.to_string(),
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        tokio::time::sleep(POLL.min(left)).await;
    }
}

async fn bucket_list(c: RestClient) -> Result<Report, CliError> {
    let v = c.get_json("/pools/default/buckets").await?;
    let buckets = v.as_array().cloned().unwrap_or_default();
    let mut rows = vec![vec![
        "BUCKET".to_string(),
        "TYPE".into(),
        "REPLICAS".into(),
        "VBUCKETS".into(),
        "RAM_MIB".into(),
        "ITEMS".into(),
        "BALANCED".into(),
    ]];
    for b in &buckets {
        rows.push(vec![
            text(&b["name"]),
            text(&b["bucketType"]),
            text(&b["replicaNumber"]),
            text(&b["numVBuckets"]),
            b["quota"]["ram"]
                .as_u64()
                .map_or_else(|| "-".into(), |r| (r / (1024 * 1024)).to_string()),
            text(&b["basicStats"]["itemCount"]),
            text(&b["balanced"]),
        ]);
    }
    let human = if buckets.is_empty() {
        vec!["no buckets".to_string()]
    } else {
        table(&rows)
    };
    Ok(Report::lines(json!({"buckets": buckets}), human))
}

async fn bucket_delete(c: RestClient, a: &BucketDeleteArgs) -> Result<Report, CliError> {
    let path = format!("/pools/default/buckets/{}", path_segment(&a.name));
    c.call(Method::DELETE, &path, None).await?;
    Ok(Report::new(
        json!({"bucket": a.name}),
        format!("bucket {} deleted", a.name),
    ))
}

/// A JSON value as table text: strings bare, absent as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A JSON list of strings as `a, b`; anything else as [`text`].
fn list_text(v: &Value) -> String {
    match v.as_array() {
        Some(items) => items.iter().map(text).collect::<Vec<_>>().join(", "),
        None => text(v),
    }
}

/// Left-aligned columns, two spaces apart.
fn table(rows: &[Vec<String>]) -> Vec<String> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                if i + 1 == r.len() {
                    line.push_str(c);
                } else {
                    line.push_str(&format!("{c:<w$}  ", w = widths[i]));
                }
            }
            line
        })
        .collect()
}

/// `host:kvport` of a node object (`hostname` `h:8091`, `ports.direct`), as `serverList`
/// writes it.
fn kv_address(node: &Value) -> Option<String> {
    let hostname = node["hostname"].as_str()?;
    let host = match hostname.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => hostname,
    };
    let direct = node["ports"]["direct"].as_u64()?;
    Some(format!("{host}:{direct}"))
}

/// Active and replica copies per node per bucket, counted from each bucket's map. Keys: the
/// node's otpNode when its KV address is known, else the `serverList` entry.
fn copies_per_node(
    nodes: &[Value],
    buckets: &[Value],
) -> BTreeMap<String, BTreeMap<String, (u64, u64)>> {
    let by_addr: BTreeMap<String, String> = nodes
        .iter()
        .filter_map(|n| Some((kv_address(n)?, n["otpNode"].as_str()?.to_string())))
        .collect();
    let mut out: BTreeMap<String, BTreeMap<String, (u64, u64)>> = BTreeMap::new();
    for b in buckets {
        let name = text(&b["name"]);
        let map = &b["vBucketServerMap"];
        let servers: Vec<String> = map["serverList"]
            .as_array()
            .map(|l| l.iter().map(text).collect())
            .unwrap_or_default();
        for chain in map["vBucketMap"].as_array().into_iter().flatten() {
            for (pos, idx) in chain.as_array().into_iter().flatten().enumerate() {
                let Some(server) = idx
                    .as_i64()
                    .and_then(|i| usize::try_from(i).ok())
                    .and_then(|i| servers.get(i))
                else {
                    continue;
                };
                let node = by_addr.get(server).unwrap_or(server).clone();
                let e = out
                    .entry(node)
                    .or_default()
                    .entry(name.clone())
                    .or_default();
                if pos == 0 {
                    e.0 += 1;
                } else {
                    e.1 += 1;
                }
            }
        }
    }
    out
}

/// An optional route: its JSON on 200, `None` on any other answer (404 before the route
/// exists, a transient error); auth failures and unreachable clusters already failed the
/// required calls.
async fn optional_json(c: &RestClient, path: &str) -> Option<Value> {
    match c
        .call_raw(Method::GET, path, None, crate::rest_client::CALL_TIMEOUT)
        .await
    {
        Ok((a, _)) if a.status == 200 && !a.body.is_null() => Some(a.body),
        Ok((a, _)) => {
            tracing::debug!(path, status = a.status, "optional route not answered");
            None
        }
        Err(e) => {
            tracing::debug!(path, error = %e, "optional route failed");
            None
        }
    }
}

async fn status(c: RestClient) -> Result<Report, CliError> {
    let pool = c.get_json("/pools/default").await?;
    let buckets_v = c.get_json("/pools/default/buckets").await?;
    let rebalance = optional_json(&c, "/pools/default/rebalanceProgress").await;
    let pending = optional_json(&c, "/pools/default/pendingRetryRebalance").await;
    let auto_failover = optional_json(&c, "/settings/autoFailover").await;

    let nodes = pool["nodes"].as_array().cloned().unwrap_or_default();
    let buckets = buckets_v.as_array().cloned().unwrap_or_default();
    let copies = copies_per_node(&nodes, &buckets);
    let bucket_names: Vec<String> = buckets.iter().map(|b| text(&b["name"])).collect();

    let mut node_json = Vec::new();
    let mut node_rows = vec![{
        let mut h = vec![
            "NODE".to_string(),
            "HOST".into(),
            "MEMBERSHIP".into(),
            "STATUS".into(),
        ];
        h.extend(bucket_names.iter().map(|b| format!("{b} (a/r)")));
        h
    }];
    for n in &nodes {
        let otp = text(&n["otpNode"]);
        let per = copies.get(&otp);
        let mut vbs = Map::new();
        let mut row = vec![
            otp.clone(),
            text(&n["hostname"]),
            text(&n["clusterMembership"]),
            text(&n["status"]),
        ];
        for b in &bucket_names {
            let (a, r) = per.and_then(|p| p.get(b)).copied().unwrap_or((0, 0));
            vbs.insert(b.clone(), json!({"active": a, "replica": r}));
            row.push(format!("{a}/{r}"));
        }
        node_rows.push(row);
        node_json.push(json!({
            "otpNode": n["otpNode"], "hostname": n["hostname"],
            "clusterMembership": n["clusterMembership"], "status": n["status"],
            "recoveryType": n["recoveryType"], "serverGroup": n["serverGroup"],
            "vbuckets": vbs,
        }));
    }
    // Copies on servers no node object names (a map pointing at a departed node).
    let known: Vec<String> = nodes.iter().map(|n| text(&n["otpNode"])).collect();
    let strays: Vec<&String> = copies.keys().filter(|k| !known.contains(k)).collect();

    let mut bucket_rows = vec![vec![
        "BUCKET".to_string(),
        "REPLICAS".into(),
        "VBUCKETS".into(),
        "BALANCED".into(),
        "REV".into(),
    ]];
    let mut bucket_json = Vec::new();
    for b in &buckets {
        bucket_rows.push(vec![
            text(&b["name"]),
            text(&b["replicaNumber"]),
            text(&b["numVBuckets"]),
            text(&b["balanced"]),
            text(&b["rev"]),
        ]);
        bucket_json.push(json!({
            "name": b["name"], "replicaNumber": b["replicaNumber"],
            "numVBuckets": b["numVBuckets"], "balanced": b["balanced"], "rev": b["rev"],
            "itemCount": b["basicStats"]["itemCount"],
        }));
    }

    let mut human = vec![format!(
        "cluster {}  name {}  orchestrator {}  balanced {}",
        c.cluster(),
        text(&pool["clusterName"]),
        text(&pool["orchestrator"]),
        text(&pool["balanced"]),
    )];
    if let Some(Value::Object(need)) = pool.get("bucketsNeedRebalance") {
        let reasons: Vec<String> = need
            .iter()
            .map(|(reason, b)| format!("{reason}: {}", list_text(b)))
            .collect();
        if !reasons.is_empty() {
            human.push(format!("needs rebalance: {}", reasons.join("; ")));
        }
    }
    human.extend(table(&node_rows));
    for s in &strays {
        let per = &copies[*s];
        let list: Vec<String> = per
            .iter()
            .map(|(b, (a, r))| format!("{b} {a}/{r}"))
            .collect();
        human.push(format!("  (not a member) {s}: {}", list.join(", ")));
    }
    if buckets.is_empty() {
        human.push("no buckets".into());
    } else {
        human.extend(table(&bucket_rows));
    }
    let reb_status = rebalance
        .as_ref()
        .and_then(|r| r["status"].as_str())
        .or_else(|| pool["rebalanceStatus"].as_str())
        .unwrap_or("unknown")
        .to_string();
    let mut reb_line = format!("rebalance: {reb_status}");
    if let Some(Value::Object(r)) = &rebalance {
        let per: Vec<String> = r
            .iter()
            .filter_map(|(k, v)| {
                v.get("progress")
                    .and_then(Value::as_f64)
                    .map(|p| format!("{k} {:.0}%", p * 100.0))
            })
            .collect();
        if !per.is_empty() {
            reb_line.push_str(&format!(" ({})", per.join(", ")));
        }
    }
    human.push(reb_line);
    let error_message = rebalance
        .as_ref()
        .and_then(|r| r["errorMessage"].as_str())
        .map(str::to_string);
    if let Some(m) = &error_message {
        human.push(format!("last rebalance error: {m}"));
    }
    if let Some(p) = &pending {
        if p["retry_rebalance"].as_str() == Some("pending") {
            human.push(format!(
                "pending retry: {} in {} s ({} attempts left)",
                text(&p["rebalance_id"]),
                text(&p["retry_after_secs"]),
                text(&p["attempts_remaining"]),
            ));
        }
    }

    if let Some(af) = &auto_failover {
        let mut line = format!(
            "auto-failover: {} (timeout {} s, failed over {} of {})",
            if af["enabled"] == true { "on" } else { "off" },
            text(&af["timeout"]),
            text(&af["count"]),
            text(&af["maxCount"]),
        );
        if let Some(r) = af["lastRefusal"].as_str() {
            line.push_str(&format!("; last refusal: {r}"));
        }
        human.push(line);
    }
    let failed: Vec<&str> = node_json
        .iter()
        .filter(|n| {
            n["membership"] == "inactiveFailed" || n["clusterMembership"] == "inactiveFailed"
        })
        .filter_map(|n| n["name"].as_str().or_else(|| n["otpNode"].as_str()))
        .collect();
    if !failed.is_empty() {
        human.push(format!("failed over: {} (add back with `conduit recovery NODE --delta|--full`, then rebalance)", failed.join(", ")));
    }
    let j = json!({
        "autoFailover": auto_failover,
        "cluster": c.cluster(),
        "clusterName": pool["clusterName"],
        "orchestrator": pool["orchestrator"],
        "balanced": pool["balanced"],
        "bucketsNeedRebalance": pool["bucketsNeedRebalance"],
        "rebalanceStatus": reb_status,
        "nodes": node_json,
        "buckets": bucket_json,
        "rebalance": rebalance,
        "pendingRetry": pending,
    });
    Ok(Report::lines(j, human))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_counted_per_node_from_each_map() {
        let nodes = vec![
            json!({"otpNode":"n_0@h","hostname":"h:9000","ports":{"direct":12000}}),
            json!({"otpNode":"n_1@h","hostname":"h:9001","ports":{"direct":12002}}),
        ];
        let buckets = vec![json!({"name":"b","vBucketServerMap":{
            "serverList":["h:12000","h:12002","gone:1"],
            "vBucketMap":[[0,1],[1,0],[0,-1],[2,0]]}})];
        let c = copies_per_node(&nodes, &buckets);
        assert_eq!(c["n_0@h"]["b"], (2, 2));
        assert_eq!(c["n_1@h"]["b"], (1, 1));
        assert_eq!(c["gone:1"]["b"], (1, 0));
    }

    #[test]
    fn kv_addresses_strip_the_admin_port() {
        let n = json!({"hostname":"[::1]:9000","ports":{"direct":12000}});
        assert_eq!(kv_address(&n).as_deref(), Some("[::1]:12000"));
        let n = json!({"hostname":"10.0.0.1","ports":{"direct":11210}});
        assert_eq!(kv_address(&n).as_deref(), Some("10.0.0.1:11210"));
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&[
            vec!["A".into(), "BB".into(), "C".into()],
            vec!["aaa".into(), "b".into(), "c".into()],
        ]);
        assert_eq!(t, vec!["A    BB  C", "aaa  b   c"]);
    }

    #[test]
    fn seconds_parse() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("x").is_err());
        assert!(parse_seconds("-1").is_err());
    }
}
