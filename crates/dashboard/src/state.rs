//! What the state API shows, and where it reads it from.
//!
//! [`ClusterState`] is the one door to the cluster's tables: the head daemon passes the
//! GCS (see `gcs_state`), the unit tests a fake. Each method returns a snapshot, copied
//! out under the GCS's locks and converted to rows outside them, so a slow or repeated
//! HTTP request never holds up the control plane.
//!
//! The row types carry Ray's state schema (`ray.util.state.common`): the same field
//! names and state names, so scripts written against Ray's state API read them as is.
//! A field rtd does not track is `None` (JSON `null`) rather than left out, as Ray
//! does for a column it has no data for.

use std::collections::BTreeMap;

use serde::Serialize;

/// Resource amounts by name, as floats (`{"CPU": 2.0}`).
pub type Resources = BTreeMap<String, f64>;

/// The cluster's tables, as the state API reads them.
pub trait ClusterState: Send + Sync + 'static {
    fn nodes(&self) -> Vec<NodeState>;
    fn actors(&self) -> Vec<ActorState>;
    fn placement_groups(&self) -> Vec<PlacementGroupState>;
}

/// Ray's `NodeState`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NodeState {
    pub node_id: String,
    pub node_ip: String,
    pub is_head_node: bool,
    /// `ALIVE` or `DEAD`.
    pub state: &'static str,
    pub state_message: Option<String>,
    pub node_name: String,
    /// Without the resources placement-group bundles add (`CPU_group_...`).
    pub resources_total: Resources,
    /// What is free now, without bundle resources (detail).
    pub resources_available: Resources,
    pub labels: BTreeMap<String, String>,
    pub start_time_ms: Option<u64>,
    pub end_time_ms: Option<u64>,
}

/// Ray's `ActorState`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ActorState {
    pub actor_id: String,
    pub class_name: String,
    /// `DEPENDENCIES_UNREADY`, `PENDING_CREATION`, `ALIVE`, `RESTARTING` or `DEAD`.
    pub state: &'static str,
    pub job_id: String,
    pub name: String,
    /// The node it runs (or last ran) on; None before it was first placed.
    pub node_id: Option<String>,
    /// 0 until it has a worker, as in Ray.
    pub pid: u32,
    pub ray_namespace: String,
    pub serialized_runtime_env: Option<String>,
    pub required_resources: Resources,
    /// Why it died (`{"error_message": ...}`); None while it lives.
    pub death_cause: Option<DeathCause>,
    pub is_detached: bool,
    pub placement_group_id: Option<String>,
    pub repr_name: String,
    pub num_restarts: u32,
    pub num_restarts_due_to_lineage_reconstruction: u32,
}

/// Why an actor died.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DeathCause {
    pub error_message: String,
}

/// Ray's `PlacementGroupState`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PlacementGroupState {
    pub placement_group_id: String,
    pub name: String,
    pub creator_job_id: Option<String>,
    /// `PENDING`, `CREATED`, `REMOVED` or `RESCHEDULING`.
    pub state: &'static str,
    pub bundles: Vec<BundleState>,
    pub is_detached: bool,
    /// `PACK`, `SPREAD`, `STRICT_PACK` or `STRICT_SPREAD`.
    pub strategy: String,
    pub stats: Option<serde_json::Value>,
}

/// One bundle of a placement group.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BundleState {
    pub bundle_id: u32,
    /// Where it is reserved; None while the group is not placed.
    pub node_id: Option<String>,
    pub unit_resources: Resources,
}
