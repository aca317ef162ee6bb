//! What the state API shows, and where it reads it from.
//!
//! [`ClusterState`] is the one door to the cluster's tables: the head daemon passes the
//! GCS (see `gcs_state`), the unit tests a fake. Each method returns a snapshot, copied
//! out under the GCS's locks and converted to rows outside them, so a slow or repeated
//! HTTP request never holds up the control plane.
//!
//! The row types carry Ray's state schema (`ray.util.state.common`): the same field
//! names and state names, so scripts written against Ray's state API read them as is.
//! A field rtd does not track is `None` (JSON `null`) rather than left out, as Ray
//! does for a column it has no data for.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// Resource amounts by name, as floats (`{"CPU": 2.0}`).
pub type Resources = BTreeMap<String, f64>;

/// The cluster's tables, as the state API reads them. Methods that reach other
/// processes (objects, logs) block the calling thread for at most `timeout`; the
/// server calls every method from a blocking thread.
pub trait ClusterState: Send + Sync + 'static {
    fn nodes(&self) -> Vec<NodeState>;
    fn actors(&self) -> Vec<ActorState>;
    fn placement_groups(&self) -> Vec<PlacementGroupState>;
    /// Task attempts, and how many the GCS or the workers had to drop.
    fn tasks(&self) -> (Vec<TaskState>, u64);
    fn jobs(&self) -> Vec<JobState>;
    fn workers(&self) -> Vec<WorkerState>;
    /// Every object some live process references, asked of each process; with a
    /// warning for each process that did not answer.
    fn objects(&self, timeout: Duration) -> (Vec<ObjectState>, Vec<String>);
    /// The tasks that ran, as Chrome-trace events.
    fn timeline(&self) -> Vec<serde_json::Value>;
    /// A node's log files (`node_id` in hex).
    fn list_logs(&self, node_id: &str, timeout: Duration) -> Result<Vec<LogFileState>, LogError>;
    /// Part of one log file of a node (see `ReadLog`): its bytes and where they end.
    fn read_log(&self, node_id: &str, read: LogRead, timeout: Duration) -> Result<(Vec<u8>, u64), LogError>;
}

/// Why a log could not be listed or read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
}

/// Which part of a log file to read.
#[derive(Clone, Debug)]
pub struct LogRead {
    pub filename: String,
    /// The last lines (<= 0: all), when `offset` is 0.
    pub tail_lines: i64,
    /// Read on from here (a follower's last end).
    pub offset: u64,
    /// Only this part of the file (a task's output): [start, end), end open while the
    /// task runs.
    pub range: Option<(u64, Option<u64>)>,
}

/// Ray's `TaskState`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TaskState {
    pub task_id: String,
    pub attempt_number: u32,
    pub name: String,
    /// `PENDING_ARGS_AVAIL` ... `FINISHED` / `FAILED`: the latest state.
    pub state: &'static str,
    pub job_id: String,
    pub actor_id: Option<String>,
    /// `NORMAL_TASK`, `ACTOR_CREATION_TASK` or `ACTOR_TASK`.
    #[serde(rename = "type")]
    pub task_type: &'static str,
    pub func_or_class_name: String,
    pub parent_task_id: Option<String>,
    pub node_id: Option<String>,
    pub worker_id: Option<String>,
    pub worker_pid: Option<u32>,
    pub error_type: Option<String>,
    pub error_message: Option<String>,
    pub required_resources: Resources,
    /// Every state change: `{"state", "created_ms"}`.
    pub events: Vec<serde_json::Value>,
    pub creation_time_ms: Option<u64>,
    pub start_time_ms: Option<u64>,
    pub end_time_ms: Option<u64>,
    /// Where a normal task's output is in its worker's log files (None: an actor call,
    /// or not run yet).
    pub task_log_info: Option<TaskLogInfo>,
}

/// Ray's `task_log_info`: the worker's log files and the task's byte range in each.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TaskLogInfo {
    pub stdout_file: Option<String>,
    pub stderr_file: Option<String>,
    pub stdout_start: Option<u64>,
    pub stdout_end: Option<u64>,
    pub stderr_start: Option<u64>,
    pub stderr_end: Option<u64>,
}

/// Ray's `JobDetails`: a driver's job (`DRIVER`), or a job submitted through the jobs
/// API (`SUBMISSION`, see `jobs`), which is also the jobs API's answer.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct JobState {
    /// The driver's job id (hex); None for a submission whose entrypoint started no
    /// driver (yet).
    pub job_id: Option<String>,
    pub submission_id: Option<String>,
    /// `DRIVER` or `SUBMISSION`.
    #[serde(rename = "type")]
    pub job_type: &'static str,
    /// `PENDING`, `RUNNING`, `STOPPED`, `SUCCEEDED` or `FAILED` (a driver's job is
    /// RUNNING until its driver disconnects, then SUCCEEDED).
    pub status: &'static str,
    pub entrypoint: String,
    pub message: Option<String>,
    pub error_type: Option<String>,
    pub start_time: u64,
    pub end_time: Option<u64>,
    pub metadata: BTreeMap<String, String>,
    /// The job's `runtime_env` as given (a JSON object).
    pub runtime_env: serde_json::Value,
    /// `{"id", "node_ip_address", "pid"}` of the job's driver, or null.
    pub driver_info: serde_json::Value,
    pub driver_agent_http_address: Option<String>,
    pub driver_node_id: Option<String>,
    pub driver_exit_code: Option<i32>,
}

/// Ray's `WorkerState`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct WorkerState {
    pub worker_id: String,
    pub is_alive: bool,
    /// `WORKER` or `DRIVER`.
    pub worker_type: &'static str,
    pub exit_type: Option<String>,
    pub node_id: String,
    pub ip: String,
    pub pid: u32,
    pub exit_detail: Option<String>,
    pub worker_launch_time_ms: u64,
    pub start_time_ms: u64,
    pub end_time_ms: Option<u64>,
}

/// Ray's `ObjectState`: one object as one process references it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ObjectState {
    pub object_id: String,
    /// Bytes of its value; None while the task that makes it is pending.
    pub object_size: Option<u64>,
    /// `FINISHED` once the value exists, else `PENDING`.
    pub task_status: &'static str,
    /// `LOCAL_REFERENCE`, `USED_BY_PENDING_TASK`, `CAPTURED_IN_OBJECT`, `BORROWED` or
    /// `PINNED_IN_MEMORY`.
    pub reference_type: String,
    pub call_site: String,
    /// Whether the referencing process is a `WORKER` or a `DRIVER`.
    #[serde(rename = "type")]
    pub process_type: &'static str,
    pub pid: u32,
    pub ip: String,
    /// The node whose object store holds the value (None: inline, in its owner).
    pub node_id: Option<String>,
    /// Whether the process that answered owns the object.
    pub owned: bool,
    /// Whether its node's store holds it in a spill file rather than in memory.
    pub spilled: bool,
}

/// One log file of a node.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LogFileState {
    pub name: String,
    pub size: u64,
    pub modified_ms: u64,
}

/// Ray's `NodeState`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NodeState {
    pub node_id: String,
    pub node_ip: String,
    pub is_head_node: bool,
    /// `ALIVE` or `DEAD`.
    pub state: &'static str,
    pub state_message: Option<String>,
    pub node_name: String,
    /// Without the resources placement-group bundles add (`CPU_group_...`).
    pub resources_total: Resources,
    /// What is free now, without bundle resources (detail).
    pub resources_available: Resources,
    pub labels: BTreeMap<String, String>,
    pub start_time_ms: Option<u64>,
    pub end_time_ms: Option<u64>,
}

/// Ray's `ActorState`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ActorState {
    pub actor_id: String,
    pub class_name: String,
    /// `DEPENDENCIES_UNREADY`, `PENDING_CREATION`, `ALIVE`, `RESTARTING` or `DEAD`.
    pub state: &'static str,
    pub job_id: String,
    pub name: String,
    /// The node it runs (or last ran) on; None before it was first placed.
    pub node_id: Option<String>,
    /// 0 until it has a worker, as in Ray.
    pub pid: u32,
    pub ray_namespace: String,
    pub serialized_runtime_env: Option<String>,
    pub required_resources: Resources,
    /// Why it died (`{"error_message": ...}`); None while it lives.
    pub death_cause: Option<DeathCause>,
    pub is_detached: bool,
    pub placement_group_id: Option<String>,
    pub repr_name: String,
    pub num_restarts: u32,
    pub num_restarts_due_to_lineage_reconstruction: u32,
}

/// Why an actor died.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DeathCause {
    pub error_message: String,
}

/// Ray's `PlacementGroupState`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PlacementGroupState {
    pub placement_group_id: String,
    pub name: String,
    pub creator_job_id: Option<String>,
    /// `PENDING`, `CREATED`, `REMOVED` or `RESCHEDULING`.
    pub state: &'static str,
    pub bundles: Vec<BundleState>,
    pub is_detached: bool,
    /// `PACK`, `SPREAD`, `STRICT_PACK` or `STRICT_SPREAD`.
    pub strategy: String,
    pub stats: Option<serde_json::Value>,
}

/// One bundle of a placement group.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BundleState {
    pub bundle_id: u32,
    /// Where it is reserved; None while the group is not placed.
    pub node_id: Option<String>,
    pub unit_resources: Resources,
}
