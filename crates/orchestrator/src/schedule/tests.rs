//! Scheduler tests: backfill charging and limits, one case per ordering rule of
//! cluster.md §5.2, and the ns_server-style checker over random moves and completion
//! orders.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::map::{generate, plan, Chain, Map, MapInput};

fn n(name: &str) -> NodeId {
    NodeId(format!("ns_1@{name}"))
}

fn chain(nodes: &[Option<&str>]) -> Chain {
    nodes.iter().map(|s| s.map(n)).collect()
}

fn mv(vb: u16, old: &[Option<&str>], new: &[Option<&str>]) -> Move {
    Move {
        vb: Vbid(vb),
        old: chain(old),
        new: chain(new),
    }
}

fn vbs(moves: &[Move]) -> Vec<u16> {
    moves.iter().map(|m| m.vb.0).collect()
}

fn wide() -> Limits {
    Limits {
        moves_per_node: 64,
        in_flight_per_node: 64,
    }
}

/// Starts `vb` as if it had been chosen earlier, to set up running backfills.
fn start_vb(s: &mut Scheduler, vb: u16) {
    let i = *s.by_vb.get(&Vbid(vb)).expect("the move exists");
    s.start(i);
}

/// (old chain, new chain, expected backfill nodes).
type Case<'a> = (&'a [Option<&'a str>], &'a [Option<&'a str>], &'a [&'a str]);

/// §5.2: old active always, new active if it differs, new replicas holding no copy.
#[test]
fn backfill_is_charged_on_old_active_new_active_and_new_copies() {
    let names = |v: Vec<NodeId>| v.into_iter().map(|x| x.0).collect::<Vec<_>>();
    let cases: &[Case<'_>] = &[
        (
            &[Some("a"), Some("b")],
            &[Some("c"), Some("a")],
            &["a", "c"],
        ),
        (
            &[Some("a"), Some("b")],
            &[Some("a"), Some("c")],
            &["a", "c"],
        ),
        (
            &[Some("a"), Some("b")],
            &[Some("b"), Some("a")],
            &["a", "b"],
        ),
        (
            &[Some("a"), Some("b"), Some("c")],
            &[Some("d"), Some("e"), Some("c")],
            &["a", "d", "e"],
        ),
        (&[Some("a"), Some("b")], &[Some("a"), None], &["a"]),
        (&[None, None], &[Some("a"), Some("b")], &[]),
    ];
    for (old, new, want) in cases {
        let got = names(backfill_nodes(&mv(0, old, new)));
        let want: Vec<String> = want.iter().map(|w| n(w).0).collect();
        assert_eq!(got, want, "{old:?} -> {new:?}");
    }
}

/// §5.2: moves from null all start first, outside every limit, and are not charged.
#[test]
fn moves_from_null_all_start_first_outside_the_limits() {
    let moves = vec![
        mv(0, &[Some("b")], &[Some("a")]),
        mv(1, &[None], &[Some("a")]),
        mv(2, &[None], &[Some("a")]),
        mv(3, &[Some("b")], &[Some("c")]),
    ];
    let limits = Limits {
        moves_per_node: 1,
        in_flight_per_node: 1,
    };
    let mut s = Scheduler::new(moves, limits);
    let first = s.next_moves();
    assert_eq!(vbs(&first[..2]), [1, 2]);
    assert_eq!(
        first.len(),
        3,
        "one of the moves from b fits besides: {first:?}"
    );
    assert!(s.next_moves().is_empty());
    assert_eq!(s.backfills().get(&n("b")), Some(&1));
    s.move_done(Vbid(1));
    s.move_done(Vbid(2));
    assert!(s.next_moves().is_empty(), "moves from null held no slot");
}

/// §5.2: at most `rebalanceMovesPerNode` backfills per node; the slot frees when the
/// persistence wait ends, or when the move ends.
#[test]
fn backfill_limit_holds_and_frees_at_backfill_done() {
    let moves = (0..6)
        .map(|vb| mv(vb, &[Some("a")], &[Some("b")]))
        .collect();
    let mut s = Scheduler::new(moves, Limits::default());
    assert_eq!(vbs(&s.next_moves()), [0, 1, 2, 3]);
    assert!(s.next_moves().is_empty());
    assert_eq!(s.backfills().get(&n("a")), Some(&4));
    s.backfill_done(Vbid(0));
    assert_eq!(s.in_flight(), 4, "a released backfill stays in flight");
    assert_eq!(vbs(&s.next_moves()), [4]);
    s.move_done(Vbid(1));
    assert_eq!(vbs(&s.next_moves()), [5]);
    assert_eq!(s.pending(), 0);
    for vb in 0..6 {
        assert!(!s.is_finished());
        s.move_done(Vbid(vb));
    }
    assert!(s.is_finished());
    assert_eq!(s.in_flight(), 0);
    assert_eq!(s.total(), 6);
    assert!(s.backfills().values().all(|&c| c == 0));
}

/// §5.2: at most 64 (here 2) moves in flight where the node is old or new active; a
/// released backfill does not free the in-flight slot.
#[test]
fn in_flight_limit_holds_until_move_done() {
    let moves = (0..4)
        .map(|vb| mv(vb, &[Some("a")], &[Some("b")]))
        .collect();
    let limits = Limits {
        moves_per_node: 4,
        in_flight_per_node: 2,
    };
    let mut s = Scheduler::new(moves, limits);
    assert_eq!(vbs(&s.next_moves()), [0, 1]);
    s.backfill_done(Vbid(0));
    s.backfill_done(Vbid(1));
    assert!(s.next_moves().is_empty());
    s.move_done(Vbid(0));
    assert_eq!(vbs(&s.next_moves()), [2]);
}

/// §5.2 "every node it is charged to is under both limits": a new replica's node busy
/// at the in-flight limit (as active of other moves) blocks the move.
#[test]
fn in_flight_limit_applies_to_every_charged_node() {
    let moves = vec![
        mv(0, &[Some("c"), None], &[Some("d"), None]),
        mv(1, &[Some("a"), None], &[Some("a"), Some("d")]),
    ];
    let limits = Limits {
        moves_per_node: 4,
        in_flight_per_node: 1,
    };
    let mut s = Scheduler::new(moves, limits);
    assert_eq!(vbs(&s.next_moves()), [0]);
    s.backfill_done(Vbid(0));
    assert!(
        s.next_moves().is_empty(),
        "d is in flight as new active of vb0"
    );
    s.move_done(Vbid(0));
    assert_eq!(vbs(&s.next_moves()), [1]);
}

/// Calls for vbuckets that are not running are ignored, and repeated calls count once.
#[test]
fn unknown_and_repeated_completions_are_ignored() {
    let moves = (0..2)
        .map(|vb| mv(vb, &[Some("a")], &[Some("b")]))
        .collect();
    let limits = Limits {
        moves_per_node: 1,
        in_flight_per_node: 64,
    };
    let mut s = Scheduler::new(moves, limits);
    assert_eq!(vbs(&s.next_moves()), [0]);
    s.backfill_done(Vbid(1));
    s.move_done(Vbid(1));
    s.move_done(Vbid(9));
    assert!(s.next_moves().is_empty());
    s.move_done(Vbid(0));
    s.move_done(Vbid(0));
    s.backfill_done(Vbid(0));
    assert_eq!(s.in_flight(), 0);
    assert_eq!(vbs(&s.next_moves()), [1]);
}

/// Rule 1: the move on the node with most moves left goes first.
#[test]
fn rule1_largest_move_weight_first() {
    let moves = vec![
        mv(0, &[Some("a")], &[Some("b")]),
        mv(1, &[Some("c")], &[Some("d")]),
        mv(2, &[Some("c")], &[Some("e")]),
        mv(3, &[Some("c")], &[Some("f")]),
    ];
    let mut s = Scheduler::new(moves, wide());
    // c has 3 moves left, then 2; after that vb0 and vb3 weigh 1 each and vb0 is
    // lighter (rule 4: c already runs two backfills).
    assert_eq!(vbs(&s.next_moves()), [1, 2, 0, 3]);
}

/// Rule 2: a move on an idle (old active → new copy) pair beats one on a busy pair,
/// even when it is heavier.
#[test]
fn rule2_smallest_serial_score_first() {
    let moves = vec![
        mv(0, &[Some("a")], &[Some("b")]),
        mv(1, &[Some("a")], &[Some("b")]),
        mv(2, &[Some("a")], &[Some("c")]),
        mv(3, &[Some("e")], &[Some("c")]),
        mv(4, &[Some("f")], &[Some("c")]),
    ];
    let mut s = Scheduler::new(moves, wide());
    for vb in [0, 3, 4] {
        start_vb(&mut s, vb);
    }
    // vb1: weight 2, serial 1 (a→b busy), heaviness 2; vb2: weight 2, serial 0, heaviness 3.
    assert_eq!(vbs(&s.next_moves()), [2, 1]);
}

/// Rule 3: active-changing moves before replica-only moves.
#[test]
fn rule3_active_changing_moves_first() {
    let moves = vec![
        mv(0, &[Some("a"), Some("b")], &[Some("a"), Some("c")]),
        mv(1, &[Some("d"), Some("e")], &[Some("f"), Some("e")]),
    ];
    let mut s = Scheduler::new(moves, wide());
    assert_eq!(vbs(&s.next_moves()), [1, 0]);
}

/// Rule 4: the move whose nodes run fewer backfills goes first.
#[test]
fn rule4_least_heaviness_first() {
    let moves = vec![
        mv(0, &[Some("a")], &[Some("b")]),
        mv(1, &[Some("c")], &[Some("d")]),
        mv(2, &[Some("e")], &[Some("b")]),
    ];
    let mut s = Scheduler::new(moves, wide());
    start_vb(&mut s, 2);
    assert_eq!(vbs(&s.next_moves()), [1, 0]);
}

/// Rule 5: otherwise the lowest vbucket id.
#[test]
fn rule5_lowest_vbucket_first() {
    let moves = vec![
        mv(1, &[Some("a")], &[Some("b")]),
        mv(0, &[Some("c")], &[Some("d")]),
    ];
    let mut s = Scheduler::new(moves, wide());
    assert_eq!(vbs(&s.next_moves()), [0, 1]);
}

/// MoveWeight counts moves not yet started: a node whose moves are all running no
/// longer pulls others forward.
#[test]
fn move_weight_counts_moves_not_yet_started() {
    let moves = vec![
        mv(0, &[Some("a")], &[Some("b")]),
        mv(1, &[Some("a")], &[Some("c")]),
        mv(2, &[Some("d")], &[Some("e")]),
        mv(3, &[Some("d")], &[Some("f")]),
        mv(4, &[Some("d")], &[Some("g")]),
    ];
    let mut s = Scheduler::new(moves, wide());
    start_vb(&mut s, 2);
    start_vb(&mut s, 3);
    // d: 1 left (vb4), a: 2 left → vb0 first though d's weight was 3 at the start.
    assert_eq!(s.next_moves()[0].vb, Vbid(0));
}

// ---- the checker (§5.2 last paragraph) ----

/// splitmix64: the test's own seeded choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n.max(1) as u64)).expect("fits")
    }

    fn shuffled(&mut self, mut v: Vec<NodeId>) -> Vec<NodeId> {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
        v
    }
}

/// A random valid chain of `len` entries over `nodes`: distinct nodes, nulls only at
/// the tail, all null with `null_chance` in 10.
fn random_chain(rng: &mut Rng, nodes: &[NodeId], len: usize, null_chance: usize) -> Chain {
    if rng.below(10) < null_chance {
        return vec![None; len];
    }
    let picked = rng.shuffled(nodes.to_vec());
    let filled = 1 + rng.below(len.min(picked.len()));
    (0..len)
        .map(|i| (i < filled).then(|| picked[i].clone()))
        .collect()
}

/// Random current and target maps (V ≤ 256, N ≤ 8, R 0–3), the target a perturbation
/// of the current map over a possibly changed node set.
fn random_moves(rng: &mut Rng) -> Vec<Move> {
    let v = 1 + rng.below(256);
    let n_nodes = 1 + rng.below(8);
    let r = rng.below(4);
    let nodes: Vec<NodeId> = (0..n_nodes).map(|i| n(&format!("n{i}"))).collect();
    // The target may drop one node and add another.
    let mut target_nodes = nodes.clone();
    if rng.below(2) == 0 && target_nodes.len() > 1 {
        let drop = rng.below(target_nodes.len());
        target_nodes.remove(drop);
    }
    if rng.below(2) == 0 {
        target_nodes.push(n("new"));
    }
    let mut current = Vec::with_capacity(v);
    let mut target = Vec::with_capacity(v);
    for _ in 0..v {
        let c = random_chain(rng, &nodes, r + 1, 1);
        let t = if rng.below(3) == 0 && c.iter().flatten().all(|x| target_nodes.contains(x)) {
            c.clone()
        } else {
            random_chain(rng, &target_nodes, r + 1, 0)
        };
        current.push(c);
        target.push(t);
    }
    plan(&Map::new(current), &Map::new(target)).expect("same shape")
}

/// Moves of a real rebalance: a generated map over some nodes, then the map
/// [`generate`] builds from it over a changed node set (one node out, one in).
fn generated_moves(v: usize, n_nodes: usize, r: usize, seed: u64) -> Vec<Move> {
    let nodes: Vec<NodeId> = (0..n_nodes).map(|i| n(&format!("n{i}"))).collect();
    let input = |current, nodes| MapInput {
        current,
        nodes,
        groups: None,
        replicas: r,
        max_slaves: crate::map::DEFAULT_MAX_SLAVES,
        last_balanced: None,
        seed,
        tries: 1,
    };
    let empty = Map::empty(v, r);
    let current = generate(&input(&empty, &nodes)).expect("a map").map;
    let mut keep = nodes[1..].to_vec();
    keep.push(n("new"));
    let target = generate(&input(&current, &keep)).expect("a map").map;
    plan(&current.aligned(r), &target.aligned(r)).expect("same shape")
}

/// (running backfills, moves in flight as old or new active) per node.
type Loads = (BTreeMap<NodeId, usize>, BTreeMap<NodeId, usize>);

/// Loads of the running moves, computed independently of the scheduler.
fn loads(running: &BTreeMap<Vbid, (Move, bool)>) -> Loads {
    let mut backfills: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut in_flight: BTreeMap<NodeId, usize> = BTreeMap::new();
    for (m, backfill) in running.values() {
        if m.is_from_null() {
            continue;
        }
        if *backfill {
            for x in charged(m) {
                *backfills.entry(x).or_default() += 1;
            }
        }
        let actives: BTreeSet<NodeId> = m
            .old_active()
            .into_iter()
            .chain(m.new_active())
            .cloned()
            .collect();
        for x in actives {
            *in_flight.entry(x).or_default() += 1;
        }
    }
    (backfills, in_flight)
}

fn charged(m: &Move) -> BTreeSet<NodeId> {
    let mut out = BTreeSet::new();
    let Some(old) = m.old_active() else {
        return out;
    };
    out.insert(old.clone());
    out.extend(m.new_active().cloned());
    out.extend(
        m.new
            .iter()
            .skip(1)
            .flatten()
            .filter(|x| !m.old.contains(&Some((*x).clone())))
            .cloned(),
    );
    out
}

fn fits(m: &Move, limits: Limits, loads: &Loads) -> bool {
    charged(m).iter().all(|x| {
        loads.0.get(x).copied().unwrap_or(0) < limits.moves_per_node
            && loads.1.get(x).copied().unwrap_or(0) < limits.in_flight_per_node
    })
}

/// Runs `moves` to the end with completions chosen by `seed`, checking the §5.2
/// properties after every step; returns the start sequence (call number, vbucket).
fn simulate(
    moves: &[Move],
    limits: Limits,
    seed: u64,
) -> Result<Vec<(usize, Vbid)>, TestCaseError> {
    let mut rng = Rng(seed);
    let mut s = Scheduler::new(moves.to_vec(), limits);
    let mut pending: BTreeMap<Vbid, Move> = moves.iter().map(|m| (m.vb, m.clone())).collect();
    let mut running: BTreeMap<Vbid, (Move, bool)> = BTreeMap::new();
    let mut sequence = Vec::new();
    for call in 0.. {
        prop_assert!(call <= 3 * moves.len() + 2, "no progress");
        let started = s.next_moves();
        for m in &started {
            let p = pending.remove(&m.vb);
            prop_assert!(p.is_some(), "{} started twice or unknown", m.vb);
            prop_assert_eq!(p.as_ref(), Some(m));
            if call > 0 {
                prop_assert!(!m.is_from_null(), "{} from null after the first call", m.vb);
            }
            running.insert(m.vb, (m.clone(), true));
            sequence.push((call, m.vb));
        }
        if call == 0 {
            prop_assert!(pending.values().all(|m| !m.is_from_null()));
        }
        let l = loads(&running);
        prop_assert!(
            l.0.values().all(|&c| c <= limits.moves_per_node),
            "backfills {:?}",
            l.0
        );
        prop_assert!(
            l.1.values().all(|&c| c <= limits.in_flight_per_node),
            "in flight {:?}",
            l.1
        );
        for m in pending.values() {
            prop_assert!(!fits(m, limits, &l), "idle: {:?} fits", m);
        }
        prop_assert_eq!(s.pending(), pending.len());
        prop_assert_eq!(s.in_flight(), running.len());
        let scheduler_backfills: BTreeMap<NodeId, usize> =
            s.backfills().into_iter().filter(|(_, c)| *c > 0).collect();
        prop_assert_eq!(scheduler_backfills, l.0);
        if running.is_empty() {
            prop_assert!(pending.is_empty(), "idle with {} moves left", pending.len());
            prop_assert!(s.is_finished());
            break;
        }
        // One event: a persistence wait ends or a move ends.
        let k = rng.below(running.len());
        let vb = *running.keys().nth(k).expect("k < len");
        let backfill = running.get(&vb).map(|r| r.1).unwrap_or(false);
        if backfill && rng.below(2) == 0 {
            s.backfill_done(vb);
            if let Some(r) = running.get_mut(&vb) {
                r.1 = false;
            }
        } else {
            s.move_done(vb);
            running.remove(&vb);
        }
    }
    prop_assert_eq!(sequence.len(), moves.len());
    Ok(sequence)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// §5.2 checker: limits never exceeded, every move started exactly once, never idle
    /// while a move could start, deterministic.
    #[test]
    fn scheduler_checker(map_seed in any::<u64>(), order_seed in any::<u64>(),
                         moves_per_node in 1usize..=6, in_flight in 1usize..=8) {
        let moves = random_moves(&mut Rng(map_seed));
        let limits = Limits { moves_per_node, in_flight_per_node: in_flight };
        let first = simulate(&moves, limits, order_seed)?;
        let again = simulate(&moves, limits, order_seed)?;
        prop_assert_eq!(first, again);
    }

    /// The checker over the moves of a generated rebalance (one node swapped).
    #[test]
    fn scheduler_checker_generated_maps(v in 1usize..=128, n_nodes in 1usize..=8, r in 0usize..=3,
                                        seed in any::<u64>(), order_seed in any::<u64>(),
                                        moves_per_node in 1usize..=4) {
        let moves = generated_moves(v, n_nodes, r, seed);
        let limits = Limits { moves_per_node, ..Limits::default() };
        let first = simulate(&moves, limits, order_seed)?;
        prop_assert_eq!(first, simulate(&moves, limits, order_seed)?);
    }

    /// The same with the default limits.
    #[test]
    fn scheduler_checker_default_limits(map_seed in any::<u64>(), order_seed in any::<u64>()) {
        let moves = random_moves(&mut Rng(map_seed));
        simulate(&moves, Limits::default(), order_seed)?;
    }
}
