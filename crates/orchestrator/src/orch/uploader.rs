//! Config distribution (cluster.md §7.3): one uploader per node holds the newest
//! global and bucket configs for it, sends each (5 s per attempt), retries every
//! second, and remembers what the node acknowledged. It never sends a version older
//! than one the node acknowledged; a 409 means the node already has a newer one.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::agent::api::Creds;
use crate::agent::AgentClient;

/// Bound of one push.
const ATTEMPT: Duration = Duration::from_secs(5);
/// Pause before retrying a failed push.
const RETRY: Duration = Duration::from_secs(1);

/// `(revEpoch, rev)`.
pub(crate) type Version = (i64, u64);

/// Everything one node should hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Desired {
    /// The global config.
    pub(crate) global: Option<(Version, Value)>,
    /// Bucket configs of the buckets it serves.
    pub(crate) buckets: BTreeMap<String, (Version, Value)>,
}

#[derive(Debug)]
struct Handle {
    want: watch::Sender<Desired>,
    acked: watch::Receiver<BTreeMap<String, Version>>,
    stop: CancellationToken,
}

/// The uploaders of every node.
#[derive(Debug, Default)]
pub(crate) struct Uploaders {
    nodes: Mutex<BTreeMap<String, Handle>>,
}

impl Uploaders {
    /// Sets what `node` (at `addr`) should hold, starting its uploader if needed.
    pub(crate) fn set(&self, node: &str, client: AgentClient, desired: Desired) {
        let Ok(mut nodes) = self.nodes.lock() else {
            return;
        };
        if let Some(h) = nodes.get(node) {
            h.want.send_if_modified(|cur| {
                if *cur == desired {
                    false
                } else {
                    *cur = desired;
                    true
                }
            });
            return;
        }
        let (want, want_rx) = watch::channel(desired);
        let (acked_tx, acked) = watch::channel(BTreeMap::new());
        let stop = CancellationToken::new();
        tokio::spawn(run(
            node.to_owned(),
            client,
            want_rx,
            acked_tx,
            stop.clone(),
        ));
        nodes.insert(node.to_owned(), Handle { want, acked, stop });
    }

    /// Stops the uploaders of nodes not in `keep`.
    pub(crate) fn retain(&self, keep: &[String]) {
        if let Ok(mut nodes) = self.nodes.lock() {
            nodes.retain(|name, h| {
                let k = keep.contains(name);
                if !k {
                    h.stop.cancel();
                }
                k
            });
        }
    }
}

impl Uploaders {
    /// Waits (at most `bound`) until `node` acknowledged config `key` ("" = global) at
    /// `version` or newer; whether it did.
    pub(crate) async fn wait_acked(
        &self,
        node: &str,
        key: &str,
        version: Version,
        bound: Duration,
    ) -> bool {
        let rx = self
            .nodes
            .lock()
            .ok()
            .and_then(|n| n.get(node).map(|h| h.acked.clone()));
        let Some(mut rx) = rx else {
            return false;
        };
        let done = rx.wait_for(|acked| acked.get(key).is_some_and(|v| *v >= version));
        let acked = matches!(tokio::time::timeout(bound, done).await, Ok(Ok(_)));
        acked
    }
}

impl Drop for Uploaders {
    fn drop(&mut self) {
        if let Ok(nodes) = self.nodes.lock() {
            for h in nodes.values() {
                h.stop.cancel();
            }
        }
    }
}

async fn push(client: &AgentClient, key: &str, config: &Value) -> Result<bool, String> {
    let call = async {
        if key.is_empty() {
            client.push_global_config(config).await
        } else {
            client.push_bucket_config(key, config).await
        }
    };
    match tokio::time::timeout(ATTEMPT, call).await {
        Ok(Ok(accepted)) => Ok(accepted),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {ATTEMPT:?}")),
    }
}

async fn run(
    node: String,
    client: AgentClient,
    mut want: watch::Receiver<Desired>,
    acked_tx: watch::Sender<BTreeMap<String, Version>>,
    stop: CancellationToken,
) {
    let mut acked: BTreeMap<String, Version> = BTreeMap::new();
    loop {
        let desired = want.borrow_and_update().clone();
        let mut items: Vec<(String, Version, Value)> = Vec::new();
        if let Some((v, c)) = desired.global {
            items.push((String::new(), v, c));
        }
        for (b, (v, c)) in desired.buckets {
            items.push((b, v, c));
        }
        let mut failed = false;
        // Configs no longer wanted (a deleted bucket) are forgotten.
        acked.retain(|k, _| k.is_empty() || desired_keys(&items).contains(k));
        for (key, version, config) in items {
            if acked.get(&key).is_some_and(|a| *a >= version) {
                continue;
            }
            match push(&client, &key, &config).await {
                Ok(accepted) => {
                    if !accepted {
                        debug!(node = %node, config = %key, ?version, "the node already has a newer config");
                    }
                    acked.insert(key, version);
                }
                Err(e) => {
                    debug!(node = %node, config = %key, error = %e, "config push failed; retrying");
                    failed = true;
                }
            }
        }
        acked_tx.send_replace(acked.clone());
        tokio::select! {
            () = stop.cancelled() => return,
            r = want.changed() => if r.is_err() { return },
            () = tokio::time::sleep(RETRY), if failed => {}
        }
    }
}

fn desired_keys(items: &[(String, Version, Value)]) -> Vec<String> {
    items.iter().map(|(k, _, _)| k.clone()).collect()
}

/// A client for `node` at `addr` with the internal credentials.
pub(crate) fn client_for(
    addr: String,
    node: String,
    internal: &Creds,
    cluster: &str,
    term: u64,
) -> AgentClient {
    AgentClient::new(addr, node, internal.clone(), Some(cluster.to_owned()), term)
}
