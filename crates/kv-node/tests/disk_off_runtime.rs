//! Disk work never runs on the node's async workers: a session whose command has to
//! commit (SET_VBUCKET to active, DEL_VBUCKET) waits for a blocking-pool thread,
//! and every other connection keeps being served meanwhile.
//!
//! The node runs on its own runtime with ONE worker thread, and every commit is held
//! at a gate (the engine's commit hook) until the test opens it. Were the commit made
//! on the worker, the worker would be stuck and nobody else would get an answer.

mod dcp_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dcp_support::{wait_until, Splice};
use kv_client::Client;
use kv_engine::CommitHook;
use kv_node::{BucketMeta, Node, NodeConfig};
use mcbp::dcp::StreamFlags;
use mcbp::kv::{DelVbucket, SetVbucket};
use mcbp::{BareRequest, Message, Opaque, Opcode, Status, VbState, Vbid};
use testkit::node::*;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Holds every commit while armed until opened; reports each held commit.
struct Gate {
    armed: AtomicBool,
    open: Mutex<bool>,
    opened: Condvar,
    entered: mpsc::UnboundedSender<()>,
}

impl Gate {
    fn new() -> (Arc<Gate>, mpsc::UnboundedReceiver<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let gate = Arc::new(Gate {
            armed: AtomicBool::new(false),
            open: Mutex::new(false),
            opened: Condvar::new(),
            entered: tx,
        });
        (gate, rx)
    }

    fn hook(self: &Arc<Gate>) -> CommitHook {
        let gate = self.clone();
        CommitHook::new(move || {
            if !gate.armed.load(Ordering::SeqCst) {
                return;
            }
            let _ = gate.entered.send(());
            let mut open = gate.open.lock().unwrap_or_else(|e| e.into_inner());
            while !*open {
                open = gate.opened.wait(open).unwrap_or_else(|e| e.into_inner());
            }
        })
    }

    fn open(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.opened.notify_all();
    }
}

/// Opens the gate however the test ends, so the node's threads can finish.
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// A node on its own one-worker runtime, with bucket `default` (4 vbuckets).
struct SlowDiskNode {
    rt: Option<tokio::runtime::Runtime>,
    tn: Option<TestNode>,
}

impl SlowDiskNode {
    async fn start(hook: CommitHook, initial: VbState) -> anyhow::Result<SlowDiskNode> {
        let dir = tempfile::tempdir()?;
        let mut cfg = NodeConfig::ephemeral(dir.path(), ADMIN, PASSWORD);
        // The flusher must not commit behind the test's back.
        cfg.flush_interval = Duration::from_secs(3600);
        cfg.commit_hook = Some(hook);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let kv = std::net::TcpListener::bind("127.0.0.1:0")?;
        let admin = std::net::TcpListener::bind("127.0.0.1:0")?;
        kv.set_nonblocking(true)?;
        admin.set_nonblocking(true)?;
        let node = timeout(
            BOUND,
            rt.spawn(async move {
                let kv = tokio::net::TcpListener::from_std(kv)?;
                let admin = tokio::net::TcpListener::from_std(admin)?;
                anyhow::Ok(Node::start_with_listeners(cfg, kv, admin).await?)
            }),
        )
        .await???;
        node.state().create_bucket(
            BucketMeta {
                name: "default".to_string(),
                vbuckets: 4,
                ram_quota_mb: 64,
                flush_enabled: false,
                uuid: None,
            },
            Some(initial),
        )?;
        Ok(SlowDiskNode {
            rt: Some(rt),
            tn: Some(TestNode { node, dir }),
        })
    }

    fn tn(&self) -> &TestNode {
        self.tn.as_ref().expect("running")
    }

    async fn client(&self) -> anyhow::Result<Client> {
        self.tn().client("default").await
    }

    async fn shutdown(mut self) -> anyhow::Result<()> {
        if let (Some(rt), Some(tn)) = (self.rt.as_ref(), self.tn.take()) {
            timeout(BOUND, rt.spawn(tn.node.shutdown())).await??;
        }
        Ok(())
    }
}

impl Drop for SlowDiskNode {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Checks that `b` is answered at once although a commit is held at the gate.
async fn still_answered(b: &mut Client) {
    let noop = BareRequest::new(Opcode::Noop, Vbid(0), Opaque(77));
    let answered = timeout(Duration::from_secs(5), b.call_ok(&noop)).await;
    assert!(
        matches!(answered, Ok(Ok(_))),
        "a NOOP on another connection was not answered while a commit was in progress: \
         the commit runs on the async worker ({answered:?})"
    );
}

/// Sends `req` on `a` (which must commit), waits until the commit is held, and
/// checks that `b` is still answered; then lets the commit finish.
async fn other_sessions_stay_responsive_while(req: Bytes) -> anyhow::Result<()> {
    let (gate, mut entered) = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let node = SlowDiskNode::start(gate.hook(), VbState::Replica).await?;
    let mut a = node.client().await?;
    let mut b = node.client().await?;
    gate.armed.store(true, Ordering::SeqCst);
    a.send_bytes(&req).await?;
    timeout(BOUND, entered.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("gate dropped"))?;
    // The commit is now held. Another connection must still get its answer.
    still_answered(&mut b).await;
    gate.open();
    let answer = timeout(BOUND, a.read_frame("answer")).await??;
    assert_eq!(answer.status(), Status::Success);
    node.shutdown().await
}

#[tokio::test]
async fn set_vbucket_active_commits_off_the_async_workers() -> anyhow::Result<()> {
    let mut req = bytes::BytesMut::new();
    SetVbucket {
        vbucket: Vbid(0),
        opaque: Opaque(1),
        state: VbState::Active,
        value: Bytes::new(),
    }
    .encode(&mut req);
    other_sessions_stay_responsive_while(req.freeze()).await
}

#[tokio::test]
async fn del_vbucket_commits_off_the_async_workers() -> anyhow::Result<()> {
    let mut req = bytes::BytesMut::new();
    DelVbucket {
        vbucket: Vbid(1),
        opaque: Opaque(1),
        value: Bytes::new(),
    }
    .encode(&mut req);
    other_sessions_stay_responsive_while(req.freeze()).await
}

/// §7.9 takeover: the consumer node's DCP connection makes its vbucket active on the
/// producer's SET_VBUCKET_STATE(active), which commits the new failover entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_to_active_commits_off_the_dcp_consumers_worker() -> anyhow::Result<()> {
    let (gate, mut entered) = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let a = TestNode::start().await?;
    a.create_bucket("default", 4, Some(VbState::Active)).await?;
    let b = SlowDiskNode::start(gate.hook(), VbState::Replica).await?;
    let mut probe = b.client().await?;
    let tk = Splice::open(
        &a,
        b.tn(),
        "default",
        "replication:takeover:1:a->b:default:0",
    )
    .await?;
    gate.armed.store(true, Ordering::SeqCst);
    tk.send_add_stream(0, StreamFlags::TAKEOVER);
    timeout(BOUND, entered.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("gate dropped"))?;
    still_answered(&mut probe).await;
    gate.open();
    let vb0 = |n: &TestNode| {
        n.node
            .state()
            .bucket("default")
            .and_then(|e| e.bucket.vbucket_state(Vbid(0)).ok())
    };
    wait_until("the vbucket moved", || {
        vb0(b.tn()) == Some(VbState::Active) && vb0(&a) == Some(VbState::Dead)
    })
    .await?;
    drop(tk);
    b.shutdown().await
}
