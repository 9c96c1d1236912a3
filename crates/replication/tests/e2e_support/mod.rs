//! Helpers for the end-to-end tests (`tests/e2e.rs`): two real in-process nodes on
//! ephemeral loopback ports, document loading with an expected-state model,
//! convergence waits on the nodes' `vbucket-seqno` stats, document-by-document
//! comparison of an active node (GET) with a replica node (GET_REPLICA), and a
//! transparent TCP tap that records the frames a replicator exchanges with a node.
//!
//! Every wait is bounded by [`BOUND`], which only catches hangs; waits poll a
//! condition, they never sleep for a fixed time to let something happen.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use kv_client::{Client, ClientConfig, Credentials};
use kv_node::{Node, NodeConfig};
use mcbp::kv::{Feature, Get, GetResponse};
use mcbp::{Cas, Datatype, Frame, FrameDecoder, Message, Opcode, Seqno, Status, VbState, Vbid};
use replication::core::CoreConfig;
use replication::{Replicator, ReplicatorConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

pub const BUCKET: &str = "default";
pub const ADMIN: &str = "admin";
pub const PASSWORD: &str = "s3cret";
/// Vbuckets per bucket.
pub const VBUCKETS: u16 = 16;
/// Bound on every await and every condition wait: only to catch hangs.
pub const BOUND: Duration = Duration::from_secs(20);
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

/// A real node with its temporary data directory.
pub struct TestNode {
    pub node: Node,
    _dir: tempfile::TempDir,
}

impl TestNode {
    /// Starts a node on `127.0.0.1:0` listeners, fault injection as asked.
    pub async fn start(fault_injection: bool) -> anyhow::Result<TestNode> {
        let dir = tempfile::tempdir()?;
        let mut cfg = NodeConfig::ephemeral(dir.path(), ADMIN, PASSWORD);
        cfg.enable_fault_injection = fault_injection;
        let kv = TcpListener::bind("127.0.0.1:0").await?;
        let admin = TcpListener::bind("127.0.0.1:0").await?;
        let node = timeout(BOUND, Node::start_with_listeners(cfg, kv, admin)).await??;
        Ok(TestNode { node, _dir: dir })
    }

    pub fn kv(&self) -> String {
        self.node.kv_addr().to_string()
    }

    /// Creates [`BUCKET`] with [`VBUCKETS`] vbuckets, all in `state` (dead if `None`),
    /// through the admin API.
    pub async fn create_bucket(&self, state: Option<VbState>) -> anyhow::Result<()> {
        let mut def = serde_json::json!({
            "name": BUCKET,
            "vbuckets": VBUCKETS,
            "ram_quota_mb": 256,
            "flush_enabled": true,
        });
        if let Some(s) = state {
            def["initial_state"] = s.as_str().into();
        }
        self.admin("POST", "/buckets", Some(&def.to_string()), 201)
            .await
    }

    /// Injects a fault through the admin API (`POST /faults`; the body is the node's
    /// fault JSON, e.g. `{"kind":"drop_add_stream_response","vbucket":5}`).
    pub async fn add_fault(&self, fault: serde_json::Value) -> anyhow::Result<()> {
        self.admin("POST", "/faults", Some(&fault.to_string()), 201)
            .await
    }

    /// Removes every injected fault through the admin API (`DELETE /faults`).
    pub async fn clear_faults(&self) -> anyhow::Result<()> {
        self.admin("DELETE", "/faults", None, 200).await
    }

    /// One admin API call as the admin user; any status but `want` is an error.
    async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        want: u16,
    ) -> anyhow::Result<()> {
        let (status, text) = timeout(
            BOUND,
            testkit::http(
                self.node.admin_addr(),
                method,
                path,
                Some((ADMIN, PASSWORD)),
                body,
            ),
        )
        .await
        .with_context(|| format!("{method} {path} hangs"))??;
        if status != want {
            bail!("{method} {path}: HTTP {status} (wanted {want}): {text}");
        }
        Ok(())
    }

    /// An admin client with [`BUCKET`] selected and JSON/XATTR negotiated (so the
    /// JSON datatype is stored and shown as is).
    pub async fn client(&self) -> anyhow::Result<Client> {
        let cfg = ClientConfig {
            timeout: BOUND,
            ..ClientConfig::default()
        };
        let mut c = Client::connect(&self.kv(), cfg).await?;
        c.auth_plain(&creds()).await?;
        c.select_bucket(BUCKET).await?;
        c.hello("conduit-e2e", &[Feature::Json, Feature::Xattr])
            .await?;
        Ok(c)
    }

    pub fn vb_state(&self, vb: Vbid) -> VbState {
        self.node
            .state()
            .bucket(BUCKET)
            .expect("bucket")
            .bucket
            .vbucket_state(vb)
            .expect("vbucket")
    }

    /// Whether a DCP connection of that name is registered on the node.
    pub fn has_dcp_conn(&self, name: &str) -> bool {
        self.node.state().has_dcp_name(BUCKET, name)
    }

    /// Every live key of `vb`, from the engine.
    pub fn live_keys(&self, vb: Vbid) -> BTreeSet<Bytes> {
        self.expiries(vb).into_keys().collect()
    }

    /// Stored expiry of every live key of `vb`, from the engine (GET does not show
    /// expiry on the wire).
    pub fn expiries(&self, vb: Vbid) -> BTreeMap<Bytes, u32> {
        let items = self
            .node
            .state()
            .bucket(BUCKET)
            .expect("bucket")
            .bucket
            .items_since(vb, Seqno(0), usize::MAX)
            .expect("vbucket");
        let mut out = BTreeMap::new();
        for i in items {
            if i.deleted {
                out.remove(&i.key);
            } else {
                out.insert(i.key.clone(), i.expiry);
            }
        }
        out
    }
}

/// Node A (producer: every vbucket active, faults as asked) and node B (consumer:
/// every vbucket replica, faults as asked).
pub async fn pair(a_faults: bool, b_faults: bool) -> anyhow::Result<(TestNode, TestNode)> {
    let a = TestNode::start(a_faults).await?;
    let b = TestNode::start(b_faults).await?;
    a.create_bucket(Some(VbState::Active)).await?;
    b.create_bucket(Some(VbState::Replica)).await?;
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

/// Polls `cond` until it holds, bounded by [`BOUND`].
pub async fn wait_for<F, Fut>(what: &str, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + BOUND;
    loop {
        if timeout(BOUND, cond()).await.context(what.to_string())?? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting until {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

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
        let (ea, eb) = (a.expiries(*vb), b.expiries(*vb));
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

// ---- tap ----

/// Which way a frame went through the tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the connecting side (the replicator) to the node.
    ToNode,
    /// From the node to the connecting side.
    FromNode,
}

/// A transparent TCP forwarder in front of a node that logs every frame passing
/// and notes who closed each connection. It changes nothing: the replicator and
/// the node talk exactly as they would directly.
pub struct Tap {
    pub addr: String,
    log: Arc<Mutex<Vec<(Dir, Frame)>>>,
    /// Per accepted connection: `Some(dir)` once it ended, `dir` the direction in
    /// which the first EOF or error was seen.
    ends: Arc<Mutex<Vec<Option<Dir>>>>,
    task: JoinHandle<()>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tap {
    pub async fn start(upstream: String) -> anyhow::Result<Tap> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let ends = Arc::new(Mutex::new(Vec::new()));
        let (log2, ends2) = (log.clone(), ends.clone());
        let task = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(node) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let idx = {
                    let mut e = ends2.lock().expect("ends");
                    e.push(None);
                    e.len() - 1
                };
                let (log, ends) = (log2.clone(), ends2.clone());
                conns.push(tokio::spawn(async move {
                    let (cr, cw) = client.into_split();
                    let (nr, nw) = node.into_split();
                    let first = tokio::select! {
                        () = pump(cr, nw, Dir::ToNode, log.clone()) => Dir::ToNode,
                        () = pump(nr, cw, Dir::FromNode, log) => Dir::FromNode,
                    };
                    // Dropping both pumps closes both sockets.
                    ends.lock().expect("ends")[idx] = Some(first);
                }));
            }
            for c in conns {
                c.abort();
            }
        });
        Ok(Tap {
            addr,
            log,
            ends,
            task,
        })
    }

    /// Frames logged so far that match.
    pub fn frames(&self, f: impl Fn(Dir, &Frame) -> bool) -> Vec<Frame> {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|(d, fr)| f(*d, fr))
            .map(|(_, fr)| fr.clone())
            .collect()
    }

    /// How each accepted connection ended so far (`None`: still open).
    pub fn ends(&self) -> Vec<Option<Dir>> {
        self.ends.lock().expect("ends").clone()
    }
}

async fn pump(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    dir: Dir,
    log: Arc<Mutex<Vec<(Dir, Frame)>>>,
) {
    let decoder = FrameDecoder::default();
    let mut copy = BytesMut::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        copy.extend_from_slice(&buf[..n]);
        while let Ok(Some(f)) = decoder.decode(&mut copy) {
            log.lock().expect("log").push((dir, f));
        }
        if wr.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

/// Waits until `tap` has seen `n` connections and every one of them ended.
pub async fn wait_tap_closed(tap: &Tap, n: usize) -> anyhow::Result<Vec<Dir>> {
    wait_for("the tapped connections closed", || async {
        let e = tap.ends();
        Ok(e.len() >= n && e.iter().all(Option::is_some))
    })
    .await?;
    tap.ends()
        .into_iter()
        .map(|d| d.ok_or_else(|| anyhow!("open")))
        .collect()
}

// ---- vbucket states and histories (mover tests) ----

impl TestNode {
    /// SET_VBUCKET over MCBP, as an operator or a failed move would leave it.
    pub async fn set_vb(&self, vb: Vbid, state: VbState) -> anyhow::Result<()> {
        let mut c = self.client().await?;
        timeout(BOUND, c.set_vbucket(vb, state))
            .await?
            .with_context(|| format!("SET_VBUCKET {vb} {state}"))?;
        Ok(())
    }

    /// The vbucket's high seqno from the node's `vbucket-seqno` stat.
    pub async fn high_seqno(&self, vb: Vbid) -> anyhow::Result<u64> {
        let mut c = self.client().await?;
        high_seqnos(&mut c)
            .await?
            .get(&vb.0)
            .copied()
            .with_context(|| format!("no high seqno for {vb}"))
    }
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

// ---- cut tap ----

/// What a [`CutTap`] does with the first frame its trigger matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Drop the connection (both sockets) without forwarding the frame.
    Kill,
    /// Never forward the frame; the connection stays open.
    Swallow,
    /// Answer the request itself with this status instead of forwarding it.
    Refuse(Status),
}

/// A frame-by-frame forwarder in front of a node that does [`Cut`] to the first
/// frame matching its trigger (across all its connections) and forwards everything
/// else unchanged. Used to break a takeover at an exact point of its conversation.
pub struct CutTap {
    pub addr: String,
    fired: Arc<Mutex<bool>>,
    task: JoinHandle<()>,
}

impl Drop for CutTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Trigger = Arc<dyn Fn(Dir, &Frame) -> bool + Send + Sync>;

impl CutTap {
    pub async fn start(
        upstream: String,
        cut: Cut,
        trigger: impl Fn(Dir, &Frame) -> bool + Send + Sync + 'static,
    ) -> anyhow::Result<CutTap> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let fired = Arc::new(Mutex::new(false));
        let trigger: Trigger = Arc::new(trigger);
        let fired2 = fired.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(node) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (fired, trigger) = (fired2.clone(), trigger.clone());
                conns.spawn(async move {
                    let (cr, cw) = client.into_split();
                    let (nr, nw) = node.into_split();
                    let cw = Arc::new(tokio::sync::Mutex::new(cw));
                    let nw = Arc::new(tokio::sync::Mutex::new(nw));
                    let to_node = cut_pump(
                        cr,
                        nw.clone(),
                        cw.clone(),
                        Dir::ToNode,
                        cut,
                        &fired,
                        &trigger,
                    );
                    let from_node = cut_pump(nr, cw, nw, Dir::FromNode, cut, &fired, &trigger);
                    // Either pump ending (EOF, error or a kill) drops both sockets.
                    tokio::select! {
                        () = to_node => {}
                        () = from_node => {}
                    }
                });
            }
            conns.abort_all();
        });
        Ok(CutTap { addr, fired, task })
    }

    /// Whether the trigger matched.
    pub fn fired(&self) -> bool {
        *self.fired.lock().expect("fired")
    }
}

async fn cut_pump(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    fwd: Arc<tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>>,
    back: Arc<tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>>,
    dir: Dir,
    cut: Cut,
    fired: &Mutex<bool>,
    trigger: &Trigger,
) {
    let decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    loop {
        loop {
            let f = match decoder.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return,
            };
            let hit = {
                let mut done = fired.lock().expect("fired");
                let hit = !*done && trigger(dir, &f);
                *done |= hit;
                hit
            };
            let res = match (hit, cut) {
                (true, Cut::Kill) => return,
                (true, Cut::Swallow) => Ok(()),
                (true, Cut::Refuse(status)) => {
                    let answer = mcbp::Response::to_request(&f, status).to_frame();
                    back.lock().await.write_all(answer.bytes()).await
                }
                (false, _) => fwd.lock().await.write_all(f.bytes()).await,
            };
            if res.is_err() {
                return;
            }
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A takeover's SET_VBUCKET_STATE(`state`) on its way to the consumer node.
pub fn takeover_state_to_node(dir: Dir, f: &Frame, state: VbState) -> bool {
    dir == Dir::ToNode
        && f.is_request()
        && f.opcode() == Opcode::DcpSetVbucketState
        && mcbp::dcp::SetVbucketState::parse(f).is_ok_and(|s| s.state == state)
}
