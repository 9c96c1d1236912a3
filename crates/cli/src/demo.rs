//! `conduit demo`: the whole system on one machine, on an embedded default. Two
//! nodes start in-process on temporary data directories; documents are loaded into
//! node A; every vbucket is replicated to node B through the proxy with a progress
//! bar; a few vbuckets are moved to B by takeover; every document is verified.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kv_client::{Client, ClientConfig, Credentials};
use kv_node::{BucketMeta, Node, NodeConfig};
use mcbp::kv::{Get, GetResponse, Store};
use mcbp::{Cas, Datatype, Message, Opaque, Opcode, Status, VbState, Vbid};
use replication::{ManagerConfig, ReplicationManager};
use tokio::net::TcpListener;

use crate::bench::vbucket_of;

/// Flags of `conduit demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Documents to load.
    #[arg(long, default_value_t = 20_000)]
    docs: u32,
    /// vbuckets in the bucket.
    #[arg(long, default_value_t = 64)]
    vbuckets: u16,
    /// How many vbuckets to move from A to B.
    #[arg(long, default_value_t = 4)]
    moves: u16,
    /// Bound, in seconds, on every wait.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

const USER: &str = "Administrator";
const PASSWORD: &str = "demo-password";
const BUCKET: &str = "demo";

async fn start_node(dir: &std::path::Path) -> anyhow::Result<Node> {
    let cfg = NodeConfig::ephemeral(dir, USER, PASSWORD);
    let kv = TcpListener::bind("127.0.0.1:0").await?;
    let admin = TcpListener::bind("127.0.0.1:0").await?;
    Ok(Node::start_with_listeners(cfg, kv, admin).await?)
}

fn creds() -> Credentials {
    Credentials {
        user: USER.into(),
        password: PASSWORD.into(),
    }
}

async fn client(node: &Node, timeout: Duration) -> anyhow::Result<Client> {
    let mut c = Client::connect(
        &node.kv_addr().to_string(),
        ClientConfig {
            timeout,
            ..ClientConfig::default()
        },
    )
    .await?;
    c.auth_scram(kv_client::scram::ScramMech::Sha512, &creds())
        .await?;
    c.select_bucket(BUCKET).await?;
    c.hello("conduit-demo", &[mcbp::kv::Feature::Json]).await?;
    Ok(c)
}

fn key(i: u32) -> Bytes {
    Bytes::from(format!("user::{i:06}"))
}

fn value(i: u32) -> Bytes {
    Bytes::from(format!(
        r#"{{"id":{i},"name":"user {i}","score":{}}}"#,
        i.wrapping_mul(7919) % 1000
    ))
}

async fn sum_high_seqnos(c: &mut Client) -> anyhow::Result<u64> {
    Ok(c.stats("vbucket-seqno")
        .await?
        .iter()
        .filter(|(k, _)| k.ends_with(":high_seqno"))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum())
}

pub(crate) async fn run(a: DemoArgs) -> anyhow::Result<()> {
    let t = Duration::from_secs(a.timeout);
    let dir_a = tempfile::tempdir()?;
    let dir_b = tempfile::tempdir()?;
    let node_a = start_node(dir_a.path()).await.context("starting node A")?;
    let node_b = start_node(dir_b.path()).await.context("starting node B")?;
    println!(
        "node A: kv {} (data in {})",
        node_a.kv_addr(),
        dir_a.path().display()
    );
    println!(
        "node B: kv {} (data in {})",
        node_b.kv_addr(),
        dir_b.path().display()
    );
    let meta = BucketMeta {
        name: BUCKET.into(),
        vbuckets: a.vbuckets,
        ram_quota_mb: 512,
        flush_enabled: false,
        uuid: None,
    };
    node_a
        .state()
        .create_bucket(meta.clone(), Some(VbState::Active))?;
    node_b.state().create_bucket(meta, Some(VbState::Replica))?;

    // Load, pipelined.
    let t0 = Instant::now();
    let mut ca = client(&node_a, t).await?;
    let mut batch = BytesMut::new();
    for chunk_start in (0..a.docs).step_by(500) {
        batch.clear();
        let end = (chunk_start + 500).min(a.docs);
        for i in chunk_start..end {
            let k = key(i);
            let vb = Vbid(vbucket_of(&k, a.vbuckets));
            Store {
                opcode: Opcode::SetQ,
                vbucket: vb,
                opaque: Opaque(i),
                cas: Cas(0),
                datatype: Datatype::JSON,
                flags: 0x0200_0000,
                expiry: 0,
                key: k,
                value: value(i),
            }
            .encode(&mut batch);
        }
        ca.send_bytes(&batch).await?;
        ca.call_ok(&mcbp::BareRequest::new(
            Opcode::Noop,
            Vbid(0),
            Opaque(u32::MAX),
        ))
        .await
        .context("a quiet SET failed")?;
    }
    let load_secs = t0.elapsed().as_secs_f64();
    println!(
        "loaded {} JSON documents into node A in {:.2} s ({:.0} docs/s)",
        a.docs,
        load_secs,
        f64::from(a.docs) / load_secs
    );

    // Replicate every vbucket A -> B through the proxy.
    let mut cfg = ManagerConfig::new(BUCKET, "node-b", node_b.kv_addr().to_string(), creds());
    cfg.nodes
        .insert("node-a".into(), node_a.kv_addr().to_string());
    let manager = ReplicationManager::new(cfg);
    let all: BTreeSet<Vbid> = (0..a.vbuckets).map(Vbid).collect();
    let t1 = Instant::now();
    let map = std::iter::once(("node-a".to_string(), all)).collect();
    manager
        .set_incoming_replication_map(map)
        .await
        .context("setting up replication")?;
    let total = sum_high_seqnos(&mut ca).await?;
    let mut cb = client(&node_b, t).await?;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("replicating A -> B {bar:40} {pos}/{len} mutations {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    loop {
        let done = sum_high_seqnos(&mut cb).await?;
        bar.set_position(done.min(total));
        if done >= total {
            break;
        }
        if t1.elapsed() > t {
            bar.abandon();
            bail!("replication did not catch up within {t:?} ({done} of {total} mutations)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bar.finish();
    let repl_secs = t1.elapsed().as_secs_f64();
    println!(
        "replicated {total} mutations to node B in {repl_secs:.2} s ({:.0}/s)",
        total as f64 / repl_secs
    );

    // Move a few vbuckets to B by takeover.
    let moved: Vec<Vbid> = (0..a.moves.min(a.vbuckets)).map(Vbid).collect();
    for vb in &moved {
        let t2 = Instant::now();
        manager
            .takeover("node-a", *vb)
            .await
            .with_context(|| format!("taking over {vb}"))?;
        println!(
            "moved {vb} to node B in {:.1} ms",
            t2.elapsed().as_secs_f64() * 1000.0
        );
    }

    // Verify every document.
    let moved_set: BTreeSet<Vbid> = moved.iter().copied().collect();
    let (mut on_b_active, mut on_b_replica) = (0u32, 0u32);
    for i in 0..a.docs {
        let k = key(i);
        let vb = Vbid(vbucket_of(&k, a.vbuckets));
        let want = value(i);
        if moved_set.contains(&vb) {
            let g = cb
                .get(vb, &k)
                .await?
                .with_context(|| format!("{k:?} missing on B after the move"))?;
            anyhow::ensure!(g.value == want, "{k:?} differs on B");
            anyhow::ensure!(
                ca.get(vb, &k).await.err().and_then(|e| e.status()) == Some(Status::NotMyVbucket),
                "{vb} still active on A"
            );
            on_b_active += 1;
        } else {
            let ga = ca
                .get(vb, &k)
                .await?
                .with_context(|| format!("{k:?} missing on A"))?;
            let o = cb.next_opaque();
            let f = cb
                .call_ok(&Get {
                    opcode: Opcode::GetReplica,
                    vbucket: vb,
                    opaque: o,
                    key: k.clone(),
                })
                .await
                .with_context(|| format!("{k:?} replica on B"))?;
            let gb = GetResponse::parse(&f)?;
            anyhow::ensure!(
                ga.value == want && gb.value == want && ga.cas == gb.cas && ga.flags == gb.flags,
                "{k:?} replica differs"
            );
            on_b_replica += 1;
        }
    }
    println!("verified {} documents: {on_b_replica} identical on A (active) and B (replica), {on_b_active} active on B after the move", a.docs);
    for (name, c) in [("A", &mut ca), ("B", &mut cb)] {
        let mut counts = std::collections::BTreeMap::new();
        for (_, state) in c.stats("vbucket").await? {
            *counts.entry(state).or_insert(0u32) += 1;
        }
        let summary: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
        println!("node {name} vbuckets: {}", summary.join(", "));
    }
    for (node, vbs) in manager.get_actual_replications() {
        println!("replicating {} vbuckets from {node} to node-b", vbs.len());
    }
    manager.shutdown().await;
    node_a.shutdown().await;
    node_b.shutdown().await;
    println!("demo complete");
    Ok(())
}
