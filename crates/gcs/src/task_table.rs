//! The GCS's task table: what every process reported of every task attempt (Ray's
//! task events), merged by (task, attempt), for the state API, the dashboard and the
//! timeline.
//!
//! It is bounded (`RTD_TASK_EVENTS_MAX_NUM_TASK_IN_GCS`, Ray's default 100 000
//! attempts): past the bound the oldest finished attempt goes first, then the oldest of
//! any. Dropped attempts are counted, with those the workers could not send, so the
//! state API can say its view is partial.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;
use rtd_common::proto::{TaskEvent, TaskStatus};
use rtd_common::task_events::is_terminal;

/// Ray's `task_events_max_num_task_in_gcs`.
const DEFAULT_MAX_TASKS: usize = 100_000;

type Key = (bytes::Bytes, u32);

pub struct TaskTable {
    inner: Mutex<Inner>,
}

struct Inner {
    max: usize,
    tasks: HashMap<Key, TaskEvent>,
    /// Every key in arrival order, and the keys of finished attempts in the order they
    /// finished. Both may hold keys already evicted; they are skipped when popped and
    /// compacted when they grow past twice the bound.
    arrived: VecDeque<Key>,
    finished: VecDeque<Key>,
    dropped: u64,
}

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
    event.changes.iter().max_by_key(|c| (c.time_ns, c.state)).and_then(|c| TaskStatus::try_from(c.state).ok())
}

impl TaskTable {
    pub fn with_capacity(max: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                max: max.max(1),
                tasks: HashMap::new(),
                arrived: VecDeque::new(),
                finished: VecDeque::new(),
                dropped: 0,
            }),
        }
    }

    /// Merges a batch of events from one process; `dropped` of its events never made it.
    pub fn add(&self, events: Vec<TaskEvent>, dropped: u64) {
        let mut inner = self.inner.lock();
        inner.dropped += dropped;
        for event in events {
            inner.add(event);
        }
    }

    /// How many attempts held are in each state, by function name and whether the
    /// attempt is a retry (Ray's `ray_tasks{Name,State,IsRetry}`). Attempts whose state
    /// is not known yet are left out.
    pub fn count_by_state(&self) -> HashMap<TaskStateCount, u64> {
        let inner = self.inner.lock();
        let mut counts = HashMap::new();
        for event in inner.tasks.values() {
            if let Some(state) = latest_state(event) {
                let key = TaskStateCount { name: event.name.clone(), state, is_retry: event.attempt > 0 };
                *counts.entry(key).or_insert(0) += 1;
            }
        }
        counts
    }

    /// A copy of every attempt held, and how many were dropped.
    pub fn snapshot(&self) -> (Vec<TaskEvent>, u64) {
        let inner = self.inner.lock();
        (inner.tasks.values().cloned().collect(), inner.dropped)
    }
}

impl Inner {
    fn add(&mut self, event: TaskEvent) {
        let key = (event.task_id.clone(), event.attempt);
        let was_terminal;
        let now_terminal;
        match self.tasks.get_mut(&key) {
            Some(held) => {
                was_terminal = latest_state(held).is_some_and(is_terminal);
                merge(held, event);
                now_terminal = latest_state(held).is_some_and(is_terminal);
            }
            None => {
                was_terminal = false;
                now_terminal = latest_state(&event).is_some_and(is_terminal);
                self.tasks.insert(key.clone(), event);
                self.arrived.push_back(key.clone());
                self.evict();
            }
        }
        if now_terminal && !was_terminal && self.tasks.contains_key(&key) {
            self.finished.push_back(key);
        }
        if self.arrived.len() > 2 * self.max || self.finished.len() > 2 * self.max {
            let tasks = &self.tasks;
            self.arrived.retain(|k| tasks.contains_key(k));
            self.finished.retain(|k| tasks.contains_key(k));
        }
    }

    /// Drops attempts past the bound: the oldest finished first.
    fn evict(&mut self) {
        while self.tasks.len() > self.max {
            let victim = loop {
                match self.finished.pop_front() {
                    Some(k) if self.tasks.contains_key(&k) => break Some(k),
                    Some(_) => continue,
                    None => break None,
                }
            };
            let victim = victim.or_else(|| loop {
                match self.arrived.pop_front() {
                    Some(k) if self.tasks.contains_key(&k) => break Some(k),
                    Some(_) => continue,
                    None => break None,
                }
            });
            let Some(victim) = victim else { return };
            self.tasks.remove(&victim);
            self.dropped += 1;
        }
    }
}

/// Folds what another process saw of the same attempt into `held`: fields it did not
/// have, and the state changes.
fn merge(held: &mut TaskEvent, event: TaskEvent) {
    fn fill<T: Default + PartialEq>(held: &mut T, new: T) {
        if new != T::default() {
            *held = new;
        }
    }
    fill(&mut held.name, event.name);
    fill(&mut held.r#type, event.r#type);
    fill(&mut held.job_id, event.job_id);
    fill(&mut held.actor_id, event.actor_id);
    fill(&mut held.parent_task_id, event.parent_task_id);
    fill(&mut held.required_resources, event.required_resources);
    fill(&mut held.node_id, event.node_id);
    fill(&mut held.worker_id, event.worker_id);
    fill(&mut held.worker_pid, event.worker_pid);
    fill(&mut held.error_type, event.error_type);
    fill(&mut held.error_message, event.error_message);
    held.changes.extend(event.changes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtd_common::proto::TaskStateChange;

    fn event(id: u8, attempt: u32, state: TaskStatus, time_ns: u64) -> TaskEvent {
        TaskEvent {
            task_id: vec![id; 4].into(),
            attempt,
            changes: vec![TaskStateChange { state: state as i32, time_ns }],
            ..Default::default()
        }
    }

    #[test]
    fn submitter_and_worker_events_merge_by_attempt() {
        let table = TaskTable::with_capacity(10);
        let mut submitted = event(1, 0, TaskStatus::TaskSubmittedToWorker, 1);
        submitted.name = "f".into();
        let mut ran = event(1, 0, TaskStatus::TaskRunning, 2);
        ran.worker_pid = 7;
        ran.changes.push(TaskStateChange { state: TaskStatus::TaskFinished as i32, time_ns: 3 });
        table.add(vec![submitted], 0);
        table.add(vec![ran, event(1, 1, TaskStatus::TaskRunning, 4)], 2);
        let (tasks, dropped) = table.snapshot();
        assert_eq!(tasks.len(), 2);
        assert_eq!(dropped, 2);
        let first = tasks.iter().find(|t| t.attempt == 0).unwrap();
        assert_eq!((first.name.as_str(), first.worker_pid), ("f", 7));
        assert_eq!(latest_state(first), Some(TaskStatus::TaskFinished));
    }

    #[test]
    fn attempts_count_by_name_latest_state_and_retry() {
        let table = TaskTable::with_capacity(10);
        let named = |id, attempt, state, time| TaskEvent { name: "f".into(), ..event(id, attempt, state, time) };
        table.add(vec![named(1, 0, TaskStatus::TaskRunning, 1), named(2, 0, TaskStatus::TaskRunning, 1)], 0);
        table.add(vec![event(1, 0, TaskStatus::TaskFinished, 2), named(2, 1, TaskStatus::TaskRunning, 3)], 0);
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
        table.add(vec![event(1, 0, TaskStatus::TaskRunning, 1)], 0);
        table.add(vec![event(2, 0, TaskStatus::TaskRunning, 2)], 0);
        table.add(vec![event(2, 0, TaskStatus::TaskFinished, 3)], 0);
        table.add(vec![event(3, 0, TaskStatus::TaskRunning, 4)], 0);
        let (tasks, dropped) = table.snapshot();
        let mut ids: Vec<u8> = tasks.iter().map(|t| t.task_id[0]).collect();
        ids.sort();
        assert_eq!(ids, vec![1, 3], "the finished task went, the older running one stayed");
        assert_eq!(dropped, 1);
        // With none finished, the oldest goes.
        table.add(vec![event(4, 0, TaskStatus::TaskRunning, 5)], 0);
        let mut ids: Vec<u8> = table.snapshot().0.iter().map(|t| t.task_id[0]).collect();
        ids.sort();
        assert_eq!(ids, vec![3, 4]);
    }

    proptest::proptest! {
        /// Whatever arrives, the table never holds more than its bound, and every
        /// attempt is either held or counted as dropped.
        #[test]
        fn bounded_and_nothing_uncounted(
            ops in proptest::collection::vec((0u8..20, 0u32..2, 0i32..6), 0..200),
            max in 1usize..8,
        ) {
            let table = TaskTable::with_capacity(max);
            let mut seen = std::collections::HashSet::new();
            for (i, (id, attempt, state)) in ops.into_iter().enumerate() {
                let state = TaskStatus::try_from(state).unwrap();
                table.add(vec![event(id, attempt, state, i as u64)], 0);
                seen.insert((id, attempt));
                let (tasks, dropped) = table.snapshot();
                proptest::prop_assert!(tasks.len() <= max);
                proptest::prop_assert!(tasks.len() as u64 + dropped >= seen.len() as u64);
            }
        }
    }
}
