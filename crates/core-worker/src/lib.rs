//! The core worker: the Rust half of every driver and worker process. It submits tasks
//! over worker leases, owns the objects it creates (reference counts, values, plasma
//! copies), and, in a worker, receives the tasks that Python executes.

pub mod actor_submitter;
pub mod borrowing;
pub mod context;
pub mod executor;
pub mod layout;
pub mod object_table;
pub mod owner_service;
pub mod submitter;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtd_common::proto::{
    frame::Body, object_value::Kind, ActorArgsReady, ActorInfo, ActorOptions, CreateActor, CreatePlacementGroup, GetNamedActor,
    GetNodes, GetPlacementGroup, KillActor, KvGet, KvPut, ListActors, ListPlacementGroups, NodeInfo,
    PlacementGroupInfo, PlacementGroupState, PullObject, RemovePlacementGroup, WaitPlacementGroup, NotifyBlocked, NotifyUnblocked, ObjectRefProto, ObjectValue, PushTaskReply,
    RegisterClient, ReturnObject, TaskArg, TaskSpec, WaitActor, WorkerOutput,
};
use rtd_common::rpc::{RpcClient, RpcError};
use rtd_common::{object_kind, ActorId, JobId, NodeId, ObjectId, PlacementGroupId, ResourceSet, TaskId, WorkerId};
use rtd_plasma::PlasmaClient;

pub use context::Context;
pub use executor::{IncomingTask, TaskExecutor};
use object_table::{Lookup, ObjectTable};
use owner_service::OwnerService;
use actor_submitter::ActorSubmitter;
use submitter::{system_error, TaskSubmitter};

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("timed out after {0:?} waiting for objects")]
    Timeout(Duration),
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    StoreFull(String),
    #[error("{0}")]
    ObjectLost(String),
    #[error("cannot reach the rtd node: {0}")]
    Rpc(#[from] RpcError),
    #[error("{0}")]
    Invalid(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub struct ConnectOptions {
    pub raylet_socket: String,
    pub session_dir: String,
    pub is_worker: bool,
    pub worker_id: Option<WorkerId>,
    /// In a multi-node cluster, this node's IP: the process then serves on TCP so that
    /// other nodes can reach it (else on a Unix socket).
    pub node_ip: Option<String>,
}

/// One task result as Python hands it over: metadata, pickle, out-of-band buffers, and
/// the refs pickled inside it.
pub type ResultParts<'a> = (u32, &'a [u8], Vec<&'a [u8]>, Vec<(ObjectId, String)>);

/// A task as the API hands it over.
pub struct TaskRequest {
    pub function_id: Vec<u8>,
    pub function_name: String,
    pub args: Vec<u8>,
    pub arg_refs: Vec<(ObjectId, String)>,
    /// Refs pickled inside `args`.
    pub contained_refs: Vec<(ObjectId, String)>,
    pub num_returns: u32,
    pub resources: ResourceSet,
    pub max_retries: i32,
    pub retry_exceptions: Vec<u8>,
    pub actor: Option<ActorCall>,
    /// Placement group that tasks submitted by this task use by default.
    pub capture_placement_group: Option<PlacementGroupId>,
    pub placement: Placement,
}

/// Where a task may run, besides its resources.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    /// "DEFAULT" (or empty) or "SPREAD".
    pub strategy: String,
    /// Node affinity: a node's hex id (empty: none), and whether it is soft.
    pub affinity_node: String,
    pub affinity_soft: bool,
}

/// What makes a task an actor task.
pub struct ActorCall {
    pub actor_id: ActorId,
    /// The constructor (else a method call).
    pub creation: bool,
    pub method_name: String,
    pub concurrency_group: String,
}

/// How many handles to an actor this process holds, and whether one left it.
#[derive(Default)]
struct HandleCount {
    count: u32,
    escaped: bool,
}

/// A value ready for Python: inline bytes, or an object pinned in plasma.
pub enum FetchedValue {
    Inline { metadata: u32, data: bytes::Bytes },
    Plasma(PinnedObject),
}

/// A sealed plasma object this process has pinned; unpinned on drop.
pub struct PinnedObject {
    plasma: PlasmaClient,
    id: ObjectId,
    offset: u64,
    size: u64,
    pub metadata: u32,
}

impl PinnedObject {
    pub fn as_ptr(&self) -> *const u8 {
        // The store guarantees [offset, offset+size) lies inside the region.
        unsafe { self.plasma.region().as_ptr().add(self.offset as usize) }
    }

    pub fn len(&self) -> usize {
        self.size as usize
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
}

impl Drop for PinnedObject {
    fn drop(&mut self) {
        self.plasma.release(&self.id);
    }
}

pub struct CoreWorker {
    pub ctx: Arc<Context>,
    pub executor: Arc<TaskExecutor>,
    submitter: TaskSubmitter,
    actor_submitter: ActorSubmitter,
    /// Handles to actors this process created (the owner decides their end).
    owned_actor_handles: parking_lot::Mutex<std::collections::HashMap<ActorId, HandleCount>>,
    /// The driver's pseudo task, naming its `put` objects.
    driver_task: TaskId,
    put_index: AtomicU32,
    /// Worker side: the driver this worker forwarded output to since its last task
    /// finished (the reply waits until that output has arrived).
    output_forwarded_to: parking_lot::Mutex<Option<String>>,
    runtime: Option<tokio::runtime::Runtime>,
}

const GET_SLICE: Duration = Duration::from_millis(50);
/// Copies of another node's object made before giving up when each is evicted at once.
const PULL_ATTEMPTS: usize = 3;
/// How long to wait for owners to confirm borrower registrations; an owner that does
/// not answer by then is gone or stuck, and its objects will be reported lost.
const BORROW_CONFIRM_LIMIT: Duration = Duration::from_secs(30);
/// How long a worker tries to reach its driver with output before writing it locally.
const OUTPUT_CONNECT_LIMIT: Duration = Duration::from_secs(2);

impl CoreWorker {
    pub fn connect(opts: ConnectOptions) -> Result<Self, CoreError> {
        let threads = std::env::var("RTD_CORE_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("rtd-core")
            .enable_all()
            .build()
            .map_err(|e| CoreError::Internal(format!("cannot start the tokio runtime: {e}")))?;
        let worker_id = opts.worker_id.unwrap_or_else(WorkerId::random);
        let executor = Arc::new(TaskExecutor::default());
        let (ctx, submitter) = runtime.block_on(async {
            let (listener, address) = match &opts.node_ip {
                Some(ip) => {
                    let listener = rtd_common::rpc::Listener::bind_tcp(&format!("{ip}:0"))
                        .await
                        .map_err(|e| CoreError::Internal(format!("cannot listen on {ip}: {e}")))?;
                    let port = listener.port().unwrap_or(0);
                    (listener, format!("{ip}:{port}"))
                }
                None => {
                    let address = format!("{}/sockets/cw-{}.sock", opts.session_dir, &worker_id.hex()[..16]);
                    let listener = rtd_common::rpc::bind(std::path::Path::new(&address))
                        .map_err(|e| CoreError::Internal(format!("cannot listen on {address}: {e}")))?;
                    (listener, address)
                }
            };
            let raylet = RpcClient::connect(&opts.raylet_socket).await?;
            let reply = raylet
                .call(Body::RegisterClient(RegisterClient {
                    is_worker: opts.is_worker,
                    worker_id: worker_id.to_vec().into(),
                    pid: std::process::id(),
                    address: address.clone(),
                }))
                .await?;
            let Body::RegisterClientReply(info) = reply else {
                return Err(CoreError::Internal("unexpected reply to RegisterClient".into()));
            };
            let plasma = PlasmaClient::connect(&info.plasma_socket, std::path::Path::new(&info.shm_path))
                .await
                .map_err(|e| CoreError::Internal(format!("cannot connect to the object store: {e}")))?;
            let peers: Arc<rtd_common::rpc::ConnectionCache> = Default::default();
            let ctx = Arc::new(Context {
                rt: tokio::runtime::Handle::current(),
                address: address.clone(),
                worker_id,
                node_id: NodeId::from_bytes(&info.node_id).unwrap_or_else(|_| NodeId::nil()),
                job_id: JobId::from_bytes(&info.job_id).unwrap_or_else(|_| JobId::nil()),
                session_dir: info.session_dir.clone(),
                is_worker: opts.is_worker,
                raylet,
                plasma,
                table: ObjectTable::new(),
                borrows: borrowing::BorrowLinks::new(tokio::runtime::Handle::current(), peers.clone()),
                peers,
                watched_borrowers: Default::default(),
                output_sink: Default::default(),
                lineage: Default::default(),
            });
            let submitter = TaskSubmitter::start(ctx.clone());
            let service = Arc::new(OwnerService { ctx: ctx.clone(), executor: executor.clone(), submitter: submitter.clone() });
            tokio::spawn(rtd_common::rpc::serve(listener, service));
            Ok::<_, CoreError>((ctx, submitter))
        })?;
        if opts.is_worker {
            // A worker has no reason to outlive its node daemon.
            let raylet = ctx.raylet.clone();
            runtime.spawn(async move {
                raylet.closed().await;
                std::process::exit(0);
            });
        }
        let actor_submitter = ActorSubmitter::start(ctx.clone());
        if opts.node_ip.is_some() {
            runtime.spawn(watch_node_deaths(ctx.clone(), submitter.clone(), actor_submitter.clone()));
        }
        Ok(Self {
            ctx,
            executor,
            submitter,
            actor_submitter,
            owned_actor_handles: Default::default(),
            driver_task: TaskId::random(),
            put_index: AtomicU32::new(0),
            output_forwarded_to: Default::default(),
            runtime: Some(runtime),
        })
    }

    /// Stops the runtime; the daemon sees this client disconnect.
    pub fn shutdown(&mut self) {
        self.ctx.table.notify_all();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_millis(200));
        }
        if rtd_common::rpc::is_unix_address(&self.ctx.address) {
            let _ = std::fs::remove_file(&self.ctx.address);
        }
    }

    pub fn address(&self) -> &str {
        &self.ctx.address
    }

    fn current_task(&self) -> TaskId {
        self.executor.current_task().unwrap_or(self.driver_task)
    }

    /// The driver's job, or in a worker the job of the task it runs.
    pub fn job_id(&self) -> JobId {
        self.executor.current_job().unwrap_or(self.ctx.job_id)
    }

    pub fn current_task_id(&self) -> Option<TaskId> {
        if self.ctx.is_worker {
            self.executor.current_task()
        } else {
            None
        }
    }

    // ------------------------------------------------------------------ objects

    /// Stores a serialized value as a new object this process owns; the refs pickled
    /// inside it (`contained`) stay alive while it does.
    pub fn put(
        &self,
        metadata: u32,
        payload: &[u8],
        buffers: &[&[u8]],
        contained: Vec<(ObjectId, String)>,
    ) -> Result<ObjectId, CoreError> {
        let index = self.put_index.fetch_add(1, Ordering::Relaxed);
        let id = ObjectId::for_put(&self.current_task(), index);
        let value = self.ctx.store_value(id, metadata, payload, buffers)?;
        self.ctx.table.add_owned_ready(id, &self.ctx.address, value);
        if !contained.is_empty() {
            // Nothing is replaced in a new object, so nothing is freed.
            let freed = self.ctx.table.add_contained(id, contained, &self.ctx.address, false);
            debug_assert!(freed.is_empty());
        }
        Ok(id)
    }

    /// A Python `ObjectRef` was made; the first one to a borrowed object registers this
    /// process with the owner.
    pub fn add_local_ref(&self, id: ObjectId, owner: &str) {
        self.ctx.note_borrow(self.ctx.table.add_local_ref(id, owner, &self.ctx.address));
    }

    /// Waits until the owners of objects this process started borrowing have counted
    /// it (called after unpickling refs, so an owner never frees what we just got).
    pub fn flush_borrows(&self) {
        self.ctx.borrows.flush(BORROW_CONFIRM_LIMIT);
    }

    /// Every object this process knows, with its counts (debugging and tests).
    pub fn reference_counts(&self) -> Vec<(ObjectId, object_table::RefCounts)> {
        self.ctx.table.reference_counts()
    }

    pub fn remove_local_ref(&self, id: &ObjectId) {
        if let Some(freed) = self.ctx.table.remove_local_ref(id) {
            self.ctx.free(freed);
        }
    }

    pub fn mark_escaped(&self, id: &ObjectId) {
        self.ctx.table.mark_escaped(id);
    }

    /// Blocks until every object is ready (or `timeout`), then returns their values.
    /// `interrupted` is polled while waiting (Ctrl-C in Python).
    pub fn get(
        &self,
        ids: &[ObjectId],
        timeout: Option<Duration>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Vec<FetchedValue>, CoreError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        self.wait_until(ids, ids.len(), timeout, interrupted)?;
        ids.iter()
            .map(|id| {
                let value = self.ctx.table.get_value(id).unwrap_or_else(|| context::lost(*id));
                match self.fetch_value(*id, value.clone()) {
                    Err(CoreError::ObjectLost(why)) if self.reconstruct(id, &value) => {
                        tracing::info!("object {id} was lost ({why}); re-running the task that made it");
                        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                        self.wait_until(&[*id], 1, left, interrupted)?;
                        let value = self.ctx.table.get_value(id).unwrap_or_else(|| context::lost(*id));
                        self.fetch_value(*id, value)
                    }
                    other => other,
                }
            })
            .collect()
    }

    /// Has a lost object made again: by re-running its task if this process owns it
    /// (and the task has retries left), else by asking its owner to. True if asked.
    fn reconstruct(&self, id: &ObjectId, lost: &ObjectValue) -> bool {
        if self.submitter.rebuild(&self.ctx, id) {
            return true;
        }
        let Some(Kind::Plasma(at)) = &lost.kind else { return false };
        match self.ctx.table.refetch(id) {
            Some(owner) => {
                self.ctx.fetch_from_owner(*id, owner, at.node_id.to_vec());
                true
            }
            None => false,
        }
    }

    /// Indices of ready objects in the order they became ready, at most `num_returns`.
    pub fn wait(
        &self,
        ids: &[ObjectId],
        num_returns: usize,
        timeout: Option<Duration>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Vec<usize>, CoreError> {
        match self.wait_until(ids, num_returns, timeout, interrupted) {
            Ok(()) | Err(CoreError::Timeout(_)) => {}
            Err(e) => return Err(e),
        }
        let mut ready: Vec<(u64, usize)> = ids
            .iter()
            .enumerate()
            .filter_map(|(i, id)| self.ctx.table.ready_seq(id).map(|seq| (seq, i)))
            .collect();
        ready.sort();
        ready.dedup_by_key(|(_, i)| ids[*i]);
        Ok(ready.into_iter().take(num_returns).map(|(_, i)| i).collect())
    }

    /// Waits until `count` of `ids` are ready. A worker running a task tells the raylet
    /// it is blocked meanwhile, so its CPU can run other tasks (nested tasks would
    /// otherwise deadlock when every CPU waits on children).
    fn wait_until(
        &self,
        ids: &[ObjectId],
        count: usize,
        timeout: Option<Duration>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<(), CoreError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut blocked = false;
        let result = loop {
            let mut ready = 0;
            for id in ids {
                match self.ctx.table.poll(id) {
                    Lookup::Ready(_) => ready += 1,
                    Lookup::FetchFrom(owner) => self.ctx.fetch_from_owner(*id, owner, Vec::new()),
                    Lookup::Pending => {}
                    Lookup::Missing => {
                        return Err(CoreError::ObjectLost(format!(
                            "object {id} is not known to this process"
                        )))
                    }
                }
            }
            if ready >= count.min(ids.len()) {
                break Ok(());
            }
            let now = Instant::now();
            if let Some(d) = deadline {
                if now >= d {
                    break Err(CoreError::Timeout(timeout.unwrap_or_default()));
                }
            }
            if !blocked && self.ctx.is_worker && self.executor.current_task().is_some() {
                blocked = true;
                let _ = self.ctx.raylet.send(Body::NotifyBlocked(NotifyBlocked {}));
            }
            let slice_end = now + GET_SLICE;
            self.ctx.table.wait_for_change(deadline.map_or(slice_end, |d| d.min(slice_end)));
            if interrupted() {
                break Err(CoreError::Interrupted);
            }
        };
        if blocked {
            let _ = self.ctx.raylet.send(Body::NotifyUnblocked(NotifyUnblocked {}));
        }
        result
    }

    fn fetch_value(&self, id: ObjectId, value: ObjectValue) -> Result<FetchedValue, CoreError> {
        match value.kind {
            Some(Kind::Inline(inline)) => Ok(FetchedValue::Inline { metadata: inline.metadata, data: inline.data }),
            Some(Kind::Plasma(at)) if at.node_id.as_ref() != self.ctx.node_id.as_bytes() => {
                // Another node's store holds it: have our raylet copy it here, then pin
                // the copy. The store may evict a copy to make room before we pin it;
                // then copy it again.
                for _ in 0..PULL_ATTEMPTS {
                    let pull = PullObject { id: id.to_vec().into(), node_id: at.node_id.clone() };
                    self.node_call(Body::PullObject(pull)).map_err(|e| match e {
                        // Only an object its node no longer has is lost (and may be rebuilt).
                        CoreError::Rpc(RpcError::Remote { code: rtd_common::proto::ErrorCode::NotFound, message }) => {
                            CoreError::ObjectLost(format!("object {id} cannot be fetched from its node: {message}"))
                        }
                        CoreError::Rpc(RpcError::Remote { code: rtd_common::proto::ErrorCode::StoreFull, message }) => {
                            CoreError::StoreFull(message)
                        }
                        other => CoreError::Internal(format!("object {id} could not be copied from its node: {other}")),
                    })?;
                    if let Some(pinned) = self.pin_within(id, 0)? {
                        return Ok(FetchedValue::Plasma(pinned));
                    }
                }
                Err(CoreError::StoreFull(format!(
                    "object {id} was evicted from this node's store each time it was copied here: \
                     the store is too small for the objects in use"
                )))
            }
            Some(Kind::Plasma(_)) => self.pin(id).map(FetchedValue::Plasma),
            None => Err(CoreError::Internal(format!("object {id} has no value"))),
        }
    }

    /// Pins a sealed plasma object (restoring it from disk if it was spilled).
    pub fn pin(&self, id: ObjectId) -> Result<PinnedObject, CoreError> {
        self.pin_within(id, 30_000)?
            .ok_or_else(|| CoreError::ObjectLost(format!("object {id} is not in the object store")))
    }

    /// Pins the object if it is (or, within `wait_ms`, becomes) sealed in the store.
    fn pin_within(&self, id: ObjectId, wait_ms: u64) -> Result<Option<PinnedObject>, CoreError> {
        let info = self.ctx.rt.block_on(self.ctx.plasma.get(&id, wait_ms)).map_err(context::plasma_error)?;
        Ok(info.map(|info| PinnedObject {
            plasma: self.ctx.plasma.clone(),
            id,
            offset: info.offset,
            size: info.size,
            metadata: info.metadata,
        }))
    }

    /// A task argument's value as Python needs it.
    pub fn arg_value(&self, arg: &TaskArg) -> Result<FetchedValue, CoreError> {
        let id = arg
            .r#ref
            .as_ref()
            .and_then(|r| ObjectId::from_bytes(&r.id).ok())
            .ok_or_else(|| CoreError::Invalid("task argument without an object id".into()))?;
        let value = arg.value.clone().ok_or_else(|| CoreError::Internal("unresolved task argument".into()))?;
        self.fetch_value(id, value)
    }

    // ------------------------------------------------------------------ tasks

    /// The spec of a new task and the ids of its results (registered as pending).
    fn build_spec(&self, req: TaskRequest) -> (TaskSpec, Vec<ObjectId>) {
        let task_id = TaskId::random();
        let return_ids: Vec<ObjectId> = (0..req.num_returns).map(|i| ObjectId::for_return(&task_id, i)).collect();
        // A constructor's result goes to the GCS, not to us.
        let creation = req.actor.as_ref().is_some_and(|a| a.creation);
        if !creation {
            for id in &return_ids {
                self.ctx.table.add_owned_pending(*id, &self.ctx.address);
            }
        }
        let hold = |id: &ObjectId, owner: &String| {
            self.ctx.note_borrow(self.ctx.table.add_task_ref(*id, owner, &self.ctx.address));
            ObjectRefProto { id: id.to_vec().into(), owner: owner.clone() }
        };
        let arg_refs = req
            .arg_refs
            .iter()
            .map(|(id, owner)| TaskArg { r#ref: Some(hold(id, owner)), value: self.ctx.table.get_value(id) })
            .collect();
        let contained_refs = req.contained_refs.iter().map(|(id, owner)| hold(id, owner)).collect();
        let (actor_id, actor_creation, method_name, concurrency_group) = match req.actor {
            Some(a) => (a.actor_id.to_vec().into(), a.creation, a.method_name, a.concurrency_group),
            None => (Default::default(), false, String::new(), String::new()),
        };
        let spec = TaskSpec {
            task_id: task_id.to_vec().into(),
            job_id: self.job_id().to_vec().into(),
            function_id: req.function_id.into(),
            function_name: req.function_name,
            args: req.args.into(),
            arg_refs,
            return_ids: return_ids.iter().map(|id| id.to_vec().into()).collect(),
            resources: req.resources.to_fixed_map(),
            owner: self.ctx.address.clone(),
            max_retries: req.max_retries,
            retry_exceptions: req.retry_exceptions.into(),
            attempt: 0,
            actor_id,
            actor_creation,
            method_name,
            concurrency_group,
            capture_placement_group: req.capture_placement_group.map(|g| g.to_vec()).unwrap_or_default().into(),
            scheduling_strategy: req.placement.strategy,
            affinity_node: req.placement.affinity_node,
            affinity_soft: req.placement.affinity_soft,
            contained_refs,
        };
        (spec, return_ids)
    }

    pub fn submit_task(&self, req: TaskRequest) -> Vec<ObjectId> {
        let actor_id = req.actor.as_ref().map(|a| a.actor_id);
        let (spec, return_ids) = self.build_spec(req);
        match actor_id {
            Some(actor_id) => self.actor_submitter.submit(actor_id, spec),
            None => self.submitter.submit(spec),
        }
        return_ids
    }

    // ------------------------------------------------------------------ actors

    /// Registers an actor with the GCS, which places it and runs its constructor.
    /// Arguments are resolved first. Returns the actor's info (with `get_if_exists`,
    /// possibly an existing actor's).
    pub fn create_actor(&self, req: TaskRequest, options: ActorOptions) -> Result<ActorInfo, CoreError> {
        let (spec, _) = self.build_spec(req);
        // The arguments stay referenced while the actor may (re)run its constructor:
        // until it is dead for good.
        let args_pending = spec.arg_refs.iter().any(|arg| arg.value.is_none() && arg.r#ref.is_some());
        let create = CreateActor { spec: Some(spec.clone()), options: Some(options), args_pending };
        let info = match self.node_call(Body::CreateActor(create)) {
            Ok(Body::ActorInfo(info)) => info,
            other => {
                self.ctx.release_task_args(&spec);
                return match other {
                    Err(e) => Err(e),
                    Ok(_) => Err(CoreError::Internal("unexpected reply to CreateActor".into())),
                };
            }
        };
        if info.actor_id != spec.actor_id {
            // `get_if_exists` found an existing actor: this one is never created.
            self.ctx.release_task_args(&spec);
            return Ok(info);
        }
        let holds_refs = !spec.arg_refs.is_empty() || !spec.contained_refs.is_empty();
        let ctx = self.ctx.clone();
        // As in Ray, `.remote()` returns at once; the actor is placed when the arguments
        // are ready.
        self.ctx.rt.spawn(async move {
            let spec = if args_pending {
                let spec = submitter::resolve_args(ctx.clone(), spec).await;
                let ready = ActorArgsReady { spec: Some(spec.clone()) };
                if let Err(e) = ctx.raylet.call(Body::ActorArgsReady(ready)).await {
                    tracing::warn!("cannot hand the actor's constructor arguments to the GCS: {e}");
                }
                spec
            } else {
                spec
            };
            if holds_refs {
                release_args_when_dead(ctx, spec).await;
            }
        });
        Ok(info)
    }

    pub fn get_named_actor(&self, namespace: &str, name: &str) -> Result<Option<ActorInfo>, CoreError> {
        let reply = self.node_call(Body::GetNamedActor(GetNamedActor {
            name: name.to_string(),
            namespace: namespace.to_string(),
        }));
        match reply {
            Ok(Body::ActorInfo(info)) => Ok(Some(info)),
            Err(CoreError::Rpc(RpcError::Remote { code: rtd_common::proto::ErrorCode::NotFound, .. })) => Ok(None),
            Err(e) => Err(e),
            Ok(_) => Err(CoreError::Internal("unexpected reply to GetNamedActor".into())),
        }
    }

    /// Ends an actor (`cause` empty: killed with `rtd.kill()`).
    pub fn kill_actor(&self, actor_id: ActorId, no_restart: bool, cause: &str) -> Result<(), CoreError> {
        let kill = KillActor { actor_id: actor_id.to_vec().into(), no_restart, cause: cause.to_string() };
        self.node_call(Body::KillActor(kill))?;
        Ok(())
    }

    pub fn list_actors(&self) -> Result<Vec<ActorInfo>, CoreError> {
        match self.node_call(Body::ListActors(ListActors {}))? {
            Body::ListActorsReply(r) => Ok(r.actors),
            _ => Err(CoreError::Internal("unexpected reply to ListActors".into())),
        }
    }

    // ------------------------------------------------------------------ placement groups

    pub fn create_placement_group(&self, req: CreatePlacementGroup) -> Result<PlacementGroupInfo, CoreError> {
        match self.node_call(Body::CreatePlacementGroup(req))? {
            Body::PlacementGroupInfo(info) => Ok(info),
            _ => Err(CoreError::Internal("unexpected reply to CreatePlacementGroup".into())),
        }
    }

    pub fn remove_placement_group(&self, pg_id: PlacementGroupId) -> Result<(), CoreError> {
        self.node_call(Body::RemovePlacementGroup(RemovePlacementGroup { pg_id: pg_id.to_vec().into() }))?;
        Ok(())
    }

    /// The group's info once it is created or removed; `None` after `timeout`.
    /// The group's info once it is created or removed; None if `timeout` passes first
    /// (no timeout: wait as long as it takes).
    pub fn wait_placement_group(
        &self,
        pg_id: PlacementGroupId,
        timeout: Option<Duration>,
    ) -> Result<Option<PlacementGroupInfo>, CoreError> {
        let call = self.ctx.raylet.call(Body::WaitPlacementGroup(WaitPlacementGroup { pg_id: pg_id.to_vec().into() }));
        let waited = self.ctx.rt.block_on(async {
            match timeout {
                Some(timeout) => tokio::time::timeout(timeout, call).await,
                None => Ok(call.await),
            }
        });
        match waited {
            Err(_) => Ok(None),
            Ok(Ok(Body::PlacementGroupInfo(info))) => Ok(Some(info)),
            Ok(Ok(_)) => Err(CoreError::Internal("unexpected reply to WaitPlacementGroup".into())),
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// `PlacementGroup.ready()`: a new object this process owns that takes the value
    /// `payload` (the pickled group) once the GCS reports the group created. No task
    /// runs: the object waits on the same GCS answer as `wait_placement_group`, so it
    /// costs what `wait()` costs and `get`/`wait` on it behave as on any pending object.
    /// A removed group's object (asked for after its removal, or before it was created)
    /// is `TaskUnschedulableError`, as a task in that group would be.
    pub fn placement_group_ready(&self, pg_id: PlacementGroupId, payload: &[u8]) -> Result<ObjectId, CoreError> {
        let index = self.put_index.fetch_add(1, Ordering::Relaxed);
        let id = ObjectId::for_put(&self.current_task(), index);
        let created = self.ctx.store_value(id, object_kind::VALUE, payload, &[])?;
        self.ctx.table.add_owned_pending(id, &self.ctx.address);
        let request = WaitPlacementGroup { pg_id: pg_id.to_vec().into() };
        let ctx = self.ctx.clone();
        let group = pg_id.hex();
        self.ctx.rt.spawn(async move {
            let value = match ctx.raylet.call(Body::WaitPlacementGroup(request)).await {
                Ok(Body::PlacementGroupInfo(info)) if info.state == PlacementGroupState::PgCreated as i32 => created,
                Ok(Body::PlacementGroupInfo(_)) => system_error(
                    object_kind::UNSCHEDULABLE,
                    format!("placement group {group} was removed"),
                ),
                Ok(_) => system_error(object_kind::WORKER_CRASHED, "unexpected reply to WaitPlacementGroup".into()),
                Err(e) if e.code() == rtd_common::proto::ErrorCode::NotFound => {
                    system_error(object_kind::UNSCHEDULABLE, format!("no placement group {group}"))
                }
                Err(e) => {
                    system_error(object_kind::WORKER_CRASHED, format!("waiting for placement group {group} failed: {e}"))
                }
            };
            ctx.store_result(id, value, Vec::new());
        });
        Ok(id)
    }

    /// The group with this id, or without one the live group named `name`.
    pub fn get_placement_group(
        &self,
        pg_id: Option<PlacementGroupId>,
        name: &str,
    ) -> Result<Option<PlacementGroupInfo>, CoreError> {
        let pg_id = pg_id.map(|id| id.to_vec()).unwrap_or_default();
        let req = GetPlacementGroup { pg_id: pg_id.into(), name: name.to_string() };
        match self.node_call(Body::GetPlacementGroup(req)) {
            Ok(Body::PlacementGroupInfo(info)) => Ok(Some(info)),
            Err(CoreError::Rpc(RpcError::Remote { code: rtd_common::proto::ErrorCode::NotFound, .. })) => Ok(None),
            Err(e) => Err(e),
            Ok(_) => Err(CoreError::Internal("unexpected reply to GetPlacementGroup".into())),
        }
    }

    pub fn list_placement_groups(&self) -> Result<Vec<PlacementGroupInfo>, CoreError> {
        match self.node_call(Body::ListPlacementGroups(ListPlacementGroups {}))? {
            Body::ListPlacementGroupsReply(r) => Ok(r.groups),
            _ => Err(CoreError::Internal("unexpected reply to ListPlacementGroups".into())),
        }
    }

    /// A handle to an actor this process created was made.
    pub fn add_actor_handle(&self, actor_id: ActorId) {
        self.owned_actor_handles.lock().entry(actor_id).or_default().count += 1;
    }

    /// A handle was dropped; the last one (if none escaped) ends a non-detached actor
    /// once its pending calls are done.
    pub fn remove_actor_handle(&self, actor_id: ActorId) {
        let mut handles = self.owned_actor_handles.lock();
        let Some(h) = handles.get_mut(&actor_id) else { return };
        h.count = h.count.saturating_sub(1);
        if h.count == 0 {
            let escaped = h.escaped;
            handles.remove(&actor_id);
            if !escaped {
                self.actor_submitter.handles_gone(actor_id);
            }
        }
    }

    /// A handle was pickled: some other process may call the actor from now on.
    pub fn mark_actor_handle_escaped(&self, actor_id: ActorId) {
        if let Some(h) = self.owned_actor_handles.lock().get_mut(&actor_id) {
            h.escaped = true;
        }
    }

    /// Cancels the task that creates `id` (only the owner can).
    pub fn cancel(&self, id: &ObjectId, force: bool) -> Result<(), CoreError> {
        if !self.ctx.table.is_owned(id) {
            return Err(CoreError::Invalid(format!(
                "only the owner of object {id} can cancel the task that creates it"
            )));
        }
        self.submitter.cancel(id.task_id(), force);
        Ok(())
    }

    /// Worker side: the next pushed task, if one arrives within `timeout`.
    pub fn next_task(&self, timeout: Duration) -> Option<IncomingTask> {
        self.executor.next_task(timeout)
    }

    /// Worker side: stores each result and replies to the submitter. Each result comes
    /// with the refs pickled inside it, which the submitter will hold: before replying,
    /// the submitter is registered as their borrower with each owner (and this worker's
    /// own registrations, made while unpickling the arguments, are confirmed), so no
    /// owner frees them when this worker lets go.
    pub fn finish_task(
        &self,
        task: IncomingTask,
        results: Vec<ResultParts<'_>>,
        app_error: bool,
        retryable: bool,
    ) -> Result<(), CoreError> {
        let mut returns = Vec::with_capacity(results.len());
        let mut first_error = None;
        let mut contained = Vec::with_capacity(results.len());
        for (raw_id, (metadata, payload, buffers, refs)) in task.spec.return_ids.iter().zip(results) {
            let id = ObjectId::from_bytes(raw_id).map_err(|e| CoreError::Invalid(e.to_string()))?;
            match self.ctx.store_value(id, metadata, payload, &buffers) {
                Ok(value) => {
                    returns.push(ReturnObject { id: raw_id.clone(), value: Some(value), contained: Vec::new() });
                    contained.push(refs);
                }
                Err(e) => {
                    first_error.get_or_insert(e.to_string());
                    break;
                }
            }
        }
        if first_error.is_none() && !task.spec.actor_creation {
            for (ret, refs) in returns.iter_mut().zip(contained) {
                ret.contained = self.register_for_submitter(&task.spec.owner, refs);
            }
        }
        self.ctx.borrows.flush(BORROW_CONFIRM_LIMIT);
        self.sync_output();
        self.executor.task_done();
        if let Some(message) = first_error {
            // The result could not be stored (store full): report that as the error.
            let returns = task
                .spec
                .return_ids
                .iter()
                .map(|id| ReturnObject {
                    id: id.clone(),
                    value: Some(submitter::system_error(rtd_common::object_kind::OBJECT_LOST, message.clone())),
                    contained: Vec::new(),
                })
                .collect();
            task.finish(PushTaskReply { returns, app_error: true, retryable: false });
            return Err(CoreError::StoreFull(message));
        }
        task.finish(PushTaskReply { returns, app_error, retryable });
        Ok(())
    }

    /// Registers `submitter` as a borrower of each ref with its owner (here, or over the
    /// borrower protocol) and returns those the owners counted: the others are gone.
    fn register_for_submitter(&self, submitter: &str, refs: Vec<(ObjectId, String)>) -> Vec<ObjectRefProto> {
        if refs.is_empty() {
            return Vec::new();
        }
        let pending: Vec<_> = refs
            .into_iter()
            .map(|(id, owner)| {
                let done = if owner == self.ctx.address {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let _ = tx.send(self.ctx.add_borrower(&id, submitter));
                    rx
                } else {
                    self.ctx.borrows.add(id, &owner, submitter)
                };
                (id, owner, done)
            })
            .collect();
        self.ctx.rt.block_on(async {
            let deadline = tokio::time::Instant::now() + BORROW_CONFIRM_LIMIT;
            let mut counted = Vec::with_capacity(pending.len());
            for (id, owner, done) in pending {
                match tokio::time::timeout_at(deadline, done).await {
                    Ok(Ok(true)) => counted.push(ObjectRefProto { id: id.to_vec().into(), owner }),
                    Ok(_) => {}
                    // Not confirmed in time: the submitter will not hold it, so take back
                    // the registration should it still arrive (same link, so after it).
                    Err(_) => self.ctx.borrows.remove(id, &owner, submitter, 1),
                }
            }
            counted
        })
    }

    // ------------------------------------------------------------------ output

    /// Worker side: sends printed text (whole prefixed lines) to the job's driver.
    /// False if the driver cannot be reached; the caller then writes it locally.
    pub fn forward_output(&self, driver: &str, text: String, stderr: bool) -> bool {
        let connect = async {
            tokio::time::timeout(OUTPUT_CONNECT_LIMIT, self.ctx.peers.get(driver)).await.ok()?.ok()
        };
        let Some(client) = self.ctx.rt.block_on(connect) else { return false };
        if client.send(Body::WorkerOutput(WorkerOutput { text, stderr })).is_err() {
            return false;
        }
        *self.output_forwarded_to.lock() = Some(driver.to_string());
        true
    }

    /// Waits (briefly) until the driver has written what this worker forwarded, so that
    /// a task's output reaches the driver before its result does.
    fn sync_output(&self) {
        let Some(driver) = self.output_forwarded_to.lock().take() else { return };
        self.ctx.rt.block_on(async {
            let marker = async {
                let client = self.ctx.peers.get(&driver).await?;
                client.call(Body::WorkerOutput(WorkerOutput::default())).await
            };
            let _ = tokio::time::timeout(OUTPUT_CONNECT_LIMIT, marker).await;
        });
    }

    // ------------------------------------------------------------------ node

    /// A request to the node daemon; a request it rejects is the caller's error.
    fn node_call(&self, body: Body) -> Result<Body, CoreError> {
        match self.ctx.rt.block_on(self.ctx.raylet.call(body)) {
            Ok(reply) => Ok(reply),
            Err(RpcError::Remote { code: rtd_common::proto::ErrorCode::Invalid, message }) => {
                Err(CoreError::Invalid(message))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn kv_put(&self, key: &str, value: Vec<u8>) -> Result<(), CoreError> {
        self.node_call(Body::KvPut(KvPut { key: key.to_string(), value: value.into() }))?;
        Ok(())
    }

    pub fn kv_get(&self, key: &str) -> Result<Option<bytes::Bytes>, CoreError> {
        match self.node_call(Body::KvGet(KvGet { key: key.to_string() }))? {
            Body::KvGetReply(r) if r.found => Ok(Some(r.value)),
            _ => Ok(None),
        }
    }

    pub fn nodes(&self) -> Result<Vec<NodeInfo>, CoreError> {
        match self.node_call(Body::GetNodes(GetNodes {}))? {
            Body::GetNodesReply(r) => Ok(r.nodes),
            _ => Err(CoreError::Internal("unexpected reply to GetNodes".into())),
        }
    }
}

/// Releases an actor's constructor arguments once the GCS reports it dead for good
/// (or cannot say: then no restart will need them either).
async fn release_args_when_dead(ctx: Arc<Context>, spec: TaskSpec) {
    let actor_id = spec.actor_id.clone();
    let mut after_epoch = 0;
    loop {
        let wait = WaitActor { actor_id: actor_id.clone(), after_epoch };
        match ctx.raylet.call(Body::WaitActor(wait)).await {
            Ok(Body::ActorInfo(info)) if info.state != rtd_common::proto::ActorState::Dead as i32 => {
                after_epoch = info.epoch;
            }
            _ => break,
        }
    }
    ctx.release_task_args(&spec);
}

/// In a cluster, learns which nodes died so that work stuck on them (a node that froze
/// or was cut off never closes its connections) is retried elsewhere.
async fn watch_node_deaths(ctx: Arc<Context>, tasks: TaskSubmitter, actors: ActorSubmitter) {
    let mut known_dead: std::collections::HashSet<String> = Default::default();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(Body::GetNodesReply(r)) = ctx.raylet.call(Body::GetNodes(GetNodes {})).await else { continue };
        let newly_dead: Vec<String> = r
            .nodes
            .into_iter()
            .filter(|n| !n.alive && !n.raylet_address.is_empty())
            .map(|n| n.raylet_address)
            .filter(|a| known_dead.insert(a.clone()))
            .collect();
        if !newly_dead.is_empty() {
            tasks.nodes_dead(newly_dead);
            actors.nodes_died();
        }
    }
}

impl Drop for CoreWorker {
    fn drop(&mut self) {
        self.shutdown();
    }
}
