//! Worker leases: how work gets a process and resources on this node.
//!
//! A submitter asks for a lease for one task's resource shape. The raylet grants it
//! when the resources are free and a worker is idle: the lease reserves the resources
//! and hands the worker's socket address to the submitter, which then pushes tasks to
//! the worker directly until it returns the lease. Requests wait in arrival order, but
//! one that cannot be granted does not block the ones behind it (different shapes),
//! and a request that no node could ever satisfy is answered `Infeasible` at once.
//!
//! A leased worker that blocks in `get` gives its CPU back until it resumes, so parents
//! waiting on children cannot starve the node; if no worker is idle for the children,
//! more are started.
//!
//! Workers are pooled by runtime environment (Ray's worker pool keyed by the env's
//! hash): a request names its environment, and only a worker started in that
//! environment is granted to it. A request whose environment has no idle worker gets
//! one started: the environment is set up first ([`rtd_runtime_env::setup`]: packages
//! from the GCS, a pip venv), then a worker is spawned in it. When the setup fails, the
//! requests waiting for that environment are refused with the setup's message
//! (`RUNTIME_ENV_SETUP_FAILED`), and nothing else on the node is affected.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rtd_common::bundle::{self, BundleResource};
use rtd_common::config::RuntimeConfig;
use rtd_common::proto::{
    request_lease_reply::Result as LeaseResult, ErrorCode, ErrorReply, Infeasible, LeaseGranted, RequestLeaseReply,
    Spillback,
};
use rtd_common::rpc::error_reply;
use rtd_common::{NodeId, PlacementGroupId, ResourceSet, WorkerId};
use rtd_runtime_env::{EnvContext, PackageSource, RuntimeEnvSpec};
use tokio::sync::oneshot;

use crate::policy::{Decision, NodeView, SchedulingPolicy, Strategy};
use crate::resources::{Allocation, GpuPool, NodeResources};
use crate::worker_pool::{kill, terminate, StartedWorker, WorkerCommand, WorkerStarter};

/// Identifies one client connection of the raylet.
pub type ConnId = u64;

/// The owner of leases the GCS takes for actors: never a client connection, so they
/// are not revoked when a connection closes; the GCS ends them itself.
pub const GCS_CONN: ConnId = 0;

/// Told which dedicated (actor) lease was lost when its worker process exits.
pub type LeaseLostHook = Box<dyn Fn(u64) + Send + Sync>;

struct Worker {
    pid: u32,
    /// Socket address, known once the worker has registered.
    address: Option<String>,
    lease: Option<u64>,
    blocked: bool,
    /// Killed, exit not yet seen: never handed out again.
    doomed: bool,
    /// The runtime environment it runs in (its hash; empty: the node's plain one).
    env: String,
}

struct Lease {
    worker: WorkerId,
    allocation: Allocation,
    owner: ConnId,
    dedicated: bool,
    /// GPUs this lease was given out of a placement-group bundle's reservation.
    bundle_gpus: Option<BundleGpus>,
}

struct BundleGpus {
    bundle: (PlacementGroupId, u32),
    ids: Vec<u32>,
    amount: i64,
}

struct PendingLease {
    resources: ResourceSet,
    dedicated: bool,
    preferred: Option<NodeId>,
    strategy: Strategy,
    /// Decide here: this request was already forwarded by another raylet.
    no_spillback: bool,
    env: Option<Arc<RequestedEnv>>,
    owner: ConnId,
    reply: oneshot::Sender<LeaseAnswer>,
}

/// A runtime environment a lease request asks for.
#[derive(Debug)]
pub struct RequestedEnv {
    /// [`RuntimeEnvSpec::hash`]: workers are pooled by it.
    pub hash: String,
    pub spec: RuntimeEnvSpec,
}

impl RequestedEnv {
    /// The environment of a request's canonical JSON: None for none (empty), an error
    /// message for a spec that does not parse.
    pub fn parse(json: &str) -> Result<Option<Arc<RequestedEnv>>, String> {
        if json.is_empty() {
            return Ok(None);
        }
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("runtime_env is not JSON: {e}"))?;
        let spec = RuntimeEnvSpec::from_json(&value).map_err(|e| e.to_string())?;
        if spec.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(RequestedEnv { hash: spec.hash(), spec })))
    }
}

/// The package source of a raylet that was given none (unit tests): envs without
/// packages still work.
struct NoPackages;

impl PackageSource for NoPackages {
    fn fetch<'a>(
        &'a self,
        uri: &'a str,
    ) -> rtd_runtime_env::setup::BoxFuture<'a, Result<Option<bytes::Bytes>, String>> {
        Box::pin(async move { Err(format!("this node has no GCS connection to fetch {uri} from")) })
    }
}

/// What a lease request is answered: the raylet's decision, or why there is none.
pub type LeaseAnswer = Result<RequestLeaseReply, ErrorReply>;

fn decided(result: LeaseResult) -> LeaseAnswer {
    Ok(RequestLeaseReply { result: Some(result) })
}

fn refused(code: ErrorCode, message: impl Into<String>) -> LeaseAnswer {
    Err(error_reply(code, message))
}

/// Another node as this raylet last heard of it (from the GCS).
#[derive(Clone, Debug)]
pub struct RemoteNode {
    pub view: NodeView,
    pub raylet_address: String,
}

/// What a lease request asks for, besides resources.
#[derive(Clone, Debug)]
pub struct LeaseRequest {
    pub resources: ResourceSet,
    pub strategy: Strategy,
    pub no_spillback: bool,
    /// For an actor: the worker stays with it (not returned to the pool).
    pub dedicated: bool,
    /// Locality: the node holding the task's data, preferred when it has room.
    pub preferred: Option<NodeId>,
    /// The runtime environment its worker must run in.
    pub env: Option<Arc<RequestedEnv>>,
}

/// A snapshot of the raylet's queue and worker pool (what its metrics show).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Lease requests waiting here for resources or a worker.
    pub pending_leases: usize,
    pub granted_leases: usize,
    pub idle_workers: usize,
    /// Worker processes started that have not registered yet.
    pub starting_workers: usize,
    /// Workers leased to run tasks, and workers dedicated to actors.
    pub task_workers: usize,
    pub actor_workers: usize,
}

/// A placement-group bundle reserved on this node (two-phase: prepared, then
/// committed as resources of its own).
struct Bundle {
    reserved: Allocation,
    /// The node resources the committed bundle adds (empty while only prepared).
    group_resources: ResourceSet,
    /// The reserved GPUs, shared out by id to work in the bundle (`GPU_group_*`).
    gpus: GpuPool,
}

struct State {
    resources: NodeResources,
    bundles: HashMap<(PlacementGroupId, u32), Bundle>,
    /// Placement groups that were removed: work asking for them can never run.
    removed_groups: std::collections::HashSet<PlacementGroupId>,
    workers: HashMap<WorkerId, Worker>,
    idle: VecDeque<WorkerId>,
    starting: usize,
    /// Workers of each runtime environment being set up or started (by env hash).
    env_starting: HashMap<String, usize>,
    leases: HashMap<u64, Lease>,
    pending: VecDeque<PendingLease>,
    next_lease: u64,
    /// Workers in a row that exited before registering (a broken interpreter or
    /// environment); past a few, waiting requests fail instead of retrying forever.
    failed_starts: u32,
    shutting_down: bool,
}

const MAX_FAILED_STARTS: u32 = 3;

/// How long an idle worker asked to exit has to send what it buffered.
const IDLE_EXIT_GRACE: Duration = Duration::from_secs(3);

impl State {
    /// Workers that run tasks (idle, starting or leased): not those dedicated to
    /// actors, nor those being stopped.
    fn task_workers(&self) -> usize {
        let dedicated = |w: &Worker| w.lease.and_then(|l| self.leases.get(&l)).is_some_and(|l| l.dedicated);
        self.workers.values().filter(|w| !w.doomed && !dedicated(w)).count()
    }

    /// Returns what an ended lease held: node resources and any bundle GPUs.
    fn release_lease(&mut self, lease: &Lease) {
        self.resources.release(&lease.allocation);
        if let Some(held) = &lease.bundle_gpus {
            if let Some(bundle) = self.bundles.get_mut(&held.bundle) {
                bundle.gpus.give_back(&held.ids, held.amount);
            }
        }
    }

    /// For a request that asks for GPUs of a placement-group bundle, the bundle on this
    /// node and GPU ids it can give now: `Some(None)` when it cannot, `None` when the
    /// request wants no bundle GPUs.
    fn choose_bundle_gpus(&self, request: &ResourceSet) -> Option<Option<BundleGpus>> {
        let (group, index, amount) = bundle_gpu_request(request)?;
        let chosen = self
            .bundles
            .iter()
            .filter(|((g, i), b)| *g == group && index.is_none_or(|index| *i == index) && !b.group_resources.is_empty())
            .find_map(|(key, b)| b.gpus.choose(amount).map(|ids| BundleGpus { bundle: *key, ids, amount }));
        Some(chosen)
    }

    /// The first idle worker of the environment `env` (a hash; empty: the plain one).
    fn take_idle(&mut self, env: &str) -> Option<WorkerId> {
        let workers = &self.workers;
        let at = self.idle.iter().position(|w| workers.get(w).is_some_and(|w| w.env == env))?;
        self.idle.remove(at)
    }

    /// Kills a worker; it is out of the pool at once, before its exit is seen.
    fn stop_worker(&mut self, worker_id: &WorkerId) {
        if let Some(worker) = self.workers.get_mut(worker_id) {
            worker.doomed = true;
            kill(worker.pid);
        }
        self.idle.retain(|w| w != worker_id);
    }
}

/// The GPUs a request asks of a placement group: its group, the bundle index (None:
/// any bundle of the group) and the amount, from `GPU_group_<i>_<pg>` (preferred) or
/// `GPU_group_<pg>`.
fn bundle_gpu_request(request: &ResourceSet) -> Option<(PlacementGroupId, Option<u32>, i64)> {
    let mut any_bundle = None;
    for (name, amount) in request.iter() {
        let Some(asked) = BundleResource::parse(name).filter(|b| b.resource == rtd_common::resources::GPU) else {
            continue;
        };
        match asked.index {
            Some(_) => return Some((asked.group, asked.index, amount)),
            None => any_bundle = Some((asked.group, None, amount)),
        }
    }
    any_bundle
}

pub struct Raylet {
    node_id: NodeId,
    state: Mutex<State>,
    /// The other nodes of the cluster (empty on a lone node).
    cluster: Mutex<Vec<RemoteNode>>,
    policy: Mutex<SchedulingPolicy>,
    lease_lost: std::sync::OnceLock<LeaseLostHook>,
    starter: WorkerStarter,
    /// Idle workers kept alive; more are stopped when their lease returns.
    pool_size: usize,
    /// Where runtime environments' packages come from (the GCS KV).
    packages: std::sync::OnceLock<Arc<dyn PackageSource>>,
}

impl Raylet {
    pub fn new(node_id: NodeId, total: ResourceSet, command: WorkerCommand) -> Arc<Self> {
        let pool_size = (total.get(rtd_common::resources::CPU) / rtd_common::resources::UNIT).max(1) as usize;
        Arc::new(Self {
            node_id,
            cluster: Mutex::new(Vec::new()),
            policy: Mutex::new(SchedulingPolicy::new(u64::from_le_bytes(node_id.0[..8].try_into().unwrap_or([7; 8])))),
            state: Mutex::new(State {
                resources: NodeResources::new(total),
                bundles: HashMap::new(),
                removed_groups: Default::default(),
                workers: HashMap::new(),
                idle: VecDeque::new(),
                starting: 0,
                env_starting: HashMap::new(),
                leases: HashMap::new(),
                pending: VecDeque::new(),
                next_lease: 1,
                failed_starts: 0,
                shutting_down: false,
            }),
            starter: WorkerStarter::new(command),
            pool_size,
            lease_lost: std::sync::OnceLock::new(),
            packages: std::sync::OnceLock::new(),
        })
    }

    /// Sets where runtime environments' packages are fetched from (the daemon's GCS).
    pub fn set_package_source(&self, source: Arc<dyn PackageSource>) {
        let _ = self.packages.set(source);
    }

    /// Where this node keeps runtime environments: `<session dir>/runtime_resources`, as
    /// Ray does. Per node, so nodes that share a temp dir (a test cluster) still fetch
    /// their packages through the GCS; reused by every task, actor and job of the node.
    fn runtime_resources(&self) -> PathBuf {
        let session = &self.starter.command().session_dir;
        let base = if session.is_empty() { std::env::temp_dir() } else { PathBuf::from(session) };
        base.join("runtime_resources")
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough state to keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the pool's workers ahead of demand, as Ray does.
    pub fn prestart_workers(self: &Arc<Self>) {
        for _ in 0..self.pool_size {
            self.start_worker();
        }
    }

    pub fn total(&self) -> ResourceSet {
        self.lock().resources.total().clone()
    }

    pub fn available(&self) -> ResourceSet {
        self.lock().resources.available()
    }

    /// Total and free amounts of the resources named in `wanted` only.
    pub fn view_of(&self, wanted: &ResourceSet) -> (ResourceSet, ResourceSet) {
        self.lock().resources.view_of(wanted)
    }

    fn start_worker(self: &Arc<Self>) {
        self.start_worker_in(None);
    }

    /// Starts a worker in the plain environment, or in `env` (its hash and how to run
    /// in it); false if none could be started.
    fn start_worker_in(self: &Arc<Self>, env: Option<(&str, &EnvContext)>) -> bool {
        // Started under the lock, so that `shutdown` either stops it or it never starts.
        let started = {
            let mut st = self.lock();
            if st.shutting_down {
                return false;
            }
            let started = match env {
                None => self.starter.start(),
                Some((_, context)) => self.starter.start_in(context),
            };
            let started = match started {
                Ok(started) => started,
                Err(e) => {
                    tracing::error!("cannot start a worker with {}: {e}", self.starter.command().python);
                    return false;
                }
            };
            st.starting += 1;
            let env = env.map(|(hash, _)| hash.to_string()).unwrap_or_default();
            st.workers.insert(
                started.worker_id,
                Worker { pid: started.pid, address: None, lease: None, blocked: false, doomed: false, env },
            );
            started
        };
        let StartedWorker { worker_id, pid, exit } = started;
        let raylet = self.clone();
        tokio::spawn(async move {
            exit.wait().await;
            tracing::debug!("worker {worker_id} (pid {pid}) exited");
            raylet.on_worker_exit(worker_id);
        });
        true
    }

    /// Sets `env` up (in the background) and starts a worker in it; if the setup fails,
    /// the requests waiting for that environment are refused with its message.
    fn start_env_worker(self: &Arc<Self>, env: Arc<RequestedEnv>) {
        let raylet = self.clone();
        tokio::spawn(async move {
            let result = raylet.set_up(&env).await;
            let started = match &result {
                Ok(context) => raylet.start_worker_in(Some((&env.hash, context))),
                Err(_) => false,
            };
            if started {
                return;
            }
            let why = result.err().unwrap_or_else(|| "the worker process could not be started".into());
            raylet.refuse_env(&env.hash, &why);
        });
    }

    /// Sets `env` up on this node: its packages unpacked, its venv built (each once;
    /// later calls find them in place).
    async fn set_up(&self, env: &RequestedEnv) -> Result<EnvContext, String> {
        let packages: Arc<dyn PackageSource> = match self.packages.get() {
            Some(packages) => packages.clone(),
            None => Arc::new(NoPackages),
        };
        let python = self.starter.command().python.clone();
        rtd_runtime_env::setup(&env.spec, packages.as_ref(), &self.runtime_resources(), &python)
            .await
            .map_err(|e| e.to_string())
    }

    /// `eager_install`: sets the environment of `runtime_env` (canonical JSON) up in
    /// the background, before any lease asks for it. A failure is only logged: the
    /// first lease in that environment tries again and reports it.
    pub fn prepare_env(self: &Arc<Self>, runtime_env: &str) {
        let env = match RequestedEnv::parse(runtime_env) {
            Ok(Some(env)) => env,
            Ok(None) => return,
            Err(why) => {
                tracing::warn!("runtime_env to prepare is invalid: {why}");
                return;
            }
        };
        let raylet = self.clone();
        tokio::spawn(async move {
            if let Err(why) = raylet.set_up(&env).await {
                tracing::warn!("eager runtime_env setup failed (the first task in it will retry): {why}");
            }
        });
    }

    /// The environment `hash` cannot run workers: the requests waiting for it are refused
    /// with `why`; a later request tries again.
    fn refuse_env(self: &Arc<Self>, hash: &str, why: &str) {
        tracing::warn!("runtime_env setup failed: {why}");
        {
            let mut st = self.lock();
            st.env_starting.remove(hash);
            let (failed, kept): (VecDeque<PendingLease>, VecDeque<PendingLease>) =
                st.pending.drain(..).partition(|p| p.env.as_ref().is_some_and(|e| e.hash == hash));
            st.pending = kept;
            for req in failed {
                let _ = req.reply.send(refused(ErrorCode::RuntimeEnvSetupFailed, why));
            }
        }
        self.schedule();
    }

    /// A worker of environment `env` registered or exited: one fewer is starting.
    fn env_worker_started(st: &mut State, env: &str) {
        if env.is_empty() {
            return;
        }
        if let Some(n) = st.env_starting.get_mut(env) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.env_starting.remove(env);
            }
        }
    }

    /// A started worker connected and is ready for leases.
    pub fn register_worker(self: &Arc<Self>, worker_id: WorkerId, address: String) -> bool {
        let none_starting = {
            let mut st = self.lock();
            let Some(worker) = st.workers.get_mut(&worker_id) else {
                return false;
            };
            if worker.address.is_some() {
                return false;
            }
            worker.address = Some(address);
            let env = worker.env.clone();
            Self::env_worker_started(&mut st, &env);
            st.starting = st.starting.saturating_sub(1);
            st.failed_starts = 0;
            st.idle.push_back(worker_id);
            st.starting == 0
        };
        if none_starting {
            // The worker template imports once the pool is up, so that it does not
            // compete with the node's start for the CPU; workers needed later (actors,
            // refills) are forked from it. A template that failed is replaced here.
            self.starter.prepare();
        }
        self.schedule();
        true
    }

    /// Sets who hears about leases lost to a worker's exit (the GCS, for actors).
    pub fn set_lease_lost_hook(&self, hook: LeaseLostHook) {
        let _ = self.lease_lost.set(hook);
    }

    fn on_worker_exit(self: &Arc<Self>, worker_id: WorkerId) {
        let mut lost = None;
        let mut broken_env = None;
        {
            let mut st = self.lock();
            let Some(worker) = st.workers.remove(&worker_id) else { return };
            let started = worker.address.is_some();
            if !started && worker.env.is_empty() {
                st.starting = st.starting.saturating_sub(1);
                st.failed_starts += 1;
            } else if !started {
                // Its environment is broken (its interpreter cannot import rtd, a bad
                // variable): starting more would fail the same way.
                st.starting = st.starting.saturating_sub(1);
                Self::env_worker_started(&mut st, &worker.env);
                broken_env = Some((worker.env.clone(), worker.pid));
            }
            st.idle.retain(|w| *w != worker_id);
            if let Some(lease_id) = worker.lease {
                if let Some(lease) = st.leases.remove(&lease_id) {
                    if worker.blocked {
                        st.resources.reacquire_cpu(&lease.allocation);
                    }
                    st.release_lease(&lease);
                    if lease.dedicated {
                        lost = Some(lease_id);
                    }
                }
            }
        }
        if let (Some(lease_id), Some(hook)) = (lost, self.lease_lost.get()) {
            hook(lease_id);
        }
        if let Some((hash, pid)) = broken_env {
            let why = format!(
                "a worker started in the runtime_env (pid {pid}) exited before it could serve; \
                 its error is in the node daemon's output"
            );
            self.refuse_env(&hash, &why);
            return;
        }
        // A worker that ran (a killed task, a dead actor) and left the task pool short is
        // replaced there, so the next task finds one warm.
        self.schedule();
    }

    /// Shrinks a lease to `keep` while its worker stays leased: an actor needs its
    /// placement resources (by default 1 CPU) to be placed, but by default holds
    /// nothing while it runs.
    pub fn shrink_lease(self: &Arc<Self>, lease_id: u64, keep: &ResourceSet) {
        {
            let mut st = self.lock();
            let st = &mut *st;
            let Some(lease) = st.leases.get_mut(&lease_id) else { return };
            let blocked = st.workers.get(&lease.worker).map(|w| w.blocked).unwrap_or(false);
            if blocked {
                st.resources.reacquire_cpu(&lease.allocation);
            }
            // GPU ids stay with the actor when it keeps its GPUs.
            let keep_gpus = keep.get(rtd_common::resources::GPU) > 0;
            let mut surplus = lease.allocation.resources.clone();
            surplus.subtract(keep);
            let gpu_ids = if keep_gpus { Vec::new() } else { std::mem::take(&mut lease.allocation.gpu_ids) };
            st.resources.release(&Allocation { resources: surplus.clone(), gpu_ids });
            lease.allocation.resources.subtract(&surplus);
        }
        self.schedule();
    }

    /// Queues a lease request; the receiver yields the reply when it is decided.
    pub fn request_lease(self: &Arc<Self>, owner: ConnId, request: LeaseRequest) -> oneshot::Receiver<LeaseAnswer> {
        let (reply, rx) = oneshot::channel();
        let pending = PendingLease {
            resources: request.resources,
            dedicated: request.dedicated,
            preferred: request.preferred,
            strategy: request.strategy,
            no_spillback: request.no_spillback,
            env: request.env,
            owner,
            reply,
        };
        {
            let mut st = self.lock();
            if st.shutting_down {
                drop(st);
                let answer = self.draining_reply(&pending);
                let _ = pending.reply.send(answer);
                return rx;
            }
            st.pending.push_back(pending);
        }
        self.schedule();
        rx
    }

    /// The answer of a node that is shutting down: a spillback to another node that can
    /// run the request (even one asked not to spill back: this node never will), so the
    /// requester goes on elsewhere instead of failing.
    fn draining_reply(&self, req: &PendingLease) -> LeaseAnswer {
        let cluster = self.cluster();
        let views: Vec<NodeView> = cluster.iter().map(|n| n.view.clone()).collect();
        let decision = self.policy.lock().unwrap_or_else(|p| p.into_inner()).pick_node(
            &views,
            &req.resources,
            &req.strategy,
            self.node_id,
        );
        let target = match decision {
            Decision::Node(n) => cluster.iter().find(|c| c.view.node_id == n),
            // Busy everywhere: queue where it fits once resources free up.
            Decision::Wait => cluster.iter().find(|c| c.view.alive && req.resources.fits_in(&c.view.total)),
            Decision::Infeasible => None,
        };
        match (target, &req.strategy) {
            (Some(node), _) => decided(LeaseResult::Spillback(Spillback {
                node_id: node.view.node_id.to_vec().into(),
                raylet_address: node.raylet_address.clone(),
            })),
            (None, Strategy::NodeAffinity { node_id, soft: false }) => refused(
                ErrorCode::Unschedulable,
                format!("node {node_id} named by a hard NodeAffinitySchedulingStrategy is shutting down"),
            ),
            (None, _) => {
                refused(ErrorCode::Internal, "the node is shutting down and no other node can run the request now")
            }
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Replaces the view of the other nodes (from a GCS heartbeat reply).
    pub fn set_cluster(self: &Arc<Self>, nodes: Vec<RemoteNode>) {
        *self.cluster.lock().unwrap_or_else(|p| p.into_inner()) =
            nodes.into_iter().filter(|n| n.view.node_id != self.node_id).collect();
        self.schedule();
    }

    pub fn cluster(&self) -> Vec<RemoteNode> {
        self.cluster.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// This node as its own accounting shows it.
    fn own_view(&self, st: &State) -> NodeView {
        NodeView {
            node_id: self.node_id,
            total: st.resources.total().clone(),
            available: st.resources.available(),
            alive: true,
        }
    }

    /// The cluster as this raylet's scheduling decisions see it: this node first, then
    /// the others as last heard of from the GCS.
    pub fn cluster_view(&self) -> Vec<NodeView> {
        // Locked in the order `route` locks them.
        let st = self.lock();
        let mut views = vec![self.own_view(&st)];
        views.extend(self.cluster.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|n| n.view.clone()));
        views
    }

    /// Where a request that this node should not (or cannot) run goes: `Some(Ok(node))`
    /// to spill back, `Some(Err(why))` if no node ever can, `None` to decide locally.
    fn route(&self, st: &State, req: &PendingLease) -> Option<Result<RemoteNode, String>> {
        let cluster = self.cluster.lock().unwrap_or_else(|p| p.into_inner());
        let lone = cluster.is_empty();
        if req.no_spillback || (lone && req.strategy == Strategy::Default) {
            return None;
        }
        // Locality: run where the task's data is, if that node has room now.
        if let (Strategy::Default, Some(preferred)) = (&req.strategy, req.preferred) {
            if preferred == self.node_id && req.resources.fits_in(&st.resources.available()) {
                return None;
            }
            if let Some(node) = cluster
                .iter()
                .find(|c| c.view.node_id == preferred && c.view.alive && req.resources.fits_in(&c.view.available))
            {
                return Some(Ok(node.clone()));
            }
        }
        let mut views = vec![self.own_view(st)];
        views.extend(cluster.iter().map(|n| n.view.clone()));
        let decision = self.policy.lock().unwrap_or_else(|p| p.into_inner()).pick_node(
            &views,
            &req.resources,
            &req.strategy,
            self.node_id,
        );
        // Hard affinity to another node that could run it: queue there, even if busy.
        if let (Strategy::NodeAffinity { node_id, soft: false }, Decision::Wait) = (&req.strategy, decision) {
            return cluster
                .iter()
                .find(|c| c.view.node_id == *node_id && req.resources.fits_in(&c.view.total))
                .cloned()
                .map(Ok);
        }
        match decision {
            Decision::Node(n) if n != self.node_id => cluster.iter().find(|c| c.view.node_id == n).cloned().map(Ok),
            Decision::Infeasible => match req.strategy {
                Strategy::NodeAffinity { node_id, soft: false } => Some(Err(format!(
                    "node {node_id} named by a hard NodeAffinitySchedulingStrategy is not alive or cannot fit {}",
                    req.resources
                ))),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn return_lease(self: &Arc<Self>, lease_id: u64) {
        {
            let mut st = self.lock();
            let Some(lease) = st.leases.remove(&lease_id) else { return };
            let blocked = st.workers.get(&lease.worker).map(|w| w.blocked).unwrap_or(false);
            if blocked {
                st.resources.reacquire_cpu(&lease.allocation);
            }
            st.release_lease(&lease);
            if let Some(worker) = st.workers.get_mut(&lease.worker) {
                worker.lease = None;
                worker.blocked = false;
                if !worker.doomed {
                    // Most recently used first: its caches (functions, imports) are warm.
                    st.idle.push_front(lease.worker);
                }
            }
            // Workers started beyond the pool for blocked parents are not kept: stop
            // the least recently used idle one once nothing waits for a worker.
            if st.task_workers() > self.pool_size && st.pending.is_empty() {
                if let Some(surplus) = st.idle.back().copied() {
                    self.stop_idle_worker(&mut st, surplus);
                }
            }
        }
        self.schedule();
    }

    /// Stops an idle worker gently: it has no task to lose but may still hold task
    /// events and metrics to send, so it is asked to exit, and killed only if it has
    /// not after `IDLE_EXIT_GRACE`.
    fn stop_idle_worker(self: &Arc<Self>, st: &mut State, worker_id: WorkerId) {
        let Some(worker) = st.workers.get_mut(&worker_id) else { return };
        worker.doomed = true;
        let pid = worker.pid;
        st.idle.retain(|w| *w != worker_id);
        terminate(pid);
        let raylet = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(IDLE_EXIT_GRACE).await;
            let still_there = raylet.upgrade().is_some_and(|r| r.lock().workers.contains_key(&worker_id));
            if still_there {
                kill(pid);
            }
        });
    }

    /// Force-cancel: the process dies and its exit frees the lease.
    pub fn kill_leased_worker(&self, lease_id: u64) {
        let mut st = self.lock();
        if let Some(worker) = st.leases.get(&lease_id).map(|l| l.worker) {
            st.stop_worker(&worker);
        }
    }

    pub fn worker_blocked(self: &Arc<Self>, worker_id: &WorkerId) {
        {
            let mut st = self.lock();
            let st = &mut *st;
            let Some(worker) = st.workers.get_mut(worker_id) else { return };
            let Some(lease) = worker.lease.and_then(|l| st.leases.get(&l)) else { return };
            if !worker.blocked {
                worker.blocked = true;
                st.resources.release_cpu(&lease.allocation);
            }
        }
        self.schedule();
    }

    pub fn worker_unblocked(&self, worker_id: &WorkerId) {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(worker) = st.workers.get_mut(worker_id) else { return };
        let Some(lease) = worker.lease.and_then(|l| st.leases.get(&l)) else { return };
        if worker.blocked {
            worker.blocked = false;
            st.resources.reacquire_cpu(&lease.allocation);
        }
    }

    /// A client connection closed. Leases it held are revoked: their workers may be
    /// running its tasks, which nobody will collect, so they are stopped.
    pub fn client_disconnected(self: &Arc<Self>, conn: ConnId, worker_id: Option<WorkerId>) {
        {
            let mut st = self.lock();
            st.pending.retain(|p| p.owner != conn);
            let owned: Vec<WorkerId> = st.leases.values().filter(|l| l.owner == conn).map(|l| l.worker).collect();
            for worker in owned.iter().chain(worker_id.as_ref()) {
                st.stop_worker(worker);
            }
        }
        self.schedule();
    }

    /// Grants what can be granted, answers infeasible requests, and starts workers
    /// for requests that have resources but no idle worker and to keep the task pool
    /// at its size.
    fn schedule(self: &Arc<Self>) {
        let to_start;
        let mut envs_to_start: Vec<Arc<RequestedEnv>> = Vec::new();
        {
            let mut st = self.lock();
            if st.shutting_down {
                return;
            }
            if st.failed_starts >= MAX_FAILED_STARTS && st.idle.is_empty() {
                st.failed_starts = 0;
                let message = format!(
                    "worker processes exit during start-up: `{} -m rtd._private.worker` failed \
                     {MAX_FAILED_STARTS} times in a row (is rtd installed for that interpreter? \
                     set it with --python or RTD_PYTHON)",
                    self.starter.command().python
                );
                for req in st.pending.drain(..) {
                    let _ = req.reply.send(refused(ErrorCode::WorkerDied, message.clone()));
                }
                return;
            }
            let mut waiting_for_worker = 0usize;
            let mut waiting_per_env: HashMap<String, (usize, Arc<RequestedEnv>)> = HashMap::new();
            let mut i = 0;
            while i < st.pending.len() {
                if st.pending[i].reply.is_closed() {
                    st.pending.remove(i);
                    continue;
                }
                // A bundle's resources appear when its group is committed: wait for them,
                // unless the group was removed.
                let groups: Vec<PlacementGroupId> = st.pending[i]
                    .resources
                    .iter()
                    .filter_map(|(name, _)| BundleResource::parse(name))
                    .map(|b| b.group)
                    .collect();
                let waits_for_group = !groups.is_empty();
                if let Some(group) = groups.iter().find(|g| st.removed_groups.contains(g)) {
                    if let Some(req) = st.pending.remove(i) {
                        let _ = req.reply.send(refused(
                            ErrorCode::Unschedulable,
                            format!("its placement group {group} was removed"),
                        ));
                    }
                    continue;
                }
                // A bundle on another node is reached through the cluster view too.
                {
                    match self.route(&st, &st.pending[i]) {
                        Some(Ok(node)) => {
                            if let Some(req) = st.pending.remove(i) {
                                let _ = req.reply.send(decided(LeaseResult::Spillback(Spillback {
                                    node_id: node.view.node_id.to_vec().into(),
                                    raylet_address: node.raylet_address,
                                })));
                            }
                            continue;
                        }
                        Some(Err(why)) => {
                            if let Some(req) = st.pending.remove(i) {
                                let _ = req.reply.send(refused(ErrorCode::Unschedulable, why));
                            }
                            continue;
                        }
                        None => {}
                    }
                }
                let feasible_elsewhere = !self
                    .cluster
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .all(|n| !(n.view.alive && st.pending[i].resources.fits_in(&n.view.total)));
                if !waits_for_group && !st.resources.is_feasible(&st.pending[i].resources) && feasible_elsewhere {
                    // Another node can run it once it has room: wait for the next view.
                    i += 1;
                    continue;
                }
                if !waits_for_group && !st.resources.is_feasible(&st.pending[i].resources) {
                    if let Some(req) = st.pending.remove(i) {
                        let message = format!(
                            "a task needs {} but no node can ever provide it; this node has {} in total. \
                             It waits until a node with enough resources joins.",
                            req.resources,
                            st.resources.total()
                        );
                        let _ = req.reply.send(decided(LeaseResult::Infeasible(Infeasible { message })));
                    }
                    continue;
                }
                if !st.pending[i].resources.fits_in(&st.resources.available()) {
                    i += 1;
                    continue;
                }
                let env_hash = st.pending[i].env.as_ref().map(|e| e.hash.clone()).unwrap_or_default();
                let Some(worker_id) = st.take_idle(&env_hash) else {
                    match &st.pending[i].env {
                        None => waiting_for_worker += 1,
                        Some(env) => waiting_per_env.entry(env_hash).or_insert_with(|| (0, env.clone())).0 += 1,
                    }
                    i += 1;
                    continue;
                };
                let request = st.pending[i].resources.clone();
                let bundle_gpus = match st.choose_bundle_gpus(&request) {
                    Some(None) => {
                        // The group has the GPU amount free but not on one device.
                        st.idle.push_front(worker_id);
                        i += 1;
                        continue;
                    }
                    Some(chosen) => chosen,
                    None => None,
                };
                let Some(allocation) = st.resources.try_allocate(&request) else {
                    st.idle.push_front(worker_id);
                    i += 1;
                    continue;
                };
                if let Some(held) = &bundle_gpus {
                    if let Some(bundle) = st.bundles.get_mut(&held.bundle) {
                        bundle.gpus.take(&held.ids, held.amount);
                    }
                }
                let Some(req) = st.pending.remove(i) else { break };
                let lease_id = st.next_lease;
                st.next_lease += 1;
                let (address, pid) = st
                    .workers
                    .get_mut(&worker_id)
                    .map(|w| {
                        w.lease = Some(lease_id);
                        (w.address.clone().unwrap_or_default(), w.pid)
                    })
                    .unwrap_or_default();
                let mut gpu_ids = allocation.gpu_ids.clone();
                gpu_ids.extend(bundle_gpus.iter().flat_map(|held| held.ids.iter().copied()));
                let lease =
                    Lease { worker: worker_id, allocation, owner: req.owner, dedicated: req.dedicated, bundle_gpus };
                st.leases.insert(lease_id, lease);
                let granted = req.reply.send(decided(LeaseResult::Granted(LeaseGranted {
                    lease_id,
                    worker_address: address,
                    worker_id: worker_id.to_vec().into(),
                    gpu_ids,
                    pid,
                })));
                if granted.is_err() {
                    // The requester left while we decided; take the lease back.
                    if let Some(lease) = st.leases.remove(&lease_id) {
                        st.release_lease(&lease);
                    }
                    if let Some(w) = st.workers.get_mut(&worker_id) {
                        w.lease = None;
                    }
                    st.idle.push_front(worker_id);
                }
            }
            // Start workers for requests that wait for one, and refill the task pool in
            // the background when actors took idle workers out of it (as Ray does): the
            // next actor or task then finds a warm worker instead of waiting for a fresh
            // interpreter. Starting workers count towards both. While workers exit during
            // start-up the pool is not refilled, or a broken interpreter would be started
            // again and again; waiting requests still start workers and report failures.
            let limit = RuntimeConfig::get().max_starting_workers;
            let for_requests = waiting_for_worker.saturating_sub(st.starting);
            let for_pool = if st.failed_starts == 0 { self.pool_size.saturating_sub(st.task_workers()) } else { 0 };
            to_start = for_requests.max(for_pool).min(limit.saturating_sub(st.starting));
            // Environments: a worker for each waiting request not yet covered by one
            // being set up or started.
            for (hash, (waiting, env)) in waiting_per_env {
                let starting = st.env_starting.get(&hash).copied().unwrap_or(0);
                let more = waiting.saturating_sub(starting).min(limit.saturating_sub(st.starting + starting));
                if more > 0 {
                    *st.env_starting.entry(hash).or_default() += more;
                    envs_to_start.extend(std::iter::repeat_n(env, more));
                }
            }
        }
        for _ in 0..to_start {
            self.start_worker();
        }
        for env in envs_to_start {
            self.start_env_worker(env);
        }
    }

    /// Phase one of placing a bundle: reserve its resources. False if they are not
    /// available now (the GCS then cancels the group's other bundles).
    pub fn prepare_bundle(&self, group: PlacementGroupId, index: u32, resources: &ResourceSet) -> bool {
        let mut st = self.lock();
        if st.bundles.contains_key(&(group, index)) {
            return true;
        }
        match st.resources.try_allocate(resources) {
            Some(reserved) => {
                let gpus = GpuPool::of(&reserved);
                st.bundles.insert((group, index), Bundle { reserved, group_resources: ResourceSet::new(), gpus });
                true
            }
            None => false,
        }
    }

    /// Phase two: the reserved bundle becomes resources named after the group
    /// ([`bundle::committed_resources`]), which work in the group asks for.
    pub fn commit_bundle(self: &Arc<Self>, group: PlacementGroupId, index: u32) {
        {
            let mut st = self.lock();
            let st = &mut *st;
            let Some(bundle) = st.bundles.get_mut(&(group, index)) else { return };
            if !bundle.group_resources.is_empty() {
                return;
            }
            let added = bundle::committed_resources(&bundle.reserved.resources, group, index);
            st.resources.add_capacity(&added);
            bundle.group_resources = added;
        }
        self.schedule();
    }

    /// Cancels a prepared bundle or removes a committed one: its resources return to
    /// the node and the workers running in it are stopped.
    pub fn return_bundle(self: &Arc<Self>, group: PlacementGroupId, index: u32) {
        {
            let mut st = self.lock();
            let st = &mut *st;
            let Some(bundle) = st.bundles.remove(&(group, index)) else { return };
            let in_group: Vec<WorkerId> = st
                .leases
                .values()
                .filter(|l| {
                    l.allocation
                        .resources
                        .iter()
                        .any(|(name, _)| BundleResource::parse(name).is_some_and(|b| b.group == group))
                })
                .map(|l| l.worker)
                .collect();
            for worker in &in_group {
                st.stop_worker(worker);
            }
            st.resources.remove_capacity(&bundle.group_resources);
            st.resources.release(&bundle.reserved);
        }
        self.schedule();
    }

    /// A placement group was removed: fail what waits for it, now and later.
    pub fn group_removed(self: &Arc<Self>, group: PlacementGroupId) {
        self.lock().removed_groups.insert(group);
        self.schedule();
    }

    /// Stops every worker (daemon shutdown).
    pub fn shutdown(&self) {
        let waiting: Vec<PendingLease> = {
            let mut st = self.lock();
            st.shutting_down = true;
            self.starter.shutdown();
            for worker in st.workers.values() {
                kill(worker.pid);
            }
            st.pending.drain(..).collect()
        };
        for req in waiting {
            let answer = self.draining_reply(&req);
            let _ = req.reply.send(answer);
        }
    }

    /// Resource shapes of the lease requests waiting here.
    pub fn pending_demands(&self) -> Vec<ResourceSet> {
        self.lock().pending.iter().map(|p| p.resources.clone()).collect()
    }

    /// How many lease requests wait and what the node's workers are doing now.
    pub fn pool_stats(&self) -> PoolStats {
        let state = self.lock();
        let mut stats = PoolStats {
            pending_leases: state.pending.len(),
            granted_leases: state.leases.len(),
            idle_workers: state.idle.len(),
            starting_workers: state.starting,
            ..PoolStats::default()
        };
        for lease in state.leases.values() {
            match lease.dedicated {
                true => stats.actor_workers += 1,
                false => stats.task_workers += 1,
            }
        }
        stats
    }

    /// The ids of the dedicated (actor) leases the GCS holds here, which a node that
    /// registers again after losing its head reports.
    pub fn actor_leases(&self) -> Vec<u64> {
        let state = self.lock();
        let mut ids: Vec<u64> = state.leases.iter().filter(|(_, l)| l.dedicated).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids
    }

    /// The placement-group bundles committed here (reported with the actor leases).
    pub fn committed_bundles(&self) -> Vec<(PlacementGroupId, u32)> {
        let state = self.lock();
        let mut held: Vec<_> =
            state.bundles.iter().filter(|(_, b)| !b.group_resources.is_empty()).map(|(key, _)| *key).collect();
        held.sort_unstable();
        held
    }

    /// Pids of the node's worker processes.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.lock().workers.values().map(|w| w.pid).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtd_common::resources::UNIT;

    fn set(items: &[(String, f64)]) -> ResourceSet {
        ResourceSet::from_floats(items.iter().map(|(name, amount)| (name.as_str(), *amount)))
            .expect("valid test resources")
    }

    #[test]
    fn bundle_gpu_requests_name_their_group_and_bundle() {
        let pg = "8a1f00000000000000000000000000000000".to_string();
        let group = PlacementGroupId::from_hex(&pg).expect("valid test id");
        let indexed = set(&[
            (format!("CPU_group_1_{pg}"), 1.0),
            (format!("GPU_group_1_{pg}"), 0.5),
            (format!("GPU_group_{pg}"), 0.5),
        ]);
        assert_eq!(bundle_gpu_request(&indexed), Some((group, Some(1), UNIT / 2)));
        let any = set(&[(format!("GPU_group_{pg}"), 2.0)]);
        assert_eq!(bundle_gpu_request(&any), Some((group, None, 2 * UNIT)));
        let no_bundle_gpus = set(&[("GPU".to_string(), 1.0), (format!("CPU_group_{pg}"), 1.0)]);
        assert_eq!(bundle_gpu_request(&no_bundle_gpus), None);
    }

    /// A raylet whose "workers" are `sleep` processes (a script that ignores the
    /// worker arguments), registered by the test as a real worker registers itself.
    fn raylet_with_stand_in_workers(cpus: f64) -> (Arc<Raylet>, std::path::PathBuf) {
        let script = std::env::temp_dir().join(format!("rtd-stand-in-worker-{}", WorkerId::random().hex()));
        std::fs::write(&script, "#!/bin/sh\nexec sleep 60\n").expect("temp dir is writable");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        // Another test's process forked while the script was open for writing holds
        // it open until it execs, and exec of the script fails meanwhile (ETXTBSY):
        // wait until it runs.
        for _ in 0..200 {
            match std::process::Command::new(&script).spawn() {
                Ok(mut probe) => {
                    let _ = probe.kill();
                    let _ = probe.wait();
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("cannot run the stand-in worker: {e}"),
            }
        }
        let command = WorkerCommand {
            python: script.to_string_lossy().into_owned(),
            raylet_socket: String::new(),
            session_dir: String::new(),
            node_ip: None,
            fork_from_template: false,
        };
        (Raylet::new(NodeId::random(), set(&[("CPU".into(), cpus)]), command), script)
    }

    fn register_started(raylet: &Arc<Raylet>) {
        let starting: Vec<WorkerId> =
            raylet.lock().workers.iter().filter(|(_, w)| w.address.is_none()).map(|(id, _)| *id).collect();
        for id in starting {
            raylet.register_worker(id, format!("worker-{}", id.hex()));
        }
    }

    #[tokio::test]
    async fn an_actor_takes_an_idle_worker_at_once_and_the_task_pool_is_refilled() {
        let (raylet, script) = raylet_with_stand_in_workers(2.0);
        raylet.prestart_workers();
        register_started(&raylet);
        assert_eq!(raylet.lock().idle.len(), 2);
        let actor = LeaseRequest {
            resources: set(&[("CPU".into(), 1.0)]),
            strategy: Strategy::Default,
            no_spillback: false,
            dedicated: true,
            preferred: None,
            env: None,
        };
        let reply = raylet.request_lease(GCS_CONN, actor).try_recv();
        assert!(
            matches!(&reply, Ok(Ok(RequestLeaseReply { result: Some(LeaseResult::Granted(_)) }))),
            "granted from the idle pool without waiting: {reply:?}"
        );
        {
            // The actor's worker left the task pool; a replacement is already starting.
            let st = raylet.lock();
            assert_eq!((st.idle.len(), st.starting, st.task_workers(), st.workers.len()), (1, 1, 2, 3));
        }
        let expected = PoolStats {
            granted_leases: 1,
            idle_workers: 1,
            starting_workers: 1,
            actor_workers: 1,
            ..Default::default()
        };
        assert_eq!(raylet.pool_stats(), expected);
        register_started(&raylet);
        assert_eq!(raylet.lock().idle.len(), 2);
        raylet.shutdown();
        let _ = std::fs::remove_file(script);
    }

    fn granted_worker(reply: &LeaseAnswer) -> Option<WorkerId> {
        match reply {
            Ok(RequestLeaseReply { result: Some(LeaseResult::Granted(g)) }) => WorkerId::from_bytes(&g.worker_id).ok(),
            _ => None,
        }
    }

    #[tokio::test]
    async fn workers_are_pooled_by_runtime_env() {
        let (raylet, script) = raylet_with_stand_in_workers(2.0);
        raylet.prestart_workers();
        register_started(&raylet);
        let plain: Vec<WorkerId> = raylet.lock().idle.iter().copied().collect();
        assert_eq!(plain.len(), 2);
        let env = RequestedEnv::parse(r#"{"env_vars": {"A": "1"}}"#).expect("valid").expect("not empty");
        let in_env = || LeaseRequest { env: Some(env.clone()), ..request(1.0, Strategy::Default, false) };
        // Plain workers are idle, but none of them is granted: one is started in the env.
        let rx = raylet.request_lease(1, in_env());
        for _ in 0..1000 {
            if raylet.lock().workers.values().any(|w| w.env == env.hash) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        register_started(&raylet);
        let reply = tokio::time::timeout(Duration::from_secs(10), rx).await.expect("answered").expect("sent");
        let env_worker = granted_worker(&reply).expect("granted");
        assert!(!plain.contains(&env_worker));
        let lease = match &reply {
            Ok(RequestLeaseReply { result: Some(LeaseResult::Granted(g)) }) => g.lease_id,
            _ => unreachable!(),
        };
        raylet.return_lease(lease);
        // A plain request never gets the env's idle worker; the env's next request does.
        let plain_reply = raylet.request_lease(1, request(1.0, Strategy::Default, false)).try_recv().expect("now");
        assert!(plain.contains(&granted_worker(&plain_reply).expect("granted")));
        let again = raylet.request_lease(1, in_env()).try_recv().expect("now");
        assert_eq!(granted_worker(&again), Some(env_worker));
        raylet.shutdown();
        let _ = std::fs::remove_file(script);
    }

    #[tokio::test]
    async fn a_failed_env_setup_refuses_only_that_envs_requests() {
        let (raylet, script) = raylet_with_stand_in_workers(2.0);
        raylet.prestart_workers();
        register_started(&raylet);
        let broken = RequestedEnv::parse(r#"{"working_dir": "gcs://_ray_pkg_0000000000000000.zip"}"#)
            .expect("valid")
            .expect("not empty");
        let rx = raylet.request_lease(1, LeaseRequest { env: Some(broken), ..request(1.0, Strategy::Default, false) });
        let reply = tokio::time::timeout(Duration::from_secs(10), rx).await.expect("answered").expect("sent");
        assert!(
            matches!(&reply, Err(e) if e.code == ErrorCode::RuntimeEnvSetupFailed as i32 && e.message.contains("_ray_pkg_0000000000000000")),
            "{reply:?}"
        );
        let plain = raylet.request_lease(1, request(1.0, Strategy::Default, false)).try_recv().expect("now");
        assert!(granted_worker(&plain).is_some(), "{plain:?}");
        raylet.shutdown();
        let _ = std::fs::remove_file(script);
    }

    fn remote(cpus: f64, free: f64) -> RemoteNode {
        let view = NodeView {
            node_id: NodeId::random(),
            total: set(&[("CPU".into(), cpus)]),
            available: set(&[("CPU".into(), free)]),
            alive: true,
        };
        RemoteNode { raylet_address: format!("127.0.0.1:{}", 1000 + u16::from(view.node_id.as_bytes()[0])), view }
    }

    fn request(cpus: f64, strategy: Strategy, no_spillback: bool) -> LeaseRequest {
        LeaseRequest {
            resources: set(&[("CPU".into(), cpus)]),
            strategy,
            no_spillback,
            dedicated: false,
            preferred: None,
            env: None,
        }
    }

    fn spilled_to(reply: Result<LeaseAnswer, oneshot::error::TryRecvError>) -> Option<String> {
        match reply {
            Ok(Ok(RequestLeaseReply { result: Some(LeaseResult::Spillback(s)) })) => Some(s.raylet_address),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_draining_node_passes_waiting_and_new_lease_requests_to_other_nodes() {
        let (raylet, script) = raylet_with_stand_in_workers(1.0);
        let busy = remote(4.0, 0.0);
        let free = remote(4.0, 4.0);
        raylet.set_cluster(vec![busy.clone(), free.clone()]);
        // Too big for this node: it waits here for the view to change.
        let waiting = raylet.request_lease(7, request(2.0, Strategy::Default, true));
        raylet.shutdown();
        let mut waiting = waiting;
        assert_eq!(spilled_to(waiting.try_recv()), Some(free.raylet_address.clone()));
        // Asked not to spill back, a draining node still does: it will never run it.
        let new = raylet.request_lease(7, request(1.0, Strategy::Default, true)).try_recv();
        assert_eq!(spilled_to(new), Some(free.raylet_address.clone()));
        // Everything busy: queue where it fits in total.
        raylet.set_cluster(vec![busy.clone()]);
        let queued = raylet.request_lease(7, request(1.0, Strategy::Default, false)).try_recv();
        assert_eq!(spilled_to(queued), Some(busy.raylet_address.clone()));
        // Hard affinity to the draining node itself cannot be met anywhere.
        let own = Strategy::NodeAffinity { node_id: raylet.node_id(), soft: false };
        let pinned = raylet.request_lease(7, request(1.0, own, false)).try_recv();
        assert!(matches!(&pinned, Ok(Err(e)) if e.code == ErrorCode::Unschedulable as i32), "{pinned:?}");
        // No other node: an error the requester retries, not a grant.
        raylet.set_cluster(Vec::new());
        let alone = raylet.request_lease(7, request(1.0, Strategy::Default, false)).try_recv();
        assert!(matches!(&alone, Ok(Err(_))), "{alone:?}");
        let _ = std::fs::remove_file(script);
    }
}
