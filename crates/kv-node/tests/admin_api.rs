//! The admin HTTP API: the routes scripts and tests rely on.

use serde_json::Value;
use testkit::http;
use testkit::node::*;

#[tokio::test]
async fn bucket_routes_create_list_inspect_change_and_delete() -> anyhow::Result<()> {
    let n = TestNode::start().await?;
    let a = n.node.admin_addr();
    let auth = Some((ADMIN, PASSWORD));
    assert_eq!(http(a, "GET", "/health", None, None).await?.0, 200);
    assert_eq!(http(a, "GET", "/buckets", None, None).await?.0, 401);
    assert_eq!(
        http(a, "GET", "/buckets", Some((ADMIN, "bad")), None)
            .await?
            .0,
        401
    );

    let body = r#"{"name":"default","vbuckets":16,"ram_quota_mb":64}"#;
    assert_eq!(http(a, "POST", "/buckets", auth, Some(body)).await?.0, 201);
    assert_eq!(http(a, "POST", "/buckets", auth, Some(body)).await?.0, 409);
    let (status, msg) = http(
        a,
        "POST",
        "/buckets",
        auth,
        Some(r#"{"name":"x","vbuckets":"many"}"#),
    )
    .await?;
    assert_eq!(status, 400, "{msg}");
    assert!(msg.contains("error"), "{msg}");
    assert_eq!(
        http(a, "POST", "/buckets", auth, Some(r#"{"name":"bad name!"}"#))
            .await?
            .0,
        400
    );

    let (status, text) = http(a, "GET", "/buckets/default", auth, None).await?;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text)?;
    assert_eq!(v["vbuckets"].as_array().map(Vec::len), Some(16));
    assert_eq!(v["vbuckets"][3]["state"], "dead", "vbuckets start dead");

    assert_eq!(
        http(
            a,
            "PUT",
            "/buckets/default/vbuckets/3",
            auth,
            Some(r#"{"state":"active"}"#)
        )
        .await?
        .0,
        200
    );
    assert_eq!(
        http(
            a,
            "PUT",
            "/buckets/default/vbuckets/3",
            auth,
            Some(r#"{"state":"sleepy"}"#)
        )
        .await?
        .0,
        400
    );
    assert_eq!(
        http(
            a,
            "PUT",
            "/buckets/default/vbuckets/99",
            auth,
            Some(r#"{"state":"active"}"#)
        )
        .await?
        .0,
        404
    );
    let v: Value = serde_json::from_str(&http(a, "GET", "/buckets/default", auth, None).await?.1)?;
    assert_eq!(v["vbuckets"][3]["state"], "active");
    assert_ne!(
        v["vbuckets"][3]["uuid"], 0,
        "activation pushes a failover entry"
    );

    let (status, text) = http(a, "GET", "/buckets", auth, None).await?;
    assert_eq!(status, 200);
    let list: Value = serde_json::from_str(&text)?;
    assert_eq!(list[0]["name"], "default");

    assert_eq!(
        http(a, "DELETE", "/buckets/default", auth, None).await?.0,
        200
    );
    assert_eq!(http(a, "GET", "/buckets/default", auth, None).await?.0, 404);
    assert_eq!(
        http(a, "DELETE", "/buckets/default", auth, None).await?.0,
        404
    );
    Ok(())
}

#[tokio::test]
async fn initial_state_and_fault_routes() -> anyhow::Result<()> {
    let n = TestNode::start().await?;
    let a = n.node.admin_addr();
    let auth = Some((ADMIN, PASSWORD));
    let body = r#"{"name":"b","vbuckets":4,"ram_quota_mb":16,"initial_state":"replica"}"#;
    assert_eq!(http(a, "POST", "/buckets", auth, Some(body)).await?.0, 201);
    let v: Value = serde_json::from_str(&http(a, "GET", "/buckets/b", auth, None).await?.1)?;
    assert!(v["vbuckets"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|vb| vb["state"] == "replica"));
    // Fault routes exist only with fault injection enabled.
    assert_eq!(http(a, "GET", "/faults", auth, None).await?.0, 404);
    let f = TestNode::start_with(|c| c.enable_fault_injection = true).await?;
    let fa = f.node.admin_addr();
    let fault = r#"{"kind":"drop_add_stream_response","vbucket":3}"#;
    assert_eq!(http(fa, "POST", "/faults", auth, Some(fault)).await?.0, 201);
    assert_eq!(
        http(fa, "POST", "/faults", auth, Some(r#"{"kind":"bogus"}"#))
            .await?
            .0,
        400
    );
    let (_, listed) = http(fa, "GET", "/faults", auth, None).await?;
    assert!(listed.contains("drop_add_stream_response"), "{listed}");
    assert_eq!(http(fa, "DELETE", "/faults", auth, None).await?.0, 200);
    assert_eq!(http(fa, "GET", "/faults", auth, None).await?.1, "[]");
    Ok(())
}

#[tokio::test]
async fn buckets_and_ports_survive_a_restart() -> anyhow::Result<()> {
    let n = TestNode::start().await?;
    let auth = Some((ADMIN, PASSWORD));
    let body = r#"{"name":"keep","vbuckets":8,"ram_quota_mb":16,"flush_enabled":true}"#;
    assert_eq!(
        http(n.node.admin_addr(), "POST", "/buckets", auth, Some(body))
            .await?
            .0,
        201
    );
    let ports: Value =
        serde_json::from_str(&std::fs::read_to_string(n.dir.path().join("ports.json"))?)?;
    assert_eq!(ports["kv"], n.node.kv_addr().port());
    assert_eq!(ports["admin"], n.node.admin_addr().port());
    let TestNode { node, dir } = n;
    node.shutdown().await;
    let n = TestNode::start_in(dir, |_| {}).await?;
    let v: Value = serde_json::from_str(
        &http(n.node.admin_addr(), "GET", "/buckets/keep", auth, None)
            .await?
            .1,
    )?;
    assert_eq!(v["num_vbuckets"], 8);
    assert_eq!(v["flush_enabled"], true);
    Ok(())
}

#[tokio::test]
async fn refusals_are_typed_401_without_credentials_and_403_without_the_admin_role(
) -> anyhow::Result<()> {
    let n = TestNode::start_with(|cfg| {
        cfg.bucket_users.push(kv_node::BucketUserConfig {
            name: "reader".into(),
            password: "rpw".into(),
            bucket: "default".into(),
        });
    })
    .await?;
    let a = n.node.admin_addr();
    let (status, body) = http(a, "GET", "/buckets", Some((ADMIN, "bad")), None).await?;
    assert_eq!(status, 401);
    let v: Value = serde_json::from_str(&body)?;
    assert_eq!(v["kind"], "unauthorized", "{body}");
    let (status, body) = http(a, "GET", "/buckets", Some(("reader", "rpw")), None).await?;
    assert_eq!(status, 403, "{body}");
    let v: Value = serde_json::from_str(&body)?;
    assert_eq!(v["kind"], "forbidden", "{body}");
    Ok(())
}
