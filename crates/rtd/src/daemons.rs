//! Finding and stopping the node daemons a user runs on this machine (`rtd stop`).
//!
//! As `ray stop`, this looks at processes, not at session files: a daemon is any
//! process of this user whose command line runs a node in the foreground, whichever
//! `--temp-dir` it was given. That is the standalone binary (`rtd start ... --block`),
//! the Python console script (`python .../bin/rtd start ... --block`) or what
//! `rtd start` and `rtd.init()` spawn (`python -m rtd._private.node start ... --block`).
//! `rtd start` without `--block` only waits for the daemon it spawns, so it is not one.
//!
//! A daemon told SIGTERM removes its own session (sockets, `/dev/shm` file, spill
//! files) and workers. One killed with SIGKILL cannot, so `stop` removes what it left.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::session::{process_gone, remove_leftovers, NodeFile, DEFAULT_TEMP_DIR};

/// One process as `/proc` shows it.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub pid: u32,
    pub uid: u32,
    /// The working directory, to resolve relative paths on the command line.
    pub cwd: Option<PathBuf>,
    pub cmdline: Vec<String>,
}

/// A node daemon found among the processes.
#[derive(Debug, Clone, PartialEq)]
pub struct Daemon {
    pub pid: u32,
    /// Its `--session-dir`; None when it made its own under `temp_dir`.
    pub session_dir: Option<PathBuf>,
    /// Its `--temp-dir`, or the default.
    pub temp_dir: PathBuf,
}

impl Daemon {
    /// Whether its session lives under `dir`.
    pub fn is_under(&self, dir: &Path) -> bool {
        self.session_dir.as_ref().unwrap_or(&self.temp_dir).starts_with(dir)
    }

    /// Its session directory: from the command line, or else the session under its
    /// temp dir whose `node.json` names its pid.
    fn find_session_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.session_dir {
            return Some(dir.clone());
        }
        NodeFile::find_all(&self.temp_dir)
            .into_iter()
            .find(|node| node.pid == self.pid)
            .map(|node| PathBuf::from(node.session_dir))
    }
}

/// The node daemons among `processes` that belong to `uid`, never `own_pid`.
pub fn find_daemons(processes: &[ProcessInfo], uid: u32, own_pid: u32) -> Vec<Daemon> {
    processes
        .iter()
        .filter(|p| p.uid == uid && p.pid != own_pid)
        .filter_map(|p| {
            let args = node_start_args(&p.cmdline)?;
            if !args.iter().any(|a| a == "--block") {
                return None;
            }
            let absolute = |path: &str| match &p.cwd {
                Some(cwd) => cwd.join(path),
                None => PathBuf::from(path),
            };
            Some(Daemon {
                pid: p.pid,
                session_dir: last_flag_value(args, "--session-dir").map(absolute),
                temp_dir: absolute(last_flag_value(args, "--temp-dir").unwrap_or(DEFAULT_TEMP_DIR)),
            })
        })
        .collect()
}

/// The arguments after `start` when `cmdline` runs `rtd start`, whether as the
/// binary, as the console script under its interpreter, or as the Python module.
fn node_start_args(cmdline: &[String]) -> Option<&[String]> {
    let is_rtd = |arg: &String| Path::new(arg).file_name().is_some_and(|name| name == "rtd");
    let program = Path::new(cmdline.first()?).file_name()?.to_string_lossy();
    let command_at = if program == "rtd" {
        1
    } else if program.starts_with("python") {
        // The interpreter's own options (`-u`, `-O`) come before the module or script.
        let first = 1 + cmdline[1..].iter().position(|arg| arg == "-m" || !arg.starts_with('-'))?;
        match cmdline[first].as_str() {
            "-m" if cmdline.get(first + 1)? == "rtd._private.node" => first + 2,
            _ if is_rtd(&cmdline[first]) => first + 1,
            _ => return None,
        }
    } else {
        return None;
    };
    (cmdline.get(command_at)? == "start").then(|| &cmdline[command_at + 1..])
}

/// The value of the last `FLAG VALUE` or `FLAG=VALUE` in `args` (later ones win, as
/// in the parser).
fn last_flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let mut found = None;
    for (i, arg) in args.iter().enumerate() {
        if arg == flag {
            found = args.get(i + 1).map(String::as_str);
        } else if let Some(value) = arg.strip_prefix(flag).and_then(|rest| rest.strip_prefix('=')) {
            found = Some(value);
        }
    }
    found
}

/// Every process on this machine, as far as `/proc` lets us read it.
pub fn scan_proc() -> Vec<ProcessInfo> {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let path = entry.path();
            // The owner of /proc/PID is the process's effective uid.
            let uid = std::fs::metadata(&path).ok()?.uid();
            let cmdline = std::fs::read(path.join("cmdline")).ok()?;
            Some(ProcessInfo {
                pid,
                uid,
                cwd: std::fs::read_link(path.join("cwd")).ok(),
                cmdline: cmdline
                    .split(|b| *b == 0)
                    .filter(|arg| !arg.is_empty())
                    .map(|arg| String::from_utf8_lossy(arg).into_owned())
                    .collect(),
            })
        })
        .collect()
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a pid we just found running as this user; a pid that has
    // exited since only makes the call fail.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// Waits until every daemon has exited or `timeout` passes; returns those left.
fn wait_for_exit(daemons: Vec<Daemon>, timeout: Duration) -> Vec<Daemon> {
    let deadline = Instant::now() + timeout;
    let mut left = daemons;
    loop {
        left.retain(|d| !process_gone(d.pid));
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long a SIGKILL'd process may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What `stop` did.
pub struct StopReport {
    pub stopped: usize,
    /// Killed with SIGKILL after not exiting within the grace period.
    pub killed_late: usize,
    /// Still running even after SIGKILL (e.g. stuck in the kernel).
    pub still_running: Vec<u32>,
}

/// Stops `daemons`: SIGTERM and up to `grace` to exit, then SIGKILL for the rest,
/// or SIGKILL at once with `force`. Cleans up after every daemon it killed.
pub fn stop(daemons: Vec<Daemon>, grace: Duration, force: bool) -> StopReport {
    let total = daemons.len();
    let (to_kill, killed_late) = if force {
        (daemons, 0)
    } else {
        for daemon in &daemons {
            signal(daemon.pid, libc::SIGTERM);
        }
        let late = wait_for_exit(daemons, grace);
        let count = late.len();
        (late, count)
    };
    let sessions: Vec<Option<PathBuf>> = to_kill.iter().map(Daemon::find_session_dir).collect();
    for daemon in &to_kill {
        signal(daemon.pid, libc::SIGKILL);
    }
    let left = wait_for_exit(to_kill.clone(), KILL_WAIT);
    for (daemon, session_dir) in to_kill.iter().zip(sessions) {
        if let (true, Some(dir)) = (process_gone(daemon.pid), session_dir) {
            remove_leftovers(&dir);
        }
    }
    StopReport { stopped: total - left.len(), killed_late, still_running: left.iter().map(|d| d.pid).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: u32, uid: u32, cmdline: &str) -> ProcessInfo {
        ProcessInfo {
            pid,
            uid,
            cwd: Some(PathBuf::from("/home/me")),
            cmdline: cmdline.split(' ').map(str::to_string).collect(),
        }
    }

    #[test]
    fn finds_daemons_of_every_launch_form_of_this_user_only() {
        let processes = [
            process(10, 1000, "/opt/bin/rtd start --head --block --session-dir /tmp/a/session_1"),
            process(
                11,
                1000,
                "/venv/bin/python3 -m rtd._private.node start --block --watch-stdin --session-dir=/tmp/b/s",
            ),
            process(12, 1000, "/venv/bin/python3 -u /venv/bin/rtd start --head --block --temp-dir /tmp/c"),
            process(13, 1001, "/opt/bin/rtd start --head --block --session-dir /tmp/d/s"),
            process(14, 1000, "/opt/bin/rtd start --head --temp-dir /tmp/e"),
            process(15, 1000, "/opt/bin/rtd stop --force"),
            process(16, 1000, "/opt/bin/rtd start --head --block --session-dir /tmp/f/s"),
            process(17, 1000, "vim rtd start --block"),
            process(18, 1000, "python3 -m other start --block"),
            process(19, 1000, "python3 script.py rtd start --block"),
        ];
        let found = find_daemons(&processes, 1000, 16);
        assert_eq!(
            found,
            vec![
                Daemon { pid: 10, session_dir: Some("/tmp/a/session_1".into()), temp_dir: DEFAULT_TEMP_DIR.into() },
                Daemon { pid: 11, session_dir: Some("/tmp/b/s".into()), temp_dir: DEFAULT_TEMP_DIR.into() },
                Daemon { pid: 12, session_dir: None, temp_dir: "/tmp/c".into() },
            ]
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_daemons_working_directory() {
        let found = find_daemons(&[process(10, 7, "rtd start --block --temp-dir t --session-dir t/s1")], 7, 1);
        assert_eq!(found[0].session_dir, Some(PathBuf::from("/home/me/t/s1")));
        assert_eq!(found[0].temp_dir, PathBuf::from("/home/me/t"));
    }

    #[test]
    fn the_last_session_dir_wins_as_in_the_parser() {
        let found = find_daemons(&[process(10, 7, "rtd start --session-dir /a --block --session-dir=/b")], 7, 1);
        assert_eq!(found[0].session_dir, Some(PathBuf::from("/b")));
    }

    #[test]
    fn scope_is_the_session_dir_or_else_the_temp_dir() {
        let with_session = Daemon { pid: 1, session_dir: Some("/tmp/x/session_1".into()), temp_dir: "/tmp/rtd".into() };
        assert!(with_session.is_under(Path::new("/tmp/x")));
        assert!(!with_session.is_under(Path::new("/tmp/rtd")));
        let without = Daemon { pid: 1, session_dir: None, temp_dir: "/tmp/y".into() };
        assert!(without.is_under(Path::new("/tmp/y")));
        // A path prefix, not a string prefix.
        assert!(!Daemon { pid: 1, session_dir: None, temp_dir: "/tmp/yy".into() }.is_under(Path::new("/tmp/y")));
    }

    /// A stand-in daemon: `sleep`, ignoring SIGTERM if asked, with a session dir.
    fn fake_daemon(ignore_term: bool, name: &str) -> (std::process::Child, Daemon) {
        let trap = if ignore_term { "trap '' TERM; " } else { "" };
        let child = std::process::Command::new("sh").arg("-c").arg(format!("{trap}exec sleep 30")).spawn().unwrap();
        let session_dir = std::env::temp_dir().join(format!("rtd-stop-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&session_dir).unwrap();
        let daemon = Daemon { pid: child.id(), session_dir: Some(session_dir), temp_dir: std::env::temp_dir() };
        (child, daemon)
    }

    #[test]
    fn a_daemon_that_outlives_the_grace_period_is_killed_and_cleaned_up() {
        let (mut child, daemon) = fake_daemon(true, "stubborn");
        let session_dir = daemon.session_dir.clone().unwrap();
        // Let the shell install its trap before the signal comes.
        while std::fs::read_to_string(format!("/proc/{}/comm", child.id())).is_ok_and(|c| c.trim() != "sleep") {
            std::thread::sleep(Duration::from_millis(5));
        }
        let report = stop(vec![daemon], Duration::from_millis(300), false);
        assert_eq!((report.stopped, report.killed_late), (1, 1));
        assert!(report.still_running.is_empty());
        assert!(!session_dir.exists());
        let _ = child.wait();
    }

    #[test]
    fn sigterm_stops_a_daemon_which_cleans_up_itself() {
        let (mut child, daemon) = fake_daemon(false, "polite");
        let session_dir = daemon.session_dir.clone().unwrap();
        let report = stop(vec![daemon], Duration::from_secs(5), false);
        assert_eq!((report.stopped, report.killed_late), (1, 0));
        // Its own files are its own business: `stop` removed nothing.
        assert!(session_dir.exists());
        let _ = std::fs::remove_dir_all(session_dir);
        let _ = child.wait();
    }

    #[test]
    fn force_kills_at_once_and_cleans_up() {
        let (mut child, daemon) = fake_daemon(true, "forced");
        let session_dir = daemon.session_dir.clone().unwrap();
        let report = stop(vec![daemon], Duration::from_secs(60), true);
        assert_eq!((report.stopped, report.killed_late), (1, 0));
        assert!(!session_dir.exists());
        let _ = child.wait();
    }

    #[test]
    fn scan_sees_this_process_and_it_is_not_gone() {
        let me = std::process::id();
        let processes = scan_proc();
        let mine = processes.iter().find(|p| p.pid == me).expect("this process in /proc");
        assert_eq!(mine.uid, unsafe { libc::geteuid() });
        assert!(!mine.cmdline.is_empty());
        assert!(!process_gone(me));
        assert!(process_gone(u32::MAX - 1));
    }
}
