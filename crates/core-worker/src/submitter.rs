//! Lease-based direct task submission, as in Ray.
//!
//! Tasks are grouped by scheduling class (their resource shape). For each class the
//! submitter asks the raylet for worker leases; a lease grants one worker process and
//! the resources of one task. The submitter then pushes tasks of that class straight
//! to the leased worker over its socket, one after another, and keeps the lease while
//! tasks of the class are queued. A lease that stays idle for `lease_idle` goes back to
//! the raylet, so a loop of `f.remote(); get()` reuses one lease instead of asking the
//! raylet every time.
//!
//! Arguments are resolved here before a task is queued: the submitter waits for each
//! top-level ObjectRef argument and ships its value (inline) or its plasma location.
//!
//! All state lives in one tokio task (`Submitter::run`) fed by events, so nothing here
//! needs a lock; network calls run in their own tasks and report back as events.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use rtd_common::config::RuntimeConfig;
use rtd_common::proto::{
    frame::Body, object_value::Kind, request_lease_reply::Result as LeaseResult, CancelTask,
    KillLeasedWorker, LeaseGranted, ObjectValue, PushTask, PushTaskReply, RequestLease,
    ReturnLease, TaskSpec,
};
use rtd_common::rpc::{RpcClient, RpcError};
use rtd_common::{object_kind, ObjectId, TaskId};
use tokio::sync::mpsc;

use crate::context::Context;

type ClassKey = Vec<(String, i64)>;

/// Most lease requests one scheduling class keeps outstanding at the raylet.
const MAX_LEASE_REQUESTS_PER_CLASS: usize = 16;

pub enum Event {
    Submit(TaskSpec),
    Resolved(TaskSpec),
    Granted { class: ClassKey, grant: LeaseGranted, worker: RpcClient },
    LeaseFailed { class: ClassKey, error: LeaseFailure },
    RetryLease { class: ClassKey },
    Finished { lease_id: u64, task_id: TaskId, result: Result<PushTaskReply, RpcError> },
    IdleCheck { lease_id: u64, epoch: u64 },
    Cancel { task_id: TaskId, force: bool },
}

pub enum LeaseFailure {
    Infeasible(String),
    Rpc(RpcError),
}

struct PendingTask {
    spec: TaskSpec,
    class: ClassKey,
    retries_left: i32,
    lease: Option<u64>,
    cancelled: bool,
}

#[derive(Default)]
struct ClassState {
    queue: VecDeque<TaskId>,
    leases: Vec<u64>,
    requests_in_flight: usize,
    warned_infeasible: bool,
}

struct Lease {
    class: ClassKey,
    worker: RpcClient,
    gpu_ids: Vec<u32>,
    in_flight: usize,
    idle_epoch: u64,
}

/// Handle used by the API to hand tasks to the submitter task.
#[derive(Clone)]
pub struct TaskSubmitter {
    tx: mpsc::UnboundedSender<Event>,
}

impl TaskSubmitter {
    pub fn start(ctx: Arc<Context>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let submitter = Submitter {
            ctx: ctx.clone(),
            tx: tx.clone(),
            tasks: HashMap::new(),
            classes: HashMap::new(),
            leases: HashMap::new(),
        };
        ctx.rt.spawn(submitter.run(rx));
        Self { tx }
    }

    pub fn submit(&self, spec: TaskSpec) {
        let _ = self.tx.send(Event::Submit(spec));
    }

    pub fn cancel(&self, task_id: TaskId, force: bool) {
        let _ = self.tx.send(Event::Cancel { task_id, force });
    }
}

struct Submitter {
    ctx: Arc<Context>,
    tx: mpsc::UnboundedSender<Event>,
    tasks: HashMap<TaskId, PendingTask>,
    classes: HashMap<ClassKey, ClassState>,
    leases: HashMap<u64, Lease>,
}

fn class_key(spec: &TaskSpec) -> ClassKey {
    let mut key: ClassKey = spec.resources.iter().map(|(k, v)| (k.clone(), *v)).collect();
    key.sort();
    key
}

fn task_id_of(spec: &TaskSpec) -> TaskId {
    TaskId::from_bytes(&spec.task_id).unwrap_or_else(|_| TaskId::nil())
}

/// An error value stored in place of a task's results.
pub fn system_error(kind: u32, message: String) -> ObjectValue {
    ObjectValue {
        kind: Some(Kind::Inline(rtd_common::proto::InlineObject {
            metadata: kind,
            data: message.into_bytes().into(),
        })),
    }
}

impl Submitter {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        while let Some(event) = rx.recv().await {
            match event {
                Event::Submit(spec) => self.on_submit(spec),
                Event::Resolved(spec) => self.on_resolved(spec),
                Event::Granted { class, grant, worker } => self.on_granted(class, grant, worker),
                Event::LeaseFailed { class, error } => self.on_lease_failed(class, error),
                Event::RetryLease { class } => self.dispatch(&class),
                Event::Finished { lease_id, task_id, result } => {
                    self.on_finished(lease_id, task_id, result)
                }
                Event::IdleCheck { lease_id, epoch } => self.on_idle_check(lease_id, epoch),
                Event::Cancel { task_id, force } => self.on_cancel(task_id, force),
            }
        }
    }

    fn on_submit(&mut self, spec: TaskSpec) {
        let task_id = task_id_of(&spec);
        let class = class_key(&spec);
        let retries_left = spec.max_retries;
        self.tasks.insert(
            task_id,
            PendingTask { spec: spec.clone(), class, retries_left, lease: None, cancelled: false },
        );
        if spec.arg_refs.iter().all(|a| a.value.is_some()) {
            self.on_resolved(spec);
        } else {
            let ctx = self.ctx.clone();
            let tx = self.tx.clone();
            self.ctx.rt.spawn(async move {
                let spec = resolve_args(ctx, spec).await;
                let _ = tx.send(Event::Resolved(spec));
            });
        }
    }

    fn on_resolved(&mut self, spec: TaskSpec) {
        let task_id = task_id_of(&spec);
        let Some(task) = self.tasks.get_mut(&task_id) else { return };
        if task.cancelled {
            self.fail_task(task_id, object_kind::TASK_CANCELLED, "task was cancelled".into());
            return;
        }
        task.spec = spec;
        let class = task.class.clone();
        self.classes.entry(class.clone()).or_default().queue.push_back(task_id);
        self.dispatch(&class);
    }

    /// Pushes queued tasks to leases with room, then asks for more leases if tasks
    /// remain, and starts the idle clock on leases left without work.
    fn dispatch(&mut self, class: &ClassKey) {
        let depth = RuntimeConfig::get().pipeline_depth;
        let Some(state) = self.classes.get_mut(class) else { return };
        for lease_id in state.leases.clone() {
            let Some(lease) = self.leases.get_mut(&lease_id) else { continue };
            while lease.in_flight < depth {
                let Some(task_id) = state.queue.pop_front() else { break };
                let Some(task) = self.tasks.get_mut(&task_id) else { continue };
                task.lease = Some(lease_id);
                lease.in_flight += 1;
                let reply = lease.worker.start_call(Body::PushTask(PushTask {
                    spec: Some(task.spec.clone()),
                    gpu_ids: lease.gpu_ids.clone(),
                }));
                let tx = self.tx.clone();
                self.ctx.rt.spawn(async move {
                    let result = match reply.await {
                        Ok(Body::PushTaskReply(r)) => Ok(r),
                        Ok(_) => Err(RpcError::UnexpectedReply("worker".into())),
                        Err(e) => Err(e),
                    };
                    let _ = tx.send(Event::Finished { lease_id, task_id, result });
                });
            }
        }
        let wanted = state.queue.len().min(MAX_LEASE_REQUESTS_PER_CLASS);
        let new_requests = wanted.saturating_sub(state.requests_in_flight);
        state.requests_in_flight += new_requests;
        let idle: Vec<u64> = state
            .leases
            .iter()
            .copied()
            .filter(|id| self.leases.get(id).map(|l| l.in_flight == 0).unwrap_or(false))
            .collect();
        let queue_empty = state.queue.is_empty();
        for _ in 0..new_requests {
            self.request_lease(class.clone());
        }
        if queue_empty {
            for lease_id in idle {
                self.start_idle_clock(lease_id);
            }
        }
    }

    fn request_lease(&self, class: ClassKey) {
        let ctx = self.ctx.clone();
        let tx = self.tx.clone();
        let resources = class.iter().cloned().collect();
        self.ctx.rt.spawn(async move {
            let reply = ctx
                .raylet
                .call(Body::RequestLease(RequestLease { resources }))
                .await;
            let event = match reply {
                Ok(Body::RequestLeaseReply(r)) => match r.result {
                    Some(LeaseResult::Granted(grant)) => {
                        match ctx.peers.get(&grant.worker_address).await {
                            Ok(worker) => Event::Granted { class, grant, worker },
                            Err(e) => {
                                // The worker died between grant and connect: give the
                                // lease back and ask again.
                                let _ = ctx.raylet.send(Body::ReturnLease(ReturnLease {
                                    lease_id: grant.lease_id,
                                }));
                                Event::LeaseFailed { class, error: LeaseFailure::Rpc(e) }
                            }
                        }
                    }
                    Some(LeaseResult::Infeasible(i)) => {
                        Event::LeaseFailed { class, error: LeaseFailure::Infeasible(i.message) }
                    }
                    None => Event::LeaseFailed {
                        class,
                        error: LeaseFailure::Rpc(RpcError::UnexpectedReply("raylet".into())),
                    },
                },
                Ok(_) => Event::LeaseFailed {
                    class,
                    error: LeaseFailure::Rpc(RpcError::UnexpectedReply("raylet".into())),
                },
                Err(e) => Event::LeaseFailed { class, error: LeaseFailure::Rpc(e) },
            };
            let _ = tx.send(event);
        });
    }

    fn on_granted(&mut self, class: ClassKey, grant: LeaseGranted, worker: RpcClient) {
        let state = self.classes.entry(class.clone()).or_default();
        state.requests_in_flight = state.requests_in_flight.saturating_sub(1);
        state.leases.push(grant.lease_id);
        self.leases.insert(
            grant.lease_id,
            Lease { class: class.clone(), worker, gpu_ids: grant.gpu_ids, in_flight: 0, idle_epoch: 0 },
        );
        self.dispatch(&class);
    }

    fn on_lease_failed(&mut self, class: ClassKey, error: LeaseFailure) {
        let retry = RuntimeConfig::get().infeasible_retry;
        let Some(state) = self.classes.get_mut(&class) else { return };
        state.requests_in_flight = state.requests_in_flight.saturating_sub(1);
        match error {
            LeaseFailure::Infeasible(message) => {
                if !state.warned_infeasible {
                    state.warned_infeasible = true;
                    eprintln!("rtd warning: {message}");
                }
            }
            LeaseFailure::Rpc(e) => {
                // The node is gone, or it cannot start workers: nothing can run these
                // tasks, and saying so beats waiting forever.
                let fatal = self.ctx.raylet.is_closed() || matches!(e, RpcError::Remote { .. });
                if fatal {
                    let message = if self.ctx.raylet.is_closed() {
                        format!("the node daemon is gone: {e}")
                    } else {
                        format!("the node cannot run tasks: {e}")
                    };
                    let queued: Vec<TaskId> = state.queue.drain(..).collect();
                    for task_id in queued {
                        self.fail_task(task_id, object_kind::WORKER_CRASHED, message.clone());
                    }
                    return;
                }
                tracing::debug!("lease request failed: {e}");
            }
        }
        // Ask again later: the node may gain resources (or workers) meanwhile.
        let tx = self.tx.clone();
        self.ctx.rt.spawn(async move {
            tokio::time::sleep(retry).await;
            let _ = tx.send(Event::RetryLease { class });
        });
    }

    fn start_idle_clock(&mut self, lease_id: u64) {
        let Some(lease) = self.leases.get_mut(&lease_id) else { return };
        lease.idle_epoch += 1;
        let epoch = lease.idle_epoch;
        let tx = self.tx.clone();
        let idle = RuntimeConfig::get().lease_idle;
        self.ctx.rt.spawn(async move {
            tokio::time::sleep(idle).await;
            let _ = tx.send(Event::IdleCheck { lease_id, epoch });
        });
    }

    fn on_idle_check(&mut self, lease_id: u64, epoch: u64) {
        let Some(lease) = self.leases.get(&lease_id) else { return };
        if lease.in_flight > 0 || lease.idle_epoch != epoch {
            return;
        }
        let class = lease.class.clone();
        if self.classes.get(&class).map(|s| !s.queue.is_empty()).unwrap_or(false) {
            return;
        }
        self.drop_lease(lease_id);
        let _ = self.ctx.raylet.send(Body::ReturnLease(ReturnLease { lease_id }));
    }

    fn drop_lease(&mut self, lease_id: u64) {
        if let Some(lease) = self.leases.remove(&lease_id) {
            if let Some(state) = self.classes.get_mut(&lease.class) {
                state.leases.retain(|l| *l != lease_id);
            }
        }
    }

    fn on_finished(&mut self, lease_id: u64, task_id: TaskId, result: Result<PushTaskReply, RpcError>) {
        let worker_died = result.is_err();
        if let Some(lease) = self.leases.get_mut(&lease_id) {
            lease.in_flight = lease.in_flight.saturating_sub(1);
        }
        if worker_died {
            // The raylet sees the process exit and frees the lease itself.
            self.drop_lease(lease_id);
        }
        let class = self.tasks.get(&task_id).map(|t| t.class.clone());
        match result {
            Ok(reply) => self.on_reply(task_id, reply),
            Err(e) => self.on_worker_died(task_id, e),
        }
        if let Some(class) = class {
            self.dispatch(&class);
        } else if let Some(lease) = self.leases.get(&lease_id) {
            let class = lease.class.clone();
            self.dispatch(&class);
        }
    }

    fn on_reply(&mut self, task_id: TaskId, reply: PushTaskReply) {
        let Some(task) = self.tasks.get_mut(&task_id) else { return };
        if reply.app_error && task.cancelled {
            self.fail_task(task_id, object_kind::TASK_CANCELLED, "task was cancelled".into());
            return;
        }
        if reply.app_error && reply.retryable && task.retries_left != 0 {
            task.retries_left -= 1;
            self.retry(task_id);
            return;
        }
        let Some(task) = self.tasks.remove(&task_id) else { return };
        for ret in reply.returns {
            let (Ok(id), Some(value)) = (ObjectId::from_bytes(&ret.id), ret.value) else { continue };
            self.ctx.store_result(id, value);
        }
        self.ctx.release_task_args(&task.spec);
    }

    fn on_worker_died(&mut self, task_id: TaskId, error: RpcError) {
        let Some(task) = self.tasks.get_mut(&task_id) else { return };
        if task.cancelled {
            self.fail_task(task_id, object_kind::TASK_CANCELLED, "task was cancelled".into());
            return;
        }
        if task.retries_left != 0 {
            task.retries_left -= 1;
            tracing::info!("retrying task {task_id} after worker failure: {error}");
            self.retry(task_id);
            return;
        }
        let name = task.spec.function_name.clone();
        self.fail_task(
            task_id,
            object_kind::WORKER_CRASHED,
            format!(
                "the worker running task {name} died unexpectedly ({error}); no retries left"
            ),
        );
    }

    fn retry(&mut self, task_id: TaskId) {
        let Some(task) = self.tasks.get_mut(&task_id) else { return };
        task.spec.attempt += 1;
        task.lease = None;
        let class = task.class.clone();
        self.classes.entry(class.clone()).or_default().queue.push_back(task_id);
        self.dispatch(&class);
    }

    /// Stores an error in place of each result and forgets the task.
    fn fail_task(&mut self, task_id: TaskId, kind: u32, message: String) {
        let Some(task) = self.tasks.remove(&task_id) else { return };
        if let Some(state) = self.classes.get_mut(&task.class) {
            state.queue.retain(|t| *t != task_id);
        }
        for id in &task.spec.return_ids {
            if let Ok(id) = ObjectId::from_bytes(id) {
                self.ctx.store_result(id, system_error(kind, message.clone()));
            }
        }
        self.ctx.release_task_args(&task.spec);
    }

    fn on_cancel(&mut self, task_id: TaskId, force: bool) {
        let Some(task) = self.tasks.get_mut(&task_id) else { return };
        task.cancelled = true;
        match task.lease {
            None => {
                let queued = self
                    .classes
                    .get(&task.class)
                    .map(|s| s.queue.contains(&task_id))
                    .unwrap_or(false);
                if queued {
                    self.fail_task(task_id, object_kind::TASK_CANCELLED, "task was cancelled".into());
                }
                // Otherwise it is still resolving arguments; `on_resolved` fails it.
            }
            Some(lease_id) => {
                if force {
                    let _ = self.ctx.raylet.send(Body::KillLeasedWorker(KillLeasedWorker { lease_id }));
                } else if let Some(lease) = self.leases.get(&lease_id) {
                    let _ = lease.worker.send(Body::CancelTask(CancelTask { task_id: task_id.to_vec().into() }));
                }
            }
        }
    }
}

/// Waits for every top-level ObjectRef argument and attaches its value.
pub async fn resolve_args(ctx: Arc<Context>, mut spec: TaskSpec) -> TaskSpec {
    for arg in spec.arg_refs.iter_mut() {
        if arg.value.is_some() {
            continue;
        }
        let Some(r) = &arg.r#ref else { continue };
        let Ok(id) = ObjectId::from_bytes(&r.id) else { continue };
        arg.value = Some(ctx.wait_value(id).await);
    }
    spec
}
