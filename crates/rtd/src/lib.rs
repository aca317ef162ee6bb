//! The rtd node daemon (raylet + plasma store, and the GCS on the head) and the `rtd`
//! command line. Linked into the standalone `rtd` binary and into the Python
//! extension, so both run the same code.

pub mod cli;
pub mod daemons;
pub mod gcs_server;
pub mod node;
pub mod node_service;
pub mod object_manager;
pub mod session;
pub mod system_config;

pub use cli::{cli_main, Launcher};
