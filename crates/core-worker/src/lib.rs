//! The core worker: the Rust half of every driver and worker process. It submits tasks
//! over worker leases, owns the objects it creates (reference counts, values, plasma
//! copies), and, in a worker, receives the tasks that Python executes.
//!
//! `CoreWorker` is the one entry point (the Python bindings call its methods and
//! nothing else); behind it each concern is a module of its own:
//!
//! - `context`: what every part shares (identity, connections, the object table) and
//!   the object operations built on them; `object_table` and `borrowing` hold the
//!   ownership and borrower protocol state.
//! - `object_fetch`: `get` / `wait` and pinning values, pulling them from other nodes
//!   and having lost ones rebuilt.
//! - `submission`: task specs, plain and actor task submission over `submitter` and
//!   `actor_submitter`, actor creation and the handles that keep actors alive.
//! - `cluster`: what the two submitters ask of raylets, workers and the GCS, as traits
//!   that `Context` implements over RPC (and tests with fakes).
//! - `gcs_client`: requests answered by the GCS (KV, actors, placement groups).
//! - `node_view`: the cluster's nodes, and noticing the ones that die.
//! - `output`: a worker's printed output on its way to the driver.
//! - `task_events`: task state changes on their way to the GCS (the state API's tasks).
//! - `user_metrics`: `rtd.util.metrics` values on their way to the node's `/metrics`.
//! - `generator`: the owner's side of generator tasks (items streamed as yielded);
//!   `generator_stream`: one stream's state.
//! - `executor`, `task_execution` and `owner_service`: the worker side (tasks pushed
//!   here, their results), and the service other processes call.
//!
//! Blocking calls take an interrupt check (`&mut dyn FnMut() -> bool`) and end with
//! `CoreError::Interrupted` once it returns true, so Ctrl-C reaches every wait.

mod actor_submitter;
mod borrowing;
mod cluster;
mod context;
mod core_worker;
mod error;
mod executor;
#[cfg(test)]
mod fake_cluster;
mod gcs_client;
mod generator;
mod generator_stream;
mod layout;
mod node_view;
mod object_fetch;
mod object_table;
mod output;
mod owner_service;
mod submission;
mod submitter;
mod task_events;
mod task_execution;
mod user_metrics;

pub use context::OutputSink;
pub use core_worker::{ConnectOptions, CoreWorker};
pub use error::CoreError;
pub use executor::IncomingTask;
pub use generator_stream::GeneratorNext;
pub use object_fetch::{FetchedValue, PinnedObject};
pub use object_table::RefCounts;
pub use submission::{ActorCall, GeneratorOptions, Placement, TaskRequest};
pub use task_execution::ResultParts;
pub use user_metrics::{MetricKind, UserMetric};
