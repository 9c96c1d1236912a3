//! One seeded greedy run (cluster.md §4.2, reference algorithm steps 1–4), in index space.
//!
//! Our own construction, in the spirit of vbmap's greedy mode: actives by quota, a slave
//! relation per node, replicas by quota among slaves with an augmenting-path repair, a
//! server-group spreading pass, then whole chains handed to the vbuckets that already
//! hold them.

use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};

use super::rng::Rng;
use super::{Ctx, IChain, Score};

/// Working state of one run.
struct Run<'a> {
    ctx: &'a Ctx,
    /// Seeded position of each node, the last tie-breaker everywhere.
    rank: Vec<usize>,
    /// Each node's slaves: the nodes its actives may be replicated to.
    slaves: Vec<Vec<usize>>,
    /// Replica quota and replicas placed, per node.
    rq: Vec<usize>,
    rc: Vec<usize>,
    /// Chains being built: head first, then replicas (no nulls).
    chains: Vec<Vec<usize>>,
    /// Seed of [`Run::tie`].
    tie_seed: u64,
}

pub(crate) fn run(ctx: &Ctx, seed: u64) -> Vec<IChain> {
    let n = ctx.n;
    let v = ctx.v;
    let mut rng = Rng::new(seed);
    let mut node_order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut node_order);
    let mut rank = vec![0; n];
    for (pos, &node) in node_order.iter().enumerate() {
        rank[node] = pos;
    }
    let mut vb_order: Vec<usize> = (0..v).collect();
    rng.shuffle(&mut vb_order);

    let (heads, aq) = actives(ctx, &rank, &vb_order);
    let slaves = slaves(ctx, &rank, &node_order);

    // Replica quota: ⌊R'·V/N⌋, one more for the nodes with the fewest actives.
    let total = ctx.r * v;
    let mut by_fewest: Vec<usize> = (0..n).collect();
    by_fewest.sort_by_key(|&i| (aq[i], rank[i]));
    let mut rq = vec![total / n; n];
    for &i in by_fewest.iter().take(total % n) {
        rq[i] += 1;
    }

    let mut run = Run {
        ctx,
        rank,
        slaves,
        rq,
        rc: vec![0; n],
        chains: heads.into_iter().map(|h| vec![h]).collect(),
        tie_seed: rng.next_u64(),
    };
    for rank in 1..=ctx.r {
        // First only copies already in place, most constrained vbucket first: one whose
        // head is a new copy (it has paid for one copy already and must not pay for a
        // second), then those with the fewest holders among its head's slaves; seeded
        // order breaks ties. Then every vbucket still short of this replica.
        let mut order = vb_order.clone();
        order.sort_by_key(|&vb| {
            let chain = &run.chains[vb];
            let holders = ctx.cur[vb]
                .iter()
                .filter(|&&j| !chain.contains(&j) && run.slaves[chain[0]].contains(&j))
                .count();
            (run.holds(vb, chain[0]), holders)
        });
        for vb in order {
            run.place_held_replica(vb);
        }
        for &vb in &vb_order {
            if run.chains[vb].len() <= rank {
                run.place_replica(vb);
            }
        }
    }
    if ctx.groups.is_some() {
        run.spread_groups();
    }
    run.reclaim_copies();
    let chains = reassign_chains(ctx, run.chains);
    chains
        .into_iter()
        .map(|c| {
            let mut chain: IChain = c.into_iter().map(Some).collect();
            chain.resize(ctx.width, None);
            chain
        })
        .collect()
}

/// Step 1: heads. Returns each vbucket's head and each node's active quota.
fn actives(ctx: &Ctx, rank: &[usize], vb_order: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let n = ctx.n;
    let mut held = vec![0usize; n];
    for h in ctx.cur_head.iter().flatten() {
        held[*h] += 1;
    }
    // The V mod N extra actives go to the nodes holding the most actives now.
    let mut by_most: Vec<usize> = (0..n).collect();
    by_most.sort_by_key(|&i| (Reverse(held[i]), rank[i]));
    let mut aq = vec![ctx.v / n; n];
    for &i in by_most.iter().take(ctx.v % n) {
        aq[i] += 1;
    }
    let mut ac = vec![0usize; n];
    let mut heads: Vec<Option<usize>> = vec![None; ctx.v];
    for &vb in vb_order {
        if let Some(h) = ctx.cur_head[vb] {
            if ac[h] < aq[h] {
                heads[vb] = Some(h);
                ac[h] += 1;
            }
        }
    }
    for &vb in vb_order {
        if heads[vb].is_some() {
            continue;
        }
        let room = |j: usize| (aq[j] - ac[j], Reverse(rank[j]));
        let holder = ctx.cur[vb]
            .iter()
            .copied()
            .filter(|&j| ac[j] < aq[j])
            .max_by_key(|&j| room(j));
        let h = holder
            .or_else(|| (0..n).filter(|&j| ac[j] < aq[j]).max_by_key(|&j| room(j)))
            .expect("active quotas sum to V, so a node has room while a vbucket has no head");
        heads[vb] = Some(h);
        ac[h] += 1;
    }
    let heads = heads
        .into_iter()
        .map(|h| h.expect("every vbucket got a head above"))
        .collect();
    (heads, aq)
}

/// Step 2: S' rounds, each node adding one slave per round.
fn slaves(ctx: &Ctx, rank: &[usize], node_order: &[usize]) -> Vec<Vec<usize>> {
    let n = ctx.n;
    let mut slaves: Vec<Vec<usize>> = vec![Vec::with_capacity(ctx.s); n];
    if ctx.s == 0 {
        return slaves;
    }
    // How many of i's vbuckets j holds a replica of today: relations worth keeping.
    let mut relation = vec![vec![0u32; n]; n];
    for (vb, head) in ctx.cur_head.iter().enumerate() {
        if let Some(h) = *head {
            for &j in &ctx.cur[vb] {
                if j != h {
                    relation[h][j] += 1;
                }
            }
        }
    }
    let same_group = |a: usize, b: usize| ctx.groups.as_ref().is_some_and(|g| g[a] == g[b]);
    let mut inbound = vec![0usize; n];
    // Keep today's strongest relations first (moving a relation moves all its replicas),
    // within S' slaves per node and S' masters per node.
    let mut kept: Vec<(usize, usize)> = (0..n)
        .flat_map(|i| (0..n).map(move |j| (i, j)))
        .filter(|&(i, j)| relation[i][j] > 0)
        .collect();
    kept.sort_by_key(|&(i, j)| (Reverse(relation[i][j]), same_group(i, j), rank[i], rank[j]));
    for (i, j) in kept {
        if slaves[i].len() < ctx.s && inbound[j] < ctx.s {
            slaves[i].push(j);
            inbound[j] += 1;
        }
    }
    for _ in 0..ctx.s {
        for &i in node_order {
            if slaves[i].len() >= ctx.s {
                continue;
            }
            // Nodes already slave to S' others come last: every node should end up slave
            // to about S' nodes, so replica load can be balanced.
            let pick = (0..n)
                .filter(|&j| j != i && !slaves[i].contains(&j))
                .min_by_key(|&j| {
                    (
                        inbound[j] >= ctx.s,
                        same_group(i, j),
                        Reverse(relation[i][j]),
                        inbound[j],
                        rank[j],
                    )
                });
            if let Some(j) = pick {
                slaves[i].push(j);
                inbound[j] += 1;
            }
        }
    }
    // The last picks of a round can be forced onto a node already slave to S' others
    // (only itself was left). Even the in-degrees out: a node slave to fewer than S'
    // takes the place of an over-full one at one of its masters. Such a master always
    // exists: the over-full node has more than S' masters, of which fewer than S' already
    // have the under-full node as a slave and at most one is the under-full node itself.
    while let (Some(under), Some(over)) = (
        (0..n).find(|&j| inbound[j] < ctx.s),
        (0..n).find(|&j| inbound[j] > ctx.s),
    ) {
        let master = node_order
            .iter()
            .copied()
            .filter(|&i| i != under && slaves[i].contains(&over) && !slaves[i].contains(&under))
            .max_by_key(|&i| (relation[i][under], Reverse(relation[i][over])))
            .expect("an over-full node has a master that can take the under-full one");
        let pos = slaves[master]
            .iter()
            .position(|&x| x == over)
            .expect("filtered on it");
        slaves[master][pos] = under;
        inbound[over] -= 1;
        inbound[under] += 1;
    }
    slaves
}

impl Run<'_> {
    /// Tie-breaker among replica candidates, different for every vbucket. One node order
    /// for all vbuckets would repeat the same chains over and over, so a leaving node's
    /// copies would sit on the same few nodes and removing it would cost far more than
    /// the copies it held.
    fn tie(&self, vb: usize, node: usize) -> u64 {
        Rng::new(self.tie_seed ^ ((vb as u64) << 24) ^ node as u64).next_u64()
    }

    fn group_conflict(&self, chain: &[usize], skip: Option<usize>, node: usize) -> bool {
        self.ctx.groups.as_ref().is_some_and(|g| {
            chain
                .iter()
                .enumerate()
                .any(|(pos, &x)| Some(pos) != skip && g[x] == g[node])
        })
    }

    fn holds(&self, vb: usize, node: usize) -> bool {
        self.ctx.cur[vb].contains(&node)
    }

    /// Step 3, first pass: one more replica for `vb` on a node already holding a copy,
    /// within quota (and without a group conflict where G6 is strict).
    fn place_held_replica(&mut self, vb: usize) {
        let head = self.chains[vb][0];
        let pick = self.slaves[head]
            .iter()
            .copied()
            .filter(|&j| {
                self.holds(vb, j)
                    && !self.chains[vb].contains(&j)
                    && self.rc[j] < self.rq[j]
                    && !(self.ctx.groups_permit && self.group_conflict(&self.chains[vb], None, j))
            })
            .min_by_key(|&j| {
                (
                    self.group_conflict(&self.chains[vb], None, j),
                    self.rc[j],
                    self.tie(vb, j),
                )
            });
        if let Some(j) = pick {
            self.chains[vb].push(j);
            self.rc[j] += 1;
        }
    }

    /// Step 3 for one vbucket and one more replica.
    fn place_replica(&mut self, vb: usize) {
        let head = self.chains[vb][0];
        let permit = self.ctx.groups_permit;
        let pick = self.slaves[head]
            .iter()
            .copied()
            .filter(|&j| {
                if self.chains[vb].contains(&j) {
                    return false;
                }
                // Where G6 is strict, a node of a group without a copy may go one over
                // its quota (still within G4's ±2): quotas are set without regard to
                // groups, and with few vbuckets they can leave no other way to spread.
                self.rc[j] < self.rq[j]
                    || (permit
                        && self.rc[j] == self.rq[j]
                        && !self.group_conflict(&self.chains[vb], None, j))
            })
            .min_by_key(|&j| {
                let conflict = self.group_conflict(&self.chains[vb], None, j);
                let fresh = !self.holds(vb, j);
                let over = self.rc[j] >= self.rq[j];
                // Where the groups allow a perfect spread, G6 is a hard rule and comes
                // first; elsewhere groups are soft and a copy already in place wins.
                if permit {
                    (conflict, over, fresh, self.rc[j], self.tie(vb, j))
                } else {
                    (fresh, conflict, over, self.rc[j], self.tie(vb, j))
                }
            });
        if let Some(j) = pick {
            self.chains[vb].push(j);
            self.rc[j] += 1;
            return;
        }
        if self.augment(vb) {
            return;
        }
        // No way to stay within quota with these slave sets: exceed it on the least
        // loaded slave (G4 has a tolerance for this).
        let j = self.slaves[head]
            .iter()
            .copied()
            .filter(|&j| !self.chains[vb].contains(&j))
            .min_by_key(|&j| {
                (
                    self.group_conflict(&self.chains[vb], None, j),
                    self.rc[j],
                    self.tie(vb, j),
                )
            })
            .expect("a head has S' >= R' slaves and the chain has fewer than R' replicas");
        self.chains[vb].push(j);
        self.rc[j] += 1;
    }

    /// Finds the cheapest chain of replica substitutions that frees quota on one of
    /// `vb`'s head's slaves, applies it and gives `vb` that slave: an augmenting path of
    /// the b-matching, searched 0-1 breadth first over full nodes, where a step costs 1
    /// when it swaps a copy already in place for a new one.
    fn augment(&mut self, vb: usize) -> bool {
        let n = self.ctx.n;
        let head = self.chains[vb][0];
        // parent[z] = (y, w, p): z takes y's replica slot p in chain w.
        let mut parent: Vec<Option<(usize, usize, usize)>> = vec![None; n];
        let mut dist = vec![usize::MAX; n];
        let mut done = vec![false; n];
        let mut queue = VecDeque::new();
        for &y in &self.slaves[head] {
            if !self.chains[vb].contains(&y) {
                dist[y] = usize::from(!self.holds(vb, y));
                if dist[y] == 0 {
                    queue.push_front(y);
                } else {
                    queue.push_back(y);
                }
            }
        }
        // (cost, z, y, w, p) of the cheapest way found to end the path.
        let mut best: Option<(usize, usize, usize, usize, usize)> = None;
        while let Some(y) = queue.pop_front() {
            if done[y] {
                continue;
            }
            done[y] = true;
            if best.is_some_and(|b| dist[y] >= b.0) {
                break;
            }
            for w in 0..self.ctx.v {
                if w == vb {
                    continue;
                }
                let Some(p) = self.chains[w].iter().skip(1).position(|&x| x == y) else {
                    continue;
                };
                let p = p + 1;
                let hw = self.chains[w][0];
                let held_y = self.holds(w, y);
                for &z in &self.slaves[hw] {
                    if self.chains[w].contains(&z) {
                        continue;
                    }
                    let step = usize::from(held_y && !self.holds(w, z));
                    let d = dist[y] + step;
                    if self.rc[z] < self.rq[z] {
                        if best.is_none_or(|b| d < b.0) {
                            best = Some((d, z, y, w, p));
                        }
                        continue;
                    }
                    if !done[z] && d < dist[z] {
                        dist[z] = d;
                        parent[z] = Some((y, w, p));
                        if step == 0 {
                            queue.push_front(z);
                        } else {
                            queue.push_back(z);
                        }
                    }
                }
            }
        }
        let Some((_, z, y, w, p)) = best else {
            return false;
        };
        // Apply: z takes (w, p) from y; then up the tree to the root, each node taking
        // its parent's slot. Only z's count changes; the root's freed slot goes to `vb`.
        // Nodes with quota left are never in the tree (the search stops at them), so
        // every node of the path is distinct and no chain gets a node twice.
        self.chains[w][p] = z;
        self.rc[z] += 1;
        let mut freed = y;
        while let Some((prev, pw, pp)) = parent[freed] {
            self.chains[pw][pp] = freed;
            freed = prev;
        }
        self.chains[vb].push(freed);
        true
    }

    /// Swaps replicas between two vbuckets where that puts a copy back on a node that
    /// already holds it: `vb` has a new copy on z while its holder h is full with a new
    /// copy of w; give h to `vb` and z to w. Node counts and slave relations are unchanged
    /// and no group conflict is added; each swap saves at least one copy. Greedy placement
    /// near full quotas leaves such pairs behind.
    fn reclaim_copies(&mut self) {
        let n = self.ctx.n;
        let mut slots: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
        for (w, chain) in self.chains.iter().enumerate() {
            for (q, &x) in chain.iter().enumerate().skip(1) {
                slots[x].push((w, q));
            }
        }
        let conflict_ok = |run: &Self, chain: usize, pos: usize, new: usize, old: usize| {
            !run.group_conflict(&run.chains[chain], Some(pos), new)
                || (!run.ctx.groups_permit
                    && run.group_conflict(&run.chains[chain], Some(pos), old))
        };
        for _round in 0..2 {
            let mut changed = false;
            for vb in 0..self.ctx.v {
                let head = self.chains[vb][0];
                for p in 1..self.chains[vb].len() {
                    let z = self.chains[vb][p];
                    if self.holds(vb, z) {
                        continue;
                    }
                    let holders: Vec<usize> = self.ctx.cur[vb]
                        .iter()
                        .copied()
                        .filter(|&h| {
                            !self.chains[vb].contains(&h)
                                && self.slaves[head].contains(&h)
                                && conflict_ok(self, vb, p, h, z)
                        })
                        .collect();
                    let found = holders.iter().find_map(|&h| {
                        slots[h]
                            .iter()
                            .position(|&(w, q)| {
                                w != vb
                                    && !self.holds(w, h)
                                    && !self.chains[w].contains(&z)
                                    && self.slaves[self.chains[w][0]].contains(&z)
                                    && conflict_ok(self, w, q, z, h)
                            })
                            .map(|i| (h, i))
                    });
                    let Some((h, i)) = found else { continue };
                    let (w, q) = slots[h][i];
                    self.chains[vb][p] = h;
                    self.chains[w][q] = z;
                    slots[h][i] = (vb, p);
                    if let Some(j) = slots[z].iter().position(|&slot| slot == (vb, p)) {
                        slots[z][j] = (w, q);
                    }
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }

    /// Server groups: move a replica that shares a group with another copy of its
    /// vbucket to a node of a group without a copy, first to a node with quota left, then
    /// (when the groups permit a perfect spread) by swapping with another vbucket's
    /// replica. Counts per node never change in the swap.
    fn spread_groups(&mut self) {
        for vb in 0..self.ctx.v {
            for p in 1..self.chains[vb].len() {
                let x = self.chains[vb][p];
                if !self.group_conflict(&self.chains[vb], Some(p), x)
                    || (!self.ctx.groups_permit && self.holds(vb, x))
                {
                    continue;
                }
                let head = self.chains[vb][0];
                let pick = self.slaves[head]
                    .iter()
                    .copied()
                    .filter(|&y| {
                        !self.chains[vb].contains(&y)
                            && self.rc[y] < self.rq[y]
                            && !self.group_conflict(&self.chains[vb], Some(p), y)
                    })
                    .min_by_key(|&y| (!self.holds(vb, y), self.rc[y], self.rank[y]));
                if let Some(y) = pick {
                    self.chains[vb][p] = y;
                    self.rc[x] -= 1;
                    self.rc[y] += 1;
                }
            }
        }
        if !self.ctx.groups_permit {
            return;
        }
        for _round in 0..2 {
            let mut changed = false;
            for vb in 0..self.ctx.v {
                for p in 1..self.chains[vb].len() {
                    let x = self.chains[vb][p];
                    if self.group_conflict(&self.chains[vb], Some(p), x) && self.swap_out(vb, p) {
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
    }

    /// Swaps `vb`'s replica at `p` with a replica of another vbucket so that neither
    /// chain has two copies in one group.
    fn swap_out(&mut self, vb: usize, p: usize) -> bool {
        let x = self.chains[vb][p];
        let head = self.chains[vb][0];
        let ys: Vec<usize> = self.slaves[head]
            .iter()
            .copied()
            .filter(|&y| {
                !self.chains[vb].contains(&y) && !self.group_conflict(&self.chains[vb], Some(p), y)
            })
            .collect();
        for y in ys {
            for w in 0..self.ctx.v {
                if w == vb {
                    continue;
                }
                let Some(q) = self.chains[w].iter().skip(1).position(|&z| z == y) else {
                    continue;
                };
                let q = q + 1;
                let hw = self.chains[w][0];
                if self.slaves[hw].contains(&x)
                    && !self.chains[w].contains(&x)
                    && !self.group_conflict(&self.chains[w], Some(q), x)
                {
                    self.chains[vb][p] = y;
                    self.chains[w][q] = x;
                    return true;
                }
            }
        }
        false
    }
}

/// Step 4 (the move minimiser): every chain the run built is valid for any vbucket, so
/// hand whole chains to the vbuckets that already hold them. Kept only if it lowers the
/// score.
fn reassign_chains(ctx: &Ctx, chains: Vec<Vec<usize>>) -> Vec<Vec<usize>> {
    let cost = |vb: usize, chain: &[usize]| ctx.chain_cost(vb, chain.iter().copied());
    let total = |chains: &[Vec<usize>]| {
        chains
            .iter()
            .enumerate()
            .fold(Score::default(), |acc, (vb, c)| {
                let s = cost(vb, c);
                Score {
                    copies_to_build: acc.copies_to_build + s.copies_to_build,
                    active_changes: acc.active_changes + s.active_changes,
                }
            })
    };
    let mut pool: BTreeMap<&[usize], usize> = BTreeMap::new();
    for c in &chains {
        *pool.entry(c.as_slice()).or_default() += 1;
    }
    fn take(pool: &mut BTreeMap<&[usize], usize>, key: &[usize]) -> bool {
        match pool.get_mut(key) {
            Some(count) if *count > 0 => {
                *count -= 1;
                true
            }
            _ => false,
        }
    }
    let mut out: Vec<Option<Vec<usize>>> = vec![None; ctx.v];
    // 1. A vbucket whose current chain (over keep nodes) is one of the built chains.
    let width = ctx.r + 1;
    for (slot, (cur, head)) in out.iter_mut().zip(ctx.cur.iter().zip(&ctx.cur_head)) {
        if cur.len() >= width && *head == cur.first().copied() && take(&mut pool, &cur[..width]) {
            *slot = Some(cur[..width].to_vec());
        }
    }
    // 2. Its own built chain, if still free.
    for (slot, chain) in out.iter_mut().zip(&chains) {
        if slot.is_none() && take(&mut pool, chain) {
            *slot = Some(chain.clone());
        }
    }
    // 3. The cheapest chain left.
    for (vb, slot) in out.iter_mut().enumerate() {
        if slot.is_some() {
            continue;
        }
        let best = pool
            .iter()
            .filter(|(_, &count)| count > 0)
            .map(|(c, _)| *c)
            .min_by_key(|c| cost(vb, c))
            .expect("as many chains in the pool as vbuckets without one");
        let best = best.to_vec();
        take(&mut pool, &best);
        *slot = Some(best);
    }
    let reassigned: Vec<Vec<usize>> = out
        .into_iter()
        .map(|c| c.expect("every vbucket got a chain above"))
        .collect();
    if total(&reassigned) < total(&chains) {
        reassigned
    } else {
        chains
    }
}
