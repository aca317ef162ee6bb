//! What this process sees of tasks (Ray's task events): the submitter records what a
//! task is and its states up to the push, the worker that runs it records RUNNING and
//! how it ended. Records wait in a bounded buffer and go to the GCS in batches every
//! `RTD_TASK_EVENTS_REPORT_INTERVAL_MS` (0 turns them off) and once more when the
//! process disconnects; the GCS merges them per attempt.
//!
//! Recording is on the submit and execute paths of every task, so a record is small
//! and made without locking twice: a state change is a task id (a shared `Bytes`),
//! attempt, state and time; what a task is, where it ran or why it failed rides along
//! only on the record that first knows it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use rtd_common::proto::{AddTaskEvents, TaskEvent, TaskSpec, TaskStateChange, TaskStatus, TaskType};
use rtd_common::rpc::RpcClient;
use rtd_common::task_events::now_ns;
use rtd_common::{NodeId, TaskId, WorkerId};

/// Ray's `task_events_report_interval_ms`.
const DEFAULT_REPORT_INTERVAL_MS: u64 = 1000;
/// Records held at most between two reports (Ray's
/// `task_events_max_num_status_events_buffer_on_worker`); more are dropped and counted.
const MAX_BUFFERED: usize = 100_000;

pub(crate) struct TaskEventBuffer {
    interval: Option<Duration>,
    pending: Mutex<Vec<Record>>,
    dropped: AtomicU64,
    /// This worker's node and worker ids as events carry them, made once.
    runs_here: OnceLock<(Bytes, Bytes)>,
}

/// One state change of one attempt, and what else this process knows of it then.
struct Record {
    task_id: Bytes,
    attempt: u32,
    state: TaskStatus,
    time_ns: u64,
    detail: Detail,
}

enum Detail {
    None,
    /// What the task is (the submitter's first record of an attempt).
    Definition(Box<Definition>),
    /// It runs here (the worker's RUNNING record).
    Ran,
    /// Why it failed: Ray's error type name and the error's text.
    Failed {
        error_type: String,
        message: String,
    },
}

struct Definition {
    name: String,
    task_type: TaskType,
    job_id: Bytes,
    actor_id: Bytes,
    parent: Option<TaskId>,
    resources: std::collections::HashMap<String, i64>,
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
            runs_here: OnceLock::new(),
        }
    }
}

fn task_type(spec: &TaskSpec) -> TaskType {
    match (spec.actor_id.is_empty(), spec.actor_creation) {
        (true, _) => TaskType::NormalTask,
        (false, true) => TaskType::ActorCreationTask,
        (false, false) => TaskType::ActorTask,
    }
}

impl TaskEventBuffer {
    fn push(&self, spec: &TaskSpec, state: TaskStatus, detail: Detail) {
        let record = Record { task_id: spec.task_id.clone(), attempt: spec.attempt, state, time_ns: now_ns(), detail };
        let mut pending = self.pending.lock();
        if pending.len() >= MAX_BUFFERED {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            pending.push(record);
        }
    }

    /// A task this process submits: what it is, and its first state.
    pub(crate) fn submitted(&self, spec: &TaskSpec, parent: Option<TaskId>, state: TaskStatus) {
        if self.interval.is_none() {
            return;
        }
        let definition = Definition {
            // The function's name, or `Class.method` for actor calls (and `Class.__init__`).
            name: spec.function_name.clone(),
            task_type: task_type(spec),
            job_id: spec.job_id.clone(),
            actor_id: spec.actor_id.clone(),
            parent,
            resources: spec.resources.clone(),
        };
        self.push(spec, state, Detail::Definition(Box::new(definition)));
    }

    /// A later state of an attempt (submitter side).
    pub(crate) fn state(&self, spec: &TaskSpec, state: TaskStatus) {
        if self.interval.is_some() {
            self.push(spec, state, Detail::None);
        }
    }

    /// The attempt failed for the reason `error_type` (Ray's error type name).
    pub(crate) fn failed(&self, spec: &TaskSpec, error_type: &str, message: String) {
        if self.interval.is_some() {
            let detail = Detail::Failed { error_type: error_type.to_string(), message };
            self.push(spec, TaskStatus::TaskFailed, detail);
        }
    }

    /// This worker (`worker_id` on `node_id`) starts running the attempt.
    pub(crate) fn running(&self, node_id: NodeId, worker_id: WorkerId, spec: &TaskSpec) {
        if self.interval.is_some() {
            self.runs_here.get_or_init(|| {
                (Bytes::copy_from_slice(node_id.as_bytes()), Bytes::copy_from_slice(worker_id.as_bytes()))
            });
            self.push(spec, TaskStatus::TaskRunning, Detail::Ran);
        }
    }

    /// This worker is done with the attempt: finished, or failed with `error`
    /// (Ray's error type name and the error's text).
    pub(crate) fn ended(&self, spec: &TaskSpec, error: Option<(String, String)>) {
        match error {
            Some((error_type, message)) => self.failed(spec, &error_type, message),
            None => self.state(spec, TaskStatus::TaskFinished),
        }
    }

    /// How often what is buffered goes to the GCS; None: task events are off.
    pub(crate) fn interval(&self) -> Option<Duration> {
        self.interval
    }

    /// Everything buffered, as events for the GCS, and the count dropped since last time.
    fn take(&self) -> (Vec<TaskEvent>, u64) {
        let records = {
            let mut pending = self.pending.lock();
            // The next batch is likely as large as this one: no regrowing on the hot path.
            let capacity = pending.len();
            std::mem::replace(&mut *pending, Vec::with_capacity(capacity))
        };
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        let mut events: Vec<TaskEvent> = Vec::with_capacity(records.len());
        for record in records {
            // A worker's RUNNING and FINISHED of one call usually follow each other: one
            // event carries both (the GCS merges the rest per attempt).
            match events.last_mut() {
                Some(last) if last.task_id == record.task_id && last.attempt == record.attempt => {
                    record.merge_into(last, &self.runs_here)
                }
                _ => events.push(record.into_event(&self.runs_here)),
            }
        }
        (events, dropped)
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

impl Record {
    fn into_event(self, runs_here: &OnceLock<(Bytes, Bytes)>) -> TaskEvent {
        let mut event = TaskEvent { task_id: self.task_id.clone(), attempt: self.attempt, ..Default::default() };
        self.merge_into(&mut event, runs_here);
        event
    }

    /// Adds this record's state change, and what it knew, to `event` (of the same attempt).
    fn merge_into(self, event: &mut TaskEvent, runs_here: &OnceLock<(Bytes, Bytes)>) {
        event.changes.push(TaskStateChange { state: self.state as i32, time_ns: self.time_ns });
        match self.detail {
            Detail::None => {}
            Detail::Definition(d) => {
                event.name = d.name;
                event.r#type = d.task_type as i32;
                event.job_id = d.job_id;
                event.actor_id = d.actor_id;
                event.parent_task_id = d.parent.map(|p| Bytes::copy_from_slice(p.as_bytes())).unwrap_or_default();
                event.required_resources = d.resources;
            }
            Detail::Ran => {
                if let Some((node_id, worker_id)) = runs_here.get() {
                    event.node_id = node_id.clone();
                    event.worker_id = worker_id.clone();
                }
                event.worker_pid = std::process::id();
            }
            Detail::Failed { error_type, message } => {
                event.error_type = error_type;
                event.error_message = message;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer() -> TaskEventBuffer {
        TaskEventBuffer { interval: Some(Duration::from_secs(1)), ..TaskEventBuffer::off() }
    }

    impl TaskEventBuffer {
        fn off() -> Self {
            Self {
                interval: None,
                pending: Default::default(),
                dropped: Default::default(),
                runs_here: OnceLock::new(),
            }
        }
    }

    #[test]
    fn each_record_becomes_an_event_with_what_it_knew() {
        let events = buffer();
        let mut spec = TaskSpec { task_id: vec![1; 24].into(), function_name: "f".into(), ..Default::default() };
        events.submitted(&spec, None, TaskStatus::TaskPendingNodeAssignment);
        events.state(&spec, TaskStatus::TaskSubmittedToWorker);
        spec.attempt = 1;
        events.running(NodeId::random(), WorkerId::random(), &spec);
        events.failed(&spec, "WORKER_DIED", "gone".into());
        let (batch, dropped) = events.take();
        assert_eq!(dropped, 0);
        // Records of one attempt that follow each other are one event.
        assert_eq!(batch.len(), 2);
        assert_eq!((batch[0].name.as_str(), batch[0].r#type), ("f", TaskType::NormalTask as i32));
        assert_eq!(batch[0].changes.len(), 2);
        assert_eq!((batch[1].attempt, batch[1].worker_pid, batch[1].changes.len()), (1, std::process::id(), 2));
        assert_eq!(batch[1].node_id.len(), NodeId::LEN);
        assert_eq!((batch[1].error_type.as_str(), batch[1].error_message.as_str()), ("WORKER_DIED", "gone"));
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
    fn nothing_is_recorded_when_task_events_are_off() {
        let events = TaskEventBuffer::off();
        let spec = TaskSpec::default();
        events.submitted(&spec, None, TaskStatus::TaskPendingArgsAvail);
        events.ended(&spec, None);
        assert!(events.take().0.is_empty());
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
