//! Auto-failover (cluster.md §8.3): the settings, the frame machine that decides when
//! down nodes are due for failover, and the guards that may refuse it.
//!
//! No I/O, no clock, no randomness. The shell runs one frame per second: it health-checks
//! every active member, calls [`Monitor::step`] with the set of down nodes, and when a
//! candidate set comes back runs [`guard`] (with [`loses_data`] and [`copies_healthy`]
//! over every bucket's map), reports a refusal if [`Monitor::should_report`] says so, and
//! otherwise stops a running rebalance and runs the hard failover of §8.1.
//!
//! Timing (the off-by-one this module implements, test
//! `t12_node_down_from_frame_k_is_due_at_frame_k_plus_timeout_plus_2`): a node first seen
//! down at frame `k` enters `half_down(1)`; each further frame with the same down set adds
//! one to the counter; the first down frame that finds the counter *already* at `timeout`
//! (frame `k + timeout`, when the node has been down for `timeout` seconds since it was
//! first seen) moves it to `nearly_down`; two more frames with the same down set (`k +
//! timeout + 1`, `k + timeout + 2`) and the failover is due at frame `k + timeout + 2`.
//! With `timeout` 5 and one frame per second that is 7 s after the first down frame. The
//! shell calls a node down after two missed heartbeats, one frame after it stopped
//! answering, and says so ([`Monitor::step_down_since`] with 1): the failover is then due
//! at `k + timeout + 1`, 7–8 s after the kill (T12: "decision 7–9 s after the kill").

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::map::{Map, NodeId};

/// Frames a down set must stay unchanged in `nearly_down` before the failover is due
/// (§8.3: "down set unchanged for 2 more frames").
pub const GRACE_FRAMES: u32 = 2;

/// The auto-failover settings (`/settings/autoFailover`, §3.6, §8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoFailoverSettings {
    /// Whether auto-failover may fail nodes over (default true, as ns_server).
    pub enabled: bool,
    /// Seconds a node must be down before it is failed over (default 120,
    /// [`Self::TIMEOUT_RANGE`]).
    pub timeout_s: u64,
    /// Nodes auto-failover may fail over before `count` is reset (default 1,
    /// [`Self::MAX_COUNT_RANGE`]).
    pub max_count: u32,
    /// Nodes auto-failed over since the last `resetCount` or successful rebalance.
    pub count: u32,
}

impl Default for AutoFailoverSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            timeout_s: 120,
            max_count: 1,
            count: 0,
        }
    }
}

impl AutoFailoverSettings {
    /// The accepted `timeout` values, in seconds.
    pub const TIMEOUT_RANGE: RangeInclusive<u64> = 5..=3600;
    /// The accepted `maxCount` values.
    pub const MAX_COUNT_RANGE: RangeInclusive<u32> = 1..=100;

    /// The `GET /settings/autoFailover` answer:
    /// `{"enabled","timeout","count","maxCount"}`, plus `"lastRefusal"` when a refusal
    /// was reported (Conduit: shown as given, e.g. [`Refusal::as_str`]).
    pub fn to_json(&self, last_refusal: Option<&str>) -> serde_json::Value {
        let mut v = serde_json::json!({
            "enabled": self.enabled,
            "timeout": self.timeout_s,
            "count": self.count,
            "maxCount": self.max_count,
        });
        if let (Some(r), Some(obj)) = (last_refusal, v.as_object_mut()) {
            obj.insert("lastRefusal".to_owned(), serde_json::Value::from(r));
        }
        v
    }
}

/// Why a due failover was not done (§8.3's guards, in the order they are checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Auto-failover is disabled.
    Disabled,
    /// `count` has reached `maxCount`: no node may be failed over until `resetCount`.
    MaxCountReached,
    /// The orchestrator does not see more than half of the active members healthy
    /// (itself included).
    NoMajority,
    /// Failing the nodes over would leave a vbucket of some bucket without a copy.
    WouldLoseData,
    /// A surviving copy needed for a promotion is on a node that is not healthy.
    CopyNotHealthy,
}

impl Refusal {
    /// The refusal's `kind` word (logs and `lastRefusal`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::MaxCountReached => "max_count_reached",
            Self::NoMajority => "no_majority",
            Self::WouldLoseData => "would_lose_data",
            Self::CopyNotHealthy => "copy_not_healthy",
        }
    }
}

/// What to do about a frame's candidates, from [`guard`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Decision {
    /// No failover is due.
    Nothing,
    /// Fail these nodes over (§8.1), in name order; then `count` += their number.
    FailOver(Vec<NodeId>),
    /// A failover was due and a guard refused it.
    Refused {
        /// The nodes the refused failover would have failed over (after the `maxCount`
        /// trim when the refusing guard comes after it).
        nodes: Vec<NodeId>,
        /// The first guard that refused.
        reason: Refusal,
    },
}

/// One node's state in the frame machine (§8.3).
///
/// ```text
///  up --down--> half_down(1) --down--> half_down(c + 1) ... half_down(timeout)
///                                                              |
///                                                         --down--> nearly_down
///  nearly_down --down set unchanged for 2 more frames--> failover (due every frame after)
///  any --up--> up;  down set changes --> every down node back to half_down(1)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Not down in the last frame.
    Up,
    /// Down for `counter` consecutive frames with the current down set.
    HalfDown {
        /// Frames down with the current down set, this one included.
        counter: u64,
    },
    /// Down for the whole timeout; waiting for the down set to stay unchanged.
    NearlyDown,
}

/// Where the current down set is in the frame machine. Every down node shares it: a
/// change of the down set sends every down node back to `half_down(1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    /// No node is down.
    #[default]
    Up,
    /// Every down node is in `half_down(counter)`.
    HalfDown(u64),
    /// Every down node is in `nearly_down`, entered this many frames ago.
    NearlyDown(u32),
}

/// The auto-failover frame machine (§8.3) and the refusal dedup; one per orchestrator.
#[derive(Debug, Default)]
pub struct Monitor {
    /// The down set of the last frame.
    down: BTreeSet<NodeId>,
    phase: Phase,
    /// Refusals already reported for the current down set.
    reported: Vec<Refusal>,
}

impl Monitor {
    /// A monitor that has seen every node up.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs one frame (one second) with the set of nodes down in it. Returns the
    /// candidates (the down set, in name order) when a failover is due: from frame
    /// `k + timeout + 2` on, where `k` is the frame the current down set was first seen
    /// (see the module doc for the exact count), and on every later frame while the down
    /// set stays the same, so that a refused failover is reconsidered each frame (a
    /// `resetCount`, a member coming back). The shell must not start a second failover
    /// while one runs; once the nodes are failed over they are no longer members, so they
    /// leave the down set, which resets the machine.
    ///
    /// `down` is the set of active members down in this frame (the orchestrator never
    /// is). A `timeout_s` of 0 counts as 1.
    #[must_use]
    pub fn step(
        &mut self,
        down: &BTreeSet<NodeId>,
        settings: &AutoFailoverSettings,
    ) -> Option<Vec<NodeId>> {
        self.step_down_since(down, settings, 0)
    }

    /// [`Monitor::step`] where a down set seen for the first time has already been
    /// down for `earlier` frames before this one (the shell needs two missed
    /// heartbeats to call a node down, so it was unresponsive one frame earlier): it
    /// enters `half_down(1 + earlier)`, and the failover is due `earlier` frames sooner.
    #[must_use]
    pub fn step_down_since(
        &mut self,
        down: &BTreeSet<NodeId>,
        settings: &AutoFailoverSettings,
        earlier: u64,
    ) -> Option<Vec<NodeId>> {
        if *down != self.down || down.is_empty() {
            // "any --up--> up; down set changes --> every down node back to half_down(1)".
            self.down.clone_from(down);
            self.phase = if down.is_empty() {
                Phase::Up
            } else {
                Phase::HalfDown(earlier.saturating_add(1))
            };
            self.reported.clear();
            return None;
        }
        let timeout = settings.timeout_s.max(1);
        self.phase = match self.phase {
            // Unreachable (a non-empty unchanged down set is never Up); treat as first seen.
            Phase::Up => Phase::HalfDown(1),
            Phase::HalfDown(c) if c >= timeout => Phase::NearlyDown(0),
            Phase::HalfDown(c) => Phase::HalfDown(c + 1),
            Phase::NearlyDown(g) => Phase::NearlyDown(g.saturating_add(1)),
        };
        match self.phase {
            Phase::NearlyDown(g) if g >= GRACE_FRAMES => Some(self.down.iter().cloned().collect()),
            _ => None,
        }
    }

    /// The down set of the last frame.
    pub fn down(&self) -> &BTreeSet<NodeId> {
        &self.down
    }

    /// `node`'s state in the frame machine after the last frame.
    pub fn state(&self, node: &NodeId) -> NodeState {
        if !self.down.contains(node) {
            return NodeState::Up;
        }
        match self.phase {
            Phase::Up => NodeState::Up,
            Phase::HalfDown(counter) => NodeState::HalfDown { counter },
            Phase::NearlyDown(_) => NodeState::NearlyDown,
        }
    }

    /// Whether `decision` should be logged (and shown as `lastRefusal`): a refusal once per
    /// down set and reason (§8.3: "a refusal is logged once per down set"; a different
    /// guard refusing the same set is news and is reported too); a failover always;
    /// nothing never. The memory is cleared whenever the down set changes.
    pub fn should_report(&mut self, decision: &Decision) -> bool {
        match decision {
            Decision::Nothing => false,
            Decision::FailOver(_) => true,
            Decision::Refused { reason, .. } => {
                if self.reported.contains(reason) {
                    false
                } else {
                    self.reported.push(*reason);
                    true
                }
            }
        }
    }
}

/// Applies §8.3's guards, in order, to the candidates [`Monitor::step`] returned:
///
/// 1. `settings.enabled`, else [`Refusal::Disabled`];
/// 2. trim the candidates to `max_count − count` nodes in name order; none left →
///    [`Refusal::MaxCountReached`];
/// 3. majority: `healthy_members * 2 > members`, where both count the active members
///    with the orchestrator included (so with 2 members, never), else
///    [`Refusal::NoMajority`];
/// 4. `loses_data(trimmed)` false (no bucket left with a vbucket without a copy; see
///    [`loses_data`]), else [`Refusal::WouldLoseData`];
/// 5. `copies_healthy(trimmed)` true (every surviving copy needed for a promotion is on a
///    healthy node; see [`copies_healthy`]), else [`Refusal::CopyNotHealthy`].
///
/// Then [`Decision::FailOver`] with the trimmed set. No candidates → [`Decision::Nothing`].
pub fn guard(
    candidates: &[NodeId],
    settings: &AutoFailoverSettings,
    healthy_members: usize,
    members: usize,
    loses_data: impl Fn(&[NodeId]) -> bool,
    copies_healthy: impl Fn(&[NodeId]) -> bool,
) -> Decision {
    let mut nodes: Vec<NodeId> = candidates.to_vec();
    nodes.sort();
    nodes.dedup();
    if nodes.is_empty() {
        return Decision::Nothing;
    }
    let refuse = |nodes: Vec<NodeId>, reason| Decision::Refused { nodes, reason };
    if !settings.enabled {
        return refuse(nodes, Refusal::Disabled);
    }
    let room =
        usize::try_from(settings.max_count.saturating_sub(settings.count)).unwrap_or(usize::MAX);
    if room == 0 {
        return refuse(nodes, Refusal::MaxCountReached);
    }
    nodes.truncate(room);
    if healthy_members.saturating_mul(2) <= members {
        return refuse(nodes, Refusal::NoMajority);
    }
    if loses_data(&nodes) {
        return refuse(nodes, Refusal::WouldLoseData);
    }
    if !copies_healthy(&nodes) {
        return refuse(nodes, Refusal::CopyNotHealthy);
    }
    Decision::FailOver(nodes)
}

/// Whether failing over `failing` would leave a vbucket of `map` that has a copy now
/// without any (guard 4; the same rule as [`crate::failover::FailoverOutcome::lost`]).
/// The caller ORs it over every bucket's map.
pub fn loses_data(map: &Map, failing: &[NodeId]) -> bool {
    map.chains().iter().any(|chain| {
        let mut copies = chain.iter().flatten().peekable();
        copies.peek().is_some() && copies.all(|n| failing.contains(n))
    })
}

/// Whether every surviving copy that a promotion could pick is on a healthy node (guard
/// 5): for each chain whose active is in `failing`, every copy not in `failing` is not in
/// `down`. (§8.1 step 2 reads every survivor's high seqno before choosing, so a copy on a
/// down node would make the failover fail or promote a copy that cannot serve.) The
/// caller ANDs it over every bucket's map.
pub fn copies_healthy(map: &Map, failing: &[NodeId], down: &BTreeSet<NodeId>) -> bool {
    map.chains().iter().all(|chain| match chain.first() {
        Some(Some(active)) if failing.contains(active) => chain
            .iter()
            .flatten()
            .filter(|n| !failing.contains(n))
            .all(|n| !down.contains(n)),
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::Chain;

    fn n(name: &str) -> NodeId {
        NodeId::from(name)
    }

    fn set(nodes: &[&str]) -> BTreeSet<NodeId> {
        nodes.iter().map(|s| n(s)).collect()
    }

    fn names(nodes: &[&str]) -> Vec<NodeId> {
        nodes.iter().map(|s| n(s)).collect()
    }

    fn settings(timeout_s: u64) -> AutoFailoverSettings {
        AutoFailoverSettings {
            timeout_s,
            ..AutoFailoverSettings::default()
        }
    }

    /// Runs the frames (frame i has down set `frames[i]`); returns the frames at which a
    /// failover was due, with the candidates.
    fn run(
        m: &mut Monitor,
        s: &AutoFailoverSettings,
        frames: &[&[&str]],
    ) -> Vec<(usize, Vec<NodeId>)> {
        frames
            .iter()
            .enumerate()
            .filter_map(|(i, down)| m.step(&set(down), s).map(|c| (i, c)))
            .collect()
    }

    fn repeat<'a>(down: &'a [&'a str], times: usize) -> Vec<&'a [&'a str]> {
        vec![down; times]
    }

    fn never(_: &[NodeId]) -> bool {
        false
    }

    fn always(_: &[NodeId]) -> bool {
        true
    }

    /// T12 timing in frames: a node down from frame k is due at frame k + timeout + 2 (the
    /// module doc explains the count), and on every frame after while nothing changes.
    #[test]
    fn t12_node_down_from_frame_k_is_due_at_frame_k_plus_timeout_plus_2() {
        for timeout in [1, 5, 120] {
            let k = 3;
            let s = settings(timeout);
            let mut m = Monitor::new();
            let mut frames = repeat(&[], k);
            frames.extend(repeat(&["c"], usize::try_from(timeout).unwrap_or(0) + 5));
            let due = run(&mut m, &s, &frames);
            let first = due.first().map(|(i, _)| *i);
            let want = k + usize::try_from(timeout).unwrap_or(0) + 2;
            assert_eq!(first, Some(want), "timeout {timeout}");
            assert_eq!(due.len(), frames.len() - want);
            assert!(due.iter().all(|(_, c)| *c == names(&["c"])));
        }
    }

    /// The states along the way, for timeout 5 (frame 0 is the first down frame).
    #[test]
    fn node_states_follow_the_frame_diagram() {
        let s = settings(5);
        let mut m = Monitor::new();
        let c = n("c");
        assert_eq!(m.state(&c), NodeState::Up);
        for counter in 1..=5 {
            assert_eq!(m.step(&set(&["c"]), &s), None);
            assert_eq!(m.state(&c), NodeState::HalfDown { counter });
        }
        assert_eq!(m.step(&set(&["c"]), &s), None); // frame 5 = k + timeout
        assert_eq!(m.state(&c), NodeState::NearlyDown);
        assert_eq!(m.step(&set(&["c"]), &s), None); // 1 more frame
        assert_eq!(m.step(&set(&["c"]), &s), Some(names(&["c"]))); // 2 more frames

        // Seen down one frame late (two missed heartbeats): due one frame sooner.
        let mut m = Monitor::new();
        assert_eq!(m.step_down_since(&set(&["c"]), &s, 1), None); // frame k
        for _ in 0..s.timeout_s {
            assert_eq!(m.step_down_since(&set(&["c"]), &s, 1), None);
        }
        assert_eq!(m.step_down_since(&set(&["c"]), &s, 1), Some(names(&["c"]))); // k + timeout + 1
        assert_eq!(m.state(&n("a")), NodeState::Up);
    }

    /// A change of the down set sends every down node back to half_down(1).
    #[test]
    fn a_changed_down_set_resets_every_down_node() {
        let s = settings(5);
        let mut m = Monitor::new();
        let mut frames = repeat(&["b"], 7); // b nearly_down, one grace frame left
        frames.push(&["b", "c"]); // frame 7: set changes
        frames.extend(repeat(&["b", "c"], 7));
        let due = run(&mut m, &s, &frames);
        assert_eq!(due.first(), Some(&(7 + 5 + 2, names(&["b", "c"]))));
        // b's counter restarted too.
        let mut m = Monitor::new();
        run(&mut m, &s, &repeat(&["b"], 4));
        assert_eq!(m.step(&set(&["b", "c"]), &s), None);
        assert_eq!(m.state(&n("b")), NodeState::HalfDown { counter: 1 });
        assert_eq!(m.state(&n("c")), NodeState::HalfDown { counter: 1 });
    }

    /// One of two down nodes coming back is a change too: the other restarts.
    #[test]
    fn a_node_coming_back_resets_the_others() {
        let s = settings(5);
        let mut m = Monitor::new();
        let mut frames = repeat(&["b", "c"], 6);
        frames.extend(repeat(&["c"], 8));
        let due = run(&mut m, &s, &frames);
        assert_eq!(due.first(), Some(&(6 + 5 + 2, names(&["c"]))));
    }

    /// A node back up resets; going down again starts over.
    #[test]
    fn a_node_back_up_resets_its_timer() {
        let s = settings(5);
        let mut m = Monitor::new();
        let mut frames = repeat(&["c"], 7); // due at frame 7: never reached
        frames.push(&[]);
        frames.extend(repeat(&["c"], 8));
        let due = run(&mut m, &s, &frames);
        assert_eq!(due.first(), Some(&(8 + 5 + 2, names(&["c"]))));
        assert_eq!(m.state(&n("c")), NodeState::NearlyDown);
        assert_eq!(m.step(&BTreeSet::new(), &s), None);
        assert_eq!(m.state(&n("c")), NodeState::Up);
    }

    /// A longer timeout set mid-count extends the wait; a shorter one shortens it.
    #[test]
    fn the_timeout_is_read_every_frame() {
        let mut m = Monitor::new();
        run(&mut m, &settings(100), &repeat(&["c"], 10));
        assert_eq!(m.state(&n("c")), NodeState::HalfDown { counter: 10 });
        let s = settings(5);
        assert_eq!(m.step(&set(&["c"]), &s), None); // counter ≥ timeout: nearly_down
        assert_eq!(m.step(&set(&["c"]), &s), None);
        assert_eq!(m.step(&set(&["c"]), &s), Some(names(&["c"])));
    }

    /// Two nodes down with maxCount 1: one is failed over, the first in name order.
    #[test]
    fn max_count_1_fails_over_one_of_two_nodes_in_name_order() {
        let s = settings(5);
        let c = names(&["ns_1@c", "ns_1@b"]);
        let d = guard(&c, &s, 3, 5, never, always);
        assert_eq!(d, Decision::FailOver(names(&["ns_1@b"])));
        let s2 = AutoFailoverSettings {
            max_count: 3,
            count: 1,
            ..s
        };
        let d = guard(&names(&["d", "c", "b"]), &s2, 5, 8, never, always);
        assert_eq!(d, Decision::FailOver(names(&["b", "c"])));
    }

    #[test]
    fn max_count_reached_is_refused() {
        let s = AutoFailoverSettings {
            count: 1,
            ..settings(5)
        };
        let d = guard(&names(&["c"]), &s, 2, 3, never, always);
        assert_eq!(
            d,
            Decision::Refused {
                nodes: names(&["c"]),
                reason: Refusal::MaxCountReached
            }
        );
    }

    #[test]
    fn disabled_is_refused_first() {
        let s = AutoFailoverSettings {
            enabled: false,
            count: 1,
            ..settings(5)
        };
        let d = guard(&names(&["c"]), &s, 1, 3, always, never);
        assert_eq!(
            d,
            Decision::Refused {
                nodes: names(&["c"]),
                reason: Refusal::Disabled
            }
        );
    }

    /// Majority: more than half of the active members healthy, the orchestrator included.
    #[test]
    fn without_a_majority_the_failover_is_refused() {
        let s = AutoFailoverSettings {
            max_count: 2,
            ..settings(5)
        };
        // 4 members, 2 down: 2 healthy is not more than half.
        let d = guard(&names(&["c", "d"]), &s, 2, 4, never, always);
        assert_eq!(
            d,
            Decision::Refused {
                nodes: names(&["c", "d"]),
                reason: Refusal::NoMajority
            }
        );
        // 5 members, 2 down: 3 healthy is.
        let d = guard(&names(&["c", "d"]), &s, 3, 5, never, always);
        assert_eq!(d, Decision::FailOver(names(&["c", "d"])));
    }

    /// §8.3: "with 2 nodes, never" — one healthy of two is no majority.
    #[test]
    fn a_two_node_cluster_never_fails_over() {
        let s = settings(5);
        let mut m = Monitor::new();
        let mut decisions = Vec::new();
        for _ in 0..20 {
            if let Some(c) = m.step(&set(&["b"]), &s) {
                decisions.push(guard(&c, &s, 1, 2, never, always));
            }
        }
        assert!(!decisions.is_empty());
        assert!(decisions.iter().all(|d| matches!(
            d,
            Decision::Refused {
                reason: Refusal::NoMajority,
                ..
            }
        )));
    }

    #[test]
    fn losing_data_is_refused() {
        let d = guard(&names(&["c"]), &settings(5), 2, 3, always, always);
        assert_eq!(
            d,
            Decision::Refused {
                nodes: names(&["c"]),
                reason: Refusal::WouldLoseData
            }
        );
    }

    #[test]
    fn an_unhealthy_copy_is_refused() {
        let d = guard(&names(&["c"]), &settings(5), 2, 3, never, never);
        assert_eq!(
            d,
            Decision::Refused {
                nodes: names(&["c"]),
                reason: Refusal::CopyNotHealthy
            }
        );
    }

    /// The data guards see the trimmed set, not every candidate.
    #[test]
    fn data_guards_see_the_trimmed_set() {
        let lose = |f: &[NodeId]| f.len() > 1;
        let d = guard(&names(&["c", "b"]), &settings(5), 3, 5, lose, always);
        assert_eq!(d, Decision::FailOver(names(&["b"])));
    }

    #[test]
    fn no_candidates_is_nothing() {
        assert_eq!(
            guard(&[], &settings(5), 0, 3, always, never),
            Decision::Nothing
        );
    }

    /// T12 end to end in frames: 3 nodes, timeout 5, one killed → failed over at k + 7.
    #[test]
    fn t12_three_nodes_one_down_is_failed_over_once_then_max_count_holds() {
        let mut s = settings(5);
        let mut m = Monitor::new();
        let mut failed_at = None;
        for frame in 0..30 {
            let down = if frame >= 2 && failed_at.is_none() {
                set(&["c"])
            } else {
                BTreeSet::new()
            };
            if let Some(c) = m.step(&down, &s) {
                let d = guard(&c, &s, 2, 3, never, always);
                assert!(m.should_report(&d));
                if let Decision::FailOver(nodes) = d {
                    s.count += u32::try_from(nodes.len()).unwrap_or(u32::MAX);
                    failed_at = Some(frame);
                }
            }
        }
        assert_eq!(failed_at, Some(2 + 5 + 2));
        assert_eq!(s.count, 1);
        // Another node down now: refused by maxCount, reported once.
        let mut reports = 0;
        for _ in 0..20 {
            if let Some(c) = m.step(&set(&["b"]), &s) {
                let d = guard(&c, &s, 1, 2, never, always);
                assert!(matches!(
                    d,
                    Decision::Refused {
                        reason: Refusal::MaxCountReached,
                        ..
                    }
                ));
                reports += usize::from(m.should_report(&d));
            }
        }
        assert_eq!(reports, 1);
    }

    /// A refusal is reported once per down set (and reason); a new down set reports again.
    #[test]
    fn refusals_are_reported_once_per_down_set() {
        let s = settings(1);
        let refused = |reason| Decision::Refused {
            nodes: names(&["c"]),
            reason,
        };
        let mut m = Monitor::new();
        run(&mut m, &s, &repeat(&["c"], 4));
        assert!(m.should_report(&refused(Refusal::NoMajority)));
        assert!(!m.should_report(&refused(Refusal::NoMajority)));
        assert!(m.should_report(&refused(Refusal::WouldLoseData)));
        assert!(!m.should_report(&refused(Refusal::NoMajority)));
        assert!(!m.should_report(&Decision::Nothing));
        assert!(m.should_report(&Decision::FailOver(names(&["c"]))));
        let _ = m.step(&set(&["c", "d"]), &s);
        assert!(m.should_report(&refused(Refusal::NoMajority)));
        let _ = m.step(&BTreeSet::new(), &s);
        let _ = m.step(&set(&["c", "d"]), &s);
        assert!(m.should_report(&refused(Refusal::NoMajority)));
    }

    fn map(chains: &[&[Option<&str>]]) -> Map {
        Map::new(
            chains
                .iter()
                .map(|c| c.iter().map(|s| s.map(n)).collect::<Chain>())
                .collect(),
        )
    }

    const A: Option<&str> = Some("a");
    const B: Option<&str> = Some("b");
    const C: Option<&str> = Some("c");
    const X: Option<&str> = None;

    #[test]
    fn loses_data_when_every_copy_of_a_vbucket_fails() {
        let m = map(&[&[A, B], &[C, X], &[X, X]]);
        assert!(!loses_data(&m, &names(&["a"])));
        assert!(loses_data(&m, &names(&["a", "b"])));
        assert!(loses_data(&m, &names(&["c"])));
        assert!(!loses_data(&m, &names(&["z"])));
    }

    #[test]
    fn copies_healthy_checks_survivors_of_failing_actives_only() {
        let m = map(&[&[A, B, C], &[B, A, X]]);
        // a fails: b and c are candidates for vb 0; c is down.
        assert!(!copies_healthy(&m, &names(&["a"]), &set(&["a", "c"])));
        assert!(copies_healthy(&m, &names(&["a"]), &set(&["a"])));
        // b fails: vb 1's survivor a is healthy; vb 0's active is not failing.
        assert!(copies_healthy(&m, &names(&["b"]), &set(&["b", "c"])));
        // a and c both fail (both down): b is healthy.
        assert!(copies_healthy(&m, &names(&["a", "c"]), &set(&["a", "c"])));
    }

    #[test]
    fn settings_default_and_json() {
        let s = AutoFailoverSettings::default();
        assert_eq!(
            s.to_json(None),
            serde_json::json!({"enabled": true, "timeout": 120, "count": 0, "maxCount": 1})
        );
        assert_eq!(
            s.to_json(Some(Refusal::NoMajority.as_str())),
            serde_json::json!({"enabled": true, "timeout": 120, "count": 0, "maxCount": 1,
                "lastRefusal": "no_majority"})
        );
        assert!(AutoFailoverSettings::TIMEOUT_RANGE.contains(&s.timeout_s));
        assert!(AutoFailoverSettings::MAX_COUNT_RANGE.contains(&s.max_count));
    }

    /// Down sets over three nodes, each frame most often the same as the one before.
    fn arb_frames() -> impl proptest::strategy::Strategy<Value = Vec<BTreeSet<NodeId>>> {
        use proptest::prelude::*;
        prop::collection::vec((any::<bool>(), 0u8..8), 1..60).prop_map(|steps| {
            let mut cur = BTreeSet::new();
            steps
                .into_iter()
                .map(|(keep, bits)| {
                    if !keep {
                        cur = ["a", "b", "c"]
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| bits & (1 << i) != 0)
                            .map(|(_, s)| n(s))
                            .collect();
                    }
                    cur.clone()
                })
                .collect()
        })
    }

    proptest::proptest! {
        /// A failover is due at frame i iff the same non-empty down set was seen in the
        /// timeout + 3 frames ending at i (first seen at k = i − timeout − 2), and the
        /// candidates are that set in name order.
        #[test]
        fn due_iff_the_same_down_set_lasted_timeout_plus_3_frames(
            frames in arb_frames(),
            timeout in 1u64..6,
        ) {
            let s = settings(timeout);
            let mut m = Monitor::new();
            let span = usize::try_from(timeout).unwrap_or(0) + 3;
            for (i, down) in frames.iter().enumerate() {
                let got = m.step(down, &s);
                let want = (!down.is_empty()
                    && i + 1 >= span
                    && frames[i + 1 - span..=i].iter().all(|d| d == down))
                    .then(|| down.iter().cloned().collect::<Vec<_>>());
                proptest::prop_assert_eq!(got, want, "frame {}", i);
            }
        }
    }

    #[test]
    fn settings_round_trip_through_serde() -> Result<(), serde_json::Error> {
        let s = AutoFailoverSettings {
            enabled: false,
            timeout_s: 30,
            max_count: 3,
            count: 2,
        };
        let back: AutoFailoverSettings = serde_json::from_str(&serde_json::to_string(&s)?)?;
        assert_eq!(back, s);
        Ok(())
    }
}
