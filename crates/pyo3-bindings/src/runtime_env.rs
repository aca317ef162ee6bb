//! `runtime_env` from Python: validating a spec, and preparing one for submission
//! (merged over its parent's, local directories packed and uploaded to the GCS KV).
//! The rules are `rtd_runtime_env`'s; this converts types, errors and the GIL.

use std::path::{Path, PathBuf};

use pyo3::prelude::*;
use rtd_runtime_env::package::{is_package_uri, pack_path, Layout, MAX_PACKAGE_SIZE};
use rtd_runtime_env::{RuntimeEnvError, RuntimeEnvSpec};

use crate::blocking::EnterRtd;
use crate::core;

fn to_py(e: RuntimeEnvError) -> PyErr {
    match e {
        RuntimeEnvError::NotImplemented(m) => pyo3::exceptions::PyNotImplementedError::new_err(m),
        RuntimeEnvError::Invalid(m) => pyo3::exceptions::PyValueError::new_err(m),
        other => pyo3::exceptions::PyValueError::new_err(other.to_string()),
    }
}

/// A spec's JSON; "" is the empty environment.
fn parse(json: &str) -> PyResult<RuntimeEnvSpec> {
    if json.trim().is_empty() {
        return Ok(RuntimeEnvSpec::default());
    }
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| pyo3::exceptions::PyTypeError::new_err(format!("runtime_env must be JSON-serializable: {e}")))?;
    RuntimeEnvSpec::from_json(&value).map_err(to_py)
}

/// Checks a runtime_env (JSON of the user's dict); returns its canonical JSON.
#[pyfunction]
pub fn runtime_env_validate(json: &str) -> PyResult<String> {
    Ok(parse(json)?.to_json().to_string())
}

/// Ray's merge of a child's runtime_env over its parent's (both JSON), canonical JSON back.
#[pyfunction]
pub fn runtime_env_merge(child: &str, parent: &str) -> PyResult<String> {
    Ok(parse(child)?.merged_over(&parse(parent)?).to_json().to_string())
}

/// `child` merged over `parent` (JSON; `parent` may already hold package URIs), with a
/// requirements file read and local `working_dir`/`py_modules` packed and stored in the
/// GCS KV under their URIs (except those in `present`, put by this process, and those
/// the GCS already holds), relative paths taken from `cwd`. Returns the canonical JSON
/// the task or actor carries ("" for the empty environment) and the URIs this call put.
#[pyfunction]
pub fn runtime_env_prepare(
    py: Python<'_>,
    child: &str,
    parent: &str,
    cwd: &str,
    present: Vec<String>,
) -> PyResult<(String, Vec<String>)> {
    let mut spec = parse(child)?.merged_over(&parse(parent)?);
    if spec.is_empty() {
        return Ok((String::new(), Vec::new()));
    }
    let cwd = PathBuf::from(cwd);
    spec.read_requirements(&cwd).map_err(to_py)?;
    let excludes = spec.excludes.clone().unwrap_or_default();
    let mut packages = Vec::new();
    let packed = py.allow_threads(|| -> Result<RuntimeEnvSpec, RuntimeEnvError> {
        if let Some(dir) = spec.working_dir.take() {
            spec.working_dir = Some(pack_local(&cwd, &dir, &excludes, Layout::Contents, &mut packages)?);
        }
        if let Some(modules) = spec.py_modules.take() {
            let uris = modules
                .iter()
                .map(|m| pack_local(&cwd, m, &excludes, Layout::UnderOwnName, &mut packages))
                .collect::<Result<Vec<_>, _>>()?;
            spec.py_modules = Some(uris);
        }
        Ok(spec)
    });
    let spec = packed.map_err(to_py)?;
    let mut put: Vec<String> = Vec::new();
    for (uri, bytes) in packages {
        if present.contains(&uri) || put.contains(&uri) {
            continue;
        }
        let core = core()?;
        // Content-addressed: a package another driver put holds the same bytes.
        if py.enter_rtd(|interrupted| core.kv_exists(&uri, interrupted))? {
            continue;
        }
        py.enter_rtd(|interrupted| core.kv_put(&uri, bytes, interrupted))?;
        put.push(uri);
    }
    Ok((spec.to_json().to_string(), put))
}

/// The job's prepared runtime_env (canonical JSON): unless its `config` says
/// `eager_install: false`, every node of the cluster sets it up now, in the background.
#[pyfunction]
pub fn runtime_env_install_eagerly(py: Python<'_>, prepared: &str) -> PyResult<()> {
    let spec = parse(prepared)?;
    if spec.is_empty() || !spec.config.as_ref().is_none_or(|c| c.eager_install) {
        return Ok(());
    }
    let core = core()?;
    py.enter_rtd(|interrupted| core.prepare_runtime_env(prepared.to_string(), interrupted))
}

/// A local path packed (its URI back, its bytes queued for upload); a URI stays as it is.
fn pack_local(
    cwd: &Path,
    location: &str,
    excludes: &[String],
    layout: Layout,
    packages: &mut Vec<(String, Vec<u8>)>,
) -> Result<String, RuntimeEnvError> {
    if is_package_uri(location) {
        return Ok(location.to_string());
    }
    let path = cwd.join(location);
    if !path.exists() {
        let what = if layout == Layout::Contents { "working_dir" } else { "py_modules entry" };
        return Err(RuntimeEnvError::Missing { what, path });
    }
    let package = pack_path(&path, excludes, layout, MAX_PACKAGE_SIZE)?;
    let uri = package.uri.clone();
    packages.push((package.uri, package.bytes));
    Ok(uri)
}
