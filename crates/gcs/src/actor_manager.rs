//! Actors: where they live, whether they are alive, and bringing them back.
//!
//! An actor is a dedicated worker process holding one instance of a class. The GCS
//! owns its life cycle, as in Ray: it leases a worker for the actor's placement
//! resources, pushes the creation task (the constructor) to it, and publishes the
//! actor's state — PENDING, ALIVE at an address, RESTARTING, DEAD with a cause.
//! Callers push method calls straight to the actor's worker; when that connection
//! breaks they wait here for the next state (`wait`, a long poll on an epoch that
//! every change bumps).
//!
//! When an actor's worker dies the actor is restarted (constructor re-run in a new
//! worker) while restarts remain (`max_restarts`, -1 = forever), else it is DEAD.
//! Non-detached actors die with the connection of the process that created them;
//! detached ones live until killed. Named actors are found by (namespace, name).
//!
//! Every change to an actor is written through to the GCS's store (`crate::store`), and
//! a restarted head puts the actors back with [`ActorManager::restore`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prost::Message as _;
use rtd_common::bundle::BundleResource;
use rtd_common::proto::{
    object_value::Kind, ActorInfo, ActorState, CreateActor, LeaseGranted, PushTask, PushTaskReply, TaskSpec,
};
use rtd_common::rpc::RpcError;
use rtd_common::scheduling::Strategy;
use rtd_common::{ActorId, NodeId, PlacementGroupId, ResourceSet};
use tokio::sync::oneshot;

use crate::store::records::{RestoredActor, StoredActor};
use crate::store::{GcsStore, Table};

/// A dedicated worker's lease on some node, or why none can be granted now.
pub type LeaseFuture = Pin<Box<dyn Future<Output = Result<(NodeId, LeaseGranted), LeaseError>> + Send>>;

/// Why no worker could be leased for an actor now; the GCS tries again later.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("no node can host it: {0}")]
    Infeasible(String),
    #[error("the raylet refused: {0}")]
    Refused(String),
    #[error("the raylet could not be asked: {0}")]
    Rpc(#[from] rtd_common::rpc::RpcError),
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The actor's runtime_env could not be set up: the actor cannot start.
    #[error("{0}")]
    RuntimeEnvSetup(String),
}

/// The constructor's reply from the worker, or why it did not come.
pub type CreationFuture = Pin<Box<dyn Future<Output = Result<PushTaskReply, RpcError>> + Send>>;

/// How the GCS gets worker processes for actors and starts actors in them (the raylets
/// and their workers). Everything the actor manager sends to another process goes
/// through here, so tests drive the manager with a fake.
pub trait WorkerLeaser: Send + Sync + 'static {
    /// A dedicated worker with `resources` on some node chosen by `strategy`, or why
    /// none can be granted now.
    /// `runtime_env`: the actor's environment as canonical JSON (empty: none).
    fn lease(&self, resources: ResourceSet, strategy: Strategy, runtime_env: &str) -> LeaseFuture;
    /// Runs the actor's creation task on the leased worker at `worker_address`.
    fn run_constructor(&self, worker_address: &str, task: PushTask) -> CreationFuture;
    /// Shrinks the lease to what the actor holds while it runs; the worker stays.
    fn shrink(&self, node: NodeId, lease_id: u64, keep: ResourceSet);
    /// Kills the lease's worker; its exit is reported through `lease_lost`.
    fn kill(&self, node: NodeId, lease_id: u64);
}

#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    #[error("the actor name {name:?} is already taken in namespace {namespace:?}")]
    NameTaken { name: String, namespace: String },
    #[error("invalid actor creation request: {0}")]
    Invalid(String),
}

struct ActorEntry {
    info: ActorInfo,
    spec: TaskSpec,
    /// Where it may be placed (from its options).
    strategy: Strategy,
    /// Registered, waiting for its owner to resolve the constructor arguments.
    args_pending: bool,
    owner: u64,
    lease: Option<(NodeId, u64)>,
    /// The node it last ran on; kept after its worker is gone (as Ray's actor table).
    node: Option<NodeId>,
    waiters: Vec<oneshot::Sender<ActorInfo>>,
}

#[derive(Default)]
struct Tables {
    actors: HashMap<ActorId, ActorEntry>,
    named: HashMap<(String, String), ActorId>,
    by_lease: HashMap<(NodeId, u64), ActorId>,
}

/// One actor as the state API shows it: its published info plus what only the
/// manager knows (where it runs, its job, what it asked for to be placed).
#[derive(Clone, Debug)]
pub struct ActorRecord {
    pub info: ActorInfo,
    /// The node of its current (or last) worker; None before it was first placed.
    pub node: Option<NodeId>,
    pub job_id: bytes::Bytes,
    /// What its creation task asks for to be placed (bundle resources if in a group).
    pub placement_resources: ResourceSet,
    /// Registered, waiting for its owner to resolve the constructor arguments.
    pub args_pending: bool,
    /// Its runtime_env as canonical JSON (empty: none).
    pub runtime_env: String,
}

pub struct ActorManager {
    tables: Mutex<Tables>,
    leaser: Arc<dyn WorkerLeaser>,
    store: Arc<GcsStore>,
}

/// The owner of actors put back from the store: their creators' connections were to
/// the previous head, so no connection's close ends them (connection ids start at 1).
pub const RESTORED_OWNER: u64 = 0;

const INFEASIBLE_RETRY: Duration = Duration::from_secs(1);

fn state(s: ActorState) -> i32 {
    s as i32
}

impl ActorManager {
    pub fn new(leaser: Arc<dyn WorkerLeaser>, store: Arc<GcsStore>) -> Arc<Self> {
        Arc::new(Self { tables: Mutex::new(Tables::default()), leaser, store })
    }

    /// Writes the actor's entry to the store; called under the tables' lock, so the
    /// store sees an actor's changes in the order they were made.
    fn persist(&self, actor_id: &ActorId, entry: &ActorEntry) {
        let stored = StoredActor {
            info: Some(entry.info.clone()),
            spec: Some(entry.spec.clone()),
            args_pending: entry.args_pending,
            lease_node: entry.lease.map(|(node, _)| node.to_vec()).unwrap_or_default(),
            lease_id: entry.lease.map(|(_, lease)| lease).unwrap_or_default(),
            node: entry.node.map(|node| node.to_vec()).unwrap_or_default(),
        };
        self.store.put(Table::Actors, actor_id.to_vec(), stored.encode_to_vec());
    }

    /// Puts back the actors a restarted head's store held. Alive ones stay alive where
    /// they run (the caller declares the previous head dead, which restarts or ends
    /// those that ran there); those that were being placed are placed again, and a
    /// worker they had leased meanwhile is let go, since its constructor's answer
    /// went to the previous head.
    pub fn restore(self: &Arc<Self>, actors: Vec<RestoredActor>) {
        let mut to_place = Vec::new();
        let mut abandoned = Vec::new();
        {
            let mut t = self.lock();
            for actor in actors {
                let state = actor.info.state;
                let dead = state == ActorState::Dead as i32;
                let being_placed = !dead && state != ActorState::Alive as i32 && !actor.args_pending;
                let mut lease = actor.lease;
                if being_placed {
                    abandoned.extend(lease.take());
                    to_place.push(actor.id);
                }
                if let Some(options) = actor.info.options.as_ref().filter(|o| !o.name.is_empty() && !dead) {
                    t.named.insert((options.namespace.clone(), options.name.clone()), actor.id);
                }
                if let Some(lease) = lease {
                    t.by_lease.insert(lease, actor.id);
                }
                let entry = ActorEntry {
                    info: actor.info,
                    spec: actor.spec,
                    strategy: actor.strategy,
                    args_pending: actor.args_pending,
                    owner: RESTORED_OWNER,
                    lease,
                    node: actor.node,
                    waiters: Vec::new(),
                };
                t.actors.insert(actor.id, entry);
            }
        }
        for (node, lease) in abandoned {
            self.leaser.kill(node, lease);
        }
        for actor_id in to_place {
            self.clone().start(actor_id);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an actor and starts creating it. With `get_if_exists`, a live actor
    /// of the same name is returned instead.
    pub fn create(self: &Arc<Self>, owner: u64, req: CreateActor) -> Result<ActorInfo, ActorError> {
        let spec = req.spec.ok_or_else(|| ActorError::Invalid("no creation task".into()))?;
        let options = req.options.unwrap_or_default();
        let actor_id = ActorId::from_bytes(&spec.actor_id).map_err(|e| ActorError::Invalid(e.to_string()))?;
        let strategy = Strategy::from_wire(&options.strategy, &options.affinity_node, options.affinity_soft)
            .map_err(|e| ActorError::Invalid(e.to_string()))?;
        let mut t = self.lock();
        // Registered already: the same request again (resent after a head restart).
        if let Some(existing) = t.actors.get(&actor_id) {
            return Ok(existing.info.clone());
        }
        if !options.name.is_empty() {
            let key = (options.namespace.clone(), options.name.clone());
            if let Some(existing) = t.named.get(&key).and_then(|id| t.actors.get(id)) {
                if options.get_if_exists {
                    return Ok(existing.info.clone());
                }
                return Err(ActorError::NameTaken { name: options.name, namespace: options.namespace });
            }
            t.named.insert(key, actor_id);
        }
        let info = ActorInfo {
            actor_id: actor_id.to_vec().into(),
            state: state(ActorState::Pending),
            epoch: 1,
            options: Some(options),
            ..Default::default()
        };
        let args_pending = req.args_pending;
        let entry = ActorEntry {
            info: info.clone(),
            spec,
            strategy,
            args_pending,
            owner,
            lease: None,
            node: None,
            waiters: Vec::new(),
        };
        self.persist(&actor_id, &entry);
        t.actors.insert(actor_id, entry);
        drop(t);
        if !args_pending {
            self.clone().start(actor_id);
        }
        Ok(info)
    }

    /// The owner resolved the constructor arguments of an actor registered with
    /// `args_pending`: place it now (unless it was killed meanwhile).
    pub fn args_ready(self: &Arc<Self>, spec: TaskSpec) -> Result<(), ActorError> {
        let actor_id = ActorId::from_bytes(&spec.actor_id).map_err(|e| ActorError::Invalid(e.to_string()))?;
        {
            let mut t = self.lock();
            let Some(entry) = t.actors.get_mut(&actor_id) else { return Ok(()) };
            if !entry.args_pending || entry.info.state == state(ActorState::Dead) {
                return Ok(());
            }
            entry.args_pending = false;
            entry.spec = spec;
            self.persist(&actor_id, entry);
        }
        self.clone().start(actor_id);
        Ok(())
    }

    fn start(self: Arc<Self>, actor_id: ActorId) {
        tokio::spawn(async move { self.schedule(actor_id).await });
    }

    /// Leases a worker and runs the constructor there.
    async fn schedule(self: Arc<Self>, actor_id: ActorId) {
        let Some((spec, strategy)) = self.lock().actors.get(&actor_id).map(|e| (e.spec.clone(), e.strategy.clone()))
        else {
            return;
        };
        let placement = ResourceSet::from_fixed_map(&spec.resources);
        let (node, grant) = loop {
            match self.leaser.lease(placement.clone(), strategy.clone(), &spec.runtime_env).await {
                Ok(granted) => break granted,
                Err(LeaseError::RuntimeEnvSetup(why)) => {
                    // As Ray: the actor is dead, its creation failed with this cause.
                    self.mark_dead(&actor_id, format!("RuntimeEnvSetupError: {why}"));
                    return;
                }
                Err(why) => {
                    tracing::warn!("actor {actor_id} cannot be placed yet: {why}");
                    tokio::time::sleep(INFEASIBLE_RETRY).await;
                    if self.is_dead(&actor_id) {
                        return;
                    }
                }
            }
        };
        {
            let mut t = self.lock();
            let dead = t.actors.get(&actor_id).map(|e| e.info.state == state(ActorState::Dead)).unwrap_or(true);
            if dead {
                drop(t);
                self.leaser.kill(node, grant.lease_id);
                return;
            }
            t.by_lease.insert((node, grant.lease_id), actor_id);
            if let Some(e) = t.actors.get_mut(&actor_id) {
                e.lease = Some((node, grant.lease_id));
                e.node = Some(node);
                self.persist(&actor_id, e);
            }
        }
        let mut spec = spec;
        spec.attempt = self.lock().actors.get(&actor_id).map(|e| e.info.num_restarts).unwrap_or(0);
        let task = PushTask { spec: Some(spec), gpu_ids: grant.gpu_ids.clone() };
        match self.leaser.run_constructor(&grant.worker_address, task).await {
            Ok(r) if !r.app_error => {
                let running = self
                    .lock()
                    .actors
                    .get(&actor_id)
                    .and_then(|e| e.info.options.as_ref().map(|o| ResourceSet::from_fixed_map(&o.running_resources)))
                    .unwrap_or_default();
                self.leaser.shrink(node, grant.lease_id, running);
                self.update(&actor_id, |info| {
                    info.state = state(ActorState::Alive);
                    info.address = grant.worker_address.clone();
                    info.pid = grant.pid;
                });
            }
            Ok(r) => {
                // The constructor raised: the actor is dead, with the error as cause.
                let cause = r
                    .returns
                    .first()
                    .and_then(|ret| match ret.value.as_ref().and_then(|v| v.kind.as_ref()) {
                        Some(Kind::Inline(i)) => Some(String::from_utf8_lossy(&i.data).into_owned()),
                        _ => None,
                    })
                    .unwrap_or_else(|| "the actor's constructor raised an exception".into());
                self.mark_dead(&actor_id, cause);
            }
            // The worker died while constructing: `lease_lost` decides what follows.
            _ => {}
        }
    }

    fn is_dead(&self, actor_id: &ActorId) -> bool {
        self.lock().actors.get(actor_id).map(|e| e.info.state == state(ActorState::Dead)).unwrap_or(true)
    }

    /// Applies a change to an actor's info, bumps its epoch and wakes waiters.
    fn update(&self, actor_id: &ActorId, change: impl FnOnce(&mut ActorInfo)) {
        let mut t = self.lock();
        let Some(entry) = t.actors.get_mut(actor_id) else { return };
        change(&mut entry.info);
        entry.info.epoch += 1;
        self.persist(actor_id, entry);
        let info = entry.info.clone();
        for waiter in entry.waiters.drain(..) {
            let _ = waiter.send(info.clone());
        }
    }

    /// Marks the actor dead (kills its worker if it has one) and frees its name.
    fn mark_dead(&self, actor_id: &ActorId, cause: String) {
        let lease = {
            let mut t = self.lock();
            let Some(entry) = t.actors.get_mut(actor_id) else { return };
            if entry.info.state == state(ActorState::Dead) {
                return;
            }
            let lease = entry.lease.take();
            let name = entry.info.options.as_ref().map(|o| (o.namespace.clone(), o.name.clone()));
            if let Some(key) = name {
                if t.named.get(&key) == Some(actor_id) {
                    t.named.remove(&key);
                }
            }
            lease
        };
        self.update(actor_id, |info| {
            info.state = state(ActorState::Dead);
            info.death_cause = cause;
            info.address.clear();
        });
        if let Some((node, lease)) = lease {
            self.leaser.kill(node, lease);
        }
    }

    /// Every actor on a dead node lost its worker.
    pub fn node_dead(self: &Arc<Self>, node: NodeId) {
        let leases: Vec<u64> = self.lock().by_lease.keys().filter(|(n, _)| *n == node).map(|(_, l)| *l).collect();
        for lease in leases {
            self.lease_lost(node, lease);
        }
    }

    /// A node registered again after losing the head (a GCS restart) and holds the
    /// dedicated leases `held`: an actor whose lease there is gone lost its worker
    /// while the head was away; the others run on as they are. Returns the leases the
    /// node holds that no actor has (left as they are: they may be actors the table
    /// never recorded a lease for).
    pub fn node_reconnected(self: &Arc<Self>, node: NodeId, held: &[u64]) -> Vec<u64> {
        let (lost, unknown) = {
            let t = self.lock();
            let lost: Vec<u64> =
                t.by_lease.keys().filter(|(n, l)| *n == node && !held.contains(l)).map(|(_, l)| *l).collect();
            let unknown = held.iter().filter(|l| !t.by_lease.contains_key(&(node, **l))).copied().collect();
            (lost, unknown)
        };
        for lease in lost {
            self.lease_lost(node, lease);
        }
        unknown
    }

    /// A leased worker exited. Its actor restarts if it may, else it is dead.
    pub fn lease_lost(self: &Arc<Self>, node: NodeId, lease_id: u64) {
        let (actor_id, restart) = {
            let mut t = self.lock();
            let Some(actor_id) = t.by_lease.remove(&(node, lease_id)) else { return };
            let Some(entry) = t.actors.get_mut(&actor_id) else { return };
            if entry.lease == Some((node, lease_id)) {
                entry.lease = None;
            }
            if entry.info.state == state(ActorState::Dead) {
                return;
            }
            let max = entry.info.options.as_ref().map(|o| o.max_restarts).unwrap_or(0);
            (actor_id, max < 0 || (entry.info.num_restarts as i64) < max as i64)
        };
        if restart {
            self.update(&actor_id, |info| {
                info.state = state(ActorState::Restarting);
                info.num_restarts += 1;
                info.address.clear();
            });
            self.clone().start(actor_id);
        } else {
            self.mark_dead(&actor_id, "the actor's worker process died and no restarts are left (max_restarts)".into());
        }
    }

    /// The actor's info once its epoch is newer than `after_epoch`.
    pub fn wait(&self, actor_id: &ActorId, after_epoch: u64) -> Option<oneshot::Receiver<ActorInfo>> {
        let mut t = self.lock();
        let entry = t.actors.get_mut(actor_id)?;
        let (tx, rx) = oneshot::channel();
        if entry.info.epoch > after_epoch {
            let _ = tx.send(entry.info.clone());
        } else {
            entry.waiters.push(tx);
        }
        Some(rx)
    }

    pub fn get_named(&self, namespace: &str, name: &str) -> Option<ActorInfo> {
        let t = self.lock();
        let id = t.named.get(&(namespace.to_string(), name.to_string()))?;
        t.actors.get(id).map(|e| e.info.clone())
    }

    /// `rtd.kill`: with `no_restart` the actor is dead at once; otherwise its worker
    /// is killed and the usual restart rules apply.
    pub fn kill(self: &Arc<Self>, actor_id: &ActorId, no_restart: bool, cause: &str) -> bool {
        if no_restart {
            if !self.lock().actors.contains_key(actor_id) {
                return false;
            }
            let cause = if cause.is_empty() { "the actor was killed by rtd.kill()" } else { cause };
            self.mark_dead(actor_id, cause.into());
            return true;
        }
        let lease = self.lock().actors.get(actor_id).and_then(|e| e.lease);
        match lease {
            Some((node, lease)) => {
                self.leaser.kill(node, lease);
                true
            }
            None => self.lock().actors.contains_key(actor_id),
        }
    }

    /// The process that created these actors is gone: non-detached ones die with it.
    pub fn owner_disconnected(&self, owner: u64) {
        let doomed: Vec<(ActorId, bool)> = self
            .lock()
            .actors
            .iter()
            .filter(|(_, e)| e.owner == owner)
            .filter(|(_, e)| e.args_pending || !e.info.options.as_ref().map(|o| o.detached).unwrap_or(false))
            .map(|(id, e)| (*id, e.args_pending))
            .collect();
        for (actor_id, args_pending) in doomed {
            let cause = if args_pending {
                // Even a detached actor: nobody is left to supply its constructor arguments.
                "the actor's creator exited before its constructor arguments were ready"
            } else {
                "the actor's owner (the process that created it) has exited"
            };
            self.mark_dead(&actor_id, cause.into());
        }
    }

    /// Ends the actors placed in a removed placement group.
    pub fn end_actors_in_group(&self, group: PlacementGroupId) {
        let doomed: Vec<ActorId> = self
            .lock()
            .actors
            .iter()
            .filter(|(_, e)| {
                e.spec.resources.keys().any(|name| BundleResource::parse(name).is_some_and(|b| b.group == group))
            })
            .map(|(id, _)| *id)
            .collect();
        for actor_id in doomed {
            self.mark_dead(&actor_id, "the actor's placement group was removed".into());
        }
    }

    pub fn list(&self) -> Vec<ActorInfo> {
        self.lock().actors.values().map(|e| e.info.clone()).collect()
    }

    /// Every actor with what the state API shows, copied out under one short lock.
    pub fn records(&self) -> Vec<ActorRecord> {
        self.lock()
            .actors
            .values()
            .map(|e| ActorRecord {
                info: e.info.clone(),
                node: e.node,
                job_id: e.spec.job_id.clone(),
                placement_resources: ResourceSet::from_fixed_map(&e.spec.resources),
                args_pending: e.args_pending,
                runtime_env: e.spec.runtime_env.clone(),
            })
            .collect()
    }

    /// Stops every actor (node shutdown).
    pub fn shutdown(&self) {
        let ids: Vec<ActorId> = self.lock().actors.keys().copied().collect();
        for id in ids {
            self.mark_dead(&id, "the node is shutting down".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtd_common::proto::{ActorOptions, InlineObject, ObjectValue, ReturnObject};

    /// Raylets that grant every lease at once on one node, and workers that answer every
    /// constructor (raising `raises` if set), recording what the manager asked for.
    struct FakeRaylets {
        node: NodeId,
        raises: Option<String>,
        leases: Mutex<u64>,
        attempts: Mutex<Vec<u32>>,
        shrunk: Mutex<Vec<(u64, ResourceSet)>>,
        killed: Mutex<Vec<u64>>,
    }

    impl FakeRaylets {
        fn new(raises: Option<&str>) -> Arc<Self> {
            Arc::new(Self {
                node: NodeId::random(),
                raises: raises.map(str::to_string),
                leases: Mutex::new(0),
                attempts: Mutex::new(Vec::new()),
                shrunk: Mutex::new(Vec::new()),
                killed: Mutex::new(Vec::new()),
            })
        }
    }

    impl WorkerLeaser for FakeRaylets {
        fn lease(&self, _resources: ResourceSet, _strategy: Strategy, _runtime_env: &str) -> LeaseFuture {
            let lease_id = {
                let mut leases = self.leases.lock().expect("fake lock");
                *leases += 1;
                *leases
            };
            let grant = LeaseGranted {
                lease_id,
                worker_address: format!("worker-{lease_id}"),
                pid: 1000 + lease_id as u32,
                ..Default::default()
            };
            let node = self.node;
            Box::pin(async move { Ok((node, grant)) })
        }

        fn run_constructor(&self, _worker_address: &str, task: PushTask) -> CreationFuture {
            let attempt = task.spec.map(|s| s.attempt).unwrap_or_default();
            self.attempts.lock().expect("fake lock").push(attempt);
            let reply = match &self.raises {
                None => PushTaskReply::default(),
                Some(error) => PushTaskReply {
                    app_error: true,
                    returns: vec![ReturnObject {
                        value: Some(ObjectValue {
                            kind: Some(Kind::Inline(InlineObject {
                                metadata: 1,
                                data: error.clone().into_bytes().into(),
                            })),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            };
            Box::pin(async move { Ok(reply) })
        }

        fn shrink(&self, _node: NodeId, lease_id: u64, keep: ResourceSet) {
            self.shrunk.lock().expect("fake lock").push((lease_id, keep));
        }

        fn kill(&self, _node: NodeId, lease_id: u64) {
            self.killed.lock().expect("fake lock").push(lease_id);
        }
    }

    fn cpus(n: f64) -> ResourceSet {
        ResourceSet::from_floats([("CPU", n)]).expect("valid")
    }

    fn request(name: &str, max_restarts: i32, get_if_exists: bool) -> (ActorId, CreateActor) {
        let actor_id = ActorId::random();
        let spec =
            TaskSpec { actor_id: actor_id.to_vec().into(), resources: cpus(1.0).to_fixed_map(), ..Default::default() };
        let options = ActorOptions {
            name: name.into(),
            namespace: "ns".into(),
            max_restarts,
            get_if_exists,
            running_resources: cpus(0.5).to_fixed_map(),
            ..Default::default()
        };
        (actor_id, CreateActor { spec: Some(spec), options: Some(options), args_pending: false })
    }

    /// The actor's info once it is in `wanted`; panics after a bounded wait.
    async fn reaches(manager: &ActorManager, actor_id: &ActorId, wanted: ActorState) -> ActorInfo {
        let wait = async {
            let mut epoch = 0;
            loop {
                let info = manager.wait(actor_id, epoch).expect("a known actor").await.expect("an answer");
                if info.state == wanted as i32 {
                    return info;
                }
                epoch = info.epoch;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait).await.expect("the actor reaches the state")
    }

    #[tokio::test]
    async fn an_actor_is_alive_once_its_constructor_returns_and_keeps_only_its_running_resources() {
        let raylets = FakeRaylets::new(None);
        let manager = ActorManager::new(raylets.clone(), Arc::new(GcsStore::in_memory()));
        let (actor_id, req) = request("", 0, false);
        assert_eq!(manager.create(7, req).expect("created").state, ActorState::Pending as i32);
        let alive = reaches(&manager, &actor_id, ActorState::Alive).await;
        assert_eq!((alive.address.as_str(), alive.pid), ("worker-1", 1001));
        assert_eq!(*raylets.shrunk.lock().expect("fake lock"), vec![(1, cpus(0.5))]);
    }

    #[tokio::test]
    async fn a_constructor_that_raises_kills_the_actor_with_its_error_as_the_cause() {
        let raylets = FakeRaylets::new(Some("ValueError: no"));
        let manager = ActorManager::new(raylets.clone(), Arc::new(GcsStore::in_memory()));
        let (actor_id, req) = request("", 3, false);
        manager.create(7, req).expect("created");
        let dead = reaches(&manager, &actor_id, ActorState::Dead).await;
        assert_eq!(dead.death_cause, "ValueError: no");
        // A constructor error is the actor's own: no restart.
        assert_eq!(raylets.attempts.lock().expect("fake lock").len(), 1);
    }

    #[tokio::test]
    async fn a_lost_worker_restarts_the_actor_while_restarts_remain() {
        let raylets = FakeRaylets::new(None);
        let manager = ActorManager::new(raylets.clone(), Arc::new(GcsStore::in_memory()));
        let (actor_id, req) = request("", 1, false);
        manager.create(7, req).expect("created");
        reaches(&manager, &actor_id, ActorState::Alive).await;

        manager.lease_lost(raylets.node, 1);
        let again = reaches(&manager, &actor_id, ActorState::Alive).await;
        assert_eq!((again.num_restarts, again.address.as_str()), (1, "worker-2"));
        assert_eq!(*raylets.attempts.lock().expect("fake lock"), vec![0, 1]);

        manager.lease_lost(raylets.node, 2);
        let dead = reaches(&manager, &actor_id, ActorState::Dead).await;
        assert!(dead.death_cause.contains("no restarts are left"), "{}", dead.death_cause);
        // A lease the actor no longer holds changes nothing.
        manager.lease_lost(raylets.node, 1);
        assert_eq!(reaches(&manager, &actor_id, ActorState::Dead).await.num_restarts, 1);
    }

    #[tokio::test]
    async fn a_name_is_held_until_its_actor_dies_and_get_if_exists_returns_the_holder() {
        let manager = ActorManager::new(FakeRaylets::new(None), Arc::new(GcsStore::in_memory()));
        let (first, req) = request("counter", 0, false);
        manager.create(7, req).expect("created");
        reaches(&manager, &first, ActorState::Alive).await;

        let (_, taken) = request("counter", 0, false);
        assert!(matches!(manager.create(8, taken), Err(ActorError::NameTaken { .. })));
        let (_, existing) = request("counter", 0, true);
        assert_eq!(manager.create(8, existing).expect("the holder").actor_id.as_ref(), first.as_bytes());
        assert_eq!(manager.get_named("ns", "counter").map(|i| i.actor_id), Some(first.to_vec().into()));

        assert!(manager.kill(&first, true, ""));
        reaches(&manager, &first, ActorState::Dead).await;
        assert!(manager.get_named("ns", "counter").is_none());
        let (second, reuse) = request("counter", 0, false);
        manager.create(8, reuse).expect("the name is free again");
        reaches(&manager, &second, ActorState::Alive).await;
    }

    #[tokio::test]
    async fn kill_without_restart_ends_the_actor_and_its_worker() {
        let raylets = FakeRaylets::new(None);
        let manager = ActorManager::new(raylets.clone(), Arc::new(GcsStore::in_memory()));
        let (actor_id, req) = request("", -1, false);
        manager.create(7, req).expect("created");
        reaches(&manager, &actor_id, ActorState::Alive).await;
        assert!(manager.kill(&actor_id, true, ""));
        let dead = reaches(&manager, &actor_id, ActorState::Dead).await;
        assert!(dead.death_cause.contains("rtd.kill()"), "{}", dead.death_cause);
        assert_eq!(*raylets.killed.lock().expect("fake lock"), vec![1]);
        // Its worker's exit, reported later, does not bring it back.
        manager.lease_lost(raylets.node, 1);
        assert_eq!(reaches(&manager, &actor_id, ActorState::Dead).await.num_restarts, 0);
    }

    #[tokio::test]
    async fn a_reconnecting_node_keeps_the_actors_whose_leases_it_holds() {
        let raylets = FakeRaylets::new(None);
        let manager = ActorManager::new(raylets.clone(), Arc::new(GcsStore::in_memory()));
        let (kept, req) = request("kept", 0, false);
        manager.create(7, req).expect("created");
        reaches(&manager, &kept, ActorState::Alive).await;
        let (lost, req) = request("lost", 1, false);
        manager.create(7, req).expect("created");
        let before = reaches(&manager, &lost, ActorState::Alive).await;
        // Leases 1 (kept) and 2 (lost) were granted; the node still holds 1 and an
        // unknown lease 9.
        let unknown = manager.node_reconnected(raylets.node, &[1, 9]);
        assert_eq!(unknown, vec![9]);
        assert_eq!(manager.get_named("ns", "kept").expect("named").state, ActorState::Alive as i32);
        let restarted = reaches(&manager, &lost, ActorState::Alive).await;
        assert_eq!(restarted.num_restarts, before.num_restarts + 1);
        assert!(raylets.killed.lock().expect("fake lock").is_empty(), "nothing the node holds is killed");
    }

    #[tokio::test]
    async fn creating_an_actor_again_under_its_id_returns_it_instead_of_a_second_one() {
        let raylets = FakeRaylets::new(None);
        let manager = ActorManager::new(raylets.clone(), Arc::new(GcsStore::in_memory()));
        let (actor_id, req) = request("once", 0, false);
        manager.create(7, req.clone()).expect("created");
        reaches(&manager, &actor_id, ActorState::Alive).await;
        let again = manager.create(7, req).expect("the same request resent");
        assert_eq!(again.state, ActorState::Alive as i32);
        assert_eq!(manager.list().len(), 1);
        assert_eq!(*raylets.leases.lock().expect("fake lock"), 1);
    }

    /// An actor's info, node, whether it waits for its arguments, and its lease.
    type ActorView = (ActorInfo, Option<NodeId>, bool, Option<(NodeId, u64)>);

    /// What a restarted head must get back of each actor, comparable.
    fn stored_view(manager: &ActorManager) -> Vec<ActorView> {
        let t = manager.lock();
        let mut view: Vec<_> = t.actors.values().map(|e| (e.info.clone(), e.node, e.args_pending, e.lease)).collect();
        view.sort_by_key(|(info, ..)| info.actor_id.clone());
        view
    }

    #[tokio::test]
    async fn actors_come_back_from_the_store_as_they_were_and_resume() {
        use crate::store::{MemoryStorage, OpenedStore};
        let memory = MemoryStorage::default();
        let raylets = FakeRaylets::new(None);
        let opened = OpenedStore::open(Box::new(memory.clone())).expect("opens");
        let manager = ActorManager::new(raylets.clone(), Arc::new(opened.store));
        let (alive, req) = request("counter", 2, false);
        manager.create(7, req).expect("created");
        reaches(&manager, &alive, ActorState::Alive).await;
        manager.lease_lost(raylets.node, 1);
        reaches(&manager, &alive, ActorState::Alive).await;
        let (dead, req) = request("gone", 0, false);
        manager.create(7, req).expect("created");
        reaches(&manager, &dead, ActorState::Alive).await;
        manager.kill(&dead, true, "");
        let (waiting, mut req) = request("waiting", 0, false);
        req.args_pending = true;
        manager.create(7, req).expect("created");
        manager.store.durable().await;
        let before = stored_view(&manager);

        let opened = OpenedStore::open(Box::new(memory)).expect("reopens");
        assert!(!opened.fresh);
        let again = ActorManager::new(raylets.clone(), Arc::new(opened.store));
        again.restore(opened.restored.actors);
        assert_eq!(stored_view(&again), before);
        // Names of live actors are held again; the dead one's is free.
        assert_eq!(again.get_named("ns", "counter").map(|i| i.actor_id), Some(alive.to_vec().into()));
        assert!(again.get_named("ns", "gone").is_none());
        // The restored manager goes on: its lease is known, restarts are counted on.
        again.lease_lost(raylets.node, 2);
        assert_eq!(reaches(&again, &alive, ActorState::Alive).await.num_restarts, 2);
        // An actor waiting for its arguments is placed once they are ready.
        let spec = again.lock().actors.get(&waiting).map(|e| e.spec.clone()).expect("restored");
        again.args_ready(spec).expect("accepted");
        reaches(&again, &waiting, ActorState::Alive).await;
        // Its owner's connection was to the previous head: no connection's close ends it.
        again.owner_disconnected(7);
        assert_eq!(again.get_named("ns", "counter").map(|i| i.state), Some(ActorState::Alive as i32));
    }
}
