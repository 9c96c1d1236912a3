//! Cluster-config and error-map JSON served to clients (`sdk-compat.md` §3–4, §8).

use bytes::Bytes;
use serde_json::json;

/// A one-node bucket config: this node serves every vbucket it holds active;
/// the rest map to -1. `$HOST` makes clients use the address they dialled.
#[must_use]
pub fn one_node_bucket_config(
    bucket: &str,
    rev: i64,
    kv_port: u16,
    admin_port: u16,
    active: &[bool],
) -> Bytes {
    let map: Vec<[i32; 1]> = active.iter().map(|a| [if *a { 0 } else { -1 }]).collect();
    let v = json!({
        "rev": rev,
        "name": bucket,
        "nodeLocator": "vbucket",
        "bucketCapabilities": ["xattr", "dcp", "cccp"],
        "nodesExt": [{
            "services": {"kv": kv_port, "mgmt": admin_port},
            "hostname": "$HOST",
            "thisNode": true,
        }],
        "nodes": [{"hostname": format!("$HOST:{admin_port}"), "ports": {"direct": kv_port}}],
        "vBucketServerMap": {
            "hashAlgorithm": "CRC",
            "numReplicas": 0,
            "serverList": [format!("$HOST:{kv_port}")],
            "vBucketMap": map,
        },
    });
    Bytes::from(v.to_string())
}

/// The cluster-level config served when no bucket is selected. Returns (rev, JSON).
#[must_use]
pub fn cluster_level_config(kv_port: u16, admin_port: u16) -> (i64, Bytes) {
    let v = json!({
        "rev": 1,
        "nodesExt": [{
            "services": {"kv": kv_port, "mgmt": admin_port},
            "hostname": "$HOST",
            "thisNode": true,
        }],
    });
    (1, Bytes::from(v.to_string()))
}

/// The error map (version 2): each status this node sends, with retry hints.
#[must_use]
pub fn error_map_json() -> Bytes {
    use mcbp::Status;
    let mut errors = serde_json::Map::new();
    let attrs = |s: Status| -> Vec<&'static str> {
        match s {
            Status::Success => vec!["success"],
            Status::Etmpfail | Status::Ebusy | Status::Enomem => vec!["temp", "retry-later"],
            Status::NotMyVbucket => vec!["fetch-config", "retry-now"],
            Status::AuthError | Status::Eaccess => vec!["auth"],
            Status::KeyEnoent | Status::KeyEexists | Status::NotStored => vec!["item-only"],
            Status::UnknownCommand | Status::NotSupported => vec!["support"],
            Status::Einval | Status::E2big | Status::DeltaBadval => vec!["invalid-input"],
            _ => vec!["internal"],
        }
    };
    for s in Status::ALL {
        errors.insert(
            format!("{:x}", s.to_raw()),
            json!({"name": s.name(), "desc": s.name().to_lowercase().replace('_', " "), "attrs": attrs(*s)}),
        );
    }
    Bytes::from(json!({"version": 2, "revision": 1, "errors": errors}).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_node_config_has_rows_of_numreplicas_plus_one() {
        let c = one_node_bucket_config("default", 3, 12000, 8091, &[true, false]);
        let v: serde_json::Value = serde_json::from_slice(&c).expect("json");
        assert_eq!(v["rev"], 3);
        assert_eq!(v["vBucketServerMap"]["vBucketMap"], json!([[0], [-1]]));
        assert_eq!(v["nodesExt"][0]["services"]["kv"], 12000);
        let m: serde_json::Value = serde_json::from_slice(&error_map_json()).expect("json");
        assert_eq!(m["errors"]["7"]["name"], "NOT_MY_VBUCKET");
    }
}
