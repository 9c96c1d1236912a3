//! Janitor core tests: one case per chain rule of cluster.md §6.2 with its edges, the
//! apply phases of §6.3, and property tests tying fix, apply and I6 together.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn n(name: &str) -> NodeId {
    NodeId(format!("ns_1@{name}"))
}

fn chain(nodes: &[Option<&str>]) -> Chain {
    nodes.iter().map(|s| s.map(n)).collect()
}

fn copy(state: VbState, high_seqno: u64) -> VbCopy {
    VbCopy { state, high_seqno }
}

/// `actual` with the given copies of vbucket 0: `(node, state, high seqno)`; `servers`
/// all get an entry, holding nothing unless listed.
fn actual0(servers: &[&str], copies: &[(&str, VbState, u64)]) -> Actual {
    let mut actual: Actual = servers.iter().map(|s| (n(s), BTreeMap::new())).collect();
    for &(node, state, seqno) in copies {
        actual
            .entry(n(node))
            .or_default()
            .insert(0, copy(state, seqno));
    }
    actual
}

fn decide(c: &[Option<&str>], f: Option<&[Option<&str>]>, actual: &Actual) -> Decision {
    let f = f.map(chain);
    decide_chain(0, &chain(c), f.as_deref(), actual)
}

use VbState::{Active, Dead, Pending, Replica};

// ---- J1 ----

/// §6.2 J1: no active, the head holds data: keep (apply activates the head).
#[test]
fn j1_no_active_and_head_with_data_keeps_the_chain() {
    let actual = actual0(&["a", "b"], &[("a", Dead, 10), ("b", Replica, 20)]);
    let d = decide(&[Some("a"), Some("b")], None, &actual);
    assert_eq!(d.rule, Rule::J1);
    assert_eq!(d.chain, chain(&[Some("a"), Some("b")]));
}

/// §6.2 J1: no copy anywhere holds data (a new bucket): keep, even with the head's copy
/// missing.
#[test]
fn j1_no_data_anywhere_keeps_the_chain_even_without_a_head_copy() {
    let actual = actual0(&["a", "b", "c"], &[("b", Replica, 0), ("c", Dead, 0)]);
    let d = decide(&[Some("a"), Some("b")], None, &actual);
    assert_eq!(d.rule, Rule::J1);
    assert_eq!(d.chain, chain(&[Some("a"), Some("b")]));
}

/// Pending is not active: a pending head with data is J1, not J4.
#[test]
fn j1_pending_copies_count_as_not_active() {
    let actual = actual0(&["a", "b"], &[("a", Pending, 5), ("b", Pending, 9)]);
    let d = decide(&[Some("a"), Some("b")], None, &actual);
    assert_eq!(d.rule, Rule::J1);
    assert!(d.actives.is_empty());
}

// ---- J2 ----

/// §6.2 J2 (IMPROVE): the head's copy is empty, a replica has data: the copy with the
/// highest high seqno becomes the head, the old head stays in the chain.
#[test]
fn j2_empty_head_gives_way_to_the_highest_copy_in_the_chain() {
    let actual = actual0(
        &["a", "b", "c"],
        &[("a", Dead, 0), ("b", Replica, 7), ("c", Replica, 9)],
    );
    let d = decide(&[Some("a"), Some("b"), Some("c")], None, &actual);
    assert_eq!(d.rule, Rule::J2);
    assert_eq!(d.chain, chain(&[Some("c"), Some("a"), Some("b")]));
}

/// §6.2 J2: equal high seqnos go to the earlier chain position, not the name.
#[test]
fn j2_ties_go_to_chain_order() {
    let actual = actual0(&["a", "b", "c"], &[("b", Replica, 7), ("c", Replica, 7)]);
    let d = decide(&[Some("a"), Some("c"), Some("b")], None, &actual);
    assert_eq!(d.rule, Rule::J2);
    assert_eq!(d.chain, chain(&[Some("c"), Some("a"), Some("b")]));
}

/// J2: on equal seqnos a chain member beats a copy outside the chain.
#[test]
fn j2_ties_prefer_chain_members_over_other_copies() {
    let actual = actual0(&["a", "b", "c"], &[("a", Dead, 4), ("b", Dead, 4)]);
    let d = decide(&[Some("c"), Some("b")], None, &actual);
    assert_eq!(d.rule, Rule::J2);
    assert_eq!(d.chain, chain(&[Some("b"), Some("c")]));
}

/// J2: a copy outside the chain with the most data is promoted; the empty head gives way
/// and the other replicas keep their places.
#[test]
fn j2_copy_outside_the_chain_replaces_the_empty_head() {
    let actual = actual0(
        &["a", "b", "c", "d"],
        &[("a", Dead, 0), ("b", Replica, 3), ("d", Dead, 50)],
    );
    let d = decide(&[Some("a"), Some("b"), None], None, &actual);
    assert_eq!(d.rule, Rule::J2);
    assert_eq!(d.chain, chain(&[Some("d"), Some("b"), None]));
}

/// J2: a missing head copy counts as empty (the head lost its vbucket).
#[test]
fn j2_missing_head_copy_counts_as_empty() {
    let actual = actual0(&["a", "b"], &[("b", Replica, 1)]);
    let d = decide(&[Some("a"), Some("b")], None, &actual);
    assert_eq!(d.rule, Rule::J2);
    assert_eq!(d.chain, chain(&[Some("b"), Some("a")]));
}

// ---- J3 ----

/// §6.2 J3: an all-null chain (data lost by a forced failover) is kept, even when a dead
/// copy somewhere still has data: the spec leaves recreating it to the next rebalance.
#[test]
fn j3_all_null_chain_is_kept_even_when_a_copy_has_data() {
    let actual = actual0(&["a", "b"], &[("a", Dead, 12)]);
    let d = decide(&[None, None], None, &actual);
    assert_eq!(d.rule, Rule::J3);
    assert_eq!(d.chain, chain(&[None, None]));
}

/// J3 yields to J6: an active copy under an all-null chain is adopted, not demoted.
#[test]
fn j3_does_not_apply_when_a_copy_is_active() {
    let actual = actual0(&["a", "b"], &[("b", Active, 3)]);
    let d = decide(&[None, None], None, &actual);
    assert_eq!(d.rule, Rule::J6);
    assert_eq!(d.chain, chain(&[Some("b"), None]));
}

// ---- J4 ----

/// §6.2 J4: the head alone is active: keep, whatever the replicas report.
#[test]
fn j4_active_head_keeps_the_chain() {
    let actual = actual0(&["a", "b"], &[("a", Active, 1), ("b", Dead, 0)]);
    let ff = [Some("b"), Some("a")];
    let d = decide(&[Some("a"), Some("b")], Some(&ff), &actual);
    assert_eq!(d.rule, Rule::J4);
    assert_eq!(d.chain, chain(&[Some("a"), Some("b")]));
    assert_eq!(d.actives, vec![n("a")]);
}

// ---- J5 ----

/// §6.2 J5 (scenario T7): the fast-forward head is active, its replicas are replicas and
/// the old head is dead: a takeover finished before its commit; adopt F.
#[test]
fn j5_adopts_the_fast_forward_chain_after_an_uncommitted_takeover() {
    let actual = actual0(
        &["a", "b", "c"],
        &[("a", Dead, 9), ("b", Replica, 9), ("c", Active, 9)],
    );
    let ff = [Some("c"), Some("b")];
    let d = decide(&[Some("a"), Some("b")], Some(&ff), &actual);
    assert_eq!(d.rule, Rule::J5);
    assert_eq!(d.chain, chain(&[Some("c"), Some("b")]));
}

/// J5: null tail entries of F need nothing.
#[test]
fn j5_null_fast_forward_replicas_need_no_copy() {
    let actual = actual0(&["a", "c"], &[("a", Replica, 9), ("c", Active, 9)]);
    let ff = [Some("c"), None];
    let d = decide(&[Some("a"), None], Some(&ff), &actual);
    assert_eq!(d.rule, Rule::J5);
    assert_eq!(d.chain, chain(&[Some("c"), None]));
}

/// J5 needs a fast-forward map: without one the same states are J6.
#[test]
fn j5_without_a_fast_forward_map_is_j6() {
    let actual = actual0(
        &["a", "b", "c"],
        &[("a", Dead, 9), ("b", Replica, 9), ("c", Active, 9)],
    );
    let d = decide(&[Some("a"), Some("b")], None, &actual);
    assert_eq!(d.rule, Rule::J6);
    assert_eq!(d.chain, chain(&[Some("c"), None]));
}

/// J5 needs every non-null F replica to report `replica`: one still dead (its build did
/// not finish) makes it J6.
#[test]
fn j5_not_applied_when_a_fast_forward_replica_is_not_replica() {
    let actual = actual0(
        &["a", "b", "c"],
        &[("a", Replica, 9), ("b", Dead, 0), ("c", Active, 9)],
    );
    let ff = [Some("c"), Some("b")];
    let d = decide(&[Some("a"), Some("c")], Some(&ff), &actual);
    assert_eq!(d.rule, Rule::J6);
    assert_eq!(d.chain, chain(&[Some("c"), None]));
}

/// J5 needs F's head to be the active: F pointing elsewhere is J6.
#[test]
fn j5_not_applied_when_the_active_is_not_the_fast_forward_head() {
    let actual = actual0(&["a", "b", "c"], &[("b", Active, 9), ("c", Replica, 9)]);
    let ff = [Some("c"), Some("a")];
    let d = decide(&[Some("a"), Some("b")], Some(&ff), &actual);
    assert_eq!(d.rule, Rule::J6);
    assert_eq!(d.chain, chain(&[Some("b"), None]));
}

/// J5 never adopts a malformed fast-forward chain (node twice) or one of another length.
#[test]
fn j5_not_applied_to_a_malformed_fast_forward_chain() {
    let actual = actual0(&["a", "c"], &[("a", Replica, 9), ("c", Active, 9)]);
    let twice = [Some("c"), Some("c")];
    let d = decide(&[Some("a"), None], Some(&twice), &actual);
    assert_eq!(d.rule, Rule::J6);
    let longer = [Some("c"), Some("a"), None];
    let d = decide(&[Some("a"), None], Some(&longer), &actual);
    assert_eq!(d.rule, Rule::J6);
    assert_eq!(d.chain, chain(&[Some("c"), None]));
}

// ---- J6 ----

/// §6.2 J6: one active in the chain but not its head: `[x] + C after x`, padded.
#[test]
fn j6_active_replica_becomes_head_with_the_chain_after_it() {
    let actual = actual0(
        &["a", "b", "c", "d"],
        &[
            ("a", Dead, 9),
            ("b", Replica, 9),
            ("c", Active, 9),
            ("d", Replica, 9),
        ],
    );
    let d = decide(&[Some("a"), Some("b"), Some("c"), Some("d")], None, &actual);
    assert_eq!(d.rule, Rule::J6);
    assert_eq!(d.chain, chain(&[Some("c"), Some("d"), None, None]));
}

/// §6.2 J6: one active outside the chain: `[x, null…]`.
#[test]
fn j6_active_outside_the_chain_becomes_a_lone_head() {
    let actual = actual0(&["a", "b", "c"], &[("c", Active, 2), ("b", Replica, 2)]);
    let d = decide(&[Some("a"), Some("b"), None], None, &actual);
    assert_eq!(d.rule, Rule::J6);
    assert_eq!(d.chain, chain(&[Some("c"), None, None]));
}

// ---- J7, J8 ----

/// §6.2 J7: several actives including the head: keep, the others are recorded to demote.
#[test]
fn j7_several_actives_with_the_head_keep_the_chain_and_record_the_extras() {
    let actual = actual0(
        &["a", "b", "c"],
        &[("a", Active, 5), ("b", Active, 5), ("c", Active, 1)],
    );
    let map = Map::new(vec![chain(&[Some("b"), Some("a")])]);
    let out = fix_chains(&map, None, &actual);
    assert_eq!(out.map, map);
    assert!(out.fixes.is_empty());
    assert!(out.several_actives.is_empty());
    assert_eq!(
        out.extra_actives,
        vec![SeveralActives {
            vb: 0,
            nodes: vec![n("a"), n("c")]
        }]
    );
    let plan = apply_plan(&out.map, &[n("a"), n("b"), n("c")], &actual);
    assert_eq!(plan[&n("a")].demote.get(&0), Some(&Wanted::Replica));
    assert_eq!(plan[&n("c")].demote.get(&0), Some(&Wanted::Dead));
    assert!(plan[&n("b")].promote.is_empty());
}

/// §6.2 J8: several actives, the head not among them: no change, the pass must fail.
#[test]
fn j8_several_actives_without_the_head_change_nothing_and_fail_the_pass() {
    let actual = actual0(&["a", "b", "c"], &[("c", Active, 5), ("b", Active, 6)]);
    let map = Map::new(vec![chain(&[Some("a"), Some("b")])]);
    let ff = Map::new(vec![chain(&[Some("b"), Some("c")])]);
    let out = fix_chains(&map, Some(&ff), &actual);
    assert_eq!(out.map, map);
    assert!(out.fixes.is_empty());
    assert!(out.extra_actives.is_empty());
    assert_eq!(
        out.several_actives,
        vec![SeveralActives {
            vb: 0,
            nodes: vec![n("b"), n("c")]
        }]
    );
}

// ---- fix_chains ----

/// Only real changes are listed, with the rule that made them.
#[test]
fn fix_chains_lists_only_changed_chains_with_their_rule() {
    let mut actual = actual0(&["a", "b"], &[("a", Active, 3), ("b", Replica, 3)]);
    actual.entry(n("b")).or_default().insert(1, copy(Active, 4));
    let map = Map::new(vec![
        chain(&[Some("a"), Some("b")]),
        chain(&[Some("a"), Some("b")]),
    ]);
    let out = fix_chains(&map, None, &actual);
    assert_eq!(
        out.fixes,
        vec![ChainFix {
            vb: 1,
            rule: Rule::J6,
            old: chain(&[Some("a"), Some("b")]),
            new: chain(&[Some("b"), None]),
        }]
    );
    assert_eq!(out.map.chain(0), map.chain(0));
    assert_eq!(out.map.chain(1), Some(&chain(&[Some("b"), None])));
}

// ---- apply_plan, mismatches ----

/// §6.3: demote lists only differing states (missing replicas too), promote only
/// non-active heads, copies outside the chain go dead, every server gets an entry and
/// the incoming map is replica <- head.
#[test]
fn apply_plan_lists_phase_work_per_node() {
    let map = Map::new(vec![
        chain(&[Some("a"), Some("b")]),
        chain(&[Some("b"), Some("a")]),
        chain(&[Some("a"), None]),
    ]);
    let mut actual: Actual = BTreeMap::new();
    let a = actual.entry(n("a")).or_default();
    a.insert(0, copy(Dead, 5)); // head, dead -> promote
    a.insert(1, copy(Active, 5)); // replica wanted, active -> demote replica
    a.insert(2, copy(Active, 5)); // fine
    let b = actual.entry(n("b")).or_default();
    b.insert(1, copy(Replica, 5)); // head, replica -> promote; vb 0 missing -> replica
    b.insert(2, copy(Pending, 1)); // not in chain -> dead
    let servers = [n("a"), n("b"), n("c")];
    let plan = apply_plan(&map, &servers, &actual);

    let want_a = NodeApply {
        demote: BTreeMap::from([(1, Wanted::Replica)]),
        promote: vec![0],
        incoming: BTreeMap::from([(n("b"), vec![1])]),
    };
    let want_b = NodeApply {
        demote: BTreeMap::from([(0, Wanted::Replica), (2, Wanted::Dead)]),
        promote: vec![1],
        incoming: BTreeMap::from([(n("a"), vec![0])]),
    };
    assert_eq!(plan.len(), 3);
    assert_eq!(plan[&n("a")], want_a);
    assert_eq!(plan[&n("b")], want_b);
    assert_eq!(plan[&n("c")], NodeApply::default());

    let before = mismatches(&map, &servers, &actual);
    assert_eq!(
        before,
        vec![
            (0, n("a"), Wanted::Active, Some(Dead)),
            (0, n("b"), Wanted::Replica, None),
            (1, n("a"), Wanted::Replica, Some(Active)),
            (1, n("b"), Wanted::Active, Some(Replica)),
            (2, n("b"), Wanted::Dead, Some(Pending)),
        ]
    );
    let after = simulate(&actual, &plan, true);
    assert_eq!(mismatches(&map, &servers, &after), vec![]);
}

/// A node that reported copies but is not a server still has its actives demoted, so no
/// promotion can meet a second active.
#[test]
fn apply_plan_demotes_actives_on_reporting_non_servers() {
    let map = Map::new(vec![chain(&[Some("a"), None])]);
    let actual = actual0(&["a", "x"], &[("a", Replica, 5), ("x", Active, 5)]);
    let plan = apply_plan(&map, &[n("a")], &actual);
    assert_eq!(plan[&n("x")].demote, BTreeMap::from([(0, Wanted::Dead)]));
    assert_eq!(plan[&n("a")].promote, vec![0]);
}

/// Copies of vbuckets the map does not have are wanted dead.
#[test]
fn apply_plan_kills_copies_beyond_the_map() {
    let map = Map::new(vec![chain(&[Some("a")])]);
    let mut actual = actual0(&["a"], &[("a", Active, 1)]);
    actual
        .entry(n("a"))
        .or_default()
        .insert(7, copy(Replica, 1));
    let plan = apply_plan(&map, &[n("a")], &actual);
    assert_eq!(plan[&n("a")].demote, BTreeMap::from([(7, Wanted::Dead)]));
    assert!(plan[&n("a")].promote.is_empty());
}

/// The wire form of the states is the agent API's lowercase words (§2.6).
#[test]
fn states_serialize_as_lowercase_words() -> Result<(), serde_json::Error> {
    assert_eq!(serde_json::to_string(&Wanted::Replica)?, "\"replica\"");
    assert_eq!(serde_json::to_string(&VbState::Pending)?, "\"pending\"");
    assert_eq!(serde_json::from_str::<VbState>("\"dead\"")?, VbState::Dead);
    Ok(())
}

// ---- properties ----

/// Carries out an apply on `actual`: the demote phase on every node, then (if `promote`)
/// the promote phase. A created copy starts empty.
fn simulate(actual: &Actual, plan: &BTreeMap<NodeId, NodeApply>, promote: bool) -> Actual {
    let mut out = actual.clone();
    for (node, work) in plan {
        let copies = out.entry(node.clone()).or_default();
        for (&vb, &want) in &work.demote {
            let state = match want {
                Wanted::Active => Active,
                Wanted::Replica => Replica,
                Wanted::Dead => Dead,
            };
            copies.entry(vb).or_insert(copy(state, 0)).state = state;
        }
    }
    if promote {
        for (node, work) in plan {
            let copies = out.entry(node.clone()).or_default();
            for &vb in &work.promote {
                copies.entry(vb).or_insert(copy(Active, 0)).state = Active;
            }
        }
    }
    out
}

fn is_valid_chain(c: &Chain, width: usize) -> bool {
    c.len() == width && chain_is_well_formed(c)
}

/// A valid chain of `width` over nodes `0..n`: distinct nodes, nulls only at the tail.
fn arb_chain(n: usize, width: usize) -> impl Strategy<Value = Chain> {
    let order: Vec<usize> = (0..n).collect();
    (Just(order).prop_shuffle(), 0..=width.min(n)).prop_map(move |(order, len)| {
        let mut c: Chain = order[..len].iter().map(|&i| Some(node(i))).collect();
        c.resize(width, None);
        c
    })
}

fn node(i: usize) -> NodeId {
    NodeId(format!("ns_1@n{i}"))
}

fn arb_state() -> impl Strategy<Value = VbState> {
    prop_oneof![Just(Active), Just(Replica), Just(Pending), Just(Dead)]
}

#[derive(Debug, Clone)]
struct Case {
    servers: Vec<NodeId>,
    map: Map,
    ff: Option<Map>,
    actual: Actual,
}

fn arb_case() -> impl Strategy<Value = Case> {
    (1usize..=5, 1usize..=12, 0usize..=3).prop_flat_map(|(n, v, r)| {
        let chains = prop::collection::vec(arb_chain(n, r + 1), v);
        let ff = prop::option::of(prop::collection::vec(arb_chain(n, r + 1), v));
        let seqno = prop_oneof![Just(0u64), 1u64..50];
        let copies = prop::collection::vec(
            prop::collection::vec(prop::option::of((arb_state(), seqno)), v),
            n,
        );
        (chains, ff, copies).prop_map(move |(chains, ff, copies)| {
            let servers: Vec<NodeId> = (0..n).map(node).collect();
            let actual: Actual = copies
                .into_iter()
                .enumerate()
                .map(|(i, per_vb)| {
                    let held = per_vb
                        .into_iter()
                        .enumerate()
                        .filter_map(|(vb, c)| {
                            let (state, high_seqno) = c?;
                            Some((u16::try_from(vb).ok()?, VbCopy { state, high_seqno }))
                        })
                        .collect();
                    (node(i), held)
                })
                .collect();
            Case {
                servers,
                map: Map::new(chains),
                ff: ff.map(Map::new),
                actual,
            }
        })
    })
}

proptest! {
    /// (a) Fixed chains keep their length, name no node twice, have nulls only at the tail.
    #[test]
    fn fixed_maps_stay_valid(case in arb_case()) {
        let out = fix_chains(&case.map, case.ff.as_ref(), &case.actual);
        prop_assert_eq!(out.map.num_vbuckets(), case.map.num_vbuckets());
        for (old, new) in case.map.chains().iter().zip(out.map.chains()) {
            prop_assert!(is_valid_chain(new, old.len()), "{:?} -> {:?}", old, new);
        }
        for fix in &out.fixes {
            prop_assert_ne!(&fix.old, &fix.new);
            prop_assert!(matches!(fix.rule, Rule::J2 | Rule::J5 | Rule::J6));
        }
    }

    /// (b) Carrying out the apply leaves no I6 mismatch.
    #[test]
    fn applying_the_plan_leaves_no_mismatch(case in arb_case()) {
        let out = fix_chains(&case.map, case.ff.as_ref(), &case.actual);
        let plan = apply_plan(&out.map, &case.servers, &case.actual);
        for server in &case.servers {
            prop_assert!(plan.contains_key(server));
        }
        let after = simulate(&case.actual, &plan, true);
        prop_assert_eq!(mismatches(&out.map, &case.servers, &after), vec![]);
    }

    /// (c) After the demote phase no promoted vbucket is active anywhere, so the promote
    /// phase never makes two actives.
    #[test]
    fn promotions_never_meet_an_active_left_by_the_demote_phase(case in arb_case()) {
        let out = fix_chains(&case.map, case.ff.as_ref(), &case.actual);
        let plan = apply_plan(&out.map, &case.servers, &case.actual);
        let demoted = simulate(&case.actual, &plan, false);
        let after = simulate(&case.actual, &plan, true);
        for work in plan.values() {
            for vb in &work.promote {
                let actives = demoted
                    .values()
                    .filter(|c| c.get(vb).is_some_and(|c| c.state == Active))
                    .count();
                prop_assert_eq!(actives, 0, "vb {} still active after demote", vb);
            }
        }
        for vb in 0..u16::try_from(out.map.num_vbuckets()).unwrap_or(u16::MAX) {
            let actives = after
                .values()
                .filter(|c| c.get(&vb).is_some_and(|c| c.state == Active))
                .count();
            prop_assert!(actives <= 1, "vb {} active {} times", vb, actives);
        }
    }

    /// Every decision meets its rule's condition in the §6.2 table, and J2 promotes a
    /// copy with the most data.
    #[test]
    fn every_decision_meets_its_rule_condition(case in arb_case()) {
        for (index, c) in case.map.chains().iter().enumerate() {
            let vb = u16::try_from(index).unwrap_or(u16::MAX);
            let f = case.ff.as_ref().and_then(|f| f.chain(index)).map(Vec::as_slice);
            let d = decide_chain(vb, c, f, &case.actual);
            let head = c.first().cloned().flatten();
            let new_head = d.chain.first().cloned().flatten();
            let seqno = |node: &NodeId| {
                case.actual.get(node).and_then(|h| h.get(&vb)).map_or(0, |c| c.high_seqno)
            };
            match d.rule {
                Rule::J1 => prop_assert!(
                    d.actives.is_empty() && d.chain == *c
                        && (head.as_ref().is_some_and(|h| seqno(h) > 0)
                            || case.actual.values().all(|h| h.get(&vb).is_none_or(|c| c.high_seqno == 0)))
                ),
                Rule::J2 => {
                    prop_assert!(d.actives.is_empty());
                    let best = case.actual.keys().map(seqno).max().unwrap_or(0);
                    prop_assert!(best > 0);
                    prop_assert_eq!(new_head.as_ref().map(seqno), Some(best));
                }
                Rule::J3 => prop_assert!(
                    d.actives.is_empty() && c.iter().all(Option::is_none) && d.chain == *c
                ),
                Rule::J4 => prop_assert!(d.actives.len() == 1 && head == new_head && d.chain == *c),
                Rule::J5 => {
                    prop_assert!(d.actives.len() == 1 && head.as_ref() != Some(&d.actives[0]));
                    prop_assert_eq!(Some(d.chain.as_slice()), f);
                }
                Rule::J6 => prop_assert!(
                    d.actives.len() == 1 && new_head.as_ref() == Some(&d.actives[0])
                        && head != new_head
                ),
                Rule::J7 => prop_assert!(
                    d.actives.len() >= 2 && head.as_ref().is_some_and(|h| d.actives.contains(h))
                ),
                Rule::J8 => prop_assert!(
                    d.actives.len() >= 2 && !head.as_ref().is_some_and(|h| d.actives.contains(h))
                ),
            }
        }
    }

    /// (d) Fixing again after the apply changes nothing.
    #[test]
    fn fix_chains_is_idempotent_after_the_apply(case in arb_case()) {
        let out = fix_chains(&case.map, case.ff.as_ref(), &case.actual);
        let plan = apply_plan(&out.map, &case.servers, &case.actual);
        let after = simulate(&case.actual, &plan, true);
        let again = fix_chains(&out.map, case.ff.as_ref(), &after);
        prop_assert_eq!(&again.map, &out.map);
        prop_assert!(again.fixes.is_empty());
        prop_assert!(again.extra_actives.is_empty());
        prop_assert!(again.several_actives.is_empty());
    }
}
