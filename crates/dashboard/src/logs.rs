//! `/api/v0/logs`: a node's log files, and one log file's text, named directly
//! (`node_id` and `filename`) or by what wrote it (`actor_id`, `task_id`, or `pid` with
//! `node_id`), as Ray's log API takes them. A worker's files are
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

/// The node and pid of the process the query names by what ran in it.
fn process_of(state: &dyn ClusterState, q: &LogQuery) -> Result<(String, u32), LogQueryError> {
    if let Some(actor_id) = &q.actor_id {
        let actor = state.actors().into_iter().find(|a| a.actor_id.eq_ignore_ascii_case(actor_id));
        let actor = actor.ok_or_else(|| LogError::NotFound(format!("no actor {actor_id}")))?;
        return match (actor.node_id, actor.pid) {
            (Some(node), pid) if pid != 0 => Ok((node, pid)),
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
        return match (task.node_id, task.worker_pid) {
            (Some(node), Some(pid)) => Ok((node, pid)),
            _ => Err(LogError::NotFound(format!("task {task_id} has not run on a worker yet")).into()),
        };
    }
    match (&q.node_id, q.pid) {
        (Some(node), Some(pid)) => Ok((node.clone(), pid)),
        _ => Err(LogQueryError::Bad(
            "name a log with node_id and filename, or with actor_id, task_id, or node_id and pid".into(),
        )),
    }
}

/// The text the query asks for, and the offset just past it (a follower's next start).
pub fn read(state: &dyn ClusterState, q: LogQuery, timeout: Duration) -> Result<(Vec<u8>, u64), LogQueryError> {
    let (node_id, filename) = match (&q.node_id, &q.filename) {
        (Some(node), Some(filename)) => (node.clone(), filename.clone()),
        _ => {
            let (node_id, pid) = process_of(state, &q)?;
            let ending = format!("-{pid}.{}", q.suffix);
            let files = state.list_logs(&node_id, timeout)?;
            let file = files.into_iter().find(|f| f.name.starts_with("worker-") && f.name.ends_with(&ending));
            let file = file.ok_or_else(|| LogError::NotFound(format!("no log file of process {pid} on {node_id}")))?;
            (node_id, file.name)
        }
    };
    Ok(state.read_log(&node_id, LogRead { filename, tail_lines: q.lines, offset: q.offset }, timeout)?)
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
    fn files_fall_into_rays_categories() {
        let file = |name: &str| LogFileState { name: name.into(), size: 0, modified_ms: 0 };
        let categories = categorize(vec![file("worker-a-1.out"), file("worker-a-1.err"), file("node.out")]);
        assert_eq!(categories["worker_out"], vec!["worker-a-1.out"]);
        assert_eq!(categories["worker_err"], vec!["worker-a-1.err"]);
        assert_eq!(categories["raylet"], vec!["node.out"]);
    }
}
