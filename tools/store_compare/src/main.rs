//! store_compare: the engine's persistence workload against Conduit's append-only
//! log, redb and fjall (issue #12 item 3). See README.md.

use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use kv_engine::{Bucket, BucketConfig, Document, StoreOp, UnixTime};
use mcbp::{Cas, Seqno, VbState, Vbid};
use redb::{ReadableDatabase, ReadableTable};
use serde_json::{json, Value};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const VBUCKETS: u16 = 16;
/// Versions per durable commit (the engine's `flush_batch_items`).
const COMMIT: usize = 50_000;
const VALUE: usize = 256;

fn key(i: u64) -> Vec<u8> {
    format!("bench-{i:010}").into_bytes()
}

fn value(i: u64, pass: u64) -> Vec<u8> {
    let mut x = (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ pass;
    (0..VALUE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Bytes the process has sent to the block layer so far.
fn write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| {
                    l.strip_prefix("write_bytes: ")
                        .map(|v| v.trim().parse().ok())
                })
                .flatten()
        })
        .unwrap_or(0)
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    };
    rd.filter_map(Result::ok)
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_size(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

fn sync_dir(p: &Path) {
    let _ = std::fs::File::open(p).and_then(|f| f.sync_all());
}

/// What every run reports.
struct Report {
    store: &'static str,
    docs: u64,
    load_s: f64,
    overwrite_s: f64,
    written: u64,
    disk_bytes: u64,
    reopen_s: f64,
    backfill_s: f64,
    read_back: u64,
}

impl Report {
    fn json(&self) -> Value {
        let logical = (2 * self.docs * (16 + VALUE as u64)) as f64;
        let rate = |n: u64, s: f64| (n as f64 / s.max(1e-9)).round() as u64;
        json!({
            "store": self.store,
            "docs": self.docs,
            "load_durable_per_sec": rate(self.docs, self.load_s),
            "overwrite_durable_per_sec": rate(self.docs, self.overwrite_s),
            "write_amplification": (self.written as f64 / logical * 100.0).round() / 100.0,
            "disk_bytes_after": self.disk_bytes,
            "space_per_payload": (self.disk_bytes as f64 / (logical / 2.0) * 100.0).round() / 100.0,
            "reopen_read_all_s": (self.reopen_s * 1000.0).round() / 1000.0,
            "reopen_docs_per_sec": rate(self.read_back, self.reopen_s),
            "backfill_by_seqno_per_sec": rate(self.read_back, self.backfill_s),
        })
    }
}

// ---- the engine's log ----

fn run_log(dir: &Path, docs: u64) -> Res<Report> {
    let config = || {
        let mut c = BucketConfig::new("b", dir);
        c.num_vbuckets = VBUCKETS;
        c.quota_bytes = 64 << 30;
        c
    };
    let bucket = Bucket::open(config())?;
    for vb in 0..VBUCKETS {
        bucket.set_state(Vbid(vb), VbState::Active)?;
    }
    let now = UnixTime::from_secs(1_800_000_000);
    let w0 = write_bytes();
    let phase = |pass: u64| -> Res<f64> {
        // The writes are in memory; what is timed is making them durable (the
        // flusher's work: commits of at most COMMIT versions each).
        for i in 0..docs {
            let doc = Document {
                key: Bytes::from(key(i)),
                value: Bytes::from(value(i, pass)),
                flags: 0,
                expiry: 0,
                datatype: 0,
            };
            bucket.store(
                Vbid((i % u64::from(VBUCKETS)) as u16),
                StoreOp::Set,
                doc,
                Cas(0),
                now,
            )?;
        }
        let t = Instant::now();
        bucket.flush()?;
        Ok(t.elapsed().as_secs_f64())
    };
    let (load_s, overwrite_s) = (phase(0)?, phase(1)?);
    bucket.close()?;
    let reopen = || Ok(Bucket::open(config())?);
    let scan = |bucket: &Bucket| -> Res<u64> {
        let mut read_back = 0u64;
        for vb in 0..VBUCKETS {
            let mut from = Seqno(0);
            loop {
                let items = bucket.items_since(Vbid(vb), from, 1024)?;
                let Some(last) = items.last() else { break };
                from = last.by_seqno;
                read_back += items.len() as u64;
            }
        }
        Ok(read_back)
    };
    finish("log", docs, dir, w0, (load_s, overwrite_s), reopen, scan)
}

/// The rest of a run once the written store is closed: bytes written and on disk,
/// then the timed reopen (with whatever reading a restart needs) and the timed
/// read of every vbucket by seqno.
fn finish<S>(
    store: &'static str,
    docs: u64,
    dir: &Path,
    w0: u64,
    (load_s, overwrite_s): (f64, f64),
    reopen: impl FnOnce() -> Res<S>,
    scan: impl FnOnce(&S) -> Res<u64>,
) -> Res<Report> {
    sync_dir(dir);
    let written = write_bytes() - w0;
    let disk_bytes = dir_size(dir);
    let t = Instant::now();
    let opened = reopen()?;
    let reopen_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let read_back = scan(&opened)?;
    let backfill_s = t.elapsed().as_secs_f64();
    Ok(Report {
        store,
        docs,
        load_s,
        overwrite_s,
        written,
        disk_bytes,
        reopen_s,
        backfill_s,
        read_back,
    })
}

// ---- a (vbucket, seqno)-keyed store: redb or fjall ----

/// A record as the log stores it: metadata, then key and value.
fn record(k: &[u8], v: &[u8], seqno: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(27 + k.len() + v.len());
    r.extend_from_slice(&seqno.to_le_bytes()); // cas
    r.extend_from_slice(&1u64.to_le_bytes()); // rev
    r.extend_from_slice(&0u32.to_le_bytes()); // flags
    r.extend_from_slice(&0u32.to_le_bytes()); // expiry
    r.push(0); // datatype
    r.extend_from_slice(&(k.len() as u16).to_le_bytes());
    r.extend_from_slice(k);
    r.extend_from_slice(v);
    r
}

/// Decodes a record into key and value (what a restart must rebuild).
fn decode(r: &[u8]) -> Option<(Bytes, Bytes)> {
    let kl = usize::from(u16::from_le_bytes([*r.get(25)?, *r.get(26)?]));
    let key = r.get(27..27 + kl)?;
    Some((
        Bytes::copy_from_slice(key),
        Bytes::copy_from_slice(r.get(27 + kl..)?),
    ))
}

fn seqno_key(vb: u16, seqno: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(&vb.to_be_bytes());
    k[2..].copy_from_slice(&seqno.to_be_bytes());
    k
}

trait KvStore {
    /// Writes one durable commit.
    fn commit(&mut self, puts: &[([u8; 10], Vec<u8>)], removes: &[[u8; 10]]) -> Res<()>;
    /// Every record, decoded.
    fn read_all(&self) -> Res<Vec<(Bytes, Bytes)>>;
    /// One vbucket's records in seqno order; returns how many.
    fn scan_vb(&self, vb: u16) -> Res<u64>;
}

fn run_kv<S: KvStore>(
    name: &'static str,
    dir: &Path,
    docs: u64,
    open: impl Fn(&Path) -> Res<S>,
) -> Res<Report> {
    let mut store = open(dir)?;
    let w0 = write_bytes();
    let mut high = [0u64; VBUCKETS as usize];
    let mut current: Vec<u64> = vec![0; docs as usize];
    let mut phase = |pass: u64, store: &mut S| -> Res<f64> {
        let t = Instant::now();
        let (mut puts, mut removes) = (Vec::with_capacity(COMMIT), Vec::new());
        for i in 0..docs {
            let vb = (i % u64::from(VBUCKETS)) as u16;
            high[vb as usize] += 1;
            let s = high[vb as usize];
            let old = std::mem::replace(&mut current[i as usize], s);
            if old != 0 {
                removes.push(seqno_key(vb, old));
            }
            puts.push((seqno_key(vb, s), record(&key(i), &value(i, pass), s)));
            if puts.len() == COMMIT {
                store.commit(&puts, &removes)?;
                puts.clear();
                removes.clear();
            }
        }
        store.commit(&puts, &removes)?;
        Ok(t.elapsed().as_secs_f64())
    };
    let (load_s, overwrite_s) = (phase(0, &mut store)?, phase(1, &mut store)?);
    drop(store);
    // A restart reads every record back.
    let reopen = || -> Res<(S, u64)> {
        let store = open(dir)?;
        let all = store.read_all()?.len() as u64;
        Ok((store, all))
    };
    let scan = |(store, all): &(S, u64)| -> Res<u64> {
        let mut scanned = 0;
        for vb in 0..VBUCKETS {
            scanned += store.scan_vb(vb)?;
        }
        assert_eq!(scanned, *all, "{name}: a scan by seqno sees every version");
        Ok(scanned)
    };
    finish(name, docs, dir, w0, (load_s, overwrite_s), reopen, scan)
}

// redb

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("items");

struct Redb(redb::Database);

fn open_redb(dir: &Path) -> Res<Redb> {
    std::fs::create_dir_all(dir)?;
    Ok(Redb(redb::Database::create(dir.join("items.redb"))?))
}

impl KvStore for Redb {
    fn commit(&mut self, puts: &[([u8; 10], Vec<u8>)], removes: &[[u8; 10]]) -> Res<()> {
        let tx = self.0.begin_write()?;
        {
            let mut t = tx.open_table(TABLE)?;
            for k in removes {
                t.remove(&k[..])?;
            }
            for (k, v) in puts {
                t.insert(&k[..], &v[..])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn read_all(&self) -> Res<Vec<(Bytes, Bytes)>> {
        let tx = self.0.begin_read()?;
        let t = tx.open_table(TABLE)?;
        let mut out = Vec::new();
        for kv in t.iter()? {
            let (_, v) = kv?;
            out.push(decode(v.value()).ok_or("bad record")?);
        }
        Ok(out)
    }

    fn scan_vb(&self, vb: u16) -> Res<u64> {
        let tx = self.0.begin_read()?;
        let t = tx.open_table(TABLE)?;
        let (lo, hi) = (seqno_key(vb, 0), seqno_key(vb, u64::MAX));
        let mut n = 0;
        for kv in t.range(&lo[..]..=&hi[..])? {
            let (_, v) = kv?;
            n += u64::from(!v.value().is_empty());
        }
        Ok(n)
    }
}

// fjall

struct Fjall {
    keyspace: fjall::Keyspace,
    items: fjall::PartitionHandle,
}

fn open_fjall(dir: &Path) -> Res<Fjall> {
    let keyspace = fjall::Config::new(dir).open()?;
    let items = keyspace.open_partition("items", fjall::PartitionCreateOptions::default())?;
    Ok(Fjall { keyspace, items })
}

impl KvStore for Fjall {
    fn commit(&mut self, puts: &[([u8; 10], Vec<u8>)], removes: &[[u8; 10]]) -> Res<()> {
        let mut b = self.keyspace.batch();
        for k in removes {
            b.remove(&self.items, k);
        }
        for (k, v) in puts {
            b.insert(&self.items, k, v);
        }
        b.commit()?;
        self.keyspace.persist(fjall::PersistMode::SyncAll)?;
        Ok(())
    }

    fn read_all(&self) -> Res<Vec<(Bytes, Bytes)>> {
        let mut out = Vec::new();
        for kv in self.items.iter() {
            let (_, v) = kv?;
            out.push(decode(&v).ok_or("bad record")?);
        }
        Ok(out)
    }

    fn scan_vb(&self, vb: u16) -> Res<u64> {
        let (lo, hi) = (seqno_key(vb, 0), seqno_key(vb, u64::MAX));
        let mut n = 0;
        for kv in self.items.range(lo..=hi) {
            let (_, v) = kv?;
            n += u64::from(!v.is_empty());
        }
        Ok(n)
    }
}

fn main() -> Res<()> {
    let mut docs = 1_000_000u64;
    let mut runs = 1u32;
    let mut stores = vec!["log".to_string(), "redb".to_string(), "fjall".to_string()];
    let mut base = std::env::temp_dir();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--docs" => docs = val()?.parse()?,
            "--runs" => runs = val()?.parse()?,
            "--stores" => stores = val()?.split(',').map(String::from).collect(),
            "--dir" => base = PathBuf::from(val()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    for run in 1..=runs {
        for s in &stores {
            let dir = base.join(format!("store_compare-{}-{s}-{run}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            let report = match s.as_str() {
                "log" => run_log(&dir, docs)?,
                "redb" => run_kv("redb", &dir, docs, open_redb)?,
                "fjall" => run_kv("fjall", &dir, docs, open_fjall)?,
                other => return Err(format!("unknown store {other}").into()),
            };
            let mut j = report.json();
            j["run"] = json!(run);
            println!("{j}");
            std::fs::remove_dir_all(&dir)?;
        }
    }
    Ok(())
}
