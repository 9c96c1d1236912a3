//! The embedded [`MetadataStore`]: one redb file (cluster.md §2.5).
//!
//! Two tables: `entries` (key → mod_rev as 8 big-endian bytes, then the value) and
//! `meta` (`revision` → the store revision, so it survives restarts). Each `transact` is
//! one redb write transaction with `Durability::Immediate` (synced before commit
//! returns); redb admits one writer at a time, which serialises concurrent transactions.
//! A transaction dropped before its commit leaves nothing behind. All disk work runs on
//! tokio's blocking pool, never on an async worker.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::watch;

use super::{publish, Check, Entry, MetadataStore, Op, Rev, Snapshot, StoreError};

const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

/// The file name inside the directory given to [`RedbStore::open`].
pub const FILE_NAME: &str = "metadata.redb";

/// The embedded metadata store.
#[derive(Debug)]
pub struct RedbStore {
    db: Arc<Database>,
    path: PathBuf,
    /// Shared with the blocking task, which publishes right after its commit: a caller
    /// that stops waiting does not keep watchers from seeing a committed revision.
    tx: Arc<watch::Sender<Rev>>,
}

fn io<E: Into<::redb::Error>>(what: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Io {
        message: format!("{what}: {}", e.into()),
    }
}

/// Runs blocking disk work off the async workers.
async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable {
            message: format!("store task failed: {e}"),
        })?
}

impl RedbStore {
    /// Opens (or creates) `<dir>/metadata.redb`, creating `dir` if needed. The cluster
    /// passes `<data-dir>/cluster`.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the directory or file cannot be created or read (also when
    /// another process has the file open).
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(FILE_NAME);
        let file = path.clone();
        let (db, rev) = blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| StoreError::Io {
                message: format!("create {}: {e}", dir.display()),
            })?;
            let db = Database::create(&file).map_err(io("open"))?;
            // Create both tables on first open so readers never meet a missing table.
            let txn = db.begin_write().map_err(io("open"))?;
            let rev = {
                txn.open_table(ENTRIES).map_err(io("open entries"))?;
                let meta = txn.open_table(META).map_err(io("open meta"))?;
                let rev = meta
                    .get(REVISION)
                    .map_err(io("read revision"))?
                    .map(|g| g.value());
                Rev(rev.unwrap_or(0))
            };
            txn.commit().map_err(io("open"))?;
            Ok((db, rev))
        })
        .await?;
        tracing::debug!(path = %path.display(), %rev, "metadata store opened");
        Ok(Self {
            db: Arc::new(db),
            path,
            tx: Arc::new(watch::Sender::new(rev)),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn decode(bytes: &[u8], key: &str) -> Result<Entry, StoreError> {
    let Some((head, value)) = bytes.split_first_chunk::<8>() else {
        return Err(StoreError::Io {
            message: format!("entry {key}: {} bytes, too short", bytes.len()),
        });
    };
    Ok(Entry {
        value: value.to_vec(),
        mod_rev: Rev(u64::from_be_bytes(*head)),
    })
}

fn encode(rev: Rev, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&rev.0.to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// A write transaction with every check passed and every op applied, not yet committed.
pub(crate) struct Staged {
    txn: WriteTransaction,
    rev: Rev,
}

impl Staged {
    pub(crate) fn commit(self) -> Result<Rev, StoreError> {
        self.txn.commit().map_err(io("commit"))?;
        Ok(self.rev)
    }
}

/// Checks and applies, without committing.
pub(crate) fn stage(db: &Database, checks: &[Check], ops: Vec<Op>) -> Result<Staged, StoreError> {
    let txn = db.begin_write().map_err(io("begin"))?;
    let outcome = (|| {
        let mut entries = txn.open_table(ENTRIES).map_err(io("open entries"))?;
        let mut meta = txn.open_table(META).map_err(io("open meta"))?;
        for check in checks {
            let current = match entries.get(check.key()).map_err(io("read"))? {
                None => None,
                Some(g) => Some(decode(g.value(), check.key())?.mod_rev),
            };
            if !check.holds(current) {
                return Err(StoreError::Conflict {
                    key: check.key().to_owned(),
                });
            }
        }
        let current = meta
            .get(REVISION)
            .map_err(io("read revision"))?
            .map_or(0, |g| g.value());
        let rev = Rev(current + 1);
        for op in ops {
            match op {
                Op::Put { key, value } => {
                    entries
                        .insert(key.as_str(), encode(rev, &value).as_slice())
                        .map_err(io("write"))?;
                }
                Op::Delete { key } => {
                    entries.remove(key.as_str()).map_err(io("delete"))?;
                }
            }
        }
        meta.insert(REVISION, rev.0).map_err(io("write revision"))?;
        Ok(rev)
    })();
    match outcome {
        Ok(rev) => Ok(Staged { txn, rev }),
        Err(e) => {
            // Nothing of a refused transaction may reach the file.
            txn.abort().map_err(io("abort"))?;
            Err(e)
        }
    }
}

fn read_snapshot(db: &Database) -> Result<Snapshot, StoreError> {
    let txn = db.begin_read().map_err(io("begin read"))?;
    let meta = txn.open_table(META).map_err(io("open meta"))?;
    let rev = Rev(meta
        .get(REVISION)
        .map_err(io("read revision"))?
        .map_or(0, |g| g.value()));
    let table = txn.open_table(ENTRIES).map_err(io("open entries"))?;
    let mut snapshot = Snapshot {
        rev,
        entries: Default::default(),
    };
    for item in table.iter().map_err(io("scan"))? {
        let (key, value) = item.map_err(io("scan"))?;
        let key = key.value().to_owned();
        let entry = decode(value.value(), &key)?;
        snapshot.entries.insert(key, entry);
    }
    Ok(snapshot)
}

#[async_trait::async_trait]
impl MetadataStore for RedbStore {
    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let db = Arc::clone(&self.db);
        blocking(move || read_snapshot(&db)).await
    }

    async fn transact(&self, checks: Vec<Check>, ops: Vec<Op>) -> Result<Rev, StoreError> {
        let db = Arc::clone(&self.db);
        let tx = Arc::clone(&self.tx);
        blocking(move || {
            let rev = stage(&db, &checks, ops)?.commit()?;
            publish(&tx, rev);
            Ok(rev)
        })
        .await
    }

    fn watch(&self) -> watch::Receiver<Rev> {
        self.tx.subscribe()
    }
}

impl RedbStore {
    /// The database, for the crash test (stage without commit).
    #[cfg(test)]
    pub(crate) fn database(&self) -> Arc<Database> {
        Arc::clone(&self.db)
    }
}
