//! STAT groups (`mcbp-dcp.md` §5): default, vbucket, vbucket-seqno, vbucket-details,
//! dcp and `dcp-vbtakeover <vb> <connection name>`.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use mcbp::{Status, Vbid};

use crate::state::{BucketEntry, NodeState};

type Pairs = Vec<(String, String)>;

/// Collects one stat group. Everything but the default group needs the admin role.
///
/// # Errors
/// The status to answer with: EACCESS, NO_BUCKET, NOT_MY_VBUCKET, KEY_ENOENT for an
/// unknown group, EINVAL for malformed arguments.
pub(crate) fn collect(
    state: &NodeState,
    bucket: Option<&BucketEntry>,
    group: &str,
    admin: bool,
) -> Result<Pairs, Status> {
    let mut words = group.split_whitespace();
    let name = words.next().unwrap_or("");
    if !name.is_empty() && !admin {
        return Err(Status::Eaccess);
    }
    match name {
        "" => Ok(default_stats(state, bucket)),
        "vbucket" | "vbucket-seqno" | "vbucket-details" => {
            let b = bucket.ok_or(Status::NoBucket)?;
            let only = match words.next() {
                None => None,
                Some(w) => Some(w.parse::<u16>().map_err(|_| Status::Einval)?),
            };
            vbucket_stats(b, name, only)
        }
        "dcp" => {
            let b = bucket.ok_or(Status::NoBucket)?;
            Ok(crate::dcp_registry::connection_stats(&b.dcp))
        }
        "dcp-vbtakeover" => {
            let b = bucket.ok_or(Status::NoBucket)?;
            let vb = words
                .next()
                .and_then(|w| w.parse::<u16>().ok())
                .ok_or(Status::Einval)?;
            let conn = words.collect::<Vec<_>>().join(" ");
            crate::dcp_registry::vbtakeover_stats(&b.bucket, &b.dcp, Vbid(vb), &conn)
        }
        _ => Err(Status::KeyEnoent),
    }
}

fn default_stats(state: &NodeState, bucket: Option<&BucketEntry>) -> Pairs {
    let c = &state.counters;
    let uptime = SystemTime::now()
        .duration_since(state.started)
        .map_or(0, |d| d.as_secs());
    let time = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut v = vec![
        ("pid".to_string(), std::process::id().to_string()),
        ("uptime".into(), uptime.to_string()),
        ("time".into(), time.to_string()),
        (
            "version".into(),
            format!("{}-conduit", env!("CARGO_PKG_VERSION")),
        ),
        (
            "curr_connections".into(),
            c.curr_connections.load(Ordering::Relaxed).to_string(),
        ),
        (
            "total_connections".into(),
            c.total_connections.load(Ordering::Relaxed).to_string(),
        ),
        (
            "rejected_conns".into(),
            c.rejected_connections.load(Ordering::Relaxed).to_string(),
        ),
        (
            "cmd_get".into(),
            c.cmd_get.load(Ordering::Relaxed).to_string(),
        ),
        (
            "cmd_set".into(),
            c.cmd_set.load(Ordering::Relaxed).to_string(),
        ),
        (
            "get_hits".into(),
            c.get_hits.load(Ordering::Relaxed).to_string(),
        ),
        (
            "get_misses".into(),
            c.get_misses.load(Ordering::Relaxed).to_string(),
        ),
    ];
    if let Some(b) = bucket {
        let s = b.bucket.stats();
        v.push(("bucket".into(), b.meta.name.clone()));
        v.push(("curr_items".into(), s.items.to_string()));
        v.push(("mem_used".into(), s.mem_used.to_string()));
        v.push(("ep_max_size".into(), s.quota.to_string()));
        v.push(("dcp_items_applied".into(), s.dcp_items_applied.to_string()));
    }
    v
}

fn vbucket_stats(b: &BucketEntry, group: &str, only: Option<u16>) -> Result<Pairs, Status> {
    let range: Vec<u16> = match only {
        Some(vb) if vb < b.meta.vbuckets => vec![vb],
        Some(_) => return Err(Status::NotMyVbucket),
        None => (0..b.meta.vbuckets).collect(),
    };
    let mut v = Vec::new();
    for vb in range {
        let Ok(s) = b.bucket.vb_stats(Vbid(vb)) else {
            continue;
        };
        let p = format!("vb_{vb}");
        match group {
            "vbucket" => v.push((p, s.state.as_str().to_string())),
            "vbucket-seqno" => {
                v.push((format!("{p}:high_seqno"), s.high_seqno.0.to_string()));
                v.push((format!("{p}:abs_high_seqno"), s.high_seqno.0.to_string()));
                v.push((
                    format!("{p}:last_persisted_seqno"),
                    s.persisted_seqno.0.to_string(),
                ));
                v.push((format!("{p}:uuid"), s.vb_uuid.0.to_string()));
                v.push((format!("{p}:purge_seqno"), s.purge_seqno.0.to_string()));
            }
            _ => {
                v.push((p.clone(), s.state.as_str().to_string()));
                v.push((format!("{p}:num_items"), s.items.to_string()));
                v.push((format!("{p}:num_tombstones"), s.tombstones.to_string()));
                v.push((format!("{p}:high_seqno"), s.high_seqno.0.to_string()));
                v.push((
                    format!("{p}:last_persisted_seqno"),
                    s.persisted_seqno.0.to_string(),
                ));
                v.push((format!("{p}:purge_seqno"), s.purge_seqno.0.to_string()));
                v.push((format!("{p}:uuid"), s.vb_uuid.0.to_string()));
                v.push((format!("{p}:mem_used"), s.mem_used.to_string()));
            }
        }
    }
    Ok(v)
}
