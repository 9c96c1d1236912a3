//! The in-memory [`MetadataStore`] for tests: the embedded store's semantics without a
//! disk, plus a switch that makes it unavailable.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use tokio::sync::watch;

use super::{publish, Check, Entry, MetadataStore, Op, Rev, Snapshot, StoreError};

#[derive(Debug, Default)]
struct State {
    rev: Rev,
    entries: BTreeMap<String, Entry>,
    unavailable: Option<String>,
}

/// A [`MetadataStore`] in memory. Transactions are serialised by a short critical section
/// (no await inside it).
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    tx: watch::Sender<Rev>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store at `Rev(0)`.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            tx: watch::Sender::new(Rev(0)),
        }
    }

    /// While `Some(message)`, every call fails with [`StoreError::Unavailable`] (a
    /// consensus engine without quorum, for tests of the callers).
    pub fn set_unavailable(&self, message: Option<String>) {
        self.lock().unavailable = message;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied transaction: ops are
        // applied only after every check passed, and applying cannot panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl MetadataStore for MemoryStore {
    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let state = self.lock();
        if let Some(message) = &state.unavailable {
            return Err(StoreError::Unavailable {
                message: message.clone(),
            });
        }
        Ok(Snapshot {
            rev: state.rev,
            entries: state.entries.clone(),
        })
    }

    async fn transact(&self, checks: Vec<Check>, ops: Vec<Op>) -> Result<Rev, StoreError> {
        let rev = {
            let mut state = self.lock();
            if let Some(message) = &state.unavailable {
                return Err(StoreError::Unavailable {
                    message: message.clone(),
                });
            }
            for check in &checks {
                let current = state.entries.get(check.key()).map(|e| e.mod_rev);
                if !check.holds(current) {
                    return Err(StoreError::Conflict {
                        key: check.key().to_owned(),
                    });
                }
            }
            let rev = Rev(state.rev.0 + 1);
            for op in ops {
                match op {
                    Op::Put { key, value } => {
                        state.entries.insert(
                            key,
                            Entry {
                                value,
                                mod_rev: rev,
                            },
                        );
                    }
                    Op::Delete { key } => {
                        state.entries.remove(&key);
                    }
                }
            }
            state.rev = rev;
            rev
        };
        publish(&self.tx, rev);
        Ok(rev)
    }

    fn watch(&self) -> watch::Receiver<Rev> {
        self.tx.subscribe()
    }
}
