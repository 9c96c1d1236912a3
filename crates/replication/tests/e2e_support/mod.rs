//! Helpers for the end-to-end tests (`tests/e2e.rs`): two real in-process nodes on
//! ephemeral loopback ports, document loading with an expected-state model,
//! convergence waits on the nodes' `vbucket-seqno` stats, document-by-document
//! comparison of an active node (GET) with a replica node (GET_REPLICA). The node
//! fixture, the frame tap and the bounded waits are testkit's; this module adds what
//! only these tests need.
//!
//! Every wait is bounded by [`BOUND`], which only catches hangs; waits poll a
//! condition, they never sleep for a fixed time to let something happen.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use kv_client::{Client, Credentials};
use mcbp::kv::{Feature, Get, GetResponse};
use mcbp::{Cas, Datatype, Frame, Message, Opcode, Status, VbState, Vbid};
use replication::core::CoreConfig;
use replication::{Replicator, ReplicatorConfig};
use tokio::time::{timeout, Instant};

pub use testkit::node::{ADMIN, BOUND, PASSWORD};
pub use testkit::tap::{Dir, Tap};
pub use testkit::TestNode;

pub const BUCKET: &str = "default";
/// Vbuckets per bucket.
pub const VBUCKETS: u16 = 16;
/// Condition poll interval.
const POLL: Duration = Duration::from_millis(10);

pub fn creds() -> Credentials {
    Credentials {
        user: ADMIN.into(),
        password: PASSWORD.into(),
    }
}

pub fn vbs(v: impl IntoIterator<Item = u16>) -> BTreeSet<Vbid> {
    v.into_iter().map(Vbid).collect()
}

pub fn all_vbs() -> BTreeSet<Vbid> {
    vbs(0..VBUCKETS)
}

/// An admin client of `node` with [`BUCKET`] selected and JSON/XATTR negotiated (so
/// the JSON datatype is stored and shown as is).
pub async fn client(node: &TestNode) -> anyhow::Result<Client> {
    let mut c = node.client(BUCKET).await?;
    c.hello("conduit-e2e", &[Feature::Json, Feature::Xattr])
        .await?;
    Ok(c)
}

/// Creates [`BUCKET`] with [`VBUCKETS`] vbuckets, all in `state` (dead if `None`),
/// through the admin API.
pub async fn create_bucket(node: &TestNode, state: Option<VbState>) -> anyhow::Result<()> {
    node.create_bucket(BUCKET, VBUCKETS, state).await
}

/// Every live key of `vb`, from the engine.
pub fn live_keys(node: &TestNode, vb: Vbid) -> BTreeSet<Bytes> {
    expiries(node, vb).into_keys().collect()
}

/// Stored expiry of every live key of `vb`, from the engine (GET does not show
/// expiry on the wire).
pub fn expiries(node: &TestNode, vb: Vbid) -> BTreeMap<Bytes, u32> {
    let mut out = BTreeMap::new();
    for i in node.items(BUCKET, vb) {
        if i.deleted {
            out.remove(&i.key);
        } else {
            out.insert(i.key.clone(), i.expiry);
        }
    }
    out
}

async fn start(faults: bool) -> anyhow::Result<TestNode> {
    if faults {
        TestNode::with_faults().await
    } else {
        TestNode::start().await
    }
}

/// Node A (producer: every vbucket active, faults as asked) and node B (consumer:
/// every vbucket replica, faults as asked).
pub async fn pair(a_faults: bool, b_faults: bool) -> anyhow::Result<(TestNode, TestNode)> {
    let a = start(a_faults).await?;
    let b = start(b_faults).await?;
    create_bucket(&a, Some(VbState::Active)).await?;
    create_bucket(&b, Some(VbState::Replica)).await?;
    Ok((a, b))
}

/// A replicator configuration consumer = `consumer`, producer = `producer_addr`
/// (node A itself, or a tap in front of it), node names `nodeB`/`nodeA`, bounds
/// well below [`BOUND`].
pub fn replicator_config(consumer: &TestNode, producer_addr: &str) -> ReplicatorConfig {
    let mut cfg = ReplicatorConfig::new(consumer.kv(), producer_addr, BUCKET, creds());
    cfg.consumer_node = "nodeB".into();
    cfg.producer_node = "nodeA".into();
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.shut_timeout = Duration::from_secs(3);
    cfg.core = CoreConfig {
        setup_timeout: Duration::from_secs(10),
        close_timeout: Duration::from_secs(5),
        takeover_timeout: Duration::from_secs(10),
        shut_timeout: Duration::from_secs(3),
    };
    cfg
}

pub async fn start_replicator(cfg: ReplicatorConfig) -> anyhow::Result<Replicator> {
    Ok(timeout(BOUND, Replicator::start(cfg))
        .await
        .context("replicator start hangs")??)
}

// ---- waiting ----

/// Every vbucket's high seqno from the `vbucket-seqno` stats group.
pub async fn high_seqnos(c: &mut Client) -> anyhow::Result<BTreeMap<u16, u64>> {
    let stats = timeout(BOUND, c.stats("vbucket-seqno")).await??;
    let mut out = BTreeMap::new();
    for (k, v) in stats {
        if let Some(vb) = k
            .strip_prefix("vb_")
            .and_then(|r| r.strip_suffix(":high_seqno"))
        {
            out.insert(vb.parse::<u16>()?, v.trim().parse::<u64>()?);
        }
    }
    Ok(out)
}

/// Waits until B's high seqno equals A's for every vbucket of `which`.
pub async fn wait_converged(
    a: &mut Client,
    b: &mut Client,
    which: &BTreeSet<Vbid>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + BOUND;
    loop {
        let sa = high_seqnos(a).await?;
        let sb = high_seqnos(b).await?;
        let behind: Vec<(u16, Option<&u64>, Option<&u64>)> = which
            .iter()
            .filter(|vb| sa.get(&vb.0) != sb.get(&vb.0))
            .map(|vb| (vb.0, sa.get(&vb.0), sb.get(&vb.0)))
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("replica not caught up: (vb, active high seqno, replica high seqno) {behind:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

// ---- documents ----

/// What a document must look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Doc {
    pub value: Bytes,
    pub flags: u32,
    /// Relative expiry (seconds) as stored, 0 for none.
    pub expiry: u32,
    pub datatype: Datatype,
}

/// The expected state of every key written: `None` once deleted.
pub type Expected = BTreeMap<(u16, String), Option<Doc>>;

/// Seven days: relative (memcached treats up to 30 days as relative), far enough
/// in the future that nothing expires during a test.
pub const FAR_EXPIRY: u32 = 7 * 24 * 3600;

/// A varied document for key number `i` of generation `generation`: JSON (with
/// Couchbase's JSON common flags), binary raw, text raw with a far expiry, larger
/// JSON with custom flags.
pub fn doc_for(i: u32, generation: u32) -> Doc {
    match i % 4 {
        0 => Doc {
            value: Bytes::from(format!(r#"{{"i":{i},"gen":{generation},"kind":"json"}}"#)),
            flags: 0x0200_0006,
            expiry: 0,
            datatype: Datatype::JSON,
        },
        1 => Doc {
            value: Bytes::from(
                (0..(i % 61 + 3))
                    .map(|k| (k * 37 + i + generation) as u8 | 0x80)
                    .collect::<Vec<u8>>(),
            ),
            flags: i,
            expiry: 0,
            datatype: Datatype::RAW,
        },
        2 => Doc {
            value: Bytes::from(format!("text {i} generation {generation}")),
            flags: 0,
            expiry: FAR_EXPIRY,
            datatype: Datatype::RAW,
        },
        _ => Doc {
            value: Bytes::from(format!(
                r#"{{"i":{i},"gen":{generation},"pad":"{}"}}"#,
                "x".repeat(1500)
            )),
            flags: 0xdead_0000 | (i & 0xffff),
            expiry: FAR_EXPIRY,
            datatype: Datatype::JSON,
        },
    }
}

pub fn key(prefix: &str, i: u32) -> String {
    format!("{prefix}-{i:05}")
}

/// Stores `doc` and records it as expected once acknowledged.
pub async fn store(
    c: &mut Client,
    expected: &mut Expected,
    vb: Vbid,
    key: &str,
    doc: Doc,
) -> anyhow::Result<()> {
    timeout(
        BOUND,
        c.store(
            Opcode::Set,
            vb,
            key.as_bytes(),
            &doc.value,
            doc.flags,
            doc.expiry,
            Cas(0),
            doc.datatype,
        ),
    )
    .await?
    .with_context(|| format!("SET {key} in {vb}"))?;
    expected.insert((vb.0, key.to_string()), Some(doc));
    Ok(())
}

pub async fn delete(
    c: &mut Client,
    expected: &mut Expected,
    vb: Vbid,
    key: &str,
) -> anyhow::Result<()> {
    timeout(BOUND, c.delete(vb, key.as_bytes()))
        .await?
        .with_context(|| format!("DELETE {key} in {vb}"))?;
    expected.insert((vb.0, key.to_string()), None);
    Ok(())
}

/// Writes keys `prefix-i` for `i` in `range` (vbucket `i % 16`) as generation
/// `generation`; every tenth key (`i % 10 == 7`) is deleted right after.
pub async fn load(
    c: &mut Client,
    expected: &mut Expected,
    prefix: &str,
    range: std::ops::Range<u32>,
    generation: u32,
) -> anyhow::Result<()> {
    for i in range {
        let vb = Vbid((i % u32::from(VBUCKETS)) as u16);
        let k = key(prefix, i);
        store(c, expected, vb, &k, doc_for(i, generation)).await?;
        if i % 10 == 7 {
            delete(c, expected, vb, &k).await?;
        }
    }
    Ok(())
}

/// GET_REPLICA (0x83): `None` for KEY_ENOENT.
pub async fn get_replica(
    c: &mut Client,
    vb: Vbid,
    key: &str,
) -> anyhow::Result<Option<GetResponse>> {
    let req = Get {
        opcode: Opcode::GetReplica,
        vbucket: vb,
        opaque: c.next_opaque(),
        key: Bytes::copy_from_slice(key.as_bytes()),
    };
    let f = timeout(BOUND, c.call(&req)).await??;
    match f.status() {
        Status::Success => Ok(Some(GetResponse::parse(&f)?)),
        Status::KeyEnoent => Ok(None),
        s => bail!("GET_REPLICA {key} in {vb}: {s}"),
    }
}

pub async fn get(c: &mut Client, vb: Vbid, key: &str) -> anyhow::Result<Option<GetResponse>> {
    timeout(BOUND, c.get(vb, key.as_bytes()))
        .await?
        .with_context(|| format!("GET {key} in {vb}"))
}

fn matches_doc(got: &GetResponse, want: &Doc) -> bool {
    got.value == want.value && got.flags == want.flags && got.datatype == want.datatype
}

/// Document by document: A's GET matches the expected document, B's GET_REPLICA
/// matches A's answer (value, flags, CAS, datatype); deleted keys are missing on
/// both. Returns the number of live documents checked.
pub async fn assert_replicated(
    a: &mut Client,
    b: &mut Client,
    expected: &Expected,
) -> anyhow::Result<usize> {
    let mut live = 0;
    for ((vb, k), want) in expected {
        let vb = Vbid(*vb);
        let on_a = get(a, vb, k).await?;
        let on_b = get_replica(b, vb, k).await?;
        match (want, on_a, on_b) {
            (None, None, None) => {}
            (Some(want), Some(x), Some(y)) => {
                if !matches_doc(&x, want) {
                    bail!("{k} in {vb}: active has {x:?}, expected {want:?}");
                }
                let fields = |r: &GetResponse| (r.value.clone(), r.flags, r.cas, r.datatype);
                if fields(&x) != fields(&y) {
                    bail!("{k} in {vb}: active {x:?} != replica {y:?}");
                }
                live += 1;
            }
            (want, x, y) => {
                bail!("{k} in {vb}: expected {want:?}, active has {x:?}, replica has {y:?}")
            }
        }
    }
    Ok(live)
}

/// The stored expiry of every live key in `which` is the same on both nodes, and
/// the keys written with an expiry have one.
pub fn assert_same_expiries(
    a: &TestNode,
    b: &TestNode,
    which: &BTreeSet<Vbid>,
    expected: &Expected,
) -> anyhow::Result<()> {
    for vb in which {
        let (ea, eb) = (expiries(a, *vb), expiries(b, *vb));
        if ea != eb {
            bail!("{vb}: stored expiries differ between active and replica");
        }
        for ((v, k), doc) in expected {
            if *v != vb.0 {
                continue;
            }
            if let Some(d) = doc {
                let stored = ea.get(k.as_bytes()).copied();
                if (d.expiry != 0) != stored.is_some_and(|e| e != 0) {
                    bail!("{k} in {vb}: expiry {} stored as {stored:?}", d.expiry);
                }
            }
        }
    }
    Ok(())
}

// ---- vbucket states and histories (mover tests) ----

/// The vbucket's high seqno from the node's `vbucket-seqno` stat.
pub async fn high_seqno(node: &TestNode, vb: Vbid) -> anyhow::Result<u64> {
    let mut c = client(node).await?;
    high_seqnos(&mut c)
        .await?
        .get(&vb.0)
        .copied()
        .with_context(|| format!("no high seqno for {vb}"))
}

/// Writes keys `prefix-i` for `i` in `range`, all into `vb`, recording each
/// acknowledged write in `expected`.
pub async fn load_vb(
    c: &mut Client,
    expected: &mut Expected,
    vb: Vbid,
    prefix: &str,
    range: std::ops::Range<u32>,
) -> anyhow::Result<()> {
    for i in range {
        store(c, expected, vb, &key(prefix, i), doc_for(i, 0)).await?;
    }
    Ok(())
}

/// Every expected document of `vb` is readable (GET, so the node must have the
/// vbucket active) with its value, flags and datatype; deleted ones are missing.
pub async fn assert_active_has(
    c: &mut Client,
    vb: Vbid,
    expected: &Expected,
) -> anyhow::Result<usize> {
    let mut live = 0;
    for ((v, k), want) in expected {
        if *v != vb.0 {
            continue;
        }
        match (want, get(c, vb, k).await?) {
            (None, None) => {}
            (Some(d), Some(got)) if matches_doc(&got, d) => live += 1,
            (want, got) => bail!("{k} in {vb}: expected {want:?}, found {got:?}"),
        }
    }
    Ok(live)
}

/// A takeover's SET_VBUCKET_STATE(`state`) on its way to the consumer node.
pub fn takeover_state_to_node(dir: Dir, f: &Frame, state: VbState) -> bool {
    dir == Dir::ToNode
        && f.is_request()
        && f.opcode() == Opcode::DcpSetVbucketState
        && mcbp::dcp::SetVbucketState::parse(f).is_ok_and(|s| s.state == state)
}
