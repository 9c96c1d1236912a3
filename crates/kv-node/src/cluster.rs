//! Cluster-config and error-map JSON served to clients (`sdk-compat.md` §3–4, §8),
//! and the versioned slots the cluster layer installs configs into (`cluster.md`
//! §2.2 N1–N3, §7.2).

use std::sync::Mutex;

use bytes::Bytes;
use serde_json::{json, Value};

/// A cluster config's version: `(revEpoch, rev)`, compared in that order. A config
/// without `revEpoch` has epoch −1 (`cluster.md` N2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigVersion {
    /// `revEpoch` (−1 when absent).
    pub epoch: i64,
    /// `rev`.
    pub rev: i64,
}

impl ConfigVersion {
    /// The version of a config JSON object; `None` without a numeric `rev` (or with
    /// a non-numeric `revEpoch`).
    #[must_use]
    pub fn of(v: &Value) -> Option<ConfigVersion> {
        let rev = v.get("rev")?.as_i64()?;
        let epoch = match v.get("revEpoch") {
            None => -1,
            Some(e) => e.as_i64()?,
        };
        Some(ConfigVersion { epoch, rev })
    }
}

/// What offering a config to a [`ConfigSlot`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Newer than what the slot held: installed.
    Installed,
    /// The same version: nothing changed.
    Same,
    /// Older than the slot's: refused; the slot keeps this version.
    Stale(ConfigVersion),
}

/// A config that only moves forward: an older version is refused, the same version
/// is a no-op (`cluster.md` N2/N3). Sessions subscribe to installs to push them to
/// clients that asked for notifications (N4).
#[derive(Debug)]
pub struct ConfigSlot {
    current: Mutex<Option<(ConfigVersion, Bytes)>>,
    installed: tokio::sync::watch::Sender<Option<ConfigVersion>>,
}

impl Default for ConfigSlot {
    fn default() -> Self {
        ConfigSlot::with(None)
    }
}

impl ConfigSlot {
    /// A slot holding `config` already (a bucket created with its config, N1).
    #[must_use]
    pub fn with(config: Option<(ConfigVersion, Bytes)>) -> ConfigSlot {
        let (installed, _) = tokio::sync::watch::channel(config.as_ref().map(|(v, _)| *v));
        ConfigSlot {
            current: Mutex::new(config),
            installed,
        }
    }

    /// Wakes on every install after this call.
    #[must_use]
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<ConfigVersion>> {
        self.installed.subscribe()
    }

    /// Installs `body` if `version` is newer than the slot's.
    pub fn offer(&self, version: ConfigVersion, body: Bytes) -> Offer {
        let mut cur = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match cur.as_ref().map(|(v, _)| *v) {
            Some(v) if v > version => Offer::Stale(v),
            Some(v) if v == version => Offer::Same,
            _ => {
                *cur = Some((version, body));
                drop(cur);
                self.installed.send_replace(Some(version));
                Offer::Installed
            }
        }
    }

    /// The installed config, if any.
    #[must_use]
    pub fn get(&self) -> Option<(ConfigVersion, Bytes)> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

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

#[cfg(test)]
mod slot_tests {
    use super::*;

    fn v(epoch: i64, rev: i64) -> ConfigVersion {
        ConfigVersion { epoch, rev }
    }

    #[test]
    fn versions_compare_epoch_first_and_a_missing_epoch_is_minus_one() {
        assert_eq!(ConfigVersion::of(&json!({"rev": 5})), Some(v(-1, 5)));
        assert_eq!(
            ConfigVersion::of(&json!({"rev": 5, "revEpoch": 2})),
            Some(v(2, 5))
        );
        assert_eq!(ConfigVersion::of(&json!({"revEpoch": 2})), None);
        assert_eq!(ConfigVersion::of(&json!({"rev": "5"})), None);
        assert!(v(1, 1) > v(0, 100));
        assert!(v(-1, 9) < v(0, 1));
    }

    #[test]
    fn a_slot_only_moves_forward() {
        let s = ConfigSlot::default();
        assert_eq!(s.offer(v(0, 2), Bytes::from_static(b"a")), Offer::Installed);
        assert_eq!(s.offer(v(0, 2), Bytes::from_static(b"b")), Offer::Same);
        assert_eq!(
            s.offer(v(0, 1), Bytes::from_static(b"c")),
            Offer::Stale(v(0, 2))
        );
        assert_eq!(s.get(), Some((v(0, 2), Bytes::from_static(b"a"))));
        assert_eq!(s.offer(v(1, 0), Bytes::from_static(b"d")), Offer::Installed);
        assert_eq!(s.get().map(|(v, _)| v), Some(v(1, 0)));
    }
}
