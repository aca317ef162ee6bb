//! The head's dashboard server: in Ray's diagram, the dashboard head with its state API
//! (`ray/dashboard`, `state_aggregator.py`). It runs inside the head daemon, next to the
//! GCS whose tables it reads ([`ClusterState`]), and serves HTTP on the dashboard port
//! (Ray's 8265; see [`server`]) — JSON for scripts, `rtd list` and `rtd.util.state`,
//! and the dashboard's pages.
//!
//! # Endpoints
//!
//! Every JSON answer is Ray's envelope `{"result": bool, "msg": str, "data": {...}}`;
//! an error is `result: false` with a message naming the problem and status 400 (a
//! bad parameter or filter) or 404 (no such resource or endpoint).
//!
//! - `GET /api/v0/{nodes,actors,placement_groups,tasks,jobs,workers,objects}`: Ray's
//!   list API. Query parameters
//!   as Ray's client sends them: `limit` (default 100, at most 10 000), `detail`
//!   (`true`: every column, else Ray's base columns), `timeout` (seconds, accepted and
//!   checked), and filters as aligned repeated `filter_keys`, `filter_predicates`
//!   (`=` or `!=`) and `filter_values`, all of which must hold; strings compare without
//!   regard to case. Only Ray's filterable columns may be filtered on. Answer:
//!   `data.result = {"total", "num_after_truncation", "num_filtered", "result": [rows],
//!   "partial_failure_warning", "warnings"}`, rows sorted by id. Row fields are Ray's
//!   state schema (see [`state`]).
//!   Tasks come from the GCS's task events, jobs and workers from its tables; objects
//!   are asked of every live process (within `timeout`), and a process that does not
//!   answer, like dropped task events, is named in `partial_failure_warning`.
//! - `GET /api/v0/tasks/summarize` (by function, `summary_by: "func_name"`) and
//!   `GET /api/v0/actors/summarize`: Ray's summary, `data.result.result =
//!   {"node_id_to_summary": {"cluster": {"summary": {CLASS: {"class_name",
//!   "state_counts": {STATE: n}}}, "total_actors", "summary_by": "class"}}}`; takes the
//!   same filters.
//! - `GET /api/v0/objects/summarize`: Ray's `ObjectSummaries`, `{"summary": {CALL_SITE:
//!   {"total_objects", "total_size_mb", "total_num_workers", "total_num_nodes",
//!   "task_state_counts", "ref_type_counts"}}, "total_objects", "total_size_mb",
//!   "callsite_enabled", "summary_by": "callsite"}` in the same envelope; rtd records no
//!   call sites, so there is one group, `disabled`.
//! - `GET /api/cluster_status`: the overview, `data = {"num_nodes_alive",
//!   "num_nodes_dead", "resources_total", "resources_available", "nodes": [{"node_id",
//!   "node_ip", "node_name", "is_head_node", "state", "resources_total",
//!   "resources_available"}]}` (sums over alive nodes; bundle resources left out).
//! - `GET /api/v0/tasks/timeline`: the tasks that ran as Chrome-trace events (a bare
//!   JSON list, as Ray's), what `rtd.timeline()` writes.
//! - `GET /api/v0/logs?node_id=[&glob=]`: the node's log files (matching the shell
//!   pattern `glob`) by Ray's categories (`worker_out`, `worker_err`, `raylet`, `misc`);
//!   `GET /api/v0/logs/file` one file's
//!   last `lines` as text, named by `node_id` and `filename`, or by `actor_id`,
//!   `task_id`, or `node_id` and `pid` (`suffix=out|err`). `node_ip` may stand for
//!   `node_id` where one alive node has that address; `offset=` reads on from
//!   where the `x-rtd-end-offset` header of the last read said (following).
//! - `GET /` and `GET /static/{path}`: the dashboard's pages, built into the binary.

mod gcs_state;
mod http;
pub mod jobs;
mod logs;
mod overview;
pub mod query;
pub mod resources;
pub mod server;
pub mod state;

pub use http::router;
pub use server::{bind, serve, BindError, Port, DEFAULT_PORT};
pub use state::ClusterState;

#[cfg(test)]
mod tests;
