//! The raylet: one per node. It owns the node's resource accounting, its pool of Python
//! worker processes, the worker leases submitters run tasks on, the policies that choose
//! a node for them, its log files, and its service: what it answers clients, peers and
//! (on the head) the GCS.

pub mod gcs_link;
pub mod lease;
pub mod logs;
pub mod policy;
pub mod resources;
pub mod service;
pub mod worker_pool;
