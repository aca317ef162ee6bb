//! What a node's raylet answers on its socket and node link: its own requests
//! (registration, leases, blocked workers, placement-group bundles, object transfer,
//! its log files) and, through its GCS client, the GCS's: the head serves them itself;
//! another node forwards them to the head, so a client never needs to know which node
//! hosts the GCS.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use rtd_common::proto::node_manager_reply::Reply as NodeManagerReply;
use rtd_common::proto::node_manager_request::Request as NodeManagerRequest;
use rtd_common::proto::{
    frame::Body, gcs_request, Ack, AddJob, ClusterViewNode, ErrorCode, FreeObjects, GcsRequest, GetClusterViewReply,
    ListLogsReply, ListSpilledObjectsReply, MarkJobFinished, ReadLogReply, RegisterClientReply, ReportWorker,
    ResourceMap, WorkerInfo,
};
use rtd_common::rpc::{error_body, ConnectionCache, Reply, RpcError, Service};
use rtd_common::{NodeId, ObjectId, PlacementGroupId, ResourceSet, WorkerId};
use rtd_gcs::client::GcsClient;
use rtd_metrics::{RequestLatencies, UserMetrics};
use rtd_object_manager::{pull_object, PullError};
use rtd_plasma::PlasmaClient;
use tokio::sync::Notify;

use crate::lease::{ConnId, LeaseRequest, Raylet, RequestedEnv, GCS_CONN};
use crate::logs;
use crate::policy::Strategy;

/// What the service asks of the GCS: to pass a GCS request on and answer it, to add
/// the job of a registering driver, and to hear that a connection closed.
/// [`GcsClient`] is the one the daemon runs with; tests give a fake that records what
/// it is asked. `NodeService` is generic over it, so a request's call is static.
pub trait GcsPort: Send + Sync + 'static {
    /// A GCS request from connection `conn`, and its reply (or error) as it comes.
    fn request(&self, conn: ConnId, request: gcs_request::Request) -> Reply;
    /// Records the job of a driver registering over `conn`; resolves to the job's id.
    fn add_job(&self, conn: ConnId, job: AddJob) -> Pin<Box<dyn Future<Output = Result<Bytes, RpcError>> + Send>>;
    /// Connection `conn` closed: what it owned in the GCS goes with it.
    fn disconnected(&self, conn: ConnId);
}

impl GcsPort for GcsClient {
    fn request(&self, conn: ConnId, request: gcs_request::Request) -> Reply {
        GcsClient::request(self, conn, request)
    }

    fn add_job(&self, conn: ConnId, job: AddJob) -> Pin<Box<dyn Future<Output = Result<Bytes, RpcError>> + Send>> {
        GcsClient::add_job(self, conn, job)
    }

    fn disconnected(&self, conn: ConnId) {
        GcsClient::disconnected(self, conn)
    }
}

pub struct NodeService<G: GcsPort = GcsClient> {
    pub node_id: NodeId,
    /// The session directory, and the store's socket and shared-memory file in it:
    /// what a registering client is told.
    pub session_dir: String,
    pub plasma_socket: String,
    pub shm_path: String,
    pub shm_size: u64,
    /// This node's IP when it is part of a multi-node cluster.
    pub node_ip: Option<String>,
    pub raylet: Arc<Raylet>,
    /// The daemon's own client of its object store (object transfer).
    pub plasma: PlasmaClient,
    pub peers: Arc<ConnectionCache>,
    pub gcs: G,
    pub next_conn: AtomicU64,
    pub shutdown: Arc<Notify>,
    /// What this node's processes report of `rtd.util.metrics`, exported on `/metrics`.
    pub user_metrics: Arc<UserMetrics>,
    /// How long each kind of request takes to answer, exported on `/metrics`.
    pub request_latencies: RequestLatencies,
    /// The workers and drivers connected now, as reported to the GCS: a node that
    /// registers again with a restarted head reports them once more.
    pub processes: Arc<ProcessTable>,
}

/// The worker and driver processes connected to a raylet, by connection.
#[derive(Default)]
pub struct ProcessTable(std::sync::Mutex<std::collections::HashMap<ConnId, WorkerInfo>>);

impl ProcessTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<ConnId, WorkerInfo>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every process connected now, alive as far as this raylet knows.
    pub fn live(&self) -> Vec<WorkerInfo> {
        self.lock().values().cloned().collect()
    }
}

/// What a raylet's connections carry: its own requests, and the GCS's (served on the
/// head, passed on to the head elsewhere).
// As large as the frame body it comes out of, and moved once, to its handler: boxing
// the GCS's requests would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub enum NodeRequest {
    NodeManager(NodeManagerRequest),
    Gcs(gcs_request::Request),
}

impl NodeRequest {
    fn name(&self) -> &'static str {
        match self {
            NodeRequest::NodeManager(request) => request.name(),
            NodeRequest::Gcs(request) => request.name(),
        }
    }
}

impl TryFrom<Body> for NodeRequest {
    type Error = Body;
    fn try_from(body: Body) -> Result<Self, Body> {
        match body {
            Body::NodeManager(rtd_common::proto::NodeManagerRequest { request: Some(request) }) => {
                Ok(NodeRequest::NodeManager(request))
            }
            Body::Gcs(GcsRequest { request: Some(request) }) => Ok(NodeRequest::Gcs(request)),
            other => Err(other),
        }
    }
}

fn ack() -> Body {
    NodeManagerReply::Ack(Ack {}).into()
}

pub struct ConnState {
    id: ConnId,
    worker: Option<WorkerId>,
    /// A driver's job, once the GCS has given it one: it ends when this connection does.
    job: Arc<OnceLock<Bytes>>,
    /// The worker or driver process on the other end, as reported to the GCS.
    process: Option<WorkerInfo>,
}

/// The answer to a bundle message whose group is not a placement group's hex id.
fn not_a_group(group: &str) -> Reply {
    Reply::Now(error_body(ErrorCode::Invalid, format!("{group:?} is not a placement group id")))
}

/// The answer to `GetClusterView`: what this raylet schedules by.
fn cluster_view(raylet: &Raylet) -> GetClusterViewReply {
    let nodes = raylet
        .cluster_view()
        .into_iter()
        .map(|n| ClusterViewNode {
            node_id: n.node_id.to_vec().into(),
            alive: n.alive,
            total: Some(ResourceMap { amounts: n.total.to_fixed_map() }),
            available: Some(ResourceMap { amounts: n.available.to_fixed_map() }),
        })
        .collect();
    GetClusterViewReply { nodes }
}

impl<G: GcsPort> NodeService<G> {
    fn register_reply(&self, job_id: Bytes) -> RegisterClientReply {
        RegisterClientReply {
            node_id: self.node_id.to_vec().into(),
            job_id,
            plasma_socket: self.plasma_socket.clone(),
            shm_path: self.shm_path.clone(),
            shm_size: self.shm_size,
            session_dir: self.session_dir.clone(),
            node_ip: self.node_ip.clone().unwrap_or_default(),
        }
    }
}

impl<G: GcsPort> NodeService<G> {
    /// A message for the GCS whose answer nobody waits for.
    fn tell_gcs(&self, conn: ConnId, request: gcs_request::Request) {
        if let Reply::Later(fut) = self.gcs.request(conn, request) {
            tokio::spawn(fut);
        }
    }

    fn report_process(&self, conn: ConnId, worker: WorkerInfo) {
        let mut processes = self.processes.lock();
        if worker.is_alive {
            processes.insert(conn, worker.clone());
        } else {
            processes.remove(&conn);
        }
        drop(processes);
        self.tell_gcs(conn, gcs_request::Request::ReportWorker(ReportWorker { worker: Some(worker) }));
    }
}

impl<G: GcsPort> Service for NodeService<G> {
    const NAME: &'static str = "the node daemon";
    type Request = NodeRequest;
    type State = ConnState;

    fn connected(&self) -> ConnState {
        ConnState {
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            worker: None,
            job: Default::default(),
            process: None,
        }
    }

    fn handle(&self, conn: &mut ConnState, request: NodeRequest) -> Reply {
        let (method, start) = (request.name(), Instant::now());
        let reply = match request {
            NodeRequest::NodeManager(request) => self.handle_own(conn, request),
            NodeRequest::Gcs(request) => self.gcs.request(conn.id, request),
        };
        match reply {
            Reply::Later(answer) => {
                let latencies = self.request_latencies.clone();
                Reply::Later(Box::pin(async move {
                    let body = answer.await;
                    latencies.observe(method, start.elapsed());
                    body
                }))
            }
            now => {
                self.request_latencies.observe(method, start.elapsed());
                now
            }
        }
    }

    fn disconnected(&self, conn: ConnState) {
        if let Some(job_id) = conn.job.get() {
            self.tell_gcs(conn.id, gcs_request::Request::MarkJobFinished(MarkJobFinished { job_id: job_id.clone() }));
        }
        if let Some(process) = conn.process {
            let job_id = conn.job.get().cloned().unwrap_or_default();
            self.report_process(conn.id, WorkerInfo { is_alive: false, job_id, ..process });
        }
        self.gcs.disconnected(conn.id);
        self.raylet.client_disconnected(conn.id, conn.worker);
    }
}

impl<G: GcsPort> NodeService<G> {
    /// Answers one of the raylet's own requests.
    fn handle_own(&self, conn: &mut ConnState, request: NodeManagerRequest) -> Reply {
        match request {
            NodeManagerRequest::RegisterClient(reg) => {
                let process = WorkerInfo {
                    worker_id: reg.worker_id.clone(),
                    node_id: self.node_id.to_vec().into(),
                    ip: self.node_ip.clone().unwrap_or_else(|| "127.0.0.1".into()),
                    pid: reg.pid,
                    is_driver: !reg.is_worker,
                    is_alive: true,
                    address: reg.address.clone(),
                    ..Default::default()
                };
                if reg.is_worker {
                    let Ok(worker_id) = WorkerId::from_bytes(&reg.worker_id) else {
                        return Reply::Now(error_body(ErrorCode::Invalid, "bad worker id"));
                    };
                    if !self.raylet.register_worker(worker_id, reg.address) {
                        return Reply::Now(error_body(ErrorCode::Invalid, "unknown or duplicate worker id"));
                    }
                    conn.worker = Some(worker_id);
                    self.report_process(conn.id, process.clone());
                    conn.process = Some(process);
                    return Reply::Now(NodeManagerReply::RegisterClientReply(self.register_reply(Bytes::new())).into());
                }
                // A driver: its job id comes from the GCS.
                self.report_process(conn.id, process.clone());
                conn.process = Some(process);
                let mut reply = self.register_reply(Bytes::new());
                let job_id = self.gcs.add_job(conn.id, AddJob { driver_pid: reg.pid, entrypoint: reg.entrypoint });
                let job = conn.job.clone();
                Reply::Later(Box::pin(async move {
                    match job_id.await {
                        Ok(job_id) => {
                            let _ = job.set(job_id.clone());
                            reply.job_id = job_id;
                            NodeManagerReply::RegisterClientReply(reply).into()
                        }
                        Err(e) => error_body(e.code(), e.to_string()),
                    }
                }))
            }
            NodeManagerRequest::RequestLease(req) => {
                let strategy = match Strategy::from_wire(&req.strategy, &req.affinity_node, req.affinity_soft) {
                    Ok(strategy) => strategy,
                    Err(e) => return Reply::Now(error_body(ErrorCode::Invalid, e.to_string())),
                };
                let env = match RequestedEnv::parse(&req.runtime_env) {
                    Ok(env) => env,
                    Err(why) => return Reply::Now(error_body(ErrorCode::RuntimeEnvSetupFailed, why)),
                };
                let request = LeaseRequest {
                    resources: ResourceSet::from_fixed_map(&req.resources),
                    strategy,
                    no_spillback: req.no_spillback,
                    dedicated: req.dedicated,
                    preferred: NodeId::from_bytes(&req.preferred_node).ok(),
                    env,
                };
                // Only the GCS asks for dedicated (actor) leases. They are its own, not
                // the connection's it came over: an actor outlives the loss of its head.
                let owner = if req.dedicated { GCS_CONN } else { conn.id };
                let rx = self.raylet.request_lease(owner, request);
                Reply::Later(Box::pin(async move {
                    match rx.await {
                        Ok(Ok(reply)) => NodeManagerReply::RequestLeaseReply(reply).into(),
                        Ok(Err(refused)) => refused.into(),
                        Err(_) => error_body(ErrorCode::Internal, "the node is shutting down"),
                    }
                }))
            }
            NodeManagerRequest::ReturnLease(r) => {
                self.raylet.return_lease(r.lease_id);
                Reply::Now(ack())
            }
            NodeManagerRequest::KillLeasedWorker(k) => {
                self.raylet.kill_leased_worker(k.lease_id);
                Reply::Now(ack())
            }
            NodeManagerRequest::ShrinkLease(s) => {
                self.raylet.shrink_lease(s.lease_id, &ResourceSet::from_fixed_map(&s.keep));
                Reply::Now(ack())
            }
            NodeManagerRequest::NotifyBlocked(_) => {
                if let Some(w) = &conn.worker {
                    self.raylet.worker_blocked(w);
                }
                Reply::None
            }
            NodeManagerRequest::NotifyUnblocked(_) => {
                if let Some(w) = &conn.worker {
                    self.raylet.worker_unblocked(w);
                }
                Reply::None
            }
            NodeManagerRequest::PrepareBundle(p) => {
                let Some(group) = PlacementGroupId::from_hex(&p.group) else { return not_a_group(&p.group) };
                if self.raylet.prepare_bundle(group, p.index, &ResourceSet::from_fixed_map(&p.resources)) {
                    Reply::Now(ack())
                } else {
                    Reply::Now(error_body(ErrorCode::Invalid, "the bundle's resources are not available"))
                }
            }
            NodeManagerRequest::CommitBundle(c) => {
                let Some(group) = PlacementGroupId::from_hex(&c.group) else { return not_a_group(&c.group) };
                self.raylet.commit_bundle(group, c.index);
                Reply::Now(ack())
            }
            NodeManagerRequest::ReleaseBundle(r) => {
                let Some(group) = PlacementGroupId::from_hex(&r.group) else { return not_a_group(&r.group) };
                self.raylet.return_bundle(group, r.index);
                Reply::Now(ack())
            }
            NodeManagerRequest::PlacementGroupRemoved(g) => {
                let Some(group) = PlacementGroupId::from_hex(&g.group) else { return not_a_group(&g.group) };
                self.raylet.group_removed(group);
                Reply::Now(ack())
            }
            NodeManagerRequest::PullObject(p) => {
                let Ok(id) = ObjectId::from_bytes(&p.id) else {
                    return Reply::Now(error_body(ErrorCode::Invalid, "bad object id"));
                };
                let source = self
                    .raylet
                    .cluster()
                    .into_iter()
                    .find(|n| n.view.node_id.as_bytes() == p.node_id.as_ref() && n.view.alive)
                    .map(|n| n.raylet_address);
                let (plasma, peers) = (self.plasma.clone(), self.peers.clone());
                Reply::Later(Box::pin(async move {
                    // A copy here serves, even when the node it came from is gone.
                    if let Ok(Some(_)) = plasma.get(&id, 0).await {
                        plasma.release(&id);
                        return ack();
                    }
                    let pulled = async {
                        let source = source
                            .ok_or_else(|| PullError::Missing(format!("the node holding object {id} is not alive")))?;
                        let peer = peers.get(&source).await.map_err(|e| PullError::Failed(e.to_string()))?;
                        let channel = peer
                            .channel()
                            .ok_or_else(|| PullError::Failed(format!("{source} is not another node's address")))?;
                        pull_object(&plasma, channel, &source, id).await
                    };
                    match pulled.await {
                        Ok(()) => ack(),
                        Err(PullError::Missing(e)) => error_body(ErrorCode::NotFound, e),
                        Err(PullError::Full(e)) => error_body(ErrorCode::StoreFull, e),
                        Err(PullError::Failed(e)) => error_body(ErrorCode::Internal, e),
                    }
                }))
            }
            NodeManagerRequest::FreeObjects(free) => {
                let ids: Vec<ObjectId> = free.ids.iter().filter_map(|id| ObjectId::from_bytes(id).ok()).collect();
                if !free.from_peer {
                    let others: Vec<String> = self
                        .raylet
                        .cluster()
                        .into_iter()
                        .filter(|n| n.view.alive && n.view.node_id != self.node_id)
                        .map(|n| n.raylet_address)
                        .collect();
                    let forward = FreeObjects { ids: free.ids, from_peer: true };
                    let peers = self.peers.clone();
                    tokio::spawn(async move {
                        for node in others {
                            if let Ok(peer) = peers.get(&node).await {
                                let _ = peer.send(forward.clone());
                            }
                        }
                    });
                }
                let plasma = self.plasma.clone();
                Reply::Later(Box::pin(async move {
                    let _ = plasma.delete(&ids).await;
                    ack()
                }))
            }
            NodeManagerRequest::ReportMetrics(report) => {
                let refused = self.user_metrics.record(report.points);
                if refused.is_empty() {
                    return Reply::Now(ack());
                }
                let reasons: Vec<String> = refused.iter().map(ToString::to_string).collect();
                Reply::Now(error_body(ErrorCode::Invalid, reasons.join("; ")))
            }
            NodeManagerRequest::PrepareRuntimeEnv(prepare) => {
                self.raylet.prepare_env(&prepare.runtime_env);
                Reply::None
            }
            NodeManagerRequest::GetClusterView(_) => {
                Reply::Now(NodeManagerReply::GetClusterViewReply(cluster_view(&self.raylet)).into())
            }
            NodeManagerRequest::ListSpilledObjects(_) => {
                let plasma = self.plasma.clone();
                Reply::Later(Box::pin(async move {
                    match plasma.spilled().await {
                        Ok(ids) => {
                            let object_ids = ids.iter().map(|id| id.to_vec().into()).collect();
                            NodeManagerReply::ListSpilledObjectsReply(ListSpilledObjectsReply { object_ids }).into()
                        }
                        Err(e) => error_body(ErrorCode::Internal, format!("the object store did not answer: {e}")),
                    }
                }))
            }
            NodeManagerRequest::ListLogs(_) => {
                let dir = logs::logs_dir(Path::new(&self.session_dir));
                Reply::Later(Box::pin(async move {
                    match tokio::task::spawn_blocking(move || logs::list(&dir)).await {
                        Ok(files) => NodeManagerReply::ListLogsReply(ListLogsReply { files }).into(),
                        Err(e) => error_body(ErrorCode::Internal, e.to_string()),
                    }
                }))
            }
            NodeManagerRequest::ReadLog(req) => {
                let dir = logs::logs_dir(Path::new(&self.session_dir));
                Reply::Later(Box::pin(async move {
                    let range = logs::LogRange { start: req.range_start, end: req.range_end };
                    let read = move || logs::read(&dir, &req.name, req.tail_lines, req.offset, range);
                    match tokio::task::spawn_blocking(read).await {
                        Ok(Ok((data, end_offset))) => {
                            NodeManagerReply::ReadLogReply(ReadLogReply { data: data.into(), end_offset }).into()
                        }
                        Ok(Err(e @ logs::LogError::NotFound(_))) => error_body(ErrorCode::NotFound, e.to_string()),
                        Ok(Err(e @ logs::LogError::BadName(_))) => error_body(ErrorCode::Invalid, e.to_string()),
                        Ok(Err(e)) => error_body(ErrorCode::Internal, e.to_string()),
                        Err(e) => error_body(ErrorCode::Internal, e.to_string()),
                    }
                }))
            }
            NodeManagerRequest::Shutdown(_) => {
                self.shutdown.notify_one();
                Reply::Now(ack())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::RemoteNode;
    use crate::policy::NodeView;
    use crate::worker_pool::WorkerCommand;
    use rtd_common::proto::{
        gcs_reply, CommitBundle, ErrorReply, GetClusterView, KvGet, KvGetReply, PlacementGroupRemoved, PrepareBundle,
        ReadLog, RegisterClient, ReleaseBundle, RequestLease,
    };
    use rtd_common::rpc::Request;
    use rtd_plasma::{ObjectStore, PlasmaService, ShmRegion};
    use std::path::PathBuf;
    use std::sync::Mutex;

    fn cpus(amount: f64) -> ResourceSet {
        ResourceSet::from_floats([("CPU", amount)]).expect("valid test resources")
    }

    /// A raylet that never starts a worker: nothing that uses it waits for a lease.
    fn raylet(total: ResourceSet) -> Arc<Raylet> {
        let command = WorkerCommand {
            python: "/nonexistent".into(),
            raylet_socket: String::new(),
            session_dir: String::new(),
            node_ip: None,
            fork_from_template: false,
        };
        Raylet::new(NodeId::random(), total, command)
    }

    /// A GCS that records what it is asked: it answers a passed-on request with `reply`
    /// (an ack when unset) and gives every driver `job_id`.
    #[derive(Default)]
    struct FakeGcs {
        job_id: Bytes,
        reply: Option<Body>,
        requests: Mutex<Vec<(ConnId, gcs_request::Request)>>,
        jobs: Mutex<Vec<(ConnId, AddJob)>>,
        closed: Mutex<Vec<ConnId>>,
    }

    impl FakeGcs {
        fn requests(&self) -> Vec<(ConnId, gcs_request::Request)> {
            self.requests.lock().expect("fake lock").clone()
        }

        fn reported(&self) -> Vec<WorkerInfo> {
            self.requests()
                .into_iter()
                .filter_map(|(_, r)| match r {
                    gcs_request::Request::ReportWorker(ReportWorker { worker }) => worker,
                    _ => None,
                })
                .collect()
        }
    }

    impl GcsPort for FakeGcs {
        fn request(&self, conn: ConnId, request: gcs_request::Request) -> Reply {
            self.requests.lock().expect("fake lock").push((conn, request));
            Reply::Now(self.reply.clone().unwrap_or_else(|| gcs_reply::Reply::Ack(Ack {}).into()))
        }

        fn add_job(&self, conn: ConnId, job: AddJob) -> Pin<Box<dyn Future<Output = Result<Bytes, RpcError>> + Send>> {
            self.jobs.lock().expect("fake lock").push((conn, job));
            let job_id = self.job_id.clone();
            Box::pin(async move { Ok(job_id) })
        }

        fn disconnected(&self, conn: ConnId) {
            self.closed.lock().expect("fake lock").push(conn);
        }
    }

    /// A node service over a fake GCS, with a temp dir as its session dir and a real
    /// (empty) object store in it: nothing here pulls or frees objects, but the
    /// service holds a client of one.
    struct Node {
        service: NodeService<FakeGcs>,
        dir: PathBuf,
        store: tokio::task::JoinHandle<()>,
    }

    impl Node {
        async fn start(tag: &str, gcs: FakeGcs) -> Node {
            static N: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "rtd-raylet-service-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(logs::logs_dir(&dir)).expect("temp session dir");
            let shm = dir.join("plasma.shm");
            let region = Arc::new(ShmRegion::create(&shm, 1 << 20).expect("region"));
            let socket = dir.join("plasma.sock");
            let listener = rtd_common::rpc::bind(&socket).expect("bind the store's socket");
            let store = PlasmaService::new(ObjectStore::new(region, dir.join("spill")));
            let store = tokio::spawn(rtd_common::rpc::serve(listener, store));
            let socket = socket.display().to_string();
            let plasma = PlasmaClient::connect(&socket, &shm).await.expect("connect to the store");
            let raylet = raylet(cpus(2.0));
            let service = NodeService {
                node_id: raylet.node_id(),
                session_dir: dir.display().to_string(),
                plasma_socket: socket,
                shm_path: shm.display().to_string(),
                shm_size: 1 << 20,
                node_ip: None,
                raylet,
                plasma,
                peers: Default::default(),
                gcs,
                next_conn: AtomicU64::new(1),
                shutdown: Default::default(),
                user_metrics: Default::default(),
                processes: Default::default(),
                request_latencies: Default::default(),
            };
            Node { service, dir, store }
        }

        async fn ask(&self, conn: &mut ConnState, request: NodeManagerRequest) -> Body {
            answer(self.service.handle(conn, NodeRequest::NodeManager(request))).await
        }
    }

    impl Drop for Node {
        fn drop(&mut self) {
            self.store.abort();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    async fn answer(reply: Reply) -> Body {
        match reply {
            Reply::Now(body) => body,
            Reply::Later(fut) => fut.await,
            Reply::None => panic!("no reply to a request that has one"),
        }
    }

    /// The code of an error reply; panics on any other answer.
    fn error_code(body: &Body) -> ErrorCode {
        match body {
            Body::Error(ErrorReply { code, .. }) => ErrorCode::try_from(*code).expect("a known error code"),
            other => panic!("expected an error reply, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_driver_gets_its_job_from_the_gcs_and_its_disconnect_ends_the_job() {
        let gcs = FakeGcs { job_id: Bytes::from_static(b"job-7"), ..Default::default() };
        let node = Node::start("driver", gcs).await;
        let mut conn = node.service.connected();
        let id = conn.id;
        let register = RegisterClient {
            is_worker: false,
            pid: 4242,
            address: "/tmp/driver.sock".into(),
            entrypoint: "python script.py".into(),
            ..Default::default()
        };
        let body = node.ask(&mut conn, NodeManagerRequest::RegisterClient(register)).await;
        let reply = rtd_common::proto::RegisterClient::reply_from(body).expect("a RegisterClientReply");
        assert_eq!(reply.job_id, Bytes::from_static(b"job-7"));
        assert_eq!(reply.node_id, Bytes::from(node.service.node_id.to_vec()));
        assert_eq!(reply.session_dir, node.service.session_dir);
        let gcs = &node.service.gcs;
        let jobs = gcs.jobs.lock().expect("fake lock").clone();
        assert_eq!(jobs, vec![(id, AddJob { driver_pid: 4242, entrypoint: "python script.py".into() })]);
        let alive = gcs.reported();
        assert_eq!(alive.len(), 1, "{alive:?}");
        assert!(alive[0].is_alive && alive[0].is_driver && alive[0].pid == 4242, "{alive:?}");

        node.service.disconnected(conn);
        let requests = gcs.requests();
        assert!(
            requests.contains(&(
                id,
                gcs_request::Request::MarkJobFinished(MarkJobFinished { job_id: Bytes::from_static(b"job-7") })
            )),
            "{requests:?}"
        );
        let dead = gcs.reported().pop().expect("the driver reported again");
        assert_eq!(dead, WorkerInfo { is_alive: false, job_id: Bytes::from_static(b"job-7"), ..alive[0].clone() });
        assert_eq!(*gcs.closed.lock().expect("fake lock"), vec![id]);
    }

    #[tokio::test]
    async fn a_worker_with_a_bad_or_unknown_id_is_refused_and_not_reported() {
        let node = Node::start("worker", FakeGcs::default()).await;
        let mut conn = node.service.connected();
        for (worker_id, why) in
            [(Bytes::from_static(b"short"), "bad worker id"), (WorkerId::random().to_vec().into(), "unknown")]
        {
            let register = RegisterClient { is_worker: true, worker_id, pid: 7, ..Default::default() };
            let body = node.ask(&mut conn, NodeManagerRequest::RegisterClient(register)).await;
            assert_eq!(error_code(&body), ErrorCode::Invalid, "{why}: {body:?}");
            assert!(matches!(&body, Body::Error(e) if e.message.contains(why)), "{why}: {body:?}");
        }
        assert!(conn.worker.is_none() && conn.process.is_none());
        node.service.disconnected(conn);
        // Neither the refused registrations nor the close are the GCS's news.
        assert_eq!(node.service.gcs.requests(), vec![]);
        assert!(node.service.gcs.jobs.lock().expect("fake lock").is_empty());
    }

    #[tokio::test]
    async fn a_bundle_message_whose_group_is_not_a_group_id_is_invalid() {
        let node = Node::start("bundle", FakeGcs::default()).await;
        let mut conn = node.service.connected();
        for group in ["", "zz", "8a1f", "not a placement group"] {
            let group = group.to_string();
            let messages = [
                NodeManagerRequest::PrepareBundle(PrepareBundle {
                    group: group.clone(),
                    index: 0,
                    resources: cpus(1.0).to_fixed_map(),
                }),
                NodeManagerRequest::CommitBundle(CommitBundle { group: group.clone(), index: 0 }),
                NodeManagerRequest::ReleaseBundle(ReleaseBundle { group: group.clone(), index: 0 }),
                NodeManagerRequest::PlacementGroupRemoved(PlacementGroupRemoved { group: group.clone() }),
            ];
            for message in messages {
                let body = node.ask(&mut conn, message).await;
                assert_eq!(error_code(&body), ErrorCode::Invalid, "{group:?}: {body:?}");
            }
        }
        // Nothing was taken out of the node's resources.
        let own = node.service.raylet.cluster_view().into_iter().next().expect("this node");
        assert_eq!(own.available, cpus(2.0));
    }

    #[tokio::test]
    async fn read_log_refuses_a_name_outside_the_logs_dir_and_says_a_missing_file_is_not_found() {
        let node = Node::start("logs", FakeGcs::default()).await;
        let dir = Path::new(&node.service.session_dir);
        // A file beside the logs directory, which a path out of it would reach.
        std::fs::write(dir.join("secret"), "not a log").expect("write a file");
        std::fs::write(logs::logs_dir(dir).join("node.out"), "one\ntwo\n").expect("write a log");
        let mut conn = node.service.connected();
        let read = |name: &str| NodeManagerRequest::ReadLog(ReadLog { name: name.into(), ..Default::default() });
        for name in ["../secret", "/etc/passwd", "..", ""] {
            let body = node.ask(&mut conn, read(name)).await;
            assert_eq!(error_code(&body), ErrorCode::Invalid, "{name:?}: {body:?}");
        }
        let body = node.ask(&mut conn, read("worker-gone.out")).await;
        assert_eq!(error_code(&body), ErrorCode::NotFound, "{body:?}");
        let body = node.ask(&mut conn, read("node.out")).await;
        let reply = ReadLog::reply_from(body).expect("a ReadLogReply");
        assert_eq!((reply.data, reply.end_offset), (Bytes::from_static(b"one\ntwo\n"), 8));
    }

    #[tokio::test]
    async fn a_gcs_request_is_passed_on_untouched_and_its_reply_returned() {
        let canned: Body =
            gcs_reply::Reply::KvGetReply(KvGetReply { found: true, value: Bytes::from_static(b"v") }).into();
        let gcs = FakeGcs { reply: Some(canned.clone()), ..Default::default() };
        let node = Node::start("gcs", gcs).await;
        let mut conn = node.service.connected();
        let _other = node.service.connected();
        let request = gcs_request::Request::KvGet(KvGet { key: "some/key".into(), exists_only: false });
        let body = answer(node.service.handle(&mut conn, NodeRequest::Gcs(request.clone()))).await;
        assert_eq!(body, canned);
        assert_eq!(node.service.gcs.requests(), vec![(conn.id, request)]);
    }

    #[tokio::test]
    async fn a_lease_request_with_a_malformed_strategy_is_invalid() {
        let node = Node::start("lease", FakeGcs::default()).await;
        let mut conn = node.service.connected();
        let node_hex = node.service.node_id.hex();
        for affinity_node in ["zz", &node_hex[2..], &format!("{node_hex}00")] {
            let lease = RequestLease {
                resources: cpus(1.0).to_fixed_map(),
                affinity_node: affinity_node.into(),
                ..Default::default()
            };
            let body = node.ask(&mut conn, NodeManagerRequest::RequestLease(lease)).await;
            assert_eq!(error_code(&body), ErrorCode::Invalid, "{affinity_node:?}: {body:?}");
        }
        // No lease was granted or queued: the node's resources are all free.
        let own = node.service.raylet.cluster_view().into_iter().next().expect("this node");
        assert_eq!(own.available, cpus(2.0));
    }

    #[tokio::test]
    async fn the_gcss_actor_leases_outlive_the_connection_that_brought_them() {
        let node = Node::start("actor-lease", FakeGcs::default()).await;
        let mut replies = Vec::new();
        let mut conns = Vec::new();
        for dedicated in [true, false] {
            let mut conn = node.service.connected();
            let lease = RequestLease { resources: cpus(1.0).to_fixed_map(), dedicated, ..Default::default() };
            // No worker can start here: both requests wait (their replies kept awaited).
            replies.push(
                node.service.handle(&mut conn, NodeRequest::NodeManager(NodeManagerRequest::RequestLease(lease))),
            );
            conns.push(conn);
        }
        assert_eq!(node.service.raylet.pool_stats().pending_leases, 2);
        for conn in conns {
            node.service.disconnected(conn);
        }
        // The task lease goes with its connection; the actor lease is the GCS's and
        // stays, as an actor outlives the loss of its head.
        assert_eq!(node.service.raylet.pool_stats().pending_leases, 1);
        drop(replies);
    }

    #[tokio::test]
    async fn the_connected_processes_are_kept_for_a_registration_after_a_head_restart() {
        let node =
            Node::start("processes", FakeGcs { job_id: Bytes::from_static(b"\0\0\0\x07"), ..Default::default() }).await;
        let mut conn = node.service.connected();
        let register = RegisterClient { is_worker: false, pid: 99, ..Default::default() };
        node.ask(&mut conn, NodeManagerRequest::RegisterClient(register)).await;
        let live = node.service.processes.live();
        assert_eq!(live.len(), 1);
        assert!(live[0].is_driver && live[0].is_alive && live[0].pid == 99);
        node.service.disconnected(conn);
        assert!(node.service.processes.live().is_empty());
    }

    #[tokio::test]
    async fn the_cluster_view_shows_this_node_as_accounted_then_the_others_as_heard() {
        let raylet = raylet(cpus(2.0));
        let other = NodeView { node_id: NodeId::random(), total: cpus(4.0), available: cpus(3.0), alive: true };
        raylet.set_cluster(vec![RemoteNode { view: other.clone(), raylet_address: "127.0.0.1:1".into() }]);
        // A prepared bundle takes a CPU out of this node's free resources.
        let group = PlacementGroupId::from_hex("8a1f00000000000000000000000000000000").expect("valid test id");
        assert!(raylet.prepare_bundle(group, 0, &cpus(1.0)));

        // Through a frame and back, as a client's typed call receives it.
        let body: Body = NodeManagerReply::GetClusterViewReply(cluster_view(&raylet)).into();
        let reply = GetClusterView::reply_from(body).expect("a GetClusterViewReply");
        let seen: Vec<(Bytes, bool, ResourceSet, ResourceSet)> = reply
            .nodes
            .into_iter()
            .map(|n| {
                let amounts = |m: Option<ResourceMap>| ResourceSet::from_fixed_map(&m.unwrap_or_default().amounts);
                (n.node_id, n.alive, amounts(n.total), amounts(n.available))
            })
            .collect();
        let own = raylet.node_id().to_vec().into();
        let expected =
            vec![(own, true, cpus(2.0), cpus(1.0)), (other.node_id.to_vec().into(), true, cpus(4.0), cpus(3.0))];
        assert_eq!(seen, expected);
    }
}
