//! A `pip` environment: one virtual environment per distinct requirement list, built on
//! the node and kept under `<cache root>/pip/<hash>` for every later task, actor and job
//! that asks for the same list.
//!
//! It is built with `uv` when `uv` is on the PATH (much faster), else with
//! `python -m venv` and the base interpreter's pip. It is layered over the base
//! environment (the interpreter the node's workers run): a `.pth` file in the venv adds
//! the base site-packages after the venv's own, so rtd, cloudpickle, numpy and whatever
//! else the base has stay importable while the venv's packages win. It is built in a
//! staging directory and renamed into place when complete, so a half-built venv is never
//! used, and a per-venv lock keeps two setups in this process from building it twice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::process::Command;

use crate::error::SetupError;
use crate::spec::{hex16, pip_identity, PipSpec};

/// The venv for `spec` under `root`, built if it is not there yet: its interpreter.
pub async fn ensure_venv(spec: &PipSpec, root: &Path, base_python: &str) -> Result<PathBuf, SetupError> {
    let key = hex16(pip_identity(spec).to_string().as_bytes());
    let dir = root.join(&key);
    let python = dir.join("bin").join("python");
    if python.exists() {
        return Ok(python);
    }
    let lock = build_lock(&key);
    let _building = lock.lock().await;
    if python.exists() {
        return Ok(python);
    }
    std::fs::create_dir_all(root).map_err(|e| SetupError::Install(format!("creating {}: {e}", root.display())))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".building-{key}-"))
        .tempdir_in(root)
        .map_err(|e| SetupError::Install(format!("creating a directory in {}: {e}", root.display())))?;
    build(spec, staging.path(), base_python).await?;
    let staged = staging.keep();
    if let Err(e) = std::fs::rename(&staged, &dir) {
        let _ = std::fs::remove_dir_all(&staged);
        // Another process on this node built the same venv first: use theirs.
        if !python.exists() {
            return Err(SetupError::Install(format!("moving the venv into {}: {e}", dir.display())));
        }
    }
    Ok(python)
}

fn build_lock(key: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    locks.entry(key.to_string()).or_default().clone()
}

/// Whether `uv` is on the PATH.
fn uv_available() -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("uv").is_file()))
}

async fn build(spec: &PipSpec, venv: &Path, base_python: &str) -> Result<(), SetupError> {
    let venv_arg = venv.to_string_lossy().into_owned();
    let venv_python = venv.join("bin").join("python");
    let venv_python_arg = venv_python.to_string_lossy().into_owned();
    let uv = uv_available();
    if uv {
        run("uv venv", Command::new("uv").args(["venv", "--quiet", "--python", base_python, &venv_arg])).await?;
    } else {
        run("python -m venv", Command::new(base_python).args(["-m", "venv", "--without-pip", &venv_arg])).await?;
    }
    layer_over_base(&venv_python, base_python).await?;
    if spec.packages.is_empty() {
        return Ok(());
    }
    if uv {
        run(
            "uv pip install",
            Command::new("uv").args(["pip", "install", "--python", &venv_python_arg]).args(&spec.packages),
        )
        .await?;
    } else {
        run(
            "pip install",
            Command::new(base_python)
                .args(["-m", "pip", "--python", &venv_python_arg, "install", "--disable-pip-version-check"])
                .args(&spec.packages),
        )
        .await?;
    }
    if spec.pip_check {
        let (program, args): (&str, Vec<&str>) = if uv {
            ("uv", vec!["pip", "check", "--python", &venv_python_arg])
        } else {
            (base_python, vec!["-m", "pip", "--python", &venv_python_arg, "check"])
        };
        run("pip check", Command::new(program).args(args)).await?;
    }
    Ok(())
}

/// Adds the base interpreter's site-packages after the venv's own, through a `.pth`
/// file (its `import` line runs `site.addsitedir`, so the base's own `.pth` files, e.g.
/// an editable install of rtd, are honoured too).
async fn layer_over_base(venv_python: &Path, base_python: &str) -> Result<(), SetupError> {
    const SITES: &str = "import json, site, sys; print(json.dumps([p for p in site.getsitepackages() + sys.path if p.endswith('-packages')]))";
    let base_sites = output("reading the base site-packages", Command::new(base_python).args(["-c", SITES])).await?;
    let venv_site = output(
        "reading the venv's site-packages",
        Command::new(venv_python).args(["-c", "import site; print(site.getsitepackages()[0])"]),
    )
    .await?;
    let sites: Vec<String> = serde_json::from_str(base_sites.trim())
        .map_err(|e| SetupError::Install(format!("unexpected answer from {base_python}: {e}")))?;
    let mut unique: Vec<String> = Vec::new();
    for site in sites {
        if !unique.contains(&site) {
            unique.push(site);
        }
    }
    // One line, run by `site` with its own globals: no comprehension (it would not see `site`).
    let line = format!("import site; list(map(site.addsitedir, {}))\n", serde_json::Value::from(unique));
    let pth = Path::new(venv_site.trim()).join("_rtd_base_env.pth");
    std::fs::write(&pth, line).map_err(|e| SetupError::Install(format!("writing {}: {e}", pth.display())))?;
    Ok(())
}

/// Runs an installer step; its failure carries the installer's own message.
async fn run(step: &str, command: &mut Command) -> Result<(), SetupError> {
    output(step, command).await.map(drop)
}

async fn output(step: &str, command: &mut Command) -> Result<String, SetupError> {
    let out = command
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| SetupError::Install(format!("{step}: could not run it: {e}")))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let said = if stderr.trim().is_empty() { stdout } else { stderr };
    let tail: Vec<&str> = said.trim().lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
    Err(SetupError::Install(format!("{step} failed ({}):\n{}", out.status, tail.join("\n"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python() -> String {
        std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
    }

    #[tokio::test]
    async fn an_empty_pip_env_sees_the_base_packages_and_is_reused() {
        let root = tempfile::tempdir().expect("tmp");
        let spec = PipSpec { packages: vec![], pip_check: false, requirements_file: None };
        let venv_python = ensure_venv(&spec, root.path(), &python()).await.expect("venv");
        assert!(venv_python.starts_with(root.path()));
        let out = Command::new(&venv_python)
            .args(["-c", "import json, sys; print(sys.prefix)"])
            .output()
            .await
            .expect("runs");
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).trim().starts_with(&root.path().to_string_lossy().into_owned()));
        let again = ensure_venv(&spec, root.path(), &python()).await.expect("cached");
        assert_eq!(again, venv_python);
        // No staging directory is left behind.
        assert_eq!(std::fs::read_dir(root.path()).expect("dir").count(), 1);
    }

    #[tokio::test]
    async fn an_installer_failure_carries_its_message() {
        let root = tempfile::tempdir().expect("tmp");
        let err = output("probe", Command::new(python()).args(["-c", "import sys; sys.exit('no such package: zzz')"]))
            .await
            .expect_err("fails");
        assert!(err.to_string().contains("no such package: zzz"), "{err}");
        assert_eq!(std::fs::read_dir(root.path()).expect("dir").count(), 0);
    }
}
