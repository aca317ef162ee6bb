//! Starting and stopping the node's Python worker processes.
//!
//! A worker is a Python process running `rtd._private.worker`: it learns its id, the
//! raylet's socket and the session directory from its environment, connects, and
//! registers itself when it is ready. It exits on its own when its connection to the
//! raylet closes, so no worker outlives its node daemon.
//!
//! There are two ways to start one, and [`WorkerStarter`] picks between them:
//!
//! * **Fork from the template** (the default). Once per node the raylet starts
//!   `python -m rtd._private.worker_template`, an interpreter that has imported
//!   everything a worker imports but has not connected and runs no threads. Each
//!   worker is then an `os.fork()` of it: a line with the worker id goes down the
//!   template's stdin, its pid comes back on the template's fd 3. That skips the
//!   interpreter start and the imports (~60 ms of CPU each), which is what makes many
//!   actors created at once cheap. A forked worker is not a child of this daemon, so
//!   its exit is watched through a pidfd (`pidfd_open(2)`).
//! * **Spawn** a fresh interpreter (`python -m rtd._private.worker`, fork immediately
//!   followed by exec), watched as a tokio `Child`. Used while the template is still
//!   importing, whenever it is gone, fails, times out or refuses (it refuses when it
//!   finds threads running after its imports), and always when `RTD_WORKER_FORK=0` is
//!   set in the daemon's environment (for debugging, or if forking misbehaves).
//!
//! This daemon itself is never forked without an immediate exec: its tokio threads
//! would not survive a fork. Only the thread-free template is.
//!
//! A worker of a runtime environment is always spawned, with the environment's
//! interpreter, directory, variables and import path ([`EnvContext`]): the template
//! imported in the node's plain environment.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{ChildStdin, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rtd_common::WorkerId;
use rtd_runtime_env::EnvContext;
use tokio::process::{Child, Command};

/// The environment variable that turns the worker template off when set to `0`.
pub const FORK_ENV: &str = "RTD_WORKER_FORK";

/// How long the raylet waits for the template to answer a request (it answers in
/// about a millisecond; the raylet holds its state lock meanwhile).
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// After this many template failures, workers are spawned for the rest of the node's life.
const MAX_TEMPLATE_FAILURES: u32 = 3;

/// The fd on which the template writes its replies.
const TEMPLATE_REPLY_FD: RawFd = 3;

#[derive(Clone, Debug)]
pub struct WorkerCommand {
    pub python: String,
    pub raylet_socket: String,
    pub session_dir: String,
    /// In a multi-node cluster, workers serve on TCP at this IP.
    pub node_ip: Option<String>,
    /// Fork workers from a template process (see the module docs).
    pub fork_from_template: bool,
}

impl WorkerCommand {
    /// Whether the daemon's environment allows the worker template (`RTD_WORKER_FORK`
    /// is not `0`).
    pub fn fork_allowed_by_env() -> bool {
        std::env::var(FORK_ENV).map_or(true, |v| v.trim() != "0")
    }

    /// Spawns a worker, in `env` when given.
    pub fn spawn(&self, worker_id: &WorkerId, env: Option<&EnvContext>) -> io::Result<Child> {
        let python = env
            .and_then(|e| e.python.as_deref())
            .map_or_else(|| self.python.clone().into(), |p| p.as_os_str().to_owned());
        let mut cmd = Command::new(python);
        if let Some(env) = env {
            env.apply(&mut cmd);
        }
        cmd.args(["-m", "rtd._private.worker"])
            .env("RTD_WORKER_ID", worker_id.hex())
            .env("RTD_RAYLET_SOCKET", &self.raylet_socket)
            .env("RTD_SESSION_DIR", &self.session_dir)
            .env("RTD_NODE_IP", self.node_ip.as_deref().unwrap_or(""))
            .stdin(Stdio::null())
            .kill_on_drop(false);
        cmd.spawn()
    }

    /// Starts the template with the workers' environment (forked workers inherit it,
    /// and it is what `/proc/PID/environ` shows for them), its stdin a pipe for
    /// requests and fd 3 a pipe for replies; stdout and stderr are the node's.
    fn spawn_template(&self) -> io::Result<Template> {
        let (reply_read, reply_write) = pipe()?;
        let reply_write_fd = reply_write.as_raw_fd();
        let mut cmd = std::process::Command::new(&self.python);
        cmd.args(["-m", "rtd._private.worker_template"])
            .env("RTD_RAYLET_SOCKET", &self.raylet_socket)
            .env("RTD_SESSION_DIR", &self.session_dir)
            .env("RTD_NODE_IP", self.node_ip.as_deref().unwrap_or(""))
            .env_remove("RTD_WORKER_ID")
            .stdin(Stdio::piped());
        // SAFETY: between fork and exec the closure only calls dup2/fcntl, which are
        // async-signal-safe, on an fd that stays open in the parent until after spawn.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                if reply_write_fd == TEMPLATE_REPLY_FD {
                    // Already in place: only let it survive the exec.
                    if libc::fcntl(reply_write_fd, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(reply_write_fd, TEMPLATE_REPLY_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        drop(reply_write);
        let Some(requests) = child.stdin.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("the template has no request pipe"));
        };
        Ok(Template { child, requests, replies: LineReader::new(reply_read), ready: false })
    }
}

/// A started worker process.
pub struct StartedWorker {
    pub worker_id: WorkerId,
    pub pid: u32,
    pub exit: ExitWatch,
}

/// How the raylet learns that a started worker exited.
pub enum ExitWatch {
    /// A spawned worker: a child of this daemon.
    Child(Child),
    /// A forked worker: a child of the template, watched through its pidfd.
    Pidfd(OwnedFd),
    /// The worker was gone before it could be watched.
    Exited,
}

impl ExitWatch {
    /// Resolves when the worker has exited. Must run inside the tokio runtime.
    pub async fn wait(self) {
        match self {
            ExitWatch::Child(mut child) => {
                let _ = child.wait().await;
            }
            ExitWatch::Pidfd(fd) => wait_pidfd(fd).await,
            ExitWatch::Exited => {}
        }
    }
}

/// A pidfd turns readable when its process exits.
async fn wait_pidfd(fd: OwnedFd) {
    // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open and the same for its life.
    let registered = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
    match registered {
        Ok(async_fd) => {
            // An error here means the reactor is gone (runtime shutdown): nothing to wait for.
            let _ = async_fd.readable().await;
        }
        Err(e) => {
            let (fd, cause) = e.into_parts();
            tracing::debug!("pidfd not registered with the reactor ({cause}); waiting on a thread");
            let _ = tokio::task::spawn_blocking(move || poll_readable(fd.as_raw_fd(), None)).await;
        }
    }
}

/// Starts workers, forking them from the template when it can (see the module docs).
pub struct WorkerStarter {
    command: WorkerCommand,
    template: Mutex<TemplateSlot>,
}

#[derive(Default)]
struct TemplateSlot {
    template: Option<Template>,
    failures: u32,
    /// No template for the rest of the node's life (disabled, refused, shut down).
    off: bool,
    warned: bool,
}

impl WorkerStarter {
    pub fn new(command: WorkerCommand) -> Self {
        let off = !command.fork_from_template;
        WorkerStarter { command, template: Mutex::new(TemplateSlot { off, ..TemplateSlot::default() }) }
    }

    pub fn command(&self) -> &WorkerCommand {
        &self.command
    }

    fn slot(&self) -> MutexGuard<'_, TemplateSlot> {
        self.template.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the template now, so that it has imported by the time workers are needed.
    pub fn prepare(&self) {
        let mut slot = self.slot();
        self.ensure_template(&mut slot);
    }

    /// Starts one worker: forked from the template when it is ready, spawned otherwise.
    pub fn start(&self) -> io::Result<StartedWorker> {
        let worker_id = WorkerId::random();
        if let Some((pid, template_pid)) = self.fork(&worker_id) {
            return Ok(StartedWorker { worker_id, pid, exit: watch_forked(pid, template_pid) });
        }
        // A fresh id (`spawn` makes one): a request the template failed to answer may
        // still have forked a process with the old one (the raylet refuses it when it
        // registers).
        self.spawn(None)
    }

    /// Starts one worker in a runtime environment: always a fresh interpreter.
    pub fn start_in(&self, env: &EnvContext) -> io::Result<StartedWorker> {
        self.spawn(Some(env))
    }

    fn spawn(&self, env: Option<&EnvContext>) -> io::Result<StartedWorker> {
        let worker_id = WorkerId::random();
        let child = self.command.spawn(&worker_id, env)?;
        let pid = child.id().unwrap_or(0);
        Ok(StartedWorker { worker_id, pid, exit: ExitWatch::Child(child) })
    }

    /// Pid of the template process, if one is running.
    pub fn template_pid(&self) -> Option<u32> {
        self.slot().template.as_ref().map(|t| t.child.id())
    }

    /// Stops the template for good (daemon shutdown).
    pub fn shutdown(&self) {
        let mut slot = self.slot();
        slot.off = true;
        if let Some(template) = slot.template.take() {
            template.kill();
        }
    }

    /// Asks the template for a worker: its pid and the template's, or None to spawn.
    fn fork(&self, worker_id: &WorkerId) -> Option<(u32, u32)> {
        let mut slot = self.slot();
        let template = self.ensure_template(&mut slot)?;
        let answer = if template.ready {
            template.request(worker_id)
        } else {
            match template.poll_ready() {
                Ok(true) => template.request(worker_id),
                Ok(false) => return None, // still importing
                Err(e) => Err(e),
            }
        };
        match answer {
            Ok(pid) => Some((pid, template.child.id())),
            Err(e) => {
                self.template_failed(&mut slot, e);
                None
            }
        }
    }

    fn ensure_template<'a>(&self, slot: &'a mut TemplateSlot) -> Option<&'a mut Template> {
        if slot.off {
            return None;
        }
        if slot.template.is_none() {
            if !pidfd_supported() {
                tracing::warn!("pidfd_open(2) is not available: workers start with a fresh interpreter");
                slot.off = true;
                return None;
            }
            match self.command.spawn_template() {
                Ok(template) => slot.template = Some(template),
                Err(e) => {
                    self.template_failed(slot, TemplateError::Io(e));
                    return None;
                }
            }
        }
        slot.template.as_mut()
    }

    fn template_failed(&self, slot: &mut TemplateSlot, e: TemplateError) {
        if let Some(template) = slot.template.take() {
            template.kill();
        }
        slot.failures += 1;
        if matches!(e, TemplateError::Refused(_)) || slot.failures >= MAX_TEMPLATE_FAILURES {
            slot.off = true;
        }
        if !slot.warned {
            slot.warned = true;
            tracing::warn!(
                "the worker template failed ({e}); starting workers with a fresh interpreter{}",
                if slot.off { "" } else { " until a new template is ready" }
            );
        } else {
            tracing::debug!("the worker template failed again ({e})");
        }
    }
}

impl Drop for WorkerStarter {
    fn drop(&mut self) {
        let slot = self.template.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(template) = slot.template.take() {
            template.kill();
        }
    }
}

/// A forked worker is watched through a pidfd. Its pid could in principle be reused
/// between its exit (the template reaps at once) and `pidfd_open`; checking that the
/// process is still the template's child rules out watching an unrelated process.
fn watch_forked(pid: u32, template_pid: u32) -> ExitWatch {
    match pidfd_open(pid) {
        Ok(fd) if parent_pid(pid) == Some(template_pid) => ExitWatch::Pidfd(fd),
        Ok(_) | Err(_) => ExitWatch::Exited,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the template refused to serve: {0}")]
    Refused(String),
    #[error("the template could not start a worker: {0}")]
    Failed(String),
    #[error("the template exited")]
    Exited,
    #[error("the template did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("unexpected reply from the template: {0:?}")]
    BadReply(String),
}

/// The template's first line: whether it serves.
fn parse_ready(line: &str) -> Result<(), TemplateError> {
    match line.split_once(' ').map_or((line, ""), |(word, rest)| (word, rest)) {
        ("ready", "") => Ok(()),
        ("refused", why) => Err(TemplateError::Refused(why.to_string())),
        _ => Err(TemplateError::BadReply(line.to_string())),
    }
}

/// The template's answer to a request: the forked worker's pid.
fn parse_reply(line: &str) -> Result<u32, TemplateError> {
    if let Some(why) = line.strip_prefix("error ") {
        return Err(TemplateError::Failed(why.to_string()));
    }
    match line.parse::<u32>() {
        Ok(pid) if pid > 1 => Ok(pid),
        _ => Err(TemplateError::BadReply(line.to_string())),
    }
}

struct Template {
    child: std::process::Child,
    requests: ChildStdin,
    replies: LineReader,
    ready: bool,
}

impl Template {
    /// Reads the template's first line if it is there yet.
    fn poll_ready(&mut self) -> Result<bool, TemplateError> {
        match self.replies.read_line(Duration::ZERO)? {
            None => Ok(false),
            Some(line) => {
                parse_ready(&line)?;
                self.ready = true;
                Ok(true)
            }
        }
    }

    fn request(&mut self, worker_id: &WorkerId) -> Result<u32, TemplateError> {
        self.requests.write_all(format!("{}\n", worker_id.hex()).as_bytes())?;
        match self.replies.read_line(REPLY_TIMEOUT)? {
            Some(line) => parse_reply(&line),
            None => Err(TemplateError::TimedOut(REPLY_TIMEOUT)),
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        // SIGKILL ends it at once; reaping here leaves no zombie behind.
        let _ = self.child.wait();
    }
}

/// Lines from a pipe, with a deadline.
struct LineReader {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl LineReader {
    fn new(fd: OwnedFd) -> Self {
        LineReader { fd, buf: Vec::new() }
    }

    /// The next line without its newline; None if none arrived within `timeout`.
    fn read_line(&mut self, timeout: Duration) -> Result<Option<String>, TemplateError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Ok(Some(String::from_utf8_lossy(&line[..end]).trim().to_string()));
            }
            if !poll_readable(self.fd.as_raw_fd(), Some(deadline.saturating_duration_since(Instant::now())))? {
                return Ok(None);
            }
            let mut chunk = [0u8; 256];
            // SAFETY: reads into a local buffer of the given length from an fd we own.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
            match n {
                0 => return Err(TemplateError::Exited),
                n if n > 0 => self.buf.extend_from_slice(&chunk[..n as usize]),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e.into());
                    }
                }
            }
        }
    }
}

/// Waits until `fd` is readable (or hung up): true, or false after `timeout`.
fn poll_readable(fd: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => d.saturating_duration_since(Instant::now()).as_millis().min(i32::MAX as u128) as i32,
        };
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return Ok(true);
        }
        if n == 0 {
            return Ok(false);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A pidfd for `pid` (Linux 5.3+): readable once the process has exited.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open has no memory-safety preconditions.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn pidfd_supported() -> bool {
    pidfd_open(std::process::id()).is_ok()
}

/// The parent pid of `pid`, from `/proc/PID/stat`.
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_parent_pid(&stat)
}

/// `pid (comm) state ppid ...`, where comm may itself hold spaces and parentheses.
fn parse_parent_pid(stat: &str) -> Option<u32> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// Sends SIGKILL to a worker process (it may be stuck in user code).
pub fn kill(pid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// Asks an idle worker process to exit (SIGTERM): it sends what it buffered (task
/// events, metrics) and disconnects.
pub fn terminate(pid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_lines_are_parsed() {
        assert!(parse_ready("ready").is_ok());
        assert!(
            matches!(parse_ready("refused 3 threads are running"), Err(TemplateError::Refused(why)) if why == "3 threads are running")
        );
        assert!(matches!(parse_ready("readyish"), Err(TemplateError::BadReply(_))));
        assert!(matches!(parse_ready("ready now"), Err(TemplateError::BadReply(_))));
        assert!(matches!(parse_ready(""), Err(TemplateError::BadReply(_))));
    }

    #[test]
    fn replies_are_pids_or_errors() {
        assert_eq!(parse_reply("4321").ok(), Some(4321));
        assert!(
            matches!(parse_reply("error fork failed: no memory"), Err(TemplateError::Failed(why)) if why == "fork failed: no memory")
        );
        for bad in ["", "0", "1", "-5", "12ab", "ready", "99999999999"] {
            assert!(matches!(parse_reply(bad), Err(TemplateError::BadReply(_))), "{bad:?}");
        }
    }

    #[test]
    fn parent_pid_survives_odd_command_names() {
        assert_eq!(parse_parent_pid("123 (python) S 45 123 123 0"), Some(45));
        assert_eq!(parse_parent_pid("123 (a) b (c) R 7 1 1"), Some(7));
        assert_eq!(parse_parent_pid("123 python S 45"), None);
        assert_eq!(parent_pid(std::process::id()), Some(std::os::unix::process::parent_id()));
    }

    #[test]
    fn line_reader_splits_lines_and_times_out() {
        let (read, write) = pipe().expect("pipe");
        let mut reader = LineReader::new(read);
        let mut writer = std::fs::File::from(write);
        assert!(matches!(reader.read_line(Duration::ZERO), Ok(None)));
        writer.write_all(b"ready\n12").expect("write");
        assert_eq!(reader.read_line(Duration::from_secs(5)).ok().flatten().as_deref(), Some("ready"));
        assert!(matches!(reader.read_line(Duration::from_millis(10)), Ok(None)));
        writer.write_all(b"34\n").expect("write");
        assert_eq!(reader.read_line(Duration::from_secs(5)).ok().flatten().as_deref(), Some("1234"));
        drop(writer);
        assert!(matches!(reader.read_line(Duration::from_secs(5)), Err(TemplateError::Exited)));
    }

    #[tokio::test]
    async fn a_pidfd_watch_ends_when_the_process_is_killed() {
        let mut child = std::process::Command::new("sleep").arg("60").spawn().expect("sleep runs");
        let fd = pidfd_open(child.id()).expect("pidfd_open (Linux 5.3+)");
        let mut watch = tokio::spawn(ExitWatch::Pidfd(fd).wait());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut watch).await.is_err(),
            "the watch ended while the process runs"
        );
        kill(child.id());
        tokio::time::timeout(Duration::from_secs(10), watch).await.expect("the watch ends").expect("no panic");
        let _ = child.wait();
    }

    #[test]
    fn a_disabled_starter_spawns_and_never_starts_a_template() {
        let command = WorkerCommand {
            python: "/nonexistent/python".into(),
            raylet_socket: String::new(),
            session_dir: String::new(),
            node_ip: None,
            fork_from_template: false,
        };
        let starter = WorkerStarter::new(command);
        starter.prepare();
        assert_eq!(starter.template_pid(), None);
    }
}
