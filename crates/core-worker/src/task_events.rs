//! What this process sees of tasks (Ray's task events): the submitter records what a
//! task is and its states up to the push, the worker that runs it records RUNNING and
//! how it ended. Events wait in a bounded buffer and go to the GCS in batches, merged
//! per attempt, every `RTD_TASK_EVENTS_REPORT_INTERVAL_MS` (0 turns them off) and once
//! more when the process disconnects.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use rtd_common::proto::{AddTaskEvents, TaskEvent, TaskSpec, TaskStateChange, TaskStatus, TaskType};
use rtd_common::rpc::RpcClient;
use rtd_common::task_events::now_ns;
use rtd_common::{NodeId, TaskId, WorkerId};

/// Ray's `task_events_report_interval_ms`.
const DEFAULT_REPORT_INTERVAL_MS: u64 = 1000;
/// Events held at most between two reports (Ray's
/// `task_events_max_num_status_events_buffer_on_worker`); more are dropped and counted.
const MAX_BUFFERED: usize = 100_000;

pub(crate) struct TaskEventBuffer {
    interval: Option<Duration>,
    pending: Mutex<Vec<TaskEvent>>,
    dropped: AtomicU64,
}

impl Default for TaskEventBuffer {
    fn default() -> Self {
        let ms = std::env::var("RTD_TASK_EVENTS_REPORT_INTERVAL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_REPORT_INTERVAL_MS);
        Self {
            interval: (ms > 0).then(|| Duration::from_millis(ms)),
            pending: Default::default(),
            dropped: Default::default(),
        }
    }
}

fn change(state: TaskStatus) -> Vec<TaskStateChange> {
    vec![TaskStateChange { state: state as i32, time_ns: now_ns() }]
}

fn task_type(spec: &TaskSpec) -> TaskType {
    match (spec.actor_id.is_empty(), spec.actor_creation) {
        (true, _) => TaskType::NormalTask,
        (false, true) => TaskType::ActorCreationTask,
        (false, false) => TaskType::ActorTask,
    }
}

impl TaskEventBuffer {
    fn push(&self, event: TaskEvent) {
        if self.interval.is_none() {
            return;
        }
        let mut pending = self.pending.lock();
        if pending.len() >= MAX_BUFFERED {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            pending.push(event);
        }
    }

    /// A task this process submits: what it is, and its first state.
    pub(crate) fn submitted(&self, spec: &TaskSpec, parent: Option<TaskId>, state: TaskStatus) {
        if self.interval.is_none() {
            return;
        }
        self.push(TaskEvent {
            task_id: spec.task_id.clone(),
            attempt: spec.attempt,
            // The function's name, or `Class.method` for actor calls (and `Class.__init__`).
            name: spec.function_name.clone(),
            r#type: task_type(spec) as i32,
            job_id: spec.job_id.clone(),
            actor_id: spec.actor_id.clone(),
            parent_task_id: parent.map(|p| Bytes::copy_from_slice(p.as_bytes())).unwrap_or_default(),
            required_resources: spec.resources.clone(),
            changes: change(state),
            ..Default::default()
        });
    }

    /// A later state of an attempt (submitter side).
    pub(crate) fn state(&self, spec: &TaskSpec, state: TaskStatus) {
        self.push(TaskEvent {
            task_id: spec.task_id.clone(),
            attempt: spec.attempt,
            changes: change(state),
            ..Default::default()
        });
    }

    /// The attempt failed for the reason `error_type` (Ray's error type name).
    pub(crate) fn failed(&self, spec: &TaskSpec, error_type: &str, message: String) {
        self.push(TaskEvent {
            task_id: spec.task_id.clone(),
            attempt: spec.attempt,
            changes: change(TaskStatus::TaskFailed),
            error_type: error_type.to_string(),
            error_message: message,
            ..Default::default()
        });
    }

    /// This worker (`worker_id` on `node_id`) starts running the attempt.
    pub(crate) fn running(&self, node_id: NodeId, worker_id: WorkerId, spec: &TaskSpec) {
        self.push(TaskEvent {
            task_id: spec.task_id.clone(),
            attempt: spec.attempt,
            node_id: Bytes::copy_from_slice(node_id.as_bytes()),
            worker_id: Bytes::copy_from_slice(worker_id.as_bytes()),
            worker_pid: std::process::id(),
            changes: change(TaskStatus::TaskRunning),
            ..Default::default()
        });
    }

    /// This worker is done with the attempt: finished, or failed with `error`
    /// (Ray's error type name and the error's text).
    pub(crate) fn ended(&self, spec: &TaskSpec, error: Option<(String, String)>) {
        match error {
            Some((error_type, message)) => self.failed(spec, &error_type, message),
            None => self.state(spec, TaskStatus::TaskFinished),
        }
    }

    /// Everything buffered, merged per attempt, and the count dropped since last time.
    fn take(&self) -> (Vec<TaskEvent>, u64) {
        let events = std::mem::take(&mut *self.pending.lock());
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        let mut merged: Vec<TaskEvent> = Vec::new();
        let mut index: HashMap<(Bytes, u32), usize> = HashMap::new();
        for event in events {
            match index.get(&(event.task_id.clone(), event.attempt)) {
                Some(&i) => merge_into(&mut merged[i], event),
                None => {
                    index.insert((event.task_id.clone(), event.attempt), merged.len());
                    merged.push(event);
                }
            }
        }
        (merged, dropped)
    }

    /// How often what is buffered goes to the GCS; None: task events are off.
    pub(crate) fn interval(&self) -> Option<Duration> {
        self.interval
    }

    /// Sends what is buffered to the GCS (through this node's raylet).
    pub(crate) async fn flush(&self, raylet: &RpcClient) {
        let (events, dropped) = self.take();
        if events.is_empty() && dropped == 0 {
            return;
        }
        let lost = events.len() as u64 + dropped;
        if let Err(e) = raylet.request(AddTaskEvents { events, dropped }).await {
            // The GCS is unreachable: count them as dropped next time.
            tracing::debug!("cannot report task events: {e}");
            self.dropped.fetch_add(lost, Ordering::Relaxed);
        }
    }
}

/// Folds a later event of the same attempt, from this process, into `held`.
fn merge_into(held: &mut TaskEvent, event: TaskEvent) {
    held.changes.extend(event.changes);
    if held.node_id.is_empty() {
        held.node_id = event.node_id;
        held.worker_id = event.worker_id;
        held.worker_pid = event.worker_pid;
    }
    if !event.error_type.is_empty() {
        held.error_type = event.error_type;
        held.error_message = event.error_message;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer() -> TaskEventBuffer {
        TaskEventBuffer {
            interval: Some(Duration::from_secs(1)),
            pending: Default::default(),
            dropped: Default::default(),
        }
    }

    #[test]
    fn events_of_one_attempt_merge_and_attempts_stay_apart() {
        let events = buffer();
        let mut spec = TaskSpec { task_id: vec![1; 24].into(), function_name: "f".into(), ..Default::default() };
        events.submitted(&spec, None, TaskStatus::TaskPendingNodeAssignment);
        events.state(&spec, TaskStatus::TaskSubmittedToWorker);
        spec.attempt = 1;
        events.failed(&spec, "WORKER_DIED", "gone".into());
        let (batch, dropped) = events.take();
        assert_eq!(dropped, 0);
        assert_eq!(batch.len(), 2);
        assert_eq!((batch[0].name.as_str(), batch[0].changes.len()), ("f", 2));
        assert_eq!((batch[1].attempt, batch[1].error_type.as_str()), (1, "WORKER_DIED"));
        assert!(events.take().0.is_empty());
    }

    #[test]
    fn a_full_buffer_counts_what_it_drops() {
        let events = buffer();
        let spec = TaskSpec::default();
        for _ in 0..MAX_BUFFERED + 3 {
            events.state(&spec, TaskStatus::TaskRunning);
        }
        assert_eq!(events.take().1, 3);
    }

    #[test]
    fn task_types_follow_the_spec() {
        let mut spec = TaskSpec::default();
        assert_eq!(task_type(&spec), TaskType::NormalTask);
        spec.actor_id = vec![1].into();
        assert_eq!(task_type(&spec), TaskType::ActorTask);
        spec.actor_creation = true;
        assert_eq!(task_type(&spec), TaskType::ActorCreationTask);
    }
}
