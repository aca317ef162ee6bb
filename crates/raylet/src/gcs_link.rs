//! How a raylet meets the GCS. Every raylet reports its resources (its heartbeat) and
//! learns the cluster from the GCS's node table in return; a worker node does this over
//! its link to the head ([`heartbeat`]). The head's raylet shares a process with the GCS,
//! which reports for it and calls it directly through [`HeadRaylet`].

use std::sync::Arc;
use std::time::Duration;

use rtd_common::proto::{NodeInfo, ReportResources, ResourceMap};
use rtd_common::rpc::RpcClient;
use rtd_common::scheduling::{NodeView, Strategy};
use rtd_common::{NodeId, PlacementGroupId, ResourceSet};
use rtd_gcs::server::LocalRaylet;
use rtd_gcs::NodeUsage;
use tokio::sync::{oneshot, Notify};

use crate::lease::{LeaseAnswer, LeaseRequest, Raylet, RemoteNode, GCS_CONN};

const HEARTBEAT: Duration = Duration::from_millis(100);

/// A raylet's heartbeat contents.
pub fn usage(raylet: &Raylet) -> NodeUsage {
    NodeUsage {
        total: ResourceMap { amounts: raylet.total().to_fixed_map() },
        available: ResourceMap { amounts: raylet.available().to_fixed_map() },
        pending_demands: raylet.pending_demands().iter().map(|d| ResourceMap { amounts: d.to_fixed_map() }).collect(),
    }
}

fn resources(map: &Option<ResourceMap>) -> ResourceSet {
    ResourceSet::from_fixed_map(&map.as_ref().map(|m| m.amounts.clone()).unwrap_or_default())
}

/// Every alive node but this one, as a raylet's view of the cluster.
pub fn remote_nodes(nodes: &[NodeInfo]) -> Vec<RemoteNode> {
    nodes
        .iter()
        .filter(|n| n.alive && !n.raylet_address.is_empty())
        .filter_map(|n| {
            Some(RemoteNode {
                view: NodeView {
                    node_id: NodeId::from_bytes(&n.node_id).ok()?,
                    total: resources(&n.total),
                    available: resources(&n.available),
                    alive: true,
                },
                raylet_address: n.raylet_address.clone(),
            })
        })
        .collect()
}

/// A worker node's heartbeat: report free resources, learn the cluster. Losing the
/// head (or being declared dead by it) stops the node.
pub async fn heartbeat(head: RpcClient, raylet: Arc<Raylet>, shutdown: Arc<Notify>) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let usage = usage(&raylet);
        let report = ReportResources {
            node_id: raylet.node_id().to_vec().into(),
            total: Some(usage.total),
            available: Some(usage.available),
            pending_demands: usage.pending_demands,
        };
        match head.request(report).await {
            Ok(view) => raylet.set_cluster(remote_nodes(&view.nodes)),
            Err(e) => {
                tracing::warn!("lost the head node ({e}); stopping");
                shutdown.notify_one();
                return;
            }
        }
    }
}

/// The head's raylet as the GCS in its process calls it.
pub struct HeadRaylet(pub Arc<Raylet>);

impl LocalRaylet for HeadRaylet {
    fn node_id(&self) -> NodeId {
        self.0.node_id()
    }

    fn request_actor_lease(&self, resources: ResourceSet, strategy: Strategy) -> oneshot::Receiver<LeaseAnswer> {
        let request = LeaseRequest { resources, strategy, no_spillback: false, dedicated: true, preferred: None };
        self.0.request_lease(GCS_CONN, request)
    }

    fn shrink_lease(&self, lease_id: u64, keep: &ResourceSet) {
        self.0.shrink_lease(lease_id, keep);
    }

    fn kill_leased_worker(&self, lease_id: u64) {
        self.0.kill_leased_worker(lease_id);
    }

    fn set_lease_lost_hook(&self, hook: Box<dyn Fn(u64) + Send + Sync>) {
        self.0.set_lease_lost_hook(hook);
    }

    fn prepare_bundle(&self, group: PlacementGroupId, index: u32, resources: &ResourceSet) -> bool {
        self.0.prepare_bundle(group, index, resources)
    }

    fn commit_bundle(&self, group: PlacementGroupId, index: u32) {
        self.0.commit_bundle(group, index);
    }

    fn return_bundle(&self, group: PlacementGroupId, index: u32) {
        self.0.return_bundle(group, index);
    }

    fn group_removed(&self, group: PlacementGroupId) {
        self.0.group_removed(group);
    }

    fn view_of(&self, wanted: &ResourceSet) -> (ResourceSet, ResourceSet) {
        self.0.view_of(wanted)
    }

    fn usage(&self) -> NodeUsage {
        usage(&self.0)
    }

    fn set_cluster(&self, nodes: &[NodeInfo]) {
        self.0.set_cluster(remote_nodes(nodes));
    }
}
