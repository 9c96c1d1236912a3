//! Progress tests: the §5.4 formula, the overall mean, counts and the §3.5 JSON shapes.

use serde_json::json;

use super::*;

fn n(name: &str) -> NodeId {
    NodeId(format!("ns_1@{name}"))
}

fn mv(vb: u16, old: &[Option<&str>], new: &[Option<&str>]) -> Move {
    let chain = |c: &[Option<&str>]| c.iter().map(|s| s.map(n)).collect();
    Move {
        vb: Vbid(vb),
        old: chain(old),
        new: chain(new),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// §5.4: a node no move touches is at 1.
#[test]
fn no_moves_is_full_progress() {
    let p = BucketProgress::new("default", 0, 1, &[], &[n("a"), n("b")]);
    assert!(p.per_node().values().all(|&v| close(v, 1.0)));
    assert!(close(p.overall(), 100.0));
    assert_eq!(p.counts(), MoveCounts::default());
}

/// §5.4: half of a node's moves done → 0.5; the untouched node stays at 1.
#[test]
fn half_the_moves_done_is_half_progress() {
    let moves = [
        mv(0, &[Some("a")], &[Some("b")]),
        mv(1, &[Some("a")], &[Some("b")]),
    ];
    let mut p = BucketProgress::new("default", 0, 1, &moves, &[n("a"), n("b"), n("c")]);
    assert!(close(p.per_node()[&n("a")], 0.0));
    p.set_state(Vbid(0), MoveState::Done);
    let per = p.per_node();
    assert!(close(per[&n("a")], 0.5));
    assert!(close(per[&n("b")], 0.5));
    assert!(close(per[&n("c")], 1.0));
    assert!(close(p.overall(), (0.5 + 0.5 + 1.0) / 3.0 * 100.0));
}

/// §5.4: bucket i of b counts as (i + p)/b: the second of two buckets is 0.5 + p/2.
#[test]
fn second_of_two_buckets_is_half_plus_half_p() {
    let moves = [
        mv(0, &[Some("a")], &[Some("b")]),
        mv(1, &[Some("a")], &[Some("b")]),
        mv(2, &[Some("a")], &[Some("b")]),
        mv(3, &[Some("a")], &[Some("b")]),
    ];
    let mut p = BucketProgress::new("second", 1, 2, &moves, &[n("a"), n("b")]);
    assert!(close(p.per_node()[&n("a")], 0.5));
    p.set_state(Vbid(0), MoveState::Done);
    assert!(close(p.per_node()[&n("a")], 0.5 + 0.25 / 2.0));
    assert!(close(p.overall(), 62.5));
}

/// §5.4: only the old active and the builders (`B`: every new-chain node but the old
/// active, a replica that stays included) count; an old replica that leaves does not;
/// failed and aborted moves are still left.
#[test]
fn only_old_active_and_builders_count_and_failed_moves_are_left() {
    let moves = [mv(0, &[Some("a"), Some("c")], &[Some("b"), Some("d")])];
    let nodes = [n("a"), n("b"), n("c"), n("d")];
    let mut p = BucketProgress::new("default", 0, 1, &moves, &nodes);
    let per = p.per_node();
    assert!(close(per[&n("a")], 0.0));
    assert!(close(per[&n("b")], 0.0));
    assert!(close(per[&n("c")], 1.0));
    assert!(close(per[&n("d")], 0.0));
    p.set_state(Vbid(0), MoveState::Failed);
    assert!(close(p.per_node()[&n("a")], 0.0));
    p.set_state(Vbid(0), MoveState::Aborted);
    assert!(close(p.per_node()[&n("a")], 0.0));
    let stays = [mv(0, &[Some("a"), Some("c")], &[Some("b"), Some("c")])];
    let p = BucketProgress::new("default", 0, 1, &stays, &nodes);
    assert!(close(p.per_node()[&n("c")], 0.0), "c is in B");
}

#[test]
fn between_buckets_is_finished_over_count_and_all_one_after_the_last() {
    let nodes = [n("a"), n("b")];
    assert!(between_buckets(&nodes, 1, 4)
        .values()
        .all(|&v| close(v, 0.25)));
    assert!(between_buckets(&nodes, 4, 4)
        .values()
        .all(|&v| close(v, 1.0)));
    assert!(between_buckets(&nodes, 0, 0)
        .values()
        .all(|&v| close(v, 1.0)));
    assert!(close(overall_of(&between_buckets(&nodes, 1, 2)), 50.0));
    assert!(close(overall_of(&BTreeMap::new()), 100.0));
}

#[test]
fn counts_follow_states() {
    let moves: Vec<Move> = (0..6)
        .map(|vb| mv(vb, &[Some("a")], &[Some("b")]))
        .collect();
    let mut p = BucketProgress::new("default", 0, 1, &moves, &[n("a"), n("b")]);
    p.set_state(Vbid(0), MoveState::Done);
    p.set_state(Vbid(1), MoveState::Building);
    p.set_state(Vbid(2), MoveState::Persisting);
    p.set_state(Vbid(3), MoveState::Takeover);
    p.set_state(Vbid(4), MoveState::Failed);
    p.set_state(Vbid(99), MoveState::Done);
    assert_eq!(
        p.counts(),
        MoveCounts {
            total: 6,
            done: 1,
            running: 3,
            backfilling: 2
        }
    );
    assert_eq!(p.state(Vbid(3)), Some(MoveState::Takeover));
    assert_eq!(p.state(Vbid(99)), None);
    assert_eq!(
        serde_json::to_value(p.counts()).expect("serialises"),
        json!({"total":6,"done":1,"running":3,"backfilling":2})
    );
    assert_eq!(
        serde_json::to_value(MoveState::Backfilling).expect("serialises"),
        json!("backfilling")
    );
}

/// §3.5: the `moves` object lists started moves that did not end well, with docsLeft.
#[test]
fn moves_json_shape() {
    let moves = [
        mv(5, &[Some("a"), Some("b")], &[Some("d"), Some("a")]),
        mv(6, &[Some("a"), None], &[Some("a"), Some("c")]),
        mv(7, &[Some("a"), None], &[Some("a"), Some("d")]),
    ];
    let mut p = BucketProgress::new("default", 0, 1, &moves, &[n("a"), n("b"), n("c"), n("d")]);
    p.set_state(Vbid(5), MoveState::Backfilling);
    p.set_docs_left(Vbid(5), 830, 1_000);
    p.set_state(Vbid(6), MoveState::Done);
    assert_eq!(
        p.moves_json(),
        json!({"total":3,"done":1,"running":1,"backfilling":1,"vbuckets":[
            {"vb":5,"from":["ns_1@a","ns_1@b"],"to":["ns_1@d","ns_1@a"],"state":"backfilling","docsLeft":830}
        ]})
    );
    p.set_state(Vbid(7), MoveState::Building);
    let v = p.moves_json();
    assert_eq!(
        v["vbuckets"][1],
        json!({"vb":7,"from":["ns_1@a",null],"to":["ns_1@a","ns_1@d"],"state":"building"})
    );
}

/// §3.5/§5.4: `detailedProgress` per node, docs from estimates at most 5 s old.
#[test]
fn detailed_json_shape_and_estimate_age() {
    let moves = [
        mv(5, &[Some("a"), Some("b")], &[Some("d"), Some("a")]),
        mv(6, &[Some("a"), Some("b")], &[Some("a"), Some("d")]),
    ];
    let mut p = BucketProgress::new("default", 0, 1, &moves, &[n("a"), n("d")]);
    p.set_state(Vbid(5), MoveState::Backfilling);
    p.set_docs_left(Vbid(5), 5000, 0);
    p.set_docs_left(Vbid(5), 2900, 1_000);
    p.set_state(Vbid(6), MoveState::Backfilling);
    p.set_docs_left(Vbid(6), 40, 1_000);
    let v = p.detailed_json(6_000);
    assert_eq!(v["bucket"], json!("default"));
    assert_eq!(v["bucketNumber"], json!(1));
    assert_eq!(v["bucketsCount"], json!(1));
    assert_eq!(
        v["perNode"]["ns_1@d"]["ingoing"],
        json!({"docsTotal":5040,"docsTransferred":2100,"activeVBucketsLeft":1,"replicaVBucketsLeft":1})
    );
    assert_eq!(
        v["perNode"]["ns_1@a"]["outgoing"],
        json!({"docsTotal":5040,"docsTransferred":2100,"activeVBucketsLeft":1,"replicaVBucketsLeft":1})
    );
    assert_eq!(
        v["perNode"]["ns_1@d"]["outgoing"],
        json!({"docsTotal":0,"docsTransferred":0,"activeVBucketsLeft":0,"replicaVBucketsLeft":0})
    );
    // 5 s later the estimates are stale; a done move counts in full.
    p.set_state(Vbid(6), MoveState::Done);
    let v = p.detailed_json(6_001);
    assert_eq!(
        v["perNode"]["ns_1@d"]["ingoing"],
        json!({"docsTotal":40,"docsTransferred":40,"activeVBucketsLeft":1,"replicaVBucketsLeft":0})
    );
}
