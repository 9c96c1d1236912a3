//! Auto-failover (cluster.md §8.3): once a second, the heartbeat board's down set
//! feeds the pure frame machine (`autofailover::Monitor`); a due failover passes the
//! guards and goes to the actor as an automatic hard failover.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::actor::transact_view;
use super::health::NodeStatus;
use super::model::ClusterView;
use super::{Command, Reply, Shared};
use crate::autofailover::{guard, AutoFailoverSettings, Decision, Monitor};
use crate::failover::fail_over_map;
use crate::map::NodeId;
use crate::rest::error::RestError;
use crate::store::Op;

pub(super) const SETTINGS_KEY: &str = "settings/auto_failover";

/// The stored settings, or the defaults.
pub(super) fn settings_of(view: &ClusterView) -> AutoFailoverSettings {
    view.snapshot
        .get(SETTINGS_KEY)
        .and_then(|e| e.json::<AutoFailoverSettings>().ok())
        .unwrap_or_default()
}

/// Changes the stored settings.
pub(super) async fn update(
    shared: &Shared,
    f: impl Fn(&mut AutoFailoverSettings) + Send + Sync,
) -> Result<AutoFailoverSettings, RestError> {
    let mut out = None;
    transact_view(shared.store.as_ref(), |v| {
        let mut s = settings_of(v);
        f(&mut s);
        out = Some(s);
        Ok(Some((
            vec![v.snapshot.unchanged(SETTINGS_KEY)],
            vec![Op::put_json(SETTINGS_KEY, &s).map_err(|e| RestError::internal(e.to_string()))?],
        )))
    })
    .await?;
    out.ok_or_else(|| RestError::internal("the settings update did not run"))
}

/// Whether failing `nodes` over would leave a vbucket of some bucket without a copy.
fn loses_data(view: &ClusterView, nodes: &[NodeId]) -> bool {
    let failed: BTreeSet<NodeId> = nodes.iter().cloned().collect();
    view.buckets
        .values()
        .filter_map(|b| b.map.as_ref())
        .any(|m| {
            !fail_over_map(m, &failed, &Default::default())
                .lost
                .is_empty()
        })
}

/// Whether every vbucket whose active is on `nodes` has a copy on a healthy node.
fn copies_healthy(view: &ClusterView, nodes: &[NodeId], down: &BTreeSet<NodeId>) -> bool {
    view.buckets
        .values()
        .filter_map(|b| b.map.as_ref())
        .all(|m| {
            m.chains().iter().all(|c| match c.first() {
                Some(Some(head)) if nodes.contains(head) => c
                    .iter()
                    .skip(1)
                    .flatten()
                    .any(|x| !nodes.contains(x) && !down.contains(x)),
                _ => true,
            })
        })
}

pub(super) async fn run(
    shared: Arc<Shared>,
    tx: mpsc::Sender<(Command, Reply)>,
    stop: CancellationToken,
) {
    let mut monitor = Monitor::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut views = shared.view.subscribe();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if views.borrow_and_update().is_none() {
            continue;
        }
        // A fresh read each tick: the settings may have changed since the last refresh.
        let Ok(view) = super::actor::read_view(shared.store.as_ref()).await else {
            continue;
        };
        let settings = settings_of(&view);
        let members: Vec<&super::model::NodeRecord> = view.active_nodes().collect();
        let mut down: BTreeSet<NodeId> = BTreeSet::new();
        // Whether every down node was already unresponsive a frame before it counted
        // as down (two missed heartbeats, not a bucket that is not ready).
        let mut all_missed = true;
        // Serves: listed as a server and holding copies in the map. A node that a
        // failed rebalance added to a bucket before giving it any vbucket has no
        // janitor apply yet (so its bucket is not `ready`) and holds nothing: it is
        // not down, or one more dead node would leave no majority. The nodes each
        // bucket's map names are collected once per tick, in bucket order.
        let in_maps: Vec<Option<BTreeSet<NodeId>>> = view
            .buckets
            .values()
            .map(|b| b.map.as_ref().map(crate::map::Map::nodes))
            .collect();
        for n in &members {
            if n.name == view.cluster.orchestrator {
                continue;
            }
            let id = NodeId(n.name.clone());
            let serves: Vec<&str> = view
                .buckets
                .values()
                .zip(&in_maps)
                .filter(|(b, in_map)| {
                    b.record.servers.contains(&n.name)
                        && in_map.as_ref().is_none_or(|m| m.contains(&id))
                })
                .map(|(b, _)| b.record.name.as_str())
                .collect();
            let h = shared.health.get(&n.name);
            // Down: two heartbeats in a row missed (one late answer on a busy machine
            // must not restart every node's count), or a bucket it serves not ready.
            if h.missed >= 2 || h.status(&serves) != NodeStatus::Healthy {
                down.insert(NodeId(n.name.clone()));
                all_missed &= h.missed >= 2;
            }
        }
        let earlier = u64::from(!down.is_empty() && all_missed);
        let Some(candidates) = monitor.step_down_since(&down, &settings, earlier) else {
            continue;
        };
        let healthy = members.len() - down.len();
        let decision = guard(
            &candidates,
            &settings,
            healthy,
            members.len(),
            |nodes: &[NodeId]| loses_data(&view, nodes),
            |nodes: &[NodeId]| copies_healthy(&view, nodes, &down),
        );
        match decision {
            Decision::Nothing => {}
            Decision::Refused { nodes, reason } => {
                let text = format!(
                    "auto-failover of {:?} refused: {}",
                    nodes.iter().map(|n| n.0.as_str()).collect::<Vec<_>>(),
                    reason.as_str()
                );
                if monitor.should_report(&Decision::Refused { nodes, reason }) {
                    warn!("{text}");
                }
                if let Ok(mut r) = shared.auto_refusal.lock() {
                    *r = Some(text);
                }
            }
            Decision::FailOver(nodes) => {
                let names: Vec<String> = nodes.iter().map(|n| n.0.clone()).collect();
                info!(nodes = ?names, "auto-failover: failing over");
                let (reply, rx) = oneshot::channel();
                if tx
                    .send((
                        Command::FailOver {
                            nodes: names.clone(),
                            force: false,
                            auto: true,
                        },
                        reply,
                    ))
                    .await
                    .is_err()
                {
                    return;
                }
                match tokio::time::timeout(Duration::from_secs(60), rx).await {
                    Ok(Ok(Ok(_))) => {
                        let n = names.len() as u32;
                        if let Err(e) =
                            update(&shared, |s| s.count = s.count.saturating_add(n)).await
                        {
                            warn!(error = %e.to_json(), "recording the auto-failover count failed");
                        }
                    }
                    Ok(Ok(Err(e))) => warn!(error = %e.to_json(), "auto-failover failed"),
                    _ => warn!("auto-failover: no answer from the orchestrator"),
                }
                monitor = Monitor::default();
            }
        }
    }
}

/// `GET /settings/autoFailover`.
pub(super) fn settings_json(shared: &Shared, view: &ClusterView) -> Value {
    let refusal = shared.auto_refusal.lock().ok().and_then(|r| r.clone());
    settings_of(view).to_json(refusal.as_deref())
}
