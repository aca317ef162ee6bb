//! The session directory of a node: `<temp>/session_<time>_<pid>/` with the daemon's
//! sockets, spill files and `node.json` (how clients and `rtd stop` find the daemon).
//! `<temp>/session_latest` points at the newest session, for `address="auto"`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

pub const DEFAULT_TEMP_DIR: &str = "/tmp/rtd";

#[derive(Debug, Clone)]
pub struct Session {
    pub dir: PathBuf,
}

impl Session {
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("sockets"))
            .with_context(|| format!("creating session directory {}", dir.display()))?;
        if let Some(parent) = dir.parent() {
            let latest = parent.join("session_latest");
            let _ = std::fs::remove_file(&latest);
            let _ = std::os::unix::fs::symlink(dir, &latest);
        }
        Ok(Self { dir: dir.to_path_buf() })
    }

    /// A fresh session path under `temp_dir`.
    pub fn new_path(temp_dir: &Path) -> PathBuf {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        temp_dir.join(format!("session_{now}_{}", std::process::id()))
    }

    pub fn raylet_socket(&self) -> PathBuf {
        self.dir.join("sockets/raylet.sock")
    }

    pub fn plasma_socket(&self) -> PathBuf {
        self.dir.join("sockets/plasma.sock")
    }

    pub fn shm_path(&self) -> PathBuf {
        let name = self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        PathBuf::from(format!("/dev/shm/rtd_{name}"))
    }

    pub fn node_file(&self) -> PathBuf {
        self.dir.join("node.json")
    }

    /// Removes everything the session holds, and `session_latest` if it points here.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(self.shm_path());
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let latest = parent.join("session_latest");
            if std::fs::read_link(&latest).map(|t| t == self.dir).unwrap_or(false) {
                let _ = std::fs::remove_file(latest);
            }
        }
    }
}

/// What a running daemon publishes about itself.
#[derive(Debug, Clone)]
pub struct NodeFile {
    pub pid: u32,
    pub node_id: String,
    pub raylet_socket: String,
    pub session_dir: String,
    /// Set in a multi-node cluster: clients of this node serve on this IP.
    pub node_ip: String,
    /// The head's `host:port` in a multi-node cluster.
    pub head_address: String,
    /// Where the object store spills; outside the session with `--system-config`.
    pub spill_dir: String,
}

impl NodeFile {
    pub fn write(&self, session: &Session) -> Result<()> {
        let json = serde_json::json!({
            "pid": self.pid,
            "node_id": self.node_id,
            "raylet_socket": self.raylet_socket,
            "session_dir": self.session_dir,
            "node_ip": self.node_ip,
            "head_address": self.head_address,
            "spill_dir": self.spill_dir,
        });
        let tmp = session.dir.join("node.json.tmp");
        std::fs::write(&tmp, json.to_string()).context("writing node.json")?;
        std::fs::rename(&tmp, session.node_file()).context("writing node.json")?;
        Ok(())
    }

    /// The daemons that published themselves under `temp_dir`, each once (not again
    /// through `session_latest`).
    pub fn find_all(temp_dir: &Path) -> Vec<Self> {
        let Ok(entries) = std::fs::read_dir(temp_dir) else { return Vec::new() };
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("session_") && e.file_name() != "session_latest")
            .filter_map(|e| Self::read(&e.path().join("node.json")).ok())
            .collect()
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string).unwrap_or_default();
        Ok(Self {
            pid: v.get("pid").and_then(|x| x.as_u64()).unwrap_or(0) as u32,
            node_id: field("node_id"),
            raylet_socket: field("raylet_socket"),
            session_dir: field("session_dir"),
            node_ip: field("node_ip"),
            head_address: field("head_address"),
            spill_dir: field("spill_dir"),
        })
    }
}
