//! The worker process's side of the boundary: Python's main loop takes tasks with
//! `next_task`, reads argument values with `arg_values`, and answers with
//! `finish_task`.

use std::time::Duration;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use rtd_core_worker::IncomingTask;

use crate::blocking::EnterRtd;
use crate::buffers::BorrowedBuffers;
use crate::object_ref::{id_owner_pairs, ObjectRef};
use crate::{core, fetched_to_py};

/// One pushed task, until Python finishes it.
#[pyclass(module = "rtd._core", frozen)]
pub struct Task {
    inner: Mutex<Option<IncomingTask>>,
    #[pyo3(get)]
    function_id: Vec<u8>,
    #[pyo3(get)]
    function_name: String,
    #[pyo3(get)]
    num_returns: usize,
    /// A generator task (`num_returns="streaming"` or `"dynamic"`).
    #[pyo3(get)]
    streaming_generator: bool,
    /// `num_returns="dynamic"`: the result lists the items' refs.
    #[pyo3(get)]
    generator_dynamic: bool,
    /// Unconsumed items at which the owner holds the generator (0: never).
    #[pyo3(get)]
    generator_backpressure_num_objects: u64,
    /// The address of the process that submitted the task (and owns its results).
    #[pyo3(get)]
    owner: String,
    #[pyo3(get)]
    gpu_ids: Vec<u32>,
    #[pyo3(get)]
    task_id: String,
    #[pyo3(get)]
    attempt: u32,
    #[pyo3(get)]
    job_id: String,
    #[pyo3(get)]
    actor_creation: bool,
    /// Hex id of the actor this task belongs to (empty for a plain task).
    #[pyo3(get)]
    actor_id: String,
    #[pyo3(get)]
    method_name: String,
    /// Placement group (raw id) this task's children use by default, if any.
    #[pyo3(get)]
    capture_placement_group: Option<Vec<u8>>,
    #[pyo3(get)]
    concurrency_group: String,
    /// The task's resource request, as floats.
    #[pyo3(get)]
    resources: std::collections::BTreeMap<String, f64>,
}

#[pymethods]
impl Task {
    #[getter]
    fn args<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let guard = self.inner.lock();
        let task = guard.as_ref().ok_or_else(finished)?;
        Ok(PyBytes::new(py, &task.spec.args))
    }

    /// The pickled retry policy (empty: only system failures retry).
    #[getter]
    fn retry_exceptions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let guard = self.inner.lock();
        let task = guard.as_ref().ok_or_else(finished)?;
        Ok(PyBytes::new(py, &task.spec.retry_exceptions))
    }
}

fn finished() -> PyErr {
    pyo3::exceptions::PyRuntimeError::new_err("this task has already been finished")
}

/// The next task pushed to this worker, or None after `timeout` seconds.
#[pyfunction]
pub fn next_task(py: Python<'_>, timeout: f64) -> PyResult<Option<Task>> {
    let core = core()?;
    let wait = Duration::from_secs_f64(timeout.max(0.0));
    let Some(task) = py.enter_rtd_ok(|| core.next_task(wait))? else {
        return Ok(None);
    };
    let spec = &task.spec;
    Ok(Some(Task {
        function_id: spec.function_id.to_vec(),
        function_name: spec.function_name.clone(),
        num_returns: spec.return_ids.len(),
        streaming_generator: spec.streaming_generator,
        generator_dynamic: spec.generator_dynamic,
        generator_backpressure_num_objects: spec.generator_backpressure_num_objects,
        owner: spec.owner.clone(),
        gpu_ids: task.gpu_ids.clone(),
        task_id: task.task_id().hex(),
        attempt: spec.attempt,
        actor_creation: spec.actor_creation,
        actor_id: rtd_common::ActorId::from_bytes(&spec.actor_id).map(|a| a.hex()).unwrap_or_default(),
        method_name: spec.method_name.clone(),
        capture_placement_group: (!spec.capture_placement_group.is_empty())
            .then(|| spec.capture_placement_group.to_vec()),
        concurrency_group: spec.concurrency_group.clone(),
        job_id: rtd_common::JobId::from_bytes(&spec.job_id).map(|j| j.hex()).unwrap_or_default(),
        resources: rtd_common::ResourceSet::from_fixed_map(&spec.resources).to_floats(),
        inner: Mutex::new(Some(task)),
    }))
}

/// Values of the task's top-level ObjectRef arguments, as `get` returns them.
#[pyfunction]
pub fn arg_values<'py>(py: Python<'py>, task: &Task) -> PyResult<Bound<'py, PyList>> {
    let core = core()?;
    let args = {
        let guard = task.inner.lock();
        guard.as_ref().ok_or_else(finished)?.spec.arg_refs.clone()
    };
    let values =
        py.enter_rtd(|interrupted| args.iter().map(|a| core.arg_value(a, interrupted)).collect::<Result<Vec<_>, _>>())?;
    let items: PyResult<Vec<_>> = values.into_iter().map(|v| fetched_to_py(py, v)).collect();
    PyList::new(py, items?)
}

/// One result from Python: metadata, pickle, out-of-band buffers, refs inside.
type PyResultParts<'py> = (u32, Vec<u8>, Vec<Bound<'py, PyAny>>, Vec<PyRef<'py, ObjectRef>>);

/// Replies to the submitter with the task's results: `(metadata, payload, buffers,
/// contained refs)` per return value; `error` is `(Ray's error type, text)` when the
/// task failed.
#[pyfunction]
#[pyo3(signature = (task, results, app_error, retryable, error=None))]
pub fn finish_task(
    py: Python<'_>,
    task: &Task,
    results: Vec<PyResultParts<'_>>,
    app_error: bool,
    retryable: bool,
    error: Option<(String, String)>,
) -> PyResult<()> {
    let core = core()?;
    let incoming = task.inner.lock().take().ok_or_else(finished)?;
    let mut parts = Vec::with_capacity(results.len());
    for (metadata, payload, buffers, contained) in &results {
        parts.push((*metadata, payload, BorrowedBuffers::new(buffers)?, id_owner_pairs(contained)));
    }
    py.enter_rtd(|_| {
        let results = parts.iter().map(|(m, p, b, c)| (*m, p.as_slice(), b.slices(), c.clone())).collect();
        core.finish_task(incoming, results, app_error, retryable, error)
    })
}

/// Stores item `index` that the running generator task yielded (`(metadata, payload,
/// buffers, contained refs)`) and reports it to the task's owner; returns the item's
/// id. Under backpressure it returns once the owner lets the task go on.
#[pyfunction]
pub fn report_generator_item<'py>(
    py: Python<'py>,
    task: &Task,
    index: u32,
    item: PyResultParts<'py>,
) -> PyResult<Bound<'py, PyBytes>> {
    let core = core()?;
    let (metadata, payload, buffers, contained) = &item;
    let buffers = BorrowedBuffers::new(buffers)?;
    let contained = id_owner_pairs(contained);
    let mut guard = task.inner.lock();
    let incoming = guard.as_mut().ok_or_else(finished)?;
    let id = py.enter_rtd(|interrupted| {
        core.report_generator_item(incoming, index, (*metadata, payload, buffers.slices(), contained), interrupted)
    })?;
    Ok(PyBytes::new(py, id.as_bytes()))
}

/// Raises KeyboardInterrupt in the main thread (cancelling the running task).
pub fn interrupt_main_thread() {
    // SAFETY: PyErr_SetInterrupt is async-signal-safe and needs no thread state.
    unsafe { pyo3::ffi::PyErr_SetInterrupt() };
}
