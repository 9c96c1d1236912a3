//! `conduit rebalance …` (cluster.md §5.4, §5.9, §9) against real `conduit node`
//! clusters: `--wait --json` progress and done lines, `report`, `status`, `settings`,
//! a stop through `conduit rebalance stop` while another `--wait` runs; a failure's
//! typed error through a small fake REST server; usage errors.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use testkit::NodeProcess;

/// Bound on one run of the binary that waits for a rebalance.
const WAIT_BOUND: Duration = Duration::from_secs(240);

/// The common flags for the cluster at `a`.
fn flags(a: SocketAddr) -> Vec<String> {
    vec![
        "--cluster".into(),
        a.to_string(),
        "--user".into(),
        ADMIN.0.into(),
        "--password".into(),
        ADMIN.1.into(),
    ]
}

fn command(args: &[&str], a: Option<SocketAddr>) -> Command {
    let mut cmd = Command::new(conduit());
    cmd.args(args)
        .args(a.map(flags).unwrap_or_default())
        .env_remove("CONDUIT_CLUSTER")
        .env_remove("CONDUIT_ADMIN_PASSWORD")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

/// Lines of a running child's stdout, read on a thread.
struct Lines {
    child: Child,
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn spawn(args: &[&str], a: SocketAddr) -> anyhow::Result<Lines> {
        let mut child = command(args, Some(a))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(Lines {
            child,
            rx,
            seen: vec![],
        })
    }

    /// The next line, within `bound`; `None` once stdout closed.
    fn next(&mut self, bound: Duration) -> anyhow::Result<Option<String>> {
        match self.rx.recv_timeout(bound) {
            Ok(l) => {
                self.seen.push(l.clone());
                Ok(Some(l))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(None),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                anyhow::bail!("no line within {bound:?}; so far: {:?}", self.seen)
            }
        }
    }

    /// Reads to the end (within `bound`) and waits for the exit; (code, every line as JSON).
    fn finish(mut self, bound: Duration) -> anyhow::Result<(i32, Vec<Value>)> {
        let deadline = std::time::Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.next(left) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(e);
                }
            }
        }
        let status = self.child.wait()?;
        let lines = self
            .seen
            .iter()
            .map(|l| serde_json::from_str(l))
            .collect::<Result<Vec<Value>, _>>()?;
        Ok((status.code().unwrap_or(-1), lines))
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `conduit ARGS` to its end (bounded); (code, JSON lines of stdout).
fn run(args: &[&str], a: Option<SocketAddr>, bound: Duration) -> anyhow::Result<(i32, Vec<Value>)> {
    let mut child = command(args, a)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let lines: Vec<String> = BufReader::new(out).lines().map_while(Result::ok).collect();
        let _ = tx.send(lines);
    });
    let lines = match rx.recv_timeout(bound) {
        Ok(l) => l,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("conduit {args:?} did not end within {bound:?}");
        }
    };
    let code = child.wait()?.code().unwrap_or(-1);
    let json = lines
        .iter()
        .map(|l| serde_json::from_str(l).map_err(|e| anyhow::anyhow!("{l:?}: {e}")))
        .collect::<anyhow::Result<Vec<Value>>>()?;
    Ok((code, json))
}

/// Async wrapper: runs the binary on a blocking thread.
async fn run_async(
    args: Vec<String>,
    a: Option<SocketAddr>,
    bound: Duration,
) -> anyhow::Result<(i32, Vec<Value>)> {
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&refs, a, bound)
    })
    .await?
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// 3 of `nodes` in a cluster with bucket `default` (16 vbuckets, one replica), out-delay 0;
/// the 4th added (not yet rebalanced in); returns the 4th's name.
async fn three_plus_one(nodes: &[NodeProcess]) -> anyhow::Result<String> {
    form_cluster(&nodes[..3]).await?;
    let a = nodes[0].admin;
    let (code, lines) = run_async(
        strings(&["rebalance", "settings", "--out-delay", "0", "--json"]),
        Some(a),
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines[0]["settings"]["rebalanceOutDelay"], 0, "{lines:?}");
    assert_eq!(lines[0]["changed"], true, "{lines:?}");
    let (s, t) = rest(
        a,
        "POST",
        "/pools/default/buckets",
        Some(ADMIN),
        &[
            ("name", "default"),
            ("ramQuotaMB", "128"),
            ("replicaNumber", "1"),
            ("numVBuckets", "16"),
        ],
    )
    .await?;
    anyhow::ensure!(s == 202, "{s} {t}");
    wait_healthy(a, "default").await?;
    let refs: Vec<&NodeProcess> = nodes[..3].iter().collect();
    wait_states_match(a, &refs, "default", Duration::from_secs(15)).await?;
    let v = ok(
        a,
        "POST",
        "/controller/addNode",
        &[
            ("hostname", &host_port(&nodes[3])),
            ("user", "admin"),
            ("password", PW),
        ],
        200,
    )
    .await?;
    Ok(v["otpNode"].as_str().unwrap_or_default().to_owned())
}

fn is_progress(v: &Value) -> bool {
    v["event"] == "progress"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_wait_json_prints_progress_then_done_and_report_status_follow(
) -> anyhow::Result<()> {
    let nodes = start_nodes(4)?;
    three_plus_one(&nodes).await?;
    let a = nodes[0].admin;
    // Some data and one backfill per node: long enough for a few progress lines.
    let writer = Writer::start(a, "default", 3000);
    let (code, lines) = run_async(
        strings(&["rebalance", "settings", "--moves-per-node", "1", "--json"]),
        Some(a),
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(code, 0, "{lines:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, lines) = run_async(
        strings(&["rebalance", "--wait", "--json", "--timeout", "180"]),
        Some(a),
        WAIT_BOUND,
    )
    .await?;
    assert_eq!(code, 0, "{lines:#?}");
    let (last, progress) = lines
        .split_last()
        .ok_or_else(|| anyhow::anyhow!("no output"))?;
    eprintln!("--wait printed {} progress lines", progress.len());
    assert!(!progress.is_empty(), "no progress line: {lines:#?}");
    assert!(progress.iter().all(is_progress), "{lines:#?}");
    for p in progress {
        assert!(p["progress"].as_f64().is_some(), "{p}");
        assert!(p["moves"]["total"].as_u64().is_some(), "{p}");
        assert_eq!(p["perNode"].as_object().map(|o| o.len()), Some(4), "{p}");
        assert_eq!(p["bucket"], "default", "{p}");
    }
    // Only changes are printed.
    for w in progress.windows(2) {
        assert_ne!(w[0], w[1], "a repeated progress line");
    }
    assert_eq!(last["event"], "done", "{last}");
    assert_eq!(last["ok"], true, "{last}");
    let id = last["rebalance_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(id.len(), 32, "{last}");
    assert_eq!(last["reportID"], id.as_str(), "{last}");
    let b = ok(a, "GET", "/pools/default/buckets/default", &[], 200).await?;
    assert_eq!(
        b["vBucketServerMap"]["serverList"].as_array().map(Vec::len),
        Some(4),
        "{b}"
    );

    // The report: by id and the newest, one JSON line with --json.
    for args in [
        vec!["rebalance", "report", "--json", "--id", id.as_str()],
        vec!["rebalance", "report", "--json"],
    ] {
        let (code, lines) = run_async(strings(&args), Some(a), Duration::from_secs(60)).await?;
        assert_eq!(code, 0, "{lines:?}");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["ok"], true);
        assert_eq!(lines[0]["report"]["result"]["ok"], true, "{lines:?}");
        assert_eq!(lines[0]["report"]["rebalanceId"], id.as_str());
    }
    // An unknown report: the server's 404, exit 1.
    let (code, lines) = run_async(
        strings(&[
            "rebalance",
            "report",
            "--json",
            "--id",
            "ffffffffffffffffffffffffffffffff",
        ]),
        Some(a),
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(lines[0]["error"]["status"], 404, "{lines:?}");

    // Idle status.
    let (code, lines) = run_async(
        strings(&["rebalance", "status", "--json"]),
        Some(a),
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(code, 0, "{lines:?}");
    let s = &lines[0];
    assert_eq!(s["running"], false, "{s}");
    assert_eq!(s["status"], "notRunning", "{s}");
    assert_eq!(s["reportID"], id.as_str(), "{s}");
    assert_eq!(s["error"], Value::Null, "{s}");

    // Nothing to stop: ok, and says so.
    let (code, lines) = run_async(
        strings(&["rebalance", "stop", "--json"]),
        Some(a),
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines[0]["was_running"], false, "{lines:?}");
    let w = writer.finish().await?;
    assert_eq!(w.failed, 0, "{w:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_stop_ends_a_waiting_rebalance_with_kind_stopped() -> anyhow::Result<()> {
    let nodes = start_nodes(4)?;
    let fourth = three_plus_one(&nodes).await?;
    let a = nodes[0].admin;
    let (code, lines) = run_async(
        strings(&["rebalance", "settings", "--moves-per-node", "1", "--json"]),
        Some(a),
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(
        lines[0]["settings"]["rebalanceMovesPerNode"], 1,
        "{lines:?}"
    );
    let (code, lines) = run_async(
        strings(&["rebalance", "settings", "--json"]),
        Some(a),
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines[0]["changed"], false, "{lines:?}");
    assert_eq!(
        lines[0]["settings"]["rebalanceMovesPerNode"], 1,
        "{lines:?}"
    );
    let writer = Writer::start(a, "default", 300);
    // In: 3 -> 4.
    let (code, lines) = run_async(
        strings(&["rebalance", "--wait", "--json", "--timeout", "180"]),
        Some(a),
        WAIT_BOUND,
    )
    .await?;
    assert_eq!(code, 0, "{lines:#?}");
    // Out, stopped while it runs. A 16-vbucket rebalance of little data takes well under
    // a second even with one move per node, so the stop would race its end; the out delay
    // (§11, cancelled by a stop) keeps this one running until the stop lands.
    let (code, lines) = run_async(
        strings(&["rebalance", "settings", "--out-delay", "60", "--json"]),
        Some(a),
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(code, 0, "{lines:?}");
    let mut waiting = Lines::spawn(
        &[
            "rebalance",
            "--eject",
            &fourth,
            "--wait",
            "--json",
            "--timeout",
            "180",
        ],
        a,
    )?;
    let first = tokio::task::block_in_place(|| waiting.next(Duration::from_secs(60)))?
        .ok_or_else(|| anyhow::anyhow!("the waiting command printed nothing"))?;
    let first: Value = serde_json::from_str(&first)?;
    assert_eq!(first["event"], "progress", "{first}");
    let id = first["rebalance_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // While it runs, status shows it.
    let (code, lines) = run_async(
        strings(&["rebalance", "status", "--json"]),
        Some(a),
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines[0]["running"], true, "{lines:?}");
    assert_eq!(lines[0]["rebalance_id"], id.as_str(), "{lines:?}");

    let (code, lines) = run_async(
        strings(&["rebalance", "stop", "--wait", "--json", "--timeout", "60"]),
        Some(a),
        Duration::from_secs(90),
    )
    .await?;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines[0]["was_running"], true, "{lines:?}");
    assert_eq!(lines[0]["stopped"], true, "{lines:?}");
    assert_eq!(lines[0]["rebalance_id"], id.as_str(), "{lines:?}");

    let (code, lines) = tokio::task::block_in_place(|| waiting.finish(Duration::from_secs(60)))?;
    assert_eq!(code, 1, "{lines:#?}");
    let last = lines.last().cloned().unwrap_or_default();
    assert_eq!(last["event"], "stopped", "{last}");
    assert_eq!(last["ok"], false, "{last}");
    assert_eq!(last["error"]["kind"], "stopped", "{last}");
    assert_eq!(last["error"]["rebalance_id"], id.as_str(), "{last}");
    assert!(
        lines[..lines.len() - 1].iter().all(is_progress),
        "{lines:#?}"
    );

    // The report says stopped; a stop is not a failure in the status.
    let (code, lines) = run_async(
        strings(&["rebalance", "report", "--json", "--id", &id]),
        Some(a),
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines[0]["report"]["result"]["stopped"], true, "{lines:?}");
    let (code, lines) = run_async(
        strings(&["rebalance", "status", "--json"]),
        Some(a),
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines[0]["running"], false, "{lines:?}");
    assert_eq!(lines[0]["error"], Value::Null, "{lines:?}");

    // The rerun through the CLI completes: the 4th node leaves.
    let (code, lines) = run_async(
        strings(&[
            "rebalance",
            "settings",
            "--out-delay",
            "0",
            "--moves-per-node",
            "4",
            "--json",
        ]),
        Some(a),
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(code, 0, "{lines:?}");
    let (code, lines) = run_async(
        strings(&[
            "rebalance",
            "--eject",
            &fourth,
            "--wait",
            "--json",
            "--timeout",
            "180",
        ]),
        Some(a),
        WAIT_BOUND,
    )
    .await?;
    assert_eq!(code, 0, "{lines:#?}");
    assert_eq!(
        lines.last().map(|l| l["event"].clone()),
        Some(json!("done"))
    );
    let b = ok(a, "GET", "/pools/default/buckets/default", &[], 200).await?;
    assert_eq!(
        b["vBucketServerMap"]["serverList"].as_array().map(Vec::len),
        Some(3),
        "{b}"
    );
    let w = writer.finish().await?;
    assert_eq!(w.failed, 0, "{w:?}");
    Ok(())
}

/// A fake REST server for the failure path: the tasks entry runs for `running_polls`
/// polls, then is idle with `idle`; the report answers `report`.
async fn fake(
    running_polls: usize,
    idle: Value,
    report: Value,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let polls = Arc::new(AtomicUsize::new(0));
    let id = "0123456789abcdef0123456789abcdef";
    let handler = move |uri: axum::http::Uri| {
        let (polls, idle, report) = (polls.clone(), idle.clone(), report.clone());
        async move {
            let body = match uri.path() {
                "/pools/default" => json!({"nodes":[{"otpNode":"ns_1@a"},{"otpNode":"ns_1@b"}]}),
                "/controller/rebalance" => json!({"rebalance_id": id}),
                "/pools/default/tasks" => {
                    let n = polls.fetch_add(1, Ordering::SeqCst) + 1;
                    if n <= running_polls {
                        json!([{"type":"rebalance","subtype":"rebalance","status":"running",
                            "statusId": id,"progress": n as f64 * 10.0,
                            "perNode":{"ns_1@a":{"progress": n as f64 * 10.0}},
                            "detailedProgress":{"bucket":"default","perNode":{}},
                            "moves":{"total":8,"done":n,"running":1,"backfilling":1,"vbuckets":[]}}])
                    } else {
                        json!([idle])
                    }
                }
                "/logs/rebalanceReport" => report,
                _ => json!({}),
            };
            axum::Json(body)
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
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rebalance_prints_the_servers_typed_error() -> anyhow::Result<()> {
    let id = "0123456789abcdef0123456789abcdef";
    let error = json!({"kind":"move_failed","message":"vbucket 3 of default: build on ns_1@b failed",
        "bucket":"default","vb":3,"step":"build","node":"ns_1@b",
        "cause":{"kind":"unexpected_stream_end","message":"…"}});
    let idle = json!({"type":"rebalance","status":"notRunning",
        "lastReportURI": format!("/logs/rebalanceReport?reportID={id}"),
        "errorMessage":"Rebalance failed: move_failed: vbucket 3 of default: build on ns_1@b failed",
        "error": error});
    let report = json!({"rebalanceId": id, "result":{"ok":false,"error": error}});
    let (addr, task) = fake(3, idle, report).await;
    let (code, lines) = run_async(
        strings(&["rebalance", "--wait", "--timeout", "30"]),
        Some(addr),
        Duration::from_secs(60),
    )
    .await?;
    task.abort();
    // Not a terminal: JSON lines even without --json.
    assert_eq!(code, 1, "{lines:#?}");
    let last = lines.last().cloned().unwrap_or_default();
    assert_eq!(last["ok"], false, "{last}");
    assert_eq!(last["event"], "failed", "{last}");
    let e = &last["error"];
    assert_eq!(e["kind"], "move_failed", "not wrapped: {last}");
    assert_eq!(e["vb"], 3, "{last}");
    assert_eq!(e["cause"]["kind"], "unexpected_stream_end", "{last}");
    assert_eq!(e["rebalance_id"], id, "{last}");
    let progress: Vec<&Value> = lines.iter().filter(|l| is_progress(l)).collect();
    assert!(!progress.is_empty(), "{lines:#?}");
    assert!(progress.len() <= 3, "{lines:#?}");

    // The timeout: kind timeout, and the rebalance keeps running.
    let (addr, task) = fake(usize::MAX, json!({}), json!({})).await;
    let started = std::time::Instant::now();
    let (code, lines) = run_async(
        strings(&["rebalance", "--wait", "--json", "--timeout", "1"]),
        Some(addr),
        Duration::from_secs(60),
    )
    .await?;
    task.abort();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(code, 1, "{lines:#?}");
    let last = lines.last().cloned().unwrap_or_default();
    assert_eq!(last["error"]["kind"], "timeout", "{last}");
    assert!(
        last["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("keeps running")),
        "{last}"
    );
    // At most 4 lines a second (plus the final one).
    assert!(lines.len() <= 2 + 4 * 2, "{lines:#?}");
    Ok(())
}

#[test]
fn usage_errors_exit_2() -> anyhow::Result<()> {
    for args in [
        vec!["rebalance", "--wait", "stop"],
        vec!["rebalance", "bogus"],
        vec!["rebalance", "--timeout", "0"],
        vec!["rebalance", "report", "--id", "xyz"],
        vec!["rebalance", "settings", "--moves-per-node", "0"],
        vec!["rebalance", "settings", "--moves-per-node", "65"],
        vec!["rebalance", "settings", "--stop-grace", "0"],
        vec!["rebalance", "stop", "--eject", "x"],
    ] {
        let out = command(&args, None).output()?;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
    // Help for both forms.
    for args in [
        vec!["rebalance", "--help"],
        vec!["rebalance", "stop", "--help"],
    ] {
        let out = command(&args, None).output()?;
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
    }
    Ok(())
}
