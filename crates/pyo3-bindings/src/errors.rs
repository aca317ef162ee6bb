//! Errors cross into Python as Ray's exception classes from `rtd.exceptions`.

use pyo3::prelude::*;
use rtd_common::proto::ErrorCode;
use rtd_common::rpc::RpcError;
use rtd_core_worker::CoreError;

/// An instance of `rtd.exceptions.<name>(message)`.
pub fn rtd_error(name: &str, message: String) -> PyErr {
    Python::with_gil(|py| {
        let made =
            py.import("rtd.exceptions").and_then(|m| m.getattr(name)).and_then(|cls| cls.call1((message.clone(),)));
        match made {
            Ok(exc) => PyErr::from_value(exc),
            Err(e) => e,
        }
    })
}

pub fn core_error(e: CoreError) -> PyErr {
    match e {
        CoreError::Timeout(_) => rtd_error("GetTimeoutError", e.to_string()),
        CoreError::Interrupted => pyo3::exceptions::PyKeyboardInterrupt::new_err("interrupted"),
        CoreError::StoreFull(m) => rtd_error("ObjectStoreFullError", m),
        CoreError::ObjectLost(m) => rtd_error("ObjectLostError", m),
        CoreError::Invalid(m) => pyo3::exceptions::PyValueError::new_err(m),
        CoreError::Rpc(e) => rpc_error(e),
        CoreError::Internal(_) => rtd_error("RaySystemError", e.to_string()),
    }
}

/// A failed call: a peer refusing our token is an `AuthenticationError`, the rest
/// `RaySystemError`s.
pub fn rpc_error(e: RpcError) -> PyErr {
    match e.code() {
        ErrorCode::Unauthenticated => rtd_error("AuthenticationError", e.to_string()),
        _ => rtd_error("RaySystemError", CoreError::Rpc(e).to_string()),
    }
}
