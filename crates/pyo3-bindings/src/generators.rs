//! Generator tasks from Python: the options that make a task a generator, and the
//! consumer's side of its stream (`rtd._private.generator.ObjectRefGenerator` calls
//! these with the task's completed ref, which names the stream).

use pyo3::prelude::*;
use rtd_core_worker::{GeneratorNext, GeneratorOptions};

use crate::blocking::EnterRtd;
use crate::object_ref::ObjectRef;
use crate::{core, core_if_connected, timeout_of};

/// `(backpressure_num_objects, dynamic)` as Python passes them.
pub(crate) fn generator_options((backpressure_num_objects, dynamic): (u64, bool)) -> GeneratorOptions {
    GeneratorOptions { backpressure_num_objects, dynamic }
}

/// The stream's next item: `("item", ref)`; `("failed", completed ref)` when the task
/// failed after the items so far (its value is the error); `("pending", None)` when
/// none came within `timeout` seconds; `("end", None)` after the last.
#[pyfunction]
#[pyo3(signature = (completed, timeout=None))]
pub fn generator_next(
    py: Python<'_>,
    completed: PyRef<'_, ObjectRef>,
    timeout: Option<f64>,
) -> PyResult<(&'static str, Option<ObjectRef>)> {
    let core = core()?;
    let timeout = timeout_of(timeout)?;
    let (task_id, owner) = (completed.id.task_id(), completed.owner.clone());
    let (next, item) = py.enter_rtd(|interrupted| {
        core.generator_next(task_id, timeout, interrupted, |id| ObjectRef::new(&core, id, owner))
    })?;
    let kind = match next {
        GeneratorNext::Item(_) => "item",
        GeneratorNext::Failed(_) => "failed",
        GeneratorNext::Pending => "pending",
        GeneratorNext::End => "end",
    };
    Ok((kind, item))
}

/// Calls `callback()` (on a background thread) once `generator_next` would not wait.
#[pyfunction]
pub fn on_generator_next(completed: PyRef<'_, ObjectRef>, callback: PyObject) -> PyResult<()> {
    core()?.on_generator_next(completed.id.task_id(), move || {
        Python::with_gil(|py| {
            if let Err(e) = callback.call0(py) {
                e.print(py);
            }
        })
    });
    Ok(())
}

/// Whether the stream has handed out everything it will.
#[pyfunction]
pub fn generator_is_finished(completed: PyRef<'_, ObjectRef>) -> PyResult<bool> {
    Ok(core()?.generator_is_finished(completed.id.task_id()))
}

/// The consumer dropped the generator: unconsumed items are released. Safe at
/// interpreter exit (does nothing once disconnected).
#[pyfunction]
pub fn release_generator(completed: PyRef<'_, ObjectRef>) {
    if let Some(core) = core_if_connected() {
        core.release_generator(completed.id.task_id());
    }
}
