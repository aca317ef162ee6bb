//! `ObjectRef`: a future's handle, as in Ray. Creating one counts a local reference in
//! the core worker and dropping it releases that reference, so Python's own garbage
//! collection drives distributed reference counting.
//!
//! rtd's serializer pickles values between `start_collecting_refs` and
//! `stop_collecting_refs`: the refs pickled meanwhile travel inside an argument, a result
//! or a `put` value, and the core worker keeps them alive through the borrower protocol.
//! A ref pickled any other way (`pickle.dumps(ref)`) cannot be followed, so its object
//! is kept for as long as its owner lives, as in Ray.

use std::cell::RefCell;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use rtd_common::ObjectId;
use rtd_core_worker::CoreWorker;

use crate::{core, core_if_connected};

thread_local! {
    /// Refs pickled by rtd's serializer on this thread, one list per serialization in
    /// progress (innermost last).
    static COLLECTING: RefCell<Vec<Vec<Py<ObjectRef>>>> = const { RefCell::new(Vec::new()) };
}

/// Starts recording the refs pickled on this thread.
#[pyfunction]
pub fn start_collecting_refs() {
    COLLECTING.with(|c| c.borrow_mut().push(Vec::new()));
}

/// Stops the innermost recording and returns the refs it saw.
#[pyfunction]
pub fn stop_collecting_refs() -> Vec<Py<ObjectRef>> {
    COLLECTING.with(|c| c.borrow_mut().pop().unwrap_or_default())
}

/// Ids and owners of refs handed over by Python.
pub fn id_owner_pairs(refs: &[PyRef<'_, ObjectRef>]) -> Vec<(ObjectId, String)> {
    refs.iter().map(|r| (r.id, r.owner.clone())).collect()
}

#[pyclass(module = "rtd", name = "ObjectRef", frozen)]
pub struct ObjectRef {
    pub id: ObjectId,
    pub owner: String,
    /// The core worker the local reference was counted in.
    counted_in: std::sync::Weak<CoreWorker>,
}

impl ObjectRef {
    pub fn new(core: &Arc<CoreWorker>, id: ObjectId, owner: String) -> Self {
        core.add_local_ref(id, &owner);
        Self { id, owner, counted_in: Arc::downgrade(core) }
    }
}

impl Drop for ObjectRef {
    fn drop(&mut self) {
        if let Some(core) = self.counted_in.upgrade() {
            core.remove_local_ref(&self.id);
        }
    }
}

#[pymethods]
impl ObjectRef {
    /// Rebuilds a ref received from another process (used by unpickling).
    #[new]
    fn py_new(id: &[u8], owner: String) -> PyResult<Self> {
        let id = ObjectId::from_bytes(id).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
        match core_if_connected() {
            Some(core) => Ok(Self::new(&core, id, owner)),
            None => Ok(Self { id, owner, counted_in: std::sync::Weak::new() }),
        }
    }

    fn binary<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.id.as_bytes())
    }

    fn hex(&self) -> String {
        self.id.hex()
    }

    fn owner_address(&self) -> &str {
        &self.owner
    }

    fn task_id(&self) -> String {
        self.id.task_id().hex()
    }

    fn __hash__(&self) -> u64 {
        let b = self.id.as_bytes();
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) ^ u64::from(b[24])
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.downcast::<ObjectRef>().map(|o| o.get().id == self.id).unwrap_or(false)
    }

    fn __repr__(&self) -> String {
        format!("ObjectRef({})", self.id.hex())
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let this = slf.get();
        let collected = COLLECTING.with(|c| match c.borrow_mut().last_mut() {
            Some(refs) => {
                refs.push(slf.clone().unbind());
                true
            }
            None => false,
        });
        if !collected {
            if let Some(core) = this.counted_in.upgrade() {
                core.mark_escaped(&this.id);
            }
        }
        let cls = py.get_type::<ObjectRef>();
        (cls, (PyBytes::new(py, this.id.as_bytes()), this.owner.clone())).into_pyobject(py)
    }

    /// A `concurrent.futures.Future` resolved with the value.
    fn future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py().import("rtd._private.futures")?.call_method1("future_for", (slf,))
    }

    fn __await__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py().import("rtd._private.futures")?.call_method1("await_ref", (slf,))?.call_method0("__await__")
    }
}

/// Calls `callback()` (on a background thread) once the object is ready.
#[pyfunction]
pub fn on_ready(r: PyRef<'_, ObjectRef>, callback: PyObject) -> PyResult<()> {
    core()?.on_ready(r.id, move || {
        Python::with_gil(|py| {
            if let Err(e) = callback.call0(py) {
                e.print(py);
            }
        })
    });
    Ok(())
}
