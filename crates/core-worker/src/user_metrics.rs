//! User metrics (`rtd.util.metrics`) on their way to this node's daemon, which exports
//! them on `/metrics`. Recording only folds the value into a pending point per (metric,
//! tag values): counters and histograms as what changed since the last report, gauges
//! as the last value. The points go to the daemon every
//! `RTD_METRICS_REPORT_INTERVAL_MS` (default one second) and once more when the
//! process disconnects, over the raylet connection.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use rtd_common::proto::{metric_point::Kind, ErrorCode, MetricPoint, ReportMetrics};
use rtd_common::rpc::{RpcClient, RpcError};

pub use rtd_common::proto::metric_point::Kind as MetricKind;

const DEFAULT_REPORT_INTERVAL_MS: u64 = 1000;

/// A user metric as its Python object defines it.
#[derive(Clone, Debug, PartialEq)]
pub struct UserMetric {
    pub name: String,
    pub description: String,
    pub kind: MetricKind,
    /// Histogram bucket bounds, increasing; empty for the other kinds.
    pub boundaries: Vec<f64>,
}

/// Which pending point a value folds into: the metric's name and kind (a name used
/// with two kinds stays two points, and the daemon refuses the second), and the tags.
type PointKey = (String, i32, Vec<(String, String)>);

pub(crate) struct MetricBuffer {
    interval: Duration,
    pending: Mutex<HashMap<PointKey, MetricPoint>>,
}

impl Default for MetricBuffer {
    fn default() -> Self {
        let ms = std::env::var("RTD_METRICS_REPORT_INTERVAL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|ms| *ms > 0)
            .unwrap_or(DEFAULT_REPORT_INTERVAL_MS);
        Self { interval: Duration::from_millis(ms), pending: Default::default() }
    }
}

impl MetricBuffer {
    /// Folds `value` for `tags` (sorted by key) into what the next report sends.
    pub(crate) fn record(&self, metric: &UserMetric, tags: Vec<(String, String)>, value: f64) {
        let mut pending = self.pending.lock();
        let key = (metric.name.clone(), metric.kind as i32, tags);
        let point = pending.entry(key).or_insert_with_key(|(_, _, tags)| MetricPoint {
            name: metric.name.clone(),
            description: metric.description.clone(),
            kind: metric.kind as i32,
            tags: tags.iter().cloned().collect(),
            boundaries: metric.boundaries.clone(),
            bucket_counts: match metric.kind {
                Kind::Histogram => vec![0; metric.boundaries.len() + 1],
                _ => Vec::new(),
            },
            value: 0.0,
        });
        match metric.kind {
            Kind::Counter => point.value += value,
            Kind::Gauge => point.value = value,
            Kind::Histogram => {
                point.value += value;
                // Prometheus buckets hold the values up to and including their bound.
                let bucket = metric.boundaries.partition_point(|bound| *bound < value);
                if let Some(count) = point.bucket_counts.get_mut(bucket) {
                    *count += 1;
                }
            }
        }
    }

    fn take(&self) -> Vec<MetricPoint> {
        std::mem::take(&mut *self.pending.lock()).into_values().collect()
    }

    /// How often what is pending goes to the node.
    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// Sends what is pending to this node's daemon.
    pub(crate) async fn flush(&self, raylet: &RpcClient) {
        let points = self.take();
        if points.is_empty() {
            return;
        }
        match raylet.request(ReportMetrics { points }).await {
            Ok(_) => {}
            Err(RpcError::Remote { code: ErrorCode::Invalid, message }) => {
                tracing::warn!("the node refused some user metrics: {message}")
            }
            Err(e) => tracing::debug!("cannot report user metrics: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(kind: MetricKind, boundaries: &[f64]) -> UserMetric {
        UserMetric { name: "m".into(), description: "d".into(), kind, boundaries: boundaries.to_vec() }
    }

    fn tags(value: &str) -> Vec<(String, String)> {
        vec![("k".to_string(), value.to_string())]
    }

    #[test]
    fn counters_add_gauges_keep_the_last_value_and_tags_stay_apart() {
        let buffer = MetricBuffer::default();
        let counter = metric(MetricKind::Counter, &[]);
        buffer.record(&counter, tags("a"), 1.0);
        buffer.record(&counter, tags("a"), 2.5);
        buffer.record(&counter, tags("b"), 1.0);
        let gauge = UserMetric { name: "g".into(), ..metric(MetricKind::Gauge, &[]) };
        buffer.record(&gauge, Vec::new(), 3.0);
        buffer.record(&gauge, Vec::new(), -1.0);
        let mut points = buffer.take();
        points.sort_by(|a, b| (&a.name, a.value.to_bits()).cmp(&(&b.name, b.value.to_bits())));
        let values: Vec<(&str, f64)> = points.iter().map(|p| (p.name.as_str(), p.value)).collect();
        assert_eq!(values, vec![("g", -1.0), ("m", 1.0), ("m", 3.5)]);
        assert!(buffer.take().is_empty(), "a report takes everything pending");
    }

    #[test]
    fn histogram_values_fall_in_the_bucket_of_the_first_bound_not_below_them() {
        let buffer = MetricBuffer::default();
        let histogram = metric(MetricKind::Histogram, &[1.0, 10.0]);
        for value in [0.5, 1.0, 1.5, 10.0, 99.0] {
            buffer.record(&histogram, Vec::new(), value);
        }
        let points = buffer.take();
        assert_eq!(points[0].bucket_counts, vec![2, 2, 1]);
        assert_eq!(points[0].value, 112.0);
    }
}
