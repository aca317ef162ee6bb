//! The raylet: one per node. It owns the node's resource accounting, its pool of
//! Python worker processes and the worker leases that submitters use to run tasks,
//! and the scheduling policies that choose a node for work.

pub mod bundle_policy;
pub mod lease;
pub mod policy;
pub mod resources;
pub mod worker_pool;
