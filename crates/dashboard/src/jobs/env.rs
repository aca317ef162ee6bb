//! Preparing a job's `runtime_env` for its entrypoint on the head.

use serde_json::{Map, Value};

use super::manager::{EnvSetup, PrepareFuture, PreparedEnv};

/// Sets `env_vars`; other keys need the runtime-environment support of the build.
pub struct EnvVarsOnly;

impl EnvSetup for EnvVarsOnly {
    fn prepare(&self, _submission_id: &str, runtime_env: &Map<String, Value>) -> PrepareFuture {
        let prepared = env_vars(runtime_env).and_then(|env| {
            match runtime_env.keys().find(|k| !matches!(k.as_str(), "env_vars" | "config" | "excludes")) {
                Some(key) => Err(format!("runtime_env key {key:?} is not implemented for jobs yet")),
                None => Ok(PreparedEnv { cwd: None, env }),
            }
        });
        Box::pin(async move { prepared })
    }
}

/// `runtime_env["env_vars"]`: a dict of strings.
pub fn env_vars(runtime_env: &Map<String, Value>) -> Result<Vec<(String, String)>, String> {
    match runtime_env.get("env_vars") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(vars)) => vars
            .iter()
            .map(|(k, v)| match v {
                Value::String(v) => Ok((k.clone(), v.clone())),
                other => Err(format!("env_vars values must be strings, got {other} for {k:?}")),
            })
            .collect(),
        Some(other) => Err(format!("env_vars must be a dict of strings, got {other}")),
    }
}
