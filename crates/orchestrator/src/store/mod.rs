//! The `MetadataStore` seam (cluster.md §2.5): everything the cluster must remember,
//! behind one trait, so the embedded default can later be swapped for a consensus engine.
//!
//! * [`RedbStore`]: the embedded default, one redb file, one durable write transaction
//!   per [`MetadataStore::transact`]; disk work runs on tokio's blocking pool.
//! * [`MemoryStore`]: the same semantics in memory, for tests.
//!
//! Values are opaque bytes to the store (the cluster writes JSON; [`Op::put_json`] and
//! [`Entry::json`] help). The store revision is global: every successful transaction
//! bumps it by one and it never goes back, across restarts too.

mod memory;
mod redb;

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use self::memory::MemoryStore;
pub use self::redb::{RedbStore, FILE_NAME};

/// The store revision: global, strictly increasing. `Rev(0)` is an empty store that has
/// never committed.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Rev(pub u64);

impl fmt::Display for Rev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rev:{}", self.0)
    }
}

impl fmt::Debug for Rev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rev:{}", self.0)
    }
}

/// One key's value and the revision of the transaction that last wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The value's bytes (JSON by convention).
    pub value: Vec<u8>,
    /// Revision of the last transaction that wrote the key.
    pub mod_rev: Rev,
}

impl Entry {
    /// The value parsed as JSON.
    ///
    /// # Errors
    /// The value is not `T` in JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.value)
    }
}

/// Every key with its `mod_rev`, as of one store revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The store revision the view was read at.
    pub rev: Rev,
    /// Every key, in key order.
    pub entries: BTreeMap<String, Entry>,
}

impl Snapshot {
    /// One key's entry.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// A check that holds exactly when `key` is still as this snapshot saw it: absent, or
    /// with the same `mod_rev`.
    pub fn unchanged(&self, key: &str) -> Check {
        match self.entries.get(key) {
            None => Check::Absent {
                key: key.to_owned(),
            },
            Some(e) => Check::ModRev {
                key: key.to_owned(),
                rev: e.mod_rev,
            },
        }
    }
}

/// A precondition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// The key does not exist.
    Absent {
        /// The key.
        key: String,
    },
    /// The key exists and was last written at `rev`.
    ModRev {
        /// The key.
        key: String,
        /// Its expected `mod_rev`.
        rev: Rev,
    },
}

impl Check {
    /// The key it checks.
    pub fn key(&self) -> &str {
        match self {
            Self::Absent { key } | Self::ModRev { key, .. } => key,
        }
    }

    /// Whether it holds for `entry` (the key's current entry, if any).
    pub(crate) fn holds(&self, entry_mod_rev: Option<Rev>) -> bool {
        match self {
            Self::Absent { .. } => entry_mod_rev.is_none(),
            Self::ModRev { rev, .. } => entry_mod_rev == Some(*rev),
        }
    }
}

/// A change a transaction applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set the key's value (its `mod_rev` becomes the transaction's revision).
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: Vec<u8>,
    },
    /// Remove the key (absent keys are fine).
    Delete {
        /// The key.
        key: String,
    },
}

impl Op {
    /// A put of `value` as JSON.
    ///
    /// # Errors
    /// `value` cannot be serialised.
    pub fn put_json<T: Serialize + ?Sized>(
        key: impl Into<String>,
        value: &T,
    ) -> Result<Op, serde_json::Error> {
        Ok(Op::Put {
            key: key.into(),
            value: serde_json::to_vec(value)?,
        })
    }

    /// A delete.
    pub fn delete(key: impl Into<String>) -> Op {
        Op::Delete { key: key.into() }
    }
}

/// Why a store call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A check did not hold: someone else changed `key`. Re-read and retry.
    #[error("metadata store: {key} changed concurrently")]
    Conflict {
        /// The first key whose check failed.
        key: String,
    },
    /// The store cannot be reached (a consensus engine without quorum, a stopped task).
    #[error("metadata store unavailable: {message}")]
    Unavailable {
        /// What happened.
        message: String,
    },
    /// The store's disk failed or holds something it cannot read.
    #[error("metadata store i/o: {message}")]
    Io {
        /// What happened.
        message: String,
    },
}

/// Everything the cluster must remember (cluster.md §2.5). Implementations are shared
/// between tasks (`Arc<dyn MetadataStore>`).
///
/// The trait uses `async_trait` (boxed futures) rather than native `async fn` in traits:
/// the orchestrator picks its store at start-up (embedded now, a consensus engine later)
/// and holds it as a trait object, and native async trait methods are not object safe.
#[async_trait::async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Every key with its `mod_rev`, and the store revision the view was read at.
    async fn snapshot(&self) -> Result<Snapshot, StoreError>;

    /// If every check holds, applies all ops atomically as one transaction with the next
    /// revision, and returns it. A failed check changes nothing ([`StoreError::Conflict`]).
    async fn transact(&self, checks: Vec<Check>, ops: Vec<Op>) -> Result<Rev, StoreError>;

    /// A receiver whose value is the latest committed revision; it changes when the
    /// revision grows.
    fn watch(&self) -> tokio::sync::watch::Receiver<Rev>;
}

/// How often [`transact_with_retry`] tries before giving up (cluster.md §2.5, §11).
pub const TRANSACTION_RETRIES: usize = 10;

/// Read, build a transaction from the snapshot, commit; on a conflict read again and
/// rebuild, [`TRANSACTION_RETRIES`] times in all (cluster.md §2.5). `build` returns
/// `Ok(None)` when nothing needs changing.
///
/// # Errors
/// The last [`StoreError::Conflict`] after the final try (REST `metadata_conflict`), any
/// other store error at once, or `build`'s own error.
pub async fn transact_with_retry<E, F>(
    store: &dyn MetadataStore,
    mut build: F,
) -> Result<Option<Rev>, RetryError<E>>
where
    F: FnMut(&Snapshot) -> Result<Option<(Vec<Check>, Vec<Op>)>, E> + Send,
    E: Send,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let snapshot = store.snapshot().await.map_err(RetryError::Store)?;
        let Some((checks, ops)) = build(&snapshot).map_err(RetryError::Build)? else {
            return Ok(None);
        };
        match store.transact(checks, ops).await {
            Ok(rev) => return Ok(Some(rev)),
            Err(StoreError::Conflict { key }) if attempt < TRANSACTION_RETRIES => {
                tracing::debug!(%key, attempt, "metadata conflict, retrying");
            }
            Err(e) => return Err(RetryError::Store(e)),
        }
    }
}

/// Why [`transact_with_retry`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RetryError<E> {
    /// The store refused (a conflict after every retry, or another store error).
    #[error(transparent)]
    Store(StoreError),
    /// The caller's builder refused.
    #[error("building the transaction failed")]
    Build(#[source] E),
}

/// Moves `tx` to `rev` unless it already shows a later one (commits may finish out of
/// order on different threads; the watch value must never go back).
pub(crate) fn publish(tx: &tokio::sync::watch::Sender<Rev>, rev: Rev) {
    tx.send_if_modified(|current| {
        if rev > *current {
            *current = rev;
            true
        } else {
            false
        }
    });
}

#[cfg(test)]
mod tests;
