//! Test-only helpers shared by Conduit's crates, and the only place they live:
//!
//! - [`http`]: admin-API calls through a real HTTP client (reqwest);
//! - [`node::TestNode`]: the in-process node fixture (a real node on `127.0.0.1:0`);
//! - [`NodeProcess`]: a `conduit node` child process on ephemeral ports;
//! - [`fake`]: the scripted fake peer (a fake KV node the test drives frame by frame);
//! - [`tap::Tap`]: the frame tap (log, and optionally cut, a node's conversation);
//! - [`wait_until`]/[`wait_for`]: bounded condition waits;
//! - tool discovery for interoperability tests.
//!
//! Never a dependency of non-test code.

#![warn(missing_docs)]

pub mod fake;
pub mod node;
pub mod tap;
pub mod wait;

pub use node::TestNode;
pub use wait::{wait_for, wait_until};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Bound on every wait in tests: only to catch hangs.
pub const BOUND: Duration = Duration::from_secs(30);

/// One admin-API request through a real HTTP client (reqwest); returns (status,
/// body). Bounded by [`BOUND`].
///
/// # Errors
/// Connection failures and timeouts.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let client = reqwest::Client::builder().timeout(BOUND).build()?;
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let mut req = client.request(method, format!("http://{addr}{path}"));
    if let Some((u, p)) = auth {
        req = req.basic_auth(u, Some(p));
    }
    if let Some(b) = body {
        req = req
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}

/// One admin-API call that must answer `want` (the bound comes from [`http`]);
/// returns the body.
///
/// # Errors
/// Transport failures and timeouts, or another status (with the body in the
/// message).
pub async fn admin_call(
    addr: SocketAddr,
    auth: (&str, &str),
    method: &str,
    path: &str,
    body: Option<&str>,
    want: u16,
) -> anyhow::Result<String> {
    let (status, text) = http(addr, method, path, Some(auth), body).await?;
    anyhow::ensure!(
        status == want,
        "{method} {path}: HTTP {status} (wanted {want}): {text}"
    );
    Ok(text)
}

/// A `conduit node` child process on ephemeral ports; killed on drop.
#[derive(Debug)]
pub struct NodeProcess {
    child: Child,
    /// Its data directory.
    pub dir: tempfile::TempDir,
    /// KV address.
    pub kv: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// The `admin` user's password.
    pub password: String,
}

impl NodeProcess {
    /// Starts `binary node --data-dir <tmp> --kv-port 0 --admin-port 0 --bind 127.0.0.1
    /// --admin-user admin --admin-password <pw> <extra…>` and waits for `ports.json`.
    ///
    /// # Errors
    /// The process cannot start or never writes its ports.
    pub fn start(
        binary: &Path,
        admin_password: &str,
        extra: &[&str],
    ) -> anyhow::Result<NodeProcess> {
        NodeProcess::start_in(tempfile::tempdir()?, binary, admin_password, extra)
    }

    /// Like [`NodeProcess::start`] on an existing data directory (restart tests).
    ///
    /// # Errors
    /// The process cannot start or never writes its ports.
    pub fn start_in(
        dir: tempfile::TempDir,
        binary: &Path,
        admin_password: &str,
        extra: &[&str],
    ) -> anyhow::Result<NodeProcess> {
        NodeProcess::start_on(dir, binary, admin_password, (0, 0), extra)
    }

    /// Like [`NodeProcess::start_in`] on fixed `(kv, admin)` ports (0 picks one): a
    /// cluster member restarts where the cluster knows it.
    ///
    /// # Errors
    /// The process cannot start or never writes its ports.
    pub fn start_on(
        dir: tempfile::TempDir,
        binary: &Path,
        admin_password: &str,
        (kv_port, admin_port): (u16, u16),
        extra: &[&str],
    ) -> anyhow::Result<NodeProcess> {
        let _ = std::fs::remove_file(dir.path().join("ports.json"));
        let (kv_port, admin_port) = (kv_port.to_string(), admin_port.to_string());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("node.log"))?;
        let child = Command::new(binary)
            .args([
                "node",
                "--kv-port",
                &kv_port,
                "--admin-port",
                &admin_port,
                "--bind",
                "127.0.0.1",
                "--admin-user",
                "admin",
                "--admin-password",
                admin_password,
                "--data-dir",
            ])
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let ports = dir.path().join("ports.json");
        let started = Instant::now();
        let text = loop {
            if let Ok(t) = std::fs::read_to_string(&ports) {
                if !t.is_empty() {
                    break t;
                }
            }
            if started.elapsed() > BOUND {
                anyhow::bail!("node did not write ports.json within {BOUND:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let port = |k: &str| -> anyhow::Result<u16> {
            let p = v[k]
                .as_u64()
                .ok_or_else(|| anyhow::anyhow!("ports.json lacks {k}"))?;
            Ok(u16::try_from(p)?)
        };
        let kv = SocketAddr::from(([127, 0, 0, 1], port("kv")?));
        let admin = SocketAddr::from(([127, 0, 0, 1], port("admin")?));
        Ok(NodeProcess {
            child,
            dir,
            kv,
            admin,
            password: admin_password.to_string(),
        })
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit; returns the data directory
    /// for a restart.
    ///
    /// # Errors
    /// The process did not exit within the bound or exited with a failure.
    pub fn terminate(mut self) -> anyhow::Result<tempfile::TempDir> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::ensure!(status.success(), "node exited with {status} after SIGTERM");
                break;
            }
            anyhow::ensure!(
                started.elapsed() < BOUND,
                "node did not exit within {BOUND:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let dir = tempfile::tempdir()?;
        let old = std::mem::replace(&mut self.dir, dir);
        Ok(old)
    }

    /// Kills the process (SIGKILL: no clean shutdown) and returns the data directory
    /// for a restart.
    ///
    /// # Errors
    /// The kill or the wait failed.
    pub fn kill(mut self) -> anyhow::Result<tempfile::TempDir> {
        self.child.kill()?;
        self.child.wait()?;
        let dir = tempfile::tempdir()?;
        Ok(std::mem::replace(&mut self.dir, dir))
    }

    /// An admin-API call as the `admin` user that must answer `want`; returns the body.
    ///
    /// # Errors
    /// Transport failures, or another status (with the body in the message).
    pub async fn admin_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        want: u16,
    ) -> anyhow::Result<String> {
        let auth = ("admin", self.password.as_str());
        admin_call(self.admin, auth, method, path, body, want).await
    }

    /// `POST /buckets` with this JSON definition.
    ///
    /// # Errors
    /// See [`NodeProcess::admin_call`].
    pub async fn create_bucket(&self, definition: &str) -> anyhow::Result<()> {
        self.admin_call("POST", "/buckets", Some(definition), 201)
            .await
            .map(drop)
    }

    /// An admin client (SASL PLAIN) with `bucket` selected.
    ///
    /// # Errors
    /// Connection or authentication failures.
    pub async fn client(&self, bucket: &str) -> anyhow::Result<kv_client::Client> {
        let cfg = kv_client::ClientConfig {
            timeout: BOUND,
            ..kv_client::ClientConfig::default()
        };
        let mut c = kv_client::Client::connect(&self.kv.to_string(), cfg).await?;
        c.auth_plain(&kv_client::Credentials {
            user: "admin".into(),
            password: self.password.clone(),
        })
        .await?;
        c.select_bucket(bucket).await?;
        Ok(c)
    }

    /// The process id (tests stop and continue it with signals).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The node's log so far (for failure messages).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a command is on PATH.
#[must_use]
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Skips (returns true after printing why) unless `require_var` is `1`, in which
/// case the missing prerequisite fails the test.
#[must_use]
pub fn skip(require_var: &str, why: &str) -> bool {
    if std::env::var(require_var).is_ok_and(|v| v == "1") {
        panic!("{require_var}=1 but the test cannot run: {why}");
    }
    eprintln!("SKIPPED: {why}");
    true
}

/// The repository root (two levels above a crate's manifest directory).
#[must_use]
pub fn repo_root(manifest_dir: &str) -> PathBuf {
    Path::new(manifest_dir).join("../..")
}
