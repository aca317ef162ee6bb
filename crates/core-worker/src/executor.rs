//! The worker side of task execution.
//!
//! A leased worker receives `PushTask` frames on its socket. Each becomes an
//! `IncomingTask` in a queue that the Python main loop drains with `next_task`; Python
//! runs the function and answers through `IncomingTask::finish`, which sends the reply
//! on the connection the task came from. Cancelling the running task interrupts the
//! Python main thread (a `KeyboardInterrupt`, as in Ray).

use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use parking_lot::Mutex;
use rtd_common::proto::{frame::Body, PushTaskReply, TaskSpec};
use rtd_common::{JobId, TaskId};
use tokio::sync::oneshot;

pub struct IncomingTask {
    pub spec: TaskSpec,
    pub gpu_ids: Vec<u32>,
    reply: oneshot::Sender<Body>,
}

impl IncomingTask {
    pub fn task_id(&self) -> TaskId {
        TaskId::from_bytes(&self.spec.task_id).unwrap_or_else(|_| TaskId::nil())
    }

    pub fn finish(self, reply: PushTaskReply) {
        let _ = self.reply.send(Body::PushTaskReply(reply));
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
    pub fn enqueue(&self, spec: TaskSpec, gpu_ids: Vec<u32>) -> Option<oneshot::Receiver<Body>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(IncomingTask { spec, gpu_ids, reply }).ok()?;
        Some(rx)
    }

    /// The next task, or `None` after `timeout`.
    pub fn next_task(&self, timeout: Duration) -> Option<IncomingTask> {
        let task = self.rx.lock().recv_timeout(timeout).ok()?;
        let job = JobId::from_bytes(&task.spec.job_id).unwrap_or_else(|_| JobId::nil());
        *self.current.lock() = Some((task.task_id(), job));
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
