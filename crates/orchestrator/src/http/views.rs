//! The read-only views (`GET` routes of §3.3–§3.5); they never go through the actor.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::ClusterHttp;
use crate::map::{rebalance_reasons, BalanceInput, NodeId};
use crate::orch::{ClusterView, NodeRecord, Orchestrator};
use crate::rest::error::RestError;

/// Bound of the item-count listing behind `basicStats`.
const STATS_BOUND: Duration = Duration::from_secs(2);

fn node_json(st: &ClusterHttp, o: &Orchestrator, view: &ClusterView, n: &NodeRecord) -> Value {
    let serves: Vec<&str> = view
        .buckets
        .values()
        .filter(|b| b.record.servers.contains(&n.name))
        .map(|b| b.record.name.as_str())
        .collect();
    let status = o.node_health(&n.name).status(&serves);
    json!({
        "otpNode": n.name,
        "hostname": format!("{}:{}", n.host, n.admin_port),
        "thisNode": n.name == o.self_name(),
        "clusterMembership": n.membership.as_str(),
        "recoveryType": n.recovery_type,
        "status": status.as_str(),
        "services": n.services,
        "ports": {"direct": n.kv_port},
        "nodeUUID": n.uuid,
        "serverGroup": n.server_group,
        "version": st.implementation_version(),
    })
}

fn balance(view: &ClusterView) -> (bool, BTreeMap<&'static str, Vec<String>>) {
    let members = view.active_ids();
    let mut reasons: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for b in view.buckets.values() {
        let servers: Vec<NodeId> = b.record.servers.iter().map(|s| NodeId(s.clone())).collect();
        let options = view.map_options(&b.record, &servers);
        let input = BalanceInput {
            map: b.map.as_ref(),
            last_balanced: b.last_balanced.as_ref(),
            servers: &servers,
            active_members: &members,
            options: &options,
            stored_options_hash: (b.record.map_opts_hash != 0).then_some(b.record.map_opts_hash),
        };
        for r in rebalance_reasons(&input) {
            reasons
                .entry(r.as_str())
                .or_default()
                .push(b.record.name.clone());
        }
    }
    // Nodes added but not rebalanced in also make the cluster unbalanced.
    let added = view
        .nodes
        .values()
        .any(|n| n.membership != crate::orch::Membership::Active);
    (reasons.is_empty() && !added, reasons)
}

pub(super) async fn pools_default(st: &ClusterHttp, o: &Orchestrator) -> Result<Value, RestError> {
    let view = o.view().await?;
    let nodes: Vec<Value> = view
        .nodes
        .values()
        .map(|n| node_json(st, o, &view, n))
        .collect();
    let (balanced, reasons) = balance(&view);
    let j = o.janitor_status();
    let mut v = json!({
        "name": "default",
        "clusterName": view.cluster.name,
        "uuid": view.cluster.uuid,
        "orchestrator": view.cluster.orchestrator,
        "memoryQuota": view.cluster.memory_quota_mb,
        "nodes": nodes,
        "buckets": {"uri": "/pools/default/buckets"},
        "rebalanceStatus": if o.rebalance_running() { "running" } else { "none" },
        "rebalanceProgressUri": "/pools/default/rebalanceProgress",
        "stopRebalanceUri": "/controller/stopRebalance",
        "tasks": {"uri": "/pools/default/tasks"},
        "serverGroupsUri": "/pools/default/serverGroups",
        "nodeStatusesUri": "/nodeStatuses",
        "balanced": balanced,
        "counters": serde_json::to_value(&view.counters).unwrap_or(Value::Null),
        "janitor": {"lastRun": j.last_run, "lastError": j.last_error},
        "rev": view.rev.0,
    });
    if !reasons.is_empty() {
        v["bucketsNeedRebalance"] = json!(reasons);
    }
    Ok(v)
}

pub(super) async fn server_groups(st: &ClusterHttp, o: &Orchestrator) -> Result<Value, RestError> {
    let view = o.view().await?;
    let mut groups: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for n in view.nodes.values() {
        groups
            .entry(&n.server_group)
            .or_default()
            .push(node_json(st, o, &view, n));
    }
    let list: Vec<Value> = groups
        .into_iter()
        .enumerate()
        .map(|(i, (name, nodes))| json!({"name": name, "uri": format!("/pools/default/serverGroups/{i}"), "nodes": nodes}))
        .collect();
    Ok(json!({"groups": list, "uri": "/pools/default/serverGroups"}))
}

pub(super) async fn node_services(o: &Orchestrator) -> Result<Value, RestError> {
    o.global_config(None).await
}

async fn bucket_json(
    st: &ClusterHttp,
    o: &Orchestrator,
    view: &ClusterView,
    name: &str,
) -> Result<Value, RestError> {
    let Some(b) = view.buckets.get(name) else {
        return Err(RestError::not_found(format!(
            "Requested resource not found: bucket {name}"
        )));
    };
    let nodes: Vec<Value> = b
        .record
        .servers
        .iter()
        .filter_map(|s| view.nodes.get(s))
        .map(|n| node_json(st, o, view, n))
        .collect();
    let mut items = 0u64;
    let mut mem = 0u64;
    for (_, listing) in o.bucket_listings(view, name, STATS_BOUND).await {
        if let Some(l) = listing {
            items += l
                .vbuckets
                .iter()
                .filter(|v| v.state == "active")
                .map(|v| v.items)
                .sum::<u64>();
            mem += l.vbuckets.iter().map(|v| v.items).sum::<u64>();
        }
    }
    let config = o.bucket_config(name, None).await?;
    let (smap, rev, rev_epoch) = match &config {
        Some(c) => (
            c["vBucketServerMap"].clone(),
            c["rev"].clone(),
            c["revEpoch"].clone(),
        ),
        None => (Value::Null, Value::Null, Value::Null),
    };
    let ram = b.record.ram_quota_mb * 1024 * 1024;
    let (balanced, _) = balance(view);
    Ok(json!({
        "name": name,
        "uuid": b.record.uuid,
        "uri": format!("/pools/default/buckets/{name}"),
        "bucketType": "membase",
        "numVBuckets": b.record.num_vbuckets,
        "replicaNumber": b.record.num_replicas,
        "flushEnabled": b.record.flush_enabled,
        "quota": {"ram": ram, "rawRAM": ram},
        "nodes": nodes,
        "basicStats": {"itemCount": items, "memUsed": mem},
        "rev": rev,
        "revEpoch": rev_epoch,
        "balanced": balanced,
        "vBucketServerMap": smap,
        "bucketCapabilities": ["dcp", "cbhello", "touch", "cccp", "nodesExt", "xattr"],
    }))
}

pub(super) async fn bucket_list(st: &ClusterHttp, o: &Orchestrator) -> Result<Value, RestError> {
    let view = o.view().await?;
    let mut out = Vec::new();
    for name in view.buckets.keys() {
        out.push(bucket_json(st, o, &view, name).await?);
    }
    Ok(Value::Array(out))
}

pub(super) async fn bucket(
    st: &ClusterHttp,
    o: &Orchestrator,
    name: &str,
) -> Result<Value, RestError> {
    let view = o.view().await?;
    bucket_json(st, o, &view, name).await
}

pub(super) async fn client_config(o: &Orchestrator, name: &str) -> Result<Value, RestError> {
    let view = o.view().await?;
    if !view.buckets.contains_key(name) {
        return Err(RestError::not_found(format!(
            "Requested resource not found: bucket {name}"
        )));
    }
    o.bucket_config(name, None).await?.ok_or_else(|| {
        RestError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "bucket_not_ready",
            "_",
            format!("bucket {name:?} has no map yet"),
        )
    })
}

/// Exactly `{"status":"none"}` when idle (§3.5): written compact, no other key.
pub(super) async fn rebalance_progress(o: &Orchestrator) -> Response {
    let v = o.rebalance_progress().await;
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}
