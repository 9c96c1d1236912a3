//! Failover and recovery with real `conduit node` processes (cluster.md §8, §10.2
//! T10–T12): hard failover under load after a kill -9, the refusal to lose data,
//! graceful failover, delta and full recovery, auto-failover timing and its guards.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use support::*;
use testkit::NodeProcess;
use tokio::time::Instant;

async fn cluster(nodes: &[NodeProcess], replicas: &str) -> anyhow::Result<()> {
    form_cluster(nodes).await?;
    let a = nodes[0].admin;
    post_ok(a, "/settings/rebalance", &[("rebalanceOutDelay", "0")]).await?;
    post_ok(a, "/settings/autoFailover", &[("enabled", "false")]).await?;
    let (s, t) = rest(
        a,
        "POST",
        "/pools/default/buckets",
        Some(ADMIN),
        &[
            ("name", "default"),
            ("ramQuotaMB", "128"),
            ("replicaNumber", replicas),
            ("numVBuckets", "16"),
        ],
    )
    .await?;
    anyhow::ensure!(s == 202, "{s} {t}");
    wait_healthy(a, "default").await?;
    let refs: Vec<&NodeProcess> = nodes.iter().collect();
    wait_states_match(a, &refs, "default", Duration::from_secs(15)).await
}

fn name_of(n: &NodeProcess) -> String {
    format!("n_{}@127.0.0.1", n.admin.port())
}

async fn membership(a: std::net::SocketAddr, name: &str) -> anyhow::Result<String> {
    let pd = ok(a, "GET", "/pools/default", &[], 200).await?;
    Ok(pd["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["otpNode"] == name)
        .map(|n| {
            n["clusterMembership"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .unwrap_or_else(|| "absent".to_owned()))
}

/// Keys whose last acknowledged value is not what their active now serves, and their vbuckets.
async fn lost_writes(
    a: std::net::SocketAddr,
    acked: &std::collections::BTreeMap<String, u64>,
) -> anyhow::Result<(usize, BTreeSet<u16>)> {
    let map = ClientMap::fetch(a, "default").await?;
    let mut lost = 0;
    let mut vbs = BTreeSet::new();
    let mut conns = std::collections::BTreeMap::new();
    for (key, want) in acked {
        let vb = map.vbucket_of(key);
        let addr = map.node_of(vb, 0).unwrap_or_default().to_owned();
        if !conns.contains_key(&addr) {
            conns.insert(addr.clone(), kv(&addr).await?);
        }
        let Some(c) = conns.get_mut(&addr) else {
            continue;
        };
        let got = c
            .get(mcbp::Vbid(vb), key.as_bytes())
            .await?
            .map(|g| String::from_utf8_lossy(&g.value).into_owned());
        if got.as_deref() != Some(want.to_string().as_str()) {
            lost += 1;
            vbs.insert(vb);
        }
    }
    Ok((lost, vbs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_failover_after_a_kill_promotes_replicas_and_keeps_replicated_writes(
) -> anyhow::Result<()> {
    let mut nodes = start_nodes(3)?;
    cluster(&nodes, "1").await?;
    let a = nodes[0].admin;
    // Writes acknowledged and replicated before the kill must all survive.
    let w = Writer::start(a, "default", 300);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = w.finish().await?;
    let refs: Vec<&NodeProcess> = nodes.iter().collect();
    wait_states_match(a, &refs, "default", Duration::from_secs(10)).await?;
    wait_replicas_caught_up(&refs, "default", Duration::from_secs(10)).await?;
    let map_before = ClientMap::fetch(a, "default").await?;
    let sample = ActiveSampler::start(
        nodes.iter().map(|n| n.admin).collect(),
        nodes.iter().map(|n| n.kv.port()).collect(),
        "default",
    );
    // Writes continue while a node dies.
    let w = Writer::start(a, "default", 300);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let victim = nodes.remove(2);
    let victim_name = name_of(&victim);
    let victim_kv = victim.kv.to_string();
    let _dir = victim.kill()?;
    let started = Instant::now();
    let v = ok(
        a,
        "POST",
        "/controller/failOver",
        &[("otpNode", &victim_name)],
        200,
    )
    .await?;
    let took = started.elapsed();
    assert_eq!(v["failedOver"][0], victim_name.as_str(), "{v}");
    assert_eq!(membership(a, &victim_name).await?, "inactiveFailed");
    let refs: Vec<&NodeProcess> = nodes.iter().collect();
    wait_states_match(a, &refs, "default", Duration::from_secs(15)).await?;
    let during = w.finish().await?;
    sample.finish().await?;
    // Every write acknowledged and replicated before the kill is readable (or
    // overwritten by a later acknowledged write: values only grow).
    let map = ClientMap::fetch(a, "default").await?;
    for (key, want) in &before.acked {
        let vb = map.vbucket_of(key);
        let addr = map.node_of(vb, 0).unwrap_or_default().to_owned();
        let mut c = kv(&addr).await?;
        let got = c
            .get(mcbp::Vbid(vb), key.as_bytes())
            .await?
            .and_then(|g| String::from_utf8_lossy(&g.value).parse::<u64>().ok());
        assert!(
            got.is_some_and(|g| g >= *want),
            "{key} (vb {vb}): {got:?}, acknowledged and replicated {want}"
        );
    }
    // Writes acknowledged by the dead node but not yet replicated can be lost (no
    // durability): counted, and only in vbuckets the dead node was active for.
    let mut acked = before.acked.clone();
    acked.extend(during.acked.clone());
    let (lost, vbs) = lost_writes(a, &acked).await?;
    for vb in &vbs {
        assert_eq!(
            map_before.node_of(*vb, 0),
            Some(victim_kv.as_str()),
            "a write was lost in vb {vb}, whose active survived"
        );
    }
    eprintln!("hard failover took {took:?}; {} writes during, {lost} acknowledged-but-unreplicated writes lost in vbuckets {vbs:?}", during.writes);
    let b = ok(a, "GET", "/pools/default/buckets/default", &[], 200).await?;
    assert_eq!(
        b["vBucketServerMap"]["serverList"].as_array().map(Vec::len),
        Some(2),
        "{b}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_refuses_to_lose_the_last_copy_without_force() -> anyhow::Result<()> {
    let nodes = start_nodes(3)?;
    cluster(&nodes, "0").await?;
    let a = nodes[0].admin;
    let victim = name_of(&nodes[2]);
    let (s, t) = rest(
        a,
        "POST",
        "/controller/failOver",
        Some(ADMIN),
        &[("otpNode", &victim)],
    )
    .await?;
    assert_eq!(s, 400, "{t}");
    let e: Value = serde_json::from_str(&t)?;
    assert_eq!(e["kind"], "failover_would_lose_data", "{e}");
    assert!(
        e["vbuckets"].as_array().is_some_and(|v| !v.is_empty()),
        "{e}"
    );
    assert_eq!(membership(a, &victim).await?, "active", "nothing changed");
    // Other refusals (§3.6).
    let (s, t) = rest(
        a,
        "POST",
        "/controller/failOver",
        Some(ADMIN),
        &[("otpNode", "n_1@nowhere")],
    )
    .await?;
    assert_eq!(s, 400, "{t}");
    assert!(t.contains("Unknown server given."), "{t}");
    let (s, t) = rest(
        a,
        "POST",
        "/controller/failOver",
        Some(ADMIN),
        &[("otpNode", &name_of(&nodes[0]))],
    )
    .await?;
    assert_eq!(s, 400, "{t}");
    // With force the map records the loss.
    let v = ok(
        a,
        "POST",
        "/controller/failOver",
        &[("otpNode", &victim), ("force", "true")],
        200,
    )
    .await?;
    assert!(
        v["lost"]["default"]
            .as_array()
            .is_some_and(|l| !l.is_empty()),
        "{v}"
    );
    let (s, t) = rest(
        a,
        "POST",
        "/controller/failOver",
        Some(ADMIN),
        &[("otpNode", &victim)],
    )
    .await?;
    assert_eq!(s, 400, "{t}");
    assert!(t.contains("Inactive server given."), "{t}");
    // `conduit status` shows the failed-over node and the auto-failover state.
    let at = a.to_string();
    let auth = [
        "--cluster",
        at.as_str(),
        "--user",
        ADMIN.0,
        "--password",
        ADMIN.1,
        "--json",
    ];
    let run = |args: &[&str]| {
        let mut v: Vec<&str> = args.to_vec();
        v.extend_from_slice(&auth);
        tokio::task::block_in_place(|| cli(&v))
    };
    let (code, out) = run(&["status"])?;
    assert_eq!(code, 0, "{out:?}");
    assert!(out[0]["autoFailover"]["enabled"].is_boolean(), "{out:?}");
    assert!(
        out[0]["nodes"].to_string().contains("inactiveFailed"),
        "{out:?}"
    );
    // `conduit recovery` marks it for recovery; `conduit failover` refuses typed.
    let (code, out) = run(&["recovery", &victim, "--full"])?;
    assert_eq!(code, 0, "{out:?}");
    assert_eq!(membership(a, &victim).await?, "inactiveAdded");
    let (code, out) = run(&["failover", "n_1@nowhere"])?;
    assert_eq!(code, 1, "{out:?}");
    assert_eq!(out[0]["error"]["kind"], "unknown_node", "{out:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_failover_under_load_loses_nothing_then_delta_recovery_brings_the_node_back(
) -> anyhow::Result<()> {
    let nodes = start_nodes(3)?;
    cluster(&nodes, "1").await?;
    let a = nodes[0].admin;
    // 5,000 distinct documents, so that a full rebuild would stream far more than
    // the few mutations the node misses while it is out.
    let w = Writer::start(a, "default", 5000);
    let sample = ActiveSampler::start(
        nodes.iter().map(|n| n.admin).collect(),
        nodes.iter().map(|n| n.kv.port()).collect(),
        "default",
    );
    w.wait_writes(5000, Duration::from_secs(60)).await?;
    // The official SDK upserts and gets throughout (None: not installed, may skip).
    let sdk = SdkLoad::start(nodes[1].kv, 300).await?;
    let victim = name_of(&nodes[2]);
    let v = ok(
        a,
        "POST",
        "/controller/startGracefulFailover",
        &[("otpNode", &victim)],
        200,
    )
    .await?;
    assert!(v["rebalance_id"].is_string(), "{v}");
    let end = wait_rebalance_end(a, Duration::from_secs(120)).await?;
    assert!(end.get("errorMessage").is_none(), "{end}");
    assert_eq!(membership(a, &victim).await?, "inactiveFailed");
    let r0 = w.finish().await?;
    assert_eq!(r0.failed, 0, "graceful: no failed operation");
    verify_acked(a, "default", &r0.acked).await?;
    // Writes go on while the node is out: delta recovery must stream only those.
    let w = Writer::start(a, "default", 100);
    w.wait_writes(300, Duration::from_secs(60)).await?;
    let r1 = w.finish().await?;
    let mut r = r0;
    r.acked.extend(r1.acked);
    let applied_before = node_stat(&nodes[2], "dcp_items_applied").await?;
    let highs_before = highs(&nodes[2]).await?;
    // Delta recovery: the node keeps its data and comes back mostly by takeovers.
    post_ok(
        a,
        "/controller/setRecoveryType",
        &[("otpNode", &victim), ("recoveryType", "delta")],
    )
    .await?;
    assert_eq!(membership(a, &victim).await?, "inactiveAdded");
    let id = start_rebalance(a, &[]).await?;
    let end = wait_rebalance_end(a, Duration::from_secs(120)).await?;
    assert!(end.get("errorMessage").is_none(), "{end}");
    assert_eq!(membership(a, &victim).await?, "active");
    let report = ok(
        a,
        "GET",
        &format!("/logs/rebalanceReport?reportID={id}"),
        &[],
        200,
    )
    .await?;
    let plan = &report["stageInfo"]["data"]["details"]["default"]["plan"];
    eprintln!("delta recovery plan: {plan}");
    assert_eq!(
        plan["copiesToBuild"], 0,
        "delta recovery reuses the node's copies: {plan}"
    );
    let refs: Vec<&NodeProcess> = nodes.iter().collect();
    wait_states_match(a, &refs, "default", Duration::from_secs(15)).await?;
    wait_replicas_caught_up(&refs, "default", Duration::from_secs(15)).await?;
    verify_acked(a, "default", &r.acked).await?;
    // What replication streamed into the node against the documents it holds: a
    // full rebuild would stream every one of them again.
    let streamed = node_stat(&nodes[2], "dcp_items_applied").await? - applied_before;
    let held = node_stat(&nodes[2], "curr_items").await?;
    let highs_after = highs(&nodes[2]).await?;
    let missed: u64 = highs_after
        .iter()
        .map(|(vb, h)| h.saturating_sub(highs_before.get(vb).copied().unwrap_or(0)))
        .sum();
    eprintln!(
        "delta recovery streamed {streamed} items for {missed} missed mutations; the node holds {held}"
    );
    assert!(held >= 2500, "the node holds {held} of 5000 documents");
    assert!(
        streamed <= missed && streamed < held,
        "delta recovery streamed {streamed} items ({missed} missed, {held} held): not only what it missed"
    );
    if let Some(sdk) = sdk {
        sdk.finish().await?;
    }
    sample.finish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_recovery_wipes_and_rebuilds_the_node() -> anyhow::Result<()> {
    let nodes = start_nodes(3)?;
    cluster(&nodes, "1").await?;
    let a = nodes[0].admin;
    let w = Writer::start(a, "default", 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = w.finish().await?;
    let victim = name_of(&nodes[2]);
    post_ok(a, "/controller/failOver", &[("otpNode", &victim)]).await?;
    post_ok(a, "/controller/reAddNode", &[("otpNode", &victim)]).await?;
    let id = start_rebalance(a, &[]).await?;
    let end = wait_rebalance_end(a, Duration::from_secs(120)).await?;
    assert!(end.get("errorMessage").is_none(), "{end}");
    let report = ok(
        a,
        "GET",
        &format!("/logs/rebalanceReport?reportID={id}"),
        &[],
        200,
    )
    .await?;
    let plan = &report["stageInfo"]["data"]["details"]["default"]["plan"];
    assert!(
        plan["copiesToBuild"].as_u64() > Some(0),
        "full recovery rebuilds: {plan}"
    );
    let refs: Vec<&NodeProcess> = nodes.iter().collect();
    wait_states_match(a, &refs, "default", Duration::from_secs(15)).await?;
    wait_replicas_caught_up(&refs, "default", Duration::from_secs(15)).await?;
    verify_acked(a, "default", &r.acked).await?;
    // The bucket was wiped and re-created: everything it holds came over DCP.
    let (streamed, held) = (
        node_stat(&nodes[2], "dcp_items_applied").await?,
        node_stat(&nodes[2], "curr_items").await?,
    );
    eprintln!("full recovery streamed {streamed} items; the node holds {held}");
    assert!(
        held > 0 && streamed >= held,
        "full recovery streamed {streamed} for {held} held"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_failover_fails_a_dead_node_over_after_its_timeout_and_only_max_count(
) -> anyhow::Result<()> {
    let mut nodes = start_nodes(5)?;
    cluster(&nodes, "2").await?;
    let a = nodes[0].admin;
    let s = ok(
        a,
        "POST",
        "/settings/autoFailover",
        &[("enabled", "true"), ("timeout", "5"), ("maxCount", "1")],
        200,
    )
    .await?;
    assert_eq!(s["timeout"], 5, "{s}");
    // Two nodes die at once; maxCount 1 fails over exactly one.
    let v1 = nodes.remove(4);
    let v2 = nodes.remove(3);
    let names = [name_of(&v1), name_of(&v2)];
    let _d1 = v1.kill()?;
    let _d2 = v2.kill()?;
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(20);
    let decided = loop {
        let mut failed = vec![];
        for n in &names {
            if membership(a, n).await? == "inactiveFailed" {
                failed.push(n.clone());
            }
        }
        if !failed.is_empty() {
            break failed;
        }
        if Instant::now() >= deadline {
            let s = ok(a, "GET", "/settings/autoFailover", &[], 200).await?;
            let pd = ok(a, "GET", "/pools/default", &[], 200).await?;
            anyhow::bail!(
                "no auto-failover within 20 s: {s}\n{pd}\n{}",
                nodes[0]
                    .log()
                    .lines()
                    .filter(|l| l.contains("auto"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let took = killed.elapsed();
    assert_eq!(decided.len(), 1, "maxCount 1: {decided:?}");
    assert!(
        took >= Duration::from_secs(7),
        "not before timeout + 2 s: {took:?}"
    );
    assert!(
        took <= Duration::from_secs(12),
        "committed by 12 s: {took:?}"
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    let still: Vec<String> = {
        let mut v = vec![];
        for n in &names {
            v.push(membership(a, n).await?);
        }
        v
    };
    assert_eq!(
        still.iter().filter(|m| *m == "inactiveFailed").count(),
        1,
        "{still:?}"
    );
    let s = ok(a, "GET", "/settings/autoFailover", &[], 200).await?;
    assert_eq!(s["count"], 1, "{s}");
    eprintln!("auto-failover committed {took:?} after the kill");
    ok(a, "POST", "/settings/autoFailover/resetCount", &[], 200).await?;
    let s = ok(a, "GET", "/settings/autoFailover", &[], 200).await?;
    assert_eq!(s["count"], 0, "{s}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_failover_never_acts_without_a_majority() -> anyhow::Result<()> {
    // 3 nodes, 2 die: the orchestrator sees 1 of 3 — no majority, no failover.
    let mut nodes = start_nodes(3)?;
    cluster(&nodes, "1").await?;
    let a = nodes[0].admin;
    post_ok(
        a,
        "/settings/autoFailover",
        &[("enabled", "true"), ("timeout", "5"), ("maxCount", "2")],
    )
    .await?;
    let v1 = nodes.remove(2);
    let v2 = nodes.remove(1);
    let names = [name_of(&v1), name_of(&v2)];
    let _d1 = v1.kill()?;
    let _d2 = v2.kill()?;
    tokio::time::sleep(Duration::from_secs(12)).await;
    for n in &names {
        assert_eq!(
            membership(a, n).await?,
            "active",
            "no majority: nothing failed over"
        );
    }
    let s = ok(a, "GET", "/settings/autoFailover", &[], 200).await?;
    assert!(
        s["lastRefusal"]
            .as_str()
            .is_some_and(|r| r.contains("majority")),
        "{s}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dying_during_a_rebalance_is_failed_over_and_a_new_rebalance_completes(
) -> anyhow::Result<()> {
    let mut nodes = start_nodes(4)?;
    cluster(&nodes[..3], "1").await?;
    let a = nodes[0].admin;
    post_ok(
        a,
        "/settings/autoFailover",
        &[("enabled", "true"), ("timeout", "5"), ("maxCount", "1")],
    )
    .await?;
    post_ok(a, "/settings/rebalance", &[("rebalanceMovesPerNode", "1")]).await?;
    let w = Writer::start(a, "default", 200);
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
    // A member (not the one being added) dies mid-rebalance: at once, since this
    // bucket's moves can all finish within a few hundred ms.
    let victim = nodes.remove(2);
    let victim_name = name_of(&victim);
    let _dir = victim.kill()?;
    let end = wait_rebalance_end(a, Duration::from_secs(40)).await?;
    let msg = end["errorMessage"].as_str().unwrap_or_default().to_owned();
    assert!(
        !msg.is_empty(),
        "the rebalance ended with a typed reason: {end}"
    );
    // Auto-failover then fails the dead node over.
    let deadline = Instant::now() + Duration::from_secs(30);
    while membership(a, &victim_name).await? != "inactiveFailed" {
        if Instant::now() >= deadline {
            let s = ok(a, "GET", "/settings/autoFailover", &[], 200).await?;
            anyhow::bail!("the dead node was not failed over: {s}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A new rebalance (the dead node is dropped) completes.
    start_rebalance(a, &[]).await?;
    let end = wait_rebalance_end(a, Duration::from_secs(120)).await?;
    assert!(end.get("errorMessage").is_none(), "{end}");
    assert_eq!(
        membership(a, &victim_name).await?,
        "absent",
        "a failed-over node not recovered leaves at the rebalance"
    );
    let refs: Vec<&NodeProcess> = nodes.iter().collect();
    wait_states_match(a, &refs, "default", Duration::from_secs(15)).await?;
    let r = w.finish().await?;
    let (lost, _) = lost_writes(a, &r.acked).await?;
    eprintln!(
        "{} writes, {lost} acknowledged-but-unreplicated writes lost with the dead node",
        r.writes
    );
    Ok(())
}

/// One stat of the node's default group, bucket `default` selected.
async fn node_stat(n: &NodeProcess, name: &str) -> anyhow::Result<u64> {
    let mut c = kv(&format!("127.0.0.1:{}", n.kv.port())).await?;
    let stats = c.stats("").await?;
    stats
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {name} stat in {stats:?}"))
}

/// The high seqno of each vbucket the node holds as active or replica.
async fn highs(n: &NodeProcess) -> anyhow::Result<std::collections::BTreeMap<u16, u64>> {
    let st = states(&[n], "default").await?;
    Ok(st
        .get(&n.kv.port())
        .into_iter()
        .flatten()
        .filter(|(_, (state, _))| state == "active" || state == "replica")
        .map(|(vb, (_, high))| (*vb, *high))
        .collect())
}

/// §8.3 "never during a rebalance": a node whose bucket stops answering (still
/// heartbeating, so the rebalance's own node check does not fire) while the rebalance
/// waits out its out-delay is due for auto-failover; the orchestrator stops the
/// rebalance with the typed reason `auto_failover`, fails the node over, and a new
/// rebalance completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_failover_stops_a_running_rebalance_with_a_typed_reason_then_fails_over(
) -> anyhow::Result<()> {
    let nodes = start_nodes(4)?;
    cluster(&nodes, "1").await?;
    let a = nodes[0].admin;
    post_ok(a, "/settings/rebalance", &[("rebalanceOutDelay", "120")]).await?;
    post_ok(
        a,
        "/settings/autoFailover",
        &[("enabled", "true"), ("timeout", "5"), ("maxCount", "1")],
    )
    .await?;
    let leaving = name_of(&nodes[3]);
    start_rebalance(a, &[&leaving]).await?;
    // Every move done (built, taken over, new replicas made, old copies deleted): the
    // run waits out its out-delay.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, t) = rest(a, "GET", "/pools/default/tasks", Some(ADMIN), &[]).await?;
        let tasks: Value = serde_json::from_str(&t)?;
        let task = &tasks[0];
        anyhow::ensure!(
            task["status"] == "running",
            "the rebalance ended early: {task}"
        );
        let moves = &task["moves"];
        if moves["total"].as_u64() > Some(0) && moves["done"] == moves["total"] {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the moves did not finish: {task}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The victim's bucket goes away behind the cluster's back: not ready, still heartbeating.
    let victim = name_of(&nodes[2]);
    let (s, t) = rest(
        nodes[2].admin,
        "DELETE",
        "/buckets/default",
        Some(("admin", PW)),
        &[],
    )
    .await?;
    anyhow::ensure!(s == 200 || s == 204, "{s} {t}");
    let t0 = Instant::now();
    let end = wait_rebalance_end(a, Duration::from_secs(40)).await?;
    let msg = end["errorMessage"].as_str().unwrap_or_default().to_owned();
    assert!(msg.contains("automatic failover"), "{end}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while membership(a, &victim).await? != "inactiveFailed" {
        anyhow::ensure!(Instant::now() < deadline, "the node was not failed over");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "rebalance stopped and node failed over {:?} after its bucket went",
        t0.elapsed()
    );
    // The report names the reason too.
    let report = ok(a, "GET", "/logs/rebalanceReport", &[], 200).await?;
    assert!(report.to_string().contains("auto_failover"), "{report}");
    // A new rebalance (the failed node and the leaving node go) completes.
    post_ok(a, "/settings/rebalance", &[("rebalanceOutDelay", "0")]).await?;
    start_rebalance(a, &[&leaving]).await?;
    let end = wait_rebalance_end(a, Duration::from_secs(120)).await?;
    assert!(end.get("errorMessage").is_none(), "{end}");
    let refs: Vec<&NodeProcess> = nodes[..2].iter().collect();
    wait_states_match(a, &refs, "default", Duration::from_secs(15)).await?;
    Ok(())
}
