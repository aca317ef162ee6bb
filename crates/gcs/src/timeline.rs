//! Task attempts as Chrome-trace events (`rtd.timeline()`, the dashboard's timeline):
//! one complete ("X") event per attempt that ran, from RUNNING to its end, on a row per
//! worker ("tid") grouped by node ("pid"), as Ray's timeline draws them. Loadable in
//! `chrome://tracing` and Perfetto.

use std::collections::BTreeMap;

use rtd_common::ids::hex;
use rtd_common::proto::{TaskEvent, TaskStatus, TaskType};
use rtd_common::task_events::{is_terminal, status_name, type_name};
use rtd_common::NodeId;
use serde_json::{json, Value};

/// When the attempt started running and when it ended (ns), and how.
fn run_span(event: &TaskEvent) -> Option<(u64, u64, TaskStatus)> {
    let start = event.changes.iter().filter(|c| c.state == TaskStatus::TaskRunning as i32).map(|c| c.time_ns).min()?;
    let (end, status) = event
        .changes
        .iter()
        .filter_map(|c| Some((c.time_ns, TaskStatus::try_from(c.state).ok()?)))
        .filter(|(_, s)| is_terminal(*s))
        .max_by_key(|(t, _)| *t)?;
    Some((start, end.max(start), status))
}

/// The trace events of every attempt that ran to its end; `node_names` names nodes
/// (their IP) by id.
pub fn chrome_trace(events: &[TaskEvent], node_names: &BTreeMap<Vec<u8>, String>) -> Vec<Value> {
    let mut spans: Vec<(u64, Value)> = Vec::new();
    for event in events {
        let Some((start, end, status)) = run_span(event) else { continue };
        let node = match node_names.get(event.node_id.as_ref()) {
            Some(ip) => format!("Node {ip}"),
            None => match NodeId::from_bytes(&event.node_id) {
                Ok(id) => format!("Node {id}"),
                Err(_) => "Node ?".into(),
            },
        };
        let task_type = TaskType::try_from(event.r#type).unwrap_or(TaskType::NormalTask);
        let name = if task_type == TaskType::NormalTask { format!("task::{}", event.name) } else { event.name.clone() };
        spans.push((
            start,
            json!({
                "cat": name,
                "name": name,
                "pid": node,
                "tid": format!("worker:{} (pid {})", hex(&event.worker_id), event.worker_pid),
                "ph": "X",
                "ts": start as f64 / 1000.0,
                "dur": (end - start) as f64 / 1000.0,
                "cname": if status == TaskStatus::TaskFailed { "terrible" } else { "rail_response" },
                "args": {
                    "task_id": hex(&event.task_id),
                    "attempt_number": event.attempt,
                    "state": status_name(status),
                    "type": type_name(task_type),
                    "job_id": hex(&event.job_id),
                    "actor_id": hex(&event.actor_id),
                    "error_message": event.error_message,
                },
            }),
        ));
    }
    spans.sort_by_key(|(start, _)| *start);
    spans.into_iter().map(|(_, v)| v).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtd_common::proto::TaskStateChange;

    fn change(state: TaskStatus, time_ns: u64) -> TaskStateChange {
        TaskStateChange { state: state as i32, time_ns }
    }

    #[test]
    fn one_event_per_attempt_that_ran_in_start_order() {
        let node = NodeId::random();
        let ran = |id: u8, start: u64, end_state| TaskEvent {
            task_id: vec![id].into(),
            name: "f".into(),
            node_id: node.to_vec().into(),
            worker_pid: 42,
            changes: vec![change(TaskStatus::TaskRunning, start), change(end_state, start + 2_000)],
            ..Default::default()
        };
        let pending =
            TaskEvent { changes: vec![change(TaskStatus::TaskPendingNodeAssignment, 1)], ..Default::default() };
        let names = BTreeMap::from([(node.to_vec(), "10.0.0.1".to_string())]);
        let trace = chrome_trace(
            &[ran(2, 9_000, TaskStatus::TaskFailed), pending, ran(1, 5_000, TaskStatus::TaskFinished)],
            &names,
        );
        assert_eq!(trace.len(), 2);
        assert_eq!(trace[0]["args"]["task_id"], "01");
        assert_eq!(trace[0]["ts"], 5.0);
        assert_eq!(trace[0]["dur"], 2.0);
        assert_eq!(trace[0]["pid"], "Node 10.0.0.1");
        assert_eq!(trace[0]["name"], "task::f");
        assert_eq!(trace[1]["args"]["state"], "FAILED");
    }
}
