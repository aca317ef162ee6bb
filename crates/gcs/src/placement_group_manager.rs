//! Placement groups: reserving bundles of resources all or nothing.
//!
//! The GCS chooses a node for every bundle (`rtd_raylet::bundle_policy`) and reserves
//! them with a two-phase commit: *prepare* each bundle on its node's raylet, and only
//! when every prepare succeeded *commit* them all; if any prepare fails, the prepared
//! ones are cancelled and the group stays PENDING, holding nothing. A committed bundle
//! becomes node resources named after the group, so work in a bundle is scheduled like
//! any other work. Pending groups are retried as resources free up.
//!
//! Removing a group returns its resources and stops the work running in it (the
//! raylet kills those workers; the actor manager ends the group's actors).
//! Non-detached groups are removed with the connection of the process that made them.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rtd_common::proto::{CreatePlacementGroup, PlacementGroupInfo, PlacementGroupState};
use rtd_common::{NodeId, ResourceSet};
use rtd_raylet::bundle_policy::{place_bundles, BundleStrategy};
use rtd_raylet::policy::NodeView;
use tokio::sync::oneshot;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The raylets, as the placement group manager needs them.
pub trait BundleReserver: Send + Sync + 'static {
    fn nodes(&self) -> Vec<NodeView>;
    fn prepare(&self, node: NodeId, group: String, index: u32, resources: ResourceSet) -> BoxFuture<bool>;
    fn commit(&self, node: NodeId, group: String, index: u32) -> BoxFuture<()>;
    /// Cancels a prepared bundle or removes a committed one.
    fn release(&self, node: NodeId, group: String, index: u32) -> BoxFuture<()>;
    /// Tells a node the group is gone for good.
    fn group_removed(&self, node: NodeId, group: String) -> BoxFuture<()>;
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
    groups: Mutex<HashMap<String, GroupEntry>>,
    reserver: Arc<dyn BundleReserver>,
}

const RETRY_PENDING: Duration = Duration::from_millis(100);

fn waiting_for_placement(info: &PlacementGroupInfo) -> bool {
    info.state == PlacementGroupState::PgPending as i32 || info.state == PlacementGroupState::PgRescheduling as i32
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl PlacementGroupManager {
    pub fn new(reserver: Arc<dyn BundleReserver>) -> Arc<Self> {
        let manager = Arc::new(Self { groups: Mutex::new(HashMap::new()), reserver });
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

    fn lock(&self) -> MutexGuard<'_, HashMap<String, GroupEntry>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn create(&self, owner: u64, req: CreatePlacementGroup) -> Result<PlacementGroupInfo, PlacementGroupError> {
        let strategy: BundleStrategy = req.strategy.parse().map_err(PlacementGroupError::Invalid)?;
        if req.bundles.is_empty() {
            return Err(PlacementGroupError::Invalid("a placement group needs at least one bundle".into()));
        }
        let bundles: Vec<ResourceSet> =
            req.bundles.iter().map(|b| ResourceSet::from_fixed_map(&b.resources)).collect();
        if let Some(i) = bundles.iter().position(|b| b.is_empty()) {
            return Err(PlacementGroupError::Invalid(format!("bundle {i} asks for no resources")));
        }
        let id = hex(&req.pg_id);
        {
            let mut groups = self.lock();
            if !req.name.is_empty()
                && groups.values().any(|g| g.info.name == req.name && g.info.state != PlacementGroupState::PgRemoved as i32)
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
            };
            groups.insert(id.clone(), GroupEntry { info, strategy, bundles, owner, waiters: Vec::new() });
        }
        self.try_place(&id).await;
        self.info(&id).ok_or_else(|| PlacementGroupError::Invalid("the group vanished".into()))
    }

    fn info(&self, id: &str) -> Option<PlacementGroupInfo> {
        self.lock().get(id).map(|g| g.info.clone())
    }

    async fn schedule_pending(&self) {
        let pending: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, g)| waiting_for_placement(&g.info))
            .map(|(id, _)| id.clone())
            .collect();
        for id in pending {
            self.try_place(&id).await;
        }
    }

    /// Places and reserves a pending group: all bundles, or none.
    async fn try_place(&self, id: &str) {
        let Some((strategy, bundles)) = self
            .lock()
            .get(id)
            .and_then(|g| waiting_for_placement(&g.info).then(|| (g.strategy, g.bundles.clone())))
        else {
            return;
        };
        let Some(placement) = place_bundles(&self.reserver.nodes(), &bundles, strategy) else { return };
        let mut prepared = Vec::new();
        for (index, (node, bundle)) in placement.iter().zip(&bundles).enumerate() {
            if !self.reserver.prepare(*node, id.to_string(), index as u32, bundle.clone()).await {
                for (i, n) in prepared {
                    self.reserver.release(n, id.to_string(), i).await;
                }
                return;
            }
            prepared.push((index as u32, *node));
        }
        // Removed while we prepared: give everything back.
        let still_pending = self.lock().get(id).is_some_and(|g| waiting_for_placement(&g.info));
        if !still_pending {
            for (i, n) in prepared {
                self.reserver.release(n, id.to_string(), i).await;
            }
            return;
        }
        for (i, n) in &prepared {
            self.reserver.commit(*n, id.to_string(), *i).await;
        }
        let mut groups = self.lock();
        if let Some(g) = groups.get_mut(id) {
            g.info.state = PlacementGroupState::PgCreated as i32;
            g.info.bundle_nodes = placement.iter().map(|n| n.to_vec().into()).collect();
            let info = g.info.clone();
            for w in g.waiters.drain(..) {
                let _ = w.send(info.clone());
            }
        }
    }

    /// Resolves when the group is created or removed.
    pub fn wait(&self, id: &[u8]) -> Option<oneshot::Receiver<PlacementGroupInfo>> {
        let mut groups = self.lock();
        let g = groups.get_mut(&hex(id))?;
        let (tx, rx) = oneshot::channel();
        if waiting_for_placement(&g.info) {
            g.waiters.push(tx);
        } else {
            let _ = tx.send(g.info.clone());
        }
        Some(rx)
    }

    /// Returns the group's resources. The caller ends actors placed in it.
    pub async fn remove(&self, id: &[u8]) -> Option<String> {
        let key = hex(id);
        let nodes = {
            let mut groups = self.lock();
            let g = groups.get_mut(&key)?;
            if g.info.state == PlacementGroupState::PgRemoved as i32 {
                return Some(key);
            }
            g.info.state = PlacementGroupState::PgRemoved as i32;
            let nodes = std::mem::take(&mut g.info.bundle_nodes);
            for w in g.waiters.drain(..) {
                let _ = w.send(g.info.clone());
            }
            nodes
        };
        for (index, node) in nodes.iter().enumerate() {
            if let Ok(node) = NodeId::from_bytes(node) {
                self.reserver.release(node, key.clone(), index as u32).await;
            }
        }
        for node in self.reserver.nodes() {
            self.reserver.group_removed(node.node_id, key.clone()).await;
        }
        Some(key)
    }

    pub fn get(&self, id: &[u8], name: &str) -> Option<PlacementGroupInfo> {
        let groups = self.lock();
        if !id.is_empty() {
            return groups.get(&hex(id)).map(|g| g.info.clone());
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
    pub async fn owner_disconnected(&self, owner: u64) -> Vec<String> {
        let ids: Vec<Vec<u8>> = self
            .lock()
            .values()
            .filter(|g| g.owner == owner && !g.info.detached && g.info.state != PlacementGroupState::PgRemoved as i32)
            .map(|g| g.info.pg_id.to_vec())
            .collect();
        let mut removed = Vec::new();
        for id in ids {
            if let Some(group) = self.remove(&id).await {
                removed.push(group);
            }
        }
        removed
    }

    /// A node died: groups with a bundle there give back their other bundles and are
    /// placed again (RESCHEDULING) before new groups. Returns their ids; the caller
    /// ends the actors placed in them.
    pub async fn node_dead(&self, node: NodeId) -> Vec<String> {
        let hit: Vec<(String, Vec<Vec<u8>>)> = {
            let mut groups = self.lock();
            groups
                .iter_mut()
                .filter(|(_, g)| g.info.bundle_nodes.iter().any(|n| n.as_ref() == node.as_bytes()))
                .map(|(id, g)| {
                    g.info.state = PlacementGroupState::PgRescheduling as i32;
                    (id.clone(), std::mem::take(&mut g.info.bundle_nodes).into_iter().map(|b| b.to_vec()).collect())
                })
                .collect()
        };
        for (id, nodes) in &hit {
            for (index, at) in nodes.iter().enumerate() {
                if let Ok(at) = NodeId::from_bytes(at) {
                    if at != node {
                        self.reserver.release(at, id.clone(), index as u32).await;
                    }
                }
            }
        }
        for (id, _) in &hit {
            self.try_place(id).await;
        }
        hit.into_iter().map(|(id, _)| id).collect()
    }
}
