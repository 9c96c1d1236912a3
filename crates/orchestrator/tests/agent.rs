//! The node agent (cluster.md §2.6) against real in-process kv-nodes.
//!
//! Wiring: the agent needs its node's addresses and the node needs the agent's
//! router at start, so the fixture binds both listeners first, starts the agent with
//! their addresses (the agent makes no node call at start), then starts the node
//! on those listeners with the agent's router as its admin extension (N7).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use kv_client::{Client, Credentials};
use kv_node::{AdminExtension, Node, NodeConfig};
use mcbp::{Cas, Datatype, Opcode, Vbid};
use orchestrator::agent::api::{
    AddressBook, ApplyRequest, JoinRequest, Phase, PutBucket, VbucketsReport,
};
use orchestrator::agent::{
    is_member, AddressEntry, Agent, AgentCallError, AgentClient, AgentConfig, Creds,
};
use testkit::node::{client_config, ADMIN, BOUND, PASSWORD};
use tokio::net::TcpListener;
use tokio::time::timeout;

const CLUSTER: &str = "c0ffee00c0ffee00c0ffee00c0ffee00";

/// A kv-node with its agent.
struct Member {
    node: Node,
    agent: Arc<Agent>,
    dir: tempfile::TempDir,
}

impl Member {
    async fn start() -> anyhow::Result<Member> {
        Member::start_in(tempfile::tempdir()?).await
    }

    async fn start_in(dir: tempfile::TempDir) -> anyhow::Result<Member> {
        Member::start_with(dir, false).await
    }

    /// As the CLI does: a member's node restores no vbucket state (N6).
    async fn start_fenced_in(dir: tempfile::TempDir) -> anyhow::Result<Member> {
        Member::start_with(dir, true).await
    }

    async fn start_with(dir: tempfile::TempDir, fenced: bool) -> anyhow::Result<Member> {
        let kv = TcpListener::bind("127.0.0.1:0").await?;
        let admin = TcpListener::bind("127.0.0.1:0").await?;
        let agent = Agent::start(agent_config(
            dir.path(),
            admin.local_addr()?,
            kv.local_addr()?,
        ))
        .await?;
        let mut cfg = NodeConfig::ephemeral(dir.path(), ADMIN, PASSWORD);
        cfg.restore_vbucket_states = !(fenced && is_member(dir.path()));
        cfg.admin_extension = Some(AdminExtension {
            router: agent.router(),
            public: Vec::new(),
        });
        let node = timeout(BOUND, Node::start_with_listeners(cfg, kv, admin))
            .await
            .context("node start hangs")??;
        Ok(Member { node, agent, dir })
    }

    fn admin_addr(&self) -> SocketAddr {
        self.node.admin_addr()
    }

    fn entry(&self, name: &str) -> AddressEntry {
        AddressEntry {
            name: name.to_string(),
            host: "127.0.0.1".to_string(),
            kv_port: self.node.kv_addr().port(),
            admin_port: self.admin_addr().port(),
        }
    }

    /// A client as the node's own admin, with the cluster headers.
    fn client(&self, cluster: Option<&str>, term: u64) -> AgentClient {
        self.client_as(admin(), cluster, term)
    }

    fn client_as(&self, creds: Creds, cluster: Option<&str>, term: u64) -> AgentClient {
        AgentClient::new(
            self.admin_addr().to_string(),
            "node",
            creds,
            cluster.map(str::to_string),
            term,
        )
    }

    async fn admin_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        want: u16,
    ) -> anyhow::Result<String> {
        testkit::admin_call(
            self.admin_addr(),
            (ADMIN, PASSWORD),
            method,
            path,
            body,
            want,
        )
        .await
    }

    async fn kv_client(&self, bucket: &str) -> anyhow::Result<Client> {
        let mut c = Client::connect(&self.node.kv_addr().to_string(), client_config()).await?;
        c.auth_plain(&Credentials {
            user: ADMIN.into(),
            password: PASSWORD.into(),
        })
        .await?;
        c.select_bucket(bucket).await?;
        Ok(c)
    }

    async fn stop(self) -> tempfile::TempDir {
        self.agent.shutdown().await;
        self.node.shutdown().await;
        self.dir
    }
}

fn agent_config(dir: &Path, admin_addr: SocketAddr, kv: SocketAddr) -> AgentConfig {
    AgentConfig::new(dir, admin_addr, kv, admin())
}

fn admin() -> Creds {
    Creds {
        user: ADMIN.into(),
        password: PASSWORD.into(),
    }
}

fn cluster_admin() -> Creds {
    Creds {
        user: "Administrator".into(),
        password: "cluster-pw".into(),
    }
}

fn internal() -> Creds {
    Creds {
        user: "@conduit".into(),
        password: "0123456789abcdef0123456789abcdef".into(),
    }
}

fn join_request(name: &str, nodes: Vec<AddressEntry>) -> JoinRequest {
    JoinRequest {
        cluster: CLUSTER.into(),
        name: name.into(),
        term: 1,
        orchestrator: "n_a@127.0.0.1".into(),
        nodes,
        admin: cluster_admin(),
        internal: internal(),
        wipe: true,
    }
}

fn refused_kind(e: &AgentCallError) -> Option<String> {
    match e {
        AgentCallError::Refused { error, .. } => error["kind"].as_str().map(str::to_string),
        _ => None,
    }
}

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    timeout(BOUND, f)
        .await
        .with_context(|| format!("{what} hangs"))
}

#[tokio::test]
async fn join_installs_users_wipes_buckets_persists_and_headers_are_checked() -> anyhow::Result<()>
{
    let m = Member::start().await?;
    let c = m.client(None, 0);

    // Before join: identity only.
    let info = bounded("info", c.info()).await??;
    assert_eq!(info.uuid.len(), 32);
    assert!(info.uuid.chars().all(|ch| ch.is_ascii_hexdigit()));
    assert_eq!(info.name, None);
    assert_eq!(info.cluster, None);
    assert_eq!(info.admin_port, m.admin_addr().port());
    assert!(!is_member(m.dir.path()));

    // A bucket left over from before the join is wiped.
    m.admin_call(
        "POST",
        "/buckets",
        Some(r#"{"name":"old","vbuckets":4}"#),
        201,
    )
    .await?;
    let me = m.entry("n_a@127.0.0.1");
    let join = join_request("n_a@127.0.0.1", vec![me]);
    // Before join, any cluster header is accepted.
    bounded("join", m.client(Some(CLUSTER), 1).join(&join)).await??;
    m.admin_call("GET", "/buckets/old", None, 404).await?;
    assert!(is_member(m.dir.path()));
    let membership = m.agent.membership().context("joined")?;
    assert_eq!(membership.cluster, CLUSTER);
    assert_eq!(membership.name, "n_a@127.0.0.1");

    // The internal user and the cluster admin authenticate on the node now.
    let ci = m.client_as(internal(), Some(CLUSTER), 1);
    let info = bounded("info", ci.info()).await??;
    assert_eq!(info.name.as_deref(), Some("n_a@127.0.0.1"));
    assert_eq!(info.cluster.as_deref(), Some(CLUSTER));
    bounded(
        "health",
        m.client_as(cluster_admin(), Some(CLUSTER), 1).health(),
    )
    .await??;

    // The same join again is fine; another cluster's is not.
    bounded("join again", m.client(Some(CLUSTER), 1).join(&join)).await??;
    let mut other = join.clone();
    other.cluster = "another".into();
    let e = bounded("join other", m.client(Some("another"), 1).join(&other))
        .await?
        .expect_err("joined elsewhere");
    assert_eq!(refused_kind(&e).as_deref(), Some("already_member"), "{e}");
    assert!(matches!(e, AgentCallError::Refused { status: 409, .. }));

    // Another cluster's header is refused.
    let e = bounded("health", m.client(Some("another"), 1).health())
        .await?
        .expect_err("wrong cluster");
    assert_eq!(refused_kind(&e).as_deref(), Some("wrong_cluster"), "{e}");
    assert!(matches!(e, AgentCallError::Refused { status: 409, .. }));

    // A term below the highest seen is refused.
    bounded("health t5", m.client(Some(CLUSTER), 5).health()).await??;
    let e = bounded("health t3", m.client(Some(CLUSTER), 3).health())
        .await?
        .expect_err("stale term");
    assert_eq!(refused_kind(&e).as_deref(), Some("stale_term"), "{e}");
    assert_eq!(e.to_json()["cause"]["term"], 5);

    // The state file is private; a restarted agent on the same data dir is a member.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(m.dir.path().join("cluster/agent.json"))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = Agent::start(agent_config(m.dir.path(), m.admin_addr(), m.node.kv_addr())).await?;
    assert_eq!(again.membership(), Some(membership));
    assert_eq!(again.info().uuid, info.uuid);
    again.shutdown().await;
    m.stop().await;
    Ok(())
}

/// Two members, address book pushed; the janitor phases make B replicate A's
/// actives; then B is fenced and A leaves.
#[tokio::test]
async fn apply_phases_replicate_fence_stops_it_and_leave_forgets_the_cluster() -> anyhow::Result<()>
{
    const VBS: u16 = 4;
    let (a, b) = (Member::start().await?, Member::start().await?);
    let (na, nb) = ("n_a@127.0.0.1", "n_b@127.0.0.1");
    let book = vec![a.entry(na), b.entry(nb)];
    // B joins knowing only itself; the address book arrives later.
    bounded(
        "join a",
        a.client(None, 0).join(&join_request(na, book.clone())),
    )
    .await??;
    bounded(
        "join b",
        b.client(None, 0).join(&join_request(nb, vec![b.entry(nb)])),
    )
    .await??;
    let (ca, cb) = (a.client(Some(CLUSTER), 1), b.client(Some(CLUSTER), 2));
    let address_book = AddressBook {
        term: 2,
        orchestrator: na.into(),
        nodes: book,
    };
    bounded("book", cb.set_cluster(&address_book)).await??;
    assert_eq!(b.agent.membership().context("member")?.nodes.len(), 2);

    let put = PutBucket {
        vbuckets: VBS,
        ram_quota_mb: 64,
        uuid: "b0b0".into(),
        cluster_config: None,
    };
    for c in [&ca, &cb] {
        bounded("put bucket", c.put_bucket("default", &put)).await??;
        // Idempotent.
        bounded("put bucket again", c.put_bucket("default", &put)).await??;
        let r = bounded("vbuckets", c.vbuckets("default")).await??;
        assert_eq!(r.vbuckets.len(), usize::from(VBS));
        assert!(r.vbuckets.iter().all(|v| v.state == "dead"), "{r:?}");
        assert!(r.incoming.is_empty());
    }
    // Not ready before an apply.
    let h = bounded("health", cb.health()).await??;
    assert!(!h.buckets["default"].ready, "{h:?}");
    assert_eq!(h.buckets["default"].dead, u32::from(VBS));

    let all = |s: &str| (0..VBS).map(|v| (v, s.to_string())).collect();
    let apply = |phase, states, incoming| ApplyRequest {
        phase,
        states,
        incoming,
        timeout_ms: 10_000,
    };
    let incoming: std::collections::BTreeMap<String, Vec<u16>> =
        [(na.to_string(), (0..VBS).collect())].into();
    bounded(
        "demote b",
        cb.apply(
            "default",
            &apply(Phase::Demote, all("replica"), Some(incoming.clone())),
        ),
    )
    .await??;
    bounded(
        "demote a",
        ca.apply("default", &apply(Phase::Demote, all("active"), None)),
    )
    .await??;
    bounded(
        "promote a",
        ca.apply("default", &apply(Phase::Promote, all("active"), None)),
    )
    .await??;
    bounded(
        "promote b",
        cb.apply("default", &apply(Phase::Promote, all("replica"), None)),
    )
    .await??;
    bounded(
        "replications b",
        cb.apply(
            "default",
            &apply(Phase::Replications, all("replica"), Some(incoming.clone())),
        ),
    )
    .await??;

    let r = bounded("vbuckets a", ca.vbuckets("default")).await??;
    assert!(r.vbuckets.iter().all(|v| v.state == "active"), "{r:?}");
    let r = bounded("vbuckets b", cb.vbuckets("default")).await??;
    assert!(r.vbuckets.iter().all(|v| v.state == "replica"), "{r:?}");
    assert_eq!(r.incoming, incoming);

    // Writes on A reach B.
    let mut kv = a.kv_client("default").await?;
    for vb in 0..VBS {
        for i in 0..5 {
            let key = format!("k{vb}-{i}");
            bounded(
                "store",
                kv.store(
                    Opcode::Set,
                    Vbid(vb),
                    key.as_bytes(),
                    b"v1",
                    0,
                    0,
                    Cas(0),
                    Datatype::RAW,
                ),
            )
            .await??;
        }
    }
    let want = u64::from(VBS) * 5;
    testkit::wait_for("B has A's items", || {
        let cb = cb.clone();
        async move {
            let r: VbucketsReport = cb.vbuckets("default").await?;
            Ok(r.vbuckets.iter().map(|v| v.items).sum::<u64>() == want)
        }
    })
    .await?;
    let h = bounded("health", cb.health()).await??;
    let bh = &h.buckets["default"];
    assert!(bh.ready, "{h:?}");
    assert_eq!(bh.replica, u32::from(VBS));
    assert!(bh.config.is_some(), "{h:?}");
    assert_eq!(h.name.as_deref(), Some(nb));
    assert!(h.liveness.contains_key(na), "{h:?}");

    // Fence: every vbucket dead, incoming replication stopped, data kept.
    bounded("fence b", cb.fence()).await??;
    let r = bounded("vbuckets b", cb.vbuckets("default")).await??;
    assert!(r.vbuckets.iter().all(|v| v.state == "dead"), "{r:?}");
    assert!(r.incoming.is_empty(), "{r:?}");
    assert_eq!(r.vbuckets.iter().map(|v| v.items).sum::<u64>(), want);
    assert!(!bounded("health", cb.health()).await??.buckets["default"].ready);

    // Leave: buckets deleted, cluster forgotten, the cluster's users gone.
    bounded("leave a", ca.leave()).await??;
    a.admin_call("GET", "/buckets/default", None, 404).await?;
    assert_eq!(a.agent.membership(), None);
    assert!(!is_member(a.dir.path()));
    let e = bounded("info as internal", a.client_as(internal(), None, 0).info())
        .await?
        .expect_err("user deleted");
    assert!(matches!(e, AgentCallError::Unauthorized { .. }), "{e}");
    assert_eq!(bounded("info", a.client(None, 0).info()).await??.name, None);

    a.stop().await;
    b.stop().await;
    Ok(())
}

#[tokio::test]
async fn client_errors_are_typed() -> anyhow::Result<()> {
    // Nothing listens there any more.
    let gone = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let c = AgentClient::new(gone.to_string(), "ghost", admin(), None, 0);
    let e = bounded("info", c.info()).await?.expect_err("unreachable");
    assert!(matches!(e, AgentCallError::Unreachable { .. }), "{e}");
    assert_eq!(e.kind(), "unreachable");
    assert_eq!(e.node(), "ghost");
    assert_eq!(e.to_json()["node"], "ghost");

    let m = Member::start().await?;
    let bad = Creds {
        user: ADMIN.into(),
        password: "wrong".into(),
    };
    let e = bounded("info", m.client_as(bad, None, 0).info())
        .await?
        .expect_err("bad creds");
    assert!(matches!(e, AgentCallError::Unauthorized { .. }), "{e}");

    // A bucket before join: the agent's {"ok":false,…}.
    let put = PutBucket {
        vbuckets: 4,
        ram_quota_mb: 64,
        uuid: "u".into(),
        cluster_config: None,
    };
    let e = bounded("put", m.client(None, 0).put_bucket("b", &put))
        .await?
        .expect_err("not a member");
    match &e {
        AgentCallError::Refused { status, error, .. } => {
            assert_eq!(*status, 409);
            assert_eq!(error["kind"], "not_member");
            assert!(error["message"].as_str().is_some_and(|s| !s.is_empty()));
        }
        other => panic!("want Refused, got {other:?}"),
    }
    assert_eq!(e.kind(), "refused");

    // A malformed apply is a bad request.
    let e = bounded(
        "apply",
        m.client(None, 0).apply(
            "b",
            &ApplyRequest {
                phase: Phase::Demote,
                states: [(0, "sideways".to_string())].into(),
                incoming: None,
                timeout_ms: 1000,
            },
        ),
    )
    .await?
    .expect_err("bad state");
    assert_eq!(refused_kind(&e).as_deref(), Some("bad_request"), "{e}");
    m.stop().await;
    Ok(())
}

/// Joins `a` and `b` into one cluster with a bucket of `vbs` vbuckets, every
/// vbucket active on `a` and dead on `b`.
async fn two_member_bucket(
    a: &Member,
    b: &Member,
    vbs: u16,
) -> anyhow::Result<(AgentClient, AgentClient)> {
    let (na, nb) = ("n_a@127.0.0.1", "n_b@127.0.0.1");
    let book = vec![a.entry(na), b.entry(nb)];
    bounded(
        "join a",
        a.client(None, 0).join(&join_request(na, book.clone())),
    )
    .await??;
    bounded("join b", b.client(None, 0).join(&join_request(nb, book))).await??;
    let (ca, cb) = (a.client(Some(CLUSTER), 1), b.client(Some(CLUSTER), 1));
    let put = PutBucket {
        vbuckets: vbs,
        ram_quota_mb: 64,
        uuid: "b0b0".into(),
        cluster_config: None,
    };
    bounded("put a", ca.put_bucket("default", &put)).await??;
    bounded("put b", cb.put_bucket("default", &put)).await??;
    let promote = ApplyRequest {
        phase: Phase::Promote,
        states: (0..vbs).map(|v| (v, "active".to_string())).collect(),
        incoming: None,
        timeout_ms: 10_000,
    };
    bounded("promote a", ca.apply("default", &promote)).await??;
    Ok((ca, cb))
}

async fn load(m: &Member, vb: u16, n: usize) -> anyhow::Result<()> {
    let mut kv = m.kv_client("default").await?;
    for i in 0..n {
        let key = format!("k{vb}-{i}");
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

fn vb_of(r: &VbucketsReport, vb: u16) -> orchestrator::agent::api::VbReport {
    r.vbuckets
        .iter()
        .find(|v| v.vb == vb)
        .cloned()
        .expect("vbucket listed")
}

/// One vbucket move through the agent's move steps (§2.6): build, wait-data-move,
/// wait-persisted, takeover, then the old copy deleted.
#[tokio::test]
async fn move_steps_move_a_vbucket_from_a_to_b() -> anyhow::Result<()> {
    use orchestrator::agent::api::{
        BuildRequest, TakeoverRequest, UnreplicateRequest, WaitDataMove, WaitPersisted,
    };
    let (a, b) = (Member::start().await?, Member::start().await?);
    let (ca, cb) = two_member_bucket(&a, &b, 2).await?;
    load(&a, 1, 20).await?;
    let na = "n_a@127.0.0.1";
    let t = 10_000;
    bounded(
        "build",
        cb.build(
            "default",
            1,
            &BuildRequest {
                source: na.into(),
                timeout_ms: t,
            },
        ),
    )
    .await??;
    let r = bounded("vbuckets b", cb.vbuckets("default")).await??;
    assert_eq!(vb_of(&r, 1).state, "replica");
    assert_eq!(r.incoming.get(na), Some(&vec![1]));
    let moved = bounded(
        "wait data move",
        cb.wait_data_move(
            "default",
            1,
            &WaitDataMove {
                source: na.into(),
                done_limit: 1000,
                stall_ms: 0,
                timeout_ms: t,
            },
        ),
    )
    .await??;
    assert!(
        moved.estimate_at_start.is_some_and(|e| e <= 20),
        "{moved:?}"
    );
    let high = vb_of(&bounded("vbuckets a", ca.vbuckets("default")).await??, 1).high_seqno;
    assert!(high >= 20);
    bounded(
        "wait persisted",
        cb.wait_persisted(
            "default",
            1,
            &WaitPersisted {
                seqno: high,
                source: na.into(),
                timeout_ms: t,
            },
        ),
    )
    .await??;
    bounded(
        "takeover",
        cb.takeover(
            "default",
            1,
            &TakeoverRequest {
                source: na.into(),
                timeout_ms: t,
            },
        ),
    )
    .await??;
    let r = bounded("vbuckets b", cb.vbuckets("default")).await??;
    assert_eq!(vb_of(&r, 1).state, "active");
    assert_eq!(vb_of(&r, 1).items, 20);
    bounded(
        "unreplicate",
        cb.unreplicate("default", 1, &UnreplicateRequest { timeout_ms: t }),
    )
    .await??;
    assert!(bounded("vbuckets b", cb.vbuckets("default"))
        .await??
        .incoming
        .is_empty());
    assert_eq!(
        vb_of(&bounded("vbuckets a", ca.vbuckets("default")).await??, 1).state,
        "dead"
    );
    bounded("delete", ca.delete_vbucket("default", 1)).await??;
    let old = vb_of(&bounded("vbuckets a", ca.vbuckets("default")).await??, 1);
    assert_eq!((old.state.as_str(), old.items), ("dead", 0));

    // wait-persisted with no replication from the source is refused at once.
    let e = bounded(
        "wait persisted",
        cb.wait_persisted(
            "default",
            0,
            &WaitPersisted {
                seqno: 1,
                source: na.into(),
                timeout_ms: t,
            },
        ),
    )
    .await?
    .expect_err("not replicating");
    assert_eq!(
        refused_kind(&e).as_deref(),
        Some("replication_ended"),
        "{e}"
    );
    a.stop().await;
    b.stop().await;
    Ok(())
}

/// A member restarts fenced (N6, decided by `is_member`), its agent sets no state,
/// and the next apply brings the bucket back (§2.6 fenced restart).
#[tokio::test]
async fn a_restarted_member_starts_fenced_and_an_apply_restores_it() -> anyhow::Result<()> {
    let m = Member::start().await?;
    let name = "n_a@127.0.0.1";
    bounded(
        "join",
        m.client(None, 0)
            .join(&join_request(name, vec![m.entry(name)])),
    )
    .await??;
    let c = m.client(Some(CLUSTER), 1);
    let put = PutBucket {
        vbuckets: 2,
        ram_quota_mb: 64,
        uuid: "u1".into(),
        cluster_config: None,
    };
    bounded("put", c.put_bucket("default", &put)).await??;
    let promote = ApplyRequest {
        phase: Phase::Promote,
        states: [(0, "active".to_string()), (1, "active".to_string())].into(),
        incoming: None,
        timeout_ms: 10_000,
    };
    bounded("promote", c.apply("default", &promote)).await??;
    load(&m, 0, 3).await?;
    let dir = m.stop().await;

    assert!(is_member(dir.path()));
    let m = Member::start_fenced_in(dir).await?;
    let c = m.client(Some(CLUSTER), 1);
    let r = bounded("vbuckets", c.vbuckets("default")).await??;
    assert!(r.vbuckets.iter().all(|v| v.state == "dead"), "{r:?}");
    assert_eq!(vb_of(&r, 0).items, 3);
    let h = bounded("health", c.health()).await??;
    assert!(!h.buckets["default"].ready, "{h:?}");
    bounded("promote", c.apply("default", &promote)).await??;
    let h = bounded("health", c.health()).await??;
    assert!(h.buckets["default"].ready, "{h:?}");
    assert_eq!(h.buckets["default"].active, 2);
    // Config push: newer accepted, older refused; health reports what the node serves.
    let cfg = |rev: u64| serde_json::json!({"rev": rev, "revEpoch": 1, "name": "default"});
    assert!(bounded("push", c.push_bucket_config("default", &cfg(10))).await??);
    assert!(bounded("push same", c.push_bucket_config("default", &cfg(10))).await??);
    assert!(!bounded("push older", c.push_bucket_config("default", &cfg(5))).await??);
    assert!(bounded("push global", c.push_global_config(&cfg(3))).await??);
    let h = bounded("health", c.health()).await??;
    assert_eq!(h.buckets["default"].config, Some((1, 10)), "{h:?}");
    let e = bounded("push nowhere", c.push_bucket_config("nope", &cfg(1)))
        .await?
        .expect_err("no bucket");
    assert!(
        matches!(e, AgentCallError::Refused { status: 404, .. }),
        "{e}"
    );
    // A bucket of the same name under another uuid is not the cluster's to touch.
    let other = PutBucket {
        uuid: "u2".into(),
        ..put
    };
    let e = bounded("put other", c.put_bucket("default", &other))
        .await?
        .expect_err("uuid");
    assert_eq!(
        refused_kind(&e).as_deref(),
        Some("bucket_uuid_mismatch"),
        "{e}"
    );
    m.stop().await;
    Ok(())
}

/// An apply that cannot finish within its `timeout_ms` answers `timeout` (504).
#[tokio::test]
async fn an_apply_overrunning_its_timeout_answers_timeout() -> anyhow::Result<()> {
    // A producer that accepts TCP connections and never answers.
    let black_hole = TcpListener::bind("127.0.0.1:0").await?;
    let hole = black_hole.local_addr()?;
    let m = Member::start().await?;
    let (me, other) = ("n_a@127.0.0.1", "n_x@127.0.0.1");
    let book = vec![
        m.entry(me),
        AddressEntry {
            name: other.into(),
            host: "127.0.0.1".into(),
            kv_port: hole.port(),
            admin_port: 1,
        },
    ];
    bounded("join", m.client(None, 0).join(&join_request(me, book))).await??;
    let c = m.client(Some(CLUSTER), 1);
    let put = PutBucket {
        vbuckets: 2,
        ram_quota_mb: 64,
        uuid: "u".into(),
        cluster_config: None,
    };
    bounded("put", c.put_bucket("default", &put)).await??;
    let req = ApplyRequest {
        phase: Phase::Replications,
        states: Default::default(),
        incoming: Some([(other.to_string(), vec![0, 1])].into()),
        timeout_ms: 300,
    };
    let e = bounded("apply", c.apply("default", &req))
        .await?
        .expect_err("hangs");
    assert_eq!(refused_kind(&e).as_deref(), Some("timeout"), "{e}");
    assert!(
        matches!(e, AgentCallError::Refused { status: 504, .. }),
        "{e}"
    );
    drop(black_hole);
    m.stop().await;
    Ok(())
}
