//! Automatic rebalance retry (cluster.md §5.8): the pending-retry state machine.
//!
//! Pure: time is an input (`now_ms`, milliseconds on a clock that survives orchestrator
//! moves, e.g. Unix time, since the state is stored in `rebalance/pending_retry`).
//!
//! ```text
//! not_pending --failure of a rebalance or graceful failover, eligible,
//!               enabled, retries made < maxAttempts--> pending(attempts_made, due_at)
//! pending --take_due: due, cluster hash unchanged--> (retry running; not_pending here)
//! pending --take_due: due, cluster hash changed--> not_pending (dropped)
//! running retry --on_end fails, retries made < maxAttempts--> pending(attempts_made + 1)
//! running retry --on_end fails at maxAttempts | succeeds | stopped--> not_pending
//! pending --on_manual_start, cancel(id), enabled=false,
//!           maxAttempts lowered to ≤ attempts made--> not_pending
//! pending --afterTimePeriod changed--> pending(due re-armed for the time left)
//! ```
//!
//! Attempts: the original rebalance is attempt 1 (the report's `attempt`), the first
//! retry attempt 2. `attempts_made` counts retries already run (0 after the original
//! failed), so `attempts_remaining = maxAttempts − attempts_made`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Default `afterTimePeriod` in seconds (§11).
pub const DEFAULT_AFTER_TIME_PERIOD_S: u64 = 300;
/// Allowed `afterTimePeriod` range in seconds (§11).
pub const AFTER_TIME_PERIOD_RANGE_S: std::ops::RangeInclusive<u64> = 5..=3600;
/// Allowed `maxAttempts` range (§11).
pub const MAX_ATTEMPTS_RANGE: std::ops::RangeInclusive<u32> = 1..=3;

/// `/settings/retryRebalance` (§3.5, §5.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetrySettings {
    /// Whether failed rebalances are retried (default false).
    pub enabled: bool,
    /// Seconds between the failure and the retry (default 300, range 5–3600).
    pub after_time_period_s: u64,
    /// Retries after the original attempt (default 1, range 1–3).
    pub max_attempts: u32,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            enabled: false,
            after_time_period_s: DEFAULT_AFTER_TIME_PERIOD_S,
            max_attempts: 1,
        }
    }
}

impl RetrySettings {
    /// The REST answer `{"enabled":false,"afterTimePeriod":300,"maxAttempts":1}`.
    pub fn to_json(&self) -> Value {
        json!({
            "enabled": self.enabled,
            "afterTimePeriod": self.after_time_period_s,
            "maxAttempts": self.max_attempts,
        })
    }
}

/// A retry waiting for its timer (stored in `rebalance/pending_retry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRetry {
    /// The failed rebalance's id; the retry runs with the same id.
    pub rebalance_id: String,
    /// The rebalance type (`rebalance`, `swap_rebalance`, … or `graceful_failover`).
    pub kind: String,
    /// Retries already run (0 after the original attempt failed).
    pub attempts_made: u32,
    /// When the retry is due (same clock as every `now_ms`).
    pub due_at_ms: u64,
    /// `knownNodes` of the failed attempt. The caller removes nodes already ejected
    /// before running the retry (§5.8).
    pub known: Vec<String>,
    /// `ejectedNodes` of the failed attempt (same rule).
    pub eject: Vec<String>,
    /// [`cluster_hash`] at the failure.
    pub cluster_hash: u64,
}

impl PendingRetry {
    /// The attempt number the retry runs as (the report's `attempt`, passed back to
    /// [`RetryState::on_end`]): `attempts_made + 2`.
    pub fn attempt(&self) -> u32 {
        self.attempts_made + 2
    }
}

/// How a rebalance (or graceful failover) ended, for [`RetryState::on_end`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Completed.
    Success,
    /// Failed; `eligible` is false for `orchestrator_restarted` and an auto-failover
    /// abort (§5.8 "not eligible").
    Failed {
        /// Whether this failure may be retried.
        eligible: bool,
    },
    /// Stopped by the user: never retried.
    Stopped,
}

/// Why a pending retry was dropped (logged by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// The cluster changed since the failure (failed-over nodes, server groups, buckets).
    ClusterChanged,
    /// A manual rebalance or failover started.
    ManualStart,
    /// `cancelRebalanceRetry/{id}`.
    Cancelled,
    /// Retry was disabled.
    Disabled,
    /// `maxAttempts` was lowered to at most the retries already made.
    MaxAttemptsLowered,
}

/// The pending-retry state: `not_pending` or one [`PendingRetry`]. Serialisable so it
/// can be stored in `rebalance/pending_retry`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryState {
    pending: Option<PendingRetry>,
    #[serde(skip)]
    last_drop: Option<(String, DropReason)>,
}

impl RetryState {
    /// A rebalance or graceful failover ended: arms a retry for an eligible failure
    /// when retry is enabled and `attempt − 1` (retries made) < `maxAttempts`;
    /// otherwise (success, stop, ineligible failure, disabled, attempts used up) the
    /// state becomes not_pending. `attempt` is the ended run's attempt number (1 for
    /// the original); `now_ms` is the failure time.
    #[allow(clippy::too_many_arguments)] // the §5.8 facts of one ending, spelled out
    pub fn on_end(
        &mut self,
        settings: &RetrySettings,
        ending: Ending,
        id: &str,
        kind: &str,
        known: &[String],
        eject: &[String],
        attempt: u32,
        cluster_hash: u64,
        now_ms: u64,
    ) {
        self.pending = None;
        let made = attempt.saturating_sub(1);
        if ending != (Ending::Failed { eligible: true })
            || !settings.enabled
            || made >= settings.max_attempts
        {
            return;
        }
        self.pending = Some(PendingRetry {
            rebalance_id: id.to_owned(),
            kind: kind.to_owned(),
            attempts_made: made,
            due_at_ms: now_ms.saturating_add(settings.after_time_period_s.saturating_mul(1000)),
            known: known.to_vec(),
            eject: eject.to_vec(),
            cluster_hash,
        });
    }

    /// A manual rebalance, failover, graceful failover or rebalance cancel started: any
    /// pending retry is dropped.
    pub fn on_manual_start(&mut self) {
        self.drop_pending(DropReason::ManualStart);
    }

    /// `cancelRebalanceRetry/{id}`: drops the pending retry if it has this id; false
    /// (400) when no retry with that id is pending.
    pub fn cancel(&mut self, id: &str) -> bool {
        if self.pending.as_ref().is_some_and(|p| p.rebalance_id == id) {
            self.drop_pending(DropReason::Cancelled);
            true
        } else {
            false
        }
    }

    /// Settings changed: disabling drops the pending retry; `maxAttempts` lowered to at
    /// most the retries made drops it; an `afterTimePeriod` change re-arms the timer for
    /// the time left under the new period (due at once if already past).
    pub fn on_settings(&mut self, old: &RetrySettings, new: &RetrySettings, now_ms: u64) {
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        if !new.enabled {
            self.drop_pending(DropReason::Disabled);
            return;
        }
        if new.max_attempts <= p.attempts_made {
            self.drop_pending(DropReason::MaxAttemptsLowered);
            return;
        }
        if old.after_time_period_s != new.after_time_period_s {
            let failed_at = p
                .due_at_ms
                .saturating_sub(old.after_time_period_s.saturating_mul(1000));
            let due = failed_at.saturating_add(new.after_time_period_s.saturating_mul(1000));
            p.due_at_ms = due.max(now_ms);
        }
    }

    /// Due now? Returns the retry to run (the state becomes not_pending; the retry's own
    /// end comes back through [`Self::on_end`]) if it is due and `cluster_hash` still
    /// matches; when due with a changed hash it is dropped and `None` returned
    /// ([`Self::last_drop`] says why).
    pub fn take_due(&mut self, now_ms: u64, cluster_hash: u64) -> Option<PendingRetry> {
        let p = self.pending.as_ref()?;
        if p.due_at_ms > now_ms {
            return None;
        }
        if p.cluster_hash != cluster_hash {
            self.drop_pending(DropReason::ClusterChanged);
            return None;
        }
        self.pending.take()
    }

    /// The pending retry, if any.
    pub fn pending(&self) -> Option<&PendingRetry> {
        self.pending.as_ref()
    }

    /// The last dropped retry's id and the reason (not stored).
    pub fn last_drop(&self) -> Option<&(String, DropReason)> {
        self.last_drop.as_ref()
    }

    /// `GET /pools/default/pendingRetryRebalance` (§5.8): `{"retry_rebalance":
    /// "not_pending"}`, or pending with `rebalance_id`, `type`, `attempts_remaining`,
    /// `retry_after_secs` (whole seconds left, rounded up, 0 when due), `known`, `eject`.
    pub fn to_json(&self, settings: &RetrySettings, now_ms: u64) -> Value {
        let Some(p) = &self.pending else {
            return json!({"retry_rebalance": "not_pending"});
        };
        json!({
            "retry_rebalance": "pending",
            "rebalance_id": p.rebalance_id,
            "type": p.kind,
            "attempts_remaining": settings.max_attempts.saturating_sub(p.attempts_made),
            "retry_after_secs": p.due_at_ms.saturating_sub(now_ms).div_ceil(1000),
            "known": p.known,
            "eject": p.eject,
        })
    }

    fn drop_pending(&mut self, reason: DropReason) {
        if let Some(p) = self.pending.take() {
            tracing::info!(rebalance_id = %p.rebalance_id, ?reason, "pending rebalance retry dropped");
            self.last_drop = Some((p.rebalance_id, reason));
        }
    }
}

/// Hash of the cluster facts a retry depends on (§5.8: failed-over nodes, server
/// groups as (node, group), buckets as (name, replicas, uuid)): 64-bit FNV-1a over a
/// canonical text (each list sorted and deduplicated, every string length-prefixed),
/// so it is stable across processes and versions.
pub fn cluster_hash(
    failed_nodes: &[String],
    groups: &[(String, String)],
    buckets: &[(String, u8, String)],
) -> u64 {
    fn field(out: &mut String, s: &str) {
        out.push_str(&s.len().to_string());
        out.push(':');
        out.push_str(s);
    }
    let mut failed: Vec<&String> = failed_nodes.iter().collect();
    failed.sort();
    failed.dedup();
    let mut groups: Vec<&(String, String)> = groups.iter().collect();
    groups.sort();
    groups.dedup();
    let mut buckets: Vec<&(String, u8, String)> = buckets.iter().collect();
    buckets.sort();
    buckets.dedup();
    let mut text = String::new();
    for f in failed {
        text.push_str("failed ");
        field(&mut text, f);
        text.push('\n');
    }
    for (node, group) in groups {
        text.push_str("group ");
        field(&mut text, node);
        field(&mut text, group);
        text.push('\n');
    }
    for (name, replicas, uuid) in buckets {
        text.push_str("bucket ");
        field(&mut text, name);
        field(&mut text, &replicas.to_string());
        field(&mut text, uuid);
        text.push('\n');
    }
    fnv1a(text.as_bytes())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests;
