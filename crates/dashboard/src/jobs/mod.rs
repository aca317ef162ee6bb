//! Ray's Jobs API on the head: submitting a shell command to run on the head node as a
//! supervised process (`manager`), recorded in the GCS's KV (`record`, `cluster`),
//! served over HTTP in Ray's shapes (`routes`); `launcher` starts the processes.

pub mod cluster;
pub mod env;
pub mod launcher;
pub mod manager;
pub mod record;
mod routes;

pub use cluster::JobsCluster;
pub use launcher::{LaunchSpec, Launcher, ProcessLauncher};
pub use manager::{list_jobs, EnvSetup, JobManager, JobsConfig, PreparedEnv};
pub use routes::{router, RAY_VERSION};

#[cfg(test)]
mod tests;
