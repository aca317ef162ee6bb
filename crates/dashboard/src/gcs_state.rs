//! The state API over the head's GCS: its tables converted to Ray's state schema.
//!
//! The GCS hands out copies of its entries (each manager's lock is held only while it
//! copies); everything here runs on those copies.

use rtd_common::bundle::{BundleResource, MARKER};
use rtd_common::proto::{
    ActorState as WireActorState, NodeInfo, PlacementGroupInfo, PlacementGroupState as WireGroupState,
};
use rtd_common::{PlacementGroupId, ResourceSet};
use rtd_gcs::actor_manager::ActorRecord;
use rtd_gcs::server::GcsServer;

use crate::state::{ActorState, BundleState, ClusterState, DeathCause, NodeState, PlacementGroupState, Resources};

impl ClusterState for GcsServer {
    fn nodes(&self) -> Vec<NodeState> {
        GcsServer::nodes(self).iter().map(node_state).collect()
    }

    fn actors(&self) -> Vec<ActorState> {
        GcsServer::actors(self).iter().map(actor_state).collect()
    }

    fn placement_groups(&self) -> Vec<PlacementGroupState> {
        GcsServer::placement_groups(self).iter().map(placement_group_state).collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A node's resources as floats, without those placement-group bundles add.
fn node_resources(map: Option<&rtd_common::proto::ResourceMap>) -> Resources {
    let Some(map) = map else { return Resources::new() };
    ResourceSet::from_fixed_map(&map.amounts)
        .to_floats()
        .into_iter()
        .filter(|(name, _)| BundleResource::parse(name).is_none())
        .collect()
}

fn node_state(node: &NodeInfo) -> NodeState {
    NodeState {
        node_id: hex(&node.node_id),
        node_ip: node.address.clone(),
        is_head_node: node.is_head,
        state: if node.alive { "ALIVE" } else { "DEAD" },
        state_message: None,
        // Ray names a node after its address unless told otherwise.
        node_name: node.address.clone(),
        resources_total: node_resources(node.total.as_ref()),
        resources_available: node_resources(node.available.as_ref()),
        labels: Default::default(),
        start_time_ms: None,
        end_time_ms: None,
    }
}

/// What an actor asked for, as the user wrote it: a request inside a placement group
/// is spelled in the group's resources (`CPU_group_<pg>`), named back here.
fn requested_resources(placement: &ResourceSet) -> (Resources, Option<PlacementGroupId>) {
    let mut group = None;
    let mut asked = Resources::new();
    for (name, amount) in placement.to_floats() {
        match BundleResource::parse(&name) {
            // The group-wide name carries every request; the marker is rtd's own.
            Some(bundle) if bundle.index.is_none() && bundle.resource != MARKER => {
                group = Some(bundle.group);
                asked.insert(bundle.resource, amount);
            }
            Some(bundle) => group = Some(bundle.group),
            None => {
                asked.insert(name, amount);
            }
        }
    }
    (asked, group)
}

fn actor_state(record: &ActorRecord) -> ActorState {
    let info = &record.info;
    let options = info.options.clone().unwrap_or_default();
    let state = match WireActorState::try_from(info.state) {
        Ok(WireActorState::Pending) if record.args_pending => "DEPENDENCIES_UNREADY",
        Ok(WireActorState::Pending) => "PENDING_CREATION",
        Ok(WireActorState::Alive) => "ALIVE",
        Ok(WireActorState::Restarting) => "RESTARTING",
        Ok(WireActorState::Dead) | Err(_) => "DEAD",
    };
    let (required_resources, group) = requested_resources(&record.placement_resources);
    ActorState {
        actor_id: hex(&info.actor_id),
        class_name: options.class_name,
        state,
        job_id: hex(&record.job_id),
        name: options.name,
        node_id: record.node.map(|node| node.hex()),
        pid: info.pid,
        ray_namespace: options.namespace,
        serialized_runtime_env: None,
        required_resources,
        death_cause: (state == "DEAD").then(|| DeathCause { error_message: info.death_cause.clone() }),
        is_detached: options.detached,
        placement_group_id: group.map(|g| g.hex()),
        repr_name: String::new(),
        num_restarts: info.num_restarts,
        num_restarts_due_to_lineage_reconstruction: 0,
    }
}

fn placement_group_state(group: &PlacementGroupInfo) -> PlacementGroupState {
    let state = match WireGroupState::try_from(group.state) {
        Ok(WireGroupState::PgPending) => "PENDING",
        Ok(WireGroupState::PgCreated) => "CREATED",
        Ok(WireGroupState::PgRemoved) | Err(_) => "REMOVED",
        Ok(WireGroupState::PgRescheduling) => "RESCHEDULING",
    };
    let bundles = group
        .bundles
        .iter()
        .enumerate()
        .map(|(index, bundle)| BundleState {
            bundle_id: index as u32,
            node_id: group.bundle_nodes.get(index).map(|node| hex(node)),
            unit_resources: ResourceSet::from_fixed_map(&bundle.resources).to_floats().into_iter().collect(),
        })
        .collect();
    PlacementGroupState {
        placement_group_id: hex(&group.pg_id),
        name: group.name.clone(),
        creator_job_id: None,
        state,
        bundles,
        is_detached: group.detached,
        strategy: group.strategy.clone(),
        stats: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_actor_in_a_group_asks_for_what_the_user_wrote_and_names_its_group() {
        let group = PlacementGroupId([0x5a; PlacementGroupId::LEN]);
        let asked = ResourceSet::from_floats([("CPU", 1.0), ("GPU", 0.5)]).expect("valid");
        let spelled = rtd_common::bundle::request_in_group(&asked, group, Some(0));
        let (resources, found) = requested_resources(&spelled);
        assert_eq!(resources, asked.to_floats());
        assert_eq!(found, Some(group));
        let (plain, none) = requested_resources(&asked);
        assert_eq!((plain, none), (asked.to_floats(), None));
    }

    #[test]
    fn node_resources_leave_out_what_bundles_add() {
        let group = PlacementGroupId([0x5a; PlacementGroupId::LEN]);
        let mut total = ResourceSet::from_floats([("CPU", 2.0)]).expect("valid");
        total.add(&rtd_common::bundle::committed_resources(
            &ResourceSet::from_floats([("CPU", 1.0)]).expect("valid"),
            group,
            0,
        ));
        let map = rtd_common::proto::ResourceMap { amounts: total.to_fixed_map() };
        assert_eq!(node_resources(Some(&map)), Resources::from([("CPU".to_string(), 2.0)]));
    }
}
