//! What a node's raylet answers on its socket and node link: its own requests
//! (registration, leases, blocked workers, placement-group bundles, object transfer)
//! and, through its GCS client, the GCS's: the head serves them itself; another node
//! forwards them to the head, so a client never needs to know which node hosts the GCS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rtd_common::proto::node_manager_reply::Reply as NodeManagerReply;
use rtd_common::proto::node_manager_request::Request as NodeManagerRequest;
use rtd_common::proto::{frame::Body, gcs_request, Ack, ErrorCode, FreeObjects, GcsRequest, RegisterClientReply};
use rtd_common::rpc::{error_body, ConnectionCache, Reply, Service};
use rtd_common::{NodeId, ObjectId, PlacementGroupId, ResourceSet, WorkerId};
use rtd_gcs::client::GcsClient;
use rtd_object_manager::{pull_object, PullError};
use rtd_plasma::PlasmaClient;
use tokio::sync::Notify;

use crate::lease::{ConnId, LeaseRequest, Raylet};
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
}

/// The answer to a bundle message whose group is not a placement group's hex id.
fn not_a_group(group: &str) -> Reply {
    Reply::Now(error_body(ErrorCode::Invalid, format!("{group:?} is not a placement group id")))
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

impl Service for NodeService {
    const NAME: &'static str = "the node daemon";
    type Request = NodeRequest;
    type State = ConnState;

    fn connected(&self) -> ConnState {
        ConnState { id: self.next_conn.fetch_add(1, Ordering::Relaxed), worker: None }
    }

    fn handle(&self, conn: &mut ConnState, request: NodeRequest) -> Reply {
        match request {
            NodeRequest::NodeManager(request) => self.handle_own(conn, request),
            NodeRequest::Gcs(request) => self.gcs.request(conn.id, request),
        }
    }

    fn disconnected(&self, conn: ConnState) {
        self.gcs.disconnected(conn.id);
        self.raylet.client_disconnected(conn.id, conn.worker);
    }
}

impl NodeService {
    /// Answers one of the raylet's own requests.
    fn handle_own(&self, conn: &mut ConnState, request: NodeManagerRequest) -> Reply {
        match request {
            NodeManagerRequest::RegisterClient(reg) => {
                if reg.is_worker {
                    let Ok(worker_id) = WorkerId::from_bytes(&reg.worker_id) else {
                        return Reply::Now(error_body(ErrorCode::Invalid, "bad worker id"));
                    };
                    if !self.raylet.register_worker(worker_id, reg.address) {
                        return Reply::Now(error_body(ErrorCode::Invalid, "unknown or duplicate worker id"));
                    }
                    conn.worker = Some(worker_id);
                    return Reply::Now(NodeManagerReply::RegisterClientReply(self.register_reply(Bytes::new())).into());
                }
                // A driver: its job id comes from the GCS.
                let mut reply = self.register_reply(Bytes::new());
                let job_id = self.gcs.next_job_id();
                Reply::Later(Box::pin(async move {
                    match job_id.await {
                        Ok(job_id) => {
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
            NodeManagerRequest::Shutdown(_) => {
                self.shutdown.notify_one();
                Reply::Now(ack())
            }
        }
    }
}
