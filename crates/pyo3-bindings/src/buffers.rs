//! Moving bytes across the boundary without copying them twice.
//!
//! `BorrowedBuffers` reads the memory of Python buffer objects (pickle-5 out-of-band
//! buffers) so it can be copied into the object store with the GIL released.
//! `PlasmaBuffer` goes the other way: a read-only Python buffer over an object pinned
//! in shared memory. numpy arrays deserialized from it keep it alive, and the pin is
//! released only when the last view is gone, so the store never reuses memory that
//! Python can still see.

use std::os::raw::c_int;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use rtd_core_worker::PinnedObject;

pub struct BorrowedBuffers {
    buffers: Vec<PyBuffer<u8>>,
}

// SAFETY: the buffers are only read, and the exporting objects are kept alive (and
// immutable by contract of pickle-5 out-of-band data) while `BorrowedBuffers` lives.
unsafe impl Send for BorrowedBuffers {}
unsafe impl Sync for BorrowedBuffers {}

impl BorrowedBuffers {
    pub fn new(objects: &[Bound<'_, PyAny>]) -> PyResult<Self> {
        let buffers = objects
            .iter()
            .map(|o| {
                let b = PyBuffer::<u8>::get(o)?;
                if !b.is_c_contiguous() {
                    return Err(PyBufferError::new_err("out-of-band buffers must be C-contiguous"));
                }
                Ok(b)
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Self { buffers })
    }

    pub fn slices(&self) -> Vec<&[u8]> {
        self.buffers
            .iter()
            .map(|b| {
                // SAFETY: a contiguous buffer of `len_bytes` bytes held by `b`.
                unsafe { std::slice::from_raw_parts(b.buf_ptr() as *const u8, b.len_bytes()) }
            })
            .collect()
    }
}

#[pyclass(module = "rtd._core", frozen)]
pub struct PlasmaBuffer {
    pinned: PinnedObject,
}

impl PlasmaBuffer {
    pub fn new(pinned: PinnedObject) -> Self {
        Self { pinned }
    }
}

#[pymethods]
impl PlasmaBuffer {
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("objects in the rtd object store are read-only"));
        }
        let (ptr, len) = {
            let this = slf.get();
            (this.pinned.as_ptr(), this.pinned.len())
        };
        // PyBuffer_FillInfo takes a new reference to `slf` as the view's owner, which
        // keeps the pin alive for as long as the view exists.
        let rc = ffi::PyBuffer_FillInfo(view, slf.as_ptr(), ptr as *mut _, len as ffi::Py_ssize_t, 1, flags);
        if rc == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}

    fn __len__(&self) -> usize {
        self.pinned.len()
    }
}
