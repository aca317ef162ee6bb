//! `CoreWorker`: one per driver or worker process, and the only thing the Python
//! bindings call. It starts the process's runtime and its service, owns the objects
//! this process `put`s, and hands every other call to the module of its concern
//! (fetching, submission, the GCS, output); see the crate doc for the map.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rtd_common::proto::{
    ActorInfo, ActorOptions, CreatePlacementGroup, NodeInfo, NotifyBlocked, NotifyUnblocked, PlacementGroupInfo,
    RegisterClient, TaskArg,
};
use rtd_common::rpc::RpcClient;
use rtd_common::{object_kind, ActorId, JobId, NodeId, ObjectId, PlacementGroupId, TaskId, WorkerId};
use rtd_plasma::PlasmaClient;

use crate::actor_submitter::ActorSubmitter;
use crate::borrowing::BORROW_CONFIRM_LIMIT;
use crate::context::{Context, Identity, OutputSink};
use crate::error::CoreError;
use crate::executor::{IncomingTask, TaskExecutor};
use crate::gcs_client::{placement_group_outcome, GcsClient};
use crate::generator::Generators;
use crate::generator_stream::GeneratorNext;
use crate::node_view;
use crate::object_fetch::{FetchedValue, ObjectFetcher};
use crate::object_table::RefCounts;
use crate::output::OutputForwarder;
use crate::owner_service::OwnerService;
use crate::submission::{Submission, TaskRequest};
use crate::submitter::TaskSubmitter;
use crate::task_execution::{self, ResultParts};
use crate::user_metrics::UserMetric;

/// How long a disconnecting process waits for its last task events to reach the GCS.
const FINAL_REPORT_TIMEOUT: Duration = Duration::from_millis(500);

pub struct ConnectOptions {
    pub raylet_socket: String,
    pub session_dir: String,
    pub is_worker: bool,
    pub worker_id: Option<WorkerId>,
    /// In a multi-node cluster, this node's IP: the process then serves on TCP so that
    /// other nodes can reach it (else on a Unix socket).
    pub node_ip: Option<String>,
}

pub struct CoreWorker {
    ctx: Arc<Context>,
    executor: Arc<TaskExecutor>,
    objects: ObjectFetcher,
    submission: Submission,
    gcs: GcsClient,
    output: OutputForwarder,
    /// The driver's pseudo task, naming its `put` objects.
    driver_task: TaskId,
    put_index: AtomicU32,
    runtime: Option<tokio::runtime::Runtime>,
}

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
        let (ctx, tasks) = runtime.block_on(async {
            let (listener, address) = match &opts.node_ip {
                Some(ip) => {
                    // Unusable TLS settings fail here, not when a peer first calls.
                    rtd_common::rpc::Credentials::of_process()?;
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
            let info = raylet
                .request(RegisterClient {
                    is_worker: opts.is_worker,
                    worker_id: worker_id.to_vec().into(),
                    pid: std::process::id(),
                    address: address.clone(),
                    entrypoint: if opts.is_worker {
                        String::new()
                    } else {
                        std::env::args().collect::<Vec<_>>().join(" ")
                    },
                })
                .await?;
            let plasma = PlasmaClient::connect(&info.plasma_socket, std::path::Path::new(&info.shm_path))
                .await
                .map_err(|e| CoreError::Internal(format!("cannot connect to the object store: {e}")))?;
            let identity = Identity {
                address: address.clone(),
                worker_id,
                node_id: NodeId::from_bytes(&info.node_id).unwrap_or_else(|_| NodeId::nil()),
                job_id: JobId::from_bytes(&info.job_id).unwrap_or_else(|_| JobId::nil()),
                session_dir: info.session_dir.clone(),
                is_worker: opts.is_worker,
            };
            let ctx = Arc::new(Context::new(identity, raylet, plasma));
            let tasks = TaskSubmitter::start(ctx.clone());
            let service =
                Arc::new(OwnerService { ctx: ctx.clone(), executor: executor.clone(), submitter: tasks.clone() });
            tokio::spawn(rtd_common::rpc::serve(listener, service));
            Ok::<_, CoreError>((ctx, tasks))
        })?;
        if opts.is_worker {
            // A worker has no reason to outlive its node daemon.
            let raylet = ctx.raylet.clone();
            runtime.spawn(async move {
                raylet.closed().await;
                std::process::exit(0);
            });
        }
        if let Some(interval) = ctx.task_events.interval() {
            let ctx = ctx.clone();
            report_every(&runtime, interval, move || {
                let ctx = ctx.clone();
                async move { ctx.task_events.flush(&ctx.raylet).await }
            });
        }
        let metrics_ctx = ctx.clone();
        report_every(&runtime, ctx.user_metrics.interval(), move || {
            let ctx = metrics_ctx.clone();
            async move { ctx.user_metrics.flush(&ctx.raylet).await }
        });
        let actors = ActorSubmitter::start(ctx.clone());
        if opts.node_ip.is_some() {
            runtime.spawn(node_view::watch_node_deaths(ctx.clone(), tasks.clone(), actors.clone()));
        }
        Ok(Self {
            objects: ObjectFetcher::new(ctx.clone(), executor.clone(), tasks.clone()),
            submission: Submission::new(ctx.clone(), tasks, actors),
            gcs: GcsClient::new(ctx.clone()),
            output: OutputForwarder::new(ctx.clone()),
            ctx,
            executor,
            driver_task: TaskId::random(),
            put_index: AtomicU32::new(0),
            runtime: Some(runtime),
        })
    }

    /// Stops the runtime; the daemon sees this client disconnect.
    pub fn shutdown(&mut self) {
        self.ctx.table.notify_all();
        if let Some(rt) = self.runtime.take() {
            // What this process saw of its last tasks still reaches the GCS, and its
            // last metric values the node.
            let ctx = self.ctx.clone();
            rt.block_on(async {
                let reports =
                    async { tokio::join!(ctx.task_events.flush(&ctx.raylet), ctx.user_metrics.flush(&ctx.raylet)) };
                let _ = tokio::time::timeout(FINAL_REPORT_TIMEOUT, reports).await;
            });
            rt.shutdown_timeout(Duration::from_millis(200));
        }
        if rtd_common::rpc::is_unix_address(&self.ctx.address) {
            let _ = std::fs::remove_file(&self.ctx.address);
        }
    }

    // ------------------------------------------------------------------ identity

    pub fn address(&self) -> &str {
        &self.ctx.address
    }

    pub fn node_id(&self) -> NodeId {
        self.ctx.node_id
    }

    pub fn worker_id(&self) -> WorkerId {
        self.ctx.worker_id
    }

    pub fn session_dir(&self) -> &str {
        &self.ctx.session_dir
    }

    pub fn is_worker(&self) -> bool {
        self.ctx.is_worker
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

    /// A new id for an object this process creates itself (not a task's result).
    fn next_put_id(&self) -> ObjectId {
        let index = self.put_index.fetch_add(1, Ordering::Relaxed);
        ObjectId::for_put(&self.current_task(), index)
    }

    // ------------------------------------------------------------------ owned objects and refs

    /// Stores a serialized value as a new object this process owns; the refs pickled
    /// inside it (`contained`) stay alive while it does.
    pub fn put(
        &self,
        metadata: u32,
        payload: &[u8],
        buffers: &[&[u8]],
        contained: Vec<(ObjectId, String)>,
    ) -> Result<ObjectId, CoreError> {
        let id = self.next_put_id();
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

    pub fn remove_local_ref(&self, id: &ObjectId) {
        if let Some(freed) = self.ctx.table.remove_local_ref(id) {
            self.ctx.free(freed);
        }
    }

    pub fn mark_escaped(&self, id: &ObjectId) {
        self.ctx.table.mark_escaped(id);
    }

    /// Whether some borrower registration still waits for its owner's answer.
    pub fn has_unconfirmed_borrows(&self) -> bool {
        self.ctx.borrows.has_unconfirmed()
    }

    /// Waits until the owners of objects this process started borrowing have counted
    /// it (called after unpickling refs, so an owner never frees what we just got).
    pub fn flush_borrows(&self) {
        self.ctx.borrows.flush(BORROW_CONFIRM_LIMIT);
    }

    /// Every object this process knows, with its counts (debugging and tests).
    pub fn reference_counts(&self) -> Vec<(ObjectId, RefCounts)> {
        self.ctx.table.reference_counts()
    }

    // ------------------------------------------------------------------ fetching values

    /// Blocks until every object is ready (or `timeout`), then returns their values.
    pub fn get(
        &self,
        ids: &[ObjectId],
        timeout: Option<Duration>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Vec<FetchedValue>, CoreError> {
        self.objects.get(ids, timeout, interrupted)
    }

    /// Indices of ready objects in the order they became ready, at most `num_returns`.
    pub fn wait(
        &self,
        ids: &[ObjectId],
        num_returns: usize,
        timeout: Option<Duration>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Vec<usize>, CoreError> {
        self.objects.wait(ids, num_returns, timeout, interrupted)
    }

    /// Calls `callback` once the object is ready, on a blocking thread: it may wait
    /// for the GIL, which must not stall the runtime's threads.
    pub fn on_ready(&self, id: ObjectId, callback: impl FnOnce() + Send + 'static) {
        let ctx = self.ctx.clone();
        self.ctx.rt.spawn(async move {
            ctx.wait_value(id).await;
            let _ = tokio::task::spawn_blocking(callback).await;
        });
    }

    /// A task argument's value as Python needs it.
    pub fn arg_value(&self, arg: &TaskArg, interrupted: &mut dyn FnMut() -> bool) -> Result<FetchedValue, CoreError> {
        self.objects.arg_value(arg, interrupted)
    }

    // ------------------------------------------------------------------ tasks and actors

    pub fn submit_task(&self, req: TaskRequest) -> Vec<ObjectId> {
        self.submission.submit_task(req, self.job_id(), self.current_task_id())
    }

    /// Registers an actor with the GCS, which places it and runs its constructor
    /// (with `get_if_exists`, the info may be an existing actor's).
    pub fn create_actor(&self, req: TaskRequest, options: ActorOptions) -> Result<ActorInfo, CoreError> {
        self.submission.create_actor(req, options, self.job_id(), self.current_task_id())
    }

    /// Cancels the task that creates `id` (only the owner can).
    pub fn cancel(&self, id: &ObjectId, force: bool) -> Result<(), CoreError> {
        self.submission.cancel(id, force)
    }

    pub fn add_actor_handle(&self, actor_id: ActorId) {
        self.submission.add_actor_handle(actor_id);
    }

    pub fn remove_actor_handle(&self, actor_id: ActorId) {
        self.submission.remove_actor_handle(actor_id);
    }

    pub fn mark_actor_handle_escaped(&self, actor_id: ActorId) {
        self.submission.mark_actor_handle_escaped(actor_id);
    }

    // ------------------------------------------------------------------ generators

    /// Takes the next item of the generator task `task_id` submitted here, waiting up
    /// to `timeout` (None: as long as it takes). An item comes with a local reference
    /// counted by `count_ref` (the caller's `ObjectRef`) before the stream lets go.
    pub fn generator_next<R>(
        &self,
        task_id: TaskId,
        timeout: Option<Duration>,
        interrupted: &mut dyn FnMut() -> bool,
        count_ref: impl FnOnce(ObjectId) -> R,
    ) -> Result<(GeneratorNext, Option<R>), CoreError> {
        let mut next = Generators::next(&self.ctx, task_id, Some(Duration::ZERO), interrupted)?;
        if next == GeneratorNext::Pending && timeout != Some(Duration::ZERO) {
            // A task waiting for items gives its CPU back meanwhile, as a blocked `get`
            // does: the producer may need it.
            let blocked = self.ctx.is_worker && self.executor.current_task().is_some();
            if blocked {
                let _ = self.ctx.raylet.send(NotifyBlocked {});
            }
            let waited = Generators::next(&self.ctx, task_id, timeout, interrupted);
            if blocked {
                let _ = self.ctx.raylet.send(NotifyUnblocked {});
            }
            next = waited?;
        }
        let counted = match next {
            GeneratorNext::Item(id) => {
                let counted = count_ref(id);
                Generators::release_hold(&self.ctx, &id);
                Some(counted)
            }
            GeneratorNext::Failed(id) => Some(count_ref(id)),
            GeneratorNext::Pending | GeneratorNext::End => None,
        };
        Ok((next, counted))
    }

    /// Calls `callback` (on a blocking thread) once `generator_next` would not wait.
    pub fn on_generator_next(&self, task_id: TaskId, callback: impl FnOnce() + Send + 'static) {
        let ctx = self.ctx.clone();
        self.ctx.rt.spawn(async move {
            Generators::wait_next(ctx, task_id).await;
            let _ = tokio::task::spawn_blocking(callback).await;
        });
    }

    /// Whether the generator has handed out everything it will.
    pub fn generator_is_finished(&self, task_id: TaskId) -> bool {
        self.ctx.generators.is_finished(task_id)
    }

    /// The consumer dropped the generator: unconsumed items are released.
    pub fn release_generator(&self, task_id: TaskId) {
        Generators::release(&self.ctx, task_id);
    }

    /// Worker side: stores item `index` of the running generator task and reports it
    /// to the task's owner (see `task_execution`). Returns the item's id.
    pub fn report_generator_item(
        &self,
        task: &mut IncomingTask,
        index: u32,
        item: ResultParts<'_>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<ObjectId, CoreError> {
        task_execution::report_generator_item(&self.ctx, task, index, item, interrupted)
    }

    // ------------------------------------------------------------------ the GCS and nodes

    pub fn kv_put(&self, key: &str, value: Vec<u8>, interrupted: &mut dyn FnMut() -> bool) -> Result<(), CoreError> {
        self.gcs.kv_put(key, value, interrupted)
    }

    pub fn kv_get(&self, key: &str, interrupted: &mut dyn FnMut() -> bool) -> Result<Option<bytes::Bytes>, CoreError> {
        self.gcs.kv_get(key, interrupted)
    }

    /// Whether the GCS's KV holds `key` (its value is not sent).
    pub fn kv_exists(&self, key: &str, interrupted: &mut dyn FnMut() -> bool) -> Result<bool, CoreError> {
        self.gcs.kv_exists(key, interrupted)
    }

    pub fn get_named_actor(
        &self,
        namespace: &str,
        name: &str,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Option<ActorInfo>, CoreError> {
        self.gcs.get_named_actor(namespace, name, interrupted)
    }

    /// Ends an actor (`cause` empty: killed with `rtd.kill()`).
    pub fn kill_actor(
        &self,
        actor_id: ActorId,
        no_restart: bool,
        cause: &str,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<(), CoreError> {
        self.gcs.kill_actor(actor_id, no_restart, cause, interrupted)
    }

    pub fn list_actors(&self, interrupted: &mut dyn FnMut() -> bool) -> Result<Vec<ActorInfo>, CoreError> {
        self.gcs.list_actors(interrupted)
    }

    /// Records a value of a user metric (`rtd.util.metrics`) for `tags`; it reaches the
    /// node's `/metrics` with the next report.
    pub fn record_metric(&self, metric: &UserMetric, mut tags: Vec<(String, String)>, value: f64) {
        tags.sort();
        self.ctx.user_metrics.record(metric, tags, value);
    }

    /// The cluster's task attempts that ran, as a JSON list of Chrome-trace events. This
    /// process's own recent events are sent first, so the trace includes them.
    pub fn timeline(&self, interrupted: &mut dyn FnMut() -> bool) -> Result<String, CoreError> {
        self.ctx.block_on(self.ctx.task_events.flush(&self.ctx.raylet), interrupted)?;
        self.gcs.timeline(interrupted)
    }

    pub fn create_placement_group(
        &self,
        req: CreatePlacementGroup,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<PlacementGroupInfo, CoreError> {
        self.gcs.create_placement_group(req, interrupted)
    }

    pub fn remove_placement_group(
        &self,
        pg_id: PlacementGroupId,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<(), CoreError> {
        self.gcs.remove_placement_group(pg_id, interrupted)
    }

    /// The group's info once it is created or removed; None if `timeout` passes first
    /// (no timeout: wait as long as it takes).
    pub fn wait_placement_group(
        &self,
        pg_id: PlacementGroupId,
        timeout: Option<Duration>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Option<PlacementGroupInfo>, CoreError> {
        self.gcs.wait_placement_group(pg_id, timeout, interrupted)
    }

    /// `PlacementGroup.ready()`: a new object this process owns that takes the value
    /// `payload` (the pickled group) once the GCS reports the group created. No task
    /// runs: the object waits on the same GCS answer as `wait_placement_group`, so it
    /// costs what `wait()` costs and `get`/`wait` on it behave as on any pending object.
    /// A removed group's object (asked for after its removal, or before it was created)
    /// is `TaskUnschedulableError`, as a task in that group would be.
    pub fn placement_group_ready(&self, pg_id: PlacementGroupId, payload: &[u8]) -> Result<ObjectId, CoreError> {
        let id = self.next_put_id();
        let created = self.ctx.store_value(id, object_kind::VALUE, payload, &[])?;
        self.ctx.table.add_owned_pending(id, &self.ctx.address);
        let ctx = self.ctx.clone();
        self.ctx.rt.spawn(async move {
            let value = placement_group_outcome(ctx.clone(), pg_id, created).await;
            ctx.store_result(id, value, Vec::new());
        });
        Ok(id)
    }

    /// The group with this id, or without one the live group named `name`.
    pub fn get_placement_group(
        &self,
        pg_id: Option<PlacementGroupId>,
        name: &str,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Option<PlacementGroupInfo>, CoreError> {
        self.gcs.get_placement_group(pg_id, name, interrupted)
    }

    pub fn list_placement_groups(
        &self,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Vec<PlacementGroupInfo>, CoreError> {
        self.gcs.list_placement_groups(interrupted)
    }

    pub fn nodes(&self, interrupted: &mut dyn FnMut() -> bool) -> Result<Vec<NodeInfo>, CoreError> {
        node_view::nodes(&self.ctx, interrupted)
    }

    /// Has every node set the job's environment up now (`eager_install`).
    pub fn prepare_runtime_env(
        &self,
        runtime_env: String,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<(), CoreError> {
        node_view::prepare_runtime_env(&self.ctx, runtime_env, interrupted)
    }

    // ------------------------------------------------------------------ worker side

    /// How to interrupt the running task (a Python `KeyboardInterrupt`).
    pub fn set_interrupt(&self, interrupt: fn()) {
        self.executor.set_interrupt(interrupt);
    }

    /// The next pushed task, if one arrives within `timeout`.
    pub fn next_task(&self, timeout: Duration) -> Option<IncomingTask> {
        let task = self.executor.next_task(timeout)?;
        self.ctx.task_events.running(self.ctx.node_id, self.ctx.worker_id, &task.spec);
        Some(task)
    }

    /// Stores each result and replies to the submitter (see `task_execution`); `error`
    /// (Ray's error type name and text) when the task failed.
    pub fn finish_task(
        &self,
        task: IncomingTask,
        results: Vec<ResultParts<'_>>,
        app_error: bool,
        retryable: bool,
        error: Option<(String, String)>,
    ) -> Result<(), CoreError> {
        self.ctx.task_events.ended(&task.spec, error);
        task_execution::finish_task(&self.ctx, &self.executor, &self.output, task, results, app_error, retryable)
    }

    // ------------------------------------------------------------------ output

    /// Driver side: where text that workers forward goes. Set once.
    pub fn set_output_sink(&self, sink: OutputSink) -> Result<(), CoreError> {
        self.ctx.output_sink.set(sink).map_err(|_| CoreError::Invalid("an output handler is already set".into()))
    }

    /// Worker side: sends printed text (whole prefixed lines) to the job's driver.
    /// False if the driver cannot be reached; the caller then writes it locally.
    pub fn forward_output(&self, driver: &str, text: String, stderr: bool) -> bool {
        self.output.forward(driver, text, stderr)
    }
}

/// Runs `report` every `interval` on `runtime` until the process ends (what this
/// process buffers for the GCS and its node: task events, user metrics).
fn report_every<F, R>(runtime: &tokio::runtime::Runtime, interval: Duration, report: F)
where
    F: Fn() -> R + Send + 'static,
    R: std::future::Future<Output = ()> + Send,
{
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            report().await;
        }
    });
}

impl Drop for CoreWorker {
    fn drop(&mut self) {
        self.shutdown();
    }
}
