//! The session directory of a node: `<temp>/session_<time>_<pid>/` with the daemon's
//! sockets, spill files and `node.json` (how clients and `rtd stop` find the daemon).
//! `<temp>/session_latest` points at the newest session, for `address="auto"`.
//!
//! The node's shared-memory file is `/dev/shm/rtd_<daemon pid>_<session name>`: unique to
//! the daemon instance, so a daemon that was killed (and could not remove it) never blocks
//! the next one, and the pid in the name tells a later daemon whether the file's owner is
//! gone. Each daemon removes such leftovers of dead daemons when it starts.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

pub const DEFAULT_TEMP_DIR: &str = "/tmp/rtd";

const SHM_DIR: &str = "/dev/shm";
const SHM_PREFIX: &str = "rtd_";

#[derive(Debug, Clone)]
pub struct Session {
    pub dir: PathBuf,
    shm: PathBuf,
}

impl Session {
    /// Creates the session directory of the daemon running this code, first removing
    /// what dead daemons left: a session directory at `dir` itself (a daemon started
    /// again with the same `--session-dir`), its siblings, and shared-memory files.
    pub fn create(dir: &Path) -> Result<Self> {
        if let Some(parent) = dir.parent() {
            remove_dead_sessions(parent);
        }
        remove_dead_shm_files(Path::new(SHM_DIR));
        for sub in ["sockets", "logs"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating session directory {}", dir.display()))?;
        }
        // Whoever can open a socket here can run code as this user: only its owner may.
        let sockets = dir.join("sockets");
        std::fs::set_permissions(&sockets, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .with_context(|| format!("restricting {} to its owner", sockets.display()))?;
        if let Some(parent) = dir.parent() {
            let latest = parent.join("session_latest");
            let _ = std::fs::remove_file(&latest);
            let _ = std::os::unix::fs::symlink(dir, &latest);
        }
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let shm = Path::new(SHM_DIR).join(format!("{SHM_PREFIX}{}_{name}", std::process::id()));
        Ok(Self { dir: dir.to_path_buf(), shm })
    }

    /// A fresh session path under `temp_dir`.
    pub fn new_path(temp_dir: &Path) -> PathBuf {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        temp_dir.join(format!("session_{now}_{}", std::process::id()))
    }

    pub fn raylet_socket(&self) -> PathBuf {
        self.dir.join("sockets/raylet.sock")
    }

    pub fn plasma_socket(&self) -> PathBuf {
        self.dir.join("sockets/plasma.sock")
    }

    pub fn shm_path(&self) -> &Path {
        &self.shm
    }

    pub fn node_file(&self) -> PathBuf {
        self.dir.join("node.json")
    }

    /// Removes everything the session holds, and `session_latest` if it points here.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.shm);
        remove_session_dir(&self.dir);
    }
}

/// Removes a session directory, and `session_latest` if it points there.
fn remove_session_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    if let Some(parent) = dir.parent() {
        let latest = parent.join("session_latest");
        if std::fs::read_link(&latest).map(|t| t == dir).unwrap_or(false) {
            let _ = std::fs::remove_file(latest);
        }
    }
}

/// Whether `pid` has exited. A zombie has: it only waits for its parent to reap it.
/// (A reused pid only delays a clean-up.)
pub fn process_gone(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return true };
    // `pid (comm) STATE ...`; comm may itself contain ") ".
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    matches!(state, Some('Z' | 'X') | None)
}

/// Removes what a daemon that is gone left at `dir`: its session, its `/dev/shm` file
/// and its spill directory when that is outside the session (all named in node.json).
pub fn remove_leftovers(dir: &Path) {
    if let Ok(node) = NodeFile::read(&dir.join("node.json")) {
        for path in [&node.spill_dir, &node.shm_path].into_iter().filter(|p| !p.is_empty()) {
            let path = Path::new(path);
            let _ = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
        }
    }
    remove_session_dir(dir);
}

/// Removes the sessions under `temp_dir` whose daemon is gone without cleaning up
/// (killed, or the machine lost power). A directory without `node.json` may belong
/// to a daemon still starting: kept.
pub fn remove_dead_sessions(temp_dir: &Path) {
    for node in NodeFile::find_all(temp_dir) {
        if process_gone(node.pid) {
            tracing::info!("removing {} of a daemon that is gone (pid {})", node.session_dir, node.pid);
            remove_leftovers(Path::new(&node.session_dir));
        }
    }
}

/// Removes `rtd_<pid>_*` shared-memory files of daemons that are gone.
fn remove_dead_shm_files(shm_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(shm_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = shm_owner(&name.to_string_lossy()) else { continue };
        if process_gone(pid) {
            tracing::info!("removing {} of a daemon that is gone (pid {pid})", entry.path().display());
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The daemon pid in a shared-memory file name `rtd_<pid>_<session name>`.
fn shm_owner(file_name: &str) -> Option<u32> {
    let (pid, rest) = file_name.strip_prefix(SHM_PREFIX)?.split_once('_')?;
    rest.starts_with("session_").then(|| pid.parse().ok()).flatten()
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
    /// The object store's shared-memory file.
    pub shm_path: String,
    /// Where the object store spills; outside the session with `--system-config`.
    pub spill_dir: String,
    /// The head's dashboard and state API as `host:port` (Ray's `webui_url`); empty on
    /// other nodes and on a head without one.
    pub dashboard_url: String,
    /// The port serving `/metrics` (on `node_ip`, else 127.0.0.1).
    pub metrics_export_port: u16,
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
            "shm_path": self.shm_path,
            "spill_dir": self.spill_dir,
            "dashboard_url": self.dashboard_url,
            "metrics_export_port": self.metrics_export_port,
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
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string).unwrap_or_default();
        Ok(Self {
            pid: v.get("pid").and_then(|x| x.as_u64()).unwrap_or(0) as u32,
            node_id: field("node_id"),
            raylet_socket: field("raylet_socket"),
            session_dir: field("session_dir"),
            node_ip: field("node_ip"),
            head_address: field("head_address"),
            shm_path: field("shm_path"),
            spill_dir: field("spill_dir"),
            dashboard_url: field("dashboard_url"),
            metrics_export_port: v.get("metrics_export_port").and_then(|x| x.as_u64()).unwrap_or(0) as u16,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shm_owner_reads_the_pid_of_rtd_files_only() {
        assert_eq!(shm_owner("rtd_4242_session_17_9"), Some(4242));
        assert_eq!(shm_owner("rtd_session_17_9"), None);
        assert_eq!(shm_owner("rtd_x_session_1"), None);
        assert_eq!(shm_owner("other_4242_session_1"), None);
        assert_eq!(shm_owner("rtd_99999999999_session_1"), None);
    }

    #[test]
    fn dead_daemons_leave_nothing_behind_and_live_ones_keep_theirs() {
        let root = std::env::temp_dir().join(format!("rtd-session-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let shm_dir = root.join("shm");
        std::fs::create_dir_all(&shm_dir).expect("test dir");
        // A pid that cannot exist (above the kernel's pid_max) stands for a dead daemon.
        let dead = 4_194_304 + 1;
        let alive = std::process::id();
        for (name, pid) in [("session_1_dead", dead), ("session_2_live", alive)] {
            let session = Session { dir: root.join(name), shm: PathBuf::new() };
            std::fs::create_dir_all(&session.dir).expect("session dir");
            let node = NodeFile {
                pid,
                node_id: String::new(),
                raylet_socket: String::new(),
                session_dir: session.dir.display().to_string(),
                node_ip: String::new(),
                head_address: String::new(),
                shm_path: String::new(),
                spill_dir: String::new(),
                dashboard_url: String::new(),
                metrics_export_port: 0,
            };
            node.write(&session).expect("node.json");
            std::fs::write(shm_dir.join(format!("rtd_{pid}_{name}")), b"").expect("shm file");
        }
        std::fs::create_dir_all(root.join("session_3_starting")).expect("starting dir");
        remove_dead_sessions(&root);
        remove_dead_shm_files(&shm_dir);
        assert!(!root.join("session_1_dead").exists());
        assert!(!shm_dir.join(format!("rtd_{dead}_session_1_dead")).exists());
        assert!(root.join("session_2_live").exists());
        assert!(shm_dir.join(format!("rtd_{alive}_session_2_live")).exists());
        assert!(root.join("session_3_starting").exists());
        let _ = std::fs::remove_dir_all(&root);
    }
}
