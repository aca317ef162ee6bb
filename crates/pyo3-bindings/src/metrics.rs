//! `rtd.util.metrics` glue: a metric's definition, and recording a value of it.

use std::collections::HashMap;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use rtd_core_worker::{MetricKind, UserMetric};

use crate::core_if_connected;

/// What a Counter, Gauge or Histogram of `rtd.util.metrics` is, built once per object.
#[pyclass(frozen, module = "rtd._core", name = "UserMetric")]
pub struct PyUserMetric(UserMetric);

#[pymethods]
impl PyUserMetric {
    #[new]
    fn new(name: String, description: String, kind: &str, boundaries: Vec<f64>) -> PyResult<Self> {
        let kind = match kind {
            "counter" => MetricKind::Counter,
            "gauge" => MetricKind::Gauge,
            "histogram" => MetricKind::Histogram,
            other => return Err(PyValueError::new_err(format!("unknown metric kind {other:?}"))),
        };
        Ok(Self(UserMetric { name, description, kind, boundaries }))
    }
}

/// Records `value` of `metric` for `tags`. Before `rtd.init()` there is no node to
/// report to, and the value is dropped (as Ray drops it).
#[pyfunction]
pub fn record_metric(metric: &PyUserMetric, tags: HashMap<String, String>, value: f64) {
    if let Some(core) = core_if_connected() {
        core.record_metric(&metric.0, tags.into_iter().collect(), value);
    }
}
