//! Starting and stopping the node's Python worker processes.
//!
//! Workers are started with spawn semantics (fork immediately followed by exec of a
//! fresh interpreter, `python -m rtd._private.worker`), never by forking this daemon,
//! whose tokio threads would not survive a fork. A worker learns its id, the raylet's
//! socket and the session directory from its environment and registers itself when it
//! is ready. It also exits on its own when its connection to the raylet closes.

use std::process::Stdio;

use rtd_common::WorkerId;
use tokio::process::{Child, Command};

#[derive(Clone, Debug)]
pub struct WorkerCommand {
    pub python: String,
    pub raylet_socket: String,
    pub session_dir: String,
    /// In a multi-node cluster, workers serve on TCP at this IP.
    pub node_ip: Option<String>,
}

impl WorkerCommand {
    pub fn spawn(&self, worker_id: &WorkerId) -> std::io::Result<Child> {
        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", "rtd._private.worker"])
            .env("RTD_WORKER_ID", worker_id.hex())
            .env("RTD_RAYLET_SOCKET", &self.raylet_socket)
            .env("RTD_SESSION_DIR", &self.session_dir)
            .env("RTD_NODE_IP", self.node_ip.as_deref().unwrap_or(""))
            .stdin(Stdio::null())
            .kill_on_drop(false);
        cmd.spawn()
    }
}

/// Sends SIGKILL to a worker process (it may be stuck in user code).
pub fn kill(pid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}
