//! `/api/v0/logs`: a node's log files (those whose names match `glob`, if given), and
//! one log file's text, named directly (`node_id` and `filename`) or by what wrote it
//! (`actor_id`, `task_id`, or `pid` with `node_id`), as Ray's log API takes them. A
//! node is named by `node_id`, or by `node_ip` when one alive node has that address. A worker's files are
//! `worker-<worker id>-<pid>.out` / `.err` (`suffix`), so what ran in a process is
//! found by its pid on its node.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::query::pairs;
use crate::state::{ClusterState, LogError, LogFileState, LogRead};

/// Ray's default number of lines of a log to show.
const DEFAULT_LINES: i64 = 1000;

/// Why a log request cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum LogQueryError {
    #[error("{0}")]
    Bad(String),
    #[error(transparent)]
    Log(#[from] LogError),
}

/// What `/api/v0/logs/file` was asked for.
#[derive(Debug, Default, PartialEq)]
pub struct LogQuery {
    pub node_id: Option<String>,
    pub node_ip: Option<String>,
    /// Only files whose names match this pattern (`*`, `?`), when listing.
    pub glob: Option<String>,
    pub filename: Option<String>,
    pub actor_id: Option<String>,
    pub task_id: Option<String>,
    pub pid: Option<u32>,
    /// `out` or `err`, for a log found by what wrote it.
    pub suffix: String,
    pub lines: i64,
    pub offset: u64,
}

impl LogQuery {
    pub fn from_query(query: Option<&str>) -> Result<Self, LogQueryError> {
        let mut q = LogQuery { suffix: "out".into(), lines: DEFAULT_LINES, ..Default::default() };
        for (name, value) in pairs(query.unwrap_or_default()) {
            let bad = |why: &str| LogQueryError::Bad(format!("invalid value {value:?} for {name}: {why}"));
            match name.as_str() {
                "node_id" => q.node_id = Some(value),
                "node_ip" => q.node_ip = Some(value),
                "glob" => q.glob = Some(value),
                "filename" => q.filename = Some(value),
                "actor_id" => q.actor_id = Some(value),
                "task_id" => q.task_id = Some(value),
                "pid" => q.pid = Some(value.parse().map_err(|_| bad("expected a process id"))?),
                "suffix" if value == "out" || value == "err" => q.suffix = value,
                "suffix" => return Err(bad("expected out or err")),
                "lines" => q.lines = value.parse().map_err(|_| bad("expected a whole number (-1: all)"))?,
                "offset" => q.offset = value.parse().map_err(|_| bad("expected a byte offset"))?,
                _ => {}
            }
        }
        Ok(q)
    }

    /// The node the query names, by id or by address; None if it names none.
    pub fn node(&self, state: &dyn ClusterState) -> Result<Option<String>, LogQueryError> {
        let Some(ip) = self.node_ip.as_ref().filter(|_| self.node_id.is_none()) else {
            return Ok(self.node_id.clone());
        };
        let alive: Vec<String> =
            state.nodes().into_iter().filter(|n| n.state == "ALIVE" && n.node_ip == *ip).map(|n| n.node_id).collect();
        match alive.as_slice() {
            [node_id] => Ok(Some(node_id.clone())),
            [] => Err(LogError::NotFound(format!("no alive node has the address {ip}")).into()),
            _ => Err(LogQueryError::Bad(format!(
                "{} alive nodes have the address {ip} ({}); name one with node_id",
                alive.len(),
                alive.join(", ")
            ))),
        }
    }
}

/// Whether `name` matches the shell pattern `pattern`: `*` any run of characters,
/// `?` any one character, everything else itself.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let (pattern, name): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut p, mut n) = (0, 0);
    // Where the last `*` was, and the name position it matched up to.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == '?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                // Let the last `*` take one more character and try again.
                Some((star_p, star_n)) => {
                    star = Some((star_p, star_n + 1));
                    p = star_p + 1;
                    n = star_n + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Ray's categories of a node's log files.
pub fn categorize(files: Vec<LogFileState>) -> BTreeMap<&'static str, Vec<String>> {
    let mut categories: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for file in files {
        let category = if file.name.starts_with("worker-") && file.name.ends_with(".out") {
            "worker_out"
        } else if file.name.starts_with("worker-") && file.name.ends_with(".err") {
            "worker_err"
        } else if file.name.starts_with("node") {
            "raylet"
        } else {
            "misc"
        };
        categories.entry(category).or_default().push(file.name);
    }
    categories
}

/// The node and pid of the process the query names by what ran in it, and for a
/// task the part of that process's log (of the query's suffix) the task wrote.
type LogSource = (String, u32, Option<(u64, Option<u64>)>);

fn process_of(state: &dyn ClusterState, q: &LogQuery) -> Result<LogSource, LogQueryError> {
    if let Some(actor_id) = &q.actor_id {
        let actor = state.actors().into_iter().find(|a| a.actor_id.eq_ignore_ascii_case(actor_id));
        let actor = actor.ok_or_else(|| LogError::NotFound(format!("no actor {actor_id}")))?;
        return match (actor.node_id, actor.pid) {
            (Some(node), pid) if pid != 0 => Ok((node, pid, None)),
            _ => Err(LogError::NotFound(format!("actor {actor_id} has not started a worker yet")).into()),
        };
    }
    if let Some(task_id) = &q.task_id {
        let (tasks, _) = state.tasks();
        let task = tasks
            .into_iter()
            .filter(|t| t.task_id.eq_ignore_ascii_case(task_id))
            .max_by_key(|t| t.attempt_number)
            .ok_or_else(|| LogError::NotFound(format!("no task {task_id}")))?;
        // A normal task's own lines; an actor call's are its actor's whole log.
        let range = task.task_log_info.and_then(|info| {
            let (start, end) = match q.suffix.as_str() {
                "err" => (info.stderr_start, info.stderr_end),
                _ => (info.stdout_start, info.stdout_end),
            };
            Some((start?, end))
        });
        return match (task.node_id, task.worker_pid) {
            (Some(node), Some(pid)) => Ok((node, pid, range)),
            _ => Err(LogError::NotFound(format!("task {task_id} has not run on a worker yet")).into()),
        };
    }
    match (q.node(state)?, q.pid) {
        (Some(node), Some(pid)) => Ok((node, pid, None)),
        _ => Err(LogQueryError::Bad(
            "name a log with node_id (or node_ip) and filename, or with actor_id, task_id, or node_id and pid".into(),
        )),
    }
}

/// The log files of the node the query names whose names match its `glob`.
pub fn list(state: &dyn ClusterState, q: &LogQuery, timeout: Duration) -> Result<Vec<LogFileState>, LogQueryError> {
    let node_id = q.node(state)?.ok_or_else(|| LogQueryError::Bad("node_id or node_ip is required".into()))?;
    let mut files = state.list_logs(&node_id, timeout)?;
    if let Some(glob) = &q.glob {
        files.retain(|f| glob_matches(glob, &f.name));
    }
    Ok(files)
}

/// The text the query asks for, and the offset just past it (a follower's next start).
pub fn read(state: &dyn ClusterState, q: LogQuery, timeout: Duration) -> Result<(Vec<u8>, u64), LogQueryError> {
    let (node_id, filename, range) = match &q.filename {
        Some(filename) => {
            let node_id =
                q.node(state)?.ok_or_else(|| LogQueryError::Bad("a filename needs node_id or node_ip".into()))?;
            (node_id, filename.clone(), None)
        }
        None => {
            let (node_id, pid, range) = process_of(state, &q)?;
            let ending = format!("-{pid}.{}", q.suffix);
            let files = state.list_logs(&node_id, timeout)?;
            let file = files.into_iter().find(|f| f.name.starts_with("worker-") && f.name.ends_with(&ending));
            let file = file.ok_or_else(|| LogError::NotFound(format!("no log file of process {pid} on {node_id}")))?;
            (node_id, file.name, range)
        }
    };
    Ok(state.read_log(&node_id, LogRead { filename, tail_lines: q.lines, offset: q.offset, range }, timeout)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_bad_values_are_named() {
        let q = LogQuery::from_query(Some("actor_id=ab&lines=5&suffix=err&offset=10")).unwrap();
        assert_eq!((q.actor_id.as_deref(), q.lines, q.suffix.as_str(), q.offset), (Some("ab"), 5, "err", 10));
        let err = LogQuery::from_query(Some("pid=x")).unwrap_err().to_string();
        assert!(err.contains("pid"), "{err}");
        assert!(LogQuery::from_query(Some("suffix=log")).is_err());
    }

    #[test]
    fn globs_match_as_the_shell_does() {
        for (pattern, name) in
            [("*", "x"), ("worker-*.out", "worker-a-1.out"), ("*-1.*", "worker-a-1.err"), ("n?de*", "node.out")]
        {
            assert!(glob_matches(pattern, name), "{pattern} {name}");
        }
        for (pattern, name) in [("*.out", "worker.err"), ("node", "node.out"), ("?", ""), ("a*b", "acbx")] {
            assert!(!glob_matches(pattern, name), "{pattern} {name}");
        }
    }

    #[test]
    fn files_fall_into_rays_categories() {
        let file = |name: &str| LogFileState { name: name.into(), size: 0, modified_ms: 0 };
        let categories = categorize(vec![file("worker-a-1.out"), file("worker-a-1.err"), file("node.out")]);
        assert_eq!(categories["worker_out"], vec!["worker-a-1.out"]);
        assert_eq!(categories["worker_err"], vec!["worker-a-1.err"]);
        assert_eq!(categories["raylet"], vec!["node.out"]);
    }
}
