//! Shared vocabulary of every rtd process: ids, fixed-point resource sets, the names of
//! placement-group bundle resources, runtime configuration, the words of scheduling
//! (node views, strategies) and the wire protocol (protobuf messages framed over Unix
//! sockets), and the KV entries that say where a cluster serves what. No policy lives
//! here, only the terms.

pub mod auth;
pub mod bundle;
pub mod cluster_kv;
pub mod config;
pub mod ids;
pub mod resources;
pub mod rpc;
pub mod scheduling;
pub mod task_events;

/// Messages generated from `proto/*.proto` (one package, `rtd`).
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/rtd.rs"));
}

pub use ids::{ActorId, JobId, NodeId, ObjectId, PlacementGroupId, TaskId, WorkerId};
pub use resources::{ResourceError, ResourceSet};

/// What a stored object's bytes hold (the `metadata` of an object).
pub mod object_kind {
    /// A pickled Python value.
    pub const VALUE: u32 = 0;
    /// A pickled exception raised at `get`.
    pub const ERROR: u32 = 1;
    /// The worker running the task died and retries ran out; data is a UTF-8 message.
    pub const WORKER_CRASHED: u32 = 2;
    /// The task was cancelled; data is a UTF-8 message.
    pub const TASK_CANCELLED: u32 = 3;
    /// The value is gone (its owner died or it was freed); data is a UTF-8 message.
    pub const OBJECT_LOST: u32 = 4;
    /// The actor is dead (or died running the call); data is a UTF-8 message.
    pub const ACTOR_DIED: u32 = 5;
    /// The task can never be scheduled (e.g. hard node affinity to a dead node).
    pub const UNSCHEDULABLE: u32 = 6;
    /// The task's runtime_env could not be set up (Ray's `RuntimeEnvSetupError`).
    pub const RUNTIME_ENV_SETUP_FAILED: u32 = 7;
}
