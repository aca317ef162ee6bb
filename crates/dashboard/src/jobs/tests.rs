//! The job manager's state machine over a fake cluster (a KV in memory) and a fake
//! launcher whose entrypoints exit when the test says.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::cluster::{Durable, JobsCluster};
use super::env::RuntimeEnvSetup;
use super::launcher::{Entrypoint, LaunchSpec, Launcher, StopSignal, WaitFuture};
use super::manager::{read_log, JobError, JobManager, JobsConfig};
use super::record::{self, JobRecord, JobStatus, SubmitRequest};
use crate::state::JobState;

#[derive(Default)]
struct FakeCluster {
    kv: Mutex<BTreeMap<String, Bytes>>,
    drivers: Mutex<Vec<JobState>>,
}

impl JobsCluster for FakeCluster {
    fn kv_get(&self, key: &str) -> Option<Bytes> {
        self.kv.lock().unwrap().get(key).cloned()
    }
    fn kv_put(&self, key: &str, value: Bytes) {
        self.kv.lock().unwrap().insert(key.into(), value);
    }
    fn kv_delete(&self, key: &str) -> bool {
        self.kv.lock().unwrap().remove(key).is_some()
    }
    fn kv_keys(&self, prefix: &str) -> Vec<String> {
        self.kv.lock().unwrap().keys().filter(|k| k.starts_with(prefix)).cloned().collect()
    }
    fn durable(&self) -> Durable {
        Box::pin(async {})
    }
    fn driver_jobs(&self) -> Vec<JobState> {
        self.drivers.lock().unwrap().clone()
    }
    fn cluster_id(&self) -> String {
        "session_test".into()
    }
}

/// What a fake entrypoint was asked, and how the test ends it.
#[derive(Default)]
struct Launched {
    specs: Vec<LaunchSpec>,
    /// Each started entrypoint's exit: send the code.
    exits: Vec<oneshot::Sender<i32>>,
    signals: Arc<Mutex<Vec<StopSignal>>>,
}

#[derive(Default)]
struct FakeLauncher {
    launched: Mutex<Launched>,
    /// Whether a SIGTERM ends the fake (else only SIGKILL does).
    obeys_term: bool,
    fail: bool,
}

struct FakeEntrypoint {
    exit: Option<oneshot::Receiver<i32>>,
    signals: Arc<Mutex<Vec<StopSignal>>>,
    killed: Arc<tokio::sync::Notify>,
    obeys_term: bool,
}

impl Entrypoint for FakeEntrypoint {
    fn pid(&self) -> u32 {
        4242
    }
    fn wait(&mut self) -> WaitFuture {
        let exit = self.exit.take();
        let killed = self.killed.clone();
        Box::pin(async move {
            let Some(exit) = exit else { return -1 };
            tokio::select! {
                code = exit => code.unwrap_or(-1),
                _ = killed.notified() => -15,
            }
        })
    }
    fn signal(&self, signal: StopSignal) {
        self.signals.lock().unwrap().push(signal);
        if signal == StopSignal::Kill || self.obeys_term {
            self.killed.notify_one();
        }
    }
}

impl Launcher for FakeLauncher {
    fn launch(&self, spec: &LaunchSpec) -> std::io::Result<Box<dyn Entrypoint>> {
        if self.fail {
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no sh here"));
        }
        let mut launched = self.launched.lock().unwrap();
        launched.specs.push(spec.clone());
        let (tx, rx) = oneshot::channel();
        launched.exits.push(tx);
        Ok(Box::new(FakeEntrypoint {
            exit: Some(rx),
            signals: launched.signals.clone(),
            killed: Arc::new(tokio::sync::Notify::new()),
            obeys_term: self.obeys_term,
        }))
    }
}

struct Fixture {
    cluster: Arc<FakeCluster>,
    launcher: Arc<FakeLauncher>,
    jobs: Arc<JobManager>,
    _logs: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> TempDir {
    let dir = std::env::temp_dir().join(format!("rtd-jobs-test-{}-{}", std::process::id(), rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

fn config(logs: &TempDir) -> JobsConfig {
    JobsConfig {
        logs_dir: logs.0.clone(),
        cluster_address: "127.0.0.1:6380".into(),
        node_id: "ab".repeat(28),
        dashboard_url: "http://127.0.0.1:8265".into(),
        env: vec![("PATH".into(), "/venv/bin:/usr/bin".into())],
        stop_grace: Duration::from_millis(100),
    }
}

fn fixture_with(launcher: FakeLauncher, cluster: Arc<FakeCluster>) -> Fixture {
    let logs = temp_dir();
    let launcher = Arc::new(launcher);
    let kv = cluster.clone();
    let env_setup = RuntimeEnvSetup {
        packages: Arc::new(rtd_runtime_env::setup::KvLookup(move |uri: &str| kv.kv_get(uri))),
        cache_root: logs.0.join("runtime_resources"),
        python: "python3".into(),
    };
    let jobs = JobManager::new(cluster.clone(), launcher.clone(), Arc::new(env_setup), config(&logs));
    Fixture { cluster, launcher, jobs, _logs: logs }
}

fn fixture() -> Fixture {
    fixture_with(FakeLauncher { obeys_term: true, ..Default::default() }, Arc::default())
}

fn request(body: Value) -> SubmitRequest {
    SubmitRequest::parse(body.to_string().as_bytes()).expect("a valid request")
}

impl Fixture {
    async fn wait_status(&self, id: &str, wanted: JobStatus) -> JobRecord {
        for _ in 0..500 {
            if let Some(record) = self.jobs.record(id) {
                if record.status == wanted {
                    return record;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("job {id} never reached {wanted:?}: {:?}", self.jobs.record(id));
    }

    async fn launched(&self, n: usize) {
        for _ in 0..500 {
            if self.launcher.launched.lock().unwrap().specs.len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the entrypoint was never launched");
    }

    fn exit(&self, index: usize, code: i32) {
        let tx = std::mem::replace(&mut self.launcher.launched.lock().unwrap().exits[index], oneshot::channel().0);
        tx.send(code).unwrap();
    }
}

#[tokio::test]
async fn a_job_runs_pending_to_running_to_succeeded() {
    let f = fixture();
    let id = f
        .jobs
        .submit(request(json!({
            "entrypoint": "python -c 'print(1)'",
            "submission_id": "job-1",
            "metadata": {"owner": "me"},
            "runtime_env": {"env_vars": {"A": "1"}},
        })))
        .await
        .unwrap();
    assert_eq!(id, "job-1");
    f.launched(1).await;
    let running = f.wait_status("job-1", JobStatus::Running).await;
    assert_eq!(running.driver_node_id.as_deref(), Some("ab".repeat(28).as_str()));
    assert_eq!(running.pid, Some(4242));
    let spec = f.launcher.launched.lock().unwrap().specs[0].clone();
    assert_eq!(spec.entrypoint, "python -c 'print(1)'");
    assert!(spec.log_path.ends_with("job-driver-job-1.log"));
    let env: BTreeMap<_, _> = spec.env.into_iter().collect();
    assert_eq!(env["RTD_ADDRESS"], "127.0.0.1:6380");
    assert_eq!(env["A"], "1");
    assert_eq!(env["PATH"], "/venv/bin:/usr/bin");
    let config: Value = serde_json::from_str(&env["RTD_JOB_CONFIG_JSON_ENV_VAR"]).unwrap();
    assert_eq!(config["metadata"]["job_submission_id"], "job-1");
    assert_eq!(config["metadata"]["owner"], "me");
    assert_eq!(config["runtime_env"]["env_vars"]["A"], "1");
    f.exit(0, 0);
    let done = f.wait_status("job-1", JobStatus::Succeeded).await;
    assert_eq!(done.driver_exit_code, Some(0));
    assert_eq!(done.message.as_deref(), Some("Job finished successfully."));
    assert!(done.end_time.is_some() && done.pid.is_none());
    let (log, _) = read_log(std::path::Path::new(&done.log_path), 0, false);
    assert!(log.starts_with("Running entrypoint for job job-1: python"), "{log:?}");
}

#[tokio::test]
async fn a_failing_entrypoint_is_failed_with_its_exit_code_and_log_tail() {
    let f = fixture();
    let id = f.jobs.submit(request(json!({"entrypoint": "exit 3"}))).await.unwrap();
    assert!(id.starts_with("raysubmit_") && id.len() == "raysubmit_".len() + 16, "{id}");
    f.launched(1).await;
    f.exit(0, 3);
    let failed = f.wait_status(&id, JobStatus::Failed).await;
    assert_eq!(failed.driver_exit_code, Some(3));
    assert_eq!(failed.error_type.as_deref(), Some("JOB_ENTRYPOINT_COMMAND_ERROR"));
    let message = failed.message.unwrap();
    assert!(message.contains("failed with exit code 3") && message.contains("Running entrypoint"), "{message}");
}

#[tokio::test]
async fn stop_terms_the_group_then_kills_it_after_the_grace() {
    let f = fixture_with(FakeLauncher { obeys_term: false, ..Default::default() }, Arc::default());
    let id = f.jobs.submit(request(json!({"entrypoint": "sleep 100"}))).await.unwrap();
    f.wait_status(&id, JobStatus::Running).await;
    assert_eq!(f.jobs.stop(&id), Ok(true));
    let stopped = f.wait_status(&id, JobStatus::Stopped).await;
    assert_eq!(stopped.message.as_deref(), Some("Job was intentionally stopped."));
    let signals = f.launcher.launched.lock().unwrap().signals.lock().unwrap().clone();
    assert_eq!(signals, vec![StopSignal::Term, StopSignal::Kill]);
    // Stopping a finished job is no error, but stops nothing.
    assert_eq!(f.jobs.stop(&id), Ok(false));
}

#[tokio::test]
async fn a_stopped_job_that_obeys_sigterm_is_not_killed() {
    let f = fixture();
    let id = f.jobs.submit(request(json!({"entrypoint": "sleep 100"}))).await.unwrap();
    f.wait_status(&id, JobStatus::Running).await;
    f.jobs.stop(&id).unwrap();
    f.wait_status(&id, JobStatus::Stopped).await;
    let signals = f.launcher.launched.lock().unwrap().signals.lock().unwrap().clone();
    assert_eq!(signals, vec![StopSignal::Term]);
}

#[tokio::test]
async fn delete_takes_only_finished_jobs_and_unknown_ids_are_not_found() {
    let f = fixture();
    let id = f.jobs.submit(request(json!({"entrypoint": "true", "submission_id": "d"}))).await.unwrap();
    f.wait_status(&id, JobStatus::Running).await;
    let refused = f.jobs.delete("d").unwrap_err();
    assert!(matches!(&refused, JobError::BadRequest(m) if m.contains("non-terminal state RUNNING")), "{refused:?}");
    f.exit(0, 0);
    f.wait_status(&id, JobStatus::Succeeded).await;
    assert_eq!(f.jobs.delete("d"), Ok(true));
    assert!(f.jobs.record("d").is_none());
    for result in [f.jobs.get("d").map(|_| ()), f.jobs.stop("d").map(|_| ()), f.jobs.delete("d").map(|_| ())] {
        assert_eq!(result, Err(JobError::NotFound("Job d does not exist".into())));
    }
}

#[tokio::test]
async fn a_submission_id_is_taken_once() {
    let f = fixture();
    f.jobs.submit(request(json!({"entrypoint": "true", "submission_id": "same"}))).await.unwrap();
    let again = f.jobs.submit(request(json!({"entrypoint": "true", "submission_id": "same"}))).await;
    assert!(matches!(again, Err(JobError::BadRequest(m)) if m.contains("already exists")));
}

#[tokio::test]
async fn a_runtime_env_that_cannot_be_set_up_fails_the_job_before_it_starts() {
    let f = fixture();
    let id =
        f.jobs.submit(request(json!({"entrypoint": "true", "runtime_env": {"env_vars": {"A": 1}}}))).await.unwrap();
    let failed = f.wait_status(&id, JobStatus::Failed).await;
    assert_eq!(failed.error_type.as_deref(), Some("RUNTIME_ENV_SETUP_FAILURE"));
    assert!(failed.message.unwrap().contains("env_vars"));
    assert!(f.launcher.launched.lock().unwrap().specs.is_empty());
}

#[tokio::test]
async fn an_entrypoint_that_cannot_start_fails_the_job() {
    let f = fixture_with(FakeLauncher { fail: true, ..Default::default() }, Arc::default());
    let id = f.jobs.submit(request(json!({"entrypoint": "true"}))).await.unwrap();
    let failed = f.wait_status(&id, JobStatus::Failed).await;
    assert_eq!(failed.error_type.as_deref(), Some("JOB_ENTRYPOINT_COMMAND_START_ERROR"));
}

#[tokio::test]
async fn a_restarted_head_fails_the_jobs_it_did_not_finish() {
    let cluster = Arc::new(FakeCluster::default());
    let mut running = JobRecord::pending("r".into(), request(json!({"entrypoint": "x"})), "/nowhere".into(), 1);
    running.set_status(JobStatus::Running, None, 2);
    let mut done = JobRecord::pending("s".into(), request(json!({"entrypoint": "y"})), "/nowhere".into(), 1);
    done.set_status(JobStatus::Succeeded, None, 3);
    for r in [&running, &done] {
        cluster.kv_put(&record::key(&r.submission_id), r.encode().into());
    }
    let f = fixture_with(FakeLauncher::default(), cluster);
    let failed = f.jobs.record("r").unwrap();
    assert_eq!((failed.status, failed.error_type.as_deref()), (JobStatus::Failed, Some("JOB_SUPERVISOR_ACTOR_DIED")));
    assert_eq!(f.jobs.record("s").unwrap(), done);
}

fn driver(job_id: &str, submission: Option<&str>) -> JobState {
    JobState {
        job_id: Some(job_id.into()),
        submission_id: submission.map(String::from),
        job_type: "DRIVER",
        status: "RUNNING",
        entrypoint: "python x.py".into(),
        message: None,
        error_type: None,
        start_time: 5,
        end_time: None,
        metadata: BTreeMap::new(),
        runtime_env: json!({}),
        driver_info: json!({"id": job_id, "node_ip_address": "127.0.0.1", "pid": "77"}),
        driver_agent_http_address: None,
        driver_node_id: Some("aa".into()),
        driver_exit_code: None,
    }
}

#[tokio::test]
async fn jobs_are_found_by_submission_id_or_by_their_drivers_job_id() {
    let f = fixture();
    f.jobs.submit(request(json!({"entrypoint": "python x.py", "submission_id": "sub"}))).await.unwrap();
    f.wait_status("sub", JobStatus::Running).await;
    *f.cluster.drivers.lock().unwrap() = vec![driver("01000000", Some("sub")), driver("02000000", None)];
    let by_driver = f.jobs.get("01000000").unwrap();
    assert_eq!((by_driver.job_type, by_driver.submission_id.as_deref()), ("SUBMISSION", Some("sub")));
    assert_eq!(by_driver.driver_info["pid"], "77");
    assert_eq!(f.jobs.get("sub").unwrap(), by_driver);
    let own = f.jobs.get("02000000").unwrap();
    assert_eq!((own.job_type, own.submission_id), ("DRIVER", None));
    assert!(matches!(f.jobs.stop("02000000"), Err(JobError::BadRequest(m)) if m.contains("submission type")));
    let listed = f.jobs.list();
    let shown: Vec<_> = listed.iter().map(|j| (j.job_type, j.job_id.clone())).collect();
    assert_eq!(shown, vec![("SUBMISSION", Some("01000000".into())), ("DRIVER", Some("02000000".into()))]);
    f.exit(0, 0);
}

#[tokio::test]
async fn shutdown_stops_every_running_job() {
    let f = fixture();
    let a = f.jobs.submit(request(json!({"entrypoint": "sleep 100"}))).await.unwrap();
    let b = f.jobs.submit(request(json!({"entrypoint": "sleep 100"}))).await.unwrap();
    f.wait_status(&a, JobStatus::Running).await;
    f.wait_status(&b, JobStatus::Running).await;
    f.jobs.shutdown().await;
    assert_eq!(f.jobs.record(&a).unwrap().status, JobStatus::Stopped);
    assert_eq!(f.jobs.record(&b).unwrap().status, JobStatus::Stopped);
}

#[test]
fn submit_requests_are_checked_as_ray_checks_them() {
    let ok = request(json!({
        "entrypoint": "echo hi", "job_id": "old-name", "entrypoint_num_cpus": 1,
        "entrypoint_resources": {"custom": 0.5}, "entrypoint_memory": 1024, "metadata": null,
    }));
    assert_eq!(ok.submission_id.as_deref(), Some("old-name"));
    assert_eq!(ok.entrypoint_demand(), vec![("CPU".into(), 1.0), ("memory".into(), 1024.0), ("custom".into(), 0.5)]);
    for (body, wanted) in [
        (json!({}), "no entrypoint"),
        (json!({"entrypoint": 1}), "entrypoint must be a string"),
        (json!({"entrypoint": " "}), "must not be empty"),
        (json!({"entrypoint": "x", "submission_id": "a/b"}), "not usable"),
        (json!({"entrypoint": "x", "runtime_env": []}), "runtime_env must be a dict"),
        (json!({"entrypoint": "x", "metadata": {"a": 1}}), "metadata values must be strings"),
        (json!({"entrypoint": "x", "entrypoint_num_cpus": -1}), "entrypoint_num_cpus must be a number >= 0"),
        (json!({"entrypoint": "x", "entrypoint_num_gpus": "1"}), "entrypoint_num_gpus must be a number"),
        (json!({"entrypoint": "x", "entrypoint_memory": 1.5}), "entrypoint_memory must be an integer"),
        (json!({"entrypoint": "x", "entrypoint_resources": {"a": "b"}}), "entrypoint_resources values"),
        (json!({"entrypoint": "x", "bogus": 1}), "unexpected field \"bogus\""),
    ] {
        let err = SubmitRequest::parse(body.to_string().as_bytes()).unwrap_err();
        assert!(err.contains(wanted), "{body}: {err}");
    }
    assert!(SubmitRequest::parse(b"not json").unwrap_err().contains("not JSON"));
}

#[test]
fn a_log_is_read_on_from_an_offset_without_cutting_a_character() {
    let dir = temp_dir();
    let path = dir.0.join("log");
    std::fs::write(&path, "héllo".as_bytes()).unwrap();
    let (all, end) = read_log(&path, 0, true);
    assert_eq!((all.as_str(), end), ("héllo", 6));
    // Starting inside nothing new: empty, same offset.
    assert_eq!(read_log(&path, 6, true), (String::new(), 6));
    // A file ending in half of "é": the half waits for the next read.
    std::fs::write(&path, &"hé".as_bytes()[..2]).unwrap();
    assert_eq!(read_log(&path, 0, true), ("h".to_string(), 1));
    assert_eq!(read_log(&dir.0.join("missing"), 3, true), (String::new(), 3));
}
