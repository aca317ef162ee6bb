//! The GCS's task table: what every process reported of every task attempt (Ray's
//! task events), merged by (task, attempt), for the state API, the dashboard and the
//! timeline.
//!
//! It is bounded (`RTD_TASK_EVENTS_MAX_NUM_TASK_IN_GCS`, Ray's default 100 000
//! attempts): past the bound the oldest finished attempt goes first, then the oldest of
//! any. Dropped attempts are counted, with those the workers could not send, so the
//! state API can say its view is partial.
//!
//! Batches arrive as columns (`AddTaskEvents`) and are folded in one pass. An attempt
//! held is small: fixed-size ids, its state changes, and shared pointers to what its
//! batch said the task is and where it ran; the state API's `TaskEvent`s are built
//! only when read.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use rtd_common::proto::{AddTaskEvents, TaskEvent, TaskShape, TaskStateChange, TaskStatus};
use rtd_common::task_events::is_terminal;
use rtd_common::TaskId;

/// Ray's `task_events_max_num_task_in_gcs`.
const DEFAULT_MAX_TASKS: usize = 100_000;

type Key = (TaskId, u32);
/// Attempts by key; task ids are random, so a fast seeded hash does.
type Tasks = HashMap<Key, Attempt, foldhash::fast::RandomState>;

pub struct TaskTable {
    inner: Mutex<Inner>,
}

struct Inner {
    max: usize,
    tasks: Tasks,
    /// Every key in arrival order, and the keys of finished attempts in the order they
    /// finished. Both may hold keys already evicted; they are skipped when popped, and
    /// compacted in the rare case they grow past twice the bound.
    arrived: VecDeque<Key>,
    finished: VecDeque<Key>,
    dropped: u64,
}

/// What is known of one attempt.
#[derive(Default)]
struct Attempt {
    shape: Option<Arc<TaskShape>>,
    parent: Option<TaskId>,
    changes: Vec<TaskStateChange>,
    ran: Option<Arc<RanOn>>,
    error: Option<Box<(String, String)>>,
    /// Where its output starts and ends in its worker's log files (normal tasks).
    log: Option<Box<LogSpan>>,
    /// Its latest state is FINISHED or FAILED.
    terminal: bool,
}

/// (stdout, stderr) offsets in a worker's log files where an attempt's output starts
/// (at RUNNING) and ends.
#[derive(Default)]
struct LogSpan {
    start: Option<(u64, u64)>,
    end: Option<(u64, u64)>,
}

/// The worker that ran an attempt.
struct RanOn {
    node_id: Bytes,
    worker_id: Bytes,
    pid: u32,
}

/// A batch the GCS cannot read.
#[derive(Debug, thiserror::Error)]
#[error("malformed task events: {0}")]
pub struct MalformedBatch(&'static str);

/// Which attempts `TaskTable::count_by_state` counts together.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskStateCount {
    pub name: String,
    pub state: TaskStatus,
    pub is_retry: bool,
}

impl Default for TaskTable {
    fn default() -> Self {
        let max = std::env::var("RTD_TASK_EVENTS_MAX_NUM_TASK_IN_GCS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MAX_TASKS);
        Self::with_capacity(max)
    }
}

/// The state an attempt reached last (by time), if any.
pub fn latest_state(event: &TaskEvent) -> Option<TaskStatus> {
    latest_of(&event.changes)
}

fn latest_of(changes: &[TaskStateChange]) -> Option<TaskStatus> {
    changes.iter().max_by_key(|c| (c.time_ns, c.state)).and_then(|c| TaskStatus::try_from(c.state).ok())
}

impl TaskTable {
    pub fn with_capacity(max: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                max: max.max(1),
                tasks: Tasks::default(),
                arrived: VecDeque::new(),
                finished: VecDeque::new(),
                dropped: 0,
            }),
        }
    }

    /// Merges a batch of state changes from one process; a malformed one is refused whole.
    pub fn add(&self, batch: AddTaskEvents) -> Result<(), MalformedBatch> {
        let n = batch.states.len();
        if batch.attempts.len() != n || batch.times_ns.len() != n || batch.task_ids.len() != n * TaskId::LEN {
            return Err(MalformedBatch("the columns of state changes differ in length"));
        }
        let logged = batch.logged.len();
        if batch.stdout_offsets.len() != logged || batch.stderr_offsets.len() != logged {
            return Err(MalformedBatch("the columns of log offsets differ in length"));
        }
        let defined = batch.defined.len();
        if batch.defined_shapes.len() != defined || batch.parents.len() != defined * TaskId::LEN {
            return Err(MalformedBatch("the columns of task definitions differ in length"));
        }
        let in_range = |i: &u32| (*i as usize) < n;
        if !(batch.defined.iter().all(in_range)
            && batch.ran.iter().all(in_range)
            && batch.logged.iter().all(in_range)
            && batch.failures.iter().all(|f| in_range(&f.change))
            && batch.defined_shapes.iter().all(|s| (*s as usize) < batch.shapes.len()))
        {
            return Err(MalformedBatch("an index is out of range"));
        }
        // What rides along with some changes, by change index.
        let mut extra: Vec<Extra> = Vec::new();
        let mut extra_of: Vec<u32> = Vec::new();
        if !(batch.defined.is_empty() && batch.ran.is_empty() && batch.failures.is_empty() && batch.logged.is_empty()) {
            extra_of = vec![u32::MAX; n];
        }
        let mut extra_at = |extra: &mut Vec<Extra>, change: u32| -> usize {
            let slot = &mut extra_of[change as usize];
            if *slot == u32::MAX {
                *slot = extra.len() as u32;
                extra.push(Extra::default());
            }
            *slot as usize
        };
        // Held ids are copied out of the request's frame, which would otherwise stay in
        // memory for as long as one attempt of the batch is held.
        let shapes: Vec<Arc<TaskShape>> = batch
            .shapes
            .into_iter()
            .map(|shape| {
                Arc::new(TaskShape {
                    job_id: Bytes::copy_from_slice(&shape.job_id),
                    actor_id: Bytes::copy_from_slice(&shape.actor_id),
                    ..shape
                })
            })
            .collect();
        for (j, (&change, &shape)) in batch.defined.iter().zip(&batch.defined_shapes).enumerate() {
            let parent = TaskId::from_bytes(&batch.parents[j * TaskId::LEN..(j + 1) * TaskId::LEN])
                .ok()
                .filter(|p| *p != TaskId::nil());
            let at = extra_at(&mut extra, change);
            extra[at].shape = Some((shapes[shape as usize].clone(), parent));
        }
        if !batch.ran.is_empty() {
            let ran = Arc::new(RanOn {
                node_id: Bytes::copy_from_slice(&batch.node_id),
                worker_id: Bytes::copy_from_slice(&batch.worker_id),
                pid: batch.worker_pid,
            });
            for &change in &batch.ran {
                let at = extra_at(&mut extra, change);
                extra[at].ran = Some(ran.clone());
            }
        }
        for failure in batch.failures {
            let at = extra_at(&mut extra, failure.change);
            extra[at].error = Some(Box::new((failure.error_type, failure.error_message)));
        }
        for (j, &change) in batch.logged.iter().enumerate() {
            let at = extra_at(&mut extra, change);
            extra[at].log_offsets = Some((batch.stdout_offsets[j], batch.stderr_offsets[j]));
        }
        let mut inner = self.inner.lock();
        inner.dropped += batch.dropped;
        for (i, chunk) in batch.task_ids.chunks_exact(TaskId::LEN).enumerate() {
            let Ok(task_id) = TaskId::from_bytes(chunk) else { continue };
            let change = TaskStateChange { state: batch.states[i], time_ns: batch.times_ns[i] };
            let extra = match extra_of.get(i) {
                Some(&at) if at != u32::MAX => std::mem::take(&mut extra[at as usize]),
                _ => Extra::default(),
            };
            inner.add((task_id, batch.attempts[i]), change, extra);
        }
        Ok(())
    }

    /// How many attempts held are in each state, by function name and whether the
    /// attempt is a retry (Ray's `ray_tasks{Name,State,IsRetry}`). Attempts whose state
    /// is not known yet are left out.
    pub fn count_by_state(&self) -> HashMap<TaskStateCount, u64> {
        let inner = self.inner.lock();
        let mut counts = HashMap::new();
        for ((_, attempt), held) in &inner.tasks {
            if let Some(state) = latest_of(&held.changes) {
                let name = held.shape.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                let key = TaskStateCount { name, state, is_retry: *attempt > 0 };
                *counts.entry(key).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Every attempt held, as the state API shows it, and how many were dropped.
    pub fn snapshot(&self) -> (Vec<TaskEvent>, u64) {
        let inner = self.inner.lock();
        (inner.tasks.iter().map(|(key, held)| held.to_event(key)).collect(), inner.dropped)
    }
}

/// What a batch said of an attempt besides a state change.
#[derive(Default)]
struct Extra {
    shape: Option<(Arc<TaskShape>, Option<TaskId>)>,
    ran: Option<Arc<RanOn>>,
    error: Option<Box<(String, String)>>,
    /// Where the worker's (stdout, stderr) stood at this change.
    log_offsets: Option<(u64, u64)>,
}

impl Attempt {
    /// Adds what a batch said of this attempt; whether that made it finished (or failed).
    fn merge(&mut self, change: TaskStateChange, extra: Extra) -> bool {
        if let Some((shape, parent)) = extra.shape {
            self.shape = Some(shape);
            self.parent = parent;
        }
        if extra.ran.is_some() {
            self.ran = extra.ran;
        }
        if extra.error.is_some() {
            self.error = extra.error;
        }
        if let Some(offsets) = extra.log_offsets {
            let span = self.log.get_or_insert_with(Default::default);
            if change.state == TaskStatus::TaskRunning as i32 {
                span.start = Some(offsets);
            } else {
                span.end = Some(offsets);
            }
        }
        self.changes.push(change);
        let was_terminal = self.terminal;
        self.terminal = latest_of(&self.changes).is_some_and(is_terminal);
        self.terminal && !was_terminal
    }

    fn to_event(&self, (task_id, attempt): &Key) -> TaskEvent {
        let mut event = TaskEvent {
            task_id: task_id.as_bytes().to_vec().into(),
            attempt: *attempt,
            changes: self.changes.clone(),
            ..Default::default()
        };
        if let Some(shape) = &self.shape {
            event.name = shape.name.clone();
            event.r#type = shape.r#type;
            event.job_id = shape.job_id.clone();
            event.actor_id = shape.actor_id.clone();
            event.required_resources = shape.required_resources.clone();
        }
        if let Some(parent) = &self.parent {
            event.parent_task_id = parent.as_bytes().to_vec().into();
        }
        if let Some(ran) = &self.ran {
            event.node_id = ran.node_id.clone();
            event.worker_id = ran.worker_id.clone();
            event.worker_pid = ran.pid;
        }
        if let Some(error) = &self.error {
            (event.error_type, event.error_message) = (**error).clone();
        }
        if let Some(span) = &self.log {
            (event.stdout_start, event.stderr_start) = (span.start.map(|s| s.0), span.start.map(|s| s.1));
            (event.stdout_end, event.stderr_end) = (span.end.map(|e| e.0), span.end.map(|e| e.1));
        }
        event
    }
}

impl Inner {
    fn add(&mut self, key: Key, change: TaskStateChange, extra: Extra) {
        let now_terminal = match self.tasks.get_mut(&key) {
            Some(held) => held.merge(change, extra),
            None => {
                self.evict();
                self.arrived.push_back(key);
                let mut held = Attempt { changes: Vec::with_capacity(4), ..Default::default() };
                let now_terminal = held.merge(change, extra);
                self.tasks.insert(key, held);
                now_terminal
            }
        };
        if now_terminal {
            self.finished.push_back(key);
        }
        if self.arrived.len() > 2 * self.max || self.finished.len() > 2 * self.max {
            let tasks = &self.tasks;
            self.arrived.retain(|k| tasks.contains_key(k));
            self.finished.retain(|k| tasks.contains_key(k));
        }
    }

    /// Makes room for one more attempt: past the bound the oldest finished goes first.
    fn evict(&mut self) {
        while self.tasks.len() >= self.max {
            if !(remove_first_held(&mut self.finished, &mut self.tasks)
                || remove_first_held(&mut self.arrived, &mut self.tasks))
            {
                return;
            }
            self.dropped += 1;
        }
        // Usually the oldest arrivals are the ones gone: forget them now, so the
        // arrival queue stays near the bound without compacting.
        while self.arrived.front().is_some_and(|k| !self.tasks.contains_key(k)) {
            self.arrived.pop_front();
        }
    }
}

/// Removes from `tasks` the first attempt of `queue` it still holds, taking it off
/// `queue` with the keys before it; false if it held none.
fn remove_first_held(queue: &mut VecDeque<Key>, tasks: &mut Tasks) -> bool {
    while let Some(key) = queue.pop_front() {
        if tasks.remove(&key).is_some() {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtd_common::proto::TaskFailure;

    /// Builds a batch as a core worker sends it.
    #[derive(Default)]
    struct Batch(AddTaskEvents);

    impl Batch {
        fn change(mut self, id: u8, attempt: u32, state: TaskStatus, time_ns: u64) -> Self {
            self.0.task_ids = [&self.0.task_ids[..], &[id; TaskId::LEN]].concat().into();
            self.0.attempts.push(attempt);
            self.0.states.push(state as i32);
            self.0.times_ns.push(time_ns);
            self
        }

        fn last(&self) -> u32 {
            self.0.states.len() as u32 - 1
        }

        /// The last change says its task is `name`, submitted by task `parent`.
        fn defines(mut self, name: &str, parent: u8) -> Self {
            let change = self.last();
            self.0.shapes.push(TaskShape { name: name.into(), ..Default::default() });
            self.0.defined.push(change);
            self.0.defined_shapes.push(self.0.shapes.len() as u32 - 1);
            self.0.parents = [&self.0.parents[..], &[parent; TaskId::LEN]].concat().into();
            self
        }

        /// The last change happened in worker process `pid`.
        fn ran(mut self, pid: u32) -> Self {
            self.0.ran.push(self.last());
            self.0.worker_pid = pid;
            self
        }

        fn failed(mut self, error_type: &str) -> Self {
            let change = self.last();
            self.0.failures.push(TaskFailure { change, error_type: error_type.into(), error_message: "boom".into() });
            self
        }

        /// The worker's stdout and stderr stood at these offsets at the last change.
        fn logged(mut self, stdout: u64, stderr: u64) -> Self {
            self.0.logged.push(self.last());
            self.0.stdout_offsets.push(stdout);
            self.0.stderr_offsets.push(stderr);
            self
        }

        fn dropped(mut self, dropped: u64) -> Self {
            self.0.dropped = dropped;
            self
        }
    }

    fn add(table: &TaskTable, batch: Batch) {
        table.add(batch.0).unwrap();
    }

    #[test]
    fn submitter_and_worker_events_merge_by_attempt() {
        let table = TaskTable::with_capacity(10);
        add(&table, Batch::default().change(1, 0, TaskStatus::TaskSubmittedToWorker, 1).defines("f", 9));
        let ran = Batch::default()
            .change(1, 0, TaskStatus::TaskRunning, 2)
            .ran(7)
            .logged(100, 10)
            .change(1, 0, TaskStatus::TaskFinished, 3)
            .logged(150, 12)
            .change(1, 1, TaskStatus::TaskRunning, 4)
            .change(1, 1, TaskStatus::TaskFailed, 5)
            .failed("WORKER_DIED")
            .dropped(2);
        add(&table, ran);
        let (tasks, dropped) = table.snapshot();
        assert_eq!(tasks.len(), 2);
        assert_eq!(dropped, 2);
        let first = tasks.iter().find(|t| t.attempt == 0).unwrap();
        assert_eq!((first.name.as_str(), first.worker_pid), ("f", 7));
        assert_eq!(first.task_id, vec![1; TaskId::LEN]);
        assert_eq!(first.parent_task_id, vec![9; TaskId::LEN]);
        assert_eq!(latest_state(first), Some(TaskStatus::TaskFinished));
        assert_eq!((first.stdout_start, first.stdout_end), (Some(100), Some(150)));
        assert_eq!((first.stderr_start, first.stderr_end), (Some(10), Some(12)));
        let retry = tasks.iter().find(|t| t.attempt == 1).unwrap();
        assert_eq!((retry.error_type.as_str(), retry.error_message.as_str()), ("WORKER_DIED", "boom"));
        assert!(retry.parent_task_id.is_empty() && retry.name.is_empty());
        assert_eq!((retry.stdout_start, retry.stdout_end), (None, None));
    }

    #[test]
    fn attempts_count_by_name_latest_state_and_retry() {
        let table = TaskTable::with_capacity(10);
        let first = Batch::default()
            .change(1, 0, TaskStatus::TaskRunning, 1)
            .defines("f", 0)
            .change(2, 0, TaskStatus::TaskRunning, 1)
            .defines("f", 0);
        add(&table, first);
        add(
            &table,
            Batch::default()
                .change(1, 0, TaskStatus::TaskFinished, 2)
                .change(2, 1, TaskStatus::TaskRunning, 3)
                .defines("f", 0),
        );
        let counts = table.count_by_state();
        let count = |state, is_retry| counts.get(&TaskStateCount { name: "f".into(), state, is_retry }).copied();
        assert_eq!(count(TaskStatus::TaskFinished, false), Some(1));
        assert_eq!(count(TaskStatus::TaskRunning, false), Some(1));
        assert_eq!(count(TaskStatus::TaskRunning, true), Some(1));
        assert_eq!(counts.len(), 3);
    }

    #[test]
    fn past_the_bound_the_oldest_finished_goes_first() {
        let table = TaskTable::with_capacity(2);
        add(&table, Batch::default().change(1, 0, TaskStatus::TaskRunning, 1));
        add(&table, Batch::default().change(2, 0, TaskStatus::TaskRunning, 2));
        add(&table, Batch::default().change(2, 0, TaskStatus::TaskFinished, 3));
        add(&table, Batch::default().change(3, 0, TaskStatus::TaskRunning, 4));
        let ids = |table: &TaskTable| {
            let mut ids: Vec<u8> = table.snapshot().0.iter().map(|t| t.task_id[0]).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&table), vec![1, 3], "the finished task went, the older running one stayed");
        assert_eq!(table.snapshot().1, 1);
        // With none finished, the oldest goes.
        add(&table, Batch::default().change(4, 0, TaskStatus::TaskRunning, 5));
        assert_eq!(ids(&table), vec![3, 4]);
    }

    #[test]
    fn malformed_batches_are_refused_whole() {
        let table = TaskTable::with_capacity(10);
        let mut short = Batch::default().change(1, 0, TaskStatus::TaskRunning, 1);
        short.0.attempts.clear();
        assert!(table.add(short.0).is_err());
        let mut bad_index = Batch::default().change(1, 0, TaskStatus::TaskRunning, 1);
        bad_index.0.ran.push(5);
        assert!(table.add(bad_index.0).is_err());
        let mut bad_log = Batch::default().change(1, 0, TaskStatus::TaskRunning, 1).logged(1, 1);
        bad_log.0.logged[0] = 4;
        assert!(table.add(bad_log.0).is_err());
        let mut short_log = Batch::default().change(1, 0, TaskStatus::TaskRunning, 1).logged(1, 1);
        short_log.0.stderr_offsets.clear();
        assert!(table.add(short_log.0).is_err());
        let mut bad_shape = Batch::default().change(1, 0, TaskStatus::TaskRunning, 1).defines("f", 0);
        bad_shape.0.defined_shapes[0] = 3;
        assert!(table.add(bad_shape.0).is_err());
        let mut odd_ids = Batch::default().change(1, 0, TaskStatus::TaskRunning, 1);
        odd_ids.0.task_ids = vec![1; TaskId::LEN - 1].into();
        assert!(table.add(odd_ids.0).is_err());
        assert!(table.snapshot().0.is_empty());
    }

    proptest::proptest! {
        /// Whatever arrives, the table never holds more than its bound, and every
        /// attempt is either held or counted as dropped.
        #[test]
        fn bounded_and_nothing_uncounted(
            batches in proptest::collection::vec(proptest::collection::vec((0u8..20, 0u32..2, 0i32..6), 1..4), 0..100),
            max in 1usize..8,
        ) {
            let table = TaskTable::with_capacity(max);
            let mut seen = std::collections::HashSet::new();
            let mut time = 0;
            for ops in batches {
                let mut batch = Batch::default();
                for (id, attempt, state) in ops {
                    time += 1;
                    batch = batch.change(id, attempt, TaskStatus::try_from(state).unwrap(), time);
                    seen.insert((id, attempt));
                }
                add(&table, batch);
                let (tasks, dropped) = table.snapshot();
                proptest::prop_assert!(tasks.len() <= max);
                proptest::prop_assert!(tasks.len() as u64 + dropped >= seen.len() as u64);
            }
        }
    }
}
