//! Placement groups: reserving bundles of resources all or nothing.
//!
//! The GCS chooses a node for every bundle (`crate::bundle_policy`) and reserves
//! them with a two-phase commit: *prepare* each bundle on its node's raylet, and only
//! when every prepare succeeded *commit* them all; if any prepare fails, the prepared
//! ones are cancelled and the group stays PENDING, holding nothing. A committed bundle
//! becomes node resources named after the group, so work in a bundle is scheduled like
//! any other work. Pending groups are retried as resources free up.
//!
//! Removing a group returns its resources and stops the work running in it (the
//! raylet kills those workers; the actor manager ends the group's actors).
//! Non-detached groups are removed with the connection of the process that made them.
//!
//! Every change to a group (its state, where its bundles are) is written through to
//! the GCS's store, and a restarted head puts the groups back with
//! [`PlacementGroupManager::restore`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prost::Message as _;
use rtd_common::proto::{CreatePlacementGroup, PlacementGroupInfo, PlacementGroupState};
use rtd_common::scheduling::NodeView;
use rtd_common::{NodeId, PlacementGroupId, ResourceSet};
use tokio::sync::oneshot;

use crate::actor_manager::RESTORED_OWNER;
use crate::bundle_policy::{place_bundles, BundleStrategy};
use crate::store::records::RestoredGroup;
use crate::store::{GcsStore, Table};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The raylets, as the placement group manager needs them.
pub trait BundleReserver: Send + Sync + 'static {
    /// The alive nodes, each with its total and free amounts of the resources named in
    /// `wanted` only: a node's full map grows with every committed bundle, and reading
    /// it whole for each group would make creating N groups cost O(N²).
    fn nodes(&self, wanted: &ResourceSet) -> Vec<NodeView>;
    fn prepare(&self, node: NodeId, group: PlacementGroupId, index: u32, resources: ResourceSet) -> BoxFuture<bool>;
    fn commit(&self, node: NodeId, group: PlacementGroupId, index: u32) -> BoxFuture<()>;
    /// Cancels a prepared bundle or removes a committed one.
    fn release(&self, node: NodeId, group: PlacementGroupId, index: u32) -> BoxFuture<()>;
    /// Tells a node the group is gone for good.
    fn group_removed(&self, node: NodeId, group: PlacementGroupId) -> BoxFuture<()>;
}

#[derive(Debug, thiserror::Error)]
pub enum PlacementGroupError {
    #[error("invalid placement group: {0}")]
    Invalid(String),
    #[error("a placement group named {0:?} already exists")]
    NameTaken(String),
}

struct GroupEntry {
    info: PlacementGroupInfo,
    strategy: BundleStrategy,
    bundles: Vec<ResourceSet>,
    owner: u64,
    waiters: Vec<oneshot::Sender<PlacementGroupInfo>>,
}

pub struct PlacementGroupManager {
    groups: Mutex<HashMap<PlacementGroupId, GroupEntry>>,
    reserver: Arc<dyn BundleReserver>,
    store: Arc<GcsStore>,
}

const RETRY_PENDING: Duration = Duration::from_millis(100);

fn waiting_for_placement(info: &PlacementGroupInfo) -> bool {
    info.state == PlacementGroupState::PgPending as i32 || info.state == PlacementGroupState::PgRescheduling as i32
}

impl PlacementGroupManager {
    pub fn new(reserver: Arc<dyn BundleReserver>, store: Arc<GcsStore>) -> Arc<Self> {
        let manager = Arc::new(Self { groups: Mutex::new(HashMap::new()), reserver, store });
        // Pending groups are retried as resources free up.
        let weak = Arc::downgrade(&manager);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RETRY_PENDING).await;
                let Some(manager) = weak.upgrade() else { return };
                manager.schedule_pending().await;
            }
        });
        manager
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PlacementGroupId, GroupEntry>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the group to the store; called under the groups' lock, so the store sees
    /// a group's changes in the order they were made.
    fn persist(&self, info: &PlacementGroupInfo) {
        self.store.put(Table::PlacementGroups, info.pg_id.to_vec(), info.encode_to_vec());
    }

    /// Puts back the groups a restarted head's store held, as they were: created ones
    /// keep their bundles' nodes, pending ones are placed by the usual retries. The
    /// caller declares the previous head dead, which places again the groups that had
    /// a bundle there.
    pub fn restore(&self, groups: Vec<RestoredGroup>) {
        let mut held = self.lock();
        for group in groups {
            let bundles = group.info.bundles.iter().map(|b| ResourceSet::from_fixed_map(&b.resources)).collect();
            let entry = GroupEntry {
                info: group.info,
                strategy: group.strategy,
                bundles,
                owner: RESTORED_OWNER,
                waiters: Vec::new(),
            };
            held.insert(group.id, entry);
        }
    }

    pub async fn create(
        &self,
        owner: u64,
        req: CreatePlacementGroup,
    ) -> Result<PlacementGroupInfo, PlacementGroupError> {
        let id = PlacementGroupId::from_bytes(&req.pg_id).map_err(|e| PlacementGroupError::Invalid(e.to_string()))?;
        let strategy: BundleStrategy = req.strategy.parse().map_err(PlacementGroupError::Invalid)?;
        if req.bundles.is_empty() {
            return Err(PlacementGroupError::Invalid("a placement group needs at least one bundle".into()));
        }
        let bundles: Vec<ResourceSet> = req.bundles.iter().map(|b| ResourceSet::from_fixed_map(&b.resources)).collect();
        if let Some(i) = bundles.iter().position(|b| b.is_empty()) {
            return Err(PlacementGroupError::Invalid(format!("bundle {i} asks for no resources")));
        }
        {
            let mut groups = self.lock();
            // Known already: the same request again (resent after a head restart).
            if let Some(existing) = groups.get(&id) {
                return Ok(existing.info.clone());
            }
            if !req.name.is_empty()
                && groups
                    .values()
                    .any(|g| g.info.name == req.name && g.info.state != PlacementGroupState::PgRemoved as i32)
            {
                return Err(PlacementGroupError::NameTaken(req.name));
            }
            let info = PlacementGroupInfo {
                pg_id: req.pg_id.clone(),
                name: req.name,
                strategy: req.strategy,
                bundles: req.bundles,
                state: PlacementGroupState::PgPending as i32,
                bundle_nodes: Vec::new(),
                detached: req.detached,
                creator_job_id: req.creator_job_id,
            };
            self.persist(&info);
            groups.insert(id, GroupEntry { info, strategy, bundles, owner, waiters: Vec::new() });
        }
        self.try_place(id).await;
        self.info(id).ok_or_else(|| PlacementGroupError::Invalid("the group vanished".into()))
    }

    fn info(&self, id: PlacementGroupId) -> Option<PlacementGroupInfo> {
        self.lock().get(&id).map(|g| g.info.clone())
    }

    async fn schedule_pending(&self) {
        let pending: Vec<PlacementGroupId> =
            self.lock().iter().filter(|(_, g)| waiting_for_placement(&g.info)).map(|(id, _)| *id).collect();
        for id in pending {
            self.try_place(id).await;
        }
    }

    /// Places and reserves a pending group: all bundles, or none.
    async fn try_place(&self, id: PlacementGroupId) {
        let Some((strategy, bundles)) =
            self.lock().get(&id).and_then(|g| waiting_for_placement(&g.info).then(|| (g.strategy, g.bundles.clone())))
        else {
            return;
        };
        let mut wanted = ResourceSet::new();
        for bundle in &bundles {
            wanted.add(bundle);
        }
        let Some(placement) = place_bundles(&self.reserver.nodes(&wanted), &bundles, strategy) else { return };
        let mut prepared = Vec::new();
        for (index, (node, bundle)) in placement.iter().zip(&bundles).enumerate() {
            if !self.reserver.prepare(*node, id, index as u32, bundle.clone()).await {
                for (i, n) in prepared {
                    self.reserver.release(n, id, i).await;
                }
                return;
            }
            prepared.push((index as u32, *node));
        }
        // Removed while we prepared: give everything back.
        let still_pending = self.lock().get(&id).is_some_and(|g| waiting_for_placement(&g.info));
        if !still_pending {
            for (i, n) in prepared {
                self.reserver.release(n, id, i).await;
            }
            return;
        }
        for (i, n) in &prepared {
            self.reserver.commit(*n, id, *i).await;
        }
        let mut groups = self.lock();
        if let Some(g) = groups.get_mut(&id) {
            g.info.state = PlacementGroupState::PgCreated as i32;
            g.info.bundle_nodes = placement.iter().map(|n| n.to_vec().into()).collect();
            self.persist(&g.info);
            let info = g.info.clone();
            for w in g.waiters.drain(..) {
                let _ = w.send(info.clone());
            }
        }
    }

    /// Resolves when the group is created or removed.
    pub fn wait(&self, id: PlacementGroupId) -> Option<oneshot::Receiver<PlacementGroupInfo>> {
        let mut groups = self.lock();
        let g = groups.get_mut(&id)?;
        let (tx, rx) = oneshot::channel();
        if waiting_for_placement(&g.info) {
            g.waiters.push(tx);
        } else {
            let _ = tx.send(g.info.clone());
        }
        Some(rx)
    }

    /// Returns the group's resources. The caller ends actors placed in it.
    pub async fn remove(&self, id: PlacementGroupId) -> Option<PlacementGroupId> {
        let nodes = {
            let mut groups = self.lock();
            let g = groups.get_mut(&id)?;
            if g.info.state == PlacementGroupState::PgRemoved as i32 {
                return Some(id);
            }
            g.info.state = PlacementGroupState::PgRemoved as i32;
            let nodes = std::mem::take(&mut g.info.bundle_nodes);
            self.persist(&g.info);
            for w in g.waiters.drain(..) {
                let _ = w.send(g.info.clone());
            }
            nodes
        };
        for (index, node) in nodes.iter().enumerate() {
            if let Ok(node) = NodeId::from_bytes(node) {
                self.reserver.release(node, id, index as u32).await;
            }
        }
        // Only the nodes' ids are needed: ask for no resources.
        for node in self.reserver.nodes(&ResourceSet::new()) {
            self.reserver.group_removed(node.node_id, id).await;
        }
        Some(id)
    }

    /// The group with this id, or without one the live group with this name.
    pub fn get(&self, id: Option<PlacementGroupId>, name: &str) -> Option<PlacementGroupInfo> {
        let groups = self.lock();
        if let Some(id) = id {
            return groups.get(&id).map(|g| g.info.clone());
        }
        groups
            .values()
            .find(|g| g.info.name == name && g.info.state != PlacementGroupState::PgRemoved as i32)
            .map(|g| g.info.clone())
    }

    pub fn list(&self) -> Vec<PlacementGroupInfo> {
        self.lock().values().map(|g| g.info.clone()).collect()
    }

    /// Groups (not detached) of a process that has gone; returns their ids.
    pub async fn owner_disconnected(&self, owner: u64) -> Vec<PlacementGroupId> {
        let ids: Vec<PlacementGroupId> = self
            .lock()
            .iter()
            .filter(|(_, g)| {
                g.owner == owner && !g.info.detached && g.info.state != PlacementGroupState::PgRemoved as i32
            })
            .map(|(id, _)| *id)
            .collect();
        let mut removed = Vec::new();
        for id in ids {
            if let Some(group) = self.remove(id).await {
                removed.push(group);
            }
        }
        removed
    }

    /// A node died: groups with a bundle there give back their other bundles and are
    /// placed again (RESCHEDULING) before new groups. Returns their ids; the caller
    /// ends the actors placed in them.
    pub async fn node_dead(&self, node: NodeId) -> Vec<PlacementGroupId> {
        let hit: Vec<PlacementGroupId> = self
            .lock()
            .iter()
            .filter(|(_, g)| g.info.bundle_nodes.iter().any(|n| n.as_ref() == node.as_bytes()))
            .map(|(id, _)| *id)
            .collect();
        self.place_again(&hit, Some(node)).await;
        hit
    }

    /// A node registered again after losing the head (a GCS restart) and holds the
    /// committed bundles `held`. A group with a bundle there that the node no longer
    /// holds lost that reservation while the head was away and is placed again (as if
    /// the node had died for it); a bundle the node holds that no group placed there
    /// has (its group is unknown or removed) is released. Returns the groups placed
    /// again.
    pub async fn node_reconnected(&self, node: NodeId, held: &[(PlacementGroupId, u32)]) -> Vec<PlacementGroupId> {
        let placed_here = |g: &GroupEntry, index: u32| {
            g.info.state != PlacementGroupState::PgRemoved as i32
                && g.info.bundle_nodes.get(index as usize).is_some_and(|n| n.as_ref() == node.as_bytes())
        };
        let (lost, stray): (Vec<PlacementGroupId>, Vec<(PlacementGroupId, u32)>) = {
            let groups = self.lock();
            let lost = groups
                .iter()
                .filter(|(id, g)| {
                    (0..g.info.bundle_nodes.len() as u32).any(|i| placed_here(g, i) && !held.contains(&(**id, i)))
                })
                .map(|(id, _)| *id)
                .collect();
            let stray =
                held.iter().filter(|(id, i)| !groups.get(id).is_some_and(|g| placed_here(g, *i))).copied().collect();
            (lost, stray)
        };
        for (id, index) in stray {
            tracing::warn!(
                "node {node} holds bundle {index} of placement group {id}, which is not placed there; releasing it"
            );
            self.reserver.release(node, id, index).await;
        }
        self.place_again(&lost, None).await;
        lost
    }

    /// Releases the bundles of `hit` (except those on `dead`, which are gone with it)
    /// and places those groups again.
    async fn place_again(&self, hit: &[PlacementGroupId], dead: Option<NodeId>) {
        let placed: Vec<(PlacementGroupId, Vec<Vec<u8>>)> = {
            let mut groups = self.lock();
            hit.iter()
                .filter_map(|id| {
                    let g = groups.get_mut(id)?;
                    g.info.state = PlacementGroupState::PgRescheduling as i32;
                    let nodes = std::mem::take(&mut g.info.bundle_nodes).into_iter().map(|b| b.to_vec()).collect();
                    self.persist(&g.info);
                    Some((*id, nodes))
                })
                .collect()
        };
        for (id, nodes) in &placed {
            for (index, at) in nodes.iter().enumerate() {
                if let Ok(at) = NodeId::from_bytes(at) {
                    if Some(at) != dead {
                        self.reserver.release(at, *id, index as u32).await;
                    }
                }
            }
        }
        for (id, _) in &placed {
            self.try_place(*id).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtd_common::proto::Bundle;

    /// Nodes whose free resources the fake reserves from, recording what the manager
    /// asked: the resources each placement read, and the bundles held per node.
    /// Bundles prepared (false) or committed (true), by node, group and index.
    type HeldBundles = HashMap<(NodeId, PlacementGroupId, u32), (ResourceSet, bool)>;

    struct FakeReserver {
        nodes: Vec<NodeId>,
        free: Mutex<HashMap<NodeId, ResourceSet>>,
        held: Mutex<HeldBundles>,
        asked_for: Mutex<Vec<ResourceSet>>,
    }

    impl FakeReserver {
        fn new(cpus_per_node: &[f64]) -> Arc<Self> {
            let nodes: Vec<NodeId> = cpus_per_node.iter().map(|_| NodeId::random()).collect();
            let free = nodes.iter().zip(cpus_per_node).map(|(n, c)| (*n, cpus(*c))).collect();
            Arc::new(Self {
                nodes,
                free: Mutex::new(free),
                held: Mutex::new(HashMap::new()),
                asked_for: Mutex::new(Vec::new()),
            })
        }

        fn committed(&self) -> usize {
            self.held.lock().unwrap().values().filter(|(_, committed)| *committed).count()
        }

        fn prepared_only(&self) -> usize {
            self.held.lock().unwrap().values().filter(|(_, committed)| !*committed).count()
        }
    }

    impl BundleReserver for FakeReserver {
        fn nodes(&self, wanted: &ResourceSet) -> Vec<NodeView> {
            self.asked_for.lock().unwrap().push(wanted.clone());
            let free = self.free.lock().unwrap();
            self.nodes
                .iter()
                .map(|n| NodeView { node_id: *n, total: free[n].clone(), available: free[n].clone(), alive: true })
                .collect()
        }
        fn prepare(
            &self,
            node: NodeId,
            group: PlacementGroupId,
            index: u32,
            resources: ResourceSet,
        ) -> BoxFuture<bool> {
            let mut free = self.free.lock().unwrap();
            let ok = free.get_mut(&node).is_some_and(|f| {
                let fits = resources.fits_in(f);
                if fits {
                    f.subtract(&resources);
                }
                fits
            });
            if ok {
                self.held.lock().unwrap().insert((node, group, index), (resources, false));
            }
            Box::pin(async move { ok })
        }
        fn commit(&self, node: NodeId, group: PlacementGroupId, index: u32) -> BoxFuture<()> {
            if let Some(held) = self.held.lock().unwrap().get_mut(&(node, group, index)) {
                held.1 = true;
            }
            Box::pin(async {})
        }
        fn release(&self, node: NodeId, group: PlacementGroupId, index: u32) -> BoxFuture<()> {
            if let Some((resources, _)) = self.held.lock().unwrap().remove(&(node, group, index)) {
                if let Some(f) = self.free.lock().unwrap().get_mut(&node) {
                    f.add(&resources);
                }
            }
            Box::pin(async {})
        }
        fn group_removed(&self, _node: NodeId, _group: PlacementGroupId) -> BoxFuture<()> {
            Box::pin(async {})
        }
    }

    fn cpus(n: f64) -> ResourceSet {
        ResourceSet::from_floats([("CPU", n)]).expect("valid")
    }

    fn request(id: u8, strategy: &str, bundles: &[f64]) -> CreatePlacementGroup {
        CreatePlacementGroup {
            pg_id: vec![id; 18].into(),
            name: String::new(),
            strategy: strategy.into(),
            bundles: bundles.iter().map(|c| Bundle { resources: cpus(*c).to_fixed_map() }).collect(),
            detached: false,
            creator_job_id: Default::default(),
        }
    }

    fn created(info: &PlacementGroupInfo) -> bool {
        info.state == PlacementGroupState::PgCreated as i32
    }

    #[tokio::test]
    async fn placing_a_group_reads_only_the_resources_its_bundles_ask_for() {
        let reserver = FakeReserver::new(&[100.0]);
        let manager = PlacementGroupManager::new(reserver.clone(), Arc::new(GcsStore::in_memory()));
        for id in 0..50 {
            let info = manager.create(1, request(id, "PACK", &[0.5, 0.5])).await.expect("valid group");
            assert!(created(&info));
        }
        assert_eq!(reserver.committed(), 100);
        // However many groups the node holds, each placement read one resource.
        let asked = reserver.asked_for.lock().unwrap();
        assert!(asked.iter().all(|wanted| wanted.iter().map(|(name, _)| name).eq(["CPU"])), "{asked:?}");
    }

    #[tokio::test]
    async fn a_group_id_of_the_wrong_length_is_invalid_and_reserves_nothing() {
        let reserver = FakeReserver::new(&[4.0]);
        let manager = PlacementGroupManager::new(reserver.clone(), Arc::new(GcsStore::in_memory()));
        let mut req = request(1, "PACK", &[1.0]);
        req.pg_id = vec![1; 17].into();
        let err = manager.create(1, req).await.expect_err("17 bytes is not a placement group id");
        assert!(matches!(err, PlacementGroupError::Invalid(_)), "{err}");
        assert_eq!((reserver.committed(), reserver.prepared_only()), (0, 0));
        assert!(manager.list().is_empty());
    }

    #[tokio::test]
    async fn a_group_that_does_not_fit_holds_nothing_and_waits() {
        // STRICT_SPREAD over two nodes, the second too small: the first bundle fits alone
        // but all or nothing means it is not held.
        let reserver = FakeReserver::new(&[2.0, 0.5]);
        let manager = PlacementGroupManager::new(reserver.clone(), Arc::new(GcsStore::in_memory()));
        let info = manager.create(1, request(1, "STRICT_SPREAD", &[1.0, 1.0])).await.expect("valid group");
        assert!(!created(&info));
        assert!(info.bundle_nodes.is_empty());
        assert_eq!((reserver.committed(), reserver.prepared_only()), (0, 0));
        let waiter = manager.wait(PlacementGroupId([1; 18])).expect("known group");
        manager.remove(PlacementGroupId([1; 18])).await.expect("known group");
        let info = waiter.await.expect("answered on removal");
        assert_eq!(info.state, PlacementGroupState::PgRemoved as i32);
    }

    #[tokio::test]
    async fn a_pending_group_is_created_when_room_frees_and_its_waiters_hear_it() {
        let reserver = FakeReserver::new(&[2.0]);
        let manager = PlacementGroupManager::new(reserver.clone(), Arc::new(GcsStore::in_memory()));
        assert!(created(&manager.create(1, request(1, "PACK", &[2.0])).await.expect("valid group")));
        assert!(!created(&manager.create(1, request(2, "PACK", &[1.0])).await.expect("valid group")));
        let waiters: Vec<_> = (0..3).map(|_| manager.wait(PlacementGroupId([2; 18])).expect("known group")).collect();
        manager.remove(PlacementGroupId([1; 18])).await.expect("known group");
        for waiter in waiters {
            let info = tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("placed by the pending retry")
                .expect("answered");
            assert!(created(&info));
        }
        assert_eq!(reserver.committed(), 1);
    }

    #[tokio::test]
    async fn a_reconnecting_node_keeps_the_bundles_it_holds_and_loses_the_ones_it_does_not() {
        let reserver = FakeReserver::new(&[4.0]);
        let node = reserver.nodes[0];
        let manager = PlacementGroupManager::new(reserver.clone(), Arc::new(GcsStore::in_memory()));
        let (kept, lost) = (PlacementGroupId([1; 18]), PlacementGroupId([2; 18]));
        assert!(created(&manager.create(1, request(1, "PACK", &[1.0])).await.expect("valid group")));
        assert!(created(&manager.create(1, request(2, "PACK", &[1.0])).await.expect("valid group")));
        // The node holds group 1's bundle, lost group 2's (its raylet restarted it), and
        // holds a bundle of a group the GCS never heard of.
        reserver.held.lock().unwrap().remove(&(node, lost, 0));
        let stray = PlacementGroupId([9; 18]);
        reserver.held.lock().unwrap().insert((node, stray, 0), (cpus(1.0), true));
        let placed_again = manager.node_reconnected(node, &[(kept, 0), (stray, 0)]).await;
        assert_eq!(placed_again, vec![lost]);
        let held = reserver.held.lock().unwrap().clone();
        assert!(held.contains_key(&(node, kept, 0)), "the held bundle stays");
        assert!(held.contains_key(&(node, lost, 0)), "the lost bundle is reserved again");
        assert!(!held.contains_key(&(node, stray, 0)), "the stray bundle is released");
        assert!(manager.list().iter().all(created));
    }

    fn sorted(mut groups: Vec<PlacementGroupInfo>) -> Vec<PlacementGroupInfo> {
        groups.sort_by_key(|g| g.pg_id.clone());
        groups
    }

    #[tokio::test]
    async fn groups_come_back_from_the_store_with_their_bundles_nodes() {
        use crate::store::{MemoryStorage, OpenedStore};
        let memory = MemoryStorage::default();
        let reserver = FakeReserver::new(&[2.0, 2.0]);
        let opened = OpenedStore::open(Box::new(memory.clone())).expect("opens");
        let manager = PlacementGroupManager::new(reserver.clone(), Arc::new(opened.store));
        assert!(created(&manager.create(1, request(1, "STRICT_SPREAD", &[1.0, 1.0])).await.expect("valid")));
        assert!(!created(&manager.create(1, request(2, "PACK", &[8.0])).await.expect("valid")));
        manager.create(1, request(3, "PACK", &[1.0])).await.expect("valid");
        manager.remove(PlacementGroupId([3; 18])).await.expect("known");
        manager.store.durable().await;
        let before = sorted(manager.list());

        let opened = OpenedStore::open(Box::new(memory)).expect("reopens");
        let again = PlacementGroupManager::new(reserver.clone(), Arc::new(opened.store));
        again.restore(opened.restored.groups);
        assert_eq!(sorted(again.list()), before);
        // A node's death places its groups again, as before the restart.
        assert_eq!(again.node_dead(reserver.nodes[0]).await, vec![PlacementGroupId([1; 18])]);
        assert!(created(&again.get(Some(PlacementGroupId([1; 18])), "").expect("known")));
        // Its owner's connection was to the previous head: closing connection 1 keeps it.
        assert!(again.owner_disconnected(1).await.is_empty());
    }
}
