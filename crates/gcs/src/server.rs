//! The GCS as the head node serves it: the tables (`crate::Gcs`), the actor and
//! placement-group managers, and how they reach the cluster's raylets — this node's
//! in-process ([`LocalRaylet`]), other nodes' over gRPC at their TCP address. Nodes
//! join with `RegisterNode` and keep reporting their free resources; one that stops
//! (its connection closes or its reports stop for `RTD_NODE_TIMEOUT_MS`) is declared
//! dead, its actors restart elsewhere and its placement-group bundles are placed again.
//!
//! The tables are written through to a store (`crate::store`) and read back when the
//! head starts again after a crash; a request is answered only once what it changed
//! is durable there.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rtd_common::cluster_kv::SESSION_NAME_KEY;
use rtd_common::proto::gcs_reply::Reply as GcsReply;
use rtd_common::proto::gcs_request::Request as GcsRequest;
use rtd_common::proto::{
    request_lease_reply::Result as LeaseResult, Ack, AddJob, AddJobReply, CommitBundle, ErrorCode, ErrorReply,
    GetNodesReply, GetTimelineReply, JobInfo, KillLeasedWorker, KvGetReply, ListActorsReply, ListPlacementGroupsReply,
    NodeInfo, PlacementGroupInfo, PlacementGroupRemoved, PrepareBundle, PushTask, RegisterNode, ReleaseBundle,
    RequestLease, RequestLeaseReply, ResourceMap, ShrinkLease, TaskEvent, WorkerInfo,
};
use rtd_common::proto::{ActorState, PlacementGroupState};
use rtd_common::rpc::{error_body, error_reply, ConnectionCache, Reply, Request, RpcClient, RpcError};
use rtd_common::scheduling::{NodeView, Strategy};
use rtd_common::{ActorId, NodeId, PlacementGroupId, ResourceSet};
use tokio::sync::oneshot;

use crate::actor_manager::{ActorManager, ActorRecord, CreationFuture, LeaseError, LeaseFuture, WorkerLeaser};
use crate::placement_group_manager::{BoxFuture, BundleReserver, PlacementGroupManager};
use crate::store::records::Restored;
use crate::store::OpenedStore;
use crate::task_table::{TaskStateCount, TaskTable};
use crate::timeline::chrome_trace;
use crate::{Gcs, NodeUsage};

/// Identifies one client connection of the daemon that hosts the GCS.
pub type ConnId = u64;

/// The head's own raylet, which shares the GCS's process and is called directly
/// rather than over a connection. A trait, so that the GCS does not depend on the
/// raylet crate: in Ray's diagram the raylet uses the GCS, never the reverse. It holds
/// exactly the raylet calls the GCS makes (leases for actors, bundle two-phase commit)
/// and what the GCS reads or tells in place of the head's heartbeat.
pub trait LocalRaylet: Send + Sync {
    fn node_id(&self) -> NodeId;
    /// A dedicated worker lease for an actor, owned by the GCS (not by a connection);
    /// answered with the raylet's decision or why there is none.
    /// `runtime_env` is the actor's environment as canonical JSON (empty: none).
    fn request_actor_lease(
        &self,
        resources: ResourceSet,
        strategy: Strategy,
        runtime_env: &str,
    ) -> oneshot::Receiver<Result<RequestLeaseReply, ErrorReply>>;
    fn shrink_lease(&self, lease_id: u64, keep: &ResourceSet);
    fn kill_leased_worker(&self, lease_id: u64);
    /// Told which actor lease was lost when its worker process exits.
    fn set_lease_lost_hook(&self, hook: Box<dyn Fn(u64) + Send + Sync>);
    fn prepare_bundle(&self, group: PlacementGroupId, index: u32, resources: &ResourceSet) -> bool;
    fn commit_bundle(&self, group: PlacementGroupId, index: u32);
    fn return_bundle(&self, group: PlacementGroupId, index: u32);
    fn group_removed(&self, group: PlacementGroupId);
    /// (total, free) amounts of the resources named in `wanted`, as of now.
    fn view_of(&self, wanted: &ResourceSet) -> (ResourceSet, ResourceSet);
    /// What this node would report in a heartbeat, as of now.
    fn usage(&self) -> NodeUsage;
    /// The cluster's nodes as the GCS's table holds them.
    fn set_cluster(&self, nodes: &[NodeInfo]);
}

/// The cluster's raylets as the GCS reaches them.
struct Raylets {
    local_id: NodeId,
    local: Arc<dyn LocalRaylet>,
    tables: Arc<Gcs>,
    peers: Arc<ConnectionCache>,
}

impl Raylets {
    fn address_of(&self, node: &NodeId) -> Option<String> {
        self.tables.with_nodes(|nodes| {
            nodes.iter().find(|n| n.node_id.as_ref() == node.as_bytes() && n.alive).map(|n| n.raylet_address.clone())
        })
    }

    /// Sends a request to another node's raylet; `Err` with why it failed.
    fn call_remote<R: Request>(&self, node: NodeId, request: R) -> BoxFuture<Result<R::Reply, String>> {
        let address = self.address_of(&node);
        let peers = self.peers.clone();
        Box::pin(async move {
            let address = address.ok_or_else(|| format!("node {node} is not alive"))?;
            let client = peers.get(&address).await.map_err(|e| e.to_string())?;
            client.request(request).await.map_err(|e| e.to_string())
        })
    }

    fn send_remote<R: Request>(&self, node: NodeId, request: R) {
        let call = self.call_remote(node, request);
        tokio::spawn(async move {
            if let Err(e) = call.await {
                tracing::warn!("request to a raylet failed: {e}");
            }
        });
    }
}

impl WorkerLeaser for Raylets {
    fn lease(&self, resources: ResourceSet, strategy: Strategy, runtime_env: &str) -> LeaseFuture {
        let rx = self.local.request_actor_lease(resources.clone(), strategy, runtime_env);
        let runtime_env = runtime_env.to_string();
        let local_id = self.local_id;
        let peers = self.peers.clone();
        Box::pin(async move {
            match rx.await {
                Ok(Ok(r)) => match r.result {
                    Some(LeaseResult::Granted(g)) => Ok((local_id, g)),
                    Some(LeaseResult::Spillback(to)) => {
                        let node = NodeId::from_bytes(&to.node_id).map_err(|e| LeaseError::Refused(e.to_string()))?;
                        let client = peers.get(&to.raylet_address).await?;
                        let request = RequestLease {
                            resources: resources.to_fixed_map(),
                            no_spillback: true,
                            dedicated: true,
                            runtime_env,
                            ..Default::default()
                        };
                        let reply = client.request(request).await.map_err(|e| match e {
                            RpcError::Remote { code: ErrorCode::RuntimeEnvSetupFailed, message } => {
                                LeaseError::RuntimeEnvSetup(message)
                            }
                            other => LeaseError::Rpc(other),
                        })?;
                        match reply.result {
                            Some(LeaseResult::Granted(g)) => Ok((node, g)),
                            _ => Err(LeaseError::Refused(format!("node {node} could not grant the lease"))),
                        }
                    }
                    Some(LeaseResult::Infeasible(i)) => Err(LeaseError::Infeasible(i.message)),
                    None => Err(LeaseError::Refused("an empty lease reply".into())),
                },
                Ok(Err(e)) if e.code() == ErrorCode::RuntimeEnvSetupFailed => {
                    Err(LeaseError::RuntimeEnvSetup(e.message))
                }
                Ok(Err(e)) => Err(LeaseError::Refused(e.message)),
                Err(_) => Err(LeaseError::ShuttingDown),
            }
        })
    }

    fn shrink(&self, node: NodeId, lease_id: u64, keep: ResourceSet) {
        if node == self.local_id {
            self.local.shrink_lease(lease_id, &keep);
        } else {
            self.send_remote(node, ShrinkLease { lease_id, keep: keep.to_fixed_map() });
        }
    }

    fn kill(&self, node: NodeId, lease_id: u64) {
        if node == self.local_id {
            self.local.kill_leased_worker(lease_id);
        } else {
            self.send_remote(node, KillLeasedWorker { lease_id });
        }
    }

    fn run_constructor(&self, worker_address: &str, task: PushTask) -> CreationFuture {
        let address = worker_address.to_string();
        Box::pin(async move {
            // A connection of its own, closed once the constructor has answered: the
            // GCS does not talk to the actor after that.
            RpcClient::connect(&address).await?.request(task).await
        })
    }
}

impl BundleReserver for Raylets {
    fn group_removed(&self, node: NodeId, group: PlacementGroupId) -> BoxFuture<()> {
        if node == self.local_id {
            self.local.group_removed(group);
            return Box::pin(async {});
        }
        let call = self.call_remote(node, PlacementGroupRemoved { group: group.hex() });
        Box::pin(async move {
            let _ = call.await;
        })
    }

    fn nodes(&self, wanted: &ResourceSet) -> Vec<NodeView> {
        self.tables.with_nodes(|nodes| {
            nodes
                .iter()
                .filter(|n| n.alive)
                .filter_map(|n| {
                    let node_id = NodeId::from_bytes(&n.node_id).ok()?;
                    let (total, available) = if node_id == self.local_id {
                        self.local.view_of(wanted)
                    } else {
                        (resources_named(&n.total, wanted), resources_named(&n.available, wanted))
                    };
                    Some(NodeView { node_id, total, available, alive: true })
                })
                .collect()
        })
    }

    fn prepare(&self, node: NodeId, group: PlacementGroupId, index: u32, bundle: ResourceSet) -> BoxFuture<bool> {
        if node == self.local_id {
            let ok = self.local.prepare_bundle(group, index, &bundle);
            return Box::pin(async move { ok });
        }
        let prepare = PrepareBundle { group: group.hex(), index, resources: bundle.to_fixed_map() };
        let call = self.call_remote(node, prepare);
        Box::pin(async move { call.await.is_ok() })
    }

    fn commit(&self, node: NodeId, group: PlacementGroupId, index: u32) -> BoxFuture<()> {
        if node == self.local_id {
            self.local.commit_bundle(group, index);
            return Box::pin(async {});
        }
        let call = self.call_remote(node, CommitBundle { group: group.hex(), index });
        Box::pin(async move {
            let _ = call.await;
        })
    }

    fn release(&self, node: NodeId, group: PlacementGroupId, index: u32) -> BoxFuture<()> {
        if node == self.local_id {
            self.local.return_bundle(group, index);
            return Box::pin(async {});
        }
        let call = self.call_remote(node, ReleaseBundle { group: group.hex(), index });
        Box::pin(async move {
            let _ = call.await;
        })
    }
}

/// The amounts in `map` of the resources named in `wanted` only.
fn resources_named(map: &Option<ResourceMap>, wanted: &ResourceSet) -> ResourceSet {
    let mut out = ResourceSet::new();
    if let Some(map) = map {
        for (name, _) in wanted.iter() {
            out.set(name, map.amounts.get(name).copied().unwrap_or(0));
        }
    }
    out
}

pub struct GcsServer {
    node_id: NodeId,
    raylet: Arc<dyn LocalRaylet>,
    tables: Arc<Gcs>,
    actors: Arc<ActorManager>,
    groups: Arc<PlacementGroupManager>,
    /// Connections over which a node registered: their close means the node is gone.
    node_conns: Mutex<HashMap<ConnId, NodeId>>,
    task_table: TaskTable,
}

fn now(reply: GcsReply) -> Reply {
    Reply::Now(reply.into())
}

/// A placement group id off the wire; a wrong length is answered as invalid.
fn placement_group_id(bytes: &[u8]) -> Result<PlacementGroupId, ErrorReply> {
    PlacementGroupId::from_bytes(bytes).map_err(|e| error_reply(ErrorCode::Invalid, e.to_string()))
}

fn node_timeout() -> Duration {
    Duration::from_millis(std::env::var("RTD_NODE_TIMEOUT_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000))
}

impl GcsServer {
    /// Starts the GCS for the head node `own` over `opened`: a fresh cluster named
    /// `session_name` if the store was empty, else the cluster the store holds (see
    /// [`GcsServer::restore`]).
    pub fn start(
        own: NodeInfo,
        raylet: Arc<dyn LocalRaylet>,
        peers: Arc<ConnectionCache>,
        opened: OpenedStore,
        session_name: &str,
    ) -> Arc<Self> {
        let OpenedStore { store, restored, fresh } = opened;
        let store = Arc::new(store);
        let node_id = raylet.node_id();
        let tables = Arc::new(Gcs::with_store(store.clone()));
        let raylets = Arc::new(Raylets { local_id: node_id, local: raylet.clone(), tables: tables.clone(), peers });
        let actors = ActorManager::new(raylets.clone(), store.clone());
        let hook_actors = actors.clone();
        raylet.set_lease_lost_hook(Box::new(move |lease_id| hook_actors.lease_lost(node_id, lease_id)));
        let groups = PlacementGroupManager::new(raylets, store);
        let server = Arc::new(Self {
            node_id,
            raylet,
            tables,
            actors,
            groups,
            node_conns: Mutex::new(HashMap::new()),
            task_table: TaskTable::default(),
        });
        server.restore(restored);
        server.tables.register_node(own);
        if fresh {
            server.tables.kv_put(SESSION_NAME_KEY.into(), Bytes::copy_from_slice(session_name.as_bytes()));
        } else {
            tracing::info!("the GCS resumed the cluster held in {}", server.tables.store().describe());
        }
        // Keep the head's raylet's view of the cluster fresh, publish the head's own
        // free resources, and declare silent nodes dead.
        let weak = Arc::downgrade(&server);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Some(server) = weak.upgrade() else { return };
                server.tables.report(server.node_id.as_bytes(), server.raylet.usage());
                server.raylet.set_cluster(&server.tables.nodes());
                for node in server.tables.silent_nodes(node_timeout(), &server.node_id) {
                    tracing::warn!("node {node} stopped reporting; marking it dead");
                    server.node_dead(node);
                }
            }
        });
        server
    }

    /// Puts back what a restarted head's store held: the tables, then the actors and
    /// placement groups. The previous head node is declared dead at once: its process
    /// tree, with its workers and bundles, went with it.
    fn restore(&self, restored: Restored) {
        self.tables.restore(&restored);
        self.actors.restore(restored.actors);
        self.groups.restore(restored.groups);
        let previous_heads: Vec<NodeId> = restored
            .nodes
            .iter()
            .filter(|n| n.is_head && n.alive)
            .filter_map(|n| NodeId::from_bytes(&n.node_id).ok())
            .collect();
        for node in previous_heads {
            tracing::warn!("node {node} was the previous head; marking it dead");
            self.node_dead(node);
        }
    }

    /// The cluster's id (the session name of the head's first start).
    pub fn cluster_id(&self) -> String {
        self.tables.kv_get(SESSION_NAME_KEY).map(|id| String::from_utf8_lossy(&id).into_owned()).unwrap_or_default()
    }

    /// Resolves once every change made so far is durable in the store.
    pub fn durable(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.tables.store().durable()
    }

    fn node_dead(&self, node: NodeId) {
        if !self.tables.mark_dead(&node) {
            return;
        }
        self.tables.finish_jobs_of_node(&node);
        self.raylet.set_cluster(&self.tables.nodes());
        self.actors.node_dead(node);
        let groups = self.groups.clone();
        tokio::spawn(async move {
            groups.node_dead(node).await;
        });
    }

    /// The cluster view, the answer to a node's registration and heartbeats.
    fn cluster_view(&self) -> GcsReply {
        GcsReply::GetNodesReply(GetNodesReply { nodes: self.nodes() })
    }

    /// Cluster nodes, with this node's free resources as of now.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let mut nodes = self.tables.nodes();
        for node in nodes.iter_mut() {
            if node.node_id.as_ref() == self.node_id.as_bytes() {
                let usage = self.raylet.usage();
                node.available = Some(usage.available);
                node.total = Some(usage.total);
                node.pending_demands = usage.pending_demands;
            }
        }
        nodes
    }

    /// Records the job of a driver that registered over `conn` (directly on the head,
    /// or through another node's link) and returns its id as it goes on the wire.
    pub fn add_job(&self, conn: ConnId, job: AddJob) -> Bytes {
        let job_id: Bytes = self.tables.next_job_id().to_vec().into();
        let node = self.node_conns.lock().unwrap_or_else(|p| p.into_inner()).get(&conn).copied();
        let node = node.unwrap_or(self.node_id);
        let driver_ip = self.tables.with_nodes(|nodes| {
            nodes.iter().find(|n| n.node_id.as_ref() == node.as_bytes()).map(|n| n.address.clone()).unwrap_or_default()
        });
        self.tables.add_job(JobInfo {
            job_id: job_id.clone(),
            driver_pid: job.driver_pid,
            driver_node_id: node.to_vec().into(),
            driver_ip,
            entrypoint: job.entrypoint,
            ..Default::default()
        });
        job_id
    }

    pub fn jobs(&self) -> Vec<JobInfo> {
        self.tables.jobs()
    }

    /// Worker and driver processes, alive and recently dead.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.tables.workers()
    }

    /// Every task attempt held, and how many were dropped (see `task_table`).
    pub fn task_events(&self) -> (Vec<TaskEvent>, u64) {
        self.task_table.snapshot()
    }

    /// Task attempts held by state (`ray_tasks`).
    pub fn task_counts(&self) -> HashMap<TaskStateCount, u64> {
        self.task_table.count_by_state()
    }

    /// Actors by class name and state (`ray_actors`).
    pub fn actor_counts(&self) -> HashMap<(String, ActorState), u64> {
        let mut counts = HashMap::new();
        for actor in self.actors.list() {
            let state = actor.state();
            let class = actor.options.map(|o| o.class_name).unwrap_or_default();
            *counts.entry((class, state)).or_insert(0) += 1;
        }
        counts
    }

    /// Placement groups by state (`ray_placement_groups`).
    pub fn placement_group_counts(&self) -> HashMap<PlacementGroupState, u64> {
        let mut counts = HashMap::new();
        for group in self.groups.list() {
            *counts.entry(group.state()).or_insert(0) += 1;
        }
        counts
    }

    /// The tasks that ran, as Chrome-trace events.
    pub fn timeline(&self) -> Vec<serde_json::Value> {
        let names = self.tables.with_nodes(|nodes| {
            nodes.iter().map(|n| (n.node_id.to_vec(), n.address.clone())).collect::<BTreeMap<_, _>>()
        });
        chrome_trace(&self.task_table.snapshot().0, &names)
    }

    /// Every actor, for the state API.
    pub fn actors(&self) -> Vec<ActorRecord> {
        self.actors.records()
    }

    /// Every placement group, for the state API.
    pub fn placement_groups(&self) -> Vec<PlacementGroupInfo> {
        self.groups.list()
    }

    /// Publishes `value` under `key` in the GCS's KV store, where every client reads it.
    pub fn kv_put(&self, key: &str, value: bytes::Bytes) {
        self.tables.kv_put(key.to_string(), value);
    }

    /// The value under `key` in the GCS's KV store (job records, runtime_env packages).
    pub fn kv_get(&self, key: &str) -> Option<bytes::Bytes> {
        self.tables.kv_get(key)
    }

    /// Removes `key` from the GCS's KV store; whether it was there.
    pub fn kv_delete(&self, key: &str) -> bool {
        self.tables.kv_delete(key)
    }

    /// The KV store's keys that start with `prefix`, sorted.
    pub fn kv_keys(&self, prefix: &str) -> Vec<String> {
        self.tables.kv_keys(prefix)
    }

    /// Answers a GCS request from the connection `conn`, once what it changed is
    /// durable in the store (group commit: waiting requests share one transaction).
    pub fn handle(self: &Arc<Self>, conn: ConnId, request: GcsRequest) -> Reply {
        let store = self.tables.store();
        match self.answer(conn, request) {
            Reply::Now(body) if store.has_uncommitted() => {
                let durable = store.durable();
                Reply::Later(Box::pin(async move {
                    durable.await;
                    body
                }))
            }
            Reply::Later(answer) => {
                let store = store.clone();
                Reply::Later(Box::pin(async move {
                    let body = answer.await;
                    store.durable().await;
                    body
                }))
            }
            reply => reply,
        }
    }

    /// The answer to a request, as the tables have it now.
    fn answer(self: &Arc<Self>, conn: ConnId, request: GcsRequest) -> Reply {
        match request {
            GcsRequest::AddJob(job) => now(GcsReply::AddJobReply(AddJobReply { job_id: self.add_job(conn, job) })),
            GcsRequest::MarkJobFinished(done) => {
                self.tables.job_finished(&done.job_id);
                now(GcsReply::Ack(Ack {}))
            }
            GcsRequest::ReportWorker(report) => {
                if let Some(worker) = report.worker {
                    self.tables.report_worker(worker);
                }
                now(GcsReply::Ack(Ack {}))
            }
            GcsRequest::AddTaskEvents(batch) => {
                // Folding a second's worth of a busy worker's events takes milliseconds:
                // not on this connection's read loop, where the requests behind it (a
                // driver's leases) would wait. The ack still comes once they are in.
                let gcs = self.clone();
                Reply::Later(Box::pin(async move {
                    match tokio::task::spawn_blocking(move || gcs.task_table.add(batch)).await {
                        Ok(Ok(())) => GcsReply::Ack(Ack {}).into(),
                        Ok(Err(e)) => error_body(ErrorCode::Invalid, e.to_string()),
                        Err(e) => error_body(ErrorCode::Internal, format!("folding task events failed: {e}")),
                    }
                }))
            }
            GcsRequest::GetTimeline(_) => now(GcsReply::GetTimelineReply(GetTimelineReply {
                trace_json: serde_json::Value::Array(self.timeline()).to_string(),
            })),
            GcsRequest::GetNodes(_) => now(self.cluster_view()),
            GcsRequest::RegisterNode(reg) => self.register_node(conn, reg),
            GcsRequest::ReportResources(report) => {
                let usage = NodeUsage {
                    total: report.total.unwrap_or_default(),
                    available: report.available.unwrap_or_default(),
                    pending_demands: report.pending_demands,
                };
                if self.tables.report(&report.node_id, usage) {
                    now(self.cluster_view())
                } else {
                    Reply::Now(error_body(ErrorCode::NotFound, "this node is not (or no longer) part of the cluster"))
                }
            }
            GcsRequest::LeaseLost(lost) => {
                if let Ok(node) = NodeId::from_bytes(&lost.node_id) {
                    self.actors.lease_lost(node, lost.lease_id);
                }
                Reply::None
            }
            GcsRequest::KvPut(kv) => {
                self.tables.kv_put(kv.key, kv.value);
                now(GcsReply::Ack(Ack {}))
            }
            GcsRequest::KvGet(kv) => now(GcsReply::KvGetReply(match self.tables.kv_get(&kv.key) {
                Some(_) if kv.exists_only => KvGetReply { found: true, value: Default::default() },
                Some(value) => KvGetReply { found: true, value },
                None => KvGetReply { found: false, value: Default::default() },
            })),
            GcsRequest::CreateActor(req) => match self.actors.create(conn, req) {
                Ok(info) => now(GcsReply::ActorInfo(info)),
                Err(e) => Reply::Now(error_body(ErrorCode::Invalid, e.to_string())),
            },
            GcsRequest::ActorArgsReady(ready) => match ready.spec.map(|spec| self.actors.args_ready(spec)) {
                Some(Ok(())) => now(GcsReply::Ack(Ack {})),
                Some(Err(e)) => Reply::Now(error_body(ErrorCode::Invalid, e.to_string())),
                None => Reply::Now(error_body(ErrorCode::Invalid, "no creation task")),
            },
            GcsRequest::WaitActor(w) => {
                match ActorId::from_bytes(&w.actor_id).ok().and_then(|id| self.actors.wait(&id, w.after_epoch)) {
                    Some(rx) => Reply::Later(Box::pin(async move {
                        match rx.await {
                            Ok(info) => GcsReply::ActorInfo(info).into(),
                            Err(_) => error_body(ErrorCode::Internal, "the GCS is shutting down"),
                        }
                    })),
                    None => Reply::Now(error_body(ErrorCode::NotFound, "no such actor")),
                }
            }
            GcsRequest::GetNamedActor(g) => match self.actors.get_named(&g.namespace, &g.name) {
                Some(info) => now(GcsReply::ActorInfo(info)),
                None => Reply::Now(error_body(
                    ErrorCode::NotFound,
                    format!("Failed to look up actor with name '{}' in namespace '{}'", g.name, g.namespace),
                )),
            },
            GcsRequest::KillActor(k) => {
                let killed = ActorId::from_bytes(&k.actor_id)
                    .map(|id| self.actors.kill(&id, k.no_restart, &k.cause))
                    .unwrap_or(false);
                if killed {
                    now(GcsReply::Ack(Ack {}))
                } else {
                    Reply::Now(error_body(ErrorCode::NotFound, "no such actor"))
                }
            }
            GcsRequest::ListActors(_) => now(GcsReply::ListActorsReply(ListActorsReply { actors: self.actors.list() })),
            GcsRequest::CreatePlacementGroup(req) => {
                let groups = self.groups.clone();
                Reply::Later(Box::pin(async move {
                    match groups.create(conn, req).await {
                        Ok(info) => GcsReply::PlacementGroupInfo(info).into(),
                        Err(e) => error_body(ErrorCode::Invalid, e.to_string()),
                    }
                }))
            }
            GcsRequest::WaitPlacementGroup(w) => match placement_group_id(&w.pg_id) {
                Err(invalid) => Reply::Now(invalid.into()),
                Ok(id) => match self.groups.wait(id) {
                    Some(rx) => Reply::Later(Box::pin(async move {
                        match rx.await {
                            Ok(info) => GcsReply::PlacementGroupInfo(info).into(),
                            Err(_) => error_body(ErrorCode::Internal, "the GCS is shutting down"),
                        }
                    })),
                    None => Reply::Now(error_body(ErrorCode::NotFound, "no such placement group")),
                },
            },
            GcsRequest::RemovePlacementGroup(r) => {
                let id = match placement_group_id(&r.pg_id) {
                    Ok(id) => id,
                    Err(invalid) => return Reply::Now(invalid.into()),
                };
                let server = self.clone();
                Reply::Later(Box::pin(async move {
                    match server.groups.remove(id).await {
                        Some(group) => {
                            server.actors.end_actors_in_group(group);
                            GcsReply::Ack(Ack {}).into()
                        }
                        None => error_body(ErrorCode::NotFound, "no such placement group"),
                    }
                }))
            }
            GcsRequest::GetPlacementGroup(g) => {
                // An empty id asks by name.
                let id = match (!g.pg_id.is_empty()).then(|| placement_group_id(&g.pg_id)).transpose() {
                    Ok(id) => id,
                    Err(invalid) => return Reply::Now(invalid.into()),
                };
                match self.groups.get(id, &g.name) {
                    Some(info) => now(GcsReply::PlacementGroupInfo(info)),
                    None => Reply::Now(error_body(ErrorCode::NotFound, "no such placement group")),
                }
            }
            GcsRequest::ListPlacementGroups(_) => {
                now(GcsReply::ListPlacementGroupsReply(ListPlacementGroupsReply { groups: self.groups.list() }))
            }
        }
    }

    /// A node joins over `conn`, or one that lost its head registers again under the
    /// same id (`reconnecting`) once it reaches this GCS (restarted, or the same one
    /// over a new connection). Either way it is taken as it is, not as a new node
    /// that holds nothing: the actors and placement-group bundles the tables place
    /// there stay, checked against what the node says it holds. Only a node this GCS
    /// declared dead is refused: it must not come back under the same id.
    fn register_node(self: &Arc<Self>, conn: ConnId, mut reg: RegisterNode) -> Reply {
        let Some(node) = reg.node.take() else {
            return Reply::Now(error_body(ErrorCode::Invalid, "RegisterNode without a node"));
        };
        let id = match NodeId::from_bytes(&node.node_id) {
            Ok(id) => id,
            Err(e) => return Reply::Now(error_body(ErrorCode::Invalid, format!("RegisterNode: {e}"))),
        };
        if self.tables.declared_dead(&id) {
            return Reply::Now(error_body(
                ErrorCode::Invalid,
                format!("node {id} was declared dead and cannot rejoin under the same id; start it again to join as a new node"),
            ));
        }
        {
            // A connection it used before is not this node's any more: its close must
            // not declare the node dead.
            let mut conns = self.node_conns.lock().unwrap_or_else(|p| p.into_inner());
            conns.retain(|_, n| *n != id);
            conns.insert(conn, id);
        }
        let verb = if reg.reconnecting { "registered again" } else { "joined" };
        tracing::info!("node {id} {verb} at {}", node.raylet_address);
        self.tables.register_node(node);
        if reg.reconnecting {
            self.node_reconnected(id, reg);
        }
        // The head's raylet can send work there right away, and the node learns the
        // cluster before its first heartbeat.
        self.raylet.set_cluster(&self.tables.nodes());
        now(self.cluster_view())
    }

    /// Brings the tables in line with what a node that registers again holds: its
    /// workers and drivers, its actors' leases and its committed bundles.
    fn node_reconnected(self: &Arc<Self>, node: NodeId, reg: RegisterNode) {
        for worker in reg.workers {
            self.tables.report_worker(worker);
        }
        let unknown = self.actors.node_reconnected(node, &reg.actor_leases);
        if !unknown.is_empty() {
            tracing::warn!("node {node} holds actor leases {unknown:?} that no actor in the table has");
        }
        let held: Vec<(PlacementGroupId, u32)> =
            reg.bundles.iter().filter_map(|b| Some((PlacementGroupId::from_bytes(&b.pg_id).ok()?, b.index))).collect();
        let groups = self.groups.clone();
        tokio::spawn(async move {
            for group in groups.node_reconnected(node, &held).await {
                tracing::warn!("placement group {group} lost a bundle on node {node} while the head was away");
            }
        });
    }

    /// A client or node connection closed: what it owned goes with it.
    pub fn disconnected(self: &Arc<Self>, conn: ConnId) {
        self.actors.owner_disconnected(conn);
        let server = self.clone();
        tokio::spawn(async move {
            for group in server.groups.owner_disconnected(conn).await {
                server.actors.end_actors_in_group(group);
            }
        });
        let node = self.node_conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&conn);
        if let Some(node) = node {
            tracing::warn!("node {node} disconnected; marking it dead");
            self.node_dead(node);
        }
    }

    /// The head stops cleanly: the cluster ends, and the store is cleared so the next
    /// start is a fresh cluster. Blocks until the store has done so.
    pub fn shutdown(&self) {
        self.actors.shutdown();
        self.tables.store().end_cluster();
    }
}
