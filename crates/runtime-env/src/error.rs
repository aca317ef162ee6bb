//! What goes wrong with a runtime environment: a spec or package the user must fix
//! ([`RuntimeEnvError`], raised where the spec is given), and a setup that failed on a
//! node ([`SetupError`], Ray's `RuntimeEnvSetupError` at `get`).

use std::path::PathBuf;

/// A runtime_env that cannot be used as given: raised to the user where it is declared.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeEnvError {
    /// The spec breaks a rule (a wrong type, an unknown key): Python's `ValueError`/`TypeError`.
    #[error("{0}")]
    Invalid(String),
    /// A key Ray has that rtd does not implement: Python's `NotImplementedError`.
    #[error("{0}")]
    NotImplemented(String),
    #[error("{what} '{path}' does not exist")]
    Missing { what: &'static str, path: PathBuf },
    #[error("{what} '{path}' is {size_mib:.1} MiB, over the {limit_mib} MiB limit on a package (Ray's); leave large files out with `excludes`", size_mib = *.size as f64 / MIB, limit_mib = .limit / (1 << 20))]
    TooLarge { what: &'static str, path: PathBuf, size: u64, limit: u64 },
    #[error("zip package: {0}")]
    Zip(String),
    #[error("zip package holds an entry that would land outside its directory: {0:?}")]
    UnsafeEntry(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

const MIB: f64 = (1 << 20) as f64;

impl RuntimeEnvError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| RuntimeEnvError::Io { path, source }
    }
}

impl From<zip::result::ZipError> for RuntimeEnvError {
    fn from(e: zip::result::ZipError) -> Self {
        RuntimeEnvError::Zip(e.to_string())
    }
}

/// An environment that could not be set up on a node. Its message is what the user
/// sees in `RuntimeEnvSetupError`: the installer's own words where there are some.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("package {uri} is not in the GCS (was it uploaded by this cluster's driver?)")]
    PackageMissing { uri: String },
    #[error("could not fetch package {uri}: {why}")]
    Fetch { uri: String, why: String },
    #[error("{0}")]
    Package(#[from] RuntimeEnvError),
    #[error("{0}")]
    Install(String),
    #[error("runtime_env setup did not finish within {0} s (runtime_env config setup_timeout_seconds)")]
    TimedOut(u64),
}
