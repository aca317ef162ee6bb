//! Runtime environments, Ray's `runtime_env`: what a task, actor or job needs around it
//! (environment variables, its code in `working_dir` and `py_modules`, `pip` packages).
//! This crate is Ray's runtime env agent box: [`spec`] validates and merges specs (the
//! one place the rules live), [`package`] turns local directories into content-addressed
//! zip packages that travel through the GCS KV, and [`setup`] prepares an environment on
//! a node (unpacked packages, a cached virtual environment) for the workers started in it.

pub mod error;
pub mod package;
pub mod pip;
pub mod setup;
pub mod spec;

pub use error::{RuntimeEnvError, SetupError};
pub use package::{pack_directory, pack_path, unpack, Package};
pub use setup::{setup, EnvContext, PackageSource};
pub use spec::{RuntimeEnvConfig, RuntimeEnvSpec};
