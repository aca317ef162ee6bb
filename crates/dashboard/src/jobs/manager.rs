//! The job manager: Ray's `JobManager` and `JobSupervisor` in one, inside the head
//! daemon. Each submitted job gets a supervising task that prepares its runtime
//! environment, starts the entrypoint ([`Launcher`]), and records how it ends:
//!
//! ```text
//! PENDING ──(env ready, started)──> RUNNING ──(exit 0)──> SUCCEEDED
//!    │                                 ├──(exit != 0)──> FAILED (driver_exit_code)
//!    ├──(env or start fails)──> FAILED └──(stop: SIGTERM, SIGKILL after the grace)──> STOPPED
//!    └──(stop)──> STOPPED
//! ```
//!
//! A terminal status never changes. Records live in the GCS's KV ([`JobsCluster`]), so
//! a restarted head lists them; a job that was not finished when its head died is
//! FAILED at the restart (its process group is killed if it is still there).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::watch;

use super::cluster::JobsCluster;
use super::launcher::{signal_group, LaunchSpec, Launcher, StopSignal};
use super::record::{self, error_type, generate_submission_id, JobRecord, JobStatus, SubmitRequest};
use crate::state::JobState;

/// A job's runtime environment, made ready on the head for its entrypoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PreparedEnv {
    /// The entrypoint's working directory (the unpacked `working_dir`); None: the
    /// head daemon's.
    pub cwd: Option<PathBuf>,
    /// Variables the entrypoint gets (`env_vars`, `PYTHONPATH` for `py_modules`).
    pub env: Vec<(String, String)>,
}

pub type PrepareFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<PreparedEnv, String>> + Send>>;

/// Prepares a job's `runtime_env` (the error: why it cannot be set up).
pub trait EnvSetup: Send + Sync + 'static {
    fn prepare(&self, submission_id: &str, runtime_env: &Map<String, Value>) -> PrepareFuture;
}

/// Where the manager runs entrypoints and what it tells them.
#[derive(Clone, Debug)]
pub struct JobsConfig {
    /// The session's log directory: `job-driver-<submission id>.log` goes there.
    pub logs_dir: PathBuf,
    /// What `RTD_ADDRESS` is for an entrypoint: the address a plain `rtd.init()`
    /// connects to.
    pub cluster_address: String,
    /// The head node's id (hex), Ray's `driver_node_id`.
    pub node_id: String,
    /// `http://host:port` of this dashboard, Ray's `driver_agent_http_address`.
    pub dashboard_url: String,
    /// Variables every entrypoint gets besides the head daemon's own.
    pub env: Vec<(String, String)>,
    /// How long a stopped entrypoint has between SIGTERM and SIGKILL
    /// (Ray's `RAY_JOB_STOP_WAIT_TIME_S`, 3 s).
    pub stop_grace: Duration,
}

/// Why a jobs request cannot be done.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum JobError {
    /// HTTP 404.
    #[error("{0}")]
    NotFound(String),
    /// HTTP 400.
    #[error("{0}")]
    BadRequest(String),
}

/// The variable that carries the job's config to its driver (Ray's
/// `RAY_JOB_CONFIG_JSON_ENV_VAR`): `{"runtime_env": ..., "metadata": ...}`.
pub const JOB_CONFIG_ENV: &str = "RTD_JOB_CONFIG_JSON_ENV_VAR";
/// Ray's metadata keys naming the submission a driver runs for.
const SUBMISSION_ID_METADATA_KEY: &str = "job_submission_id";
const JOB_NAME_METADATA_KEY: &str = "job_name";
/// How many of the log's last lines a FAILED job's message quotes (as Ray).
const LOG_LINES_ON_ERROR: usize = 10;
/// At most this much of the log in that message.
const MAX_LOG_IN_MESSAGE: usize = 20_000;
/// The most bytes one read of a log from an offset returns.
pub const MAX_LOG_CHUNK: u64 = 1 << 20;

pub struct JobManager {
    cluster: Arc<dyn JobsCluster>,
    launcher: Arc<dyn Launcher>,
    env_setup: Arc<dyn EnvSetup>,
    config: JobsConfig,
    /// The jobs being supervised, with the switch that stops each.
    running: Mutex<HashMap<String, watch::Sender<bool>>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What an id names: a submitted job (with the driver its entrypoint started, if
/// any), or a driver's own job.
enum Found {
    Submission(Box<JobRecord>, Option<JobState>),
    Driver(JobState),
}

impl Found {
    fn details(&self) -> JobState {
        match self {
            Found::Submission(record, driver) => record.details(driver.as_ref()),
            Found::Driver(job) => job.clone(),
        }
    }

    fn submission(self, what: &str) -> Result<JobRecord, JobError> {
        match self {
            Found::Submission(record, _) => Ok(*record),
            Found::Driver(_) => Err(JobError::BadRequest(format!("Can only {what} submission type jobs"))),
        }
    }
}

fn read_record(cluster: &dyn JobsCluster, submission_id: &str) -> Option<JobRecord> {
    cluster.kv_get(&record::key(submission_id)).and_then(|bytes| JobRecord::decode(&bytes))
}

/// Drivers by the submission they run for (the last one of each, as Ray), and the
/// drivers of no submission.
fn drivers(cluster: &dyn JobsCluster) -> (HashMap<String, JobState>, Vec<JobState>) {
    let mut jobs = cluster.driver_jobs();
    jobs.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    let mut of_submission = HashMap::new();
    let mut own = Vec::new();
    for job in jobs {
        match job.submission_id.clone() {
            Some(id) => {
                of_submission.insert(id, job);
            }
            None => own.push(job),
        }
    }
    (of_submission, own)
}

/// Every job, as Ray's `GET /api/jobs/` lists them: submitted jobs, then drivers'
/// jobs that belong to no submission.
pub fn list_jobs(cluster: &dyn JobsCluster) -> Vec<JobState> {
    let (of_submission, own) = drivers(cluster);
    let mut jobs: Vec<JobState> = cluster
        .kv_keys(record::KEY_PREFIX)
        .iter()
        .filter_map(|key| cluster.kv_get(key))
        .filter_map(|bytes| JobRecord::decode(&bytes))
        .map(|record| record.details(of_submission.get(&record.submission_id)))
        .collect();
    jobs.extend(own);
    jobs
}

/// The job `id` names, as Ray's `find_job_by_ids`: a driver's job id, the job id of a
/// submission's driver, or a submission id.
fn find(cluster: &dyn JobsCluster, id: &str) -> Result<Found, JobError> {
    let (of_submission, own) = drivers(cluster);
    if let Some(job) = own.into_iter().find(|j| j.job_id.as_deref() == Some(id)) {
        return Ok(Found::Driver(job));
    }
    let submission_id = of_submission
        .iter()
        .find(|(_, driver)| driver.job_id.as_deref() == Some(id))
        .map(|(submission, _)| submission.clone())
        .unwrap_or_else(|| id.to_string());
    match read_record(cluster, &submission_id) {
        Some(record) => {
            let driver = of_submission.get(&submission_id).cloned();
            Ok(Found::Submission(Box::new(record), driver))
        }
        None => Err(JobError::NotFound(format!("Job {id} does not exist"))),
    }
}

impl JobManager {
    /// A manager over `cluster`'s records. Jobs a previous head left unfinished are
    /// FAILED now (their supervisor died with that head).
    pub fn new(
        cluster: Arc<dyn JobsCluster>,
        launcher: Arc<dyn Launcher>,
        env_setup: Arc<dyn EnvSetup>,
        config: JobsConfig,
    ) -> Arc<Self> {
        let manager = Arc::new(Self { cluster, launcher, env_setup, config, running: Mutex::default() });
        manager.fail_orphans();
        manager
    }

    fn fail_orphans(&self) {
        for key in self.cluster.kv_keys(record::KEY_PREFIX) {
            let Some(mut record) = self.cluster.kv_get(&key).and_then(|b| JobRecord::decode(&b)) else { continue };
            if record.status.is_terminal() {
                continue;
            }
            if let (Some(pgid), Some(started)) = (record.pid, record.pid_start) {
                if group_outlived_its_head(pgid, started) {
                    signal_group(pgid, StopSignal::Kill);
                }
            }
            record.error_type = Some(error_type::SUPERVISOR_DIED.into());
            record.set_status(
                JobStatus::Failed,
                Some("The head node stopped while this job ran, and its entrypoint with it.".into()),
                now_ms(),
            );
            self.save(&record);
        }
    }

    fn save(&self, record: &JobRecord) {
        self.cluster.kv_put(&record::key(&record.submission_id), record.encode().into());
    }

    /// Resolves once every write made so far is durable. An answer that reports a job's
    /// state waits for it, as the GCS's replies do: a client that saw RUNNING must find
    /// the record (and the entrypoint's pid) after a head crash.
    pub fn durable(&self) -> crate::jobs::cluster::Durable {
        self.cluster.durable()
    }

    /// Whether an uploaded package (`gcs://...`) is in the KV.
    pub fn has_package(&self, uri: &str) -> bool {
        self.cluster.kv_get(uri).is_some()
    }

    /// Stores an uploaded package under its URI; returns once it is durable.
    pub async fn put_package(&self, uri: &str, bytes: Vec<u8>) {
        self.cluster.kv_put(uri, bytes.into());
        self.cluster.durable().await;
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<bool>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a new PENDING job and starts supervising it; its submission id. The
    /// answer waits until the record is durable.
    pub async fn submit(self: &Arc<Self>, request: SubmitRequest) -> Result<String, JobError> {
        let submission_id = request.submission_id.clone().unwrap_or_else(generate_submission_id);
        let key = record::key(&submission_id);
        let log_path = self.config.logs_dir.join(format!("job-driver-{submission_id}.log"));
        let record = JobRecord::pending(submission_id.clone(), request, log_path.display().to_string(), now_ms());
        let (stop, stop_rx) = watch::channel(false);
        {
            // Checked and claimed under one lock: two submissions of one id race here.
            let mut running = self.running();
            if running.contains_key(&submission_id) || self.cluster.kv_get(&key).is_some() {
                return Err(JobError::BadRequest(format!(
                    "Job with submission_id {submission_id} already exists. Please use a different submission_id."
                )));
            }
            self.save(&record);
            running.insert(submission_id.clone(), stop);
        }
        self.cluster.durable().await;
        tokio::spawn(self.clone().supervise(record, stop_rx));
        Ok(submission_id)
    }

    /// Asks the job to stop; whether it was running (Ray's `stopped`).
    pub fn stop(&self, id: &str) -> Result<bool, JobError> {
        let record = find(self.cluster.as_ref(), id)?.submission("stop")?;
        match self.running().get(&record.submission_id) {
            Some(stop) => {
                stop.send_replace(true);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Forgets a finished job (its log file stays).
    pub fn delete(&self, id: &str) -> Result<bool, JobError> {
        let record = find(self.cluster.as_ref(), id)?.submission("delete")?;
        if !record.status.is_terminal() {
            return Err(JobError::BadRequest(format!(
                "Attempted to delete job '{}', but it is in a non-terminal state {}; stop it first",
                record.submission_id,
                record.status.name()
            )));
        }
        Ok(self.cluster.kv_delete(&record::key(&record.submission_id)))
    }

    pub fn get(&self, id: &str) -> Result<JobState, JobError> {
        Ok(find(self.cluster.as_ref(), id)?.details())
    }

    pub fn list(&self) -> Vec<JobState> {
        list_jobs(self.cluster.as_ref())
    }

    /// The submitted job `id` names (a driver's own job is an error).
    pub fn submission(&self, id: &str) -> Result<JobRecord, JobError> {
        find(self.cluster.as_ref(), id)?.submission("get logs of")
    }

    /// The current record of the job with this submission id.
    pub fn record(&self, submission_id: &str) -> Option<JobRecord> {
        read_record(self.cluster.as_ref(), submission_id)
    }

    /// The cluster's id (`session_name`).
    pub fn cluster_id(&self) -> String {
        self.cluster.cluster_id()
    }

    /// Stops every running job (SIGTERM, SIGKILL after the grace period) and waits for
    /// their supervisors to record it, at most the grace period and a second.
    pub async fn shutdown(&self) {
        for stop in self.running().values() {
            stop.send_replace(true);
        }
        let deadline = tokio::time::Instant::now() + self.config.stop_grace + Duration::from_secs(1);
        while !self.running().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn supervise(self: Arc<Self>, mut record: JobRecord, mut stop: watch::Receiver<bool>) {
        let id = record.submission_id.clone();
        let (status, message) = self.run(&mut record, &mut stop).await;
        record.set_status(status, message, now_ms());
        self.save(&record);
        self.running().remove(&id);
    }

    /// Takes the job from PENDING to its end: its final status and message (None:
    /// Ray's default one).
    async fn run(&self, record: &mut JobRecord, stop: &mut watch::Receiver<bool>) -> (JobStatus, Option<String>) {
        let log_path = PathBuf::from(&record.log_path);
        let prepared = tokio::select! {
            prepared = self.env_setup.prepare(&record.submission_id, &record.runtime_env) => prepared,
            _ = stopped(stop) => return (JobStatus::Stopped, None),
        };
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(why) => {
                append_log(&log_path, &format!("rtd: the job's runtime_env could not be set up: {why}\n"));
                record.error_type = Some(error_type::RUNTIME_ENV_SETUP_FAILURE.into());
                return (JobStatus::Failed, Some(format!("Failed to set up the runtime environment: {why}")));
            }
        };
        append_log(&log_path, &format!("Running entrypoint for job {}: {}\n", record.submission_id, record.entrypoint));
        let spec = LaunchSpec {
            entrypoint: record.entrypoint.clone(),
            cwd: prepared.cwd,
            env: self.entrypoint_env(record, prepared.env),
            log_path: log_path.clone(),
        };
        let mut entrypoint = match self.launcher.launch(&spec) {
            Ok(entrypoint) => entrypoint,
            Err(e) => {
                record.error_type = Some(error_type::ENTRYPOINT_START_ERROR.into());
                return (JobStatus::Failed, Some(format!("The entrypoint command could not be started: {e}")));
            }
        };
        record.pid = Some(entrypoint.pid());
        record.pid_start = process_start(entrypoint.pid());
        record.driver_agent_http_address = Some(self.config.dashboard_url.clone());
        record.driver_node_id = Some(self.config.node_id.clone());
        record.set_status(JobStatus::Running, None, now_ms());
        self.save(record);
        let mut exited = entrypoint.wait();
        let code = tokio::select! {
            code = &mut exited => code,
            _ = stopped(stop) => {
                entrypoint.signal(StopSignal::Term);
                if tokio::time::timeout(self.config.stop_grace, &mut exited).await.is_err() {
                    entrypoint.signal(StopSignal::Kill);
                    exited.await;
                }
                return (JobStatus::Stopped, None);
            }
        };
        record.driver_exit_code = Some(code);
        if code == 0 {
            return (JobStatus::Succeeded, None);
        }
        record.error_type = Some(error_type::ENTRYPOINT_ERROR.into());
        let tail = last_lines(&log_path, LOG_LINES_ON_ERROR, MAX_LOG_IN_MESSAGE);
        let message = if tail.is_empty() {
            format!("Job entrypoint command failed with exit code {code}. No logs available.")
        } else {
            format!(
                "Job entrypoint command failed with exit code {code}, last available logs (truncated to 20,000 chars):\n{tail}"
            )
        };
        (JobStatus::Failed, Some(message))
    }

    /// The entrypoint's variables: the cluster's address, the job's config for its
    /// driver (Ray's), unbuffered Python output, then the runtime env's.
    fn entrypoint_env(&self, record: &JobRecord, runtime_env_vars: Vec<(String, String)>) -> Vec<(String, String)> {
        let mut metadata: Map<String, Value> = Map::new();
        metadata.insert(SUBMISSION_ID_METADATA_KEY.into(), record.submission_id.clone().into());
        metadata.insert(JOB_NAME_METADATA_KEY.into(), record.submission_id.clone().into());
        metadata.extend(record.metadata.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))));
        let config = json!({"runtime_env": record.runtime_env, "metadata": metadata});
        let mut env = self.config.env.clone();
        env.push(("RTD_ADDRESS".into(), self.config.cluster_address.clone()));
        env.push((JOB_CONFIG_ENV.into(), config.to_string()));
        env.push(("PYTHONUNBUFFERED".into(), "1".into()));
        env.extend(runtime_env_vars);
        env
    }
}

/// Resolves once a stop is asked for (never, if nobody can ask any more).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn append_log(path: &Path, text: &str) {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = file.write_all(text.as_bytes());
    }
}

/// When process `pid` started (clock ticks since boot, `/proc/<pid>/stat` field 22).
fn process_start(pid: u32) -> Option<u64> {
    stat_fields(pid).map(|(_, start)| start)
}

/// (process group, start time) of process `pid`.
fn stat_fields(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some((fields.get(2)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

/// Whether some process of the group `pgid` a job's entrypoint led (started at
/// `started`) is still there: one in that group that started no earlier. A pid reused
/// since by an unrelated process does not count.
fn group_outlived_its_head(pgid: u32, started: u64) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat_fields)
        .any(|(group, start)| group == pgid && start >= started)
}

/// The last `lines` lines of the file at `path`, at most `max_chars` of them.
fn last_lines(path: &Path, lines: usize, max_chars: usize) -> String {
    let Ok(text) = std::fs::read(path) else { return String::new() };
    let text = String::from_utf8_lossy(&text);
    let kept: Vec<&str> = text.lines().rev().take(lines).collect();
    let tail: String = kept.into_iter().rev().collect::<Vec<_>>().join("\n");
    let skip = tail.chars().count().saturating_sub(max_chars);
    tail.chars().skip(skip).collect()
}

/// A job's log from byte `offset` (at most [`MAX_LOG_CHUNK`] bytes when `limit`),
/// as text, and the offset to read on from. A character cut at the end is left for
/// the next read; a missing file is an empty log.
pub fn read_log(path: &Path, offset: u64, limit: bool) -> (String, u64) {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else { return (String::new(), offset) };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return (String::new(), offset);
    }
    let mut bytes = Vec::new();
    let read = if limit { file.take(MAX_LOG_CHUNK).read_to_end(&mut bytes) } else { file.read_to_end(&mut bytes) };
    if read.is_err() {
        return (String::new(), offset);
    }
    let (text, used) = match std::str::from_utf8(&bytes) {
        Ok(text) => (text.to_string(), bytes.len()),
        // An incomplete character at the end: the next read gets it whole.
        Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => {
            (String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned(), e.valid_up_to())
        }
        Err(_) => (String::from_utf8_lossy(&bytes).into_owned(), bytes.len()),
    };
    (text, offset + used as u64)
}
