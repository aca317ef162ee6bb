//! One node daemon: the raylet and the plasma store, plus the GCS on the head node.
//!
//! Clients (drivers and workers) talk to the daemon over two Unix sockets in the
//! session directory: `raylet.sock` for leases, node and KV requests, `plasma.sock`
//! for the object store. The store's memory is one file in `/dev/shm`. Everything the
//! daemon created (sockets, the shared-memory file, spill files, workers) is removed
//! when it stops, whether by SIGTERM/SIGINT, a `Shutdown` request, or its parent
//! closing the pipe on the daemon's stdin (the driver that started it died).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use rtd_common::proto::{
    frame::Body, request_lease_reply::Result as LeaseResult, Ack, ErrorCode, GetNodesReply, KvGetReply, LeaseGranted,
    ListActorsReply, ListPlacementGroupsReply, NodeInfo, RegisterClientReply, ResourceMap,
};
use rtd_common::ActorId;
use rtd_common::rpc::{error_body, Reply, Service};
use rtd_common::{NodeId, ResourceSet, WorkerId};
use rtd_gcs::actor_manager::{ActorManager, WorkerLeaser};
use rtd_gcs::placement_group_manager::{BundleReserver, PlacementGroupManager};
use rtd_raylet::policy::NodeView;
use rtd_gcs::Gcs;
use rtd_plasma::{ObjectStore, PlasmaService, ShmRegion};
use rtd_raylet::lease::{ConnId, Raylet, GCS_CONN};
use rtd_raylet::worker_pool::WorkerCommand;
use tokio::sync::Notify;

use crate::session::{NodeFile, Session};

#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub session_dir: PathBuf,
    pub resources: ResourceSet,
    pub object_store_memory: u64,
    pub python: String,
    /// Stop when stdin reaches EOF (the parent process is gone).
    pub watch_stdin: bool,
}

/// The GCS leases actor workers from this node's raylet.
struct LocalLeaser(Arc<Raylet>);

impl WorkerLeaser for LocalLeaser {
    fn lease(
        &self,
        resources: ResourceSet,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<LeaseGranted, String>> + Send>> {
        let rx = self.0.request_lease(GCS_CONN, resources);
        Box::pin(async move {
            match rx.await {
                Ok(Body::RequestLeaseReply(r)) => match r.result {
                    Some(LeaseResult::Granted(g)) => Ok(g),
                    Some(LeaseResult::Infeasible(i)) => Err(i.message),
                    None => Err("empty lease reply".into()),
                },
                Ok(Body::Error(e)) => Err(e.message),
                _ => Err("the node is shutting down".into()),
            }
        })
    }

    fn shrink(&self, lease_id: u64, keep: ResourceSet) {
        self.0.shrink_lease(lease_id, &keep);
    }

    fn kill(&self, lease_id: u64) {
        self.0.kill_leased_worker(lease_id);
    }
}

/// The GCS reserves placement-group bundles on this node's raylet.
struct LocalReserver {
    node_id: NodeId,
    raylet: Arc<Raylet>,
}

impl BundleReserver for LocalReserver {
    fn nodes(&self) -> Vec<NodeView> {
        vec![NodeView {
            node_id: self.node_id,
            total: self.raylet.total(),
            available: self.raylet.available(),
            alive: true,
        }]
    }

    fn prepare(&self, node: &NodeId, group: &str, index: u32, resources: &ResourceSet) -> bool {
        *node == self.node_id && self.raylet.prepare_bundle(group, index, resources)
    }

    fn commit(&self, _node: &NodeId, group: &str, index: u32) {
        self.raylet.commit_bundle(group, index);
    }

    fn release(&self, _node: &NodeId, group: &str, index: u32) {
        self.raylet.return_bundle(group, index);
    }
}

struct NodeService {
    node_id: NodeId,
    actors: Arc<ActorManager>,
    groups: Arc<PlacementGroupManager>,
    session: Session,
    shm_size: u64,
    gcs: Arc<Gcs>,
    raylet: Arc<Raylet>,
    next_conn: AtomicU64,
    shutdown: Arc<Notify>,
}

struct ConnState {
    id: ConnId,
    worker: Option<WorkerId>,
}

impl NodeService {
    fn node_info(&self) -> NodeInfo {
        NodeInfo {
            node_id: self.node_id.to_vec().into(),
            address: "127.0.0.1".into(),
            alive: true,
            total: Some(ResourceMap { amounts: self.raylet.total().to_fixed_map() }),
            available: Some(ResourceMap { amounts: self.raylet.available().to_fixed_map() }),
            session_dir: self.session.dir.display().to_string(),
            raylet_socket: self.session.raylet_socket().display().to_string(),
            plasma_socket: self.session.plasma_socket().display().to_string(),
        }
    }
}

impl Service for NodeService {
    type State = ConnState;

    fn connected(&self) -> ConnState {
        ConnState { id: self.next_conn.fetch_add(1, Ordering::Relaxed), worker: None }
    }

    fn handle(&self, conn: &mut ConnState, body: Body) -> Reply {
        match body {
            Body::RegisterClient(reg) => {
                let job_id = if reg.is_worker {
                    let Ok(worker_id) = WorkerId::from_bytes(&reg.worker_id) else {
                        return Reply::Now(error_body(ErrorCode::Invalid, "bad worker id"));
                    };
                    if !self.raylet.register_worker(worker_id, reg.address) {
                        return Reply::Now(error_body(ErrorCode::Invalid, "unknown or duplicate worker id"));
                    }
                    conn.worker = Some(worker_id);
                    Default::default()
                } else {
                    self.gcs.next_job_id().to_vec().into()
                };
                Reply::Now(Body::RegisterClientReply(RegisterClientReply {
                    node_id: self.node_id.to_vec().into(),
                    job_id,
                    plasma_socket: self.session.plasma_socket().display().to_string(),
                    shm_path: self.session.shm_path().display().to_string(),
                    shm_size: self.shm_size,
                    session_dir: self.session.dir.display().to_string(),
                }))
            }
            Body::RequestLease(req) => {
                let rx = self.raylet.request_lease(conn.id, ResourceSet::from_fixed_map(&req.resources));
                Reply::Later(Box::pin(async move {
                    rx.await.unwrap_or_else(|_| error_body(ErrorCode::Internal, "the node is shutting down"))
                }))
            }
            Body::ReturnLease(r) => {
                self.raylet.return_lease(r.lease_id);
                Reply::Now(Body::Ack(Ack {}))
            }
            Body::KillLeasedWorker(k) => {
                self.raylet.kill_leased_worker(k.lease_id);
                Reply::Now(Body::Ack(Ack {}))
            }
            Body::NotifyBlocked(_) => {
                if let Some(w) = &conn.worker {
                    self.raylet.worker_blocked(w);
                }
                Reply::None
            }
            Body::NotifyUnblocked(_) => {
                if let Some(w) = &conn.worker {
                    self.raylet.worker_unblocked(w);
                }
                Reply::None
            }
            Body::GetNodes(_) => {
                // The head's own entry carries live availability from its raylet.
                let own = self.node_info();
                let mut nodes: Vec<NodeInfo> =
                    self.gcs.nodes().into_iter().filter(|n| n.node_id != own.node_id).collect();
                nodes.insert(0, own);
                Reply::Now(Body::GetNodesReply(GetNodesReply { nodes }))
            }
            Body::KvPut(kv) => {
                self.gcs.kv_put(kv.key, kv.value);
                Reply::Now(Body::Ack(Ack {}))
            }
            Body::KvGet(kv) => Reply::Now(Body::KvGetReply(match self.gcs.kv_get(&kv.key) {
                Some(value) => KvGetReply { found: true, value },
                None => KvGetReply { found: false, value: Default::default() },
            })),
            Body::CreateActor(req) => match self.actors.create(conn.id, req) {
                Ok(info) => Reply::Now(Body::ActorInfo(info)),
                Err(e) => Reply::Now(error_body(ErrorCode::Invalid, e.to_string())),
            },
            Body::WaitActor(w) => {
                let rx = ActorId::from_bytes(&w.actor_id).ok().and_then(|id| self.actors.wait(&id, w.after_epoch));
                match rx {
                    Some(rx) => Reply::Later(Box::pin(async move {
                        match rx.await {
                            Ok(info) => Body::ActorInfo(info),
                            Err(_) => error_body(ErrorCode::Internal, "the node is shutting down"),
                        }
                    })),
                    None => Reply::Now(error_body(ErrorCode::NotFound, "no such actor")),
                }
            }
            Body::GetNamedActor(g) => match self.actors.get_named(&g.namespace, &g.name) {
                Some(info) => Reply::Now(Body::ActorInfo(info)),
                None => Reply::Now(error_body(
                    ErrorCode::NotFound,
                    format!("Failed to look up actor with name '{}' in namespace '{}'", g.name, g.namespace),
                )),
            },
            Body::KillActor(k) => {
                let killed = ActorId::from_bytes(&k.actor_id).map(|id| self.actors.kill(&id, k.no_restart)).unwrap_or(false);
                if killed {
                    Reply::Now(Body::Ack(Ack {}))
                } else {
                    Reply::Now(error_body(ErrorCode::NotFound, "no such actor"))
                }
            }
            Body::ListActors(_) => Reply::Now(Body::ListActorsReply(ListActorsReply { actors: self.actors.list() })),
            Body::CreatePlacementGroup(req) => match self.groups.create(conn.id, req) {
                Ok(info) => Reply::Now(Body::PlacementGroupInfo(info)),
                Err(e) => Reply::Now(error_body(ErrorCode::Invalid, e.to_string())),
            },
            Body::WaitPlacementGroup(w) => match self.groups.wait(&w.pg_id) {
                Some(rx) => Reply::Later(Box::pin(async move {
                    match rx.await {
                        Ok(info) => Body::PlacementGroupInfo(info),
                        Err(_) => error_body(ErrorCode::Internal, "the node is shutting down"),
                    }
                })),
                None => Reply::Now(error_body(ErrorCode::NotFound, "no such placement group")),
            },
            Body::RemovePlacementGroup(r) => match self.groups.remove(&r.pg_id) {
                Some(group) => {
                    self.actors.end_actors_in_group(&group);
                    Reply::Now(Body::Ack(Ack {}))
                }
                None => Reply::Now(error_body(ErrorCode::NotFound, "no such placement group")),
            },
            Body::GetPlacementGroup(g) => match self.groups.get(&g.pg_id, &g.name) {
                Some(info) => Reply::Now(Body::PlacementGroupInfo(info)),
                None => Reply::Now(error_body(ErrorCode::NotFound, "no such placement group")),
            },
            Body::ListPlacementGroups(_) => {
                Reply::Now(Body::ListPlacementGroupsReply(ListPlacementGroupsReply { groups: self.groups.list() }))
            }
            Body::Shutdown(_) => {
                self.shutdown.notify_one();
                Reply::Now(Body::Ack(Ack {}))
            }
            _ => Reply::Now(error_body(ErrorCode::Invalid, "unsupported request for the node daemon")),
        }
    }

    fn disconnected(&self, conn: ConnState) {
        self.actors.owner_disconnected(conn.id);
        for group in self.groups.owner_disconnected(conn.id) {
            self.actors.end_actors_in_group(&group);
        }
        self.raylet.client_disconnected(conn.id, conn.worker);
    }
}

/// Runs a node until it is told to stop. Blocks the calling thread.
pub fn run_node(opts: NodeOptions) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("rtd-node")
        .enable_all()
        .build()
        .context("starting the node runtime")?;
    let result = runtime.block_on(serve_node(opts));
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    result
}

async fn serve_node(opts: NodeOptions) -> Result<()> {
    let session = Session::create(&opts.session_dir)?;
    let node_id = NodeId::random();
    let region = Arc::new(
        ShmRegion::create(&session.shm_path(), opts.object_store_memory)
            .with_context(|| format!("creating the object store at {}", session.shm_path().display()))?,
    );
    region.set_unlink_on_drop(true);
    let store = ObjectStore::new(region, session.dir.join("spill"));
    let plasma = PlasmaService::new(store);
    let plasma_listener = rtd_common::rpc::bind(&session.plasma_socket()).context("binding plasma.sock")?;

    let command = WorkerCommand {
        python: opts.python.clone(),
        raylet_socket: session.raylet_socket().display().to_string(),
        session_dir: session.dir.display().to_string(),
    };
    let raylet = Raylet::new(opts.resources.clone(), command);
    let gcs = Arc::new(Gcs::new());
    let actors = ActorManager::new(Arc::new(LocalLeaser(raylet.clone())));
    let hook_actors = actors.clone();
    raylet.set_lease_lost_hook(Box::new(move |lease_id| hook_actors.lease_lost(lease_id)));
    let groups = PlacementGroupManager::new(Arc::new(LocalReserver { node_id, raylet: raylet.clone() }));
    let shutdown = Arc::new(Notify::new());
    let service = Arc::new(NodeService {
        node_id,
        actors: actors.clone(),
        groups,
        session: session.clone(),
        shm_size: opts.object_store_memory,
        gcs: gcs.clone(),
        raylet: raylet.clone(),
        next_conn: AtomicU64::new(1),
        shutdown: shutdown.clone(),
    });
    gcs.register_node(service.node_info());
    let raylet_listener = rtd_common::rpc::bind(&session.raylet_socket()).context("binding raylet.sock")?;
    let plasma_task = tokio::spawn(rtd_common::rpc::serve(plasma_listener, plasma));
    let raylet_task = tokio::spawn(rtd_common::rpc::serve(raylet_listener, service));
    raylet.prestart_workers();
    NodeFile {
        pid: std::process::id(),
        node_id: node_id.hex(),
        raylet_socket: session.raylet_socket().display().to_string(),
        session_dir: session.dir.display().to_string(),
    }
    .write(&session)?;
    tracing::info!("node {node_id} ready in {}", session.dir.display());

    wait_for_stop(shutdown, opts.watch_stdin).await;

    actors.shutdown();
    raylet.shutdown();
    raylet_task.abort();
    plasma_task.abort();
    // Give the kills a moment to land so no worker touches removed files.
    for _ in 0..50 {
        if raylet.worker_pids().iter().all(|pid| !process_alive(*pid)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    session.remove();
    Ok(())
}

fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

async fn wait_for_stop(shutdown: Arc<Notify>, watch_stdin: bool) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    let stdin_closed = async {
        if watch_stdin {
            // Runs on a blocking thread: reading a pipe until EOF.
            let _ = tokio::task::spawn_blocking(|| {
                use std::io::Read;
                let mut buf = [0u8; 64];
                let mut stdin = std::io::stdin();
                while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            })
            .await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = shutdown.notified() => {}
        _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
        _ = async { match int.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
        _ = stdin_closed => {}
    }
}

/// Default store size: 30% of memory, bounded by what /dev/shm can hold.
pub fn default_object_store_memory() -> u64 {
    let total = system_memory().unwrap_or(4 << 30);
    let mut size = total * 3 / 10;
    if let Some(shm_free) = free_bytes(Path::new("/dev/shm")) {
        size = size.min(shm_free * 95 / 100);
    }
    size.max(64 << 20)
}

fn system_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn free_bytes(path: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Logical resources of a node: CPU defaults to the machine's cores, memory to the
/// machine's memory minus the object store, as Ray reports them.
pub fn node_resources(
    num_cpus: Option<f64>,
    num_gpus: Option<f64>,
    custom: &HashMap<String, f64>,
    object_store_memory: u64,
) -> Result<ResourceSet, rtd_common::ResourceError> {
    let cpus = num_cpus.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0));
    let memory = system_memory().unwrap_or(0).saturating_sub(object_store_memory) as f64;
    let mut items: Vec<(&str, f64)> = vec![
        ("CPU", cpus),
        ("memory", memory),
        ("object_store_memory", object_store_memory as f64),
    ];
    if let Some(g) = num_gpus {
        items.push(("GPU", g));
    }
    for (k, v) in custom {
        items.push((k.as_str(), *v));
    }
    ResourceSet::from_floats(items)
}
