//! Preparing a job's `runtime_env` on the head for its entrypoint, through the node
//! setup of `rtd_runtime_env` (Ray's runtime env agent): the unpacked `working_dir`
//! becomes its current directory, `py_modules` go on `PYTHONPATH`, `env_vars` are set,
//! and a `pip` environment's venv is activated (`VIRTUAL_ENV`, its `bin` first on `PATH`). The driver's tasks get
//! the same runtime_env as the job's (through the job config).

use std::path::PathBuf;
use std::sync::Arc;

use rtd_runtime_env::{PackageSource, RuntimeEnvSpec};
use serde_json::{Map, Value};

use super::manager::{EnvSetup, PrepareFuture, PreparedEnv};

pub struct RuntimeEnvSetup {
    /// Where uploaded packages are fetched from (the GCS's KV).
    pub packages: Arc<dyn PackageSource>,
    /// The node's cache of environments (`<temp_dir>/runtime_resources`).
    pub cache_root: PathBuf,
    /// The interpreter the node's workers run; a `pip` environment is layered on it.
    pub python: String,
}

impl EnvSetup for RuntimeEnvSetup {
    fn prepare(&self, _submission_id: &str, runtime_env: &Map<String, Value>) -> PrepareFuture {
        let spec = RuntimeEnvSpec::from_json(&Value::Object(runtime_env.clone()));
        let (packages, cache_root, python) = (self.packages.clone(), self.cache_root.clone(), self.python.clone());
        Box::pin(async move {
            let spec = spec.map_err(|e| e.to_string())?;
            let context = rtd_runtime_env::setup(&spec, packages.as_ref(), &cache_root, &python)
                .await
                .map_err(|e| e.to_string())?;
            Ok(PreparedEnv { env: context.variables(), cwd: context.cwd })
        })
    }
}
