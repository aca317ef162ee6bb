//! The runtime_env spec: which keys exist, what each may hold, how a child's spec merges
//! over its parent's, and the hash that names an environment. Every rule lives here; the
//! Python package hands the user's dict over as JSON and gets errors or a canonical spec
//! back.
//!
//! Ray's merge rule: a task's or actor's `runtime_env` merges over its job's key by key
//! (the child's value of a top-level key replaces the parent's), except `env_vars`, which
//! merge variable by variable with the child's winning. Ray raises `NotImplementedError`
//! for nothing; rtd does for the keys it does not implement (`conda`, `container`,
//! `image_uri`, ...) so that a program asking for them fails loudly, not silently
//! without its environment.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::error::RuntimeEnvError;
use crate::package::is_package_uri;

/// Ray's default for `RuntimeEnvConfig(setup_timeout_seconds=)`.
pub const DEFAULT_SETUP_TIMEOUT_S: i64 = 600;

/// The keys rtd implements, in the order error messages list them.
const SUPPORTED: &[&str] = &["env_vars", "working_dir", "py_modules", "pip", "uv", "excludes", "config"];

/// Ray keys rtd does not implement: each raises `NotImplementedError` naming it.
const NOT_IMPLEMENTED: &[(&str, &str)] = &[
    ("conda", "conda environments are"),
    ("container", "containers are"),
    ("image_uri", "container images (image_uri) are"),
    ("java_jars", "Java jars are"),
    ("nsight", "Nsight profiling is"),
    ("mpi", "MPI is"),
    ("worker_process_setup_hook", "worker_process_setup_hook is"),
];

/// `config`: Ray's `RuntimeEnvConfig`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeEnvConfig {
    /// Seconds a node may spend setting the environment up; -1: no limit.
    pub setup_timeout_seconds: i64,
    /// Job level only: set the environment up on every node when the job starts
    /// (`rtd.init`), rather than when its first worker is needed.
    pub eager_install: bool,
}

impl Default for RuntimeEnvConfig {
    fn default() -> Self {
        RuntimeEnvConfig { setup_timeout_seconds: DEFAULT_SETUP_TIMEOUT_S, eager_install: true }
    }
}

/// `pip` (or `uv`): what to install into the environment's virtual environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipSpec {
    /// Requirement lines, as pip takes them.
    pub packages: Vec<String>,
    /// Run `pip check` after installing.
    pub pip_check: bool,
    /// The requirements file, when the spec named one; read into `packages` on the driver.
    pub requirements_file: Option<String>,
}

/// A validated runtime_env.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeEnvSpec {
    pub env_vars: BTreeMap<String, String>,
    /// A local directory or `.zip` (on the driver), or a package URI (once uploaded).
    pub working_dir: Option<String>,
    pub py_modules: Option<Vec<String>>,
    pub pip: Option<PipSpec>,
    pub excludes: Option<Vec<String>>,
    pub config: Option<RuntimeEnvConfig>,
}

fn invalid(message: impl Into<String>) -> RuntimeEnvError {
    RuntimeEnvError::Invalid(message.into())
}

fn string_list(key: &str, value: &Value) -> Result<Vec<String>, RuntimeEnvError> {
    let items = value
        .as_array()
        .ok_or_else(|| invalid(format!("runtime_env['{key}'] must be a list of strings, got {value}")))?;
    items
        .iter()
        .map(|item| {
            item.as_str()
                .map(str::to_string)
                .ok_or_else(|| invalid(format!("runtime_env['{key}'] must be a list of strings, got item {item}")))
        })
        .collect()
}

fn parse_pip(key: &str, value: &Value) -> Result<PipSpec, RuntimeEnvError> {
    match value {
        Value::String(file) => Ok(PipSpec { packages: Vec::new(), pip_check: false, requirements_file: Some(file.clone()) }),
        Value::Array(_) => Ok(PipSpec { packages: string_list(key, value)?, pip_check: false, requirements_file: None }),
        Value::Object(map) => {
            let mut spec = PipSpec { packages: Vec::new(), pip_check: false, requirements_file: None };
            for (field, v) in map {
                match field.as_str() {
                    "packages" => spec = PipSpec { pip_check: spec.pip_check, ..parse_pip(key, v)? },
                    "pip_check" => {
                        spec.pip_check = v.as_bool().ok_or_else(|| invalid(format!("runtime_env['{key}']['pip_check'] must be a bool, got {v}")))?
                    }
                    "pip_version" | "uv_version" if v.is_null() => {}
                    "pip_version" | "uv_version" => {
                        return Err(RuntimeEnvError::NotImplemented(format!(
                            "runtime_env['{key}']['{field}'] is not implemented in rtd: the node's installer version is used"
                        )))
                    }
                    other => {
                        return Err(invalid(format!(
                            "runtime_env['{key}'] has an unknown field '{other}'; expected packages, pip_check"
                        )))
                    }
                }
            }
            if !map.contains_key("packages") {
                return Err(invalid(format!("runtime_env['{key}'] as a dict needs 'packages'")));
            }
            Ok(spec)
        }
        other => Err(invalid(format!(
            "runtime_env['{key}'] must be a list of requirements, a requirements file path or a dict with 'packages', got {other}"
        ))),
    }
}

fn parse_config(value: &Value) -> Result<RuntimeEnvConfig, RuntimeEnvError> {
    let map = value
        .as_object()
        .ok_or_else(|| invalid(format!("runtime_env['config'] must be a dict or RuntimeEnvConfig, got {value}")))?;
    let mut config = RuntimeEnvConfig::default();
    for (field, v) in map {
        match field.as_str() {
            "setup_timeout_seconds" => {
                let seconds =
                    v.as_i64().ok_or_else(|| invalid(format!("setup_timeout_seconds must be an int, got {v}")))?;
                if seconds <= 0 && seconds != -1 {
                    return Err(invalid(format!("setup_timeout_seconds must be > 0 or -1 (no limit), got {seconds}")));
                }
                config.setup_timeout_seconds = seconds;
            }
            "eager_install" => {
                config.eager_install =
                    v.as_bool().ok_or_else(|| invalid(format!("eager_install must be a bool, got {v}")))?;
            }
            "log_files" => {}
            other => {
                return Err(invalid(format!(
                "runtime_env['config'] has an unknown field '{other}'; expected setup_timeout_seconds, eager_install"
            )))
            }
        }
    }
    Ok(config)
}

/// Remote URIs (`s3://`, `https://`, ...) are Ray features rtd does not have.
fn local_or_package(key: &str, value: &str) -> Result<String, RuntimeEnvError> {
    if value.contains("://") && !is_package_uri(value) {
        return Err(RuntimeEnvError::NotImplemented(format!(
            "runtime_env['{key}'] from a remote URI ({value}) is not implemented in rtd: give a local directory, .zip or .whl"
        )));
    }
    Ok(value.to_string())
}

impl RuntimeEnvSpec {
    /// Validates a runtime_env given as JSON (a dict in Python). `null` values count as
    /// not given, as in Ray.
    pub fn from_json(value: &Value) -> Result<Self, RuntimeEnvError> {
        let map = match value {
            Value::Null => return Ok(RuntimeEnvSpec::default()),
            Value::Object(map) => map,
            other => return Err(invalid(format!("runtime_env must be a dict, got {other}"))),
        };
        let mut spec = RuntimeEnvSpec::default();
        for (key, value) in map {
            if value.is_null() {
                continue;
            }
            match key.as_str() {
                "env_vars" => {
                    let vars = value.as_object().ok_or_else(|| {
                        invalid(format!("runtime_env['env_vars'] must be a dict of str to str, got {value}"))
                    })?;
                    for (name, v) in vars {
                        let v = v.as_str().ok_or_else(|| {
                            invalid(format!("runtime_env['env_vars'] must be a dict of str to str: '{name}' is {v}"))
                        })?;
                        spec.env_vars.insert(name.clone(), v.to_string());
                    }
                }
                "working_dir" => {
                    let dir = value
                        .as_str()
                        .ok_or_else(|| invalid(format!("runtime_env['working_dir'] must be a str, got {value}")))?;
                    spec.working_dir = Some(local_or_package("working_dir", dir)?);
                }
                "py_modules" => {
                    let modules = string_list("py_modules", value)?;
                    spec.py_modules =
                        Some(modules.iter().map(|m| local_or_package("py_modules", m)).collect::<Result<_, _>>()?);
                }
                "pip" | "uv" => {
                    if spec.pip.is_some() {
                        return Err(invalid("runtime_env may give 'pip' or 'uv', not both"));
                    }
                    spec.pip = Some(parse_pip(key, value)?);
                }
                "excludes" => spec.excludes = Some(string_list("excludes", value)?),
                "config" => spec.config = Some(parse_config(value)?),
                other => {
                    if let Some((_, feature)) = NOT_IMPLEMENTED.iter().find(|(k, _)| *k == other) {
                        return Err(RuntimeEnvError::NotImplemented(format!(
                            "runtime_env['{other}']: {feature} not implemented in rtd"
                        )));
                    }
                    return Err(invalid(format!(
                        "unknown runtime_env key '{other}'; rtd supports {}",
                        SUPPORTED.join(", ")
                    )));
                }
            }
        }
        Ok(spec)
    }

    /// The canonical JSON form (what travels in a task spec and to a node).
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        if !self.env_vars.is_empty() {
            map.insert("env_vars".into(), json!(self.env_vars));
        }
        if let Some(dir) = &self.working_dir {
            map.insert("working_dir".into(), json!(dir));
        }
        if let Some(modules) = &self.py_modules {
            map.insert("py_modules".into(), json!(modules));
        }
        if let Some(pip) = &self.pip {
            let packages = match (&pip.requirements_file, pip.packages.is_empty()) {
                (Some(file), true) => json!(file),
                _ => json!(pip.packages),
            };
            map.insert("pip".into(), json!({"packages": packages, "pip_check": pip.pip_check}));
        }
        if let Some(excludes) = &self.excludes {
            map.insert("excludes".into(), json!(excludes));
        }
        if let Some(config) = &self.config {
            map.insert(
                "config".into(),
                json!({"setup_timeout_seconds": config.setup_timeout_seconds, "eager_install": config.eager_install}),
            );
        }
        Value::Object(map)
    }

    /// This spec merged over `parent` (Ray's rule; see the module docs).
    pub fn merged_over(&self, parent: &RuntimeEnvSpec) -> RuntimeEnvSpec {
        let mut env_vars = parent.env_vars.clone();
        env_vars.extend(self.env_vars.iter().map(|(k, v)| (k.clone(), v.clone())));
        RuntimeEnvSpec {
            env_vars,
            working_dir: self.working_dir.clone().or_else(|| parent.working_dir.clone()),
            py_modules: self.py_modules.clone().or_else(|| parent.py_modules.clone()),
            pip: self.pip.clone().or_else(|| parent.pip.clone()),
            excludes: self.excludes.clone().or_else(|| parent.excludes.clone()),
            config: self.config.clone().or_else(|| parent.config.clone()),
        }
    }

    /// Whether workers need anything beyond the node's plain worker.
    pub fn is_empty(&self) -> bool {
        self.env_vars.is_empty() && self.working_dir.is_none() && self.py_modules.is_none() && self.pip.is_none()
    }

    /// The environment's name: 16 hex of a hash over what makes workers differ (the
    /// variables, packages and pip requirements; not `config` or `excludes`). Workers are
    /// pooled by it. Empty for the empty environment.
    pub fn hash(&self) -> String {
        if self.is_empty() {
            return String::new();
        }
        let identity = json!({
            "env_vars": self.env_vars,
            "working_dir": self.working_dir,
            "py_modules": self.py_modules,
            "pip": self.pip.as_ref().map(pip_identity),
        });
        hex16(identity.to_string().as_bytes())
    }

    pub fn config(&self) -> RuntimeEnvConfig {
        self.config.clone().unwrap_or_default()
    }

    /// On the driver: reads a `pip` requirements file (relative to `cwd`) into its
    /// lines, as Ray does before the spec leaves the driver.
    pub fn read_requirements(&mut self, cwd: &Path) -> Result<(), RuntimeEnvError> {
        let Some(pip) = &mut self.pip else { return Ok(()) };
        let Some(file) = pip.requirements_file.take() else { return Ok(()) };
        if !pip.packages.is_empty() {
            return Ok(());
        }
        let path = cwd.join(&file);
        let text = std::fs::read_to_string(&path)
            .map_err(|_| RuntimeEnvError::Missing { what: "pip requirements file", path })?;
        pip.packages = text
            .lines()
            .map(|line| line.split_once(" #").map_or(line, |(before, _)| before).trim())
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_string)
            .collect();
        Ok(())
    }
}

/// What makes two pip environments the same venv.
pub fn pip_identity(pip: &PipSpec) -> Value {
    json!({"packages": pip.packages, "pip_check": pip.pip_check})
}

pub(crate) fn hex16(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(value: Value) -> RuntimeEnvSpec {
        RuntimeEnvSpec::from_json(&value).expect("valid")
    }

    #[test]
    fn keys_are_validated() {
        let full = spec(json!({
            "env_vars": {"A": "1"}, "working_dir": ".", "py_modules": ["m"], "pip": ["requests"],
            "excludes": ["*.log"], "config": {"setup_timeout_seconds": 30, "eager_install": false},
        }));
        assert_eq!(full.env_vars["A"], "1");
        assert_eq!(full.config().setup_timeout_seconds, 30);
        assert_eq!(spec(full.to_json()), full);
        assert!(spec(json!(null)).is_empty());
        assert!(spec(json!({"working_dir": null})).is_empty());
        for bad in [
            json!([]),
            json!({"env_vars": {"A": 1}}),
            json!({"env_vars": ["A"]}),
            json!({"working_dir": 3}),
            json!({"py_modules": "m"}),
            json!({"pip": 5}),
            json!({"pip": {"pip_check": true}}),
            json!({"pip": ["a"], "uv": ["b"]}),
            json!({"config": {"setup_timeout_seconds": 0}}),
            json!({"config": {"bogus": 1}}),
            json!({"bogus_key": 1}),
        ] {
            assert!(matches!(RuntimeEnvSpec::from_json(&bad), Err(RuntimeEnvError::Invalid(_))), "{bad}");
        }
        let unknown = RuntimeEnvSpec::from_json(&json!({"bogus_key": 1})).expect_err("unknown").to_string();
        assert!(unknown.contains("'bogus_key'") && unknown.contains("env_vars"), "{unknown}");
    }

    #[test]
    fn features_rtd_lacks_raise_not_implemented() {
        for (key, word) in [("conda", "conda"), ("container", "container"), ("image_uri", "image_uri"), ("mpi", "MPI")]
        {
            let err = RuntimeEnvSpec::from_json(&json!({key: "x"})).expect_err(key);
            assert!(matches!(&err, RuntimeEnvError::NotImplemented(m) if m.contains(word)), "{err}");
        }
        let remote = RuntimeEnvSpec::from_json(&json!({"working_dir": "s3://bucket/x.zip"})).expect_err("remote");
        assert!(matches!(remote, RuntimeEnvError::NotImplemented(_)));
        assert!(RuntimeEnvSpec::from_json(&json!({"working_dir": "gcs://_ray_pkg_0123456789abcdef.zip"})).is_ok());
    }

    #[test]
    fn pip_forms_agree() {
        let list = spec(json!({"pip": ["a==1", "b"]}));
        let dict = spec(json!({"pip": {"packages": ["a==1", "b"], "pip_check": false}}));
        assert_eq!(list, dict);
        assert_eq!(list.hash(), dict.hash());
        assert_eq!(spec(json!({"uv": ["a==1", "b"]})).hash(), list.hash());
        let checked = spec(json!({"pip": {"packages": ["a==1", "b"], "pip_check": true}}));
        assert_ne!(checked.hash(), list.hash());
    }

    #[test]
    fn child_keys_override_and_env_vars_merge() {
        let job =
            spec(json!({"env_vars": {"A": "job", "B": "job"}, "working_dir": "gcs://_ray_pkg_1.zip", "pip": ["x"]}));
        let task = spec(json!({"env_vars": {"B": "task", "C": "task"}, "pip": ["y"]}));
        let merged = task.merged_over(&job);
        assert_eq!(
            merged.env_vars,
            BTreeMap::from([("A".into(), "job".into()), ("B".into(), "task".into()), ("C".into(), "task".into())])
        );
        assert_eq!(merged.working_dir.as_deref(), Some("gcs://_ray_pkg_1.zip"));
        assert_eq!(merged.pip.map(|p| p.packages), Some(vec!["y".to_string()]));
        assert_eq!(RuntimeEnvSpec::default().merged_over(&job), job);
    }

    #[test]
    fn the_hash_names_what_makes_workers_differ() {
        assert_eq!(RuntimeEnvSpec::default().hash(), "");
        let a = spec(json!({"env_vars": {"A": "1"}}));
        let b = spec(json!({"env_vars": {"A": "2"}}));
        assert_eq!(a.hash().len(), 16);
        assert_ne!(a.hash(), b.hash());
        let configured = spec(json!({"env_vars": {"A": "1"}, "config": {"setup_timeout_seconds": 5}}));
        assert_eq!(configured.hash(), a.hash());
    }

    #[test]
    fn requirements_files_are_read_on_the_driver() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("req.txt"), "# deps\nrequests==2.0  # pinned\n\nsix\n").expect("write");
        let mut with_file = spec(json!({"pip": "req.txt"}));
        with_file.read_requirements(dir.path()).expect("read");
        assert_eq!(with_file.pip.map(|p| p.packages), Some(vec!["requests==2.0".to_string(), "six".to_string()]));
        let mut missing = spec(json!({"pip": "nope.txt"}));
        assert!(matches!(missing.read_requirements(dir.path()), Err(RuntimeEnvError::Missing { .. })));
    }
}
