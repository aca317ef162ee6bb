//! How long a node's daemon takes to answer each kind of request, under Ray's names:
//! the histogram `grpc_server_req_process_time_ms{Method}` (Ray's bucket bounds) and the
//! counter `grpc_server_req_finished{Method}`. A request that answers later (a lease
//! waiting for resources) counts until its reply is ready.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use crate::registry::MetricsRegistry;

/// Ray's bounds for `grpc_server_req_process_time_ms`, in milliseconds.
const BOUNDS_MS: [f64; 6] = [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0];

type Method = [(&'static str, &'static str); 1];

#[derive(Clone)]
pub struct RequestLatencies {
    process_time: Family<Method, Histogram>,
    finished: Family<Method, Counter<u64, AtomicU64>>,
}

impl Default for RequestLatencies {
    fn default() -> Self {
        let histogram: fn() -> Histogram = || Histogram::new(BOUNDS_MS);
        Self { process_time: Family::new_with_constructor(histogram), finished: Family::default() }
    }
}

impl std::fmt::Debug for RequestLatencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestLatencies").finish_non_exhaustive()
    }
}

impl RequestLatencies {
    /// One request named `method` answered after `elapsed`.
    pub fn observe(&self, method: &'static str, elapsed: Duration) {
        let label = [("Method", method)];
        self.process_time.get_or_create(&label).observe(elapsed.as_secs_f64() * 1000.0);
        self.finished.get_or_create(&label).inc();
    }

    /// Exports both families on `registry` (they share their series with `self`).
    pub fn register(&self, registry: &mut MetricsRegistry) {
        registry.register_metric(
            "grpc_server_req_process_time_ms",
            "Request latency in the node's server, by request",
            self.process_time.clone(),
        );
        registry.register_metric(
            "grpc_server_req_finished",
            "Requests the node's server has answered, by request",
            self.finished.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::NodeLabels;

    #[test]
    fn latencies_render_as_rays_histogram_and_counter() {
        let latencies = RequestLatencies::default();
        let mut registry = MetricsRegistry::new(NodeLabels { session_name: "s".into(), node_address: "n".into() });
        latencies.register(&mut registry);
        latencies.observe("RequestLease", Duration::from_micros(500));
        latencies.observe("RequestLease", Duration::from_millis(50));
        let text = registry.render();
        for line in [
            r#"ray_grpc_server_req_process_time_ms_bucket{SessionName="s",NodeAddress="n",Method="RequestLease",le="0.1"} 0"#,
            r#"ray_grpc_server_req_process_time_ms_bucket{SessionName="s",NodeAddress="n",Method="RequestLease",le="1"} 1"#,
            r#"ray_grpc_server_req_process_time_ms_bucket{SessionName="s",NodeAddress="n",Method="RequestLease",le="100"} 2"#,
            r#"ray_grpc_server_req_process_time_ms_count{SessionName="s",NodeAddress="n",Method="RequestLease"} 2"#,
            r#"ray_grpc_server_req_finished_total{SessionName="s",NodeAddress="n",Method="RequestLease"} 2"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
