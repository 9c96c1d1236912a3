//! The node's side of the cluster layer's configs (`cluster.md` §2.2 N1–N3), black
//! box against a `conduit node` process: a bucket created with its config never
//! serves the one-node default; configs only move forward by `(revEpoch, rev)`;
//! the cluster-level config is served to connections without a bucket.

use std::path::PathBuf;

use kv_client::{Client, ClientConfig, Credentials};
use mcbp::kv::GetClusterConfig;
use mcbp::Opaque;
use serde_json::{json, Value};
use testkit::{http, NodeProcess, BOUND};

const PW: &str = "adminpw";

fn conduit() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_conduit"))
}

/// GET_CLUSTER_CONFIG, optionally with the version the client knows.
async fn config(c: &mut Client, known: Option<(i64, i64)>) -> anyhow::Result<Option<Value>> {
    let f = c
        .call_ok(&GetClusterConfig {
            opaque: Opaque(7),
            known,
        })
        .await?;
    if f.value().is_empty() {
        return Ok(None);
    }
    Ok(Some(serde_json::from_slice(f.value())?))
}

async fn put(n: &NodeProcess, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
    let (status, text) = http(
        n.admin,
        "PUT",
        path,
        Some(("admin", PW)),
        Some(&body.to_string()),
    )
    .await?;
    Ok((status, serde_json::from_str(&text)?))
}

fn bucket_config(epoch: i64, rev: i64) -> Value {
    json!({"rev": rev, "revEpoch": epoch, "name": "b", "nodeLocator": "vbucket", "tag": format!("{epoch}.{rev}")})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_created_with_its_config_serves_it_and_configs_only_move_forward(
) -> anyhow::Result<()> {
    let n = NodeProcess::start(&conduit(), PW, &[])?;
    let body = json!({
        "name": "b", "vbuckets": 4, "ram_quota_mb": 32, "initial_state": "dead",
        "uuid": "0123456789abcdef0123456789abcdef",
        "cluster_config": bucket_config(1, 5),
    });
    n.admin_call("POST", "/buckets", Some(&body.to_string()), 201)
        .await?;
    let v: Value = serde_json::from_str(&n.admin_call("GET", "/buckets/b", None, 200).await?)?;
    assert_eq!(v["uuid"], "0123456789abcdef0123456789abcdef");
    let mut c = n.client("b").await?;
    // N1: the installed config, never the one-node default.
    assert_eq!(config(&mut c, None).await?, Some(bucket_config(1, 5)));

    // N2: newer installs, the same version is a no-op, older is refused with the
    // version kept.
    assert_eq!(
        put(&n, "/buckets/b/cluster-config", &bucket_config(1, 6)).await?,
        (200, json!({"ok": true}))
    );
    let mut same = bucket_config(1, 6);
    same["tag"] = json!("other body, same version");
    assert_eq!(
        put(&n, "/buckets/b/cluster-config", &same).await?,
        (200, json!({"ok": true}))
    );
    assert_eq!(config(&mut c, None).await?, Some(bucket_config(1, 6)));
    assert_eq!(
        put(&n, "/buckets/b/cluster-config", &bucket_config(1, 4)).await?,
        (409, json!({"error": "stale config", "current": [1, 6]}))
    );
    // A higher epoch wins over a higher rev.
    assert_eq!(
        put(&n, "/buckets/b/cluster-config", &bucket_config(2, 1)).await?,
        (200, json!({"ok": true}))
    );
    assert_eq!(config(&mut c, None).await?, Some(bucket_config(2, 1)));
    // A client that knows this version gets no body; one that knows less gets it.
    assert_eq!(config(&mut c, Some((2, 1))).await?, None);
    assert_eq!(
        config(&mut c, Some((1, 9))).await?,
        Some(bucket_config(2, 1))
    );
    // Without revEpoch the epoch is -1: older than any epoch >= 0.
    assert_eq!(
        put(&n, "/buckets/b/cluster-config", &json!({"rev": 100}))
            .await?
            .0,
        409
    );
    // Bad bodies.
    for bad in [json!({"revEpoch": 3}), json!({"rev": "7"}), json!([1])] {
        assert_eq!(
            put(&n, "/buckets/b/cluster-config", &bad).await?.0,
            400,
            "{bad}"
        );
    }
    assert_eq!(
        put(&n, "/buckets/nope/cluster-config", &bucket_config(9, 9))
            .await?
            .0,
        404
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_level_config_is_served_without_a_bucket_and_only_moves_forward(
) -> anyhow::Result<()> {
    let n = NodeProcess::start(&conduit(), PW, &[])?;
    let cfg = ClientConfig {
        timeout: BOUND,
        ..ClientConfig::default()
    };
    let mut c = Client::connect(&n.kv.to_string(), cfg).await?;
    c.auth_plain(&Credentials {
        user: "admin".into(),
        password: PW.into(),
    })
    .await?;
    // The node's own one-node config before the cluster layer set one.
    let own = config(&mut c, None).await?.expect("a config");
    assert!(own.get("nodesExt").is_some(), "{own}");
    let global = json!({"rev": 3, "revEpoch": 1, "nodesExt": [], "clusterCapabilitiesVer": [1, 0]});
    assert_eq!(
        put(&n, "/cluster-config", &global).await?,
        (200, json!({"ok": true}))
    );
    assert_eq!(config(&mut c, None).await?, Some(global.clone()));
    assert_eq!(
        put(&n, "/cluster-config", &json!({"rev": 2, "revEpoch": 1})).await?,
        (409, json!({"error": "stale config", "current": [1, 3]}))
    );
    assert_eq!(config(&mut c, None).await?, Some(global));
    Ok(())
}

async fn vb_state(n: &NodeProcess, vb: usize) -> anyhow::Result<String> {
    let v: Value = serde_json::from_str(&n.admin_call("GET", "/buckets/b", None, 200).await?)?;
    Ok(v["vbuckets"][vb]["state"]
        .as_str()
        .unwrap_or("?")
        .to_string())
}

/// N6: `--fenced-start` reopens every vbucket dead with its data kept; the data is
/// served again once a vbucket is made active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_start_reopens_every_vbucket_dead_and_keeps_the_data() -> anyhow::Result<()> {
    let n = NodeProcess::start(&conduit(), PW, &[])?;
    let body = json!({"name": "b", "vbuckets": 4, "ram_quota_mb": 32, "initial_state": "active"});
    n.admin_call("POST", "/buckets", Some(&body.to_string()), 201)
        .await?;
    let mut c = n.client("b").await?;
    c.store(
        mcbp::Opcode::Set,
        mcbp::Vbid(2),
        b"k",
        b"v",
        0,
        0,
        mcbp::Cas(0),
        mcbp::Datatype::RAW,
    )
    .await?;
    drop(c);
    // A plain restart restores the states.
    let dir = n.terminate()?;
    let n = NodeProcess::start_in(dir, &conduit(), PW, &[])?;
    assert_eq!(vb_state(&n, 2).await?, "active");
    // A fenced one does not, and keeps the data.
    let dir = n.terminate()?;
    let n = NodeProcess::start_in(dir, &conduit(), PW, &["--fenced-start"])?;
    for vb in 0..4 {
        assert_eq!(vb_state(&n, vb).await?, "dead", "vb {vb}");
    }
    let mut c = n.client("b").await?;
    assert_eq!(
        c.get(mcbp::Vbid(2), b"k").await.expect_err("dead").status(),
        Some(mcbp::Status::NotMyVbucket)
    );
    n.admin_call(
        "PUT",
        "/buckets/b/vbuckets/2",
        Some(r#"{"state":"active"}"#),
        200,
    )
    .await?;
    let got = c.get(mcbp::Vbid(2), b"k").await?.expect("data kept");
    assert_eq!(&got.value[..], b"v");
    Ok(())
}

async fn notified_client(
    n: &NodeProcess,
    features: &[mcbp::kv::Feature],
) -> anyhow::Result<(Client, Vec<mcbp::kv::Feature>)> {
    let mut c = n.client("b").await?;
    let granted = c.hello("notify-test", features).await?;
    Ok((c, granted))
}

/// The next frame must be a NOOP answer: nothing was pushed before it.
async fn nothing_pushed(c: &mut Client) -> anyhow::Result<()> {
    let opaque = c.next_opaque();
    c.call(&mcbp::BareRequest::new(
        mcbp::Opcode::Noop,
        mcbp::Vbid(0),
        opaque,
    ))
    .await?;
    Ok(())
}

/// N4 / §7.3: clients that negotiated DUPLEX plus clustermap change notification
/// get every installed config pushed (full or brief); nobody else gets anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_asked_get_every_installed_config_pushed() -> anyhow::Result<()> {
    use mcbp::kv::Feature;
    let n = NodeProcess::start(&conduit(), PW, &[])?;
    let body = json!({"name": "b", "vbuckets": 4, "ram_quota_mb": 32,
        "cluster_config": bucket_config(1, 5)});
    n.admin_call("POST", "/buckets", Some(&body.to_string()), 201)
        .await?;
    let (mut full, g) = notified_client(
        &n,
        &[
            Feature::Duplex,
            Feature::ClustermapChangeNotification,
            Feature::Json,
        ],
    )
    .await?;
    assert!(g.contains(&Feature::ClustermapChangeNotification), "{g:?}");
    let (mut brief, g) = notified_client(
        &n,
        &[Feature::Duplex, Feature::ClustermapChangeNotificationBrief],
    )
    .await?;
    assert!(
        g.contains(&Feature::ClustermapChangeNotificationBrief),
        "{g:?}"
    );
    // Without DUPLEX the notification feature is not granted.
    let (mut plain, g) = notified_client(&n, &[Feature::ClustermapChangeNotification]).await?;
    assert!(!g.contains(&Feature::ClustermapChangeNotification), "{g:?}");

    put(&n, "/buckets/b/cluster-config", &bucket_config(1, 6)).await?;
    let f = full.read_frame("push").await?;
    assert_eq!(f.magic(), mcbp::Magic::ServerRequest);
    assert_eq!(f.opcode().to_raw(), 0x01);
    assert_eq!(f.key(), b"b");
    let mut extras = Vec::new();
    extras.extend_from_slice(&1i64.to_be_bytes());
    extras.extend_from_slice(&6i64.to_be_bytes());
    assert_eq!(f.extras(), &extras[..]);
    assert_eq!(
        serde_json::from_slice::<Value>(f.value())?,
        bucket_config(1, 6)
    );
    let f = brief.read_frame("push").await?;
    assert_eq!(
        (f.magic(), f.key(), f.extras()),
        (mcbp::Magic::ServerRequest, &b"b"[..], &extras[..])
    );
    assert!(f.value().is_empty());
    // The same version again installs nothing, so nothing is pushed.
    put(&n, "/buckets/b/cluster-config", &bucket_config(1, 6)).await?;
    nothing_pushed(&mut full).await?;
    nothing_pushed(&mut plain).await?;

    // The cluster-level config goes out with an empty key.
    put(
        &n,
        "/cluster-config",
        &json!({"rev": 3, "revEpoch": 1, "nodesExt": []}),
    )
    .await?;
    let f = full.read_frame("push").await?;
    assert_eq!((f.magic(), f.key()), (mcbp::Magic::ServerRequest, &b""[..]));
    assert_eq!(serde_json::from_slice::<Value>(f.value())?["rev"], 3);
    nothing_pushed(&mut plain).await?;
    Ok(())
}
