//! One vbucket move (cluster.md §5.3) against real in-process kv-nodes, each with
//! its agent (the fixture of `tests/agent.rs`): the move drives the agents, a fake
//! [`Commit`] records the runner's steps 8–9.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use kv_client::{Client, Credentials};
use kv_node::{AdminExtension, Node, NodeConfig};
use mcbp::{Cas, Datatype, Opcode, Vbid};
use orchestrator::agent::api::{
    ApplyRequest, BuildRequest, JoinRequest, Phase, PutBucket, UnreplicateRequest, VbReport,
    VbucketsReport,
};
use orchestrator::agent::{AddressEntry, Agent, AgentClient, AgentConfig, Creds};
use orchestrator::map::{Move, NodeId};
use orchestrator::orch::one_move::{
    run_move, Commit, MoveBounds, MoveCtx, MoveError, MoveEvent, MoveNode, Step,
};
use orchestrator::rest::error::RestError;
use testkit::node::{client_config, ADMIN, BOUND, PASSWORD};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::timeout;

const CLUSTER: &str = "c0ffee00c0ffee00c0ffee00c0ffee00";
const BUCKET: &str = "default";
const VBS: u16 = 4;
/// Bound of a whole move in these tests.
const MOVE_BOUND: Duration = Duration::from_secs(60);

/// A kv-node with its agent.
struct Member {
    node: Node,
    agent: Arc<Agent>,
    _dir: tempfile::TempDir,
}

impl Member {
    async fn start() -> anyhow::Result<Member> {
        let dir = tempfile::tempdir()?;
        let kv = TcpListener::bind("127.0.0.1:0").await?;
        let admin = TcpListener::bind("127.0.0.1:0").await?;
        let agent = Agent::start(agent_config(
            dir.path(),
            admin.local_addr()?,
            kv.local_addr()?,
        ))
        .await?;
        let mut cfg = NodeConfig::ephemeral(dir.path(), ADMIN, PASSWORD);
        cfg.admin_extension = Some(AdminExtension {
            router: agent.router(),
            public: Vec::new(),
        });
        let node = timeout(BOUND, Node::start_with_listeners(cfg, kv, admin))
            .await
            .context("node start hangs")??;
        Ok(Member {
            node,
            agent,
            _dir: dir,
        })
    }

    fn entry(&self, name: &str) -> AddressEntry {
        AddressEntry {
            name: name.to_string(),
            host: "127.0.0.1".to_string(),
            kv_port: self.node.kv_addr().port(),
            admin_port: self.node.admin_addr().port(),
        }
    }

    /// The orchestrator's client: internal user, cluster headers.
    fn client(&self, name: &str) -> AgentClient {
        AgentClient::new(
            self.node.admin_addr().to_string(),
            name,
            internal(),
            Some(CLUSTER.to_string()),
            1,
        )
    }

    async fn kv_client(&self) -> anyhow::Result<Client> {
        let mut c = Client::connect(&self.node.kv_addr().to_string(), client_config()).await?;
        c.auth_plain(&Credentials {
            user: ADMIN.into(),
            password: PASSWORD.into(),
        })
        .await?;
        c.select_bucket(BUCKET).await?;
        Ok(c)
    }

    async fn stop(self) {
        self.agent.shutdown().await;
        self.node.shutdown().await;
    }
}

fn agent_config(dir: &Path, admin_addr: SocketAddr, kv: SocketAddr) -> AgentConfig {
    AgentConfig::new(
        dir,
        admin_addr,
        kv,
        Creds {
            user: ADMIN.into(),
            password: PASSWORD.into(),
        },
    )
}

fn internal() -> Creds {
    Creds {
        user: "@conduit".into(),
        password: "0123456789abcdef0123456789abcdef".into(),
    }
}

fn name(i: usize) -> String {
    format!(
        "n_{}@127.0.0.1",
        (b'a' + u8::try_from(i).unwrap_or(0)) as char
    )
}

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    timeout(BOUND, f)
        .await
        .with_context(|| format!("{what} hangs"))
}

/// `n` members joined into one cluster, the bucket on each (every vbucket dead).
struct Cluster {
    members: Vec<Member>,
}

impl Cluster {
    async fn start(n: usize) -> anyhow::Result<Cluster> {
        let mut members = Vec::new();
        for _ in 0..n {
            members.push(Member::start().await?);
        }
        let book: Vec<AddressEntry> = members
            .iter()
            .enumerate()
            .map(|(i, m)| m.entry(&name(i)))
            .collect();
        for (i, m) in members.iter().enumerate() {
            let c = AgentClient::new(
                m.node.admin_addr().to_string(),
                name(i),
                Creds {
                    user: ADMIN.into(),
                    password: PASSWORD.into(),
                },
                None,
                0,
            );
            let join = JoinRequest {
                cluster: CLUSTER.into(),
                name: name(i),
                term: 1,
                orchestrator: name(0),
                nodes: book.clone(),
                admin: Creds {
                    user: "Administrator".into(),
                    password: "cluster-pw".into(),
                },
                internal: internal(),
                wipe: true,
            };
            bounded("join", c.join(&join)).await??;
            let put = PutBucket {
                vbuckets: VBS,
                ram_quota_mb: 64,
                uuid: "b0b0".into(),
                cluster_config: None,
            };
            bounded("put bucket", m.client(&name(i)).put_bucket(BUCKET, &put)).await??;
        }
        Ok(Cluster { members })
    }

    fn client(&self, i: usize) -> AgentClient {
        self.members[i].client(&name(i))
    }

    fn ctx(&self, bounds: MoveBounds) -> MoveCtx {
        let nodes = self
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                (
                    name(i),
                    MoveNode {
                        name: name(i),
                        agent: m.client(&name(i)),
                        kv_addr: m.node.kv_addr().to_string(),
                    },
                )
            })
            .collect();
        MoveCtx {
            bucket: BUCKET.into(),
            nodes,
            internal: internal(),
            bounds,
        }
    }

    async fn set_active(&self, i: usize, vb: u16) -> anyhow::Result<()> {
        let req = ApplyRequest {
            phase: Phase::Promote,
            states: [(vb, "active".to_string())].into(),
            incoming: None,
            timeout_ms: 10_000,
        };
        bounded("promote", self.client(i).apply(BUCKET, &req)).await??;
        Ok(())
    }

    /// Member `i` becomes a replica of `vb` streaming from member `from`.
    async fn set_replica(&self, i: usize, vb: u16, from: usize) -> anyhow::Result<()> {
        let req = BuildRequest {
            source: name(from),
            timeout_ms: 10_000,
        };
        bounded("build", self.client(i).build(BUCKET, vb, &req)).await??;
        Ok(())
    }

    async fn load(&self, i: usize, vb: u16, n: usize) -> anyhow::Result<()> {
        let mut kv = self.members[i].kv_client().await?;
        for k in 0..n {
            let key = format!("k{vb}-{k}");
            bounded(
                "store",
                kv.store(
                    Opcode::Set,
                    Vbid(vb),
                    key.as_bytes(),
                    b"v",
                    0,
                    0,
                    Cas(0),
                    Datatype::RAW,
                ),
            )
            .await??;
        }
        Ok(())
    }

    async fn report(&self, i: usize) -> anyhow::Result<VbucketsReport> {
        bounded("vbuckets", self.client(i).vbuckets(BUCKET))
            .await?
            .map_err(Into::into)
    }

    async fn vb(&self, i: usize, vb: u16) -> anyhow::Result<VbReport> {
        self.report(i)
            .await?
            .vbuckets
            .into_iter()
            .find(|v| v.vb == vb)
            .context("vbucket listed")
    }

    async fn stop(self) {
        for m in self.members {
            m.stop().await;
        }
    }
}

/// The runner's steps 8–9, recorded.
#[derive(Default)]
struct FakeCommit {
    calls: Mutex<Vec<(u16, Vec<Option<String>>)>>,
}

#[async_trait::async_trait]
impl Commit for FakeCommit {
    async fn commit(&self, vb: u16, new_chain: &[Option<String>]) -> Result<(), RestError> {
        self.calls
            .lock()
            .map_err(|_| RestError::internal("poisoned"))?
            .push((vb, new_chain.to_vec()));
        Ok(())
    }
}

impl FakeCommit {
    fn calls(&self) -> Vec<(u16, Vec<Option<String>>)> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

fn chain(nodes: &[Option<usize>]) -> Vec<Option<NodeId>> {
    nodes.iter().map(|n| n.map(|i| NodeId(name(i)))).collect()
}

fn names(nodes: &[Option<usize>]) -> Vec<Option<String>> {
    nodes.iter().map(|n| n.map(name)).collect()
}

fn a_move(vb: u16, old: &[Option<usize>], new: &[Option<usize>]) -> Move {
    Move {
        vb: Vbid(vb),
        old: chain(old),
        new: chain(new),
    }
}

/// What a move did.
struct Outcome {
    result: Result<(), MoveError>,
    steps: Vec<Step>,
    backfill_done: bool,
    docs_left: Vec<u64>,
}

/// Runs a move to its end, bounded, collecting its events.
async fn run(ctx: &MoveCtx, mv: &Move, commit: &dyn Commit) -> anyhow::Result<Outcome> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let result = timeout(MOVE_BOUND, run_move(ctx, mv, commit, &tx))
        .await
        .context("move hangs")?;
    drop(tx);
    let mut out = Outcome {
        result,
        steps: Vec::new(),
        backfill_done: false,
        docs_left: Vec::new(),
    };
    while let Some(e) = rx.recv().await {
        match e {
            MoveEvent::Step { vb, step } => {
                assert_eq!(vb, mv.vb.0);
                out.steps.push(step);
            }
            MoveEvent::BackfillDone { vb } => {
                assert_eq!(vb, mv.vb.0);
                assert_eq!(
                    out.steps.last(),
                    Some(&Step::Persistence),
                    "{:?}",
                    out.steps
                );
                out.backfill_done = true;
            }
            MoveEvent::DocsLeft { vb, docs } => {
                assert_eq!(vb, mv.vb.0);
                assert_eq!(out.steps.last(), Some(&Step::DataMove), "{:?}", out.steps);
                out.docs_left.push(docs);
            }
        }
    }
    Ok(out)
}

async fn wait_items(c: &Cluster, i: usize, vb: u16, want: u64) -> anyhow::Result<()> {
    let client = c.client(i);
    testkit::wait_for("items arrive", || {
        let client = client.clone();
        async move {
            let r: VbucketsReport = client.vbuckets(BUCKET).await?;
            Ok(r.vbuckets.iter().any(|v| v.vb == vb && v.items == want))
        }
    })
    .await
}

/// §5.3 steps 1–11, R = 0: [A] → [B].
#[tokio::test]
async fn an_active_move_takes_the_vbucket_over_and_deletes_the_old_copy() -> anyhow::Result<()> {
    let c = Cluster::start(2).await?;
    c.set_active(0, 1).await?;
    c.load(0, 1, 50).await?;
    let commit = FakeCommit::default();
    let mv = a_move(1, &[Some(0)], &[Some(1)]);
    let Outcome {
        result: r,
        steps,
        backfill_done,
        docs_left,
    } = run(&c.ctx(MoveBounds::default()), &mv, &commit).await?;
    r?;
    assert_eq!(
        steps,
        [
            Step::Build,
            Step::DataMove,
            Step::Persistence,
            Step::CloseStreams,
            Step::Takeover,
            Step::Commit,
            Step::Replicate,
            Step::Cleanup
        ]
    );
    assert!(backfill_done);
    assert_eq!(docs_left.last(), Some(&0), "{docs_left:?}");
    assert_eq!(commit.calls(), [(1, names(&[Some(1)]))]);
    let b = c.vb(1, 1).await?;
    assert_eq!((b.state.as_str(), b.items), ("active", 50), "{b:?}");
    let a = c.vb(0, 1).await?;
    assert_eq!((a.state.as_str(), a.items), ("dead", 0), "{a:?}");
    assert!(c.report(1).await?.incoming.is_empty());
    // The other vbuckets are untouched.
    assert_eq!(c.vb(1, 0).await?.state, "dead");
    c.stop().await;
    Ok(())
}

/// R = 1, roles swapped: [A, B] → [B, A]: B takes over, A ends a replica of B.
#[tokio::test]
async fn a_swap_move_makes_the_old_active_a_replica_of_the_new() -> anyhow::Result<()> {
    let c = Cluster::start(2).await?;
    c.set_active(0, 2).await?;
    c.set_replica(1, 2, 0).await?;
    c.load(0, 2, 40).await?;
    let commit = FakeCommit::default();
    let mv = a_move(2, &[Some(0), Some(1)], &[Some(1), Some(0)]);
    let Outcome {
        result: r, steps, ..
    } = run(&c.ctx(MoveBounds::default()), &mv, &commit).await?;
    r?;
    assert!(steps.contains(&Step::Takeover), "{steps:?}");
    assert_eq!(commit.calls(), [(2, names(&[Some(1), Some(0)]))]);
    let b = c.vb(1, 2).await?;
    assert_eq!((b.state.as_str(), b.items), ("active", 40), "{b:?}");
    let a = c.vb(0, 2).await?;
    assert_eq!(a.state, "replica", "{a:?}");
    let want: BTreeMap<String, Vec<u16>> = [(name(1), vec![2])].into();
    assert_eq!(c.report(0).await?.incoming, want);
    assert!(c.report(1).await?.incoming.is_empty());
    // New writes on B reach A.
    c.load(1, 2, 45).await?;
    wait_items(&c, 0, 2, 45).await?;
    let (a, b) = (c.vb(0, 2).await?, c.vb(1, 2).await?);
    assert_eq!(a.high_seqno, b.high_seqno);
    c.stop().await;
    Ok(())
}

/// Replica-only: [A, B] → [A, C]: C built from A, B's copy deleted, no takeover.
#[tokio::test]
async fn a_replica_only_move_builds_the_new_replica_and_deletes_the_old() -> anyhow::Result<()> {
    let c = Cluster::start(3).await?;
    c.set_active(0, 3).await?;
    c.set_replica(1, 3, 0).await?;
    c.load(0, 3, 30).await?;
    let commit = FakeCommit::default();
    let mv = a_move(3, &[Some(0), Some(1)], &[Some(0), Some(2)]);
    let Outcome {
        result: r,
        steps,
        backfill_done,
        docs_left,
    } = run(&c.ctx(MoveBounds::default()), &mv, &commit).await?;
    r?;
    assert_eq!(
        steps,
        [
            Step::Build,
            Step::DataMove,
            Step::Persistence,
            Step::Commit,
            Step::Replicate,
            Step::Cleanup
        ]
    );
    assert!(backfill_done);
    assert_eq!(docs_left.last(), Some(&0), "{docs_left:?}");
    assert_eq!(commit.calls(), [(3, names(&[Some(0), Some(2)]))]);
    assert_eq!(c.vb(0, 3).await?.state, "active");
    let cc = c.vb(2, 3).await?;
    assert_eq!((cc.state.as_str(), cc.items), ("replica", 30), "{cc:?}");
    let want: BTreeMap<String, Vec<u16>> = [(name(0), vec![3])].into();
    assert_eq!(c.report(2).await?.incoming, want);
    let b = c.vb(1, 3).await?;
    assert_eq!((b.state.as_str(), b.items), ("dead", 0), "{b:?}");
    assert!(c.report(1).await?.incoming.is_empty());
    c.stop().await;
    Ok(())
}

/// [A, B] → [A, null]: nothing to build; B's stream closed and its copy deleted.
#[tokio::test]
async fn a_move_dropping_a_replica_deletes_it() -> anyhow::Result<()> {
    let c = Cluster::start(2).await?;
    c.set_active(0, 0).await?;
    c.set_replica(1, 0, 0).await?;
    c.load(0, 0, 10).await?;
    let commit = FakeCommit::default();
    let mv = a_move(0, &[Some(0), Some(1)], &[Some(0), None]);
    let out = run(&c.ctx(MoveBounds::default()), &mv, &commit).await?;
    out.result?;
    assert_eq!(
        out.steps,
        [
            Step::Build,
            Step::DataMove,
            Step::Persistence,
            Step::Commit,
            Step::Replicate,
            Step::Cleanup
        ]
    );
    assert_eq!(commit.calls(), [(0, names(&[Some(0), None]))]);
    let a = c.vb(0, 0).await?;
    assert_eq!((a.state.as_str(), a.items), ("active", 10), "{a:?}");
    let b = c.vb(1, 0).await?;
    assert_eq!((b.state.as_str(), b.items), ("dead", 0), "{b:?}");
    assert!(c.report(1).await?.incoming.is_empty());
    c.stop().await;
    Ok(())
}

/// Step 0: [null] → [A]: A promoted, then committed.
#[tokio::test]
async fn a_move_from_null_promotes_the_new_active() -> anyhow::Result<()> {
    let c = Cluster::start(1).await?;
    let commit = FakeCommit::default();
    let mv = a_move(0, &[None], &[Some(0)]);
    let Outcome {
        result: r,
        steps,
        backfill_done,
        docs_left,
    } = run(&c.ctx(MoveBounds::default()), &mv, &commit).await?;
    r?;
    assert_eq!(
        steps,
        [Step::Promote, Step::Commit, Step::Replicate, Step::Cleanup]
    );
    assert!(!backfill_done);
    assert!(docs_left.is_empty());
    assert_eq!(commit.calls(), [(0, names(&[Some(0)]))]);
    assert_eq!(c.vb(0, 0).await?.state, "active");
    c.stop().await;
    Ok(())
}

/// Step 0 when N held the old chain's replica: N's stream is closed before it
/// becomes active; the new replica then streams from N.
#[tokio::test]
async fn a_move_from_null_closes_the_promoted_replicas_stream() -> anyhow::Result<()> {
    let c = Cluster::start(2).await?;
    c.set_active(0, 1).await?;
    c.set_replica(1, 1, 0).await?;
    c.load(0, 1, 25).await?;
    wait_items(&c, 1, 1, 25).await?;
    // The map lost A (still streaming into B): the move must not leave B active
    // with a stream into it.
    let commit = FakeCommit::default();
    let mv = a_move(1, &[None, Some(1)], &[Some(1), Some(0)]);
    let out = run(&c.ctx(MoveBounds::default()), &mv, &commit).await?;
    out.result?;
    assert_eq!(
        out.steps,
        [Step::Promote, Step::Commit, Step::Replicate, Step::Cleanup]
    );
    assert_eq!(commit.calls(), [(1, names(&[Some(1), Some(0)]))]);
    let b = c.vb(1, 1).await?;
    assert_eq!((b.state.as_str(), b.items), ("active", 25), "{b:?}");
    assert!(c.report(1).await?.incoming.is_empty());
    assert_eq!(c.vb(0, 1).await?.state, "replica");
    let want: BTreeMap<String, Vec<u16>> = [(name(1), vec![1])].into();
    assert_eq!(c.report(0).await?.incoming, want);
    c.load(1, 1, 30).await?;
    wait_items(&c, 0, 1, 30).await?;
    c.stop().await;
    Ok(())
}

/// §5.6: the destination's agent is unreachable: `move_failed` at build, naming
/// the node, bounded; nothing committed.
#[tokio::test]
async fn an_unreachable_destination_fails_the_build_naming_the_node() -> anyhow::Result<()> {
    let c = Cluster::start(1).await?;
    c.set_active(0, 1).await?;
    let gone = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let mut ctx = c.ctx(MoveBounds {
        build: Duration::from_secs(2),
        ..MoveBounds::default()
    });
    let ghost = "n_z@127.0.0.1".to_string();
    ctx.nodes.insert(
        ghost.clone(),
        MoveNode {
            name: ghost.clone(),
            agent: AgentClient::new(gone.to_string(), &ghost, internal(), None, 1),
            kv_addr: gone.to_string(),
        },
    );
    let commit = FakeCommit::default();
    let mv = Move {
        vb: Vbid(1),
        old: chain(&[Some(0)]),
        new: vec![Some(NodeId(ghost.clone()))],
    };
    let started = tokio::time::Instant::now();
    let Outcome {
        result: r, steps, ..
    } = run(&ctx, &mv, &commit).await?;
    let e = r.expect_err("unreachable destination");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(e.step, Step::Build);
    assert_eq!(e.node.as_deref(), Some(ghost.as_str()));
    assert_eq!(e.cause["kind"], "unreachable", "{}", e.cause);
    assert_eq!(e.vb, 1);
    assert_eq!(e.bucket, BUCKET);
    assert_eq!(e.old_chain, names(&[Some(0)]));
    assert_eq!(e.new_chain, vec![Some(ghost.clone())]);
    let j = e.to_json();
    assert_eq!(j["kind"], "move_failed");
    assert_eq!(j["step"], "build");
    assert!(
        e.message.contains("build on n_z@127.0.0.1"),
        "{}",
        e.message
    );
    assert_eq!(e.into_rest().kind, "move_failed");
    assert_eq!(steps, [Step::Build]);
    assert!(commit.calls().is_empty());
    // The source is untouched.
    assert_eq!(c.vb(0, 1).await?.state, "active");
    c.stop().await;
    Ok(())
}

/// §5.5: a move dropped during its data-move wait leaves nothing running: the
/// agent answers at once, the consumer's replication can be removed, and the same
/// move runs again to its end.
#[tokio::test]
async fn dropping_a_move_during_the_data_move_cancels_it() -> anyhow::Result<()> {
    let c = Cluster::start(2).await?;
    c.set_active(0, 1).await?;
    c.load(0, 1, 20).await?;
    // A done limit of 0 never completes: the wait runs until dropped.
    let ctx = c.ctx(MoveBounds {
        done_limit: 0,
        data_move_cap: Duration::from_secs(60),
        ..MoveBounds::default()
    });
    let commit = FakeCommit::default();
    let mv = a_move(1, &[Some(0)], &[Some(1)]);
    let (tx, mut rx) = mpsc::unbounded_channel();
    {
        let mv_fut = run_move(&ctx, &mv, &commit, &tx);
        tokio::pin!(mv_fut);
        let reached = async {
            while let Some(e) = rx.recv().await {
                if matches!(
                    e,
                    MoveEvent::Step {
                        step: Step::DataMove,
                        ..
                    }
                ) {
                    return;
                }
            }
        };
        tokio::select! {
            r = &mut mv_fut => anyhow::bail!("the move ended: {r:?}"),
            () = reached => {}
            () = tokio::time::sleep(MOVE_BOUND) => anyhow::bail!("data move not reached"),
        }
        // Let the wait reach the agent, then drop the move.
        tokio::select! {
            r = &mut mv_fut => anyhow::bail!("the move ended: {r:?}"),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    assert!(commit.calls().is_empty());
    // B is a replica streaming from A (step 1 ran); nothing else happened.
    let want: BTreeMap<String, Vec<u16>> = [(name(0), vec![1])].into();
    assert_eq!(c.report(1).await?.incoming, want);
    assert_eq!(c.vb(0, 1).await?.state, "active");
    let req = UnreplicateRequest { timeout_ms: 5_000 };
    bounded("unreplicate", c.client(1).unreplicate(BUCKET, 1, &req)).await??;
    assert!(c.report(1).await?.incoming.is_empty());
    bounded("health", c.client(1).health()).await??;
    // The same move again (a resumed rebalance) runs to its end.
    let out = run(&c.ctx(MoveBounds::default()), &mv, &commit).await?;
    out.result?;
    let b = c.vb(1, 1).await?;
    assert_eq!((b.state.as_str(), b.items), ("active", 20), "{b:?}");
    assert_eq!(commit.calls().len(), 1);
    c.stop().await;
    Ok(())
}

/// §5.3 step 2: docs left that do not fall for `data_move_stall` fail the move
/// (here the done limit 0 is never reached and nothing is left to move).
#[tokio::test]
async fn a_stalled_data_move_fails_the_move_at_data_move() -> anyhow::Result<()> {
    let c = Cluster::start(2).await?;
    c.set_active(0, 1).await?;
    c.load(0, 1, 10).await?;
    let ctx = c.ctx(MoveBounds {
        done_limit: 0,
        data_move_stall: Duration::from_secs(2),
        data_move_cap: Duration::from_secs(60),
        ..MoveBounds::default()
    });
    let commit = FakeCommit::default();
    let mv = a_move(1, &[Some(0)], &[Some(1)]);
    let started = tokio::time::Instant::now();
    let out = run(&ctx, &mv, &commit).await?;
    let e = out.result.expect_err("stalled");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(e.step, Step::DataMove);
    assert_eq!(e.node.as_deref(), Some(name(1).as_str()));
    assert_eq!(e.cause["kind"], "timeout", "{}", e.cause);
    assert_eq!(out.steps, [Step::Build, Step::DataMove]);
    assert!(!out.docs_left.is_empty());
    assert!(commit.calls().is_empty());
    c.stop().await;
    Ok(())
}

/// The runner's commit failing is `move_failed` at `commit` with its error as cause.
#[tokio::test]
async fn a_failed_commit_is_move_failed_at_commit() -> anyhow::Result<()> {
    struct Refuse;
    #[async_trait::async_trait]
    impl Commit for Refuse {
        async fn commit(&self, _: u16, _: &[Option<String>]) -> Result<(), RestError> {
            Err(RestError::internal("metadata store down"))
        }
    }
    let c = Cluster::start(1).await?;
    let mv = a_move(2, &[None], &[Some(0)]);
    let out = run(&c.ctx(MoveBounds::default()), &mv, &Refuse).await?;
    let e = out.result.expect_err("commit refused");
    assert_eq!(e.step, Step::Commit);
    assert_eq!(e.node, None);
    assert_eq!(e.cause["kind"], "internal", "{}", e.cause);
    assert!(e.message.contains("metadata store down"), "{}", e.message);
    assert_eq!(out.steps, [Step::Promote, Step::Commit]);
    c.stop().await;
    Ok(())
}
