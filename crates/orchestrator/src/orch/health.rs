//! The heartbeat (cluster.md §3.3 `status`, §8.3): every period, every node's agent
//! `health`, bounded by the period.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::agent::api::Health;
use crate::agent::AgentClient;

/// A node's status as REST shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// Heartbeat fresh, every bucket it serves ready.
    Healthy,
    /// Heartbeat fresh, a bucket not yet ready.
    Warmup,
    /// Two heartbeats missed (or never heard).
    Unhealthy,
}

impl NodeStatus {
    /// The REST spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Warmup => "warmup",
            Self::Unhealthy => "unhealthy",
        }
    }
}

/// The last heartbeat of a node.
#[derive(Debug, Clone, Default)]
pub struct NodeHealth {
    /// When it last answered.
    pub last_ok: Option<Instant>,
    /// Its last answer.
    pub health: Option<Health>,
    /// Missed heartbeats in a row.
    pub missed: u32,
}

impl NodeHealth {
    /// Status given the buckets the node should serve.
    #[must_use]
    pub fn status(&self, serves: &[&str]) -> NodeStatus {
        let Some(h) = &self.health else {
            return NodeStatus::Unhealthy;
        };
        if self.missed >= 2 {
            return NodeStatus::Unhealthy;
        }
        let ready = serves
            .iter()
            .all(|b| h.buckets.get(*b).is_some_and(|bh| bh.ready));
        if ready {
            NodeStatus::Healthy
        } else {
            NodeStatus::Warmup
        }
    }
}

/// Every node's last heartbeat.
#[derive(Debug, Default)]
pub(crate) struct HealthBoard {
    nodes: Mutex<BTreeMap<String, NodeHealth>>,
}

impl HealthBoard {
    pub(crate) fn get(&self, name: &str) -> NodeHealth {
        self.nodes
            .lock()
            .ok()
            .and_then(|m| m.get(name).cloned())
            .unwrap_or_default()
    }

    fn record(&self, name: &str, answer: Option<Health>) {
        let Ok(mut m) = self.nodes.lock() else {
            return;
        };
        let e = m.entry(name.to_owned()).or_default();
        match answer {
            Some(h) => {
                e.last_ok = Some(Instant::now());
                e.health = Some(h);
                e.missed = 0;
            }
            None => e.missed = e.missed.saturating_add(1),
        }
    }

    fn retain(&self, names: &[String]) {
        if let Ok(mut m) = self.nodes.lock() {
            m.retain(|k, _| names.contains(k));
        }
    }
}

pub(super) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let period = shared.cfg.heartbeat_period;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut views = shared.view.subscribe();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(view) = views.borrow_and_update().clone() else {
            continue;
        };
        let names: Vec<String> = view.nodes.keys().cloned().collect();
        shared.health.retain(&names);
        let calls = view.nodes.values().map(|n| {
            let client = AgentClient::new(
                n.admin_addr(),
                n.name.clone(),
                shared.secrets.internal.clone(),
                Some(view.cluster.uuid.clone()),
                view.cluster.term,
            );
            let name = n.name.clone();
            async move {
                let answer = tokio::time::timeout(period, client.health()).await;
                (name, answer.ok().and_then(Result::ok))
            }
        });
        for (name, answer) in futures::future::join_all(calls).await {
            shared.health.record(&name, answer);
        }
    }
}
