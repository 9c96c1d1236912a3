//! `<data-dir>/cluster/secrets.json` (mode 0600): the cluster admin credentials and
//! the internal user's random password (cluster.md §2.3, §2.5).

use std::path::{Path, PathBuf};

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::agent::api::Creds;

/// The internal user's name.
pub(crate) const INTERNAL_USER: &str = "@conduit";

const FILE: &str = "secrets.json";

/// The cluster's credentials.
#[derive(Clone, Serialize, Deserialize)]
pub struct Secrets {
    /// The cluster admin (REST basic auth, full KV access).
    pub admin: Creds,
    /// The internal user agents and the orchestrator use.
    pub internal: Creds,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("admin", &self.admin.user)
            .field("internal", &self.internal.user)
            .finish_non_exhaustive()
    }
}

impl Secrets {
    /// New secrets with a fresh internal password, written to `dir`.
    ///
    /// # Errors
    /// The file cannot be written.
    pub async fn create(dir: &Path, admin: Creds) -> std::io::Result<Secrets> {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let secrets = Secrets {
            admin,
            internal: Creds {
                user: INTERNAL_USER.to_owned(),
                password: hex::encode(bytes),
            },
        };
        let path = dir.join(FILE);
        let text = serde_json::to_vec_pretty(&secrets).map_err(std::io::Error::other)?;
        tokio::task::spawn_blocking(move || write_private(&path, &text))
            .await
            .map_err(std::io::Error::other)??;
        Ok(secrets)
    }

    /// Reads the secrets of an initialised node.
    ///
    /// # Errors
    /// Missing or unreadable file.
    pub async fn load(dir: &Path) -> std::io::Result<Secrets> {
        let path: PathBuf = dir.join(FILE);
        let bytes = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .map_err(std::io::Error::other)??;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
