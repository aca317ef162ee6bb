//! A node's Prometheus metrics: the registry every exported series goes through
//! (`registry`, with Ray's `ray_` prefix and node labels), the user metrics processes
//! report from `rtd.util.metrics` (`user`), request latencies of the node's server
//! (`rpc`), and the HTTP endpoint that serves them (`http`).
//!
//! Values are read when Prometheus scrapes: the daemon registers collectors that look at
//! its raylet, object store and GCS then, so little is counted on a hot path (only
//! the raylet's request latencies, a few atomic adds per request).

pub mod http;
pub mod registry;
pub mod rpc;
pub mod user;

pub use registry::{encode_counter, encode_gauge, MetricsRegistry, NodeLabels};
pub use rpc::RequestLatencies;
pub use user::{UserMetricError, UserMetrics};
