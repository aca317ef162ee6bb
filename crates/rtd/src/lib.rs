//! Assembles an rtd node daemon from its parts (raylet, plasma store, object manager,
//! and the GCS on the head), keeps its session directory, and runs the `rtd` command line.
//! Linked into the standalone `rtd` binary and into the Python extension: both run this.

pub mod cli;
pub mod daemons;
mod job_cli;
mod logs_cli;
pub mod metrics;
pub mod node;
pub mod session;
mod state_cli;
pub mod system_config;

pub use cli::{cli_main, Launcher};
