//! The registry of a node's metrics and its rendering in Prometheus text format.
//!
//! Every series is named and labelled as Ray's: the `ray_` prefix, and the node's
//! `SessionName` and `NodeAddress` on each one, so Ray's Grafana dashboards (which
//! filter on them) work unchanged. Collectors registered here are asked for their
//! values at each scrape; `encode_gauge`/`encode_counter` write one family of them.

use std::borrow::Cow;
use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// What identifies a node's series among a cluster's.
#[derive(Debug, Clone)]
pub struct NodeLabels {
    /// The session directory's name (`session_<time>_<pid>`), as Ray's `SessionName`.
    pub session_name: String,
    /// The IP other nodes reach this one at.
    pub node_address: String,
}

pub struct MetricsRegistry {
    registry: Registry,
}

impl MetricsRegistry {
    pub fn new(labels: NodeLabels) -> Self {
        let labels: [(Cow<'static, str>, Cow<'static, str>); 2] =
            [("SessionName".into(), labels.session_name.into()), ("NodeAddress".into(), labels.node_address.into())];
        Self { registry: Registry::with_prefix_and_labels("ray", labels.into_iter()) }
    }

    /// Adds a source of series, read at every scrape.
    pub fn register(&mut self, collector: impl Collector) {
        self.registry.register_collector(Box::new(collector));
    }

    /// Adds a metric that keeps its own values (a histogram observed as things happen).
    pub fn register_metric(&mut self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        self.registry.register(name, help, metric);
    }

    /// Every series, in Prometheus text format (0.0.4).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail: an error comes from a collector, and what
        // was written before it is still worth serving.
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry) {
            tracing::warn!("rendering metrics: {e}");
        }
        text
    }
}

fn encode_family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    series: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, metric) in series {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes the gauge family `name`: one series per (labels, value).
pub fn encode_gauge<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, f64)>,
) -> fmt::Result {
    encode_family(encoder, name, help, MetricType::Gauge, series.into_iter().map(|(l, v)| (l, ConstGauge::new(v))))
}

/// Writes the counter family `name` (exported as `name_total`).
pub fn encode_counter<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, f64)>,
) -> fmt::Result {
    encode_family(encoder, name, help, MetricType::Counter, series.into_iter().map(|(l, v)| (l, ConstCounter::new(v))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed;

    impl Collector for Fixed {
        fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
            encode_gauge(
                &mut encoder,
                "resources",
                "Logical resources",
                [([("Name", "CPU"), ("State", "AVAILABLE")], 1.5), ([("Name", "CPU"), ("State", "USED")], 0.5)],
            )?;
            encode_counter(&mut encoder, "spill_manager_bytes", "Bytes spilled", [([("Type", "Spilled")], 42.0)])
        }
    }

    #[test]
    fn series_carry_the_ray_prefix_and_the_node_labels() {
        let mut registry =
            MetricsRegistry::new(NodeLabels { session_name: "session_1".into(), node_address: "10.0.0.1".into() });
        registry.register(Fixed);
        let text = registry.render();
        assert!(text.contains("# TYPE ray_resources gauge\n"), "{text}");
        assert!(
            text.contains(
                r#"ray_resources{SessionName="session_1",NodeAddress="10.0.0.1",Name="CPU",State="USED"} 0.5"#
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE ray_spill_manager_bytes_total counter\n"), "{text}");
        assert!(
            text.contains(
                r#"ray_spill_manager_bytes_total{SessionName="session_1",NodeAddress="10.0.0.1",Type="Spilled"} 42"#
            ),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        #[derive(Debug)]
        struct Quoted;
        impl Collector for Quoted {
            fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
                encode_gauge(&mut encoder, "tasks", "Tasks", [([("Name", "say \"hi\"\n")], 1.0)])
            }
        }
        let mut registry = MetricsRegistry::new(NodeLabels { session_name: "s".into(), node_address: "a".into() });
        registry.register(Quoted);
        assert!(registry.render().contains(r#"Name="say \"hi\"\n"} 1"#), "{}", registry.render());
    }
}
