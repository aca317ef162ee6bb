//! A node's Prometheus metrics: the registry every exported series goes through
//! (`registry`, with Ray's `ray_` prefix and node labels), the user metrics processes
//! report from `rtd.util.metrics` (`user`), and the HTTP endpoint that serves them (`http`).
//!
//! Values are read when Prometheus scrapes: the daemon registers collectors that look at
//! its raylet, object store and GCS then, so nothing is counted on a hot path.

pub mod http;
pub mod registry;
pub mod user;

pub use registry::{encode_counter, encode_gauge, MetricsRegistry, NodeLabels};
pub use user::{UserMetricError, UserMetrics};
