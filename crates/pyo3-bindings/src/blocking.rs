//! Leaving Python for a call that may block: `py.enter_rtd(|interrupted| ...)`.
//!
//! Every binding that calls into the core worker and may wait (on the node, the GCS,
//! another process or the object store) goes through `enter_rtd`, so none forgets a
//! piece of what such a call needs:
//!
//! - the GIL is released, so other Python threads run meanwhile;
//! - Ctrl-C works: Python's signal handler only sets a flag, and the handler's
//!   exception (`KeyboardInterrupt`) can only be raised on the main thread holding the
//!   GIL. The core worker's blocking calls therefore poll the `interrupted` check they
//!   are handed between short slices of their wait; it takes the GIL, runs the pending
//!   handlers, and ends the call once one raised, which then propagates to Python;
//! - errors become Ray's exception classes (see `errors`).
//!
//! A call that must not be cut short (actor creation, once the GCS may have the actor)
//! simply ignores the check. Modelled on polars' `enter_polars`.

use pyo3::prelude::*;
use rtd_core_worker::CoreError;

use crate::errors::core_error;

pub(crate) trait EnterRtd {
    /// Runs `f` without the GIL, handing it the interrupt check for the core worker's
    /// blocking calls, and maps its error to a Python exception.
    fn enter_rtd<T, F>(self, f: F) -> PyResult<T>
    where
        F: Send + FnOnce(&mut dyn FnMut() -> bool) -> Result<T, CoreError>,
        T: Send;

    /// `enter_rtd` for a call that cannot fail.
    fn enter_rtd_ok<T, F>(self, f: F) -> PyResult<T>
    where
        Self: Sized,
        F: Send + FnOnce() -> T,
        T: Send,
    {
        self.enter_rtd(|_| Ok(f()))
    }
}

impl EnterRtd for Python<'_> {
    fn enter_rtd<T, F>(self, f: F) -> PyResult<T>
    where
        F: Send + FnOnce(&mut dyn FnMut() -> bool) -> Result<T, CoreError>,
        T: Send,
    {
        let mut raised: Option<PyErr> = None;
        let result = self.allow_threads(|| {
            let mut interrupted = || {
                Python::with_gil(|py| match py.check_signals() {
                    Ok(()) => false,
                    Err(e) => {
                        raised = Some(e);
                        true
                    }
                })
            };
            f(&mut interrupted)
        });
        match raised {
            Some(e) => Err(e),
            None => result.map_err(core_error),
        }
    }
}
