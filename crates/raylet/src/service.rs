//! What a node's raylet answers on its socket and node link: its own requests
//! (registration, leases, blocked workers, placement-group bundles, object transfer,
//! its log files) and, through its GCS client, the GCS's: the head serves them itself;
//! another node forwards them to the head, so a client never needs to know which node
//! hosts the GCS.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use rtd_common::proto::node_manager_reply::Reply as NodeManagerReply;
use rtd_common::proto::node_manager_request::Request as NodeManagerRequest;
use rtd_common::proto::{
    frame::Body, gcs_request, Ack, AddJob, ClusterViewNode, ErrorCode, FreeObjects, GcsRequest, GetClusterViewReply,
    ListLogsReply, MarkJobFinished, ReadLogReply, RegisterClientReply, ReportWorker, ResourceMap, WorkerInfo,
};
use rtd_common::rpc::{error_body, ConnectionCache, Reply, Service};
use rtd_common::{NodeId, ObjectId, PlacementGroupId, ResourceSet, WorkerId};
use rtd_gcs::client::GcsClient;
use rtd_metrics::UserMetrics;
use rtd_object_manager::{pull_object, PullError};
use rtd_plasma::PlasmaClient;
use tokio::sync::Notify;

use crate::lease::{ConnId, LeaseRequest, Raylet};
use crate::logs;
use crate::policy::Strategy;

pub struct NodeService {
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
    pub gcs: GcsClient,
    pub next_conn: AtomicU64,
    pub shutdown: Arc<Notify>,
    /// What this node's processes report of `rtd.util.metrics`, exported on `/metrics`.
    pub user_metrics: Arc<UserMetrics>,
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

impl NodeService {
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

impl NodeService {
    /// A message for the GCS whose answer nobody waits for.
    fn tell_gcs(&self, conn: ConnId, request: gcs_request::Request) {
        if let Reply::Later(fut) = self.gcs.request(conn, request) {
            tokio::spawn(fut);
        }
    }

    fn report_process(&self, conn: ConnId, worker: WorkerInfo) {
        self.tell_gcs(conn, gcs_request::Request::ReportWorker(ReportWorker { worker: Some(worker) }));
    }
}

impl Service for NodeService {
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
        match request {
            NodeRequest::NodeManager(request) => self.handle_own(conn, request),
            NodeRequest::Gcs(request) => self.gcs.request(conn.id, request),
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

impl NodeService {
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
                let request = LeaseRequest {
                    resources: ResourceSet::from_fixed_map(&req.resources),
                    strategy,
                    no_spillback: req.no_spillback,
                    dedicated: req.dedicated,
                    preferred: NodeId::from_bytes(&req.preferred_node).ok(),
                };
                let rx = self.raylet.request_lease(conn.id, request);
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
            NodeManagerRequest::GetClusterView(_) => {
                Reply::Now(NodeManagerReply::GetClusterViewReply(cluster_view(&self.raylet)).into())
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
                    let read = move || logs::read(&dir, &req.name, req.tail_lines, req.offset);
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
    use rtd_common::proto::GetClusterView;
    use rtd_common::rpc::Request;

    fn cpus(amount: f64) -> ResourceSet {
        ResourceSet::from_floats([("CPU", amount)]).expect("valid test resources")
    }

    #[tokio::test]
    async fn the_cluster_view_shows_this_node_as_accounted_then_the_others_as_heard() {
        // No worker is ever started: nothing here asks for a lease.
        let command = WorkerCommand {
            python: "/nonexistent".into(),
            raylet_socket: String::new(),
            session_dir: String::new(),
            node_ip: None,
            fork_from_template: false,
        };
        let raylet = Raylet::new(NodeId::random(), cpus(2.0), command);
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
