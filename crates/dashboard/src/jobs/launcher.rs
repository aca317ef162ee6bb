//! Starting a job's entrypoint: `sh -c ENTRYPOINT` in a process group of its own, its
//! stdout and stderr appended to the job's log. [`Launcher`] is the door the job
//! manager goes through, so its unit tests drive a fake.

use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;

/// What to run, where, and where its output goes.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchSpec {
    /// A shell command line.
    pub entrypoint: String,
    /// Its working directory (None: the head daemon's).
    pub cwd: Option<PathBuf>,
    /// Set on top of the head daemon's environment.
    pub env: Vec<(String, String)>,
    /// Appended to; created if missing.
    pub log_path: PathBuf,
}

/// How a stop asks: first politely, then for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopSignal {
    Term,
    Kill,
}

pub type WaitFuture = Pin<Box<dyn Future<Output = i32> + Send>>;

/// A started entrypoint.
pub trait Entrypoint: Send {
    /// Its process id, which is also its process group's id.
    fn pid(&self) -> u32;
    /// Resolves with its exit code once it has exited: the code it exited with, or
    /// minus the signal that ended it (as Python's `Popen.returncode`).
    fn wait(&mut self) -> WaitFuture;
    /// Sends `signal` to its whole process group.
    fn signal(&self, signal: StopSignal);
}

pub trait Launcher: Send + Sync + 'static {
    fn launch(&self, spec: &LaunchSpec) -> std::io::Result<Box<dyn Entrypoint>>;
}

/// Runs entrypoints as child processes of the head daemon.
pub struct ProcessLauncher;

impl Launcher for ProcessLauncher {
    fn launch(&self, spec: &LaunchSpec) -> std::io::Result<Box<dyn Entrypoint>> {
        if let Some(dir) = spec.log_path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&spec.log_path)?;
        let mut command = tokio::process::Command::new("sh");
        command
            .arg("-c")
            .arg(&spec.entrypoint)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?)
            // Its own group, so a stop reaches everything it started.
            .process_group(0)
            .kill_on_drop(false);
        if let Some(cwd) = &spec.cwd {
            command.current_dir(cwd);
        }
        match command.spawn() {
            Ok(child) => {
                let pid = child.id().unwrap_or(0);
                Ok(Box::new(ChildEntrypoint { child: Some(child), pid }))
            }
            Err(e) => {
                let _ = writeln!(log, "rtd: cannot start the entrypoint: {e}");
                Err(e)
            }
        }
    }
}

struct ChildEntrypoint {
    child: Option<tokio::process::Child>,
    pid: u32,
}

impl Entrypoint for ChildEntrypoint {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn wait(&mut self) -> WaitFuture {
        let child = self.child.take();
        Box::pin(async move {
            let Some(mut child) = child else { return -1 };
            match child.wait().await {
                Ok(status) => exit_code(status),
                Err(_) => -1,
            }
        })
    }

    fn signal(&self, signal: StopSignal) {
        signal_group(self.pid, signal);
    }
}

/// Sends `signal` to the process group `pgid` (nothing for 0).
pub fn signal_group(pgid: u32, signal: StopSignal) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else { return };
    if pgid <= 0 {
        return;
    }
    let signal = match signal {
        StopSignal::Term => libc::SIGTERM,
        StopSignal::Kill => libc::SIGKILL,
    };
    // SAFETY: killpg only sends a signal; a group that is gone gives ESRCH.
    unsafe {
        libc::killpg(pgid, signal);
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status.code().or_else(|| status.signal().map(|s| -s)).unwrap_or(-1)
}
