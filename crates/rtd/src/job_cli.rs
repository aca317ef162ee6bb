//! `rtd job submit|status|logs|stop|list|delete`: Ray's `ray job` CLI, a client of the
//! Jobs REST API the head serves on its dashboard port (`rtd_dashboard::jobs`), with
//! Ray's messages and exit codes (`submit` waits and streams the log by default, and
//! exits 1 when the job FAILED; an unknown job or an unreachable cluster exits 1).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Subcommand};
use rtd_runtime_env::package::{Layout, MAX_PACKAGE_SIZE};
use serde_json::{json, Map, Value};

use crate::state_cli::{dashboard_url, ClusterArgs};

#[derive(Args, Debug)]
pub struct JobArgs {
    #[command(subcommand)]
    command: JobCommand,
}

#[derive(Subcommand, Debug)]
enum JobCommand {
    /// Submit a job: run `-- COMMAND...` on the head node; waits and streams its log unless --no-wait.
    Submit(SubmitArgs),
    /// Show a job's status.
    Status(JobIdArgs),
    /// Print a job's log (--follow: until it ends).
    Logs(LogsArgs),
    /// Stop a job (SIGTERM, then SIGKILL); waits until it has exited unless --no-wait.
    Stop(StopArgs),
    /// List the cluster's jobs.
    List(Connection),
    /// Forget a finished job.
    Delete(JobIdArgs),
}

/// Which cluster: `--address` (the dashboard's `http://HOST:PORT`, or the cluster's
/// `HOST:PORT`), else `RTD_API_SERVER_ADDRESS` or `RTD_ADDRESS`, else this machine's.
#[derive(Args, Debug)]
struct Connection {
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args, Debug)]
struct JobIdArgs {
    /// The submission id (or the job id of its driver).
    job_id: String,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Args, Debug)]
struct LogsArgs {
    job_id: String,
    /// Keep printing what the job writes until it ends.
    #[arg(short, long)]
    follow: bool,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Args, Debug)]
struct StopArgs {
    job_id: String,
    /// Return once the stop is asked for, without waiting for the job to exit.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Args, Debug)]
struct SubmitArgs {
    /// The job's id (default: a new `raysubmit_...`).
    #[arg(long)]
    submission_id: Option<String>,
    /// A local directory to run the job in: packed and uploaded to the cluster.
    #[arg(long, value_name = "DIR")]
    working_dir: Option<PathBuf>,
    /// The job's runtime_env as JSON.
    #[arg(long, value_name = "JSON")]
    runtime_env_json: Option<String>,
    /// Metadata to keep with the job, a JSON object of strings.
    #[arg(long, value_name = "JSON")]
    metadata_json: Option<String>,
    /// CPUs to reserve for the entrypoint.
    #[arg(long, value_name = "N")]
    entrypoint_num_cpus: Option<f64>,
    /// GPUs to reserve for the entrypoint.
    #[arg(long, value_name = "N")]
    entrypoint_num_gpus: Option<f64>,
    /// Memory (bytes) to reserve for the entrypoint.
    #[arg(long, value_name = "BYTES")]
    entrypoint_memory: Option<u64>,
    /// Custom resources to reserve for the entrypoint, as JSON.
    #[arg(long, value_name = "JSON")]
    entrypoint_resources: Option<String>,
    /// Return after submitting, without streaming the log.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    connection: Connection,
    /// The command to run (after `--`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    entrypoint: Vec<String>,
}

/// Runs `rtd job ...`. A submitted job that FAILED is an error (exit code 1), as in Ray.
pub fn job(args: &JobArgs) -> Result<()> {
    match &args.command {
        JobCommand::Submit(a) => submit(a),
        JobCommand::Status(a) => {
            let jobs = Jobs::connect(&a.connection)?;
            let info = jobs.info(&a.job_id)?;
            println!("Status for job '{}': {}", a.job_id, info["status"].as_str().unwrap_or("?"));
            if let Some(message) = info["message"].as_str() {
                println!("Status message: {message}");
            }
            Ok(())
        }
        JobCommand::Logs(a) => {
            let jobs = Jobs::connect(&a.connection)?;
            if a.follow {
                jobs.follow(&a.job_id)?;
            } else {
                let logs = jobs.call("GET", &format!("/api/jobs/{}/logs", segment(&a.job_id)), None)?;
                print!("{}", logs["logs"].as_str().unwrap_or_default());
            }
            Ok(())
        }
        JobCommand::Stop(a) => {
            let jobs = Jobs::connect(&a.connection)?;
            println!("Attempting to stop job '{}'", a.job_id);
            jobs.call("POST", &format!("/api/jobs/{}/stop", segment(&a.job_id)), None)?;
            if a.no_wait {
                return Ok(());
            }
            println!("Waiting for job '{}' to exit (disable with --no-wait):", a.job_id);
            loop {
                let status = jobs.status(&a.job_id)?;
                if is_terminal(&status) {
                    report_end(&jobs, &a.job_id)?;
                    return Ok(());
                }
                println!("Job has not exited yet. Status: {status}");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        JobCommand::List(connection) => {
            let jobs = Jobs::connect(connection)?;
            let listed = jobs.call("GET", "/api/jobs/", None)?;
            print!("{}", table(listed.as_array().map(Vec::as_slice).unwrap_or_default()));
            Ok(())
        }
        JobCommand::Delete(a) => {
            let jobs = Jobs::connect(&a.connection)?;
            jobs.call("DELETE", &format!("/api/jobs/{}", segment(&a.job_id)), None)?;
            println!("Job '{}' deleted successfully", a.job_id);
            Ok(())
        }
    }
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "STOPPED" | "SUCCEEDED" | "FAILED")
}

/// A job id as one URL path segment.
fn segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The command line `args` as one shell command, quoting as Python's `shlex.join`
/// (what Ray's `ray job submit` sends).
fn shell_join(args: &[String]) -> String {
    args.iter()
        .map(|arg| {
            let safe = !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c));
            if safe {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', "'\"'\"'"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_json_object(text: &str, flag: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => bail!("{flag} must be a JSON object"),
        Err(e) => bail!("{flag} is not valid JSON: {e}"),
    }
}

fn submit(args: &SubmitArgs) -> Result<()> {
    let mut runtime_env = match &args.runtime_env_json {
        Some(text) => parse_json_object(text, "--runtime-env-json")?,
        None => Map::new(),
    };
    if let Some(dir) = &args.working_dir {
        runtime_env.insert("working_dir".into(), dir.display().to_string().into());
    }
    let metadata = match &args.metadata_json {
        Some(text) => Some(parse_json_object(text, "--metadata-json")?),
        None => None,
    };
    let resources = match &args.entrypoint_resources {
        Some(text) => Some(parse_json_object(text, "--entrypoint-resources")?),
        None => None,
    };
    let jobs = Jobs::connect(&args.connection)?;
    jobs.upload_local_paths(&mut runtime_env)?;
    let mut request = json!({"entrypoint": shell_join(&args.entrypoint), "runtime_env": runtime_env});
    let optional = [
        ("submission_id", args.submission_id.clone().map(Value::from)),
        ("metadata", metadata.map(Value::Object)),
        ("entrypoint_num_cpus", args.entrypoint_num_cpus.map(Value::from)),
        ("entrypoint_num_gpus", args.entrypoint_num_gpus.map(Value::from)),
        ("entrypoint_memory", args.entrypoint_memory.map(Value::from)),
        ("entrypoint_resources", resources.map(Value::Object)),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            request[name] = value;
        }
    }
    let reply = jobs.call("POST", "/api/jobs/", Some(request.to_string().into_bytes()))?;
    let id = reply["submission_id"].as_str().ok_or_else(|| anyhow!("the cluster's answer has no submission_id"))?;
    println!("Job '{id}' submitted successfully");
    println!("Next steps: rtd job logs {id} | rtd job status {id} | rtd job stop {id}");
    if args.no_wait {
        return Ok(());
    }
    println!("Tailing logs until the job exits (disable with --no-wait):");
    jobs.follow(id)?;
    if report_end(&jobs, id)? == "FAILED" {
        bail!("job '{id}' failed");
    }
    Ok(())
}

/// Prints how the job ended (Ray's words); its status.
fn report_end(jobs: &Jobs, id: &str) -> Result<String> {
    let info = jobs.info(id)?;
    let status = info["status"].as_str().unwrap_or_default().to_string();
    match status.as_str() {
        "SUCCEEDED" => println!("Job '{id}' succeeded"),
        "STOPPED" => println!("Job '{id}' was stopped"),
        "FAILED" => {
            println!("Job '{id}' failed");
            if let Some(message) = info["message"].as_str() {
                println!("Status message: {message}");
            }
        }
        other => println!("Status for job '{id}': {other}"),
    }
    Ok(status)
}

/// The columns `rtd job list` shows.
const LIST_COLUMNS: &[&str] = &["submission_id", "job_id", "type", "status", "entrypoint", "start_time", "end_time"];

fn table(jobs: &[Value]) -> String {
    let cell = |job: &Value, column: &str| match &job[column] {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut widths: BTreeMap<&str, usize> = LIST_COLUMNS.iter().map(|c| (*c, c.len())).collect();
    for job in jobs {
        for column in LIST_COLUMNS {
            let width = widths.entry(column).or_default();
            *width = (*width).max(cell(job, column).chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> =
            LIST_COLUMNS.iter().zip(cells).map(|(c, cell)| format!("{cell:<width$}", width = widths[c])).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(LIST_COLUMNS.iter().map(|c| c.to_uppercase()).collect());
    for job in jobs {
        out.push_str(&line(LIST_COLUMNS.iter().map(|c| cell(job, c)).collect()));
    }
    out
}

/// A connection to a cluster's jobs API.
struct Jobs {
    base: String,
    agent: ureq::Agent,
}

impl Jobs {
    fn connect(connection: &Connection) -> Result<Self> {
        let mut cluster = connection.cluster.clone();
        if cluster.address.is_none() {
            cluster.address = ["RTD_API_SERVER_ADDRESS", "RTD_ADDRESS"]
                .iter()
                .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty() && v != "auto"));
        }
        let base = dashboard_url(&cluster)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(cluster.timeout.max(1))))
            .http_status_as_error(false)
            .build()
            .into();
        let jobs = Self { base, agent };
        // As Ray's CLI: a cluster that does not answer is an error before anything else.
        jobs.call("GET", "/api/version", None)?;
        Ok(jobs)
    }

    /// Sends one request; the answer's JSON, or an error with the cluster's words.
    fn send(&self, method: &str, path: &str, body: Option<(Vec<u8>, &str)>) -> Result<(Vec<u8>, Option<u64>)> {
        let url = format!("{}{path}", self.base);
        let token = rtd_common::auth::process_token().map(|t| t.bearer());
        let response = match (method, body) {
            ("POST" | "PUT", body) => {
                let (bytes, content_type) = body.unwrap_or_default();
                let mut call = if method == "POST" { self.agent.post(&url) } else { self.agent.put(&url) };
                if let Some(token) = &token {
                    call = call.header("authorization", token);
                }
                call.header("content-type", content_type).send(&bytes[..])
            }
            (method, _) => {
                let mut call = if method == "DELETE" { self.agent.delete(&url) } else { self.agent.get(&url) };
                if let Some(token) = &token {
                    call = call.header("authorization", token);
                }
                call.call()
            }
        };
        let mut response = response.with_context(|| format!("cannot reach the rtd jobs API at {}", self.base))?;
        let end = response.headers().get("x-rtd-end-offset").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let bytes = response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .with_context(|| format!("reading the answer of {url}"))?;
        let status = response.status();
        if !status.is_success() {
            bail!("{} (HTTP {})", String::from_utf8_lossy(&bytes).trim(), status.as_u16());
        }
        Ok((bytes, end))
    }

    fn call(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<Value> {
        let (bytes, _) = self.send(method, path, body.map(|b| (b, "application/json")))?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|_| anyhow!("{path} did not answer with JSON; is this an rtd dashboard?"))
    }

    fn info(&self, id: &str) -> Result<Value> {
        self.call("GET", &format!("/api/jobs/{}", segment(id)), None)
    }

    fn status(&self, id: &str) -> Result<String> {
        Ok(self.info(id)?["status"].as_str().unwrap_or_default().to_string())
    }

    /// Prints the job's log as it is written, until the job has ended.
    fn follow(&self, id: &str) -> Result<()> {
        use std::io::Write as _;
        let mut offset = 0u64;
        loop {
            // The status first: a job that had ended before this read has all its log in.
            let ended = is_terminal(&self.status(id)?);
            let (bytes, end) = self.send("GET", &format!("/api/jobs/{}/logs?offset={offset}", segment(id)), None)?;
            let logs: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let end = end.unwrap_or(offset);
            let more = end > offset;
            offset = end;
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(logs["logs"].as_str().unwrap_or_default().as_bytes());
            let _ = out.flush();
            if ended && !more {
                return Ok(());
            }
            if !more {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// Packs and uploads a local `working_dir` / `py_modules` entry (a `gcs://` URI
    /// stays as it is), as Ray's client does.
    fn upload_local_paths(&self, runtime_env: &mut Map<String, Value>) -> Result<()> {
        let excludes: Vec<String> = runtime_env
            .get("excludes")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|e| e.as_str().map(String::from)).collect())
            .unwrap_or_default();
        if let Some(Value::String(dir)) = runtime_env.get("working_dir").cloned() {
            if !dir.contains("://") {
                let uri = self.upload(&dir, &excludes, false)?;
                runtime_env.insert("working_dir".into(), uri.into());
            }
        }
        if let Some(Value::Array(modules)) = runtime_env.get("py_modules").cloned() {
            let mut uploaded = Vec::new();
            for module in modules {
                match module {
                    Value::String(path) if !path.contains("://") => {
                        uploaded.push(Value::from(self.upload(&path, &excludes, true)?))
                    }
                    other => uploaded.push(other),
                }
            }
            runtime_env.insert("py_modules".into(), Value::Array(uploaded));
        }
        Ok(())
    }

    fn upload(&self, path: &str, excludes: &[String], under_own_name: bool) -> Result<String> {
        let layout = if under_own_name { Layout::UnderOwnName } else { Layout::Contents };
        let package = rtd_runtime_env::pack_path(std::path::Path::new(path), excludes, layout, MAX_PACKAGE_SIZE)
            .with_context(|| format!("packing {path}"))?;
        let (protocol, name) = package.uri.split_once("://").unwrap_or(("gcs", &package.uri));
        let url = format!("/api/packages/{protocol}/{}", segment(name));
        if self.send("GET", &url, None).is_err() {
            self.send("PUT", &url, Some((package.bytes, "application/octet-stream")))?;
        }
        Ok(package.uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_joined_as_shlex_joins_them() {
        let args: Vec<String> =
            ["python", "-c", "print('hi there')", "a=b", ""].iter().map(|s| s.to_string()).collect();
        assert_eq!(shell_join(&args), r#"python -c 'print('"'"'hi there'"'"')' a=b ''"#);
    }

    #[test]
    fn the_list_is_a_table_of_the_main_columns() {
        let jobs = vec![json!({"submission_id": "s1", "job_id": null, "type": "SUBMISSION", "status": "RUNNING",
                               "entrypoint": "sleep 1", "start_time": 5, "end_time": null})];
        let text = table(&jobs);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("SUBMISSION_ID  JOB_ID  TYPE"), "{text}");
        assert!(lines[1].starts_with("s1                     SUBMISSION  RUNNING"), "{text}");
    }
}
