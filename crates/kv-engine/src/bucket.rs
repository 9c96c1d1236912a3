//! [`Bucket`]: one bucket's vbuckets over one append-only log, shared across threads.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use mcbp::{Cas, Seqno, VbState, VbUuid, Vbid};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::{debug, info};

use crate::error::{EngineError, Result};
use crate::failover::{decide_rollback, FailoverEntry, FailoverLog, RollbackDecision, StreamStart};
use crate::item::{Item, UnixTime};
use crate::logstore::{self, LogStore, OpenError};
use crate::ops::{
    ArithOp, Backfill, BucketStats, ConcatOp, Counter, Document, FlushStats, MutationInfo,
    RollbackOutcome, StoreOp, StreamRequestPosition, VbStats,
};
use crate::vbucket::{FlushBatch, Shared, VBucket};

/// Default number of vbuckets per bucket.
pub const DEFAULT_NUM_VBUCKETS: u16 = 1024;
/// Default memory quota per bucket (256 MiB).
pub const DEFAULT_QUOTA_BYTES: u64 = 256 * 1024 * 1024;
/// Default largest value accepted (20 MiB, memcached's item size limit).
pub const DEFAULT_MAX_ITEM_SIZE: usize = 20 * 1024 * 1024;
/// Default slack before the log is compacted (see [`BucketConfig::compact_floor_bytes`]).
pub const DEFAULT_COMPACT_FLOOR_BYTES: u64 = 64 * 1024 * 1024;
/// Default bound on the item versions one commit writes (see [`Bucket::flush_step`]).
pub const DEFAULT_FLUSH_BATCH_ITEMS: usize = 50_000;

/// How to open a bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketConfig {
    /// Bucket name: 1..=100 of `[A-Za-z0-9._%-]`, not starting with `.`.
    pub name: String,
    /// Directory holding `<name>.clog`; created if missing.
    pub data_dir: PathBuf,
    /// Number of vbuckets; must match the database if it exists.
    pub num_vbuckets: u16,
    /// Memory quota for items held in memory.
    pub quota_bytes: u64,
    /// Largest value accepted.
    pub max_item_size: usize,
    /// Seed for the RNG that draws vb_uuids; `None` seeds from the OS.
    pub rng_seed: Option<u64>,
    /// A commit stops taking vbuckets once it holds this many item versions (it
    /// always takes at least one vbucket whole).
    pub flush_batch_items: usize,
    /// The log is compacted once it is larger than twice the bucket's memory use
    /// plus this many bytes.
    pub compact_floor_bytes: u64,
    /// Called right before every commit is synced (tests only: a hook
    /// that blocks makes commits slow, or checks which thread commits).
    pub before_commit: Option<CommitHook>,
}

/// A test hook run on the committing thread right before each commit is synced.
#[derive(Clone)]
pub struct CommitHook(std::sync::Arc<dyn Fn() + Send + Sync>);

impl CommitHook {
    /// Wraps `f`.
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> CommitHook {
        CommitHook(std::sync::Arc::new(f))
    }

    fn run(hook: Option<&CommitHook>) {
        if let Some(h) = hook {
            (h.0)();
        }
    }
}

impl fmt::Debug for CommitHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CommitHook")
    }
}

impl PartialEq for CommitHook {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for CommitHook {}

impl BucketConfig {
    /// A config with the defaults above.
    #[must_use]
    pub fn new(name: impl Into<String>, data_dir: impl Into<PathBuf>) -> BucketConfig {
        BucketConfig {
            name: name.into(),
            data_dir: data_dir.into(),
            num_vbuckets: DEFAULT_NUM_VBUCKETS,
            quota_bytes: DEFAULT_QUOTA_BYTES,
            max_item_size: DEFAULT_MAX_ITEM_SIZE,
            rng_seed: None,
            flush_batch_items: DEFAULT_FLUSH_BATCH_ITEMS,
            compact_floor_bytes: DEFAULT_COMPACT_FLOOR_BYTES,
            before_commit: None,
        }
    }

    /// The log file of this bucket (see the crate docs for its format).
    #[must_use]
    pub fn db_path(&self) -> PathBuf {
        logstore::log_path(&self.data_dir, &self.name)
    }

    fn validate(&self) -> Result<()> {
        let bad = |reason: &str| EngineError::InvalidConfig {
            bucket: self.name.clone(),
            reason: reason.to_owned(),
        };
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 100
            && !self.name.starts_with('.')
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._%-".contains(&b));
        if !name_ok {
            return Err(bad(
                "bucket name must be 1..=100 of [A-Za-z0-9._%-], not starting with '.'",
            ));
        }
        if self.num_vbuckets == 0 {
            return Err(bad("num_vbuckets must be at least 1"));
        }
        if self.flush_batch_items == 0 {
            return Err(bad("flush_batch_items must be at least 1"));
        }
        Ok(())
    }
}

/// One bucket: `num_vbuckets` vbuckets, their documents, seqnos and failover logs,
/// durably stored in one append-only log.
///
/// `Send + Sync`: share it behind an `Arc`. Each vbucket has its own mutex, held only
/// for the in-memory work of one call. [`Bucket::flush`] takes the dirty state of
/// every vbucket under its lock (cheap: reference-counted values) and writes it
/// without holding any vbucket lock, so front-end writers wait only for the copy.
/// Flushes, rollbacks and vbucket deletions are serialized by a separate flush lock,
/// which also holds where the next bounded flush starts.
pub struct Bucket {
    name: String,
    path: PathBuf,
    vbs: Vec<Mutex<VBucket>>,
    shared: Shared,
    rng: Mutex<StdRng>,
    /// Serializes flushes; holds the log and where the next [`Bucket::flush_step`]
    /// starts.
    flush_lock: Mutex<Flusher>,
    flush_batch_items: usize,
    opened_clean: bool,
    before_commit: Option<CommitHook>,
    /// DCP items (mutations, deletions, expirations) applied since open.
    dcp_applied: AtomicU64,
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bucket")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("num_vbuckets", &self.vbs.len())
            .field("mem_used", &self.shared.mem_used())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
        .expect("kv-engine mutex poisoned: a holder panicked mid-update")
}

fn storage<'a>(
    bucket: &'a str,
    during: &'static str,
) -> impl FnOnce(std::io::Error) -> EngineError + 'a {
    move |source| EngineError::Storage {
        bucket: bucket.to_owned(),
        during,
        source,
    }
}

/// The flush side of a bucket, behind `flush_lock`.
#[derive(Debug)]
struct Flusher {
    log: LogStore,
    /// The vbucket the next bounded flush step starts at.
    cursor: usize,
}

fn new_uuid(rng: &mut StdRng) -> VbUuid {
    loop {
        let uuid: u64 = rng.gen();
        if uuid != 0 {
            return VbUuid(uuid);
        }
    }
}

impl Bucket {
    /// Opens (or creates) the bucket's database and loads every vbucket and item.
    ///
    /// After a clean [`Bucket::close`] the state is restored exactly. Otherwise every
    /// vbucket that has a failover log gets a new entry (random uuid, persisted high
    /// seqno), since mutations acknowledged after the last flush were lost (§7.5).
    ///
    /// # Errors
    /// `InvalidConfig` for a bad name or a vbucket count that differs from the
    /// database's; `Io`/`Storage` if the file cannot be opened; `Corrupt` if a record
    /// cannot be decoded.
    pub fn open(config: BucketConfig) -> Result<Bucket> {
        config.validate()?;
        let name = config.name.clone();
        std::fs::create_dir_all(&config.data_dir).map_err(|source| EngineError::Io {
            bucket: name.clone(),
            source,
        })?;
        let path = config.db_path();
        let mut rng = config
            .rng_seed
            .map_or_else(StdRng::from_entropy, StdRng::seed_from_u64);
        let n = config.num_vbuckets;
        let (mut log, recovered) = LogStore::open(path.clone(), n, config.compact_floor_bytes)
            .map_err(|e| match e {
                OpenError::Io(during, source) => EngineError::Storage {
                    bucket: name.clone(),
                    during,
                    source,
                },
                OpenError::Corrupt(what) => EngineError::Corrupt {
                    bucket: name.clone(),
                    what,
                },
                OpenError::VbucketCount(stored_n) => EngineError::InvalidConfig {
                    bucket: name.clone(),
                    reason: format!("database has {stored_n} vbuckets, config asks for {n}"),
                },
            })?;
        let corrupt = |what: String| EngineError::Corrupt {
            bucket: name.clone(),
            what,
        };
        let (fresh, clean, max_cas) = (recovered.fresh, recovered.clean, recovered.max_cas);
        if recovered.torn_bytes > 0 {
            info!(bucket = %name, bytes = recovered.torn_bytes,
                "cut an incomplete commit off the end of the log");
        }

        let shared = Shared::new(config.quota_bytes, config.max_item_size, max_cas);
        let mut vbs: Vec<VBucket> = (0..n).map(|i| VBucket::new(Vbid(i))).collect();
        for (vb, meta) in vbs.iter_mut().zip(recovered.vbs) {
            if let Some(meta) = meta {
                *vb = VBucket::from_meta(vb.id, meta);
            }
        }
        let mut items_loaded = 0u64;
        for (vb, items) in vbs.iter_mut().zip(recovered.items) {
            vb.reserve_keys(items.len());
            for (seqno, stored) in items {
                if stored.by_seqno() > vb.high_seqno {
                    return Err(corrupt(format!(
                        "item record {} seqno {seqno} above persisted high seqno {}",
                        vb.id, vb.high_seqno
                    )));
                }
                vb.load_version(&shared, stored);
                items_loaded += 1;
            }
        }
        let mut changed = Vec::new();
        if !fresh && !clean {
            for vb in vbs.iter_mut().filter(|vb| !vb.failover.is_empty()) {
                let entry = FailoverEntry {
                    vb_uuid: new_uuid(&mut rng),
                    seqno: vb.high_seqno,
                };
                vb.push_failover(entry);
                debug!(bucket = %name, vb = %vb.id, uuid = %entry.vb_uuid, seqno = %entry.seqno,
                    "failover entry after unclean shutdown");
                changed.push((vb.id, vb.meta()));
                vb.meta_written();
            }
        }
        // Marks the shutdown unclean until the next close, with the new entries.
        log.commit(&[], &changed, max_cas, false, || {
            CommitHook::run(config.before_commit.as_ref());
        })
        .map_err(storage(&name, "open"))?;
        info!(bucket = %name, clean = clean || fresh, items = items_loaded, vbuckets = n,
            "bucket opened");
        Ok(Bucket {
            name,
            path,
            vbs: vbs.into_iter().map(Mutex::new).collect(),
            shared,
            rng: Mutex::new(rng),
            flush_lock: Mutex::new(Flusher { log, cursor: 0 }),
            flush_batch_items: config.flush_batch_items,
            opened_clean: clean || fresh,
            before_commit: config.before_commit,
            dcp_applied: AtomicU64::new(0),
        })
    }

    /// Flushes everything and marks the shutdown clean, so the next open restores
    /// the state exactly (no new failover entries).
    ///
    /// # Errors
    /// `Storage` if the final write fails; the bucket then reopens as unclean.
    pub fn close(self) -> Result<()> {
        let mut flusher = lock(&self.flush_lock);
        self.flush_all_locked(&mut flusher)?;
        self.commit_batches(&mut flusher, Vec::new(), Some(true))?;
        info!(bucket = %self.name, "bucket closed cleanly");
        Ok(())
    }

    /// The bucket name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The log file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of vbuckets.
    #[must_use]
    pub fn num_vbuckets(&self) -> u16 {
        u16::try_from(self.vbs.len()).expect("built from a u16 count")
    }

    /// Whether the last shutdown was clean (or the database is new).
    #[must_use]
    pub fn opened_after_clean_shutdown(&self) -> bool {
        self.opened_clean
    }

    fn vb(&self, vb: Vbid) -> Result<MutexGuard<'_, VBucket>> {
        self.vbs
            .get(usize::from(vb.0))
            .map(lock)
            .ok_or(EngineError::NotMyVbucket { vb, state: None })
    }

    fn new_uuid(&self) -> VbUuid {
        new_uuid(&mut lock(&self.rng))
    }

    // ---- vbucket administration ----

    /// SET_VBUCKET. Becoming active (from any other state) pushes a failover entry
    /// `(random non-zero uuid, high seqno)` (§7.5) and is written durably before
    /// returning, because consumers will be handed that uuid. Other transitions are
    /// durable at the next flush.
    ///
    /// # Errors
    /// `NotMyVbucket` if the id is beyond the bucket; `Storage` if writing a new
    /// failover entry fails (the state change stands; the next flush retries).
    pub fn set_state(&self, vb: Vbid, state: VbState) -> Result<()> {
        let mut flusher = lock(&self.flush_lock);
        let old = {
            let mut v = self.vb(vb)?;
            let old = v.state;
            v.set_state(state, || self.new_uuid());
            old
        };
        if old == state {
            return Ok(());
        }
        info!(bucket = %self.name, vb = %vb, from = %old, to = %state, "vbucket state changed");
        if state == VbState::Active {
            self.flush_vb_locked(&mut flusher, vb)?;
        }
        Ok(())
    }

    /// DEL_VBUCKET: drops every item and the failover log; the vbucket becomes dead
    /// and empty. Written durably before returning.
    ///
    /// # Errors
    /// `NotMyVbucket` if the id is beyond the bucket; `Storage` if the write fails
    /// (the in-memory deletion stands and the next flush retries the write).
    pub fn delete_vbucket(&self, vb: Vbid) -> Result<()> {
        let mut flusher = lock(&self.flush_lock);
        self.vb(vb)?.delete_all(&self.shared);
        info!(bucket = %self.name, vb = %vb, "vbucket deleted");
        self.flush_vb_locked(&mut flusher, vb).map(|_| ())
    }

    /// The vbucket's state.
    ///
    /// # Errors
    /// `NotMyVbucket` if the id is beyond the bucket.
    pub fn vbucket_state(&self, vb: Vbid) -> Result<VbState> {
        Ok(self.vb(vb)?.state)
    }

    // ---- front end: active vbuckets only ----

    /// GET: the visible document (expired and deleted ones are missing).
    ///
    /// # Errors
    /// `NotMyVbucket` unless active; `KeyNotFound`.
    pub fn get(&self, vb: Vbid, key: &[u8], now: UnixTime) -> Result<Item> {
        self.vb(vb)?.get(key, now)
    }

    /// GET_REPLICA: like [`Bucket::get`] but served from a replica vbucket.
    ///
    /// # Errors
    /// `NotMyVbucket` unless replica; `KeyNotFound`.
    pub fn get_replica(&self, vb: Vbid, key: &[u8], now: UnixTime) -> Result<Item> {
        self.vb(vb)?.get_replica(key, now)
    }

    /// SET/ADD/REPLACE. A non-zero `cas` must match the current document (SET with
    /// a cas on a missing key is `KeyNotFound`); ADD ignores `cas`.
    ///
    /// # Errors
    /// `NotMyVbucket`, `KeyExists` (ADD of an existing key, cas mismatch),
    /// `KeyNotFound`, `InvalidKey`, `TooBig`, `NoMemory`.
    pub fn store(
        &self,
        vb: Vbid,
        op: StoreOp,
        doc: Document,
        cas: Cas,
        now: UnixTime,
    ) -> Result<MutationInfo> {
        self.vb(vb)?.store(&self.shared, op, doc, cas, now)
    }

    /// DELETE: replaces the document with a tombstone at a new seqno.
    ///
    /// # Errors
    /// `NotMyVbucket`, `KeyNotFound`, `KeyExists` (cas mismatch).
    pub fn delete(&self, vb: Vbid, key: &[u8], cas: Cas, now: UnixTime) -> Result<MutationInfo> {
        self.vb(vb)?.delete(&self.shared, key, cas, now)
    }

    /// APPEND/PREPEND `data`; flags and expiry are kept, the JSON datatype bit cleared.
    ///
    /// # Errors
    /// `NotMyVbucket`, `NotStored` (missing key), `KeyExists` (cas mismatch), `TooBig`,
    /// `NoMemory`.
    pub fn concat(
        &self,
        vb: Vbid,
        op: ConcatOp,
        key: &[u8],
        data: &[u8],
        cas: Cas,
        now: UnixTime,
    ) -> Result<MutationInfo> {
        self.vb(vb)?.concat(&self.shared, op, key, data, cas, now)
    }

    /// INCR/DECR with memcached semantics: a missing key is created holding
    /// `counter.initial` (unless `counter.expiry` is [`Counter::NO_CREATE`]); an
    /// existing value must be an ASCII u64. Returns the new value.
    ///
    /// # Errors
    /// `NotMyVbucket`, `KeyNotFound` (NO_CREATE), `DeltaBadval`, `KeyExists` (cas
    /// mismatch), `NoMemory`.
    pub fn arithmetic(
        &self,
        vb: Vbid,
        op: ArithOp,
        key: &[u8],
        counter: Counter,
        cas: Cas,
        now: UnixTime,
    ) -> Result<(u64, MutationInfo)> {
        self.vb(vb)?
            .arithmetic(&self.shared, op, key, counter, cas, now)
    }

    /// TOUCH: sets a new expiry (wire form); a new cas and seqno.
    ///
    /// # Errors
    /// `NotMyVbucket`, `KeyNotFound`, `NoMemory`.
    pub fn touch(&self, vb: Vbid, key: &[u8], expiry: u32, now: UnixTime) -> Result<MutationInfo> {
        self.vb(vb)?
            .touch(&self.shared, key, expiry, now)
            .map(|(_, info)| info)
    }

    /// GAT: touch, then return the document as touched.
    ///
    /// # Errors
    /// As [`Bucket::touch`].
    pub fn get_and_touch(
        &self,
        vb: Vbid,
        key: &[u8],
        expiry: u32,
        now: UnixTime,
    ) -> Result<(Item, MutationInfo)> {
        self.vb(vb)?.touch(&self.shared, key, expiry, now)
    }

    // ---- DCP consumer side: replica/pending vbuckets only ----

    /// Records a snapshot marker's range (§6.8). Flags (CHECKPOINT, ACK, ...) are the
    /// caller's business.
    ///
    /// # Errors
    /// `NotMyVbucket` unless replica/pending; `InvalidSnapshot` if start > end;
    /// `Range` if the marker ends below the high seqno.
    pub fn apply_snapshot_marker(
        &self,
        vb: Vbid,
        start: Seqno,
        end: Seqno,
        flags: u32,
    ) -> Result<()> {
        tracing::trace!(bucket = %self.name, vb = %vb, %start, %end, flags, "snapshot marker");
        let disk = mcbp::dcp::MarkerFlags(flags).has(mcbp::dcp::MarkerFlags::DISK);
        self.vb(vb)?
            .apply_snapshot_marker(&self.shared, start, end, disk)
    }

    /// Applies a DCP mutation with the producer's seqno, cas, rev, flags, expiry and
    /// datatype. `item.deleted` is ignored (taken as false).
    ///
    /// # Errors
    /// `NotMyVbucket` unless replica/pending; `Range` unless `by_seqno` is above the
    /// high seqno; `InvalidKey`; `NoMemory`.
    pub fn apply_mutation(&self, vb: Vbid, mut item: Item, now: UnixTime) -> Result<()> {
        item.deleted = false;
        self.apply_counted(vb, item, now)
    }

    /// Applies a DCP deletion: stores `item` as a tombstone. A delete time of 0 (an
    /// in-memory delete on the producer, §6.10) is replaced by `now`.
    ///
    /// # Errors
    /// As [`Bucket::apply_mutation`], except that tombstones never hit the quota.
    pub fn apply_deletion(&self, vb: Vbid, mut item: Item, now: UnixTime) -> Result<()> {
        item.deleted = true;
        item.delete_source = crate::DeleteSource::Explicit;
        self.apply_counted(vb, item, now)
    }

    /// Applies a DCP expiration: like [`Bucket::apply_deletion`], remembered as an expiry.
    ///
    /// # Errors
    /// As [`Bucket::apply_deletion`].
    pub fn apply_expiration(&self, vb: Vbid, mut item: Item, now: UnixTime) -> Result<()> {
        item.deleted = true;
        item.delete_source = crate::DeleteSource::Expired;
        self.apply_counted(vb, item, now)
    }

    fn apply_counted(&self, vb: Vbid, item: Item, now: UnixTime) -> Result<()> {
        self.vb(vb)?.apply(&self.shared, item, now)?;
        self.dcp_applied.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Adopts the producer's failover log (newest first) from a successful stream
    /// request (§6.5). Durable at the next flush.
    ///
    /// # Errors
    /// `NotMyVbucket` if the id is beyond the bucket.
    pub fn set_failover_log(&self, vb: Vbid, entries: Vec<FailoverEntry>) -> Result<()> {
        debug!(bucket = %self.name, vb = %vb, entries = entries.len(), "failover log adopted");
        self.vb(vb)?
            .set_failover_log(FailoverLog::from_entries(entries));
        Ok(())
    }

    /// Rolls a replica/pending vbucket back to `to` (§7.5), durably before returning.
    ///
    /// Each key keeps only its current version, so the rollback is exact only when no
    /// version at or below `to` was overwritten, deleted or purged after `to`; the
    /// engine tracks, per version, the oldest seqno of its key's history to decide.
    /// Otherwise the vbucket is reset to empty. Failover entries above the new high
    /// seqno are dropped and the snapshot range collapses to it. A `to` at or above
    /// the high seqno changes nothing.
    ///
    /// # Errors
    /// `NotMyVbucket` unless replica/pending; `Storage` if the write fails (the
    /// in-memory rollback stands and the next flush retries the write).
    pub fn rollback(&self, vb: Vbid, to: Seqno) -> Result<RollbackOutcome> {
        let mut flusher = lock(&self.flush_lock);
        let outcome = self.vb(vb)?.rollback(&self.shared, to)?;
        info!(bucket = %self.name, vb = %vb, requested = %to, ?outcome, "vbucket rolled back");
        self.flush_vb_locked(&mut flusher, vb)?;
        Ok(outcome)
    }

    /// What a consumer sends in its stream request for this vbucket (§7.2 step 5).
    ///
    /// # Errors
    /// `NotMyVbucket` if the id is beyond the bucket.
    pub fn stream_request_position(&self, vb: Vbid) -> Result<StreamRequestPosition> {
        Ok(self.vb(vb)?.stream_request_position())
    }

    // ---- DCP producer side ----

    /// The producer's rollback decision for a stream request (§7.5), against this
    /// vbucket's high seqno, purge seqno and failover log. See [`decide_rollback`].
    ///
    /// # Errors
    /// `NotMyVbucket` if the id is beyond the bucket (state checks are the caller's,
    /// they come earlier in §7.4).
    pub fn rollback_decision(&self, vb: Vbid, req: &StreamStart) -> Result<RollbackDecision> {
        let v = self.vb(vb)?;
        Ok(decide_rollback(
            req,
            v.high_seqno,
            v.purge_seqno,
            &v.failover,
        ))
    }

    /// The failover log, newest first.
    ///
    /// # Errors
    /// `NotMyVbucket` if the id is beyond the bucket.
    pub fn failover_log(&self, vb: Vbid) -> Result<FailoverLog> {
        Ok(self.vb(vb)?.failover.clone())
    }

    /// Items and tombstones with seqno above `start` (exclusive), ascending, at most
    /// `limit` — a DCP backfill. Expired items not yet paged are returned as live.
    ///
    /// # Errors
    /// `NotMyVbucket` if the id is beyond the bucket.
    pub fn items_since(&self, vb: Vbid, start: Seqno, limit: usize) -> Result<Vec<Item>> {
        Ok(self.vb(vb)?.items_since(start, limit))
    }

    /// [`Bucket::items_since`] plus the high and purge seqnos read under the same
    /// lock, for building a consistent snapshot marker.
    ///
    /// # Errors
    /// `NotMyVbucket` if the id is beyond the bucket.
    pub fn backfill(&self, vb: Vbid, start: Seqno, limit: usize) -> Result<Backfill> {
        let v = self.vb(vb)?;
        let items = v.items_since(start, limit);
        let high_seqno = v.high_seqno;
        let complete = items.len() < limit || items.last().is_none_or(|i| i.by_seqno == high_seqno);
        Ok(Backfill {
            complete: complete || high_seqno <= start,
            items,
            high_seqno,
            purge_seqno: v.purge_seqno,
        })
    }

    /// A counter that increases on every change to any vbucket's items (mutation,
    /// deletion, expiry, replica apply, rollback). A producer polls it to learn that
    /// new seqnos may exist without locking every vbucket.
    #[must_use]
    pub fn change_counter(&self) -> u64 {
        self.shared.changes()
    }

    // ---- maintenance ----

    /// Writes the dirty state of every vbucket, in commits of at most about
    /// [`BucketConfig::flush_batch_items`] item versions each, then advances the
    /// persisted seqnos. Returns the totals.
    ///
    /// # Errors
    /// `Storage`; nothing is lost from memory and the next flush retries (vbuckets
    /// committed before the failure stay persisted).
    pub fn flush(&self) -> Result<FlushStats> {
        let mut flusher = lock(&self.flush_lock);
        self.flush_all_locked(&mut flusher)
    }

    /// One bounded group commit: takes the dirty state of whole vbuckets, round
    /// robin from where the last step stopped, until the batch holds at least
    /// [`BucketConfig::flush_batch_items`] item versions; appends them to the log as
    /// ONE commit; then advances their persisted seqnos. `more` in the result says
    /// the bound stopped it before every vbucket was visited.
    ///
    /// Bounded commits keep the flusher's memory and each commit's latency bounded
    /// under a write backlog, and the persisted seqnos advance commit by commit
    /// instead of after one huge write. When the log has grown past twice the
    /// bucket's memory use, the step compacts instead (see the crate docs).
    ///
    /// # Errors
    /// `Storage`; nothing is lost from memory and the next flush retries.
    pub fn flush_step(&self) -> Result<FlushStats> {
        let mut flusher = lock(&self.flush_lock);
        self.flush_step_locked(&mut flusher)
    }

    fn flush_all_locked(&self, flusher: &mut Flusher) -> Result<FlushStats> {
        let mut total = FlushStats::default();
        loop {
            let step = self.flush_step_locked(flusher)?;
            total.vbuckets += step.vbuckets;
            total.items_written += step.items_written;
            total.items_removed += step.items_removed;
            if !step.more {
                return Ok(total);
            }
        }
    }

    fn flush_step_locked(&self, flusher: &mut Flusher) -> Result<FlushStats> {
        if flusher.log.wants_compaction(self.shared.mem_used()) {
            return self.compact_locked(flusher);
        }
        let n = self.vbs.len();
        let mut batches: Vec<FlushBatch> = Vec::new();
        let mut held = 0usize;
        let mut visited = 0usize;
        while visited < n && (batches.is_empty() || held < self.flush_batch_items) {
            let i = (flusher.cursor + visited) % n;
            visited += 1;
            if let Some(b) = lock(&self.vbs[i]).take_flush_batch() {
                held += b.puts.len() + b.deletes.len();
                batches.push(b);
            }
        }
        flusher.cursor = (flusher.cursor + visited) % n;
        let mut stats = self.commit_batches(flusher, batches, None)?;
        stats.more = visited < n;
        Ok(stats)
    }

    /// Writes one vbucket's dirty state now (state changes that must be durable
    /// before the call returns), whatever the other vbuckets hold.
    fn flush_vb_locked(&self, flusher: &mut Flusher, vb: Vbid) -> Result<FlushStats> {
        let batch = self.vb(vb)?.take_flush_batch();
        self.commit_batches(flusher, batch.into_iter().collect(), None)
    }

    /// Appends `batches` (and, with `clean`, the clean-shutdown marker) as one
    /// commit; on success advances their persisted seqnos, on failure puts them
    /// back so the next flush retries.
    fn commit_batches(
        &self,
        flusher: &mut Flusher,
        batches: Vec<FlushBatch>,
        clean: Option<bool>,
    ) -> Result<FlushStats> {
        if batches.is_empty() && clean.is_none() {
            return Ok(FlushStats::default());
        }
        let max_cas = self.shared.max_cas();
        let hook = || CommitHook::run(self.before_commit.as_ref());
        let res = flusher
            .log
            .commit(&batches, &[], max_cas, clean == Some(true), hook)
            .map_err(storage(&self.name, "flush"));
        self.settle(batches, res)
    }

    /// Marks `batches` persisted after a successful write, or puts them back.
    fn settle(&self, batches: Vec<FlushBatch>, res: Result<FlushStats>) -> Result<FlushStats> {
        match res {
            Ok(stats) => {
                for b in &batches {
                    lock(&self.vbs[usize::from(b.vb.0)]).mark_persisted(b.meta.high_seqno);
                }
                debug!(bucket = %self.name, vbuckets = stats.vbuckets, items = stats.items_written,
                    "flushed");
                Ok(stats)
            }
            Err(e) => {
                for b in batches {
                    lock(&self.vbs[usize::from(b.vb.0)]).restore_flush_batch(b);
                }
                Err(e)
            }
        }
    }

    /// Rewrites the log from memory: every vbucket's current versions and record,
    /// each taken under its lock together with its dirty state, so the new log is
    /// complete and every vbucket is persisted up to where it was taken.
    fn compact_locked(&self, flusher: &mut Flusher) -> Result<FlushStats> {
        let old_len = flusher.log.len();
        let n = self.num_vbuckets();
        let mut c = flusher
            .log
            .compaction(n)
            .map_err(storage(&self.name, "compaction"))?;
        let mut batches = Vec::new();
        let written = self.vbs.iter().try_for_each(|m| {
            let (id, batch, versions, meta) = {
                let mut vb = lock(m);
                (vb.id, vb.take_flush_batch(), vb.all_versions(), vb.meta())
            };
            batches.extend(batch);
            c.add_vbucket(id, &versions, &meta)
        });
        let stats = FlushStats {
            vbuckets: batches.len(),
            items_written: batches.iter().map(|b| b.puts.len()).sum(),
            ..FlushStats::default()
        };
        let res = match written {
            Ok(()) => flusher
                .log
                .finish_compaction(c, self.shared.max_cas(), || {
                    CommitHook::run(self.before_commit.as_ref());
                })
                .map(|()| stats),
            Err(e) => {
                c.abandon();
                Err(e)
            }
        };
        if res.is_ok() {
            info!(bucket = %self.name, from_bytes = old_len, to_bytes = flusher.log.len(),
                "log compacted");
        }
        self.settle(batches, res.map_err(storage(&self.name, "compaction")))
    }

    /// Removes tombstones deleted at least `older_than_secs` before `now` and raises
    /// each vbucket's purge seqno. Disk removal happens at the next flush. Returns
    /// how many were purged.
    pub fn purge_tombstones(&self, older_than_secs: u32, now: UnixTime) -> usize {
        self.vbs
            .iter()
            .map(|m| lock(m).purge_tombstones(&self.shared, older_than_secs, now))
            .sum()
    }

    /// Expiry pager: every expired live item in an active vbucket becomes an
    /// expiration tombstone at a new seqno (so DCP streams an expiration).
    #[must_use]
    pub fn expire_items(&self, now: UnixTime) -> Vec<(Vbid, Bytes, Seqno)> {
        let mut out = Vec::new();
        for m in &self.vbs {
            let mut v = lock(m);
            let id = v.id;
            out.extend(
                v.expire(&self.shared, now)
                    .into_iter()
                    .map(|(key, seqno)| (id, key, seqno)),
            );
        }
        out
    }

    // ---- stats ----

    /// The highest seqno assigned or received.
    ///
    /// # Errors
    /// `NotMyVbucket` if the id is beyond the bucket.
    pub fn high_seqno(&self, vb: Vbid) -> Result<Seqno> {
        Ok(self.vb(vb)?.high_seqno)
    }

    /// The highest seqno durably written.
    ///
    /// # Errors
    /// `NotMyVbucket` if the id is beyond the bucket.
    pub fn persisted_seqno(&self, vb: Vbid) -> Result<Seqno> {
        Ok(self.vb(vb)?.persisted_seqno)
    }

    /// The newest failover entry's uuid (0 if the log is empty).
    ///
    /// # Errors
    /// `NotMyVbucket` if the id is beyond the bucket.
    pub fn vb_uuid(&self, vb: Vbid) -> Result<VbUuid> {
        Ok(self.vb(vb)?.failover.current_uuid())
    }

    /// The highest seqno of a purged tombstone.
    ///
    /// # Errors
    /// `NotMyVbucket` if the id is beyond the bucket.
    pub fn purge_seqno(&self, vb: Vbid) -> Result<Seqno> {
        Ok(self.vb(vb)?.purge_seqno)
    }

    /// The replica's current snapshot range `(snap_start, snap_end)`.
    ///
    /// # Errors
    /// `NotMyVbucket` if the id is beyond the bucket.
    pub fn snapshot_range(&self, vb: Vbid) -> Result<(Seqno, Seqno)> {
        let v = self.vb(vb)?;
        Ok((v.snap_start, v.snap_end))
    }

    /// All per-vbucket statistics at once.
    ///
    /// # Errors
    /// `NotMyVbucket` if the id is beyond the bucket.
    pub fn vb_stats(&self, vb: Vbid) -> Result<VbStats> {
        Ok(self.vb(vb)?.stats())
    }

    /// Bucket totals.
    #[must_use]
    pub fn stats(&self) -> BucketStats {
        BucketStats {
            items: self.vbs.iter().map(|m| lock(m).live_items()).sum(),
            mem_used: self.shared.mem_used(),
            quota: self.shared.quota,
            dcp_items_applied: self.dcp_applied.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::DeleteSource;
    use std::sync::Arc;

    const T0: u64 = 1_700_000_000;

    fn at(secs: u64) -> UnixTime {
        UnixTime::from_secs(secs)
    }

    fn now() -> UnixTime {
        at(T0)
    }

    fn vb0() -> Vbid {
        Vbid(0)
    }

    struct Fixture {
        bucket: Bucket,
        _dir: tempfile::TempDir,
    }

    impl std::ops::Deref for Fixture {
        type Target = Bucket;
        fn deref(&self) -> &Bucket {
            &self.bucket
        }
    }

    fn config(dir: &Path) -> BucketConfig {
        let mut c = BucketConfig::new("default", dir);
        c.num_vbuckets = 4;
        c.rng_seed = Some(42);
        c
    }

    fn with_config(edit: impl FnOnce(&mut BucketConfig)) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = config(dir.path());
        edit(&mut c);
        let bucket = Bucket::open(c).expect("open");
        Fixture { bucket, _dir: dir }
    }

    /// A bucket whose vb 0 is active and vb 1 is a replica.
    fn fixture() -> Fixture {
        let f = with_config(|_| {});
        f.set_state(vb0(), VbState::Active).expect("active");
        f.set_state(Vbid(1), VbState::Replica).expect("replica");
        f
    }

    fn doc(key: &str, value: &str) -> Document {
        Document {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            flags: 0x0200_0000,
            expiry: 0,
            datatype: 1,
        }
    }

    fn set(b: &Bucket, key: &str, value: &str) -> MutationInfo {
        b.store(vb0(), StoreOp::Set, doc(key, value), Cas(0), now())
            .expect("set")
    }

    fn replica_item(key: &str, seqno: u64) -> Item {
        Item {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
            cas: Cas(1000 + seqno),
            flags: 7,
            expiry: 0,
            datatype: 0,
            rev_seqno: seqno,
            by_seqno: Seqno(seqno),
            deleted: false,
            delete_source: DeleteSource::Explicit,
            delete_time: 0,
        }
    }

    fn apply(b: &Bucket, key: &str, seqno: u64) {
        b.apply_mutation(Vbid(1), replica_item(key, seqno), now())
            .expect("apply mutation");
    }

    fn seqnos(items: &[Item]) -> Vec<u64> {
        items.iter().map(|i| i.by_seqno.0).collect()
    }

    #[test]
    fn bucket_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Bucket>();
    }

    #[test]
    fn set_then_get_returns_value_flags_datatype_and_the_same_cas() {
        let b = fixture();
        let info = set(&b, "k", "{\"a\":1}");
        assert_eq!(info.seqno, Seqno(1));
        assert_eq!(info.vb_uuid, b.vb_uuid(vb0()).expect("uuid"));
        assert_ne!(info.vb_uuid, VbUuid(0));
        let item = b.get(vb0(), b"k", now()).expect("get");
        assert_eq!(item.value, Bytes::from_static(b"{\"a\":1}"));
        assert_eq!(
            (item.flags, item.datatype, item.cas),
            (0x0200_0000, 1, info.cas)
        );
        assert!(matches!(
            b.get(vb0(), b"missing", now()),
            Err(EngineError::KeyNotFound { vb }) if vb == vb0()
        ));
    }

    #[test]
    fn add_replace_and_cas_checks_follow_memcached() {
        let b = fixture();
        let first = b
            .store(vb0(), StoreOp::Add, doc("k", "1"), Cas(0), now())
            .expect("add new");
        assert!(matches!(
            b.store(vb0(), StoreOp::Add, doc("k", "2"), Cas(0), now()),
            Err(EngineError::KeyExists { .. })
        ));
        assert!(matches!(
            b.store(vb0(), StoreOp::Replace, doc("other", "2"), Cas(0), now()),
            Err(EngineError::KeyNotFound { .. })
        ));
        assert!(matches!(
            b.store(vb0(), StoreOp::Set, doc("other", "2"), Cas(5), now()),
            Err(EngineError::KeyNotFound { .. })
        ));
        let stale = Cas(first.cas.0 + 1);
        assert!(matches!(
            b.store(vb0(), StoreOp::Replace, doc("k", "2"), stale, now()),
            Err(EngineError::KeyExists { .. })
        ));
        assert!(matches!(
            b.store(vb0(), StoreOp::Set, doc("k", "2"), stale, now()),
            Err(EngineError::KeyExists { .. })
        ));
        let second = b
            .store(vb0(), StoreOp::Replace, doc("k", "2"), first.cas, now())
            .expect("replace with matching cas");
        assert!(second.cas > first.cas);
        assert_eq!(second.seqno, Seqno(2));
        // Failed operations consumed no seqno.
        assert_eq!(b.high_seqno(vb0()).expect("high"), Seqno(2));
        assert!(matches!(
            b.delete(vb0(), b"k", first.cas, now()),
            Err(EngineError::KeyExists { .. })
        ));
        b.delete(vb0(), b"k", second.cas, now())
            .expect("delete with cas");
    }

    #[test]
    fn seqnos_and_cas_increase_per_mutation_even_with_a_frozen_clock() {
        let b = fixture();
        let mut last = (Seqno(0), Cas(0));
        for i in 0..50 {
            let info = set(&b, &format!("k{}", i % 7), "v");
            assert_eq!(info.seqno, Seqno(last.0 .0 + 1));
            assert!(info.cas > last.1);
            last = (info.seqno, info.cas);
        }
        // Seqnos are per vbucket.
        b.set_state(Vbid(2), VbState::Active).expect("active");
        let other = b
            .store(Vbid(2), StoreOp::Set, doc("x", "y"), Cas(0), now())
            .expect("set");
        assert_eq!(other.seqno, Seqno(1));
        assert!(other.cas > last.1, "cas is unique across the bucket");
    }

    #[test]
    fn front_end_ops_need_an_active_vbucket_and_get_replica_a_replica() {
        let b = fixture();
        for vb in [Vbid(1), Vbid(2)] {
            assert!(matches!(
                b.store(vb, StoreOp::Set, doc("k", "v"), Cas(0), now()),
                Err(EngineError::NotMyVbucket { vb: v, state: Some(_) }) if v == vb
            ));
            assert!(matches!(
                b.get(vb, b"k", now()),
                Err(EngineError::NotMyVbucket { .. })
            ));
        }
        assert!(matches!(
            b.get(Vbid(9), b"k", now()),
            Err(EngineError::NotMyVbucket {
                vb: Vbid(9),
                state: None
            })
        ));
        set(&b, "k", "v");
        assert!(matches!(
            b.get_replica(vb0(), b"k", now()),
            Err(EngineError::NotMyVbucket { .. })
        ));
        apply(&b, "r", 1);
        let item = b.get_replica(Vbid(1), b"r", now()).expect("replica read");
        assert_eq!(
            (item.flags, item.cas, item.by_seqno),
            (7, Cas(1001), Seqno(1))
        );
    }

    #[test]
    fn delete_leaves_a_tombstone_at_a_new_seqno() {
        let b = fixture();
        set(&b, "k", "v");
        let del = b.delete(vb0(), b"k", Cas(0), now()).expect("delete");
        assert_eq!(del.seqno, Seqno(2));
        assert!(matches!(
            b.get(vb0(), b"k", now()),
            Err(EngineError::KeyNotFound { .. })
        ));
        assert!(matches!(
            b.delete(vb0(), b"k", Cas(0), now()),
            Err(EngineError::KeyNotFound { .. })
        ));
        let items = b.items_since(vb0(), Seqno(0), 10).expect("items");
        assert_eq!(items.len(), 1);
        let t = &items[0];
        assert!(t.deleted);
        assert_eq!((t.by_seqno, t.cas, t.rev_seqno), (Seqno(2), del.cas, 2));
        assert_eq!(t.delete_time, now().secs_u32());
        assert!(t.value.is_empty());
        let st = b.vb_stats(vb0()).expect("stats");
        assert_eq!(
            (st.items, st.tombstones, st.persisted_tombstones),
            (0, 1, 0)
        );
        // ADD over a tombstone works and continues the revision count.
        b.store(vb0(), StoreOp::Add, doc("k", "again"), Cas(0), now())
            .expect("add over tombstone");
        assert_eq!(b.get(vb0(), b"k", now()).expect("get").rev_seqno, 3);
    }

    #[test]
    fn expired_items_are_invisible_and_the_pager_turns_them_into_expirations() {
        let b = fixture();
        let mut d = doc("short", "v");
        d.expiry = 10; // relative: T0 + 10
        b.store(vb0(), StoreOp::Set, d, Cas(0), now()).expect("set");
        set(&b, "forever", "v");
        assert_eq!(
            b.get(vb0(), b"short", at(T0 + 9)).expect("live").expiry,
            (T0 + 10) as u32
        );
        assert!(matches!(
            b.get(vb0(), b"short", at(T0 + 10)),
            Err(EngineError::KeyNotFound { .. })
        ));
        // REPLACE sees it missing, ADD may take its place.
        assert!(matches!(
            b.store(
                vb0(),
                StoreOp::Replace,
                doc("short", "x"),
                Cas(0),
                at(T0 + 11)
            ),
            Err(EngineError::KeyNotFound { .. })
        ));
        assert!(b.expire_items(at(T0 + 9)).is_empty());
        let expired = b.expire_items(at(T0 + 11));
        assert_eq!(
            expired,
            vec![(vb0(), Bytes::from_static(b"short"), Seqno(3))]
        );
        let last = b.items_since(vb0(), Seqno(2), 10).expect("items");
        assert!(last[0].deleted);
        assert_eq!(last[0].delete_source, DeleteSource::Expired);
        assert!(
            b.expire_items(at(T0 + 12)).is_empty(),
            "already a tombstone"
        );
        assert_eq!(b.stats().items, 1);
    }

    #[test]
    fn the_pager_leaves_replica_vbuckets_alone() {
        let b = fixture();
        let mut item = replica_item("r", 1);
        item.expiry = (T0 + 1) as u32;
        b.apply_mutation(Vbid(1), item, now()).expect("apply");
        assert!(b.expire_items(at(T0 + 100)).is_empty());
        assert_eq!(b.high_seqno(Vbid(1)).expect("high"), Seqno(1));
    }

    #[test]
    fn incr_and_decr_use_memcached_counter_semantics() {
        let b = fixture();
        let c = |delta, initial, expiry| Counter {
            delta,
            initial,
            expiry,
        };
        assert!(matches!(
            b.arithmetic(
                vb0(),
                ArithOp::Incr,
                b"n",
                c(1, 5, Counter::NO_CREATE),
                Cas(0),
                now()
            ),
            Err(EngineError::KeyNotFound { .. })
        ));
        let (v, info) = b
            .arithmetic(vb0(), ArithOp::Incr, b"n", c(1, 5, 0), Cas(0), now())
            .expect("create");
        assert_eq!(
            (v, info.seqno),
            (5, Seqno(1)),
            "creation stores the initial value"
        );
        let (v, _) = b
            .arithmetic(vb0(), ArithOp::Incr, b"n", c(10, 0, 0), Cas(0), now())
            .expect("incr");
        assert_eq!(v, 15);
        assert_eq!(
            b.get(vb0(), b"n", now()).expect("get").value,
            Bytes::from_static(b"15")
        );
        let (v, _) = b
            .arithmetic(vb0(), ArithOp::Decr, b"n", c(100, 0, 0), Cas(0), now())
            .expect("decr");
        assert_eq!(v, 0, "decr stops at zero");
        set(&b, "big", &u64::MAX.to_string());
        let (v, _) = b
            .arithmetic(vb0(), ArithOp::Incr, b"big", c(2, 0, 0), Cas(0), now())
            .expect("incr wraps");
        assert_eq!(v, 1);
        set(&b, "text", "abc");
        assert!(matches!(
            b.arithmetic(vb0(), ArithOp::Incr, b"text", c(1, 0, 0), Cas(0), now()),
            Err(EngineError::DeltaBadval { .. })
        ));
        assert!(matches!(
            b.arithmetic(vb0(), ArithOp::Incr, b"big", c(1, 0, 0), Cas(1), now()),
            Err(EngineError::KeyExists { .. })
        ));
    }

    #[test]
    fn append_and_prepend_need_an_existing_document() {
        let b = fixture();
        assert!(matches!(
            b.concat(vb0(), ConcatOp::Append, b"k", b"x", Cas(0), now()),
            Err(EngineError::NotStored { .. })
        ));
        set(&b, "k", "mid");
        b.concat(vb0(), ConcatOp::Append, b"k", b">", Cas(0), now())
            .expect("append");
        let info = b
            .concat(vb0(), ConcatOp::Prepend, b"k", b"<", Cas(0), now())
            .expect("prepend");
        let item = b.get(vb0(), b"k", now()).expect("get");
        assert_eq!(item.value, Bytes::from_static(b"<mid>"));
        assert_eq!(
            (item.flags, item.cas, item.datatype),
            (0x0200_0000, info.cas, 0)
        );
    }

    #[test]
    fn touch_and_gat_set_a_new_expiry_cas_and_seqno() {
        let b = fixture();
        let first = set(&b, "k", "v");
        let touched = b.touch(vb0(), b"k", 100, now()).expect("touch");
        assert!(touched.cas > first.cas);
        assert_eq!(touched.seqno, Seqno(2));
        let (item, info) = b.get_and_touch(vb0(), b"k", 0, now()).expect("gat");
        assert_eq!(
            (item.expiry, item.cas, item.value.as_ref()),
            (0, info.cas, &b"v"[..])
        );
        assert!(matches!(
            b.touch(vb0(), b"nope", 1, now()),
            Err(EngineError::KeyNotFound { .. })
        ));
    }

    #[test]
    fn oversized_values_and_bad_keys_are_refused() {
        let b = with_config(|c| c.max_item_size = 16);
        b.set_state(vb0(), VbState::Active).expect("active");
        assert!(matches!(
            b.store(
                vb0(),
                StoreOp::Set,
                doc("k", &"x".repeat(17)),
                Cas(0),
                now()
            ),
            Err(EngineError::TooBig {
                len: 17,
                max: 16,
                ..
            })
        ));
        set(&b, "k", &"x".repeat(16));
        assert!(matches!(
            b.concat(vb0(), ConcatOp::Append, b"k", b"y", Cas(0), now()),
            Err(EngineError::TooBig { .. })
        ));
        assert!(matches!(
            b.store(vb0(), StoreOp::Set, doc("", "v"), Cas(0), now()),
            Err(EngineError::InvalidKey { len: 0, .. })
        ));
        assert!(matches!(
            b.store(
                vb0(),
                StoreOp::Set,
                doc(&"k".repeat(256), "v"),
                Cas(0),
                now()
            ),
            Err(EngineError::InvalidKey { len: 256, .. })
        ));
    }

    #[test]
    fn writes_beyond_the_quota_fail_but_deletes_still_free_memory() {
        let per_item = 2 + 100 + crate::ITEM_OVERHEAD; // key "kN", 100-byte value
        let b = with_config(|c| c.quota_bytes = per_item * 3);
        b.set_state(vb0(), VbState::Active).expect("active");
        let value = "v".repeat(100);
        for i in 0..3 {
            set(&b, &format!("k{i}"), &value);
        }
        assert_eq!(b.stats().mem_used, per_item * 3);
        let refused = b.store(vb0(), StoreOp::Set, doc("k3", &value), Cas(0), now());
        assert!(matches!(refused, Err(EngineError::NoMemory { vb, .. }) if vb == vb0()));
        assert_eq!(
            refused.err().map(|e| e.status()),
            Some(mcbp::Status::Etmpfail)
        );
        assert_eq!(
            b.high_seqno(vb0()).expect("high"),
            Seqno(3),
            "refusal used no seqno"
        );
        // Same-size overwrite fits.
        set(&b, "k0", &value);
        b.delete(vb0(), b"k1", Cas(0), now())
            .expect("delete under pressure");
        // The tombstone still holds its key; purging it makes room.
        assert!(b
            .store(vb0(), StoreOp::Set, doc("k3", &value), Cas(0), now())
            .is_err());
        assert_eq!(b.purge_tombstones(0, now()), 1);
        set(&b, "k3", &value);
        assert!(b.stats().mem_used <= b.stats().quota);
        // Replica applies are bounded too.
        b.set_state(Vbid(1), VbState::Replica).expect("replica");
        let mut big = replica_item("r", 1);
        big.value = Bytes::from(vec![0u8; 200]);
        assert!(matches!(
            b.apply_mutation(Vbid(1), big, now()),
            Err(EngineError::NoMemory { .. })
        ));
    }

    #[test]
    fn replica_apply_enforces_increasing_seqnos_and_state() {
        let b = fixture();
        b.apply_snapshot_marker(Vbid(1), Seqno(1), Seqno(5), 0x01)
            .expect("marker");
        apply(&b, "a", 1);
        apply(&b, "b", 3);
        for bad in [3, 2, 0] {
            let err = b
                .apply_mutation(Vbid(1), replica_item("c", bad), now())
                .expect_err("not above high seqno");
            assert!(
                matches!(err, EngineError::Range { vb: Vbid(1), seqno, high: Seqno(3) } if seqno == Seqno(bad)),
                "{err}"
            );
        }
        let mut del = replica_item("a", 4);
        del.cas = Cas(99_999);
        b.apply_deletion(Vbid(1), del, now()).expect("deletion");
        let mut exp = replica_item("b", 5);
        exp.delete_time = 123;
        b.apply_expiration(Vbid(1), exp, now()).expect("expiration");
        let items = b.items_since(Vbid(1), Seqno(0), 10).expect("items");
        assert_eq!(seqnos(&items), vec![4, 5]);
        assert!(items.iter().all(|i| i.deleted));
        assert_eq!(
            items[0].delete_time,
            now().secs_u32(),
            "delete time 0 is dated on receipt"
        );
        assert_eq!(items[1].delete_time, 123);
        assert_eq!(items[1].delete_source, DeleteSource::Expired);
        assert_eq!(items[0].cas, Cas(99_999), "the producer's cas is kept");
        // Two mutations, a deletion and an expiration applied; the refused ones not.
        assert_eq!(b.stats().dcp_items_applied, 4);
        // Markers: start > end is invalid; wholly below the high seqno is a range error.
        assert!(matches!(
            b.apply_snapshot_marker(Vbid(1), Seqno(9), Seqno(8), 0),
            Err(EngineError::InvalidSnapshot { .. })
        ));
        assert!(matches!(
            b.apply_snapshot_marker(Vbid(1), Seqno(2), Seqno(4), 0),
            Err(EngineError::Range { .. })
        ));
        // Active and dead vbuckets refuse DCP input.
        for vb in [vb0(), Vbid(2)] {
            assert!(matches!(
                b.apply_mutation(vb, replica_item("x", 100), now()),
                Err(EngineError::NotMyVbucket { .. })
            ));
            assert!(matches!(
                b.apply_snapshot_marker(vb, Seqno(1), Seqno(2), 0),
                Err(EngineError::NotMyVbucket { .. })
            ));
        }
        // Pending accepts.
        b.set_state(Vbid(3), VbState::Pending).expect("pending");
        b.apply_mutation(Vbid(3), replica_item("p", 1), now())
            .expect("pending applies");
    }

    #[test]
    fn replicated_cas_advances_the_clock_for_writes_after_promotion() {
        let b = fixture();
        let mut item = replica_item("r", 1);
        item.cas = Cas(u64::MAX / 2);
        b.apply_mutation(Vbid(1), item, now()).expect("apply");
        b.set_state(Vbid(1), VbState::Active).expect("promote");
        let info = b
            .store(Vbid(1), StoreOp::Set, doc("r", "new"), Cas(0), now())
            .expect("set");
        assert!(info.cas > Cas(u64::MAX / 2));
        assert_eq!(info.seqno, Seqno(2));
    }

    #[test]
    fn becoming_active_pushes_a_failover_entry_at_the_high_seqno_and_the_log_is_capped() {
        let b = fixture();
        let log = b.failover_log(vb0()).expect("log");
        assert_eq!(log.len(), 1);
        assert_eq!(log.entries()[0].seqno, Seqno(0));
        assert_ne!(log.entries()[0].vb_uuid, VbUuid(0));
        // Active -> active is not a new branch.
        b.set_state(vb0(), VbState::Active).expect("active again");
        assert_eq!(b.failover_log(vb0()).expect("log").len(), 1);
        set(&b, "k", "v");
        set(&b, "k2", "v");
        for _ in 0..30 {
            b.set_state(vb0(), VbState::Replica).expect("replica");
            b.set_state(vb0(), VbState::Active).expect("active");
        }
        let log = b.failover_log(vb0()).expect("log");
        assert_eq!(log.len(), crate::MAX_FAILOVER_ENTRIES);
        assert_eq!(log.newest().map(|e| e.seqno), Some(Seqno(2)));
        let mut uuids: Vec<u64> = log.entries().iter().map(|e| e.vb_uuid.0).collect();
        uuids.sort_unstable();
        uuids.dedup();
        assert_eq!(uuids.len(), crate::MAX_FAILOVER_ENTRIES, "uuids are fresh");
        // Dead vbuckets start with no log.
        assert!(b.failover_log(Vbid(2)).expect("log").is_empty());
    }

    #[test]
    fn activation_is_durable_before_set_state_returns() {
        let b = with_config(|_| {});
        b.set_state(vb0(), VbState::Active).expect("active");
        assert_eq!(
            b.flush().expect("flush"),
            FlushStats::default(),
            "already written"
        );
        b.set_state(Vbid(2), VbState::Replica).expect("replica");
        assert_eq!(
            b.flush().expect("flush").vbuckets,
            1,
            "other changes wait for a flush"
        );
    }

    #[test]
    fn the_same_seed_draws_the_same_uuids() {
        let a = fixture();
        let b = fixture();
        assert_eq!(a.vb_uuid(vb0()).expect("a"), b.vb_uuid(vb0()).expect("b"));
    }

    #[test]
    fn rollback_is_exact_when_no_older_version_was_overwritten() {
        let b = fixture();
        b.set_failover_log(
            Vbid(1),
            vec![
                FailoverEntry {
                    vb_uuid: VbUuid(2),
                    seqno: Seqno(4),
                },
                FailoverEntry {
                    vb_uuid: VbUuid(1),
                    seqno: Seqno(0),
                },
            ],
        )
        .expect("log");
        for (key, seqno) in [("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)] {
            apply(&b, key, seqno);
        }
        let before = b.change_counter();
        let outcome = b.rollback(Vbid(1), Seqno(3)).expect("rollback");
        assert_eq!(outcome, RollbackOutcome::To(Seqno(3)));
        assert!(b.change_counter() > before);
        assert_eq!(b.high_seqno(Vbid(1)).expect("high"), Seqno(3));
        assert_eq!(b.persisted_seqno(Vbid(1)).expect("persisted"), Seqno(3));
        assert_eq!(
            seqnos(&b.items_since(Vbid(1), Seqno(0), 10).expect("items")),
            vec![1, 2, 3]
        );
        assert!(matches!(
            b.get_replica(Vbid(1), b"d", now()),
            Err(EngineError::KeyNotFound { .. })
        ));
        assert_eq!(b.vb_stats(Vbid(1)).expect("stats").items, 3);
        // The failover entry at 4 is beyond the new high seqno.
        let log = b.failover_log(Vbid(1)).expect("log");
        assert_eq!(
            log.entries(),
            &[FailoverEntry {
                vb_uuid: VbUuid(1),
                seqno: Seqno(0)
            }]
        );
        assert_eq!(
            b.snapshot_range(Vbid(1)).expect("snap"),
            (Seqno(3), Seqno(3))
        );
        // The stream continues from 3.
        apply(&b, "x", 4);
        assert_eq!(
            b.stream_request_position(Vbid(1)).expect("pos").start,
            Seqno(4)
        );
    }

    #[test]
    fn rollback_resets_to_zero_when_a_version_at_or_below_the_target_was_overwritten() {
        let b = fixture();
        apply(&b, "a", 1);
        apply(&b, "b", 2);
        apply(&b, "a", 3); // overwrites a@1: the state at 2 is gone
        apply(&b, "c", 4);
        let outcome = b.rollback(Vbid(1), Seqno(2)).expect("rollback");
        assert_eq!(outcome, RollbackOutcome::ResetToZero);
        assert_eq!(outcome.high_seqno(), Seqno(0));
        assert_eq!(b.high_seqno(Vbid(1)).expect("high"), Seqno(0));
        assert!(b
            .items_since(Vbid(1), Seqno(0), 10)
            .expect("items")
            .is_empty());
        assert_eq!(b.vb_stats(Vbid(1)).expect("stats").mem_used, 0);
        // An overwrite of a key first written after the target is no obstacle.
        apply(&b, "a", 1);
        apply(&b, "b", 2);
        apply(&b, "b", 3);
        apply(&b, "b", 4);
        assert_eq!(
            b.rollback(Vbid(1), Seqno(1)).expect("rollback"),
            RollbackOutcome::To(Seqno(1))
        );
        assert_eq!(
            seqnos(&b.items_since(Vbid(1), Seqno(0), 10).expect("items")),
            vec![1]
        );
    }

    #[test]
    fn rollback_resets_when_tombstones_above_the_target_were_purged() {
        let b = fixture();
        apply(&b, "a", 1);
        apply(&b, "b", 2);
        let mut del = replica_item("b", 3);
        del.delete_time = 1;
        b.apply_deletion(Vbid(1), del, now()).expect("delete");
        apply(&b, "c", 4);
        assert_eq!(b.purge_tombstones(10, now()), 1);
        assert_eq!(b.purge_seqno(Vbid(1)).expect("purge"), Seqno(3));
        assert_eq!(
            b.rollback(Vbid(1), Seqno(3)).expect("rb"),
            RollbackOutcome::To(Seqno(3))
        );
        assert_eq!(
            b.rollback(Vbid(1), Seqno(2)).expect("rb"),
            RollbackOutcome::ResetToZero
        );
    }

    #[test]
    fn rollback_needs_a_replica_or_pending_vbucket_and_is_a_no_op_at_the_high_seqno() {
        let b = fixture();
        set(&b, "k", "v");
        assert!(matches!(
            b.rollback(vb0(), Seqno(0)),
            Err(EngineError::NotMyVbucket { .. })
        ));
        apply(&b, "a", 1);
        assert_eq!(
            b.rollback(Vbid(1), Seqno(1)).expect("rb"),
            RollbackOutcome::To(Seqno(1))
        );
        assert_eq!(
            b.rollback(Vbid(1), Seqno(7)).expect("rb"),
            RollbackOutcome::To(Seqno(1))
        );
    }

    #[test]
    fn rollback_decision_uses_the_vbuckets_history() {
        let b = fixture();
        set(&b, "k", "v");
        let uuid = b.vb_uuid(vb0()).expect("uuid");
        let req = StreamStart {
            start: Seqno(1),
            vb_uuid: uuid,
            snap_start: Seqno(1),
            snap_end: Seqno(1),
            ..StreamStart::default()
        };
        assert_eq!(
            b.rollback_decision(vb0(), &req).expect("decide"),
            RollbackDecision::NoRollback
        );
        let ahead = StreamStart {
            start: Seqno(5),
            snap_start: Seqno(5),
            snap_end: Seqno(5),
            ..req
        };
        assert_eq!(
            b.rollback_decision(vb0(), &ahead).expect("decide"),
            RollbackDecision::RollbackTo(Seqno(1))
        );
        let stranger = StreamStart {
            vb_uuid: VbUuid(uuid.0 ^ 1),
            ..req
        };
        assert_eq!(
            b.rollback_decision(vb0(), &stranger).expect("decide"),
            RollbackDecision::RollbackTo(Seqno(0))
        );
    }

    #[test]
    fn items_since_is_in_seqno_order_with_tombstones_and_respects_the_limit() {
        let b = fixture();
        for i in 0..10 {
            set(&b, &format!("k{i}"), "v");
        }
        set(&b, "k3", "again"); // seqno 11 replaces 4
        b.delete(vb0(), b"k5", Cas(0), now()).expect("delete"); // 12 replaces 6
        let all = b.items_since(vb0(), Seqno(0), 100).expect("items");
        assert_eq!(seqnos(&all), vec![1, 2, 3, 5, 7, 8, 9, 10, 11, 12]);
        assert!(all.last().is_some_and(|i| i.deleted));
        assert_eq!(
            seqnos(&b.items_since(vb0(), Seqno(4), 3).expect("items")),
            vec![5, 7, 8]
        );
        assert!(b
            .items_since(vb0(), Seqno(12), 3)
            .expect("items")
            .is_empty());
        let part = b.backfill(vb0(), Seqno(0), 4).expect("backfill");
        assert_eq!(
            (part.high_seqno, part.complete, part.items.len()),
            (Seqno(12), false, 4)
        );
        let rest = b.backfill(vb0(), Seqno(7), 100).expect("backfill");
        assert!(rest.complete);
        assert_eq!(seqnos(&rest.items), vec![8, 9, 10, 11, 12]);
    }

    #[test]
    fn purge_removes_only_old_tombstones_and_raises_the_purge_seqno() {
        let b = fixture();
        set(&b, "a", "v");
        set(&b, "b", "v");
        b.delete(vb0(), b"a", Cas(0), at(T0)).expect("delete");
        b.delete(vb0(), b"b", Cas(0), at(T0 + 100)).expect("delete");
        assert_eq!(b.purge_tombstones(60, at(T0 + 59)), 0);
        assert_eq!(b.purge_tombstones(60, at(T0 + 60)), 1);
        assert_eq!(b.purge_seqno(vb0()).expect("purge"), Seqno(3));
        assert_eq!(
            seqnos(&b.items_since(vb0(), Seqno(0), 10).expect("items")),
            vec![4]
        );
        assert_eq!(b.purge_tombstones(60, at(T0 + 1000)), 1);
        assert_eq!(b.purge_seqno(vb0()).expect("purge"), Seqno(4));
        assert_eq!(
            b.high_seqno(vb0()).expect("high"),
            Seqno(4),
            "purge keeps the high seqno"
        );
    }

    #[test]
    fn flush_writes_everything_in_one_group_commit_and_advances_persisted_seqnos() {
        let b = fixture();
        for i in 0..500 {
            set(&b, &format!("k{}", i % 200), "v");
        }
        for s in 1..=20 {
            apply(&b, &format!("r{s}"), s);
        }
        assert_eq!(b.persisted_seqno(vb0()).expect("persisted"), Seqno(0));
        let stats = b.flush().expect("flush");
        assert_eq!(
            stats.items_written,
            200 + 20,
            "overwritten versions were never written"
        );
        assert!(stats.vbuckets >= 2);
        assert_eq!(b.persisted_seqno(vb0()).expect("persisted"), Seqno(500));
        assert_eq!(b.persisted_seqno(Vbid(1)).expect("persisted"), Seqno(20));
        assert_eq!(b.flush().expect("idle flush"), FlushStats::default());
        set(&b, "k0", "v2");
        let stats = b.flush().expect("flush");
        assert_eq!((stats.items_written, stats.items_removed), (1, 1));
    }

    /// A bucket with every vbucket active, `per_vb` documents in each, commits
    /// counted, and `flush_batch_items` = `bound`.
    fn loaded_with_bound(bound: usize, per_vb: usize) -> (Fixture, Arc<AtomicU64>) {
        let commits = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&commits);
        let f = with_config(|c| {
            c.flush_batch_items = bound;
            c.before_commit = Some(CommitHook::new(move || {
                counter.fetch_add(1, Ordering::Relaxed);
            }));
        });
        for vb in 0..4 {
            f.set_state(Vbid(vb), VbState::Active).expect("active");
            for i in 0..per_vb {
                f.store(
                    Vbid(vb),
                    StoreOp::Set,
                    doc(&format!("k{i}"), "v"),
                    Cas(0),
                    now(),
                )
                .expect("set");
            }
        }
        commits.store(0, Ordering::Relaxed);
        (f, commits)
    }

    fn persisted(b: &Bucket) -> Vec<u64> {
        (0..4)
            .map(|vb| b.persisted_seqno(Vbid(vb)).expect("persisted").0)
            .collect()
    }

    #[test]
    fn a_flush_step_commits_whole_vbuckets_round_robin_up_to_its_bound() {
        let (b, commits) = loaded_with_bound(50, 30);
        // 30 items do not reach the bound of 50: a second vbucket joins, then it stops.
        let first = b.flush_step().expect("step");
        assert_eq!(
            (first.vbuckets, first.items_written, first.more),
            (2, 60, true)
        );
        assert_eq!(persisted(&b), [30, 30, 0, 0]);
        // New writes to a flushed vbucket wait for the cursor to come round again.
        b.store(vb0(), StoreOp::Set, doc("late", "v"), Cas(0), now())
            .expect("set");
        let second = b.flush_step().expect("step");
        assert_eq!(
            (second.vbuckets, second.items_written, second.more),
            (2, 60, true)
        );
        assert_eq!(persisted(&b), [30, 30, 30, 30]);
        let third = b.flush_step().expect("step");
        assert_eq!((third.vbuckets, third.items_written), (1, 1));
        assert_eq!(persisted(&b), [31, 30, 30, 30]);
        assert_eq!(commits.load(Ordering::Relaxed), 3);
        // Nothing dirty: a full round, no commit, nothing more to do.
        let idle = b.flush_step().expect("idle step");
        assert_eq!(idle, FlushStats::default());
        assert_eq!(commits.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn flush_writes_a_backlog_in_commits_of_the_bound() {
        let (b, commits) = loaded_with_bound(10, 30);
        let stats = b.flush().expect("flush");
        assert_eq!(
            (stats.vbuckets, stats.items_written, stats.more),
            (4, 120, false)
        );
        assert_eq!(
            commits.load(Ordering::Relaxed),
            4,
            "one vbucket (30 >= 10) per commit"
        );
        assert_eq!(persisted(&b), [30, 30, 30, 30]);

        let (b, commits) = loaded_with_bound(1_000, 30);
        assert_eq!(b.flush().expect("flush").items_written, 120);
        assert_eq!(
            commits.load(Ordering::Relaxed),
            1,
            "under the bound: one group commit"
        );
    }

    #[test]
    fn a_state_change_commits_only_its_own_vbucket() {
        let (b, commits) = loaded_with_bound(1_000, 30);
        b.set_state(Vbid(2), VbState::Replica).expect("replica");
        b.set_state(Vbid(2), VbState::Active).expect("active again");
        assert_eq!(commits.load(Ordering::Relaxed), 1);
        assert_eq!(
            persisted(&b),
            [0, 0, 30, 0],
            "the others' backlog was not waited for"
        );
        b.rollback(Vbid(2), Seqno(40))
            .expect_err("active vbuckets do not roll back");
        b.delete_vbucket(Vbid(3)).expect("delete");
        assert_eq!(commits.load(Ordering::Relaxed), 2);
        assert_eq!(persisted(&b), [0, 0, 30, 0]);
    }

    #[test]
    fn a_failed_commit_loses_nothing_from_memory_and_the_log_refuses_until_reopened() {
        let (b, dir) = with_a_flushed();
        set(&b, "b", "2");
        fail_log_writes(&b);
        let err = b.flush().expect_err("the write fails");
        assert!(
            matches!(
                err,
                EngineError::Storage {
                    during: "flush",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(b.persisted_seqno(vb0()).expect("persisted"), Seqno(1));
        let item = b.get(vb0(), b"b", now()).expect("still in memory");
        assert_eq!(item.value.as_ref(), b"2");
        // Still dirty, so the next flush retries; the log refuses: its tail is unknown.
        let err = b.flush().expect_err("refused");
        let why = std::error::Error::source(&err).map(ToString::to_string);
        assert!(
            why.as_deref()
                .is_some_and(|w| w.contains("until the bucket is reopened")),
            "{why:?}"
        );
        drop(b); // a crash
        let b = reopened_at_the_first_commit(dir.path());
        assert!(matches!(
            b.get(vb0(), b"b", now()),
            Err(EngineError::KeyNotFound { .. })
        ));
    }

    /// A bucket whose first commit holds key "a" at seqno 1.
    fn with_a_flushed() -> (Bucket, tempfile::TempDir) {
        let Fixture { bucket, _dir: dir } = fixture();
        set(&bucket, "a", "1");
        bucket.flush().expect("flush");
        (bucket, dir)
    }

    /// Swaps the log's handle for a read-only one: the next append fails, and so
    /// does cutting the file back.
    fn fail_log_writes(b: &Bucket) {
        let read_only = std::fs::File::open(b.path()).expect("read-only handle");
        lock(&b.flush_lock).log.replace_file_for_test(read_only);
    }

    /// Reopens after a crash; only the first commit (key "a" at seqno 1) is there.
    fn reopened_at_the_first_commit(dir: &Path) -> Bucket {
        let b = Bucket::open(config(dir)).expect("reopen");
        assert_eq!(b.high_seqno(vb0()).expect("high"), Seqno(1));
        assert!(b.get(vb0(), b"a", now()).is_ok());
        b
    }

    /// 3,000 documents of 1 KB: a commit of several write pieces.
    fn set_large_batch(b: &Bucket, tag: &str) {
        for i in 0..3000 {
            set(
                b,
                &format!("{tag}{i:04}"),
                &format!("{tag}{}", "x".repeat(1000)),
            );
        }
    }

    fn has_large_batch(b: &Bucket, tag: &str) -> bool {
        (0..3000).all(|i| {
            b.get(vb0(), format!("{tag}{i:04}").as_bytes(), now())
                .is_ok_and(|it| {
                    it.value.starts_with(tag.as_bytes()) && it.value.len() == 1000 + tag.len()
                })
        })
    }

    /// A warmup knows how many versions each vbucket loads: its key table is sized
    /// once, not grown insert by insert.
    #[test]
    fn warmup_sizes_each_key_table_once() {
        let Fixture {
            bucket: b,
            _dir: dir,
        } = fixture();
        for i in 0..5000 {
            set(&b, &format!("k{i}"), "v");
        }
        assert!(lock(&b.vbs[0]).key_table_grew() > 5);
        b.close().expect("close");
        let b = Bucket::open(config(dir.path())).expect("reopen");
        assert_eq!(lock(&b.vbs[0]).key_table_grew(), 0);
        assert!(b.get(vb0(), b"k4999", now()).is_ok());
    }

    #[test]
    fn a_commit_written_in_pieces_replays_whole_and_a_torn_one_not_at_all() {
        let Fixture {
            bucket: b,
            _dir: dir,
        } = fixture();
        set_large_batch(&b, "a");
        b.flush().expect("flush");
        let first = std::fs::metadata(b.path()).expect("log").len();
        set_large_batch(&b, "b");
        b.flush().expect("flush");
        let second = std::fs::metadata(b.path()).expect("log").len();
        assert!(second - first > 2 * super::super::logstore::WRITE_PIECE as u64);
        let path = b.path().to_path_buf();
        b.close().expect("close");
        let b = Bucket::open(config(dir.path())).expect("reopen");
        assert!(has_large_batch(&b, "a") && has_large_batch(&b, "b"));
        drop(b);
        // A crash after the second commit's pieces but before its COMMIT record:
        // the whole commit is a torn tail.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("log");
        f.set_len(second - 10).expect("cut");
        drop(f);
        let b = Bucket::open(config(dir.path())).expect("reopen");
        assert!(has_large_batch(&b, "a"));
        assert!(matches!(
            b.get(vb0(), b"b0000", now()),
            Err(EngineError::KeyNotFound { .. })
        ));
        // Cut back to the last whole commit, which ends at or after the first batch's.
        let len = std::fs::metadata(&path).expect("log").len();
        assert!(
            first <= len && len < second - 10,
            "{first} <= {len} < {second}"
        );
    }

    #[test]
    fn a_write_piece_that_fails_loses_nothing_from_memory() {
        let (b, dir) = with_a_flushed();
        set_large_batch(&b, "b");
        // The first piece of the commit fails (before its COMMIT record is built).
        fail_log_writes(&b);
        b.flush().expect_err("the write fails");
        assert_eq!(b.persisted_seqno(vb0()).expect("persisted"), Seqno(1));
        assert!(has_large_batch(&b, "b"), "still in memory");
        drop(b); // a crash
        let b = reopened_at_the_first_commit(dir.path());
        assert!(!has_large_batch(&b, "b"));
    }

    #[test]
    fn a_flush_batch_bound_of_zero_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = config(dir.path());
        c.flush_batch_items = 0;
        assert!(matches!(
            Bucket::open(c),
            Err(EngineError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn concurrent_writers_on_different_vbuckets_get_unique_cas_values() {
        let b = std::sync::Arc::new(fixture());
        for vb in 0..4 {
            b.set_state(Vbid(vb), VbState::Active).expect("active");
        }
        let handles: Vec<_> = (0..4u16)
            .map(|vb| {
                let b = std::sync::Arc::clone(&b);
                std::thread::spawn(move || {
                    (0..200)
                        .map(|i| {
                            b.store(
                                Vbid(vb),
                                StoreOp::Set,
                                doc(&format!("k{i}"), "v"),
                                Cas(0),
                                now(),
                            )
                            .expect("set")
                            .cas
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Cas> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("writer thread"))
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 800);
        b.flush().expect("flush");
        assert_eq!(b.stats().items, 800);
    }

    #[test]
    fn delete_vbucket_empties_it_and_makes_it_dead() {
        let b = fixture();
        set(&b, "k", "v");
        b.delete_vbucket(vb0()).expect("delete vb");
        assert_eq!(b.vbucket_state(vb0()).expect("state"), VbState::Dead);
        assert_eq!(b.high_seqno(vb0()).expect("high"), Seqno(0));
        assert!(b.failover_log(vb0()).expect("log").is_empty());
        assert_eq!(b.stats().mem_used, 0);
    }

    #[test]
    fn invalid_configs_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["", "../escape", ".hidden", "a/b"] {
            let mut c = config(dir.path());
            c.name = name.to_owned();
            assert!(
                matches!(Bucket::open(c), Err(EngineError::InvalidConfig { .. })),
                "{name}"
            );
        }
        let mut c = config(dir.path());
        c.num_vbuckets = 0;
        assert!(matches!(
            Bucket::open(c),
            Err(EngineError::InvalidConfig { .. })
        ));
    }
}
