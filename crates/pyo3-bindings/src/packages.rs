//! Packing a local `working_dir` or `py_modules` path for upload (the jobs client sends
//! it to the head's package endpoint), through `rtd_runtime_env`'s packer.

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rtd_runtime_env::package::{Layout, MAX_PACKAGE_SIZE};

/// `(uri, zip bytes)` of the directory (or `.zip`/`.whl` file) at `path`, leaving out
/// what `excludes` match; with `include_parent_dir` its files are under its own name (a
/// `py_modules` package). A missing path or one over 500 MiB is a `ValueError`.
#[pyfunction]
pub fn pack_package<'py>(
    py: Python<'py>,
    path: String,
    excludes: Vec<String>,
    include_parent_dir: bool,
) -> PyResult<(String, Bound<'py, PyBytes>)> {
    let layout = if include_parent_dir { Layout::UnderOwnName } else { Layout::Contents };
    let package = py
        .allow_threads(|| rtd_runtime_env::pack_path(std::path::Path::new(&path), &excludes, layout, MAX_PACKAGE_SIZE))
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    Ok((package.uri, PyBytes::new(py, &package.bytes)))
}
