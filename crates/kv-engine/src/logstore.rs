//! The durable copy of a bucket: one append-only log file, `<data_dir>/<name>.clog`.
//!
//! Every item version is in memory, so the disk copy is only written (by flushes)
//! and read back on open. A log fits that: a commit is one sequential write and one
//! `fdatasync`, with no index pages to rewrite (the B-tree store this replaced spent
//! most of a flush's CPU copying items into pages and rewriting them).
//!
//! # Format
//!
//! A sequence of records, each `[len u32][crc32 u32][kind u8][body]` (little-endian;
//! `len` counts kind + body, the CRC covers them):
//!
//! | kind | body | meaning on replay |
//! | --- | --- | --- |
//! | `HEADER` | magic, format u64, vbuckets u16 | first record of a file |
//! | `ITEM` | vb u16, seqno u64, item record | a version of a key |
//! | `VB` | vb u16, vbucket record | state, seqnos, snapshot, failover log |
//! | `REMOVE` | vb u16, seqno u64 | the version at seqno is gone (overwritten, purged) |
//! | `TRUNCATE` | vb u16, above u64 | every version above `above` is gone (rollback) |
//! | `COMMIT` | max CAS u64, clean u8 | everything since the last COMMIT is durable |
//!
//! Replay applies records only when their COMMIT is read, so a commit is atomic: a
//! crash in the middle of one (a torn or unsynced tail: short read, bad length, bad
//! CRC) leaves the log at its last COMMIT, and open cuts the tail off there. A
//! record whose CRC holds but whose contents do not decode is corruption, reported.
//! Within a vbucket the highest seqno of a key wins, as in memory.
//!
//! # Compaction
//!
//! Overwrites leave dead versions behind. When the file exceeds twice the bucket's
//! memory use (plus a floor), the next flush writes a fresh log instead of
//! appending: every vbucket's current versions and record, taken vbucket by vbucket
//! under its lock (with that vbucket's dirty state, so the new log is complete), into
//! `<name>.clog.compacting`; then `fdatasync`, rename over the log, sync the
//! directory. A crash before the rename leaves the old log intact (open deletes the
//! leftover); after it, the new log is complete.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use mcbp::{Seqno, Vbid};

use crate::ops::FlushStats;
use crate::store;
use crate::vbucket::{FlushBatch, Stored, VbMeta};

const HEADER: u8 = 1;
const ITEM: u8 = 2;
const VB: u8 = 3;
const REMOVE: u8 = 4;
const TRUNCATE: u8 = 5;
const COMMIT: u8 = 6;

const MAGIC: &[u8; 8] = b"cndtlog\0";
pub(crate) const FORMAT_VERSION: u64 = 2;
/// Record header: length and CRC.
const FRAME: usize = 8;
/// No valid record is longer (the largest item is 20 MiB); a longer length is a
/// torn tail, not an allocation request.
const MAX_RECORD: usize = 64 * 1024 * 1024;
/// A commit buffer larger than this is released after the commit.
const KEEP_BUFFER: usize = 64 * 1024 * 1024;
/// A commit is written in pieces of about this size as it is built, so its buffer
/// stays small whatever the batch (the COMMIT record makes it atomic, not a single
/// write).
pub(crate) const WRITE_PIECE: usize = 1024 * 1024;

/// The log file of bucket `name` in `dir`.
pub(crate) fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.clog"))
}

fn compacting_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".compacting");
    PathBuf::from(p)
}

/// Why opening a log failed.
#[derive(Debug)]
pub(crate) enum OpenError {
    Io(&'static str, io::Error),
    /// Valid records that do not decode, or a missing or foreign header.
    Corrupt(String),
    /// The log was written for another vbucket count.
    VbucketCount(u16),
}

/// What replaying a log recovered.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// No log existed: a new bucket.
    pub(crate) fresh: bool,
    /// The last commit was a clean shutdown's.
    pub(crate) clean: bool,
    pub(crate) max_cas: u64,
    /// The last record of each vbucket that has one.
    pub(crate) vbs: Vec<Option<VbMeta>>,
    /// Each vbucket's versions by seqno (several per key possible: the caller keeps
    /// the newest).
    pub(crate) items: Vec<std::collections::BTreeMap<u64, Stored>>,
    /// Bytes cut off the end: a commit that never completed.
    pub(crate) torn_bytes: u64,
}

/// An open log, positioned for appends.
#[derive(Debug)]
pub(crate) struct LogStore {
    path: PathBuf,
    file: File,
    /// Bytes of committed records; appends go here.
    len: u64,
    /// A failed write that could not be undone, or a failed sync: nothing more may
    /// be appended (the file's tail is unknown) until the bucket is reopened.
    broken: Option<String>,
    /// The commit being built.
    buf: Vec<u8>,
    /// Compaction waits until the log holds this much beyond twice the live data.
    compact_floor: u64,
}

/// Starts a record of `kind` in `buf`; [`end_record`] fills in its frame.
fn begin_record(buf: &mut Vec<u8>, kind: u8) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME]);
    buf.push(kind);
    start
}

fn end_record(buf: &mut [u8], start: usize) {
    let body = &buf[start + FRAME..];
    let len = u32::try_from(body.len()).expect("records are far below 4 GiB");
    let crc = crc32fast::hash(body);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + FRAME].copy_from_slice(&crc.to_le_bytes());
}

fn put_header(buf: &mut Vec<u8>, num_vbuckets: u16) {
    let r = begin_record(buf, HEADER);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    buf.extend_from_slice(&num_vbuckets.to_le_bytes());
    end_record(buf, r);
}

fn put_item(buf: &mut Vec<u8>, vb: Vbid, stored: &Stored) {
    let r = begin_record(buf, ITEM);
    buf.extend_from_slice(&vb.0.to_le_bytes());
    buf.extend_from_slice(&stored.by_seqno().0.to_le_bytes());
    store::encode_item(stored, buf);
    end_record(buf, r);
}

fn put_vb(buf: &mut Vec<u8>, vb: Vbid, meta: &VbMeta) {
    let r = begin_record(buf, VB);
    buf.extend_from_slice(&vb.0.to_le_bytes());
    store::encode_vb(meta, buf);
    end_record(buf, r);
}

fn put_seqno(buf: &mut Vec<u8>, kind: u8, vb: Vbid, seqno: Seqno) {
    let r = begin_record(buf, kind);
    buf.extend_from_slice(&vb.0.to_le_bytes());
    buf.extend_from_slice(&seqno.0.to_le_bytes());
    end_record(buf, r);
}

fn put_commit(buf: &mut Vec<u8>, max_cas: u64, clean: bool) {
    let r = begin_record(buf, COMMIT);
    buf.extend_from_slice(&max_cas.to_le_bytes());
    buf.push(u8::from(clean));
    end_record(buf, r);
}

/// Writes the records of `batches` to `buf`, handing it to `spill` after every
/// item record (which writes it out once it is large); returns (items written,
/// removed).
fn put_batches(
    buf: &mut Vec<u8>,
    batches: &[FlushBatch],
    spill: &mut dyn FnMut(&mut Vec<u8>) -> io::Result<()>,
) -> io::Result<(usize, usize)> {
    let (mut written, mut removed) = (0, 0);
    for b in batches {
        if let Some(above) = b.truncate_above {
            put_seqno(buf, TRUNCATE, b.vb, above);
        }
        for seqno in &b.deletes {
            put_seqno(buf, REMOVE, b.vb, *seqno);
        }
        for stored in &b.puts {
            put_item(buf, b.vb, stored);
            spill(buf)?;
        }
        put_vb(buf, b.vb, &b.meta);
        written += b.puts.len();
        removed += b.deletes.len();
    }
    Ok((written, removed))
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

impl LogStore {
    /// Opens (or creates) the log of a bucket with `num_vbuckets` vbuckets and
    /// replays it.
    pub(crate) fn open(
        path: PathBuf,
        num_vbuckets: u16,
        compact_floor: u64,
    ) -> Result<(LogStore, Recovered), OpenError> {
        let n = usize::from(num_vbuckets);
        // A compaction that did not reach its rename: the log itself is intact.
        match std::fs::remove_file(compacting_path(&path)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(OpenError::Io("remove leftover compaction", e)),
        }
        let mut rec = Recovered {
            vbs: vec![None; n],
            items: vec![std::collections::BTreeMap::new(); n],
            ..Recovered::default()
        };
        if !path.exists() {
            // A new log is an empty compaction: written aside, then renamed.
            let (file, len) = Compaction::start(&path, num_vbuckets)
                .and_then(|c| c.finish(&path, 0, || {}))
                .and_then(|done| sync_dir(&path).map(|()| done))
                .map_err(|e| OpenError::Io("create", e))?;
            rec.fresh = true;
            return Ok((LogStore::new(path, file, len, compact_floor), rec));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| OpenError::Io("open", e))?;
        let file_len = file.metadata().map_err(|e| OpenError::Io("open", e))?.len();
        let valid = replay(&file, num_vbuckets, &mut rec)?;
        if valid < file_len {
            file.set_len(valid)
                .and_then(|()| file.sync_data())
                .map_err(|e| OpenError::Io("cut the torn tail", e))?;
            rec.torn_bytes = file_len - valid;
        }
        Ok((LogStore::new(path, file, valid, compact_floor), rec))
    }

    fn new(path: PathBuf, file: File, len: u64, compact_floor: u64) -> LogStore {
        LogStore {
            path,
            file,
            len,
            broken: None,
            buf: Vec::new(),
            compact_floor,
        }
    }

    /// Swaps the file handle (tests: a read-only handle makes every write fail).
    #[cfg(test)]
    pub(crate) fn replace_file_for_test(&mut self, file: File) {
        self.file = file;
    }

    /// Bytes of the log.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Whether the log is large enough, against `live_bytes` of current data, to be
    /// rewritten by the next flush.
    pub(crate) fn wants_compaction(&self, live_bytes: u64) -> bool {
        self.len
            > live_bytes
                .saturating_mul(2)
                .saturating_add(self.compact_floor)
    }

    fn check(&self) -> io::Result<()> {
        match &self.broken {
            None => Ok(()),
            Some(why) => Err(io::Error::other(format!(
                "the log is unusable until the bucket is reopened: {why}"
            ))),
        }
    }

    /// Appends `batches` (and vbucket records for `metas`) as one commit and syncs.
    /// On failure the file is cut back to the last commit; if even that fails the
    /// store refuses further commits.
    pub(crate) fn commit(
        &mut self,
        batches: &[FlushBatch],
        metas: &[(Vbid, VbMeta)],
        max_cas: u64,
        clean: bool,
        before_sync: impl FnOnce(),
    ) -> io::Result<FlushStats> {
        self.check()?;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        // Pieces of the commit are written after the log's end as it is built;
        // until the COMMIT record is written and synced they are a torn tail.
        let mut end = self.len;
        let file = &self.file;
        let mut spill = |buf: &mut Vec<u8>| -> io::Result<()> {
            if buf.len() >= WRITE_PIECE {
                file.write_all_at(buf, end)?;
                end += buf.len() as u64;
                buf.clear();
            }
            Ok(())
        };
        let built = put_batches(&mut buf, batches, &mut spill);
        let res = match built {
            Ok(counts) => {
                for (vb, meta) in metas {
                    put_vb(&mut buf, *vb, meta);
                }
                put_commit(&mut buf, max_cas, clean);
                self.append(end, &buf, before_sync).map(|()| counts)
            }
            Err(e) => Err(self.cut_back(e)),
        };
        if buf.capacity() <= KEEP_BUFFER {
            self.buf = buf;
        }
        let (items_written, items_removed) = res?;
        Ok(FlushStats {
            vbuckets: batches.len(),
            items_written,
            items_removed,
            more: false,
        })
    }

    /// Cuts the file back to the last commit after a failed write; if even that
    /// fails, the store refuses further commits.
    fn cut_back(&mut self, e: io::Error) -> io::Error {
        if let Err(undo) = self.file.set_len(self.len) {
            self.broken = Some(format!(
                "write failed ({e}) and could not be undone ({undo})"
            ));
        }
        e
    }

    /// Writes the rest of a commit at `at` (its earlier pieces end there), then
    /// syncs; on success the log ends after it.
    fn append(&mut self, at: u64, bytes: &[u8], before_sync: impl FnOnce()) -> io::Result<()> {
        if let Err(e) = self.file.write_all_at(bytes, at) {
            return Err(self.cut_back(e));
        }
        before_sync();
        if let Err(e) = self.file.sync_data() {
            // After a failed sync the kernel may have dropped the dirty pages: what
            // the file holds is unknown.
            self.broken = Some(format!("sync failed: {e}"));
            return Err(e);
        }
        self.len = at + bytes.len() as u64;
        Ok(())
    }

    /// Starts a compaction: a fresh log written to a side file by the returned
    /// writer, then swapped in by [`LogStore::finish_compaction`].
    pub(crate) fn compaction(&self, num_vbuckets: u16) -> io::Result<Compaction> {
        self.check()?;
        Compaction::start(&self.path, num_vbuckets)
    }

    /// Makes the compacted log the log.
    pub(crate) fn finish_compaction(
        &mut self,
        c: Compaction,
        max_cas: u64,
        before_sync: impl FnOnce(),
    ) -> io::Result<()> {
        let (file, len) = c.finish(&self.path, max_cas, before_sync)?;
        // The rename is done: from here the new log is the log, whatever happens.
        self.file = file;
        self.len = len;
        if let Err(e) = sync_dir(&self.path) {
            self.broken = Some(format!("syncing the directory after compaction: {e}"));
            return Err(e);
        }
        Ok(())
    }
}

/// A fresh log being written beside the log (`<log>.compacting`): by a compaction,
/// or when a bucket's log is created.
#[derive(Debug)]
pub(crate) struct Compaction {
    tmp: PathBuf,
    file: File,
    /// Records not yet written (drained to the file every [`WRITE_PIECE`]).
    buf: Vec<u8>,
    len: u64,
}

impl Compaction {
    /// Creates the side file of the log at `path` and writes the header.
    fn start(path: &Path, num_vbuckets: u16) -> io::Result<Compaction> {
        let tmp = compacting_path(path);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&tmp)?;
        let mut c = Compaction {
            tmp,
            file,
            buf: Vec::new(),
            len: 0,
        };
        put_header(&mut c.buf, num_vbuckets);
        Ok(c)
    }

    /// Adds one vbucket: its current versions and its record.
    pub(crate) fn add_vbucket(
        &mut self,
        vb: Vbid,
        versions: &[Stored],
        meta: &VbMeta,
    ) -> io::Result<()> {
        for stored in versions {
            put_item(&mut self.buf, vb, stored);
            if self.buf.len() >= WRITE_PIECE {
                self.drain()?;
            }
        }
        put_vb(&mut self.buf, vb, meta);
        Ok(())
    }

    fn drain(&mut self) -> io::Result<()> {
        self.file.write_all(&self.buf)?;
        self.len += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Commits, syncs and renames the side file over the log at `path`; returns the
    /// new log's handle and length. On failure the side file is removed.
    fn finish(
        mut self,
        path: &Path,
        max_cas: u64,
        before_sync: impl FnOnce(),
    ) -> io::Result<(File, u64)> {
        put_commit(&mut self.buf, max_cas, false);
        let done = self.drain().and_then(|()| {
            before_sync();
            self.file.sync_data()?;
            std::fs::rename(&self.tmp, path)
        });
        match done {
            Ok(()) => Ok((self.file, self.len)),
            Err(e) => {
                self.abandon();
                Err(e)
            }
        }
    }

    /// Gives up: removes the side file.
    pub(crate) fn abandon(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// One decoded record.
enum Op {
    Item(Vbid, Stored),
    Vb(Vbid, VbMeta),
    Remove(Vbid, Seqno),
    Truncate(Vbid, Seqno),
}

/// Reads the log, applying each commit to `rec`; returns the length of the valid
/// prefix (up to the end of the last COMMIT).
fn replay(file: &File, num_vbuckets: u16, rec: &mut Recovered) -> Result<u64, OpenError> {
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut pos = 0u64;
    let mut valid = 0u64;
    let mut pending: Vec<Op> = Vec::new();
    let mut body = Vec::new();
    let mut header_seen = false;
    loop {
        let mut frame = [0u8; FRAME];
        if !read_full(&mut r, &mut frame).map_err(|e| OpenError::Io("read", e))? {
            break;
        }
        let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(frame[4..].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_RECORD {
            break;
        }
        body.resize(len, 0);
        if !read_full(&mut r, &mut body).map_err(|e| OpenError::Io("read", e))? {
            break;
        }
        if crc32fast::hash(&body) != crc {
            break;
        }
        pos += (FRAME + len) as u64;
        let at = pos;
        let corrupt =
            |what: &str| OpenError::Corrupt(format!("{what} (record ending at byte {at})"));
        let (kind, rest) = (body[0], &body[1..]);
        if !header_seen {
            if kind != HEADER {
                return Err(corrupt("the log does not start with a header"));
            }
            let magic_ok = rest.get(..8) == Some(MAGIC.as_slice());
            let format = rest
                .get(8..16)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
            let vbs = rest
                .get(16..18)
                .map(|b| u16::from_le_bytes(b.try_into().expect("2 bytes")));
            match (magic_ok, format, vbs) {
                (true, Some(FORMAT_VERSION), Some(v)) if v == num_vbuckets => {}
                (true, Some(FORMAT_VERSION), Some(v)) => return Err(OpenError::VbucketCount(v)),
                (true, Some(f), _) => return Err(corrupt(&format!("format version {f}"))),
                _ => return Err(corrupt("bad header")),
            }
            header_seen = true;
            valid = pos;
            continue;
        }
        let vb = || -> Result<Vbid, OpenError> {
            let raw = rest
                .get(..2)
                .map(|b| u16::from_le_bytes(b.try_into().expect("2 bytes")));
            raw.and_then(|raw| store::vbid_in_range(raw, num_vbuckets))
                .ok_or_else(|| corrupt("vbucket out of range"))
        };
        let seqno = || {
            rest.get(2..10)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        };
        match kind {
            ITEM => {
                let vb = vb()?;
                let seqno = seqno().ok_or_else(|| corrupt("short item record"))?;
                let stored = store::decode_item(seqno, &rest[10..])
                    .ok_or_else(|| corrupt(&format!("item record {vb} seqno {seqno}")))?;
                pending.push(Op::Item(vb, stored));
            }
            VB => {
                let vb = vb()?;
                let meta = store::decode_vb(&rest[2..])
                    .ok_or_else(|| corrupt(&format!("vbucket record of {vb}")))?;
                pending.push(Op::Vb(vb, meta));
            }
            REMOVE | TRUNCATE => {
                let vb = vb()?;
                let s = Seqno(
                    seqno()
                        .filter(|_| rest.len() == 10)
                        .ok_or_else(|| corrupt("short record"))?,
                );
                pending.push(if kind == REMOVE {
                    Op::Remove(vb, s)
                } else {
                    Op::Truncate(vb, s)
                });
            }
            COMMIT => {
                if rest.len() != 9 {
                    return Err(corrupt("bad commit record"));
                }
                rec.max_cas = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
                rec.clean = rest[8] == 1;
                for op in pending.drain(..) {
                    apply(rec, op);
                }
                valid = pos;
            }
            other => return Err(corrupt(&format!("unknown record kind {other}"))),
        }
    }
    if !header_seen {
        return Err(OpenError::Corrupt("the log has no valid header".into()));
    }
    Ok(valid)
}

fn apply(rec: &mut Recovered, op: Op) {
    match op {
        Op::Item(vb, stored) => {
            rec.items[usize::from(vb.0)].insert(stored.by_seqno().0, stored);
        }
        Op::Vb(vb, meta) => rec.vbs[usize::from(vb.0)] = Some(meta),
        Op::Remove(vb, s) => {
            rec.items[usize::from(vb.0)].remove(&s.0);
        }
        Op::Truncate(vb, above) => {
            let items = &mut rec.items[usize::from(vb.0)];
            if let Some(from) = above.0.checked_add(1) {
                drop(items.split_off(&from));
            }
        }
    }
}

/// Fills `buf`; `false` on a clean or torn end of file.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match r.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}
