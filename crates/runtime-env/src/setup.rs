//! Setting an environment up on a node: what a worker (or a job's entrypoint) started in
//! it needs. Packages named in the spec are fetched from the GCS KV (through a
//! [`PackageSource`]) and unpacked once per node under the cache root, named by their
//! URI; a `pip` spec gets its virtual environment ([`crate::pip`]). The answer, an
//! [`EnvContext`], says which interpreter to run, in which directory, with which
//! variables and import path. Everything is cached by content, so the second worker in
//! an environment finds it all in place.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use rtd_common::proto::KvGet;
use rtd_common::rpc::RpcClient;

use crate::error::{RuntimeEnvError, SetupError};
use crate::package::{dir_name, is_package_uri, unpack};
use crate::pip;
use crate::spec::RuntimeEnvSpec;

/// The variable that tells a worker its runtime_env (canonical JSON): what its children
/// inherit.
pub const WORKER_ENV_VAR: &str = "RTD_RUNTIME_ENV";

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a node gets package bytes by URI: the GCS KV (the key is the URI).
pub trait PackageSource: Send + Sync {
    /// The package's bytes; `Ok(None)` when the GCS has no such key.
    fn fetch<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, String>>;
}

/// A connection to the GCS (a raylet's, a driver's, or one made to the head's own GCS).
impl PackageSource for RpcClient {
    fn fetch<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, String>> {
        Box::pin(async move {
            let reply =
                self.request(KvGet { key: uri.to_string(), exists_only: false }).await.map_err(|e| e.to_string())?;
            Ok(reply.found.then_some(reply.value))
        })
    }
}

/// A lookup function as a source, e.g. the head's in-process GCS tables
/// (`KvLookup(|uri| tables.kv_get(uri))`).
pub struct KvLookup<F>(pub F);

impl<F: Fn(&str) -> Option<Bytes> + Send + Sync> PackageSource for KvLookup<F> {
    fn fetch<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, String>> {
        let found = (self.0)(uri);
        Box::pin(async move { Ok(found) })
    }
}

/// How to start a process in an environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvContext {
    /// The virtual environment's interpreter (a `pip` env); None: the node's own.
    pub python: Option<PathBuf>,
    /// The current directory (the unpacked `working_dir`).
    pub cwd: Option<PathBuf>,
    /// Variables to set (`env_vars`).
    pub env_vars: Vec<(String, String)>,
    /// Directories to put first on the import path (`PYTHONPATH`): the working dir, then
    /// each of `py_modules`.
    pub python_path: Vec<PathBuf>,
}

impl EnvContext {
    /// Makes `command` run in this environment: its directory, variables, `PYTHONPATH`,
    /// and for a pip env `VIRTUAL_ENV` and the venv's `bin` first on the `PATH` (so a
    /// `python` it runs is the venv's, as in Ray). The program itself is the caller's
    /// (e.g. [`EnvContext::python`] for a worker, a shell for a job's entrypoint).
    pub fn apply(&self, command: &mut tokio::process::Command) {
        command.envs(self.variables());
        if let Some(dir) = &self.cwd {
            command.current_dir(dir);
        }
    }

    /// The variables a process in this environment gets on top of this process's own:
    /// `env_vars`, `PYTHONPATH` (the env's entries first), and for a `pip` venv
    /// `VIRTUAL_ENV` and the venv's `bin` first on `PATH`.
    pub fn variables(&self) -> Vec<(String, String)> {
        let mut vars = self.env_vars.clone();
        if let Some(path) = self.python_path_var(std::env::var("PYTHONPATH").ok().as_deref()) {
            vars.push(("PYTHONPATH".into(), path));
        }
        if let Some(bin) = self.python.as_deref().and_then(Path::parent) {
            if let Some(venv) = bin.parent() {
                vars.push(("VIRTUAL_ENV".into(), venv.to_string_lossy().into_owned()));
            }
            let inherited = std::env::var_os("PATH").unwrap_or_default();
            let paths = std::iter::once(bin.to_path_buf()).chain(std::env::split_paths(&inherited));
            if let Ok(path) = std::env::join_paths(paths) {
                vars.push(("PATH".into(), path.to_string_lossy().into_owned()));
            }
        }
        vars
    }

    /// `PYTHONPATH` for a process in this environment, in front of what `inherited` held.
    pub fn python_path_var(&self, inherited: Option<&str>) -> Option<String> {
        if self.python_path.is_empty() {
            return None;
        }
        let mut parts: Vec<String> = self.python_path.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        parts.extend(inherited.filter(|s| !s.is_empty()).map(str::to_string));
        Some(parts.join(":"))
    }
}

/// Sets `env` up under `cache_root` (a node's `<temp_dir>/runtime_resources`), fetching
/// packages from `packages`, within the spec's `setup_timeout_seconds`. `base_python` is
/// the interpreter the node's workers run: a pip environment is layered over it.
pub async fn setup(
    env: &RuntimeEnvSpec,
    packages: &dyn PackageSource,
    cache_root: &Path,
    base_python: &str,
) -> Result<EnvContext, SetupError> {
    let timeout_s = env.config().setup_timeout_seconds;
    let work = setup_untimed(env, packages, cache_root, base_python);
    if timeout_s < 0 {
        return work.await;
    }
    let seconds = timeout_s as u64;
    tokio::time::timeout(Duration::from_secs(seconds), work).await.map_err(|_| SetupError::TimedOut(seconds))?
}

async fn setup_untimed(
    env: &RuntimeEnvSpec,
    packages: &dyn PackageSource,
    cache_root: &Path,
    base_python: &str,
) -> Result<EnvContext, SetupError> {
    let mut context = EnvContext { env_vars: env.env_vars.clone().into_iter().collect(), ..EnvContext::default() };
    context.env_vars.push((WORKER_ENV_VAR.to_string(), env.to_json().to_string()));
    if let Some(dir) = &env.working_dir {
        let local = materialize(dir, packages, &cache_root.join("working_dir_files"), "working_dir").await?;
        context.python_path.push(local.clone());
        context.cwd = Some(local);
    }
    for module in env.py_modules.iter().flatten() {
        let local = materialize(module, packages, &cache_root.join("py_modules_files"), "py_modules entry").await?;
        context.python_path.push(local);
    }
    if let Some(spec) = &env.pip {
        context.python = Some(pip::ensure_venv(spec, &cache_root.join("pip"), base_python).await?);
    }
    Ok(context)
}

/// A package URI unpacked under `root` (fetched and unpacked once); a local directory
/// (a job set up on the node where its files are) is used where it is.
async fn materialize(
    location: &str,
    packages: &dyn PackageSource,
    root: &Path,
    what: &'static str,
) -> Result<PathBuf, SetupError> {
    if !is_package_uri(location) {
        let path = PathBuf::from(location);
        return if path.is_dir() { Ok(path) } else { Err(RuntimeEnvError::Missing { what, path }.into()) };
    }
    let dest = root.join(dir_name(location));
    if dest.is_dir() {
        return Ok(dest);
    }
    let bytes = packages
        .fetch(location)
        .await
        .map_err(|why| SetupError::Fetch { uri: location.to_string(), why })?
        .ok_or_else(|| SetupError::PackageMissing { uri: location.to_string() })?;
    let target = dest.clone();
    tokio::task::spawn_blocking(move || unpack(&bytes, &target))
        .await
        .map_err(|e| SetupError::Install(format!("unpacking {location}: {e}")))??;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;
    use crate::package::pack_directory;

    fn source(entries: HashMap<String, Bytes>) -> KvLookup<impl Fn(&str) -> Option<Bytes> + Send + Sync> {
        KvLookup(move |uri: &str| entries.get(uri).cloned())
    }

    #[tokio::test]
    async fn packages_are_fetched_and_unpacked_into_the_cache() {
        let src = tempfile::tempdir().expect("tmp");
        std::fs::write(src.path().join("hello.py"), "X = 1\n").expect("write");
        let package = pack_directory(src.path(), &[]).expect("pack");
        let cache = tempfile::tempdir().expect("tmp");
        let env =
            RuntimeEnvSpec::from_json(&json!({"working_dir": package.uri, "env_vars": {"A": "1"}})).expect("valid");
        let kv = source(HashMap::from([(package.uri.clone(), Bytes::from(package.bytes.clone()))]));
        let context = setup(&env, &kv, cache.path(), "python3").await.expect("setup");
        let cwd = context.cwd.clone().expect("cwd");
        assert!(cwd.starts_with(cache.path().join("working_dir_files")));
        assert_eq!(std::fs::read_to_string(cwd.join("hello.py")).expect("unpacked"), "X = 1\n");
        assert_eq!(context.env_vars[0], ("A".to_string(), "1".to_string()));
        assert_eq!(context.env_vars[1].0, WORKER_ENV_VAR);
        assert_eq!(context.python, None);
        assert_eq!(context.python_path_var(Some("/base")), Some(format!("{}:/base", cwd.display())));
        // The second setup finds it unpacked and fetches nothing.
        let empty = source(HashMap::new());
        assert_eq!(setup(&env, &empty, cache.path(), "python3").await.expect("cached"), context);
    }

    #[tokio::test]
    async fn a_command_runs_in_the_context() {
        let dir = tempfile::tempdir().expect("tmp");
        let venv_python = dir.path().join("venv").join("bin").join("python");
        let context = EnvContext {
            python: Some(venv_python.clone()),
            cwd: Some(dir.path().to_path_buf()),
            env_vars: vec![("RTD_T_VAR".into(), "set".into())],
            python_path: vec![dir.path().join("mods")],
        };
        let mut command = tokio::process::Command::new("sh");
        command.args(["-c", "echo $RTD_T_VAR; pwd; echo $PYTHONPATH; echo $VIRTUAL_ENV; echo $PATH"]);
        context.apply(&mut command);
        let out = command.output().await.expect("sh runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "set");
        assert_eq!(Path::new(lines[1]).canonicalize().ok(), dir.path().canonicalize().ok());
        assert!(lines[2].starts_with(&dir.path().join("mods").to_string_lossy().into_owned()), "{text}");
        assert_eq!(lines[3], dir.path().join("venv").to_string_lossy());
        assert!(lines[4].starts_with(&dir.path().join("venv").join("bin").to_string_lossy().into_owned()), "{text}");
    }

    /// A GCS that never answers.
    struct Silent;

    impl PackageSource for Silent {
        fn fetch<'a>(&'a self, _uri: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, String>> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn setup_gives_up_after_setup_timeout_seconds() {
        let cache = tempfile::tempdir().expect("tmp");
        let env = RuntimeEnvSpec::from_json(&json!({
            "working_dir": "gcs://_ray_pkg_0000000000000000.zip", "config": {"setup_timeout_seconds": 3},
        }))
        .expect("valid");
        let err = setup(&env, &Silent, cache.path(), "python3").await.expect_err("times out");
        assert!(matches!(err, SetupError::TimedOut(3)), "{err}");
        assert!(err.to_string().contains("setup_timeout_seconds"));
    }

    #[tokio::test]
    async fn a_missing_package_or_directory_fails_setup() {
        let cache = tempfile::tempdir().expect("tmp");
        let empty = source(HashMap::new());
        let env =
            RuntimeEnvSpec::from_json(&json!({"working_dir": "gcs://_ray_pkg_0000000000000000.zip"})).expect("valid");
        let err = setup(&env, &empty, cache.path(), "python3").await.expect_err("missing");
        assert!(matches!(err, SetupError::PackageMissing { .. }), "{err}");
        let env = RuntimeEnvSpec::from_json(&json!({"py_modules": ["/no/such/dir"]})).expect("valid");
        let err = setup(&env, &empty, cache.path(), "python3").await.expect_err("missing");
        assert!(err.to_string().contains("/no/such/dir"), "{err}");
    }
}
