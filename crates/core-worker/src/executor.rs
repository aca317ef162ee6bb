//! The worker side of task execution.
//!
//! A leased worker receives `PushTask` frames on its socket. Each becomes an
//! `IncomingTask` in a queue that the Python main loop drains with `next_task`; Python
//! runs the function and answers through `IncomingTask::finish`, which sends the reply
//! on the connection the task came from. Cancelling the running task interrupts the
//! Python main thread (a `KeyboardInterrupt`, as in Ray).
//!
//! A pushed spec comes from another process, so it is checked before it is queued:
//! one whose ids do not decode is answered with an error and never runs, rather than
//! running under a made-up id or failing only when its results are stored.

use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use parking_lot::Mutex;
use rtd_common::proto::{PushTaskReply, TaskSpec};
use rtd_common::{ActorId, JobId, ObjectId, TaskId};
use tokio::sync::oneshot;

/// Why a pushed task was not queued.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("malformed task spec: {0}")]
    Malformed(String),
    #[error("the worker is shutting down")]
    ShuttingDown,
}

pub struct IncomingTask {
    pub spec: TaskSpec,
    pub gpu_ids: Vec<u32>,
    task_id: TaskId,
    job_id: JobId,
    reply: oneshot::Sender<PushTaskReply>,
    /// A generator task's item reports still unanswered by the owner (it must have
    /// every item before the task's reply).
    pub(crate) unanswered_reports: Vec<tokio::task::JoinHandle<()>>,
}

/// The task and job ids of a pushed spec, once every id in it decodes and every
/// argument carries its value (the submitter resolves them before pushing).
fn check_spec(spec: &TaskSpec) -> Result<(TaskId, JobId), PushError> {
    let malformed = |e: rtd_common::ids::IdError| PushError::Malformed(e.to_string());
    let task_id = TaskId::from_bytes(&spec.task_id).map_err(malformed)?;
    let job_id = JobId::from_bytes(&spec.job_id).map_err(malformed)?;
    if !spec.actor_id.is_empty() {
        ActorId::from_bytes(&spec.actor_id).map_err(malformed)?;
    }
    for id in &spec.return_ids {
        ObjectId::from_bytes(id).map_err(malformed)?;
    }
    for arg in &spec.arg_refs {
        let r = arg.r#ref.as_ref().ok_or_else(|| PushError::Malformed("an argument without its object".into()))?;
        let id = ObjectId::from_bytes(&r.id).map_err(malformed)?;
        if arg.value.is_none() {
            return Err(PushError::Malformed(format!("argument {id} has no value")));
        }
    }
    for r in &spec.contained_refs {
        ObjectId::from_bytes(&r.id).map_err(malformed)?;
    }
    Ok((task_id, job_id))
}

impl IncomingTask {
    pub fn task_id(&self) -> TaskId {
        self.task_id
    }

    pub fn finish(self, reply: PushTaskReply) {
        let _ = self.reply.send(reply);
    }
}

pub struct TaskExecutor {
    tx: mpsc::Sender<IncomingTask>,
    rx: Mutex<mpsc::Receiver<IncomingTask>>,
    current: Mutex<Option<(TaskId, JobId)>>,
    interrupt: OnceLock<fn()>,
}

impl Default for TaskExecutor {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel();
        Self { tx, rx: Mutex::new(rx), current: Mutex::new(None), interrupt: OnceLock::new() }
    }
}

impl TaskExecutor {
    /// Queues a pushed task; the returned receiver yields the reply.
    pub fn enqueue(&self, spec: TaskSpec, gpu_ids: Vec<u32>) -> Result<oneshot::Receiver<PushTaskReply>, PushError> {
        let (task_id, job_id) = check_spec(&spec)?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(IncomingTask { spec, gpu_ids, task_id, job_id, reply, unanswered_reports: Vec::new() })
            .map_err(|_| PushError::ShuttingDown)?;
        Ok(rx)
    }

    /// The next task, or `None` after `timeout`.
    pub fn next_task(&self, timeout: Duration) -> Option<IncomingTask> {
        let task = self.rx.lock().recv_timeout(timeout).ok()?;
        *self.current.lock() = Some((task.task_id, task.job_id));
        Some(task)
    }

    pub fn task_done(&self) {
        *self.current.lock() = None;
    }

    pub fn current_task(&self) -> Option<TaskId> {
        self.current.lock().map(|(t, _)| t)
    }

    /// The job of the running task (a worker serves whichever job leased it).
    pub fn current_job(&self) -> Option<JobId> {
        self.current.lock().map(|(_, j)| j)
    }

    /// How to interrupt the running task (set by the Python bindings).
    pub fn set_interrupt(&self, interrupt: fn()) {
        let _ = self.interrupt.set(interrupt);
    }

    pub fn cancel(&self, task_id: TaskId) {
        if self.current_task() == Some(task_id) {
            if let Some(interrupt) = self.interrupt.get() {
                interrupt();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;
    use rtd_common::proto::{ObjectRefProto, ObjectValue, TaskArg};

    fn valid_spec() -> TaskSpec {
        let task_id = TaskId::random();
        TaskSpec {
            task_id: task_id.to_vec().into(),
            job_id: JobId::random().to_vec().into(),
            return_ids: vec![ObjectId::for_return(&task_id, 1).to_vec().into()],
            arg_refs: vec![TaskArg {
                r#ref: Some(ObjectRefProto { id: ObjectId::random().to_vec().into(), owner: "/owner.sock".into() }),
                value: Some(ObjectValue::default()),
            }],
            ..Default::default()
        }
    }

    /// Every way a spec's ids or arguments can fail to decode.
    fn broken_specs() -> Vec<TaskSpec> {
        let spec = valid_spec();
        let mut unresolved = spec.clone();
        unresolved.arg_refs[0].value = None;
        let mut no_object = spec.clone();
        no_object.arg_refs[0].r#ref = None;
        let mut bad_arg = spec.clone();
        bad_arg.arg_refs[0].r#ref = Some(ObjectRefProto { id: vec![1, 2].into(), owner: String::new() });
        let mut bad_contained = spec.clone();
        bad_contained.contained_refs = vec![ObjectRefProto { id: Default::default(), owner: String::new() }];
        vec![
            TaskSpec::default(),
            TaskSpec { task_id: vec![0; 3].into(), ..spec.clone() },
            TaskSpec { job_id: Default::default(), ..spec.clone() },
            TaskSpec { actor_id: vec![9; 5].into(), ..spec.clone() },
            TaskSpec { return_ids: vec![vec![0; ObjectId::LEN + 1].into()], ..spec.clone() },
            unresolved,
            no_object,
            bad_arg,
            bad_contained,
        ]
    }

    #[test]
    fn a_spec_that_does_not_decode_is_refused_and_never_runs() {
        let executor = TaskExecutor::default();
        for spec in broken_specs() {
            let pushed = executor.enqueue(spec.clone(), Vec::new());
            assert!(matches!(pushed, Err(PushError::Malformed(_))), "{spec:?} was queued");
        }
        assert!(executor.next_task(Duration::ZERO).is_none());
        let spec = valid_spec();
        let _reply = executor.enqueue(spec.clone(), vec![0]).expect("a valid spec is queued");
        let task = executor.next_task(Duration::ZERO).expect("the valid task");
        assert_eq!(task.task_id().as_bytes(), spec.task_id.as_ref());
        assert_eq!(executor.current_task(), Some(task.task_id()));
    }

    proptest! {
        /// Whatever arrives as a spec, a task is queued only if every id in it decodes
        /// and every argument has its value.
        #[test]
        fn a_queued_task_has_ids_that_decode(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            // The bytes alone rarely decode to a spec; merged over a valid one, what
            // decodes of them replaces or adds ids of any length.
            let mut merged = valid_spec();
            let _ = merged.merge(&bytes[..]);
            for spec in [merged, TaskSpec::decode(&bytes[..]).unwrap_or_default()] {
                let executor = TaskExecutor::default();
                match executor.enqueue(spec, Vec::new()) {
                    Ok(_reply) => {
                        let task = executor.next_task(Duration::ZERO).expect("the queued task");
                        prop_assert_eq!(task.task_id().to_vec(), task.spec.task_id.to_vec());
                        prop_assert!(task.spec.return_ids.iter().all(|id| ObjectId::from_bytes(id).is_ok()));
                        prop_assert!(task.spec.arg_refs.iter().all(|a| a.value.is_some()
                            && a.r#ref.as_ref().is_some_and(|r| ObjectId::from_bytes(&r.id).is_ok())));
                    }
                    Err(_) => prop_assert!(executor.next_task(Duration::ZERO).is_none()),
                }
            }
        }
    }
}
