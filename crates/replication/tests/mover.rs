//! The vbucket mover and the data-move wait against automatic fake nodes (issue #5
//! item 5; `replication-layer.md` §7.7, §9.2).

mod fake;

use std::time::Duration;

use fake::{AutoEvent, AutoRole, FakeNode, WAIT};
use kv_client::Credentials;
use mcbp::{Status, VbState, Vbid};
use replication::{
    move_vbucket, wait_for_data_move, DataMoveWait, MoveConfig, MoveStep, ReplError, WaitFor,
};
use tokio::time::{timeout, Instant};

fn creds() -> Credentials {
    Credentials {
        user: "admin".into(),
        password: "password".into(),
    }
}

fn takeover_stat(status: &str, estimate: u64) -> Result<Vec<(String, String)>, Status> {
    Ok(vec![
        ("status".into(), status.into()),
        ("estimate".into(), estimate.to_string()),
        ("chk_items".into(), "0".into()),
    ])
}

fn wait_cfg(node: &FakeNode, timeout: Duration) -> DataMoveWait {
    DataMoveWait {
        producer_addr: node.addr(),
        bucket: "default".into(),
        credentials: creds(),
        targets: vec![(Vbid(3), "replication:a->b:default".into())],
        done_limit: 1000,
        timeout,
        poll_interval: Duration::from_millis(10),
    }
}

/// §7.7: calculating-item-count polls again; backfilling/in-memory compare the
/// estimate with the done limit.
#[tokio::test]
async fn data_move_waits_until_the_estimate_is_below_the_limit() {
    let node = FakeNode::default_node().await;
    {
        let mut s = node.script.lock().expect("lock");
        s.vbtakeover
            .push_back(takeover_stat("calculating-item-count", 0));
        s.vbtakeover.push_back(takeover_stat("backfilling", 5000));
        s.vbtakeover.push_back(takeover_stat("in-memory", 999));
    }
    timeout(
        WAIT,
        wait_for_data_move(&wait_cfg(&node, Duration::from_secs(5))),
    )
    .await
    .expect("hangs")
    .expect("caught up");
    let groups = node.script.lock().expect("lock").stat_groups.clone();
    assert_eq!(groups.len(), 3);
    assert_eq!(groups[0], "dcp-vbtakeover 3 replication:a->b:default");
}

/// §7.7 (MB-59522): any other status fails with unexpected_status naming vb and
/// status; NOT_MY_VBUCKET counts as `no_status_stat_seen`.
#[tokio::test]
async fn data_move_fails_on_an_unexpected_status() {
    for (answer, expect) in [
        (takeover_stat("stream_is_dead", 0), "stream_is_dead"),
        (Err(Status::NotMyVbucket), "no_status_stat_seen"),
    ] {
        let node = FakeNode::default_node().await;
        node.script
            .lock()
            .expect("lock")
            .vbtakeover
            .push_back(answer);
        let err = timeout(
            WAIT,
            wait_for_data_move(&wait_cfg(&node, Duration::from_secs(5))),
        )
        .await
        .expect("hangs")
        .expect_err("must fail");
        let j = err.to_json();
        assert_eq!(j["kind"], "unexpected_status");
        assert_eq!(j["vbucket"], 3);
        assert_eq!(j["status"], expect);
    }
}

/// §11.1: the data-move wait is bounded (`waiting_for: data_move`).
#[tokio::test]
async fn data_move_is_bounded() {
    let node = FakeNode::default_node().await;
    node.script
        .lock()
        .expect("lock")
        .vbtakeover
        .push_back(takeover_stat("backfilling", 1_000_000));
    let t0 = Instant::now();
    let err = timeout(
        WAIT,
        wait_for_data_move(&wait_cfg(&node, Duration::from_millis(300))),
    )
    .await
    .expect("hangs")
    .expect_err("must time out");
    assert!(t0.elapsed() < Duration::from_secs(4));
    assert!(
        matches!(&err, ReplError::Timeout { waiting_for: WaitFor::DataMove, vbuckets, .. } if vbuckets == &vec![Vbid(3)]),
        "{err:?}"
    );
    assert_eq!(err.to_json()["waiting_for"], "data_move");
}

fn move_cfg(src: &FakeNode, dst: &FakeNode) -> MoveConfig {
    let mut cfg = MoveConfig::new("default", Vbid(5), src.addr(), dst.addr(), creds());
    cfg.timeout = Duration::from_secs(5);
    cfg
}

/// Issue #5 item 5: replica on the destination, replicate, data move, persistence
/// of the source's high seqno, takeover, destination active and source dead.
#[tokio::test]
async fn move_vbucket_runs_every_step() {
    let src = FakeNode::auto(AutoRole::Producer).await;
    let dst = FakeNode::auto(AutoRole::Consumer).await;
    {
        let mut s = src.script.lock().expect("lock");
        s.vbtakeover
            .push_back(takeover_stat("calculating-item-count", 0));
        s.vbtakeover.push_back(takeover_stat("in-memory", 0));
        s.high_seqnos.push((5, 42));
    }
    dst.script.lock().expect("lock").persistence_tmpfails = 2;
    let report = timeout(WAIT, move_vbucket(&move_cfg(&src, &dst)))
        .await
        .expect("hangs")
        .expect("move succeeds");
    assert_eq!(report.vb, Vbid(5));
    assert_eq!(report.persisted_seqno.0, 42);
    let (set_vbuckets, persistence_calls) = {
        let d = dst.script.lock().expect("lock");
        (d.set_vbuckets.clone(), d.persistence_calls.clone())
    };
    assert_eq!(
        set_vbuckets,
        vec![(5, VbState::Replica), (5, VbState::Active)]
    );
    assert_eq!(persistence_calls.len(), 3);
    assert!(persistence_calls.iter().all(|c| *c == (5, 42)));
    assert_eq!(
        src.script.lock().expect("lock").set_vbuckets,
        vec![(5, VbState::Dead)]
    );
    let name = report.connection_name.clone();
    assert!(src.events().contains(&AutoEvent::TookOver(name.clone(), 5)));
    src.wait_events("the replicator's producer connection closed", |e| {
        e.contains(&AutoEvent::Eof(name.clone()))
    })
    .await;
}

/// A failing step is named, nothing is left active on the destination, and a rerun
/// starts clean and succeeds.
#[tokio::test]
async fn move_failure_names_the_step_and_a_rerun_succeeds() {
    let src = FakeNode::auto(AutoRole::Producer).await;
    let dst = FakeNode::auto(AutoRole::Consumer).await;
    {
        let mut s = src.script.lock().expect("lock");
        s.vbtakeover
            .push_back(takeover_stat("stream_does_not_exist", 0));
        s.high_seqnos.push((5, 7));
    }
    let err = timeout(WAIT, move_vbucket(&move_cfg(&src, &dst)))
        .await
        .expect("hangs")
        .expect_err("data move fails");
    assert!(
        matches!(
            &err,
            ReplError::Move {
                step: MoveStep::DataMove,
                ..
            }
        ),
        "{err:?}"
    );
    let j = err.to_json();
    assert_eq!(j["kind"], "unexpected_status");
    assert_eq!(j["move_step"], "data_move");
    assert_eq!(j["status"], "stream_does_not_exist");
    assert_eq!(
        dst.script.lock().expect("lock").set_vbuckets,
        vec![(5, VbState::Replica)]
    );

    src.script
        .lock()
        .expect("lock")
        .vbtakeover
        .push_back(takeover_stat("in-memory", 0));
    let report = timeout(WAIT, move_vbucket(&move_cfg(&src, &dst)))
        .await
        .expect("hangs")
        .expect("rerun succeeds");
    assert_eq!(report.persisted_seqno.0, 7);
}
