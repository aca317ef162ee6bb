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
//! needs a lock; network calls run in their own tasks and report back as events. The
//! calls go through [`LeaseCluster`], which tests implement with a scripted fake.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use rtd_common::config::RuntimeConfig;
use rtd_common::proto::{
    object_value::Kind, request_lease_reply::Result as LeaseResult, ErrorCode, LeaseGranted, PushTask, PushTaskReply,
    RequestLease, TaskSpec, TaskStatus,
};
use rtd_common::rpc::{Request, RpcClient, RpcError};
use rtd_common::task_events::error_type_of_kind;
use rtd_common::{object_kind, ObjectId, TaskId};
use tokio::sync::mpsc;

use crate::cluster::LeaseCluster;
use crate::context::{self, system_error, Context};

/// Most lease requests one scheduling class keeps outstanding at the raylet.
const MAX_LEASE_REQUESTS_PER_CLASS: usize = 16;

/// `P` is the connection to a raylet or a leased worker (`LeaseCluster::Peer`).
enum Event<P> {
    Submit(TaskSpec),
    /// Re-run a finished task whose results were lost (lineage reconstruction).
    Reconstruct(TaskSpec),
    Resolved(TaskSpec),
    Granted {
        class: ClassKey,
        grant: LeaseGranted,
        worker: P,
        raylet: P,
    },
    LeaseFailed {
        class: ClassKey,
        error: LeaseFailure,
    },
    RetryLease {
        class: ClassKey,
    },
    Finished {
        lease_id: u64,
        task_id: TaskId,
        result: Result<PushTaskReply, RpcError>,
    },
    IdleCheck {
        lease_id: u64,
        epoch: u64,
    },
    Cancel {
        task_id: TaskId,
        force: bool,
    },
    /// These raylets' nodes were declared dead: work leased there is lost.
    NodesDead(Vec<String>),
}

enum LeaseFailure {
    Infeasible(String),
    /// This node's raylet failed the request.
    Rpc(RpcError),
    /// Another node's raylet (after a spillback) failed it or could not be reached:
    /// that node may be leaving the cluster, so another try may go elsewhere.
    Elsewhere(RpcError),
    /// Raylets kept passing it on (nodes draining one after another): try again.
    TooManyHops,
}

/// Most spillbacks one lease request follows (draining nodes pass requests on).
const MAX_SPILLBACK_HOPS: usize = 8;

/// Pause before asking again after another node failed a lease request.
const SPILLBACK_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

struct PendingTask {
    spec: TaskSpec,
    class: ClassKey,
    retries_left: i32,
    lease: Option<u64>,
    cancelled: bool,
    /// A re-run: its arguments were released when it first finished.
    reconstruction: bool,
}

#[derive(Default)]
struct ClassState {
    queue: VecDeque<TaskId>,
    leases: Vec<u64>,
    requests_in_flight: usize,
    warned_infeasible: bool,
}

struct Lease<P> {
    class: ClassKey,
    worker: P,
    /// The raylet that granted it (this node's, or another after spillback).
    raylet: P,
    /// The id the granting raylet knows it by.
    lease_id: u64,
    gpu_ids: Vec<u32>,
    in_flight: usize,
    idle_epoch: u64,
}

/// Handle used by the API to hand tasks to the submitter task; `P` is the cluster's
/// connection type (`RpcClient` but in tests).
#[derive(Clone)]
pub struct TaskSubmitter<P = RpcClient> {
    tx: mpsc::UnboundedSender<Event<P>>,
}

impl TaskSubmitter {
    pub fn start(ctx: Arc<Context>) -> Self {
        Self::start_with(ctx.clone(), ctx, RuntimeConfig::get())
    }
}

impl<P: Clone + Send + Sync + 'static> TaskSubmitter<P> {
    /// Starts the submitter task, which asks `cluster` for leases and pushes tasks through it.
    fn start_with<C: LeaseCluster<Peer = P>>(
        ctx: Arc<Context>,
        cluster: Arc<C>,
        config: &'static RuntimeConfig,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let submitter = Submitter {
            ctx: ctx.clone(),
            cluster,
            config,
            tx: tx.clone(),
            tasks: HashMap::new(),
            classes: HashMap::new(),
            leases: HashMap::new(),
            next_lease_key: 1,
        };
        ctx.rt.spawn(submitter.run(rx));
        Self { tx }
    }

    pub fn submit(&self, spec: TaskSpec) {
        let _ = self.tx.send(Event::Submit(spec));
    }

    /// Re-runs the task that made a lost object `id` owned here, if its task has
    /// retries left (lineage reconstruction). True if a re-run was started.
    pub fn rebuild(&self, ctx: &Context, id: &ObjectId) -> bool {
        let Some(mut spec) = ctx.lineage.lock().remove(id) else { return false };
        spec.max_retries = if spec.max_retries < 0 { -1 } else { spec.max_retries - 1 };
        spec.attempt += 1;
        for ret in &spec.return_ids {
            if let Ok(ret) = ObjectId::from_bytes(ret) {
                ctx.lineage.lock().remove(&ret);
                ctx.table.reset_pending(&ret);
            }
        }
        let _ = self.tx.send(Event::Reconstruct(spec));
        true
    }

    pub fn cancel(&self, task_id: TaskId, force: bool) {
        let _ = self.tx.send(Event::Cancel { task_id, force });
    }

    pub fn nodes_dead(&self, raylet_addresses: Vec<String>) {
        let _ = self.tx.send(Event::NodesDead(raylet_addresses));
    }
}

struct Submitter<C: LeaseCluster> {
    ctx: Arc<Context>,
    cluster: Arc<C>,
    /// Pipeline depth, lease idle time and infeasible retry (read once, at start).
    config: &'static RuntimeConfig,
    tx: mpsc::UnboundedSender<Event<C::Peer>>,
    tasks: HashMap<TaskId, PendingTask>,
    classes: HashMap<ClassKey, ClassState>,
    leases: HashMap<u64, Lease<C::Peer>>,
    next_lease_key: u64,
}

/// Tasks share leases when they have the same resource shape and placement.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClassKey {
    resources: Vec<(String, i64)>,
    strategy: String,
    affinity_node: String,
    affinity_soft: bool,
    /// Locality: where the task's largest resolved argument lives (DEFAULT only).
    preferred_node: Vec<u8>,
    /// Its runtime_env (canonical JSON): a lease serves one environment only.
    runtime_env: String,
}

fn class_key(spec: &TaskSpec) -> ClassKey {
    let mut resources: Vec<(String, i64)> = spec.resources.iter().map(|(k, v)| (k.clone(), *v)).collect();
    resources.sort();
    let default = spec.affinity_node.is_empty() && spec.scheduling_strategy != "SPREAD";
    let preferred_node = spec
        .arg_refs
        .iter()
        .filter_map(|a| match a.value.as_ref().and_then(|v| v.kind.as_ref()) {
            Some(Kind::Plasma(p)) if default => Some((p.size, p.node_id.to_vec())),
            _ => None,
        })
        .max()
        .map(|(_, node)| node)
        .unwrap_or_default();
    ClassKey {
        resources,
        strategy: spec.scheduling_strategy.clone(),
        affinity_node: spec.affinity_node.clone(),
        affinity_soft: spec.affinity_soft,
        preferred_node,
        runtime_env: spec.runtime_env.clone(),
    }
}

fn task_id_of(spec: &TaskSpec) -> TaskId {
    TaskId::from_bytes(&spec.task_id).unwrap_or_else(|_| TaskId::nil())
}

impl<C: LeaseCluster> Submitter<C> {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event<C::Peer>>) {
        while let Some(event) = rx.recv().await {
            match event {
                Event::Submit(spec) => self.on_submit(spec, false),
                Event::Reconstruct(spec) => self.on_submit(spec, true),
                Event::Resolved(spec) => {
                    self.ctx.task_events.state(&spec, TaskStatus::TaskPendingNodeAssignment);
                    self.on_resolved(spec)
                }
                Event::Granted { class, grant, worker, raylet } => self.on_granted(class, grant, worker, raylet),
                Event::LeaseFailed { class, error } => self.on_lease_failed(class, error),
                Event::RetryLease { class } => self.dispatch(&class),
                Event::Finished { lease_id, task_id, result } => self.on_finished(lease_id, task_id, result),
                Event::IdleCheck { lease_id, epoch } => self.on_idle_check(lease_id, epoch),
                Event::Cancel { task_id, force } => self.on_cancel(task_id, force),
                Event::NodesDead(addresses) => self.on_nodes_dead(&addresses),
            }
        }
    }

    fn on_submit(&mut self, spec: TaskSpec, reconstruction: bool) {
        let task_id = task_id_of(&spec);
        let class = class_key(&spec);
        let retries_left = spec.max_retries;
        self.tasks.insert(
            task_id,
            PendingTask { spec: spec.clone(), class, retries_left, lease: None, cancelled: false, reconstruction },
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
        // Resolved arguments tell where the task would find its data.
        task.class = class_key(&spec);
        task.spec = spec;
        let class = task.class.clone();
        self.classes.entry(class.clone()).or_default().queue.push_back(task_id);
        self.dispatch(&class);
    }

    /// Pushes queued tasks to leases with room, then asks for more leases if tasks
    /// remain, and starts the idle clock on leases left without work.
    fn dispatch(&mut self, class: &ClassKey) {
        let depth = self.config.pipeline_depth;
        let Some(state) = self.classes.get_mut(class) else { return };
        for lease_id in state.leases.clone() {
            let Some(lease) = self.leases.get_mut(&lease_id) else { continue };
            while lease.in_flight < depth {
                let Some(task_id) = state.queue.pop_front() else { break };
                let Some(task) = self.tasks.get_mut(&task_id) else { continue };
                task.lease = Some(lease_id);
                lease.in_flight += 1;
                self.ctx.task_events.state(&task.spec, TaskStatus::TaskSubmittedToWorker);
                let push = PushTask { spec: Some(task.spec.clone()), gpu_ids: lease.gpu_ids.clone() };
                let reply = self.cluster.push_task(&lease.worker, push);
                let tx = self.tx.clone();
                self.ctx.rt.spawn(async move {
                    let result = reply.await;
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
        let cluster = self.cluster.clone();
        let tx = self.tx.clone();
        self.ctx.rt.spawn(async move {
            let event = match lease_from_cluster(&*cluster, &class).await {
                Ok((grant, worker, raylet)) => Event::Granted { class, grant, worker, raylet },
                Err(error) => Event::LeaseFailed { class, error },
            };
            let _ = tx.send(event);
        });
    }

    fn on_granted(&mut self, class: ClassKey, grant: LeaseGranted, worker: C::Peer, raylet: C::Peer) {
        let state = self.classes.entry(class.clone()).or_default();
        state.requests_in_flight = state.requests_in_flight.saturating_sub(1);
        // Lease ids are per raylet: key ours by a local counter.
        let key = self.next_lease_key;
        self.next_lease_key += 1;
        state.leases.push(key);
        self.leases.insert(
            key,
            Lease {
                class: class.clone(),
                worker,
                raylet,
                lease_id: grant.lease_id,
                gpu_ids: grant.gpu_ids,
                in_flight: 0,
                idle_epoch: 0,
            },
        );
        self.dispatch(&class);
    }

    fn on_lease_failed(&mut self, class: ClassKey, error: LeaseFailure) {
        let retry = self.config.infeasible_retry;
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
                // The node is gone, it cannot start workers, or the placement can never
                // be met: nothing can run these tasks, and saying so beats waiting.
                let fatal = if self.cluster.local_raylet_gone() {
                    Some((object_kind::WORKER_CRASHED, format!("the node daemon is gone: {e}")))
                } else if matches!(e, RpcError::Remote { .. }) {
                    Some(fatal_lease_error(&e))
                } else {
                    None
                };
                if let Some((kind, message)) = fatal {
                    self.fail_queued(&class, kind, &message);
                    return;
                }
                tracing::debug!("lease request failed: {e}");
            }
            LeaseFailure::Elsewhere(_) | LeaseFailure::TooManyHops => {
                // Another node that cannot start workers, or a placement that can never
                // be met, fails the tasks as on this node. Anything else (the node is
                // draining, gone or unreachable) fails no task: ask again soon, from
                // this node's raylet, which by then may know the other node is gone.
                if let LeaseFailure::Elsewhere(e) = &error {
                    let refused = matches!(
                        e,
                        RpcError::Remote {
                            code: ErrorCode::Unschedulable | ErrorCode::WorkerDied | ErrorCode::RuntimeEnvSetupFailed,
                            ..
                        }
                    );
                    if refused {
                        let (kind, message) = fatal_lease_error(e);
                        self.fail_queued(&class, kind, &message);
                        return;
                    }
                    tracing::debug!("lease request to another node failed: {e}");
                } else {
                    tracing::debug!("a lease request was passed on more than {MAX_SPILLBACK_HOPS} times");
                }
                let tx = self.tx.clone();
                self.ctx.rt.spawn(async move {
                    tokio::time::sleep(SPILLBACK_RETRY).await;
                    let _ = tx.send(Event::RetryLease { class });
                });
                return;
            }
        }
        // Ask again later: the node may gain resources (or workers) meanwhile.
        let tx = self.tx.clone();
        self.ctx.rt.spawn(async move {
            tokio::time::sleep(retry).await;
            let _ = tx.send(Event::RetryLease { class });
        });
    }

    fn fail_queued(&mut self, class: &ClassKey, kind: u32, message: &str) {
        let queued: Vec<TaskId> = self.classes.get_mut(class).map(|s| s.queue.drain(..).collect()).unwrap_or_default();
        for task_id in queued {
            self.fail_task(task_id, kind, message.to_string());
        }
    }

    fn start_idle_clock(&mut self, lease_id: u64) {
        let Some(lease) = self.leases.get_mut(&lease_id) else { return };
        lease.idle_epoch += 1;
        let epoch = lease.idle_epoch;
        let tx = self.tx.clone();
        let idle = self.config.lease_idle;
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
        if let Some(lease) = self.drop_lease(lease_id) {
            self.cluster.return_lease(&lease.raylet, lease.lease_id);
        }
    }

    fn drop_lease(&mut self, lease_id: u64) -> Option<Lease<C::Peer>> {
        let lease = self.leases.remove(&lease_id)?;
        if let Some(state) = self.classes.get_mut(&lease.class) {
            state.leases.retain(|l| *l != lease_id);
        }
        Some(lease)
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
        // A reply from a push the task has moved on from (its node was declared dead
        // and the task retried elsewhere) says nothing about the current attempt.
        let superseded = self.tasks.get(&task_id).is_some_and(|t| t.lease != Some(lease_id));
        match result {
            Ok(reply) if superseded => self.ctx.drop_reply(reply),
            Err(_) if superseded => {}
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
        let Some(task) = self.tasks.get_mut(&task_id) else {
            self.ctx.drop_reply(reply);
            return;
        };
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
        let mut spec = task.spec;
        for ret in reply.returns {
            let (Ok(id), Some(value)) = (ObjectId::from_bytes(&ret.id), ret.value) else { continue };
            // A result in some node's store can be rebuilt from this spec if that node
            // dies, while retries remain.
            if matches!(value.kind, Some(Kind::Plasma(_))) && task.retries_left != 0 {
                spec.max_retries = task.retries_left;
                self.ctx.remember_lineage(id, &spec);
            }
            self.ctx.store_result(id, value, context::ref_list(&ret.contained));
        }
        if !task.reconstruction {
            self.ctx.release_task_args(&spec);
        }
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
            self.ctx.task_events.failed(&task.spec, error_type_of_kind(object_kind::WORKER_CRASHED), error.to_string());
            self.retry(task_id);
            return;
        }
        let name = task.spec.function_name.clone();
        self.fail_task(
            task_id,
            object_kind::WORKER_CRASHED,
            format!("the worker running task {name} died unexpectedly ({error}); no retries left"),
        );
    }

    fn retry(&mut self, task_id: TaskId) {
        let Some(task) = self.tasks.get_mut(&task_id) else { return };
        task.spec.attempt += 1;
        task.lease = None;
        self.ctx.task_events.submitted(&task.spec, None, TaskStatus::TaskPendingNodeAssignment);
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
        self.ctx.task_events.failed(&task.spec, error_type_of_kind(kind), message.clone());
        for id in &task.spec.return_ids {
            if let Ok(id) = ObjectId::from_bytes(id) {
                self.ctx.store_result(id, system_error(kind, message.clone()), Vec::new());
            }
        }
        if !task.reconstruction {
            self.ctx.release_task_args(&task.spec);
        }
    }

    /// A dead node may never close its connections (frozen, cut off): treat the tasks
    /// in flight on its leases as if their workers died.
    fn on_nodes_dead(&mut self, addresses: &[String]) {
        let lost: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| addresses.iter().any(|a| a == C::address(&l.raylet)))
            .map(|(id, _)| *id)
            .collect();
        for lease_id in lost {
            let Some(lease) = self.drop_lease(lease_id) else { continue };
            let tasks: Vec<TaskId> =
                self.tasks.iter().filter(|(_, t)| t.lease == Some(lease_id)).map(|(id, _)| *id).collect();
            for task_id in tasks {
                self.on_worker_died(task_id, RpcError::Disconnected(C::address(&lease.raylet).to_string()));
            }
            self.dispatch(&lease.class);
        }
    }

    fn on_cancel(&mut self, task_id: TaskId, force: bool) {
        let Some(task) = self.tasks.get_mut(&task_id) else { return };
        task.cancelled = true;
        match task.lease {
            None => {
                let queued = self.classes.get(&task.class).map(|s| s.queue.contains(&task_id)).unwrap_or(false);
                if queued {
                    self.fail_task(task_id, object_kind::TASK_CANCELLED, "task was cancelled".into());
                }
                // Otherwise it is still resolving arguments; `on_resolved` fails it.
            }
            Some(lease_id) => {
                if let Some(lease) = self.leases.get(&lease_id) {
                    if force {
                        self.cluster.kill_leased_worker(&lease.raylet, lease.lease_id);
                    } else {
                        self.cluster.cancel_task(&lease.worker, task_id);
                    }
                }
            }
        }
    }
}

/// The error stored in place of the results of tasks whose lease a raylet refused.
fn fatal_lease_error(e: &RpcError) -> (u32, String) {
    if e.code() == ErrorCode::Unschedulable {
        (object_kind::UNSCHEDULABLE, format!("the task cannot be scheduled: {e}"))
    } else if let RpcError::Remote { code: ErrorCode::RuntimeEnvSetupFailed, message } = e {
        (object_kind::RUNTIME_ENV_SETUP_FAILED, format!("Failed to set up the runtime_env: {message}"))
    } else {
        (object_kind::WORKER_CRASHED, format!("the node cannot run tasks: {e}"))
    }
}

/// Asks this node's raylet for a lease, following a spillback to another node's raylet.
/// Returns the grant, the worker's connection and the granting raylet's.
async fn lease_from_cluster<C: LeaseCluster>(
    cluster: &C,
    class: &ClassKey,
) -> Result<(LeaseGranted, C::Peer, C::Peer), LeaseFailure> {
    let mut raylet = cluster.local_raylet();
    let mut request = RequestLease {
        resources: class.resources.iter().cloned().collect(),
        strategy: class.strategy.clone(),
        affinity_node: class.affinity_node.clone(),
        affinity_soft: class.affinity_soft,
        no_spillback: false,
        dedicated: false,
        preferred_node: class.preferred_node.clone().into(),
        runtime_env: class.runtime_env.clone(),
    };
    for hop in 0..=MAX_SPILLBACK_HOPS {
        // Errors past the first hop are another node's, not this node's.
        let failure = |e| if hop == 0 { LeaseFailure::Rpc(e) } else { LeaseFailure::Elsewhere(e) };
        let reply = cluster.request_lease(&raylet, request.clone()).await.map_err(failure)?;
        match reply.result {
            Some(LeaseResult::Granted(grant)) => match cluster.connect(&grant.worker_address).await {
                Ok(worker) => return Ok((grant, worker, raylet)),
                Err(e) => {
                    // The worker died between grant and connect: give the lease back.
                    cluster.return_lease(&raylet, grant.lease_id);
                    return Err(LeaseFailure::Elsewhere(e));
                }
            },
            Some(LeaseResult::Spillback(to)) => {
                raylet = cluster.connect(&to.raylet_address).await.map_err(LeaseFailure::Elsewhere)?;
                request.no_spillback = true;
            }
            Some(LeaseResult::Infeasible(i)) => return Err(LeaseFailure::Infeasible(i.message)),
            None => {
                let from = C::address(&raylet).to_string();
                return Err(failure(RpcError::UnexpectedReply { request: RequestLease::NAME, from }));
            }
        }
    }
    Err(LeaseFailure::TooManyHops)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rtd_common::proto::{ReturnObject, Spillback};

    use super::*;
    use crate::fake_cluster::{
        inline, settle, stored, test_config, test_context, Answer, CallLog, ClusterCall, FakeCluster, LOCAL_RAYLET,
    };

    /// How long a lease stays idle before the submitter returns it, in these tests.
    const LEASE_IDLE: Duration = Duration::from_millis(100);

    struct Harness {
        ctx: Arc<Context>,
        cluster: Arc<FakeCluster>,
        calls: CallLog,
        submitter: TaskSubmitter<String>,
    }

    async fn harness(pipeline_depth: usize) -> Harness {
        let ctx = test_context().await;
        let (cluster, calls) = FakeCluster::new();
        let config = test_config(pipeline_depth, LEASE_IDLE);
        let submitter = TaskSubmitter::start_with(ctx.clone(), cluster.clone(), config);
        Harness { ctx, cluster, calls, submitter }
    }

    /// A one-CPU task with one return, which the table expects as a submitted task's.
    fn task(ctx: &Context, max_retries: i32) -> (TaskSpec, ObjectId) {
        let task_id = TaskId::random();
        let ret = ObjectId::for_return(&task_id, 1);
        ctx.table.add_owned_pending(ret, &ctx.address);
        let spec = TaskSpec {
            task_id: task_id.to_vec().into(),
            function_name: "f".into(),
            return_ids: vec![ret.to_vec().into()],
            resources: [("CPU".to_string(), 10_000)].into(),
            max_retries,
            ..Default::default()
        };
        (spec, ret)
    }

    fn answer<T>(answer: Answer<T>, result: Result<T, RpcError>) {
        assert!(answer.send(result).is_ok(), "the submitter stopped waiting for the answer");
    }

    fn granted(lease_id: u64, worker: &str) -> Result<rtd_common::proto::RequestLeaseReply, RpcError> {
        let grant = LeaseGranted { lease_id, worker_address: worker.into(), ..Default::default() };
        Ok(rtd_common::proto::RequestLeaseReply { result: Some(LeaseResult::Granted(grant)) })
    }

    /// The worker's reply to `task`: `value` for each return; `app_error` when the
    /// function raised (`retryable` when the exception matches `retry_exceptions`).
    fn reply(task: &PushTask, value: &[u8], app_error: bool, retryable: bool) -> Result<PushTaskReply, RpcError> {
        let returns = task
            .spec
            .iter()
            .flat_map(|spec| &spec.return_ids)
            .map(|id| ReturnObject { id: id.clone(), value: Some(inline(value)), contained: Vec::new() })
            .collect();
        Ok(PushTaskReply { returns, app_error, retryable })
    }

    fn worker_died() -> Result<PushTaskReply, RpcError> {
        Err(RpcError::Disconnected("worker".into()))
    }

    fn attempt(task: &PushTask) -> u32 {
        task.spec.as_ref().map(|s| s.attempt).unwrap_or_default()
    }

    fn is_push(call: &ClusterCall) -> bool {
        matches!(call, ClusterCall::PushTask { .. })
    }

    #[tokio::test(start_paused = true)]
    async fn worker_death_is_retried_max_retries_times_then_fails_the_task() {
        let mut h = harness(1).await;
        let (spec, ret) = task(&h.ctx, 2);
        h.submitter.submit(spec);
        for expected_attempt in 0..3 {
            let (_, _, lease) = h.calls.lease_request().await;
            answer(lease, granted(expected_attempt as u64 + 1, "worker"));
            let (_, task, push) = h.calls.push().await;
            assert_eq!(attempt(&task), expected_attempt);
            answer(push, worker_died());
        }
        h.calls.assert_none("PushTask", is_push).await;
        let (kind, message) = stored(&h.ctx, &ret).expect("the task has failed");
        assert_eq!(kind, object_kind::WORKER_CRASHED);
        assert!(message.contains("no retries left"), "{message}");
    }

    #[tokio::test(start_paused = true)]
    async fn max_retries_of_minus_one_retries_worker_death_forever() {
        let mut h = harness(1).await;
        let (spec, ret) = task(&h.ctx, -1);
        h.submitter.submit(spec);
        for expected_attempt in 0..10 {
            let (_, _, lease) = h.calls.lease_request().await;
            answer(lease, granted(expected_attempt as u64 + 1, "worker"));
            let (_, task, push) = h.calls.push().await;
            assert_eq!(attempt(&task), expected_attempt);
            if expected_attempt < 9 {
                answer(push, worker_died());
            } else {
                answer(push, reply(&task, b"done", false, false));
            }
        }
        settle().await;
        assert_eq!(stored(&h.ctx, &ret), Some((object_kind::VALUE, "done".into())));
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_app_errors_rerun_on_the_same_lease_until_retries_run_out() {
        let mut h = harness(1).await;
        let (spec, ret) = task(&h.ctx, 1);
        h.submitter.submit(spec);
        let (_, _, lease) = h.calls.lease_request().await;
        answer(lease, granted(1, "worker"));
        let (_, task, push) = h.calls.push().await;
        answer(push, reply(&task, b"first error", true, true));
        // The worker survived an exception: the retry needs no new lease.
        let (worker, task, push) = h.calls.push().await;
        assert_eq!((worker.as_str(), attempt(&task)), ("worker", 1));
        answer(push, reply(&task, b"second error", true, true));
        h.calls
            .assert_none("PushTask or RequestLease", |c| is_push(c) || matches!(c, ClusterCall::RequestLease { .. }))
            .await;
        // The last attempt's exception is the task's result.
        assert_eq!(stored(&h.ctx, &ret), Some((object_kind::VALUE, "second error".into())));
    }

    #[tokio::test(start_paused = true)]
    async fn app_errors_outside_retry_exceptions_are_not_retried() {
        let mut h = harness(1).await;
        let (spec, ret) = task(&h.ctx, 3);
        h.submitter.submit(spec);
        let (_, _, lease) = h.calls.lease_request().await;
        answer(lease, granted(1, "worker"));
        let (_, task, push) = h.calls.push().await;
        answer(push, reply(&task, b"error", true, false));
        h.calls.assert_none("PushTask", is_push).await;
        assert_eq!(stored(&h.ctx, &ret), Some((object_kind::VALUE, "error".into())));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_lease_fails_every_queued_task_of_the_class() {
        let mut h = harness(1).await;
        let rets: Vec<ObjectId> = (0..3)
            .map(|_| {
                let (spec, ret) = task(&h.ctx, 3);
                h.submitter.submit(spec);
                ret
            })
            .collect();
        let (_, _, lease) = h.calls.lease_request().await;
        let refusal = RpcError::Remote { code: ErrorCode::Unschedulable, message: "no node has 1 CPU".into() };
        answer(lease, Err(refusal));
        settle().await;
        for ret in &rets {
            let (kind, message) = stored(&h.ctx, ret).expect("the task has failed");
            assert_eq!(kind, object_kind::UNSCHEDULABLE);
            assert!(message.contains("no node has 1 CPU"), "{message}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_holds_at_most_pipeline_depth_tasks_at_once() {
        let mut h = harness(2).await;
        for _ in 0..3 {
            h.submitter.submit(task(&h.ctx, 0).0);
        }
        let (_, _, lease) = h.calls.lease_request().await;
        answer(lease, granted(1, "worker"));
        let (_, first, first_push) = h.calls.push().await;
        let (_, _second, _second_push) = h.calls.push().await;
        h.calls.assert_none("third PushTask", is_push).await;
        answer(first_push, reply(&first, b"done", false, false));
        let (worker, _, _) = h.calls.push().await;
        assert_eq!(worker, "worker");
    }

    #[tokio::test(start_paused = true)]
    async fn a_spilled_back_lease_comes_from_the_other_raylet_and_goes_back_there_when_idle() {
        let mut h = harness(1).await;
        let (spec, ret) = task(&h.ctx, 0);
        h.submitter.submit(spec);
        let (raylet, request, lease) = h.calls.lease_request().await;
        assert_eq!((raylet.as_str(), request.no_spillback), (LOCAL_RAYLET, false));
        let to = Spillback { raylet_address: "raylet-b".into(), ..Default::default() };
        answer(lease, Ok(rtd_common::proto::RequestLeaseReply { result: Some(LeaseResult::Spillback(to)) }));
        let (raylet, request, lease) = h.calls.lease_request().await;
        // The other raylet must grant it or fail it, not pass it on again.
        assert_eq!((raylet.as_str(), request.no_spillback), ("raylet-b", true));
        answer(lease, granted(7, "worker-b"));
        let (worker, task, push) = h.calls.push().await;
        assert_eq!(worker, "worker-b");
        answer(push, reply(&task, b"done", false, false));
        let returned = h.calls.next("ReturnLease", |call| matches!(call, ClusterCall::ReturnLease { .. })).await;
        let ClusterCall::ReturnLease { raylet, lease_id } = returned else { unreachable!("picked a ReturnLease") };
        assert_eq!((raylet.as_str(), lease_id), ("raylet-b", 7));
        assert_eq!(stored(&h.ctx, &ret), Some((object_kind::VALUE, "done".into())));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_a_queued_task_fails_it_and_never_pushes_it() {
        let mut h = harness(1).await;
        let (spec, ret) = task(&h.ctx, 3);
        let task_id = task_id_of(&spec);
        h.submitter.submit(spec);
        let (_, _, lease) = h.calls.lease_request().await;
        h.submitter.cancel(task_id, false);
        settle().await;
        assert_eq!(stored(&h.ctx, &ret).map(|(kind, _)| kind), Some(object_kind::TASK_CANCELLED));
        // A lease granted after the cancel finds no work and goes back.
        answer(lease, granted(1, "worker"));
        h.calls.assert_none("PushTask", is_push).await;
        h.calls.next("ReturnLease", |call| matches!(call, ClusterCall::ReturnLease { lease_id: 1, .. })).await;
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_a_running_task_asks_its_worker_and_force_kills_it_without_retry() {
        let mut h = harness(1).await;
        let (spec, ret) = task(&h.ctx, 3);
        let task_id = task_id_of(&spec);
        h.submitter.submit(spec);
        let (_, _, lease) = h.calls.lease_request().await;
        answer(lease, granted(4, "worker"));
        let (_, _, push) = h.calls.push().await;
        h.submitter.cancel(task_id, false);
        let asked = h.calls.next("CancelTask", |call| matches!(call, ClusterCall::CancelTask { .. })).await;
        let ClusterCall::CancelTask { worker, task_id: asked_for } = asked else { unreachable!("picked a CancelTask") };
        assert_eq!((worker.as_str(), asked_for), ("worker", task_id));
        h.submitter.cancel(task_id, true);
        let killed =
            h.calls.next("KillLeasedWorker", |call| matches!(call, ClusterCall::KillLeasedWorker { .. })).await;
        let ClusterCall::KillLeasedWorker { raylet, lease_id } = killed else {
            unreachable!("picked a KillLeasedWorker")
        };
        assert_eq!((raylet.as_str(), lease_id), (LOCAL_RAYLET, 4));
        answer(push, worker_died());
        h.calls
            .assert_none("PushTask or RequestLease", |c| is_push(c) || matches!(c, ClusterCall::RequestLease { .. }))
            .await;
        assert_eq!(stored(&h.ctx, &ret).map(|(kind, _)| kind), Some(object_kind::TASK_CANCELLED));
    }

    /// A task spilled to node B, whose worker freezes; B is declared dead and the task is
    /// retried from this node. Then the frozen push answers `late`: whatever it says, the
    /// retry's answer is the task's.
    async fn retried_from_this_node_after_its_node_died(late: fn(&PushTask) -> Result<PushTaskReply, RpcError>) {
        let mut h = harness(1).await;
        let (spec, ret) = task(&h.ctx, 1);
        h.submitter.submit(spec);
        let (_, _, lease) = h.calls.lease_request().await;
        let to = Spillback { raylet_address: "raylet-b".into(), ..Default::default() };
        answer(lease, Ok(rtd_common::proto::RequestLeaseReply { result: Some(LeaseResult::Spillback(to)) }));
        let (_, _, lease) = h.calls.lease_request().await;
        answer(lease, granted(1, "worker-b"));
        let (_, old_task, frozen_push) = h.calls.push().await;
        h.submitter.nodes_dead(vec!["raylet-b".into()]);
        let (raylet, _, lease) = h.calls.lease_request().await;
        assert_eq!(raylet, LOCAL_RAYLET);
        answer(lease, granted(2, "worker-a"));
        let (worker, task, push) = h.calls.push().await;
        assert_eq!((worker.as_str(), attempt(&task)), ("worker-a", 1));
        answer(frozen_push, late(&old_task));
        settle().await;
        assert_eq!(stored(&h.ctx, &ret), None, "a late answer of the old push decides nothing");
        answer(push, reply(&task, b"done", false, false));
        settle().await;
        assert_eq!(stored(&h.ctx, &ret), Some((object_kind::VALUE, "done".into())));
    }

    #[tokio::test(start_paused = true)]
    async fn tasks_on_a_dead_nodes_lease_are_retried_and_its_late_failure_ignored() {
        retried_from_this_node_after_its_node_died(|_| Err(RpcError::Disconnected("worker-b".into()))).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_success_of_a_dead_nodes_push_is_not_taken_for_the_retry() {
        retried_from_this_node_after_its_node_died(|old| reply(old, b"stale", false, false)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_lease_request_fails_queued_tasks_once_this_nodes_raylet_is_gone() {
        let mut h = harness(1).await;
        let (spec, ret) = task(&h.ctx, 3);
        h.submitter.submit(spec);
        let (_, _, lease) = h.calls.lease_request().await;
        h.cluster.local_raylet_gone.store(true, std::sync::atomic::Ordering::Relaxed);
        answer(lease, Err(RpcError::Disconnected(LOCAL_RAYLET.into())));
        settle().await;
        let (kind, message) = stored(&h.ctx, &ret).expect("the task has failed");
        assert_eq!(kind, object_kind::WORKER_CRASHED);
        assert!(message.contains("node daemon is gone"), "{message}");
    }
}
