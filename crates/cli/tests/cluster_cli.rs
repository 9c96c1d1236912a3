//! Black-box tests of `conduit cluster …`, `conduit bucket …` and `conduit status`
//! (cluster.md §9) against a small fake REST server: methods, paths, form parameters
//! and auth sent; answers printed; REST errors passed through; usage errors; an
//! unreachable cluster; `bucket create`'s bounded wait.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use base64::Engine;
use serde_json::{json, Value};

/// Bound on one run of the binary.
const RUN_BOUND: Duration = Duration::from_secs(60);
const PW: &str = "s3cret";

fn conduit() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_conduit"))
}

/// One request the fake server received.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    /// (user, password) from basic auth.
    auth: Option<(String, String)>,
    form: Vec<(String, String)>,
}

impl Req {
    fn get(&self, k: &str) -> Option<&str> {
        self.form
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
}

type Responder = Arc<dyn Fn(&Req) -> (u16, String) + Send + Sync>;

/// A fake cluster REST server on 127.0.0.1:0; `respond` decides every answer.
struct Fake {
    addr: SocketAddr,
    reqs: Arc<Mutex<Vec<Req>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn basic_auth(h: &HeaderMap) -> Option<(String, String)> {
    let v = h.get("authorization")?.to_str().ok()?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v.strip_prefix("Basic ")?)
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

impl Fake {
    async fn start(respond: impl Fn(&Req) -> (u16, String) + Send + Sync + 'static) -> Fake {
        let respond: Responder = Arc::new(respond);
        let reqs: Arc<Mutex<Vec<Req>>> = Arc::default();
        let log = reqs.clone();
        let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let respond = respond.clone();
            let log = log.clone();
            async move {
                let form: Vec<(String, String)> =
                    serde_urlencoded::from_bytes(&body).unwrap_or_default();
                let req = Req {
                    method: method.to_string(),
                    path: uri.path().to_string(),
                    auth: basic_auth(&headers),
                    form,
                };
                log.lock().expect("log lock").push(req.clone());
                let (status, body) = respond(&req);
                (
                    StatusCode::from_u16(status).expect("a valid status"),
                    [("content-type", "application/json")],
                    body,
                )
                    .into_response()
            }
        };
        let app = axum::Router::new().fallback(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Fake { addr, reqs, task }
    }

    fn requests(&self) -> Vec<Req> {
        self.reqs.lock().expect("log lock").clone()
    }

    /// The requests other than GETs (the polls).
    fn changes(&self) -> Vec<Req> {
        self.requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .collect()
    }

    fn cluster(&self) -> String {
        self.addr.to_string()
    }
}

fn ok(body: Value) -> (u16, String) {
    (200, body.to_string())
}

/// Runs `conduit ARGS` (bounded); returns (exit code, stdout lines, stderr).
async fn run(args: Vec<String>, env: Vec<(&'static str, String)>) -> (i32, Vec<String>, String) {
    let mut cmd = Command::new(conduit());
    cmd.args(&args)
        .env_remove("CONDUIT_CLUSTER")
        .env_remove("CONDUIT_ADMIN_PASSWORD")
        .env_remove("CONDUIT_NODE_PASSWORD")
        .env_remove("RUST_LOG")
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = tokio::task::spawn_blocking(move || {
        let child = cmd.spawn().expect("spawn conduit");
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(RUN_BOUND) {
            Ok(o) => o.expect("conduit output"),
            Err(_) => {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                panic!("conduit {args:?} did not finish within {RUN_BOUND:?}");
            }
        }
    })
    .await
    .expect("runner thread");
    let stdout = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    (
        out.status.code().unwrap_or(-1),
        stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `conduit ARGS --cluster <fake> --password PW`.
async fn run_at(fake: &Fake, args: &[&str]) -> (i32, Vec<String>, String) {
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.extend([
        "--cluster".into(),
        fake.cluster(),
        "--password".into(),
        PW.into(),
    ]);
    run(a, vec![]).await
}

fn only_json(lines: &[String]) -> Value {
    assert_eq!(lines.len(), 1, "exactly one line: {lines:?}");
    serde_json::from_str(&lines[0]).unwrap_or_else(|e| panic!("{:?} is not JSON: {e}", lines[0]))
}

fn assert_admin(r: &Req) {
    assert_eq!(
        r.auth,
        Some(("Administrator".to_string(), PW.to_string())),
        "{r:?}"
    );
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

// ---- usage and transport ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2() {
    for args in [
        vec!["cluster"],
        vec!["bucket"],
        vec!["bucket", "create"],
        vec!["bucket", "create", "b", "--replicas", "4"],
        vec!["bucket", "create", "b", "--vbuckets", "0"],
        vec!["bucket", "create", "b", "--timeout", "soon"],
        vec!["cluster", "add-node", "h:9001"],
        vec!["cluster", "add-node", "h:9001", "--node-user", "u"],
        vec!["cluster", "eject-node"],
        vec!["cluster", "init", "--memory-quota", "lots"],
        vec!["status", "--bogus"],
    ] {
        let (code, out, _) = run(args.iter().map(|s| s.to_string()).collect(), vec![]).await;
        assert_eq!(code, 2, "{args:?}: {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_exits_1_with_kind_unreachable_naming_the_address() {
    let addr = format!("127.0.0.1:{}", free_port());
    for (args, json) in [
        (vec!["status", "--json"], true),
        (vec!["status"], false),
        (vec!["bucket", "create", "b"], false),
        (vec!["cluster", "init", "--json"], true),
    ] {
        let t0 = Instant::now();
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.extend(["--cluster".into(), addr.clone()]);
        let (code, out, err) = run(a, vec![]).await;
        assert_eq!(code, 1, "{args:?}");
        let v = only_json(&out);
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"]["kind"], "unreachable", "{v}");
        assert_eq!(v["error"]["address"], addr.as_str());
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(&addr)),
            "{v}"
        );
        assert_eq!(err.contains("unreachable"), !json, "stderr: {err}");
        assert!(t0.elapsed() < Duration::from_secs(10), "failed fast");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_and_password_come_from_the_environment() {
    let fake = Fake::start(|_| ok(json!([]))).await;
    let (code, out, _) = run(
        vec!["bucket".into(), "list".into(), "--json".into()],
        vec![
            ("CONDUIT_CLUSTER", fake.cluster()),
            ("CONDUIT_ADMIN_PASSWORD", PW.into()),
        ],
    )
    .await;
    assert_eq!(code, 0, "{out:?}");
    assert_eq!(only_json(&out), json!({"ok": true, "buckets": []}));
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    assert_admin(&reqs[0]);
}

// ---- cluster init / add-node / eject-node ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_init_posts_cluster_init_with_the_admin_credentials() {
    let fake = Fake::start(|_| ok(json!({}))).await;
    let (code, out, _) = run_at(
        &fake,
        &[
            "cluster",
            "init",
            "--hostname",
            "10.0.0.1",
            "--memory-quota",
            "512",
            "--name",
            "c1",
            "--json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out:?}");
    assert_eq!(
        only_json(&out),
        json!({"ok": true, "cluster": fake.cluster()})
    );
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/clusterInit")
    );
    assert_admin(r);
    for (k, v) in [
        ("username", "Administrator"),
        ("password", PW),
        ("port", "SAME"),
        ("services", "kv"),
        ("hostname", "10.0.0.1"),
        ("memoryQuota", "512"),
        ("clusterName", "c1"),
    ] {
        assert_eq!(r.get(k), Some(v), "{k} in {r:?}");
    }
    assert_eq!(r.form.len(), 7, "nothing else: {r:?}");

    // Without the optional flags, only the four required parameters; human output.
    let (code, out, _) = run_at(&fake, &["cluster", "init"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        out,
        vec![format!("cluster initialised at {}", fake.cluster())]
    );
    let r = &fake.requests()[1];
    assert_eq!(r.form.len(), 4, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_node_posts_the_node_and_prints_its_otp_node() {
    let fake = Fake::start(|_| ok(json!({"otpNode": "n_1@127.0.0.1"}))).await;
    let (code, out, _) = run_at(
        &fake,
        &[
            "cluster",
            "add-node",
            "127.0.0.1:9001",
            "--node-user",
            "admin",
            "--node-password",
            "nodepw",
            "--group",
            "rack 2",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out:?}");
    assert_eq!(out, vec!["n_1@127.0.0.1"]);
    let r = &fake.requests()[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/controller/addNode")
    );
    assert_admin(r);
    assert_eq!(r.get("hostname"), Some("127.0.0.1:9001"));
    assert_eq!(r.get("user"), Some("admin"));
    assert_eq!(r.get("password"), Some("nodepw"));
    assert_eq!(r.get("services"), Some("kv"));
    assert_eq!(r.get("serverGroup"), Some("rack 2"));

    let (code, out, _) = run_at(
        &fake,
        &[
            "cluster",
            "add-node",
            "h",
            "--node-user",
            "a",
            "--node-password",
            "b",
            "--json",
        ],
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(
        only_json(&out),
        json!({"ok": true, "otpNode": "n_1@127.0.0.1"})
    );
    assert_eq!(fake.requests()[1].get("serverGroup"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eject_node_passes_the_node_through_as_otp_node() {
    let fake = Fake::start(|_| ok(json!({}))).await;
    for node in ["n_2@127.0.0.1", "127.0.0.1:9002"] {
        let (code, out, _) = run_at(&fake, &["cluster", "eject-node", node, "--json"]).await;
        assert_eq!(code, 0, "{out:?}");
        assert_eq!(only_json(&out), json!({"ok": true, "otpNode": node}));
    }
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    for (r, node) in reqs.iter().zip(["n_2@127.0.0.1", "127.0.0.1:9002"]) {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/controller/ejectNode")
        );
        assert_eq!(r.form, vec![("otpNode".to_string(), node.to_string())]);
        assert_admin(r);
    }
}

// ---- error answers ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_errors_exit_1_with_their_kind_and_fields_passed_through() {
    let fake = Fake::start(|r| match r.path.as_str() {
        "/controller/ejectNode" => (
            400,
            json!({"errors":{"_":"Cannot remove active server."},"kind":"invalid_membership",
                   "message":"Cannot remove active server."})
            .to_string(),
        ),
        "/pools/default/buckets" => (
            400,
            json!({"errors":{"name":"Bucket with given name already exists"},
                   "kind":"invalid_parameter","message":"Bucket with given name already exists"})
            .to_string(),
        ),
        "/controller/addNode" => (
            503,
            json!({"errors":{"_":"Cannot add node during rebalance"},"kind":"busy",
                   "message":"Cannot add node during rebalance","running":"rebalance"})
            .to_string(),
        ),
        _ => (404, "Requested resource not found.".into()),
    })
    .await;

    let (code, out, err) = run_at(&fake, &["cluster", "eject-node", "n_0@h"]).await;
    assert_eq!(code, 1);
    let e = &only_json(&out)["error"];
    assert_eq!(e["kind"], "invalid_membership");
    assert_eq!(e["status"], 400);
    assert_eq!(e["message"], "Cannot remove active server.");
    assert_eq!(e["errors"]["_"], "Cannot remove active server.");
    assert_eq!(e["request"], "POST /controller/ejectNode");
    assert!(err.contains("Cannot remove active server."), "{err}");

    let (code, out, _) = run_at(&fake, &["bucket", "create", "default", "--json"]).await;
    assert_eq!(code, 1);
    let e = &only_json(&out)["error"];
    assert_eq!(e["kind"], "invalid_parameter");
    assert_eq!(e["errors"]["name"], "Bucket with given name already exists");
    assert_eq!(e["status"], 400);
    assert_eq!(fake.changes().len(), 2, "no polling after a refused create");

    let (code, out, _) = run_at(
        &fake,
        &[
            "cluster",
            "add-node",
            "h",
            "--node-user",
            "u",
            "--node-password",
            "p",
        ],
    )
    .await;
    assert_eq!(code, 1);
    let e = &only_json(&out)["error"];
    assert_eq!(
        (e["kind"].as_str(), e["status"].as_u64()),
        (Some("busy"), Some(503))
    );
    assert_eq!(e["running"], "rebalance");

    // A non-JSON 404 (status before init) still gets a typed error.
    let (code, out, _) = run_at(&fake, &["status", "--json"]).await;
    assert_eq!(code, 1);
    let e = &only_json(&out)["error"];
    assert_eq!(e["kind"], "not_found");
    assert_eq!(e["status"], 404);
    assert_eq!(e["message"], "Requested resource not found.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_is_kind_unauthorized() {
    let fake = Fake::start(|r| {
        if r.auth == Some(("Administrator".into(), PW.into())) {
            ok(json!([]))
        } else {
            (401, String::new())
        }
    })
    .await;
    let (code, out, _) = run(
        vec![
            "bucket".into(),
            "list".into(),
            "--cluster".into(),
            fake.cluster(),
            "--password".into(),
            "wrong".into(),
        ],
        vec![],
    )
    .await;
    assert_eq!(code, 1);
    let e = &only_json(&out)["error"];
    assert_eq!(e["kind"], "unauthorized");
    assert_eq!(e["status"], 401);
    let (code, _, _) = run_at(&fake, &["bucket", "list"]).await;
    assert_eq!(code, 0);
}

// ---- buckets ----------------------------------------------------------------------------------

fn pool(status: &str) -> Value {
    json!({"name":"default","clusterName":"c1","orchestrator":"n_0@127.0.0.1","balanced":true,
        "rebalanceStatus":"none","nodes":[
        {"otpNode":"n_0@127.0.0.1","hostname":"127.0.0.1:9000","clusterMembership":"active",
         "status":"healthy","ports":{"direct":12000},"serverGroup":"Group 1","recoveryType":"none"},
        {"otpNode":"n_1@127.0.0.1","hostname":"127.0.0.1:9001","clusterMembership":"active",
         "status":status,"ports":{"direct":12002},"serverGroup":"Group 1","recoveryType":"none"},
        {"otpNode":"n_2@127.0.0.1","hostname":"127.0.0.1:9002","clusterMembership":"inactiveAdded",
         "status":"warmup","ports":{"direct":12004},"serverGroup":"Group 1","recoveryType":"none"}]})
}

fn bucket(map: Value) -> Value {
    json!({"name":"b1","bucketType":"membase","numVBuckets":4,"replicaNumber":1,
        "quota":{"ram":268435456,"rawRAM":268435456},"basicStats":{"itemCount":7},
        "rev":12,"balanced":true,
        "vBucketServerMap":{"hashAlgorithm":"CRC","numReplicas":1,
            "serverList":["127.0.0.1:12000","127.0.0.1:12002"],"vBucketMap":map}})
}

/// Answers a bucket create with 202, then reports warmup and a half-built map for `slow`
/// polls of /pools/default, then healthy with a full map.
async fn slow_cluster(slow: usize) -> (Fake, Arc<AtomicUsize>) {
    let polls = Arc::new(AtomicUsize::new(0));
    let p = polls.clone();
    let fake = Fake::start(move |r| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/pools/default/buckets") => (202, String::new()),
        ("GET", "/pools/default") => {
            let n = p.fetch_add(1, Ordering::SeqCst);
            ok(pool(if n < slow { "warmup" } else { "healthy" }))
        }
        ("GET", "/pools/default/buckets/b1") => {
            if p.load(Ordering::SeqCst) <= slow.saturating_add(1) {
                ok(bucket(json!([[0, 1], [-1, -1], [0, 1], [1, 0]])))
            } else {
                ok(bucket(json!([[0, 1], [1, 0], [0, 1], [1, 0]])))
            }
        }
        _ => (404, String::new()),
    })
    .await;
    (fake, polls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_create_posts_the_bucket_and_waits_until_every_node_is_healthy_and_the_map_full() {
    let (fake, polls) = slow_cluster(3).await;
    let (code, out, err) = run_at(
        &fake,
        &[
            "bucket",
            "create",
            "b1",
            "--replicas",
            "2",
            "--vbuckets",
            "4",
            "--ram-quota",
            "100",
            "--timeout",
            "20",
            "--json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out:?} {err}");
    let v = only_json(&out);
    assert_eq!(
        (v["ok"].clone(), v["bucket"].clone(), v["ready"].clone()),
        (json!(true), json!("b1"), json!(true))
    );
    let changes = fake.changes();
    assert_eq!(changes.len(), 1);
    let r = &changes[0];
    assert_eq!(r.path, "/pools/default/buckets");
    assert_admin(r);
    for (k, want) in [
        ("name", "b1"),
        ("bucketType", "membase"),
        ("replicaNumber", "2"),
        ("numVBuckets", "4"),
        ("ramQuota", "100"),
    ] {
        assert_eq!(r.get(k), Some(want), "{k} in {r:?}");
    }
    // 3 warmup polls, one with a hole in the map, then ready.
    assert!(
        polls.load(Ordering::SeqCst) >= 5,
        "{}",
        polls.load(Ordering::SeqCst)
    );
    assert!(fake
        .requests()
        .iter()
        .all(|r| r.auth == Some(("Administrator".into(), PW.into()))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_create_defaults_and_no_wait() {
    let (fake, polls) = slow_cluster(0).await;
    let (code, out, _) = run_at(&fake, &["bucket", "create", "b1", "--no-wait"]).await;
    assert_eq!(code, 0, "{out:?}");
    assert_eq!(out, vec!["bucket b1 accepted"]);
    assert_eq!(polls.load(Ordering::SeqCst), 0, "--no-wait does not poll");
    let r = &fake.requests()[0];
    assert_eq!(r.get("replicaNumber"), Some("1"));
    assert_eq!(r.get("ramQuota"), Some("256"));
    assert_eq!(r.get("numVBuckets"), None, "the cluster's default applies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_create_times_out_when_a_node_never_becomes_healthy() {
    let (fake, _) = slow_cluster(usize::MAX).await;
    let t0 = Instant::now();
    let (code, out, _) = run_at(
        &fake,
        &["bucket", "create", "b1", "--timeout", "1.5", "--json"],
    )
    .await;
    let took = t0.elapsed();
    assert_eq!(code, 1, "{out:?}");
    let e = &only_json(&out)["error"];
    assert_eq!(e["kind"], "timeout", "{e}");
    assert_eq!(e["bucket"], "b1");
    assert_eq!(e["waiting_for"], "bucket_ready");
    assert!(
        e["last"]
            .as_str()
            .is_some_and(|l| l.contains("n_1@127.0.0.1 is warmup")),
        "{e}"
    );
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_create_times_out_while_the_bucket_is_missing() {
    let fake = Fake::start(|r| match (r.method.as_str(), r.path.as_str()) {
        ("POST", _) => (202, String::new()),
        ("GET", "/pools/default") => ok(pool("healthy")),
        _ => (404, String::new()),
    })
    .await;
    let (code, out, _) = run_at(
        &fake,
        &["bucket", "create", "b1", "--timeout", "1", "--json"],
    )
    .await;
    assert_eq!(code, 1);
    let e = &only_json(&out)["error"];
    assert_eq!(e["kind"], "timeout");
    assert!(
        e["last"]
            .as_str()
            .is_some_and(|l| l.contains("not created yet")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_list_and_delete() {
    let fake = Fake::start(|r| match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/pools/default/buckets") => ok(json!([bucket(json!([[0, 1], [1, 0]]))])),
        ("DELETE", "/pools/default/buckets/b1") => ok(json!({})),
        ("DELETE", "/pools/default/buckets/50%25") => ok(json!({})),
        _ => (404, String::new()),
    })
    .await;
    let (code, out, _) = run_at(&fake, &["bucket", "list", "--json"]).await;
    assert_eq!(code, 0);
    let v = only_json(&out);
    assert_eq!(v["buckets"][0]["name"], "b1");
    let (code, out, _) = run_at(&fake, &["bucket", "list"]).await;
    assert_eq!(code, 0);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out[0].starts_with("BUCKET"), "{out:?}");
    let cols: Vec<&str> = out[1].split_whitespace().collect();
    assert_eq!(cols, vec!["b1", "membase", "1", "4", "256", "7", "true"]);

    let (code, out, _) = run_at(&fake, &["bucket", "delete", "b1", "--json"]).await;
    assert_eq!(code, 0, "{out:?}");
    assert_eq!(only_json(&out), json!({"ok": true, "bucket": "b1"}));
    let (code, out, _) = run_at(&fake, &["bucket", "delete", "50%"]).await;
    assert_eq!(code, 0, "{out:?}");
    assert_eq!(out, vec!["bucket 50% deleted"]);
    let changes = fake.changes();
    assert_eq!(changes.len(), 2);
    assert!(changes.iter().all(|r| r.method == "DELETE"));
    assert_admin(&changes[0]);

    let (code, out, _) = run_at(&fake, &["bucket", "delete", "nope", "--json"]).await;
    assert_eq!(code, 1);
    assert_eq!(only_json(&out)["error"]["kind"], "not_found");
}

// ---- status -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_copies_per_node_and_reports_the_rebalance() {
    let with_progress = Arc::new(AtomicUsize::new(0));
    let wp = with_progress.clone();
    let fake = Fake::start(move |r| match r.path.as_str() {
        "/pools/default" => {
            let mut p = pool("healthy");
            p["balanced"] = json!(false);
            p["bucketsNeedRebalance"] = json!({"servers_not_balanced": ["b1"]});
            ok(p)
        }
        "/pools/default/buckets" => ok(json!([bucket(json!([[0, 1], [1, 0], [0, 1], [0, -1]]))])),
        "/pools/default/rebalanceProgress" if wp.load(Ordering::SeqCst) == 1 => ok(json!({
            "status":"none","errorMessage":"Rebalance failed: move_failed: vb:3 timed out"})),
        "/pools/default/rebalanceProgress" if wp.load(Ordering::SeqCst) == 2 => ok(json!({
            "status":"running","n_0@127.0.0.1":{"progress":0.5},"n_1@127.0.0.1":{"progress":0.25}})),
        _ => (404, "Requested resource not found.".into()),
    })
    .await;

    // rebalanceProgress absent (404): ignored.
    let (code, out, err) = run_at(&fake, &["status", "--json"]).await;
    assert_eq!(code, 0, "{out:?} {err}");
    let v = only_json(&out);
    assert_eq!(v["ok"], true);
    assert_eq!(v["orchestrator"], "n_0@127.0.0.1");
    assert_eq!(v["balanced"], false);
    assert_eq!(
        v["bucketsNeedRebalance"],
        json!({"servers_not_balanced": ["b1"]})
    );
    assert_eq!(v["rebalanceStatus"], "none", "from /pools/default");
    assert_eq!(v["rebalance"], Value::Null);
    let nodes = v["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes[0]["otpNode"], "n_0@127.0.0.1");
    assert_eq!(
        nodes[0]["vbuckets"]["b1"],
        json!({"active": 3, "replica": 1})
    );
    assert_eq!(
        nodes[1]["vbuckets"]["b1"],
        json!({"active": 1, "replica": 2})
    );
    assert_eq!(
        nodes[2]["vbuckets"]["b1"],
        json!({"active": 0, "replica": 0})
    );
    assert_eq!(nodes[2]["clusterMembership"], "inactiveAdded");
    assert_eq!(
        v["buckets"],
        json!([{"name":"b1","replicaNumber":1,"numVBuckets":4,"balanced":true,"rev":12,
                "itemCount":7}])
    );

    // Human: the node rows carry the counts; the last error is shown.
    with_progress.store(1, Ordering::SeqCst);
    let (code, out, _) = run_at(&fake, &["status"]).await;
    assert_eq!(code, 0);
    let text = out.join("\n");
    let row = |name: &str| -> Vec<String> {
        out.iter()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row {name} in\n{text}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        row("n_0@127.0.0.1"),
        vec![
            "n_0@127.0.0.1",
            "127.0.0.1:9000",
            "active",
            "healthy",
            "3/1"
        ]
    );
    assert_eq!(row("n_1@127.0.0.1")[4], "1/2");
    assert_eq!(row("b1"), vec!["b1", "1", "4", "true", "12"]);
    assert!(text.contains("rebalance: none"), "{text}");
    assert!(
        text.contains("needs rebalance: servers_not_balanced: b1"),
        "{text}"
    );
    assert!(
        text.contains("last rebalance error: Rebalance failed: move_failed: vb:3 timed out"),
        "{text}"
    );

    // Running: per-node progress.
    with_progress.store(2, Ordering::SeqCst);
    let (code, out, _) = run_at(&fake, &["status"]).await;
    assert_eq!(code, 0);
    let text = out.join("\n");
    assert!(
        text.contains("rebalance: running (n_0@127.0.0.1 50%, n_1@127.0.0.1 25%)"),
        "{text}"
    );
    let (_, out, _) = run_at(&fake, &["status", "--json"]).await;
    let v = only_json(&out);
    assert_eq!(v["rebalanceStatus"], "running");
    assert_eq!(v["rebalance"]["n_0@127.0.0.1"]["progress"], 0.5);
    let gets: Vec<String> = fake.requests().into_iter().map(|r| r.path).collect();
    assert!(gets.contains(&"/pools/default/rebalanceProgress".to_string()));
    assert!(fake.changes().is_empty(), "status only reads");
}
