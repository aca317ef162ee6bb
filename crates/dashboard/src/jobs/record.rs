//! A submitted job as the GCS's KV keeps it (Ray's `JobInfo`), the request that makes
//! one (Ray's `JobSubmitRequest`), and the `JobDetails` rows the API answers with.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::state::JobState;

/// Where job records live in the KV: Ray's `JobInfoStorageClient` prefix, then the
/// submission id.
pub const KEY_PREFIX: &str = "_ray_internal_job_info_";

pub fn key(submission_id: &str) -> String {
    format!("{KEY_PREFIX}{submission_id}")
}

/// Ray's `JobStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Pending,
    Running,
    Stopped,
    Succeeded,
    Failed,
}

impl JobStatus {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Stopped => "STOPPED",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
        }
    }

    /// STOPPED, SUCCEEDED and FAILED: a job never leaves them.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Stopped | Self::Succeeded | Self::Failed)
    }

    /// Ray's message for a status when nothing more specific is known.
    fn default_message(self) -> &'static str {
        match self {
            Self::Pending => "Job has not started yet.",
            Self::Running => "Job is currently running.",
            Self::Stopped => "Job was intentionally stopped.",
            Self::Succeeded => "Job finished successfully.",
            Self::Failed => "Job failed.",
        }
    }
}

/// Ray's `JobErrorType` values rtd gives.
pub mod error_type {
    pub const RUNTIME_ENV_SETUP_FAILURE: &str = "RUNTIME_ENV_SETUP_FAILURE";
    pub const ENTRYPOINT_START_ERROR: &str = "JOB_ENTRYPOINT_COMMAND_START_ERROR";
    pub const ENTRYPOINT_ERROR: &str = "JOB_ENTRYPOINT_COMMAND_ERROR";
    /// Ray's name for a supervisor that went away: here, the head restarted.
    pub const SUPERVISOR_DIED: &str = "JOB_SUPERVISOR_ACTOR_DIED";
}

/// One submitted job, stored as JSON under [`key`] (Ray's `JobInfo` fields, plus what
/// the head needs to find its log and process again).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub submission_id: String,
    pub status: JobStatus,
    pub entrypoint: String,
    pub message: Option<String>,
    pub error_type: Option<String>,
    /// Unix time in ms.
    pub start_time: u64,
    pub end_time: Option<u64>,
    pub metadata: BTreeMap<String, String>,
    pub runtime_env: Map<String, Value>,
    pub entrypoint_num_cpus: Option<f64>,
    pub entrypoint_num_gpus: Option<f64>,
    pub entrypoint_memory: Option<u64>,
    pub entrypoint_resources: Option<BTreeMap<String, f64>>,
    pub driver_agent_http_address: Option<String>,
    pub driver_node_id: Option<String>,
    pub driver_exit_code: Option<i32>,
    /// The file the entrypoint's output goes to (in the session that ran it).
    pub log_path: String,
    /// The entrypoint's process (and process group) while it runs.
    pub pid: Option<u32>,
    /// When that process started (clock ticks since boot), to tell it from a later
    /// process with the same pid.
    #[serde(default)]
    pub pid_start: Option<u64>,
}

impl JobRecord {
    /// A new PENDING job for `request`, started now.
    pub fn pending(submission_id: String, request: SubmitRequest, log_path: String, now_ms: u64) -> Self {
        Self {
            submission_id,
            status: JobStatus::Pending,
            entrypoint: request.entrypoint,
            message: Some(JobStatus::Pending.default_message().into()),
            error_type: None,
            start_time: now_ms,
            end_time: None,
            metadata: request.metadata,
            runtime_env: request.runtime_env,
            entrypoint_num_cpus: request.entrypoint_num_cpus,
            entrypoint_num_gpus: request.entrypoint_num_gpus,
            entrypoint_memory: request.entrypoint_memory,
            entrypoint_resources: request.entrypoint_resources,
            driver_agent_http_address: None,
            driver_node_id: None,
            driver_exit_code: None,
            log_path,
            pid: None,
            pid_start: None,
        }
    }

    /// Moves the job to `status` (with Ray's default message unless `message` is
    /// given); a terminal status stamps the end time. A terminal job stays as it is:
    /// returns whether it moved.
    pub fn set_status(&mut self, status: JobStatus, message: Option<String>, now_ms: u64) -> bool {
        if self.status.is_terminal() {
            return false;
        }
        self.status = status;
        self.message = Some(message.unwrap_or_else(|| status.default_message().into()));
        if status.is_terminal() {
            self.end_time = Some(now_ms);
            self.pid = None;
            self.pid_start = None;
        }
        true
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    /// The job as the API shows it, with the driver its entrypoint started (if any).
    pub fn details(&self, driver: Option<&JobState>) -> JobState {
        JobState {
            job_id: driver.and_then(|d| d.job_id.clone()),
            submission_id: Some(self.submission_id.clone()),
            job_type: "SUBMISSION",
            status: self.status.name(),
            entrypoint: self.entrypoint.clone(),
            message: self.message.clone(),
            error_type: self.error_type.clone(),
            start_time: self.start_time,
            end_time: self.end_time,
            metadata: self.metadata.clone(),
            runtime_env: Value::Object(self.runtime_env.clone()),
            driver_info: driver.map(|d| d.driver_info.clone()).unwrap_or(Value::Null),
            driver_agent_http_address: self.driver_agent_http_address.clone(),
            driver_node_id: self.driver_node_id.clone(),
            driver_exit_code: self.driver_exit_code,
        }
    }
}

/// Ray's `JobSubmitRequest`, checked as Ray's `__post_init__` checks it (keys whose
/// value is null count as absent, as Ray strips them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubmitRequest {
    pub entrypoint: String,
    pub submission_id: Option<String>,
    pub runtime_env: Map<String, Value>,
    pub metadata: BTreeMap<String, String>,
    pub entrypoint_num_cpus: Option<f64>,
    pub entrypoint_num_gpus: Option<f64>,
    pub entrypoint_memory: Option<u64>,
    pub entrypoint_resources: Option<BTreeMap<String, f64>>,
}

/// The longest submission id taken (it names a file).
const MAX_SUBMISSION_ID_LEN: usize = 200;

impl SubmitRequest {
    /// Parses the body of `POST /api/jobs/`; the error names the field at fault.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(body).map_err(|e| format!("the request is not JSON: {e}"))?;
        let Value::Object(fields) = value else {
            return Err("the request must be a JSON object".into());
        };
        let fields: Map<String, Value> = fields.into_iter().filter(|(_, v)| !v.is_null()).collect();
        const KNOWN: &[&str] = &[
            "entrypoint",
            "submission_id",
            "job_id",
            "runtime_env",
            "metadata",
            "entrypoint_num_cpus",
            "entrypoint_num_gpus",
            "entrypoint_memory",
            "entrypoint_resources",
            "entrypoint_label_selector",
        ];
        if let Some(unknown) = fields.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(format!("unexpected field {unknown:?} in the job submission"));
        }
        let entrypoint = match fields.get("entrypoint") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::String(_)) => return Err("entrypoint must not be empty".into()),
            Some(other) => return Err(format!("entrypoint must be a string, got {other}")),
            None => return Err("the job submission has no entrypoint".into()),
        };
        // `job_id` is Ray's old name for the submission id.
        let submission_id = match fields.get("submission_id").or_else(|| fields.get("job_id")) {
            Some(Value::String(id)) => Some(check_submission_id(id)?),
            Some(other) => return Err(format!("submission_id must be a string, got {other}")),
            None => None,
        };
        let runtime_env = match fields.get("runtime_env") {
            Some(Value::Object(env)) => env.clone(),
            Some(other) => return Err(format!("runtime_env must be a dict, got {other}")),
            None => Map::new(),
        };
        let metadata = match fields.get("metadata") {
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(v) => Ok((k.clone(), v.clone())),
                    other => Err(format!("metadata values must be strings, got {other} for {k:?}")),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(format!("metadata must be a dict, got {other}")),
            None => BTreeMap::new(),
        };
        let amount = |name: &str| -> Result<Option<f64>, String> {
            match fields.get(name) {
                Some(Value::Number(n)) => match n.as_f64() {
                    Some(x) if x >= 0.0 && x.is_finite() => Ok(Some(x)),
                    _ => Err(format!("{name} must be a number >= 0, got {n}")),
                },
                Some(other) => Err(format!("{name} must be a number, got {other}")),
                None => Ok(None),
            }
        };
        let entrypoint_memory = match fields.get("entrypoint_memory") {
            Some(Value::Number(n)) => {
                Some(n.as_u64().ok_or_else(|| format!("entrypoint_memory must be an integer >= 0, got {n}"))?)
            }
            Some(other) => return Err(format!("entrypoint_memory must be an integer, got {other}")),
            None => None,
        };
        let entrypoint_resources = match fields.get("entrypoint_resources") {
            Some(Value::Object(m)) => Some(
                m.iter()
                    .map(|(k, v)| match v.as_f64() {
                        Some(x) if x >= 0.0 && x.is_finite() => Ok((k.clone(), x)),
                        _ => Err(format!("entrypoint_resources values must be numbers >= 0, got {v} for {k:?}")),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(other) => return Err(format!("entrypoint_resources must be a dict, got {other}")),
            None => None,
        };
        if let Some(selector) = fields.get("entrypoint_label_selector") {
            if selector.as_object().is_some_and(|m| !m.is_empty()) {
                return Err("entrypoint_label_selector is not supported by rtd (nodes have no labels)".into());
            }
        }
        Ok(Self {
            entrypoint,
            submission_id,
            runtime_env,
            metadata,
            entrypoint_num_cpus: amount("entrypoint_num_cpus")?,
            entrypoint_num_gpus: amount("entrypoint_num_gpus")?,
            entrypoint_memory,
            entrypoint_resources,
        })
    }

    /// What the entrypoint asks the cluster for, as Ray's supervisor would reserve it:
    /// (resource name, amount), non-zero amounts only.
    pub fn entrypoint_demand(&self) -> Vec<(String, f64)> {
        let mut demand: Vec<(String, f64)> = [
            ("CPU", self.entrypoint_num_cpus),
            ("GPU", self.entrypoint_num_gpus),
            ("memory", self.entrypoint_memory.map(|m| m as f64)),
        ]
        .into_iter()
        .filter_map(|(name, amount)| amount.map(|a| (name.to_string(), a)))
        .collect();
        demand.extend(self.entrypoint_resources.iter().flatten().map(|(k, v)| (k.clone(), *v)));
        demand.retain(|(_, amount)| *amount > 0.0);
        demand
    }
}

/// A submission id names a log file and a URL path segment: no `/`, no NUL, not `.`
/// or `..`, not empty, at most 200 bytes.
fn check_submission_id(id: &str) -> Result<String, String> {
    if id.is_empty() || id == "." || id == ".." || id.contains(['/', '\0']) || id.len() > MAX_SUBMISSION_ID_LEN {
        return Err(format!(
            "submission_id {id:?} is not usable: it must be 1 to {MAX_SUBMISSION_ID_LEN} bytes without '/' and not '.' or '..'"
        ));
    }
    Ok(id.to_string())
}

/// Ray's generated submission id: `raysubmit_` and 16 characters that cannot be
/// confused with each other.
pub fn generate_submission_id() -> String {
    use rand::seq::SliceRandom;
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz123456789";
    let mut rng = rand::thread_rng();
    let part: String = (0..16).filter_map(|_| CHARS.choose(&mut rng)).map(|&c| c as char).collect();
    format!("raysubmit_{part}")
}
