//! The data-moving rebalance with real `conduit node` processes (cluster.md §5,
//! §10.2 T1, T3, T4): in and out under a routed writer, stop and resume, a node
//! killed mid-rebalance; with I1 (sampled), I2, I3, I4, I5, I6 and I7 checked.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;
use testkit::NodeProcess;
use tokio::time::Instant;

const VBUCKETS: &str = "16";

/// A 3-node cluster (of `nodes`' first three) with bucket `default` (16 vbuckets, one
/// replica), out-delay 0, states matching the map.
async fn cluster_with_bucket(nodes: &[NodeProcess]) -> anyhow::Result<()> {
    form_cluster(&nodes[..3]).await?;
    let a = nodes[0].admin;
    post_ok(a, "/settings/rebalance", &[("rebalanceOutDelay", "0")]).await?;
    let (s, t) = rest(
        a,
        "POST",
        "/pools/default/buckets",
        Some(ADMIN),
        &[
            ("name", "default"),
            ("ramQuotaMB", "128"),
            ("replicaNumber", "1"),
            ("numVBuckets", VBUCKETS),
        ],
    )
    .await?;
    anyhow::ensure!(s == 202, "{s} {t}");
    wait_healthy(a, "default").await?;
    let refs: Vec<&NodeProcess> = nodes[..3].iter().collect();
    wait_states_match(a, &refs, "default", Duration::from_secs(15)).await
}

fn sampler(nodes: &[NodeProcess]) -> ActiveSampler {
    ActiveSampler::start(
        nodes.iter().map(|n| n.admin).collect(),
        nodes.iter().map(|n| n.kv.port()).collect(),
        "default",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_in_then_out_under_load_loses_no_write_and_leaves_nothing_behind(
) -> anyhow::Result<()> {
    let nodes = start_nodes(4)?;
    cluster_with_bucket(&nodes).await?;
    let a = nodes[0].admin;
    let writer = Writer::start(a, "default", 500);
    let sample = sampler(&nodes);
    let refs3: Vec<&NodeProcess> = nodes[..3].iter().collect();
    let watch = ConfigWatch::start(&refs3, "default");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // In: 3 -> 4.
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
    let fourth = v["otpNode"].as_str().unwrap_or_default().to_owned();
    let id = start_rebalance(a, &[]).await?;
    assert_eq!(id.len(), 32);
    // While it runs: progress is "running" and the task names it.
    let (_, t) = rest(a, "GET", "/pools/default/tasks", Some(ADMIN), &[]).await?;
    let tasks: Value = serde_json::from_str(&t)?;
    assert_eq!(tasks[0]["type"], "rebalance", "{tasks}");
    let started = Instant::now();
    let end = wait_rebalance_end(a, Duration::from_secs(180)).await?;
    if end.get("errorMessage").is_some() {
        for n in &nodes {
            eprintln!("==== node {} (kv {})\n{}", n.admin, n.kv, n.log());
        }
    }
    assert!(end.get("errorMessage").is_none(), "{end}");
    eprintln!("rebalance in took {:?}", started.elapsed());
    let refs4: Vec<&NodeProcess> = nodes.iter().collect();
    wait_states_match(a, &refs4, "default", Duration::from_secs(15)).await?;
    let b = ok(a, "GET", "/pools/default/buckets/default", &[], 200).await?;
    assert_eq!(
        b["vBucketServerMap"]["serverList"].as_array().map(Vec::len),
        Some(4),
        "{b}"
    );
    assert!(
        b["vBucketServerMap"].get("vBucketMapForward").is_none(),
        "the fast-forward map is cleared: {b}"
    );
    let pd = ok(a, "GET", "/pools/default", &[], 200).await?;
    assert_eq!(pd["balanced"], true, "{pd}");
    // The report says so.
    let report = ok(
        a,
        "GET",
        &format!("/logs/rebalanceReport?reportID={id}"),
        &[],
        200,
    )
    .await?;
    assert_eq!(report["result"]["ok"], true, "{report}");
    assert!(
        report["stageInfo"]["data"]["details"]["default"]["plan"]["moves"].as_u64() > Some(0),
        "{report}"
    );
    // Out: 4 -> 3.
    start_rebalance(a, &[&fourth]).await?;
    let end = wait_rebalance_end(a, Duration::from_secs(180)).await?;
    assert!(end.get("errorMessage").is_none(), "{end}");
    wait_states_match(a, &refs3, "default", Duration::from_secs(15)).await?;
    // I7: the ejected node holds nothing and forgot the cluster.
    let (s, t) =
        testkit::http(nodes[3].admin, "GET", "/buckets", Some(("admin", PW)), None).await?;
    assert_eq!((s, t.as_str()), (200, "[]"));
    let (_, t) = rest(nodes[3].admin, "GET", "/pools", None, &[]).await?;
    assert_eq!(
        serde_json::from_str::<Value>(&t)?["uuid"],
        serde_json::json!([])
    );
    let r = writer.finish().await?;
    assert_eq!(
        r.failed, 0,
        "I2: every write was acknowledged ({} writes, {} retries)",
        r.writes, r.retries
    );
    assert!(
        r.writes > 100,
        "the writer wrote during the rebalances: {}",
        r.writes
    );
    verify_acked(a, "default", &r.acked).await?;
    let samples = sample.finish().await?;
    assert!(samples > 5, "{samples}");
    watch.finish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_rebalance_ends_within_the_grace_and_a_rerun_completes() -> anyhow::Result<()> {
    let nodes = start_nodes(4)?;
    cluster_with_bucket(&nodes).await?;
    let a = nodes[0].admin;
    let writer = Writer::start(a, "default", 300);
    let sample = sampler(&nodes);
    post_ok(
        a,
        "/controller/addNode",
        &[
            ("hostname", &host_port(&nodes[3])),
            ("user", "admin"),
            ("password", PW),
        ],
    )
    .await?;
    post_ok(a, "/settings/rebalance", &[("rebalanceMovesPerNode", "1")]).await?;
    let first = start_rebalance(a, &[]).await?;
    // Busy while it runs (§2.4).
    let (s, t) = rest(
        a,
        "POST",
        "/pools/default/buckets",
        Some(ADMIN),
        &[("name", "other"), ("ramQuotaMB", "100")],
    )
    .await?;
    assert_eq!(s, 503, "{t}");
    assert!(t.contains("\"busy\""), "{t}");
    // Stop once a move has committed (so the rerun has less to do).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, t) = rest(a, "GET", "/pools/default/tasks", Some(ADMIN), &[]).await?;
        let v: Value = serde_json::from_str(&t)?;
        if v[0]["moves"]["done"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert_eq!(
            v[0]["status"], "running",
            "the rebalance ended before it could be stopped: {v}"
        );
        anyhow::ensure!(Instant::now() < deadline, "no move finished: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped_at = Instant::now();
    ok(a, "POST", "/controller/stopRebalance", &[], 200).await?;
    let end = wait_rebalance_end(a, Duration::from_secs(30)).await?;
    assert!(
        stopped_at.elapsed() < Duration::from_secs(25),
        "stop took {:?}",
        stopped_at.elapsed()
    );
    assert!(
        end.get("errorMessage").is_none(),
        "a stop is not a failure: {end}"
    );
    let r1 = ok(
        a,
        "GET",
        &format!("/logs/rebalanceReport?reportID={first}"),
        &[],
        200,
    )
    .await?;
    assert_eq!(r1["result"]["stopped"], true, "{r1}");
    assert_eq!(r1["completionMessage"], "Rebalance stopped by user.");
    let planned = r1["stageInfo"]["data"]["details"]["default"]["plan"]["moves"]
        .as_u64()
        .unwrap_or(0);
    // The janitor repairs whatever the stop left.
    let refs: Vec<&NodeProcess> = nodes.iter().collect();
    let b = ok(a, "GET", "/pools/default/buckets/default", &[], 200).await?;
    assert!(
        b["vBucketServerMap"].get("vBucketMapForward").is_some(),
        "the fast-forward map stays after a stop: {b}"
    );
    // Resume: the same rebalance again completes, with only the remaining moves.
    let second = start_rebalance(a, &[]).await?;
    let end = wait_rebalance_end(a, Duration::from_secs(180)).await?;
    assert!(end.get("errorMessage").is_none(), "{end}");
    let r2 = ok(
        a,
        "GET",
        &format!("/logs/rebalanceReport?reportID={second}"),
        &[],
        200,
    )
    .await?;
    let remaining = r2["stageInfo"]["data"]["details"]["default"]["plan"]["moves"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        remaining < planned,
        "the rerun planned {remaining} moves, the first {planned}"
    );
    wait_states_match(a, &refs, "default", Duration::from_secs(15)).await?;
    let r = writer.finish().await?;
    assert_eq!(r.failed, 0);
    verify_acked(a, "default", &r.acked).await?;
    sample.finish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_rebalance_fails_it_typed_and_after_a_restart_a_rerun_completes(
) -> anyhow::Result<()> {
    let mut nodes = start_nodes(4)?;
    cluster_with_bucket(&nodes).await?;
    let a = nodes[0].admin;
    let writer = Writer::start(a, "default", 300);
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
    let fourth = v["otpNode"].as_str().unwrap_or_default().to_owned();
    post_ok(a, "/settings/rebalance", &[("rebalanceMovesPerNode", "1")]).await?;
    start_rebalance(a, &[]).await?;
    // At once: this bucket's moves can all finish within a few hundred ms. Should
    // they finish before the kill lands, the final replication check fails instead,
    // and its error names the dead producer too.
    let victim = nodes.remove(3);
    let ports = (victim.kv.port(), victim.admin.port());
    let killed_at = Instant::now();
    let dir = victim.kill()?;
    let end = wait_rebalance_end(a, Duration::from_secs(40)).await?;
    let took = killed_at.elapsed();
    let msg = end["errorMessage"].as_str().unwrap_or_default().to_owned();
    assert!(!msg.is_empty(), "the rebalance failed: {end}");
    assert!(
        msg.contains(&fourth),
        "the error names the dead node {fourth}: {msg}"
    );
    assert!(
        took < Duration::from_secs(25),
        "failed {took:?} after the kill (bound 20 s + polling)"
    );
    let (_, t) = rest(a, "GET", "/pools/default/tasks", Some(ADMIN), &[]).await?;
    let tasks: Value = serde_json::from_str(&t)?;
    assert!(
        tasks[0]["error"]["kind"].is_string(),
        "the task carries the typed error: {tasks}"
    );
    // The node comes back (fenced, on its ports); the janitor repairs; a new
    // rebalance completes and nothing acknowledged is lost.
    let back = NodeProcess::start_on(dir, &conduit(), PW, ports, &[])?;
    nodes.push(back);
    start_rebalance(a, &[]).await?;
    let end = wait_rebalance_end(a, Duration::from_secs(180)).await?;
    assert!(end.get("errorMessage").is_none(), "{end}");
    let refs: Vec<&NodeProcess> = nodes.iter().collect();
    wait_states_match(a, &refs, "default", Duration::from_secs(15)).await?;
    let r = writer.finish().await?;
    assert_eq!(r.failed, 0);
    verify_acked(a, "default", &r.acked).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rebalance_is_retried_automatically_and_a_user_stop_is_not() -> anyhow::Result<()>
{
    let mut nodes = start_nodes(4)?;
    cluster_with_bucket(&nodes).await?;
    let a = nodes[0].admin;
    let s = ok(
        a,
        "POST",
        "/settings/retryRebalance",
        &[
            ("enabled", "true"),
            ("afterTimePeriod", "5"),
            ("maxAttempts", "1"),
        ],
        200,
    )
    .await?;
    assert_eq!(
        s,
        serde_json::json!({"enabled": true, "afterTimePeriod": 5, "maxAttempts": 1})
    );
    let (st, t) = rest(
        a,
        "POST",
        "/settings/retryRebalance",
        Some(ADMIN),
        &[("afterTimePeriod", "2")],
    )
    .await?;
    assert_eq!(st, 400, "enabled is required, 5..3600: {t}");
    post_ok(a, "/settings/rebalance", &[("rebalanceMovesPerNode", "1")]).await?;
    let p = ok(a, "GET", "/pools/default/pendingRetryRebalance", &[], 200).await?;
    assert_eq!(p["retry_rebalance"], "not_pending", "{p}");
    post_ok(
        a,
        "/controller/addNode",
        &[
            ("hostname", &host_port(&nodes[3])),
            ("user", "admin"),
            ("password", PW),
        ],
    )
    .await?;
    let first = start_rebalance(a, &[]).await?;
    // At once: an empty bucket's 8 moves can finish within a few hundred ms.
    let victim = nodes.remove(3);
    let ports = (victim.kv.port(), victim.admin.port());
    let dir = victim.kill()?;
    let end = wait_rebalance_end(a, Duration::from_secs(40)).await?;
    assert!(end.get("errorMessage").is_some(), "{end}");
    let p = ok(a, "GET", "/pools/default/pendingRetryRebalance", &[], 200).await?;
    assert_eq!(p["retry_rebalance"], "pending", "{p}");
    assert_eq!(p["rebalance_id"], first.as_str(), "{p}");
    // The node comes back before the retry is due; the retry completes.
    nodes.push(NodeProcess::start_on(dir, &conduit(), PW, ports, &[])?);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = ok(a, "GET", "/pools/default/pendingRetryRebalance", &[], 200).await?;
        let b = ok(a, "GET", "/pools/default/buckets/default", &[], 200).await?;
        let (_, prog) = rest(
            a,
            "GET",
            "/pools/default/rebalanceProgress",
            Some(ADMIN),
            &[],
        )
        .await?;
        let servers = b["vBucketServerMap"]["serverList"]
            .as_array()
            .map_or(0, Vec::len);
        if p["retry_rebalance"] == "not_pending" && servers == 4 && prog == r#"{"status":"none"}"# {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the retry did not complete: {p} {prog}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let report = ok(a, "GET", "/logs/rebalanceReport", &[], 200).await?;
    assert_eq!(
        report["attempt"], 2,
        "the newest report is the retry's: {report}"
    );
    assert_eq!(report["result"]["ok"], true, "{report}");
    let refs: Vec<&NodeProcess> = nodes.iter().collect();
    wait_states_match(a, &refs, "default", Duration::from_secs(15)).await?;
    // A user stop arms no retry.
    let fourth = node_names(a)
        .await?
        .into_iter()
        .find(|n| n.ends_with(&format!("{}@127.0.0.1", nodes[3].admin.port())))
        .unwrap_or_default();
    start_rebalance(a, &[&fourth]).await?;
    ok(a, "POST", "/controller/stopRebalance", &[], 200).await?;
    wait_rebalance_end(a, Duration::from_secs(30)).await?;
    let p = ok(a, "GET", "/pools/default/pendingRetryRebalance", &[], 200).await?;
    assert_eq!(p["retry_rebalance"], "not_pending", "{p}");
    let (s, _) = rest(
        a,
        "POST",
        "/controller/cancelRebalanceRetry/0123456789abcdef0123456789abcdef",
        Some(ADMIN),
        &[],
    )
    .await?;
    assert_eq!(s, 400);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_whose_commit_failed_is_adopted_by_the_janitor() -> anyhow::Result<()> {
    // T7: the orchestrator's test hook fails the first commit after a takeover.
    let mut nodes = vec![NodeProcess::start(
        &conduit(),
        PW,
        &["--test-fail-first-takeover-commit"],
    )?];
    nodes.extend(start_nodes(3)?);
    cluster_with_bucket(&nodes).await?;
    let a = nodes[0].admin;
    post_ok(
        a,
        "/controller/addNode",
        &[
            ("hostname", &host_port(&nodes[3])),
            ("user", "admin"),
            ("password", PW),
        ],
    )
    .await?;
    start_rebalance(a, &[]).await?;
    let end = wait_rebalance_end(a, Duration::from_secs(120)).await?;
    assert!(
        end["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("move_failed")),
        "{end}"
    );
    let (_, t) = rest(a, "GET", "/pools/default/tasks", Some(ADMIN), &[]).await?;
    let err = serde_json::from_str::<Value>(&t)?[0]["error"].clone();
    assert_eq!(err["step"], "commit", "{err}");
    let vb = err["vb"].as_u64().unwrap_or(u64::MAX) as usize;
    let new_head = err["new_chain"][0].as_str().unwrap_or_default().to_owned();
    // The janitor (run at once after the failure) makes the node that took over the
    // head: never two actives, states match the map.
    let refs: Vec<&NodeProcess> = nodes.iter().collect();
    wait_states_match(a, &refs, "default", Duration::from_secs(15)).await?;
    let b = ok(a, "GET", "/pools/default/buckets/default", &[], 200).await?;
    let smap = &b["vBucketServerMap"];
    let head = smap["vBucketMap"][vb][0]
        .as_i64()
        .and_then(|i| {
            smap["serverList"][usize::try_from(i).ok()?]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let pd = ok(a, "GET", "/pools/default", &[], 200).await?;
    let kv_of = pd["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["otpNode"] == new_head.as_str())
        .map(|n| n["ports"]["direct"].clone())
        .unwrap_or_default();
    assert!(
        head.ends_with(&format!(":{kv_of}")),
        "vb {vb}'s head is {head}, the node that took over is {new_head} (kv {kv_of})"
    );
    // And a new rebalance completes.
    start_rebalance(a, &[]).await?;
    let end = wait_rebalance_end(a, Duration::from_secs(120)).await?;
    assert!(end.get("errorMessage").is_none(), "{end}");
    wait_states_match(a, &refs, "default", Duration::from_secs(15)).await?;
    Ok(())
}
