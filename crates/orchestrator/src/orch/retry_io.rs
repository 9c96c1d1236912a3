//! Automatic rebalance retry (cluster.md §5.8): the pure state machine of
//! [`crate::retry`], kept in the store (`rebalance/pending_retry`,
//! `settings/retry_rebalance`) so it survives an orchestrator restart.

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::actor::transact_view;
use super::model::{ClusterView, Membership};
use super::rebalance::{End, Plan};
use super::Shared;
use crate::rest::error::RestError;
use crate::retry::{cluster_hash, Ending, PendingRetry, RetrySettings, RetryState};
use crate::store::Op;

const STATE_KEY: &str = "rebalance/pending_retry";
const SETTINGS_KEY: &str = "settings/retry_rebalance";

/// Wall-clock ms (the due time is stored, so it must survive a restart).
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The stored settings and state (defaults when absent).
pub(super) fn load(view: &ClusterView) -> (RetrySettings, RetryState) {
    let settings = view
        .snapshot
        .get(SETTINGS_KEY)
        .and_then(|e| e.json::<RetrySettings>().ok())
        .unwrap_or_default();
    let state = view
        .snapshot
        .get(STATE_KEY)
        .and_then(|e| e.json::<RetryState>().ok())
        .unwrap_or_default();
    (settings, state)
}

fn hash(view: &ClusterView) -> u64 {
    let failed: Vec<String> = view
        .nodes
        .values()
        .filter(|n| n.membership == Membership::InactiveFailed)
        .map(|n| n.name.clone())
        .collect();
    let groups: Vec<(String, String)> = view
        .nodes
        .values()
        .map(|n| (n.name.clone(), n.server_group.clone()))
        .collect();
    let buckets: Vec<(String, u8, String)> = view
        .buckets
        .values()
        .map(|b| {
            (
                b.record.name.clone(),
                b.record.num_replicas,
                b.record.uuid.clone(),
            )
        })
        .collect();
    cluster_hash(&failed, &groups, &buckets)
}

/// Applies `f` to the stored state (and settings) in one transaction.
async fn update<T: Send>(
    shared: &Shared,
    mut f: impl FnMut(&ClusterView, &mut RetrySettings, &mut RetryState) -> Result<T, RestError> + Send,
) -> Result<T, RestError> {
    let mut out = None;
    transact_view(shared.store.as_ref(), |v| {
        let (mut settings, mut state) = load(v);
        let (s0, st0) = (settings, state.clone());
        out = Some(f(v, &mut settings, &mut state)?);
        let mut ops = vec![];
        if settings != s0 {
            ops.push(
                Op::put_json(SETTINGS_KEY, &settings)
                    .map_err(|e| RestError::internal(e.to_string()))?,
            );
        }
        if state != st0 {
            ops.push(
                Op::put_json(STATE_KEY, &state).map_err(|e| RestError::internal(e.to_string()))?,
            );
        }
        if ops.is_empty() {
            return Ok(None);
        }
        Ok(Some((
            vec![
                v.snapshot.unchanged(SETTINGS_KEY),
                v.snapshot.unchanged(STATE_KEY),
            ],
            ops,
        )))
    })
    .await?;
    out.ok_or_else(|| RestError::internal("the retry update did not run"))
}

/// A rebalance ended: arm, re-arm or drop the pending retry.
pub(super) async fn on_end(shared: &Shared, plan: &Plan, end: &End) -> Result<(), RestError> {
    let ending = match end {
        End::Done => Ending::Success,
        End::Stopped => Ending::Stopped,
        End::Failed(e) => Ending::Failed {
            eligible: e["kind"] != "orchestrator_restarted" && e["kind"] != "auto_failover",
        },
    };
    update(shared, |v, settings, state| {
        state.on_end(
            settings,
            ending,
            &plan.id,
            &plan.kind,
            &plan.known,
            &plan.eject,
            plan.attempt,
            hash(v),
            now_ms(),
        );
        Ok(())
    })
    .await
}

/// Someone started a rebalance: no retry stays pending.
pub(super) async fn on_manual_start(shared: &Shared) -> Result<(), RestError> {
    update(shared, |_, _, state| {
        state.on_manual_start();
        Ok(())
    })
    .await
}

/// The retry to run now, if one is due and the cluster did not change.
pub(super) async fn take_due(shared: &Shared) -> Option<PendingRetry> {
    update(shared, |v, _, state| Ok(state.take_due(now_ms(), hash(v))))
        .await
        .ok()
        .flatten()
}

/// `POST /settings/retryRebalance`.
pub(super) async fn set_settings(shared: &Shared, new: RetrySettings) -> Result<Value, RestError> {
    update(shared, |_, settings, state| {
        state.on_settings(settings, &new, now_ms());
        *settings = new;
        Ok(new.to_json())
    })
    .await
}

/// `POST /controller/cancelRebalanceRetry/{id}`.
pub(super) async fn cancel(shared: &Shared, id: &str) -> Result<Value, RestError> {
    let cancelled = update(shared, |_, _, state| Ok(state.cancel(id))).await?;
    if cancelled {
        Ok(json!({}))
    } else {
        Err(RestError::new(
            StatusCode::BAD_REQUEST,
            "no_pending_retry",
            "_",
            format!("no pending retry with id {id}"),
        ))
    }
}
