//! What this process sees of tasks (Ray's task events): the submitter records what a
//! task is and its states up to the push, the worker that runs it records RUNNING and
//! how it ended. Records wait in a bounded buffer and go to the GCS in batches every
//! `RTD_TASK_EVENTS_REPORT_INTERVAL_MS` (0 turns them off) and once more when the
//! process disconnects; the GCS merges them per attempt.
//!
//! Recording is on the submit and execute paths of every task, so it allocates nothing
//! there: a state change is a fixed-size entry (task id, attempt, state, time) pushed
//! into a reused buffer, and what a task is (name, type, job, actor, resources) is one
//! shape per kind of call per batch, looked up by a hash, not built per task. The batch
//! goes out as columns (`AddTaskEvents`), which encode and decode without a message
//! per change.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use parking_lot::Mutex;
use rtd_common::proto::{AddTaskEvents, TaskFailure, TaskShape, TaskSpec, TaskStatus, TaskType};
use rtd_common::rpc::RpcClient;
use rtd_common::task_events::now_ns;
use rtd_common::{NodeId, TaskId, WorkerId};

/// Ray's `task_events_report_interval_ms`.
const DEFAULT_REPORT_INTERVAL_MS: u64 = 1000;
/// State changes held at most between two reports (Ray's
/// `task_events_max_num_status_events_buffer_on_worker`); more are dropped and counted.
const MAX_BUFFERED: usize = 100_000;

pub(crate) struct TaskEventBuffer {
    interval: Option<Duration>,
    pending: Mutex<Batch>,
    dropped: AtomicU64,
    /// This worker's node and worker ids, set when it first runs a task.
    runs_here: OnceLock<(NodeId, WorkerId)>,
    /// Hashes a call's kind to find its shape in the batch.
    hasher: foldhash::fast::RandomState,
}

/// What was recorded since the last report.
#[derive(Default)]
struct Batch {
    changes: Vec<Change>,
    /// What tasks are, by the change that first knew it.
    definitions: Vec<Definition>,
    shapes: Vec<TaskShape>,
    /// The latest shape made for each kind of call (by `shape_key`).
    shape_index: HashMap<u64, u32, foldhash::fast::RandomState>,
    /// The changes that are this worker starting to run an attempt.
    ran: Vec<u32>,
    failures: Vec<TaskFailure>,
    /// Where this process's stdout and stderr stood at a change (normal tasks only).
    logged: Vec<LogPosition>,
}

/// Where this process's stdout and stderr files stood at change `change`.
#[derive(Clone, Copy)]
struct LogPosition {
    change: u32,
    stdout: u64,
    stderr: u64,
}

/// The offsets of this process's stdout and stderr (a worker's are its log files);
/// None when either is not a file (a pipe, a terminal).
fn log_offsets() -> Option<(u64, u64)> {
    // SAFETY: lseek on fds 1 and 2 reads their file position and changes nothing.
    let (stdout, stderr) = unsafe { (libc::lseek(1, 0, libc::SEEK_CUR), libc::lseek(2, 0, libc::SEEK_CUR)) };
    Some((u64::try_from(stdout).ok()?, u64::try_from(stderr).ok()?))
}

/// One state change of one attempt.
#[derive(Clone, Copy)]
struct Change {
    task_id: TaskId,
    attempt: u32,
    state: TaskStatus,
    time_ns: u64,
}

/// Change `change` is the submitter's first of its attempt: the task is `shape`,
/// submitted by `parent`.
struct Definition {
    change: u32,
    shape: u32,
    parent: Option<TaskId>,
}

impl Default for TaskEventBuffer {
    fn default() -> Self {
        let ms = std::env::var("RTD_TASK_EVENTS_REPORT_INTERVAL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_REPORT_INTERVAL_MS);
        Self::with_interval((ms > 0).then(|| Duration::from_millis(ms)))
    }
}

fn task_type(spec: &TaskSpec) -> TaskType {
    match (spec.actor_id.is_empty(), spec.actor_creation) {
        (true, _) => TaskType::NormalTask,
        (false, true) => TaskType::ActorCreationTask,
        (false, false) => TaskType::ActorTask,
    }
}

/// Whether `shape` is what `spec` is.
fn same_shape(shape: &TaskShape, spec: &TaskSpec) -> bool {
    shape.name == spec.function_name
        && shape.r#type == task_type(spec) as i32
        && shape.job_id == spec.job_id
        && shape.actor_id == spec.actor_id
        && shape.required_resources == spec.resources
}

/// Where a task's output starts or ends in its worker's log files: normal tasks only,
/// as Ray records it (an actor's calls share their actor's log, and would pay two
/// system calls a call for it).
fn task_log_offsets(spec: &TaskSpec) -> Option<(u64, u64)> {
    spec.actor_id.is_empty().then(log_offsets).flatten()
}

impl Batch {
    fn log_at(&mut self, change: u32, offsets: Option<(u64, u64)>) {
        if let Some((stdout, stderr)) = offsets {
            self.logged.push(LogPosition { change, stdout, stderr });
        }
    }

    fn with_capacity(changes: usize) -> Self {
        Self { changes: Vec::with_capacity(changes), ..Default::default() }
    }

    /// Records `change` unless the buffer is full; its index if it was.
    fn push(&mut self, change: Change) -> Option<u32> {
        (self.changes.len() < MAX_BUFFERED).then(|| {
            self.changes.push(change);
            (self.changes.len() - 1) as u32
        })
    }

    /// The index of `spec`'s shape, made if this batch has none like it yet.
    fn shape_of(&mut self, key: u64, spec: &TaskSpec) -> u32 {
        if let Some(&index) = self.shape_index.get(&key) {
            if same_shape(&self.shapes[index as usize], spec) {
                return index;
            }
        }
        let index = self.shapes.len() as u32;
        self.shapes.push(TaskShape {
            // The function's name, or `Class.method` for actor calls (and `Class.__init__`).
            name: spec.function_name.clone(),
            r#type: task_type(spec) as i32,
            job_id: spec.job_id.clone(),
            actor_id: spec.actor_id.clone(),
            required_resources: spec.resources.clone(),
        });
        self.shape_index.insert(key, index);
        index
    }
}

impl TaskEventBuffer {
    fn with_interval(interval: Option<Duration>) -> Self {
        Self {
            interval,
            pending: Default::default(),
            dropped: Default::default(),
            runs_here: OnceLock::new(),
            hasher: Default::default(),
        }
    }

    /// Records `state` of `spec`'s attempt now, and with it what `also` adds to the
    /// batch (given the change's index); a full buffer counts it dropped instead.
    fn record(&self, spec: &TaskSpec, state: TaskStatus, also: impl FnOnce(&mut Batch, u32)) {
        let change = Change {
            task_id: TaskId::from_bytes(&spec.task_id).unwrap_or_else(|_| TaskId::nil()),
            attempt: spec.attempt,
            state,
            time_ns: now_ns(),
        };
        let mut batch = self.pending.lock();
        match batch.push(change) {
            Some(index) => also(&mut batch, index),
            None => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A task this process submits: what it is, and its first state.
    pub(crate) fn submitted(&self, spec: &TaskSpec, parent: Option<TaskId>, state: TaskStatus) {
        if self.interval.is_none() {
            return;
        }
        let key = self.hasher.hash_one((&spec.function_name, &spec.actor_id, &spec.job_id, spec.actor_creation));
        self.record(spec, state, |batch, change| {
            let shape = batch.shape_of(key, spec);
            batch.definitions.push(Definition { change, shape, parent });
        });
    }

    /// A later state of an attempt (submitter side).
    pub(crate) fn state(&self, spec: &TaskSpec, state: TaskStatus) {
        if self.interval.is_some() {
            self.record(spec, state, |_, _| {});
        }
    }

    /// The attempt failed for the reason `error_type` (Ray's error type name).
    pub(crate) fn failed(&self, spec: &TaskSpec, error_type: &str, message: String) {
        if self.interval.is_some() {
            self.record(spec, TaskStatus::TaskFailed, |batch, change| {
                batch.failures.push(TaskFailure { change, error_type: error_type.to_string(), error_message: message });
            });
        }
    }

    /// This worker (`worker_id` on `node_id`) starts running the attempt.
    pub(crate) fn running(&self, node_id: NodeId, worker_id: WorkerId, spec: &TaskSpec) {
        if self.interval.is_some() {
            self.runs_here.get_or_init(|| (node_id, worker_id));
            let offsets = task_log_offsets(spec);
            self.record(spec, TaskStatus::TaskRunning, |batch, change| {
                batch.ran.push(change);
                batch.log_at(change, offsets);
            });
        }
    }

    /// This worker is done with the attempt: finished, or failed with `error`
    /// (Ray's error type name and the error's text). What it printed is flushed by now.
    pub(crate) fn ended(&self, spec: &TaskSpec, error: Option<(String, String)>) {
        if self.interval.is_none() {
            return;
        }
        let offsets = task_log_offsets(spec);
        let state = if error.is_some() { TaskStatus::TaskFailed } else { TaskStatus::TaskFinished };
        self.record(spec, state, |batch, change| {
            if let Some((error_type, error_message)) = error {
                batch.failures.push(TaskFailure { change, error_type, error_message });
            }
            batch.log_at(change, offsets);
        });
    }

    /// How often what is buffered goes to the GCS; None: task events are off.
    pub(crate) fn interval(&self) -> Option<Duration> {
        self.interval
    }

    /// Everything buffered, as one batch for the GCS with the count dropped since last
    /// time; None when there is nothing to report.
    fn take(&self) -> Option<AddTaskEvents> {
        let batch = {
            let mut pending = self.pending.lock();
            if pending.changes.is_empty() && self.dropped.load(Ordering::Relaxed) == 0 {
                return None;
            }
            // The next batch is likely as large as this one: no regrowing on the hot path.
            let capacity = pending.changes.len();
            std::mem::replace(&mut *pending, Batch::with_capacity(capacity))
        };
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        let n = batch.changes.len();
        let mut out = AddTaskEvents {
            dropped,
            attempts: Vec::with_capacity(n),
            states: Vec::with_capacity(n),
            times_ns: Vec::with_capacity(n),
            shapes: batch.shapes,
            defined: Vec::with_capacity(batch.definitions.len()),
            defined_shapes: Vec::with_capacity(batch.definitions.len()),
            ran: batch.ran,
            failures: batch.failures,
            ..Default::default()
        };
        let mut task_ids = Vec::with_capacity(n * TaskId::LEN);
        for change in &batch.changes {
            task_ids.extend_from_slice(change.task_id.as_bytes());
            out.attempts.push(change.attempt);
            out.states.push(change.state as i32);
            out.times_ns.push(change.time_ns);
        }
        out.task_ids = task_ids.into();
        let mut parents = Vec::with_capacity(batch.definitions.len() * TaskId::LEN);
        for definition in &batch.definitions {
            out.defined.push(definition.change);
            out.defined_shapes.push(definition.shape);
            parents.extend_from_slice(definition.parent.unwrap_or_else(TaskId::nil).as_bytes());
        }
        out.parents = parents.into();
        for position in &batch.logged {
            out.logged.push(position.change);
            out.stdout_offsets.push(position.stdout);
            out.stderr_offsets.push(position.stderr);
        }
        if let Some((node_id, worker_id)) = self.runs_here.get() {
            out.node_id = node_id.as_bytes().to_vec().into();
            out.worker_id = worker_id.as_bytes().to_vec().into();
            out.worker_pid = std::process::id();
        }
        Some(out)
    }

    /// Sends what is buffered to the GCS (through this node's raylet).
    pub(crate) async fn flush(&self, raylet: &RpcClient) {
        let Some(batch) = self.take() else { return };
        let lost = batch.states.len() as u64 + batch.dropped;
        if let Err(e) = raylet.request(batch).await {
            // The GCS is unreachable: count them as dropped next time.
            tracing::debug!("cannot report task events: {e}");
            self.dropped.fetch_add(lost, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer() -> TaskEventBuffer {
        TaskEventBuffer::with_interval(Some(Duration::from_secs(1)))
    }

    fn spec(id: u8, name: &str) -> TaskSpec {
        TaskSpec { task_id: vec![id; TaskId::LEN].into(), function_name: name.into(), ..Default::default() }
    }

    #[test]
    fn a_batch_carries_every_change_and_what_was_known() {
        let events = buffer();
        let mut first = spec(1, "f");
        let parent = TaskId::random();
        events.submitted(&first, Some(parent), TaskStatus::TaskPendingNodeAssignment);
        events.state(&first, TaskStatus::TaskSubmittedToWorker);
        first.attempt = 1;
        let node_id = NodeId::random();
        events.running(node_id, WorkerId::random(), &first);
        events.failed(&first, "WORKER_DIED", "gone".into());
        let batch = events.take().unwrap();
        assert_eq!(batch.dropped, 0);
        assert_eq!(batch.task_ids, vec![1; 4 * TaskId::LEN]);
        assert_eq!(batch.attempts, vec![0, 0, 1, 1]);
        let states = [
            TaskStatus::TaskPendingNodeAssignment,
            TaskStatus::TaskSubmittedToWorker,
            TaskStatus::TaskRunning,
            TaskStatus::TaskFailed,
        ];
        assert_eq!(batch.states, states.map(|s| s as i32));
        assert!(batch.times_ns.windows(2).all(|t| t[0] <= t[1]));
        assert_eq!((batch.defined.as_slice(), batch.defined_shapes.as_slice()), (&[0][..], &[0][..]));
        assert_eq!((batch.shapes[0].name.as_str(), batch.shapes[0].r#type), ("f", TaskType::NormalTask as i32));
        assert_eq!(batch.parents, parent.as_bytes());
        assert_eq!((batch.ran.as_slice(), batch.worker_pid), (&[2][..], std::process::id()));
        assert_eq!(batch.node_id, node_id.as_bytes());
        let failure = &batch.failures[0];
        assert_eq!(
            (failure.change, failure.error_type.as_str(), failure.error_message.as_str()),
            (3, "WORKER_DIED", "gone")
        );
        assert!(events.take().is_none());
    }

    #[test]
    fn calls_alike_share_one_shape_per_batch() {
        let events = buffer();
        let mut gpu = spec(3, "f");
        gpu.resources.insert("GPU".into(), 10_000);
        let mut other_actor = spec(5, "A.m");
        other_actor.actor_id = vec![2; 16].into();
        for s in [spec(1, "f"), spec(2, "f"), gpu, spec(4, "g"), spec(6, "f"), other_actor, spec(7, "A.m")] {
            events.submitted(&s, None, TaskStatus::TaskPendingNodeAssignment);
        }
        let batch = events.take().unwrap();
        let names: Vec<&str> = batch.shapes.iter().map(|s| s.name.as_str()).collect();
        // `f` with other resources is a shape of its own; so is a method of another actor.
        assert_eq!(names, ["f", "f", "g", "f", "A.m", "A.m"]);
        assert_eq!(batch.defined_shapes, [0, 0, 1, 2, 3, 4, 5]);
        assert_eq!(batch.parents, vec![0; 7 * TaskId::LEN], "no parent is the nil id");
        // The next batch makes its own shapes.
        events.submitted(&spec(8, "f"), None, TaskStatus::TaskPendingNodeAssignment);
        assert_eq!(events.take().unwrap().shapes.len(), 1);
    }

    #[test]
    fn a_full_buffer_counts_what_it_drops() {
        let events = buffer();
        let spec = spec(1, "f");
        for _ in 0..MAX_BUFFERED + 3 {
            events.state(&spec, TaskStatus::TaskRunning);
        }
        let batch = events.take().unwrap();
        assert_eq!((batch.states.len(), batch.dropped), (MAX_BUFFERED, 3));
    }

    #[test]
    fn nothing_is_recorded_when_task_events_are_off() {
        let events = TaskEventBuffer::with_interval(None);
        let spec = spec(1, "f");
        events.submitted(&spec, None, TaskStatus::TaskPendingArgsAvail);
        events.ended(&spec, None);
        assert!(events.take().is_none());
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
