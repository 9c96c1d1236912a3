//! Shared by `bench dcp` and `bench replication`: `conduit node` children on
//! ephemeral ports (separate processes, so each side's peak RSS is its own), a
//! minimal admin HTTP client, a pipelined loader and per-vbucket seqno reads.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use clap::Args;
use kv_client::{Client, ClientConfig, Credentials};
use mcbp::dcp::OpenFlags;
use mcbp::kv::{Feature, Store};
use mcbp::{Cas, Datatype, Message, Opaque, Opcode, Seqno, Vbid};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

use super::vbucket_of;

/// The bucket every node bench creates.
pub(crate) const BUCKET: &str = "bench";
const ADMIN_USER: &str = "admin";
/// Quiet SETs per NOOP-terminated batch of the loader.
const BATCH: u64 = 500;

/// Flags shared by the benches that start two `conduit node` children.
#[derive(Debug, Args, Clone)]
pub(crate) struct LoadArgs {
    /// Documents to load (each one mutation).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) docs: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub(crate) value_size: usize,
    /// vbuckets of the bench bucket.
    #[arg(long, default_value_t = 16)]
    pub(crate) vbuckets: u16,
    /// Loader connections (each sends batches of 500 quiet SETs closed by a NOOP).
    #[arg(long, default_value_t = 4)]
    pub(crate) load_connections: u64,
    /// Offered load, in mutations per second over all loader connections: each
    /// batch waits until the rate allows its last SET. 0 loads as fast as the node
    /// acknowledges (a throughput run); a rate the nodes sustain measures the lag
    /// of the pipeline itself rather than of a growing backlog.
    #[arg(long, default_value_t = 0)]
    pub(crate) rate: u64,
    /// Bound, in seconds, on every wait.
    #[arg(long, default_value_t = 120)]
    pub(crate) timeout: u64,
}

impl LoadArgs {
    pub(crate) fn bound(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }

    /// Key plus value bytes of all documents (what `mb_per_sec` counts).
    pub(crate) fn payload_bytes(&self) -> u64 {
        self.docs * (key(0).len() + self.value_size) as u64
    }

    /// Generous for the engine's per-item overhead; the bench must not hit the quota.
    pub(crate) fn ram_quota_mb(&self) -> u64 {
        (self.docs * (self.value_size as u64 + 256) * 2 / 1_000_000).max(256)
    }
}

/// Adds both nodes' peak RSS to a bench report, with the payload and the larger
/// node's peak per payload byte (issue #12's memory target is at most 1.5).
pub(crate) fn add_peak_rss(
    out: &mut serde_json::Value,
    producer: &NodeChild,
    consumer: &NodeChild,
    payload_bytes: u64,
) -> anyhow::Result<()> {
    let (p, c) = (producer.peak_rss_bytes()?, consumer.peak_rss_bytes()?);
    out["producer_peak_rss_bytes"] = serde_json::json!(p);
    out["consumer_peak_rss_bytes"] = serde_json::json!(c);
    out["payload_bytes"] = serde_json::json!(payload_bytes);
    out["peak_rss_per_payload"] =
        serde_json::json!(super::round3(p.max(c) as f64 / payload_bytes.max(1) as f64));
    Ok(())
}

/// Fixed-length keys, so every mutation carries the same payload.
pub(crate) fn key(i: u64) -> Bytes {
    Bytes::from(format!("bench-{i:010}"))
}

/// A `conduit node` child process on ephemeral ports; killed (and reaped) on drop,
/// so every exit path of a bench, `?` and panics included, stops it.
#[derive(Debug)]
pub(crate) struct NodeChild {
    name: &'static str,
    child: Child,
    dir: tempfile::TempDir,
    pub(crate) kv: SocketAddr,
    admin: SocketAddr,
    password: String,
}

impl Drop for NodeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeChild {
    /// Starts `<this binary> node` on a temporary data directory and waits (bounded)
    /// for its `ports.json`.
    pub(crate) async fn start(name: &'static str, bound: Duration) -> anyhow::Result<NodeChild> {
        let exe = std::env::current_exe().context("locating the conduit binary")?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("conduit-bench-{name}-"))
            .tempdir()?;
        let log = std::fs::File::create(dir.path().join("node.log"))?;
        // One password for both nodes: a replicator authenticates to both with it.
        let password = format!("bench-{}", std::process::id());
        let mut cmd = Command::new(exe);
        cmd.args(["node", "--kv-port", "0", "--admin-port", "0"])
            .args(["--bind", "127.0.0.1", "--admin-user", ADMIN_USER])
            .args(["--admin-password", &password, "--data-dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning node {name}"))?;
        let unset = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut node = NodeChild {
            name,
            child,
            dir,
            kv: unset,
            admin: unset,
            password,
        };
        let ports_file = node.dir.path().join("ports.json");
        let started = Instant::now();
        let ports: serde_json::Value = loop {
            // A half-written file does not parse yet; try again.
            if let Some(v) = std::fs::read_to_string(&ports_file)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
            {
                break v;
            }
            if let Some(status) = node.child.try_wait()? {
                bail!(
                    "node {name} exited ({status}) before listening: {}",
                    node.log_tail()
                );
            }
            if started.elapsed() > bound {
                bail!("node {name} did not write ports.json within {bound:?}");
            }
            sleep(Duration::from_millis(10)).await;
        };
        let port = |k: &str| -> anyhow::Result<SocketAddr> {
            let p = ports[k]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .with_context(|| format!("node {name}: ports.json lacks a valid {k:?}"))?;
            Ok(SocketAddr::from(([127, 0, 0, 1], p)))
        };
        node.kv = port("kv")?;
        node.admin = port("admin")?;
        Ok(node)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    pub(crate) fn credentials(&self) -> Credentials {
        Credentials {
            user: ADMIN_USER.into(),
            password: self.password.clone(),
        }
    }

    /// Peak resident set size (`VmHWM`) in bytes; read it before the guard drops.
    pub(crate) fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .with_context(|| format!("no VmHWM in {path}"))
    }

    /// The node's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds (user + system, all threads) the node has used so far.
    pub(crate) fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds(&self.pid().to_string())
    }

    /// Creates the bench bucket with every vbucket in `state` (admin API).
    pub(crate) async fn create_bucket(&self, load: &LoadArgs, state: &str) -> anyhow::Result<()> {
        let body = serde_json::json!({
            "name": BUCKET,
            "vbuckets": load.vbuckets,
            "ram_quota_mb": load.ram_quota_mb(),
            "initial_state": state,
        });
        let (status, text) = timeout(load.bound(), self.http_post("/buckets", &body.to_string()))
            .await
            .with_context(|| format!("node {}: POST /buckets timed out", self.name))??;
        if status != 201 {
            bail!(
                "node {}: creating bucket {BUCKET}: HTTP {status} {text}",
                self.name
            );
        }
        Ok(())
    }

    /// One admin-API POST (reqwest); returns (status, body).
    async fn http_post(&self, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
        let resp = reqwest::Client::new()
            .post(format!("http://{}{path}", self.admin))
            .basic_auth(ADMIN_USER, Some(&self.password))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    }

    /// An authenticated connection with the bench bucket selected.
    pub(crate) async fn client(&self, bound: Duration) -> anyhow::Result<Client> {
        let cfg = ClientConfig {
            timeout: bound,
            ..ClientConfig::default()
        };
        let mut c = Client::connect(&self.kv.to_string(), cfg).await?;
        c.auth_plain(&self.credentials()).await?;
        c.select_bucket(BUCKET).await?;
        Ok(c)
    }

    /// A DCP connection after HELLO (XATTR, JSON) and DCP_OPEN, taken apart for
    /// splicing: the socket and any bytes read past DCP_OPEN's answer.
    pub(crate) async fn dcp_open(
        &self,
        bound: Duration,
        name: &str,
        flags: OpenFlags,
        value: &[u8],
    ) -> anyhow::Result<(TcpStream, BytesMut)> {
        let mut c = self.client(bound).await?;
        c.hello("conduit-bench", &[Feature::Xattr, Feature::Json])
            .await?;
        c.dcp_open(name, flags, value).await?;
        Ok(c.into_parts())
    }
}

/// The loader's connections, opened ahead so the timed part is only writes (SASL
/// in a debug build takes long).
pub(crate) async fn loaders(node: &NodeChild, a: &LoadArgs) -> anyhow::Result<Vec<Client>> {
    let mut conns = Vec::new();
    for _ in 0..a.load_connections.clamp(1, a.docs.max(1)) {
        conns.push(node.client(a.bound()).await?);
    }
    Ok(conns)
}

/// Loads `docs` documents over the `loaders` connections, each a contiguous key
/// range; `acked` counts the SETs the node has acknowledged (a NOOP answers after
/// its batch).
pub(crate) async fn load(
    loaders: Vec<Client>,
    a: &LoadArgs,
    acked: &Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let conns = loaders.len().max(1) as u64;
    let per_conn = a.docs.div_ceil(conns);
    let value = Bytes::from(vec![b'v'; a.value_size]);
    let pace = Pace {
        start: Instant::now(),
        per_sec: a.rate as f64 / conns as f64,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (c, client) in (0u64..).zip(loaders) {
        let range = (c * per_conn)..((c + 1) * per_conn).min(a.docs);
        let (value, acked, vbuckets) = (value.clone(), Arc::clone(acked), a.vbuckets);
        tasks.spawn(load_range(client, range, value, vbuckets, acked, pace));
    }
    while let Some(r) = tasks.join_next().await {
        r.context("loader task")??;
    }
    Ok(())
}

/// The schedule of one loader connection: `per_sec` mutations a second from
/// `start` (unpaced if not positive).
#[derive(Clone, Copy, Debug)]
struct Pace {
    start: Instant,
    per_sec: f64,
}

impl Pace {
    /// When the connection may have sent `sent` mutations: `None` if unpaced.
    fn due(&self, sent: u64) -> Option<Instant> {
        (self.per_sec > 0.0)
            .then(|| self.start + Duration::from_secs_f64(sent as f64 / self.per_sec))
    }

    /// Waits until the connection may have sent `sent` mutations. A connection
    /// behind its schedule goes on at once and catches up.
    async fn wait(&self, sent: u64) {
        if let Some(due) = self.due(sent) {
            tokio::time::sleep_until(due).await;
        }
    }
}

async fn load_range(
    mut c: Client,
    range: std::ops::Range<u64>,
    value: Bytes,
    vbuckets: u16,
    acked: Arc<AtomicU64>,
    pace: Pace,
) -> anyhow::Result<()> {
    let mut out = BytesMut::new();
    let mut next = range.start;
    while next < range.end {
        let end = (next + BATCH).min(range.end);
        pace.wait(end - range.start).await;
        out.clear();
        for i in next..end {
            let k = key(i);
            Store {
                opcode: Opcode::SetQ,
                vbucket: Vbid(vbucket_of(&k, vbuckets)),
                opaque: Opaque(i as u32),
                cas: Cas(0),
                datatype: Datatype::RAW,
                flags: 0,
                expiry: 0,
                key: k,
                value: value.clone(),
            }
            .encode(&mut out);
        }
        mcbp::BareRequest::new(Opcode::Noop, Vbid(0), Opaque(u32::MAX)).encode(&mut out);
        c.send_bytes(&out).await?;
        // The NOOP answers after every quiet SET before it; a failed SET answers first.
        c.read_frame("NOOP")
            .await
            .map_err(anyhow::Error::from)
            .and_then(|f| {
                if f.is_client_response(Opcode::Noop) && f.status().is_success() {
                    Ok(())
                } else {
                    bail!("a quiet SET failed: {} {}", f.opcode(), f.status())
                }
            })?;
        acked.fetch_add(end - next, Ordering::Relaxed);
        next = end;
    }
    Ok(())
}

/// High seqno per vbucket of the selected bucket (`STAT vbucket-seqno`).
pub(crate) async fn high_seqnos(c: &mut Client) -> anyhow::Result<BTreeMap<u16, u64>> {
    Ok(c.stats("vbucket-seqno")
        .await?
        .into_iter()
        .filter_map(|(k, v)| {
            let vb = k.strip_prefix("vb_")?.strip_suffix(":high_seqno")?;
            Some((vb.parse().ok()?, v.parse().ok()?))
        })
        .collect())
}

/// CPU seconds (user + system, all threads) process `pid` ("self" for this one)
/// has used: fields 14 and 15 of `/proc/<pid>/stat`, in USER_HZ ticks (100 per
/// second on Linux for every architecture's /proc ABI).
pub(crate) fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / 100.0)
        .with_context(|| format!("no utime/stime in {path}"))
}

/// utime + stime from a `/proc/<pid>/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its closing parenthesis.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Sums of the high and the persisted seqnos of every vbucket (`vbucket-seqno`).
pub(crate) async fn seqno_sums(c: &mut Client) -> anyhow::Result<(u64, u64)> {
    let mut high = 0u64;
    let mut persisted = 0u64;
    for (k, v) in c.stats("vbucket-seqno").await? {
        let Some(field) = k.strip_prefix("vb_").and_then(|k| k.split_once(':')) else {
            continue;
        };
        let sum = match field.1 {
            "high_seqno" => &mut high,
            "last_persisted_seqno" => &mut persisted,
            _ => continue,
        };
        *sum += v
            .parse::<u64>()
            .with_context(|| format!("stat {k} = {v:?}"))?;
    }
    Ok((high, persisted))
}

/// Whether `have` reached `want` in every vbucket of `want`.
pub(crate) fn caught_up(have: &BTreeMap<u16, u64>, want: &BTreeMap<u16, u64>) -> bool {
    want.iter()
        .all(|(vb, w)| have.get(vb).is_some_and(|h| h >= w))
}

/// Polls `c` every `every` until its high seqnos reach `want`; `check` may abort the
/// wait (e.g. a splice task that died). Returns when it saw them caught up.
pub(crate) async fn wait_caught_up(
    c: &mut Client,
    want: &BTreeMap<u16, u64>,
    bound: Duration,
    mut check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Instant> {
    let started = Instant::now();
    loop {
        let have = high_seqnos(c).await?;
        if caught_up(&have, want) {
            return Ok(Instant::now());
        }
        check()?;
        if started.elapsed() > bound {
            let (h, w): (u64, u64) = (have.values().sum(), want.values().sum());
            bail!("consumer did not catch up within {bound:?} ({h} of {w} mutations)");
        }
        sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until every vbucket's high seqno is persisted (SEQNO_PERSISTENCE).
pub(crate) async fn wait_persisted(
    c: &mut Client,
    seqnos: &BTreeMap<u16, u64>,
    bound: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    for (&vb, &s) in seqnos.iter().filter(|(_, s)| **s > 0) {
        while !c.seqno_persistence(Vbid(vb), Seqno(s)).await? {
            if started.elapsed() > bound {
                bail!("vb:{vb} seqno {s} not persisted within {bound:?}");
            }
            sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_fields_14_and_15_even_with_a_strange_command_name() {
        let stat = "4242 (tokio rt) (x)) S 1 2 3 4 5 6 7 8 9 10 250 31 0 0 20 0 8";
        assert_eq!(parse_cpu_ticks(stat), Some(281));
        assert_eq!(parse_cpu_ticks("4242 (short) S 1 2"), None);
        let own = cpu_seconds("self").expect("own /proc stat");
        assert!(own >= 0.0);
    }

    /// A paced connection sends each batch when the rate allows its last mutation,
    /// and one behind its schedule goes on at once.
    #[tokio::test(start_paused = true)]
    async fn a_paced_loader_waits_for_its_schedule_and_catches_up_when_late() {
        let start = Instant::now();
        let pace = Pace {
            start,
            per_sec: 1000.0,
        };
        pace.wait(500).await;
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        pace.wait(1000).await;
        assert_eq!(start.elapsed(), Duration::from_millis(1000));
        tokio::time::advance(Duration::from_secs(3)).await;
        let late = Instant::now();
        pace.wait(1500).await;
        assert_eq!(late.elapsed(), Duration::ZERO, "behind schedule: no wait");
        let unpaced = Pace {
            start: Instant::now(),
            per_sec: 0.0,
        };
        assert_eq!(unpaced.due(1_000_000), None);
        let before = Instant::now();
        unpaced.wait(1_000_000).await;
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[test]
    fn keys_have_a_fixed_length() {
        assert_eq!(key(0).len(), key(9_999_999_999).len());
    }

    #[test]
    fn caught_up_needs_every_vbucket_of_the_target() {
        let want = BTreeMap::from([(0, 5), (1, 3)]);
        assert!(caught_up(&BTreeMap::from([(0, 5), (1, 4)]), &want));
        assert!(!caught_up(&BTreeMap::from([(0, 5), (1, 2)]), &want));
        assert!(!caught_up(&BTreeMap::from([(0, 5)]), &want));
    }
}
