//! Retry tests: every transition of the cluster.md §5.8 diagram and each "not
//! eligible" case.

use serde_json::json;

use super::*;

const MIN: u64 = 60_000;

fn on() -> RetrySettings {
    RetrySettings {
        enabled: true,
        after_time_period_s: 300,
        max_attempts: 1,
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// Ends attempt `attempt` of rebalance `r1` at `now_ms` with cluster hash 7.
fn end(s: &mut RetryState, settings: &RetrySettings, ending: Ending, attempt: u32, now_ms: u64) {
    s.on_end(
        settings,
        ending,
        "r1",
        "swap_rebalance",
        &names(&["ns_1@a", "ns_1@b", "ns_1@c"]),
        &names(&["ns_1@c"]),
        attempt,
        7,
        now_ms,
    );
}

const FAILED: Ending = Ending::Failed { eligible: true };

/// not_pending --eligible failure--> pending(attempt 1, timer).
#[test]
fn eligible_failure_arms_a_retry() {
    let mut s = RetryState::default();
    end(&mut s, &on(), FAILED, 1, 1_000);
    let p = s.pending().expect("pending");
    assert_eq!(p.rebalance_id, "r1");
    assert_eq!(p.kind, "swap_rebalance");
    assert_eq!(p.attempts_made, 0);
    assert_eq!(p.attempt(), 2);
    assert_eq!(p.due_at_ms, 1_000 + 5 * MIN);
    assert_eq!(p.cluster_hash, 7);
}

/// Not eligible: success, a user stop, an auto-failover abort, orchestrator_restarted.
#[test]
fn ineligible_endings_arm_nothing() {
    for ending in [
        Ending::Success,
        Ending::Stopped,
        Ending::Failed { eligible: false },
    ] {
        let mut s = RetryState::default();
        end(&mut s, &on(), ending, 1, 0);
        assert_eq!(s.pending(), None, "{ending:?}");
    }
}

#[test]
fn failure_with_retry_disabled_arms_nothing() {
    let mut s = RetryState::default();
    end(&mut s, &RetrySettings::default(), FAILED, 1, 0);
    assert_eq!(s.pending(), None);
}

/// pending --timer fires, state check passes--> the retry runs (same id).
#[test]
fn due_retry_with_unchanged_cluster_is_taken() {
    let mut s = RetryState::default();
    end(&mut s, &on(), FAILED, 1, 0);
    assert_eq!(s.take_due(5 * MIN - 1, 7), None);
    assert!(s.pending().is_some(), "not due yet: still pending");
    let p = s.take_due(5 * MIN, 7).expect("due");
    assert_eq!(p.rebalance_id, "r1");
    assert_eq!(p.known, names(&["ns_1@a", "ns_1@b", "ns_1@c"]));
    assert_eq!(p.eject, names(&["ns_1@c"]));
    assert_eq!(s.pending(), None);
}

/// The retry is dropped if the cluster changed since the failure.
#[test]
fn due_retry_with_changed_cluster_is_dropped() {
    let mut s = RetryState::default();
    end(&mut s, &on(), FAILED, 1, 0);
    assert_eq!(s.take_due(5 * MIN, 8), None);
    assert_eq!(s.pending(), None);
    assert_eq!(
        s.last_drop(),
        Some(&("r1".to_owned(), DropReason::ClusterChanged))
    );
}

/// running retry --fails, attempts < maxAttempts--> pending(attempt + 1).
#[test]
fn failed_retry_below_max_attempts_rearms() {
    let settings = RetrySettings {
        max_attempts: 3,
        ..on()
    };
    let mut s = RetryState::default();
    end(&mut s, &settings, FAILED, 1, 0);
    let p = s.take_due(5 * MIN, 7).expect("due");
    end(&mut s, &settings, FAILED, p.attempt(), 6 * MIN);
    let p = s.pending().expect("pending again");
    assert_eq!(p.attempts_made, 1);
    assert_eq!(p.due_at_ms, 11 * MIN);
    let p = s.take_due(11 * MIN, 7).expect("due");
    end(&mut s, &settings, FAILED, p.attempt(), 12 * MIN);
    assert_eq!(s.pending().map(|p| p.attempts_made), Some(2));
    let p = s.take_due(17 * MIN, 7).expect("due");
    assert_eq!(p.attempt(), 4);
    end(&mut s, &settings, FAILED, p.attempt(), 18 * MIN);
    assert_eq!(s.pending(), None, "3 retries made");
}

/// running retry --fails, attempts = maxAttempts--> not_pending.
#[test]
fn failed_retry_at_max_attempts_ends_retrying() {
    let mut s = RetryState::default();
    end(&mut s, &on(), FAILED, 1, 0);
    let p = s.take_due(5 * MIN, 7).expect("due");
    end(&mut s, &on(), FAILED, p.attempt(), 6 * MIN);
    assert_eq!(s.pending(), None);
}

/// running retry --succeeds (or is stopped)--> not_pending.
#[test]
fn retry_that_succeeds_or_is_stopped_ends_retrying() {
    let settings = RetrySettings {
        max_attempts: 3,
        ..on()
    };
    for ending in [Ending::Success, Ending::Stopped] {
        let mut s = RetryState::default();
        end(&mut s, &settings, FAILED, 1, 0);
        let p = s.take_due(5 * MIN, 7).expect("due");
        end(&mut s, &settings, ending, p.attempt(), 6 * MIN);
        assert_eq!(s.pending(), None, "{ending:?}");
    }
}

/// pending --manual rebalance, failover, graceful failover--> not_pending.
#[test]
fn manual_start_drops_the_pending_retry() {
    let mut s = RetryState::default();
    end(&mut s, &on(), FAILED, 1, 0);
    s.on_manual_start();
    assert_eq!(s.pending(), None);
    assert_eq!(
        s.last_drop(),
        Some(&("r1".to_owned(), DropReason::ManualStart))
    );
    s.on_manual_start();
}

/// pending --cancelRebalanceRetry/<id>--> not_pending; another id is refused.
#[test]
fn cancel_with_the_right_id_drops_the_retry() {
    let mut s = RetryState::default();
    assert!(!s.cancel("r1"), "nothing pending");
    end(&mut s, &on(), FAILED, 1, 0);
    assert!(!s.cancel("r2"));
    assert!(s.pending().is_some());
    assert!(s.cancel("r1"));
    assert_eq!(s.pending(), None);
}

/// pending --enabled=false--> not_pending.
#[test]
fn disabling_drops_the_retry() {
    let mut s = RetryState::default();
    end(&mut s, &on(), FAILED, 1, 0);
    s.on_settings(
        &on(),
        &RetrySettings {
            enabled: false,
            ..on()
        },
        MIN,
    );
    assert_eq!(s.pending(), None);
    assert_eq!(s.last_drop().map(|d| &d.1), Some(&DropReason::Disabled));
}

/// pending --maxAttempts lowered to ≤ attempts made--> not_pending; above, it stays.
#[test]
fn lowering_max_attempts_to_attempts_made_drops_the_retry() {
    let three = RetrySettings {
        max_attempts: 3,
        ..on()
    };
    let mut s = RetryState::default();
    end(&mut s, &three, FAILED, 2, 0); // one retry made
    let two = RetrySettings {
        max_attempts: 2,
        ..on()
    };
    s.on_settings(&three, &two, MIN);
    assert!(s.pending().is_some(), "2 > 1 made");
    s.on_settings(&two, &on(), MIN);
    assert_eq!(s.pending(), None);
    assert_eq!(
        s.last_drop().map(|d| &d.1),
        Some(&DropReason::MaxAttemptsLowered)
    );
}

/// Changing afterTimePeriod re-arms the timer for the time left (at once if past).
#[test]
fn changing_after_time_period_rearms_for_the_time_left() {
    let mut s = RetryState::default();
    end(&mut s, &on(), FAILED, 1, 0);
    let ten = RetrySettings {
        after_time_period_s: 600,
        ..on()
    };
    s.on_settings(&on(), &ten, MIN);
    assert_eq!(s.pending().map(|p| p.due_at_ms), Some(10 * MIN));
    let short = RetrySettings {
        after_time_period_s: 60,
        ..on()
    };
    s.on_settings(&ten, &short, 3 * MIN);
    assert_eq!(
        s.pending().map(|p| p.due_at_ms),
        Some(3 * MIN),
        "already past: due now"
    );
    assert!(s.take_due(3 * MIN, 7).is_some());
}

#[test]
fn settings_changes_without_a_pending_retry_do_nothing() {
    let mut s = RetryState::default();
    s.on_settings(&on(), &RetrySettings::default(), 0);
    assert_eq!(s.pending(), None);
    assert_eq!(s.take_due(u64::MAX, 7), None);
}

/// A new failure replaces the pending retry (a manual rebalance dropped it at start).
#[test]
fn end_replaces_any_pending_retry() {
    let mut s = RetryState::default();
    end(&mut s, &on(), FAILED, 1, 0);
    end(&mut s, &on(), Ending::Success, 1, MIN);
    assert_eq!(s.pending(), None);
}

/// §5.8 field names.
#[test]
fn pending_retry_json() {
    let mut s = RetryState::default();
    assert_eq!(
        s.to_json(&on(), 0),
        json!({"retry_rebalance":"not_pending"})
    );
    end(&mut s, &on(), FAILED, 1, 0);
    assert_eq!(
        s.to_json(&on(), 1),
        json!({"retry_rebalance":"pending","rebalance_id":"r1","type":"swap_rebalance",
               "attempts_remaining":1,"retry_after_secs":300,
               "known":["ns_1@a","ns_1@b","ns_1@c"],"eject":["ns_1@c"]})
    );
    assert_eq!(s.to_json(&on(), 6 * MIN)["retry_after_secs"], json!(0));
    assert_eq!(
        RetrySettings::default().to_json(),
        json!({"enabled":false,"afterTimePeriod":300,"maxAttempts":1})
    );
}

/// The state is stored in `rebalance/pending_retry`: it round-trips through JSON.
#[test]
fn state_round_trips_through_serde() {
    let mut s = RetryState::default();
    end(&mut s, &on(), FAILED, 1, 0);
    let text = serde_json::to_string(&s).expect("serialises");
    let back: RetryState = serde_json::from_str(&text).expect("deserialises");
    assert_eq!(back.pending(), s.pending());
}

#[test]
fn cluster_hash_is_canonical_and_sees_every_fact() {
    let failed = names(&["ns_1@a", "ns_1@b"]);
    let groups = vec![
        ("ns_1@a".to_owned(), "g1".to_owned()),
        ("ns_1@c".to_owned(), "g2".to_owned()),
    ];
    let buckets = vec![("default".to_owned(), 1, "u1".to_owned())];
    let h = cluster_hash(&failed, &groups, &buckets);
    let rev = |v: &[String]| v.iter().rev().cloned().collect::<Vec<_>>();
    let groups_rev: Vec<_> = groups.iter().rev().cloned().collect();
    assert_eq!(
        h,
        cluster_hash(&rev(&failed), &groups_rev, &buckets),
        "order-free"
    );
    assert_ne!(
        h,
        cluster_hash(&failed[..1], &groups, &buckets),
        "failed-over nodes"
    );
    let moved = vec![groups[0].clone(), ("ns_1@c".to_owned(), "g1".to_owned())];
    assert_ne!(h, cluster_hash(&failed, &moved, &buckets), "server groups");
    let replicas = vec![("default".to_owned(), 2, "u1".to_owned())];
    assert_ne!(
        h,
        cluster_hash(&failed, &groups, &replicas),
        "replica count"
    );
    let uuid = vec![("default".to_owned(), 1, "u2".to_owned())];
    assert_ne!(h, cluster_hash(&failed, &groups, &uuid), "bucket recreated");
    assert_ne!(h, cluster_hash(&failed, &groups, &[]), "bucket deleted");
    // Length prefixes keep field boundaries: ("ab","c") ≠ ("a","bc").
    let g1 = [("ab".to_owned(), "c".to_owned())];
    let g2 = [("a".to_owned(), "bc".to_owned())];
    assert_ne!(cluster_hash(&[], &g1, &[]), cluster_hash(&[], &g2, &[]));
    // FNV-1a of the empty text is the offset basis.
    assert_eq!(cluster_hash(&[], &[], &[]), 0xcbf2_9ce4_8422_2325);
}
