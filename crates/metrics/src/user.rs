//! User metrics (`rtd.util.metrics` Counter, Gauge, Histogram), aggregated over the
//! processes of one node.
//!
//! Each process sends what changed since its last report (see `MetricPoint`): counter
//! increases and histogram bucket counts are deltas, so the node sums them over its
//! processes and keeps them after a process exits; a gauge is the value set last, by
//! whichever process. Reports come from user code over a socket, so everything is
//! checked here before it can reach the exposition: names and tag keys must be
//! Prometheus's, a name keeps the kind (and buckets) it was first reported with, and
//! the number of series a node keeps is bounded.

use std::collections::BTreeMap;
use std::fmt;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use rtd_common::proto::{metric_point::Kind, MetricPoint};

use crate::registry::{encode_counter, encode_gauge};

/// Series (metric, tag values) a node keeps at most; points of new ones past it are refused.
pub const MAX_SERIES: usize = 10_000;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UserMetricError {
    #[error(
        "invalid metric name {0:?}: names can only contain letters, numbers, _ and :, and cannot start with a number"
    )]
    BadName(String),
    #[error("invalid tag key {key:?} of metric {metric:?}: tag keys can only contain letters, numbers and _, cannot start with a number or __")]
    BadTagKey { metric: String, key: String },
    #[error("metric {name:?} was first reported as a {first} and now as a {now}; give each metric one kind and one set of buckets")]
    Conflict { name: String, first: String, now: String },
    #[error("metric {name:?}: {problem}")]
    BadValue { name: String, problem: String },
    #[error("this node already holds {MAX_SERIES} user metric series; metric {0:?} gets no new one")]
    TooManySeries(String),
}

/// Prometheus's metric name syntax (`[a-zA-Z_:][a-zA-Z0-9_:]*`), as Ray checks it.
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Prometheus's label name syntax; names starting with `__` are reserved.
pub fn is_valid_tag_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.starts_with("__")
}

/// What a metric is, fixed by its first report.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Counter,
    Gauge,
    Histogram { boundaries: Vec<f64> },
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Counter => write!(f, "counter"),
            Shape::Gauge => write!(f, "gauge"),
            Shape::Histogram { boundaries } => write!(f, "histogram with boundaries {boundaries:?}"),
        }
    }
}

/// One series' value: a counter's total, a gauge's value, or a histogram's sum with
/// its per-bucket counts (the last bucket unbounded).
#[derive(Debug, Default, Clone, PartialEq)]
struct SeriesValue {
    value: f64,
    buckets: Vec<u64>,
}

#[derive(Debug)]
struct UserMetric {
    description: String,
    shape: Shape,
    series: BTreeMap<Vec<(String, String)>, SeriesValue>,
}

#[derive(Debug, Default)]
pub struct UserMetrics {
    metrics: Mutex<BTreeMap<String, UserMetric>>,
}

fn shape_of(point: &MetricPoint) -> Shape {
    match point.kind() {
        Kind::Counter => Shape::Counter,
        Kind::Gauge => Shape::Gauge,
        Kind::Histogram => Shape::Histogram { boundaries: point.boundaries.clone() },
    }
}

/// Checks what a point says on its own, before it touches the store.
fn check(point: &MetricPoint) -> Result<(), UserMetricError> {
    let name = &point.name;
    if !is_valid_metric_name(name) {
        return Err(UserMetricError::BadName(name.clone()));
    }
    if let Some(key) = point.tags.keys().find(|k| !is_valid_tag_key(k)) {
        return Err(UserMetricError::BadTagKey { metric: name.clone(), key: key.clone() });
    }
    let bad = |problem: String| Err(UserMetricError::BadValue { name: name.clone(), problem });
    match point.kind() {
        Kind::Counter if !(point.value.is_finite() && point.value >= 0.0) => {
            bad(format!("a counter only increases by finite amounts, got {}", point.value))
        }
        Kind::Histogram if point.bucket_counts.len() != point.boundaries.len() + 1 => bad(format!(
            "{} bucket counts for {} boundaries (one more than the boundaries is expected)",
            point.bucket_counts.len(),
            point.boundaries.len()
        )),
        Kind::Histogram if !point.boundaries.windows(2).all(|w| w[0] < w[1]) => {
            bad(format!("boundaries must increase, got {:?}", point.boundaries))
        }
        _ => Ok(()),
    }
}

impl UserMetrics {
    /// Applies one process's report; a point that is refused does not stop the others.
    pub fn record(&self, points: Vec<MetricPoint>) -> Vec<UserMetricError> {
        let mut metrics = self.metrics.lock();
        let mut series_count: usize = metrics.values().map(|m| m.series.len()).sum();
        let mut errors = Vec::new();
        for point in points {
            if let Err(e) = check(&point) {
                errors.push(e);
                continue;
            }
            let (kind, shape) = (point.kind(), shape_of(&point));
            let metric = metrics.entry(point.name.clone()).or_insert_with(|| UserMetric {
                description: point.description.clone(),
                shape: shape.clone(),
                series: BTreeMap::new(),
            });
            if metric.shape != shape {
                errors.push(UserMetricError::Conflict {
                    name: point.name,
                    first: metric.shape.to_string(),
                    now: shape.to_string(),
                });
                continue;
            }
            let mut tags: Vec<(String, String)> = point.tags.into_iter().collect();
            tags.sort();
            if !metric.series.contains_key(&tags) {
                if series_count >= MAX_SERIES {
                    errors.push(UserMetricError::TooManySeries(point.name));
                    continue;
                }
                series_count += 1;
            }
            let held = metric.series.entry(tags).or_default();
            match kind {
                Kind::Counter => held.value += point.value,
                Kind::Gauge => held.value = point.value,
                Kind::Histogram => {
                    held.value += point.value;
                    held.buckets.resize(point.bucket_counts.len(), 0);
                    for (held, new) in held.buckets.iter_mut().zip(&point.bucket_counts) {
                        *held = held.saturating_add(*new);
                    }
                }
            }
        }
        errors
    }
}

impl Collector for UserMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let metrics = self.metrics.lock();
        for (name, metric) in metrics.iter() {
            let series = metric.series.iter().map(|(tags, held)| (tags.as_slice(), held.value));
            match &metric.shape {
                Shape::Counter => encode_counter(&mut encoder, name, &metric.description, series)?,
                Shape::Gauge => encode_gauge(&mut encoder, name, &metric.description, series)?,
                Shape::Histogram { boundaries } => {
                    let mut family =
                        encoder.encode_descriptor(name, &metric.description, None, MetricType::Histogram)?;
                    for (tags, held) in &metric.series {
                        let bounds = boundaries.iter().copied().chain([f64::INFINITY]);
                        let buckets: Vec<(f64, u64)> = bounds.zip(held.buckets.iter().copied()).collect();
                        let count = held.buckets.iter().sum();
                        family
                            .encode_family(&tags.as_slice())?
                            .encode_histogram::<NoLabelSet>(held.value, count, &buckets, None)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{MetricsRegistry, NodeLabels};

    fn point(kind: Kind, name: &str, tags: &[(&str, &str)], value: f64) -> MetricPoint {
        MetricPoint {
            name: name.into(),
            description: format!("about {name}"),
            kind: kind as i32,
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            value,
            ..Default::default()
        }
    }

    fn histogram(name: &str, boundaries: &[f64], counts: &[u64], sum: f64) -> MetricPoint {
        MetricPoint {
            boundaries: boundaries.to_vec(),
            bucket_counts: counts.to_vec(),
            ..point(Kind::Histogram, name, &[], sum)
        }
    }

    fn render(metrics: UserMetrics) -> String {
        let mut registry = MetricsRegistry::new(NodeLabels { session_name: "s".into(), node_address: "n".into() });
        registry.register(metrics);
        registry.render()
    }

    #[test]
    fn counters_add_up_over_processes_and_gauges_keep_the_last_value() {
        let metrics = UserMetrics::default();
        assert!(metrics.record(vec![point(Kind::Counter, "requests", &[("route", "/a")], 2.0)]).is_empty());
        assert!(metrics.record(vec![point(Kind::Counter, "requests", &[("route", "/a")], 3.0)]).is_empty());
        assert!(metrics
            .record(vec![point(Kind::Gauge, "queue", &[], 7.0), point(Kind::Gauge, "queue", &[], 4.0)])
            .is_empty());
        let text = render(metrics);
        assert!(text.contains("# HELP ray_requests_total about requests\n"), "{text}");
        assert!(text.contains(r#"ray_requests_total{SessionName="s",NodeAddress="n",route="/a"} 5"#), "{text}");
        assert!(text.contains(r#"ray_queue{SessionName="s",NodeAddress="n"} 4"#), "{text}");
    }

    #[test]
    fn histograms_merge_bucket_counts_and_render_cumulative_buckets() {
        let metrics = UserMetrics::default();
        metrics.record(vec![histogram("latency", &[1.0, 10.0], &[1, 0, 0], 0.5)]);
        metrics.record(vec![histogram("latency", &[1.0, 10.0], &[0, 2, 1], 25.0)]);
        let text = render(metrics);
        for line in [
            r#"ray_latency_bucket{SessionName="s",NodeAddress="n",le="1"} 1"#,
            r#"ray_latency_bucket{SessionName="s",NodeAddress="n",le="10"} 3"#,
            r#"ray_latency_bucket{SessionName="s",NodeAddress="n",le="+Inf"} 4"#,
            r#"ray_latency_sum{SessionName="s",NodeAddress="n"} 25.5"#,
            r#"ray_latency_count{SessionName="s",NodeAddress="n"} 4"#,
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
    }

    #[test]
    fn bad_points_are_refused_with_the_reason_and_the_rest_applies() {
        let metrics = UserMetrics::default();
        let errors = metrics.record(vec![
            point(Kind::Counter, "1st", &[], 1.0),
            point(Kind::Counter, "ok", &[("bad-key", "v")], 1.0),
            point(Kind::Counter, "ok", &[], -1.0),
            histogram("h", &[1.0], &[1], 1.0),
            histogram("h", &[2.0, 1.0], &[1, 1, 1], 1.0),
            point(Kind::Counter, "ok", &[], 1.0),
            point(Kind::Gauge, "ok", &[], 1.0),
        ]);
        assert_eq!(errors.len(), 6, "{errors:?}");
        assert_eq!(errors[0], UserMetricError::BadName("1st".into()));
        assert!(matches!(errors[1], UserMetricError::BadTagKey { .. }));
        assert!(matches!(errors[5], UserMetricError::Conflict { .. }));
        assert!(errors[5].to_string().contains("first reported as a counter and now as a gauge"));
        assert!(render(metrics).contains("ray_ok_total{"));
    }

    #[test]
    fn the_number_of_series_is_bounded() {
        let metrics = UserMetrics::default();
        let points = (0..MAX_SERIES + 1).map(|i| point(Kind::Gauge, "g", &[("i", &i.to_string())], 1.0)).collect();
        let errors = metrics.record(points);
        assert_eq!(errors, vec![UserMetricError::TooManySeries("g".into())]);
        // Existing series still take updates.
        assert!(metrics.record(vec![point(Kind::Gauge, "g", &[("i", "0")], 2.0)]).is_empty());
    }

    #[test]
    fn names_and_tag_keys_follow_prometheus() {
        assert!(is_valid_metric_name("a:b_c9"));
        assert!(!is_valid_metric_name(""));
        assert!(!is_valid_metric_name("9a"));
        assert!(!is_valid_metric_name("a-b"));
        assert!(is_valid_tag_key("_x1"));
        assert!(!is_valid_tag_key("__x"));
        assert!(!is_valid_tag_key("a:b"));
    }
}
