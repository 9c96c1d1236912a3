//! The cluster with real `conduit node` processes on 127.0.0.1 (cluster.md §10):
//! the harness flow (T15), janitor repair (T6), fenced restart (T17), REST bad input
//! (T14) and the official SDK against 3 nodes with 1 replica, with invariants I1 and
//! I3–I7 checked along the way.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::*;
use testkit::NodeProcess;
use tokio::time::Instant;

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
    post_ok(a, "/controller/ejectNode", &[("otpNode", &fourth)]).await?;
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
    let Some(python) = sdk_python() else {
        return Ok(());
    };
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_groups_put_a_vbuckets_copies_in_different_groups() -> anyhow::Result<()> {
    let nodes = start_nodes(4)?;
    let a = nodes[0].admin;
    let (s, t) = rest(
        a,
        "POST",
        "/clusterInit",
        Some(("admin", PW)),
        &[
            ("username", ADMIN.0),
            ("password", ADMIN.1),
            ("port", "SAME"),
            ("services", "kv"),
        ],
    )
    .await?;
    assert_eq!(s, 200, "{t}");
    for (n, group) in nodes[1..].iter().zip(["Group 1", "Group 2", "Group 2"]) {
        post_ok(
            a,
            "/controller/addNode",
            &[
                ("hostname", &host_port(n)),
                ("user", "admin"),
                ("password", PW),
                ("serverGroup", group),
            ],
        )
        .await?;
    }
    start_rebalance(a, &[]).await?;
    wait_rebalance_end(a, Duration::from_secs(30)).await?;
    let b = create_bucket(a, a, "default", "1").await?;
    let pd = ok(a, "GET", "/pools/default", &[], 200).await?;
    let group_of: BTreeMap<String, String> = pd["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                format!("127.0.0.1:{}", n["ports"]["direct"]),
                n["serverGroup"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let groups = ok(a, "GET", "/pools/default/serverGroups", &[], 200).await?;
    assert_eq!(
        groups["groups"].as_array().map(Vec::len),
        Some(2),
        "{groups}"
    );
    let smap = &b["vBucketServerMap"];
    for (vb, row) in smap["vBucketMap"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let gs: Vec<&String> = row
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| smap["serverList"][usize::try_from(i.as_i64()?).ok()?].as_str())
            .filter_map(|s| group_of.get(s))
            .collect();
        assert_eq!(gs.len(), 2, "vb {vb}: {row}");
        assert_ne!(gs[0], gs[1], "vb {vb}'s copies share group {}", gs[0]);
    }
    Ok(())
}
