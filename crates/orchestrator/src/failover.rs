//! Failover and recovery maps (cluster.md §8.1, §8.2, §8.4): the chains after a hard
//! failover, what the failed nodes held, the graceful failover target and the delta
//! recovery transitional map.
//!
//! No I/O, no clock, no randomness: the shell reads the survivors' high seqnos (§8.1
//! step 2), calls [`fail_over_map`] per bucket, refuses on [`FailoverOutcome::lost`]
//! unless forced, and stores the map and [`held_by`] (`failover_vbuckets/<node>`) in one
//! transaction.

use std::collections::{BTreeMap, BTreeSet};

use crate::map::{Chain, Map, NodeId};

/// The result of [`fail_over_map`] for one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct FailoverOutcome {
    /// The new map: same number of chains, each of its old length.
    pub map: Map,
    /// vbuckets that had at least one copy and now have none (all null), in vbucket order
    /// (§8.1 step 4). A chain that was already all null is not counted: it has nothing
    /// left to lose (J3).
    pub lost: Vec<u16>,
    /// vbuckets whose active moved, in vbucket order: (vb, old active, new active).
    pub promoted: Vec<(u16, NodeId, NodeId)>,
}

/// §8.1 step 3: the chains after failing over `failed`: failed nodes removed; where the
/// active failed, the surviving copy with the highest high seqno becomes active (ties:
/// chain order); the rest keep their order; padded with null to the chain length.
///
/// `seqnos` is node -> vbucket -> high seqno as the survivors reported it; a copy not
/// reported counts as high seqno 0 (it holds no data), so it only wins when no survivor
/// reported more.
pub fn fail_over_map(
    map: &Map,
    failed: &BTreeSet<NodeId>,
    seqnos: &BTreeMap<NodeId, BTreeMap<u16, u64>>,
) -> FailoverOutcome {
    let mut lost = Vec::new();
    let mut promoted = Vec::new();
    let mut chains = Vec::with_capacity(map.num_vbuckets());
    for (i, chain) in map.chains().iter().enumerate() {
        // Map::num_vbuckets is at most 1024 (§11); a larger index cannot be named by a u16
        // and is kept unchanged rather than mislabelled.
        let Ok(vb) = u16::try_from(i) else {
            chains.push(chain.clone());
            continue;
        };
        let mut survivors: Vec<&NodeId> = chain
            .iter()
            .flatten()
            .filter(|n| !failed.contains(*n))
            .collect();
        let had_copy = chain.iter().any(Option::is_some);
        if had_copy && survivors.is_empty() {
            lost.push(vb);
        }
        if let Some(Some(old)) = chain.first() {
            if failed.contains(old) {
                if let Some(best) = best_copy(&survivors, vb, seqnos) {
                    let new = survivors.remove(best);
                    promoted.push((vb, old.clone(), new.clone()));
                    survivors.insert(0, new);
                }
            }
        }
        let mut new: Chain = survivors.into_iter().cloned().map(Some).collect();
        new.resize(chain.len(), None);
        chains.push(new);
    }
    FailoverOutcome {
        map: Map::new(chains),
        lost,
        promoted,
    }
}

/// Index in `survivors` of the copy with the highest high seqno; the first in chain
/// order among equals.
fn best_copy(
    survivors: &[&NodeId],
    vb: u16,
    seqnos: &BTreeMap<NodeId, BTreeMap<u16, u64>>,
) -> Option<usize> {
    let seqno = |n: &NodeId| {
        seqnos
            .get(n)
            .and_then(|per_vb| per_vb.get(&vb))
            .copied()
            .unwrap_or(0)
    };
    let mut best: Option<(usize, u64)> = None;
    for (i, n) in survivors.iter().enumerate() {
        let s = seqno(n);
        // Strictly greater: an equal seqno later in the chain does not displace an earlier one.
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

/// What each failed node held: node -> vbuckets (ascending) in which it has any chain
/// position (for `failover_vbuckets/<node>` and delta recovery). Every node of `failed`
/// has an entry, empty if the map names it nowhere.
pub fn held_by(map: &Map, failed: &BTreeSet<NodeId>) -> BTreeMap<NodeId, Vec<u16>> {
    let mut held: BTreeMap<NodeId, Vec<u16>> =
        failed.iter().map(|n| (n.clone(), Vec::new())).collect();
    for (i, chain) in map.chains().iter().enumerate() {
        let Ok(vb) = u16::try_from(i) else { break };
        for n in chain.iter().flatten() {
            if let Some(vbs) = held.get_mut(n) {
                // A well-formed chain names a node once; a malformed one must not list vb twice.
                if vbs.last() != Some(&vb) {
                    vbs.push(vb);
                }
            }
        }
    }
    held
}

/// §8.2: graceful failover is possible only if every chain where `node` is active has
/// another non-null copy.
///
/// # Errors
///
/// The vbuckets (ascending) where `node` is active and the only copy: they would be lost.
pub fn graceful_possible(map: &Map, node: &NodeId) -> Result<(), Vec<u16>> {
    let lost: Vec<u16> = map
        .chains()
        .iter()
        .enumerate()
        .filter(|(_, chain)| {
            chain.first().and_then(Option::as_ref) == Some(node)
                && !chain.iter().flatten().any(|n| n != node)
        })
        .filter_map(|(i, _)| u16::try_from(i).ok())
        .collect();
    if lost.is_empty() {
        Ok(())
    } else {
        Err(lost)
    }
}

/// §8.2: the graceful failover target: in every chain naming `node`, the node moves to
/// the tail of the chain's copies (the last non-null entry, so nulls stay at the tail)
/// and the other copies keep their order. Where `node` was active its first replica
/// becomes active (a takeover by a node that already holds a copy); chains without
/// `node` are unchanged. The hard failover that follows then only drops tails.
///
/// Call it after [`graceful_possible`]: a chain where `node` is the only copy is left
/// as it is (the node stays active there).
pub fn graceful_target(map: &Map, node: &NodeId) -> Map {
    let chains = map
        .chains()
        .iter()
        .map(|chain| {
            if !chain.iter().flatten().any(|n| n == node) {
                return chain.clone();
            }
            let mut new: Chain = chain
                .iter()
                .flatten()
                .filter(|n| *n != node)
                .cloned()
                .map(Some)
                .collect();
            new.push(Some(node.clone()));
            new.resize(chain.len().max(new.len()), None);
            new
        })
        .collect();
    Map::new(chains)
}

/// §8.4 delta recovery: the transitional map putting `node` into the first null slot of
/// each chain it held (`held`, from `failover_vbuckets/<node>`), other chains unchanged.
///
/// Returns the map and the vbuckets (in `held` order) where the node was not placed:
/// chains without a null slot, and vbuckets the map does not have. A chain already
/// naming `node` is left as it is and counts as placed (so duplicates in `held` are
/// harmless). A chain that is all null (its data was lost by a forced failover) gets
/// `node` as its head: the node's copy is the only data left.
pub fn delta_transitional_map(map: &Map, node: &NodeId, held: &[u16]) -> (Map, Vec<u16>) {
    let mut out = map.clone();
    let mut not_placed = Vec::new();
    for &vb in held {
        let Some(chain) = out.chain(usize::from(vb)) else {
            not_placed.push(vb);
            continue;
        };
        if chain.iter().flatten().any(|n| n == node) {
            continue;
        }
        let Some(slot) = chain.iter().position(Option::is_none) else {
            not_placed.push(vb);
            continue;
        };
        let mut chain = chain.clone();
        chain[slot] = Some(node.clone());
        out.set_chain(usize::from(vb), chain);
    }
    (out, not_placed)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn n(name: &str) -> NodeId {
        NodeId::from(name)
    }

    fn chain(nodes: &[Option<&str>]) -> Chain {
        nodes.iter().map(|s| s.map(n)).collect()
    }

    fn map(chains: &[&[Option<&str>]]) -> Map {
        Map::new(chains.iter().map(|c| chain(c)).collect())
    }

    fn set(nodes: &[&str]) -> BTreeSet<NodeId> {
        nodes.iter().map(|s| n(s)).collect()
    }

    /// node -> [(vb, high seqno)].
    fn seqnos(per_node: &[(&str, &[(u16, u64)])]) -> BTreeMap<NodeId, BTreeMap<u16, u64>> {
        per_node
            .iter()
            .map(|(node, vbs)| (n(node), vbs.iter().copied().collect()))
            .collect()
    }

    const A: Option<&str> = Some("a");
    const B: Option<&str> = Some("b");
    const C: Option<&str> = Some("c");
    const D: Option<&str> = Some("d");
    const X: Option<&str> = None;

    /// §8.1 step 3: the active failed; the survivor with the highest seqno wins, even
    /// when it is not the first replica.
    #[test]
    fn failed_active_is_replaced_by_the_survivor_with_the_highest_seqno() {
        let m = map(&[&[A, B, C]]);
        let s = seqnos(&[("b", &[(0, 10)]), ("c", &[(0, 12)])]);
        let out = fail_over_map(&m, &set(&["a"]), &s);
        assert_eq!(out.map, map(&[&[C, B, X]]));
        assert_eq!(out.promoted, vec![(0, n("a"), n("c"))]);
        assert!(out.lost.is_empty());
    }

    /// §8.1 step 3: ties go to chain order.
    #[test]
    fn equal_seqnos_promote_the_first_survivor_in_chain_order() {
        let m = map(&[&[A, C, B]]);
        let s = seqnos(&[("b", &[(0, 7)]), ("c", &[(0, 7)])]);
        let out = fail_over_map(&m, &set(&["a"]), &s);
        assert_eq!(out.map, map(&[&[C, B, X]]));
        assert_eq!(out.promoted, vec![(0, n("a"), n("c"))]);
    }

    /// A survivor that reported nothing counts as empty (seqno 0).
    #[test]
    fn unreported_copies_count_as_empty() {
        let m = map(&[&[A, B, C]]);
        let s = seqnos(&[("c", &[(0, 1)])]);
        let out = fail_over_map(&m, &set(&["a"]), &s);
        assert_eq!(out.map, map(&[&[C, B, X]]));
        let out = fail_over_map(&m, &set(&["a"]), &BTreeMap::new());
        assert_eq!(out.map, map(&[&[B, C, X]]));
    }

    /// A failed replica is dropped; the active and the other replicas keep their order.
    #[test]
    fn failed_replica_is_dropped_without_promotion_or_loss() {
        let m = map(&[&[A, B, C], &[C, A, B]]);
        let s = seqnos(&[("b", &[(0, 1), (1, 9)]), ("c", &[(0, 1), (1, 1)])]);
        let out = fail_over_map(&m, &set(&["a"]), &s);
        assert_eq!(out.map.chain(1), Some(&chain(&[C, B, X])));
        // Only vb 0, whose active failed, promotes (b and c tie there: chain order).
        assert_eq!(out.promoted, vec![(0, n("a"), n("b"))]);
        assert!(out.lost.is_empty());
    }

    /// §8.1 step 4: a vbucket whose copies were all on failed nodes is lost; a chain that
    /// was already all null is not reported again.
    #[test]
    fn all_copies_on_failed_nodes_is_lost_and_all_null_chains_are_not() {
        let m = map(&[&[A, B], &[A, X], &[X, X], &[C, A]]);
        let out = fail_over_map(&m, &set(&["a", "b"]), &BTreeMap::new());
        assert_eq!(out.map, map(&[&[X, X], &[X, X], &[X, X], &[C, X]]));
        assert_eq!(out.lost, vec![0, 1]);
        assert!(out.promoted.is_empty());
    }

    /// Several nodes at once: each chain loses every failed node; chains keep their length.
    #[test]
    fn several_nodes_fail_over_at_once_and_chains_keep_their_length() {
        let m = map(&[&[A, B, C, D], &[B, D, A, C], &[D, C, X, X]]);
        let s = seqnos(&[("c", &[(0, 3), (1, 5)]), ("d", &[(0, 4), (1, 5)])]);
        let out = fail_over_map(&m, &set(&["a", "b"]), &s);
        assert_eq!(out.map, map(&[&[D, C, X, X], &[D, C, X, X], &[D, C, X, X]]));
        assert_eq!(out.promoted, vec![(0, n("a"), n("d")), (1, n("b"), n("d"))]);
        assert!(out.lost.is_empty());
        for c in out.map.chains() {
            assert_eq!(c.len(), 4);
        }
    }

    /// Failing over a node the map does not name changes nothing.
    #[test]
    fn failing_over_an_unmapped_node_changes_nothing() {
        let m = map(&[&[A, B], &[B, A]]);
        let out = fail_over_map(&m, &set(&["z"]), &BTreeMap::new());
        assert_eq!(out.map, m);
        assert!(out.lost.is_empty() && out.promoted.is_empty());
    }

    #[test]
    fn held_by_lists_every_position_and_every_failed_node() {
        let m = map(&[&[A, B], &[B, A], &[C, X], &[X, X]]);
        let held = held_by(&m, &set(&["a", "c", "z"]));
        let want: BTreeMap<NodeId, Vec<u16>> =
            [(n("a"), vec![0, 1]), (n("c"), vec![2]), (n("z"), vec![])]
                .into_iter()
                .collect();
        assert_eq!(held, want);
    }

    /// §8.2: graceful failover needs another copy wherever the node is active; a lone
    /// replica role does not matter.
    #[test]
    fn graceful_failover_is_refused_where_the_node_is_the_only_copy() {
        let m = map(&[&[A, B], &[A, X], &[B, A], &[B, X], &[A, X]]);
        assert_eq!(graceful_possible(&m, &n("a")), Err(vec![1, 4]));
        assert_eq!(graceful_possible(&m, &n("b")), Err(vec![3]));
        let ok = map(&[&[A, B], &[B, X], &[C, A]]);
        assert_eq!(graceful_possible(&ok, &n("a")), Ok(()));
        assert_eq!(graceful_possible(&ok, &n("z")), Ok(()));
    }

    /// §8.2: the node moves to the tail of its chains' copies; nulls stay at the tail.
    #[test]
    fn graceful_target_moves_the_node_to_the_tail_of_every_chain() {
        let m = map(&[&[A, B, C], &[B, A, X], &[B, C, A], &[C, B, X], &[A, C, X]]);
        let t = graceful_target(&m, &n("a"));
        assert_eq!(
            t,
            map(&[&[B, C, A], &[B, A, X], &[B, C, A], &[C, B, X], &[C, A, X]])
        );
        // The hard failover that follows only drops tails and promotes nothing.
        let out = fail_over_map(&t, &set(&["a"]), &BTreeMap::new());
        assert!(out.promoted.is_empty() && out.lost.is_empty());
        assert_eq!(
            out.map,
            map(&[&[B, C, X], &[B, X, X], &[B, C, X], &[C, B, X], &[C, X, X]])
        );
    }

    #[test]
    fn graceful_target_leaves_a_lone_active_in_place() {
        let m = map(&[&[A, X]]);
        assert_eq!(graceful_target(&m, &n("a")), m);
    }

    /// §8.4: the node goes into the first null slot of each chain it held.
    #[test]
    fn delta_map_puts_the_node_into_the_first_null_slot_of_each_held_chain() {
        let m = map(&[&[B, X, X], &[B, C, X], &[B, C, D], &[C, X, X], &[X, X, X]]);
        let (t, not_placed) = delta_transitional_map(&m, &n("a"), &[0, 1, 2, 4, 9]);
        assert_eq!(
            t,
            map(&[&[B, A, X], &[B, C, A], &[B, C, D], &[C, X, X], &[A, X, X]])
        );
        assert_eq!(not_placed, vec![2, 9]);
    }

    #[test]
    fn delta_map_keeps_chains_already_naming_the_node() {
        let m = map(&[&[B, A, X]]);
        let (t, not_placed) = delta_transitional_map(&m, &n("a"), &[0, 0]);
        assert_eq!(t, m);
        assert!(not_placed.is_empty());
    }

    /// Hard failover then delta recovery puts a replica back where it was.
    #[test]
    fn failover_then_delta_restores_replica_slots() {
        let m = map(&[&[A, B], &[B, A], &[C, A]]);
        let failed = set(&["a"]);
        let held = held_by(&m, &failed);
        let out = fail_over_map(&m, &failed, &BTreeMap::new());
        let vbs = held.get(&n("a")).cloned().unwrap_or_default();
        let (t, not_placed) = delta_transitional_map(&out.map, &n("a"), &vbs);
        assert_eq!(t, map(&[&[B, A], &[B, A], &[C, A]]));
        assert!(not_placed.is_empty());
    }

    fn node(i: usize) -> NodeId {
        NodeId(format!("ns_1@n{i}"))
    }

    /// No node twice, nulls only at the tail.
    fn well_formed(c: &Chain) -> bool {
        let filled = c.iter().take_while(|s| s.is_some()).count();
        let distinct: BTreeSet<&NodeId> = c.iter().flatten().collect();
        c[filled..].iter().all(Option::is_none) && distinct.len() == filled
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

    #[derive(Debug, Clone)]
    struct Case {
        map: Map,
        failed: BTreeSet<NodeId>,
        seqnos: BTreeMap<NodeId, BTreeMap<u16, u64>>,
    }

    fn arb_case() -> impl Strategy<Value = Case> {
        (1usize..=6, 1usize..=16, 0usize..=3).prop_flat_map(|(n, v, r)| {
            let chains = prop::collection::vec(arb_chain(n, r + 1), v);
            let failed = prop::collection::vec(any::<bool>(), n);
            // Few distinct values so ties are common.
            let seqnos =
                prop::collection::vec(prop::collection::vec(prop::option::of(0u64..4), v), n);
            (chains, failed, seqnos).prop_map(|(chains, failed, seqnos)| Case {
                map: Map::new(chains),
                failed: failed
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| **f)
                    .map(|(i, _)| node(i))
                    .collect(),
                seqnos: seqnos
                    .into_iter()
                    .enumerate()
                    .map(|(i, per_vb)| {
                        let per_vb = per_vb
                            .into_iter()
                            .enumerate()
                            .filter_map(|(vb, s)| Some((u16::try_from(vb).ok()?, s?)))
                            .collect();
                        (node(i), per_vb)
                    })
                    .collect(),
            })
        })
    }

    fn seqno_of(case: &Case, n: &NodeId, vb: u16) -> u64 {
        case.seqnos
            .get(n)
            .and_then(|m| m.get(&vb))
            .copied()
            .unwrap_or(0)
    }

    proptest! {
        /// Output chains are valid: the map keeps its size, each chain its length, no
        /// node twice, nulls only at the tail; and no failed node remains.
        #[test]
        fn failed_over_chains_are_valid_and_name_no_failed_node(case in arb_case()) {
            let out = fail_over_map(&case.map, &case.failed, &case.seqnos);
            prop_assert_eq!(out.map.num_vbuckets(), case.map.num_vbuckets());
            for (old, new) in case.map.chains().iter().zip(out.map.chains()) {
                prop_assert_eq!(new.len(), old.len());
                prop_assert!(well_formed(new), "{:?} -> {:?}", old, new);
                prop_assert!(new.iter().flatten().all(|n| !case.failed.contains(n)));
                // Survivors are exactly the old non-failed copies.
                let mut a: Vec<&NodeId> =
                    old.iter().flatten().filter(|n| !case.failed.contains(*n)).collect();
                let mut b: Vec<&NodeId> = new.iter().flatten().collect();
                a.sort();
                b.sort();
                prop_assert_eq!(a, b);
            }
        }

        /// A vbucket is lost iff it had a copy and all its copies were on failed nodes.
        #[test]
        fn a_vbucket_is_lost_iff_all_its_copies_were_on_failed_nodes(case in arb_case()) {
            let out = fail_over_map(&case.map, &case.failed, &case.seqnos);
            for (i, old) in case.map.chains().iter().enumerate() {
                let vb = u16::try_from(i).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let copies: Vec<&NodeId> = old.iter().flatten().collect();
                let lost = !copies.is_empty() && copies.iter().all(|n| case.failed.contains(*n));
                prop_assert_eq!(out.lost.contains(&vb), lost, "vb {} {:?}", vb, old);
            }
        }

        /// The new active (when not lost) is a former copy with the maximal seqno among
        /// the survivors, the first such in chain order; an active that survived stays.
        #[test]
        fn the_new_active_is_the_first_survivor_with_the_highest_seqno(case in arb_case()) {
            let out = fail_over_map(&case.map, &case.failed, &case.seqnos);
            for (i, (old, new)) in case.map.chains().iter().zip(out.map.chains()).enumerate() {
                let vb = u16::try_from(i).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let survivors: Vec<&NodeId> =
                    old.iter().flatten().filter(|n| !case.failed.contains(*n)).collect();
                let head = new.first().and_then(Option::as_ref);
                let promotion = out.promoted.iter().find(|(v, _, _)| *v == vb);
                match old.first().and_then(Option::as_ref) {
                    Some(a) if case.failed.contains(a) && !survivors.is_empty() => {
                        let max = survivors.iter().map(|n| seqno_of(&case, n, vb)).max();
                        let first_max = survivors
                            .iter()
                            .find(|n| Some(seqno_of(&case, n, vb)) == max)
                            .copied();
                        prop_assert_eq!(head, first_max);
                        prop_assert_eq!(
                            promotion.cloned(),
                            first_max.map(|h| (vb, a.clone(), h.clone()))
                        );
                        // The other survivors keep their order behind it.
                        let rest: Vec<&NodeId> = new.iter().flatten().skip(1).collect();
                        let want: Vec<&NodeId> =
                            survivors.iter().filter(|n| Some(**n) != head).copied().collect();
                        prop_assert_eq!(rest, want);
                    }
                    _ => {
                        prop_assert_eq!(head, survivors.first().copied());
                        prop_assert!(promotion.is_none());
                        let got: Vec<&NodeId> = new.iter().flatten().collect();
                        prop_assert_eq!(got, survivors);
                    }
                }
            }
        }

        /// held_by lists exactly the vbuckets whose chain names each failed node.
        #[test]
        fn held_by_matches_the_chains(case in arb_case()) {
            let held = held_by(&case.map, &case.failed);
            prop_assert_eq!(held.keys().cloned().collect::<BTreeSet<_>>(), case.failed.clone());
            for (node, vbs) in &held {
                let want: Vec<u16> = case.map.chains().iter().enumerate()
                    .filter(|(_, c)| c.iter().flatten().any(|n| n == node))
                    .filter_map(|(i, _)| u16::try_from(i).ok())
                    .collect();
                prop_assert_eq!(vbs, &want);
            }
        }

        /// Graceful target: chains stay valid and keep their copies; the node is the last
        /// copy wherever it is named; where graceful failover is possible the node is
        /// active nowhere, and the hard failover after it promotes nothing and loses nothing.
        #[test]
        fn graceful_target_keeps_copies_and_demotes_the_node(case in arb_case(), pick in 0usize..6) {
            let node = node(pick);
            let t = graceful_target(&case.map, &node);
            prop_assert_eq!(t.num_vbuckets(), case.map.num_vbuckets());
            for (old, new) in case.map.chains().iter().zip(t.chains()) {
                prop_assert_eq!(new.len(), old.len());
                prop_assert!(well_formed(new));
                let mut a: Vec<&NodeId> = old.iter().flatten().collect();
                let mut b: Vec<&NodeId> = new.iter().flatten().collect();
                a.sort();
                b.sort();
                prop_assert_eq!(a, b);
                if old.iter().flatten().any(|n| *n == node) {
                    prop_assert_eq!(new.iter().flatten().last(), Some(&node));
                }
            }
            if graceful_possible(&case.map, &node).is_ok() {
                prop_assert!(t.chains().iter().all(|c| c.first().and_then(Option::as_ref) != Some(&node)));
                let out = fail_over_map(&t, &BTreeSet::from([node.clone()]), &case.seqnos);
                prop_assert!(out.promoted.is_empty());
                prop_assert!(out.lost.is_empty());
            }
        }

        /// Delta map: chains stay valid; the node is added to a held chain iff it had a
        /// null slot (at the first one); nothing else changes.
        #[test]
        fn delta_map_places_the_node_in_first_null_slots_only(case in arb_case()) {
            let failed: BTreeSet<NodeId> = case.failed.iter().take(1).cloned().collect();
            let Some(node) = failed.first().cloned() else { return Ok(()); };
            let held = held_by(&case.map, &failed).remove(&node).unwrap_or_default();
            let out = fail_over_map(&case.map, &failed, &case.seqnos);
            let (t, not_placed) = delta_transitional_map(&out.map, &node, &held);
            for (i, (before, after)) in out.map.chains().iter().zip(t.chains()).enumerate() {
                let vb = u16::try_from(i).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(well_formed(after));
                if held.contains(&vb) {
                    // Failing over one node frees at least one slot of every chain it held.
                    prop_assert!(!not_placed.contains(&vb));
                    let slot = before.iter().position(Option::is_none);
                    prop_assert!(slot.is_some());
                    let mut want = before.clone();
                    if let Some(s) = slot {
                        want[s] = Some(node.clone());
                    }
                    prop_assert_eq!(after, &want);
                } else {
                    prop_assert_eq!(after, before);
                }
            }
        }
    }
}
