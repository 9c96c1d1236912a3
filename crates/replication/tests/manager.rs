//! The replication manager against automatic fake nodes (`replication-layer.md`
//! §7.6, §8): vb -> connection `vb mod N`, starting and stopping replicators from the
//! desired map, reads that never wait.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kv_client::Credentials;
use mcbp::{Opcode, Vbid};
use replication::core::CoreConfig;
use replication::{ManagerConfig, ReplError, ReplicationManager, ReplicationMap};
use testkit::fake::{AutoEvent, AutoRole, FakeNode, WAIT};
use tokio::time::{timeout, Instant};

fn creds() -> Credentials {
    Credentials {
        user: "admin".into(),
        password: "password".into(),
    }
}

fn vbs(v: &[u16]) -> BTreeSet<Vbid> {
    v.iter().copied().map(Vbid).collect()
}

fn map(entries: &[(&str, &[u16])]) -> ReplicationMap {
    entries
        .iter()
        .map(|(n, v)| ((*n).to_string(), vbs(v)))
        .collect::<BTreeMap<_, _>>()
}

fn manager(consumer: &FakeNode, producers: &[(&str, &FakeNode)], n: u32) -> ReplicationManager {
    let mut cfg = ManagerConfig::new("default", "nodeC", consumer.addr(), creds());
    for (name, node) in producers {
        cfg.nodes.insert((*name).to_string(), node.addr());
    }
    cfg.connection_count = n;
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.shut_timeout = Duration::from_secs(2);
    cfg.core = CoreConfig {
        setup_timeout: Duration::from_secs(5),
        close_timeout: Duration::from_secs(5),
        takeover_timeout: Duration::from_secs(5),
        shut_timeout: Duration::from_secs(2),
    };
    ReplicationManager::new(cfg)
}

fn added(events: &[AutoEvent], name: &str) -> BTreeSet<u16> {
    events
        .iter()
        .filter_map(|e| match e {
            AutoEvent::Added(n, vb) if n == name => Some(*vb),
            _ => None,
        })
        .collect()
}

/// §7.6: with N connections, vbucket v is served by connection `v mod N`, whose
/// name carries the `/i` suffix for i > 0.
#[tokio::test]
async fn vbuckets_map_to_connection_vb_mod_n() {
    let c = FakeNode::auto(AutoRole::Consumer).await;
    let a = FakeNode::auto(AutoRole::Producer).await;
    let m = manager(&c, &[("nodeA", &a)], 2);
    timeout(
        WAIT,
        m.set_incoming_replication_map(map(&[("nodeA", &[0, 1, 2, 3, 4])])),
    )
    .await
    .expect("hangs")
    .expect("set-up succeeds");
    assert_eq!(
        m.get_actual_replications(),
        map(&[("nodeA", &[0, 1, 2, 3, 4])])
    );
    let r0 = m.replicator("nodeA", 0).expect("connection 0");
    let r1 = m.replicator("nodeA", 1).expect("connection 1");
    assert_eq!(r0.get_partitions(), vbs(&[0, 2, 4]));
    assert_eq!(r1.get_partitions(), vbs(&[1, 3]));
    assert_eq!(r0.connection_name(), "replication:nodeA->nodeC:default");
    assert_eq!(r1.connection_name(), "replication:nodeA->nodeC:default/1");
    let ev = a.events();
    assert_eq!(added(&ev, r0.connection_name()), [0, 2, 4].into());
    assert_eq!(added(&ev, r1.connection_name()), [1, 3].into());
    assert_eq!(
        m.get_replicator_for_vb(Vbid(3)),
        Some(("nodeA".to_string(), 1))
    );
    m.shutdown().await;
}

/// §8.2 (MB-10934): a node absent from the desired map loses its replicators; they
/// are shut gracefully (streams closed on the consumer node) and their sockets closed.
#[tokio::test]
async fn removing_a_node_stops_its_replicators() {
    let c = FakeNode::auto(AutoRole::Consumer).await;
    let a = FakeNode::auto(AutoRole::Producer).await;
    let b = FakeNode::auto(AutoRole::Producer).await;
    let m = manager(&c, &[("nodeA", &a), ("nodeB", &b)], 1);
    m.set_incoming_replication_map(map(&[("nodeA", &[0, 1]), ("nodeB", &[2])]))
        .await
        .expect("set-up succeeds");
    assert_eq!(
        m.get_actual_replications(),
        map(&[("nodeA", &[0, 1]), ("nodeB", &[2])])
    );
    let b_name = m
        .replicator("nodeB", 0)
        .expect("b")
        .connection_name()
        .to_string();

    m.set_incoming_replication_map(map(&[("nodeA", &[0])]))
        .await
        .expect("removal succeeds");
    assert_eq!(m.get_actual_replications(), map(&[("nodeA", &[0])]));
    assert!(m.replicator("nodeB", 0).is_none());
    b.wait_events("node B's connection closed", |e| {
        e.contains(&AutoEvent::Eof(b_name.clone()))
    })
    .await;
    c.wait_events("vb 2 closed on the consumer", |e| {
        e.contains(&AutoEvent::Closed(b_name.clone(), 2))
    })
    .await;
    // An empty map stops everything.
    m.set_incoming_replication_map(ReplicationMap::new())
        .await
        .expect("stop all");
    assert!(m.get_actual_replications().is_empty());
    assert!(m.replicators().is_empty());
}

/// §8.2 change_vbucket_replication and remove_undesired_replications.
#[tokio::test]
async fn change_and_remove_follow_actual_replications() {
    let c = FakeNode::auto(AutoRole::Consumer).await;
    let a = FakeNode::auto(AutoRole::Producer).await;
    let b = FakeNode::auto(AutoRole::Producer).await;
    let m = manager(&c, &[("nodeA", &a), ("nodeB", &b)], 1);
    m.set_incoming_replication_map(map(&[("nodeA", &[0, 1])]))
        .await
        .expect("set");
    m.change_vbucket_replication(Vbid(1), Some("nodeB"))
        .await
        .expect("change");
    assert_eq!(
        m.get_actual_replications(),
        map(&[("nodeA", &[0]), ("nodeB", &[1])])
    );
    m.change_vbucket_replication(Vbid(0), None)
        .await
        .expect("change");
    assert_eq!(m.get_actual_replications(), map(&[("nodeB", &[1])]));
    assert!(m.replicator("nodeA", 0).is_none());
    // Never adds: vb 5 from B is not created.
    m.remove_undesired_replications(&map(&[("nodeB", &[1, 5])]))
        .await
        .expect("remove");
    assert_eq!(m.get_actual_replications(), map(&[("nodeB", &[1])]));
    m.remove_undesired_replications(&ReplicationMap::new())
        .await
        .expect("remove");
    assert!(m.get_actual_replications().is_empty());
}

/// §8.2 update_replication_count: changing N restarts the connections with the new
/// mapping.
#[tokio::test]
async fn changing_the_connection_count_restarts_connections() {
    let c = FakeNode::auto(AutoRole::Consumer).await;
    let a = FakeNode::auto(AutoRole::Producer).await;
    let m = manager(&c, &[("nodeA", &a)], 1);
    m.set_incoming_replication_map(map(&[("nodeA", &[0, 1, 2, 3])]))
        .await
        .expect("set");
    let old = m.replicator("nodeA", 0).expect("one connection");
    assert_eq!(old.get_partitions(), vbs(&[0, 1, 2, 3]));
    m.set_connection_count(2).await.expect("restart");
    assert!(!old.is_running());
    assert_eq!(m.connection_count(), 2);
    assert_eq!(
        m.get_actual_replications(),
        map(&[("nodeA", &[0, 1, 2, 3])])
    );
    assert_eq!(
        m.replicator("nodeA", 0).expect("c0").get_partitions(),
        vbs(&[0, 2])
    );
    assert_eq!(
        m.replicator("nodeA", 1).expect("c1").get_partitions(),
        vbs(&[1, 3])
    );
    m.shutdown().await;
}

/// §11.12: a failing node does not stop the others; the error names the node.
#[tokio::test]
async fn unknown_node_fails_alone() {
    let c = FakeNode::auto(AutoRole::Consumer).await;
    let a = FakeNode::auto(AutoRole::Producer).await;
    let m = manager(&c, &[("nodeA", &a)], 1);
    let err = m
        .set_incoming_replication_map(map(&[("nodeA", &[0]), ("nodeX", &[1])]))
        .await
        .expect_err("nodeX is unknown");
    match &err {
        ReplError::Replications { errors } => {
            assert_eq!(errors.len(), 1);
            assert_eq!(errors[0].0, "nodeX");
            assert!(
                matches!(&errors[0].1, ReplError::UnknownNode { node } if node == "nodeX"),
                "{errors:?}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(m.get_actual_replications(), map(&[("nodeA", &[0])]));
    m.shutdown().await;
}

/// §8.1 IMPROVE (MB-67329): reads never wait behind an in-flight set-up; a dead
/// connection is replaced on the next set operation (§11.11).
#[tokio::test]
async fn reads_do_not_wait_behind_a_stuck_setup_and_dead_connections_are_replaced() {
    let mut c = FakeNode::default_node().await; // scripted by hand: never answers
    let a = FakeNode::auto(AutoRole::Producer).await;
    let m = std::sync::Arc::new(manager(&c, &[("nodeA", &a)], 1));
    let m2 = std::sync::Arc::clone(&m);
    let stuck = tokio::spawn(async move {
        m2.set_incoming_replication_map(map(&[("nodeA", &[7])]))
            .await
    });
    let mut conn = c.accept().await;
    let _add = conn.expect(Opcode::DcpAddStream).await;
    let t0 = Instant::now();
    assert!(m.get_actual_replications().is_empty());
    assert_eq!(m.get_replicator_for_vb(Vbid(7)), None);
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "reads returned without waiting"
    );
    // The consumer node drops the connection: the set-up fails, naming the node.
    conn.close().await;
    let err = timeout(WAIT, stuck)
        .await
        .expect("hangs")
        .expect("task")
        .expect_err("fails");
    assert!(
        matches!(&err, ReplError::Replications { errors }
            if matches!(errors.first(), Some((node, ReplError::ConnectionClosed { .. })) if node == "nodeA")),
        "{err:?}"
    );
    // Next call: the dead connection is replaced (and this time it hangs again,
    // proving a new connection was opened).
    let m3 = std::sync::Arc::clone(&m);
    let again = tokio::spawn(async move {
        m3.set_incoming_replication_map(map(&[("nodeA", &[7])]))
            .await
    });
    let mut conn2 = c.accept().await;
    let _add = conn2.expect(Opcode::DcpAddStream).await;
    conn2.close().await;
    let _ = timeout(WAIT, again).await.expect("hangs");
}
