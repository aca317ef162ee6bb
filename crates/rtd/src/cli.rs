//! The `rtd` command line: `rtd start`, `rtd stop`, `rtd status`, and the state commands
//! `rtd list`, `rtd get`, `rtd summary`, `rtd memory`, `rtd timeline` (in `state_cli`)
//! and `rtd logs` (in `logs_cli`), and `rtd get-auth-token`. The same
//! code runs in the standalone binary and behind the Python package's `rtd` console
//! script, so it returns an exit code instead of exiting.
//!
//! Ray programs come with Ray's shell lines, so `rtd start` takes `ray start`'s flags.
//! Those rtd honours do what they do in Ray (`--memory`, `--system-config`'s spilling
//! directory, the dashboard's host and port, Redis for the GCS's state); those about parts rtd
//! does not have are accepted with a one-line notice on stderr of what rtd does instead, never
//! dropped silently.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::builder::BoolishValueParser;
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};
use rtd_common::auth;
use rtd_common::bundle::BundleResource;
use rtd_common::ids::hex;
use rtd_common::proto::GetNodes;
use rtd_common::rpc::{Request, RpcClient};
use rtd_gcs::store::{RedisConfig, StorageConfig};

use crate::daemons;
use crate::node::{default_object_store_memory, node_resources, run_node, DashboardOptions, NodeOptions, NodeRole};
use crate::session::{remove_dead_sessions, NodeFile, Session, DEFAULT_TEMP_DIR};
use crate::system_config::SystemConfig;
use crate::{job_cli, logs_cli, state_cli};

/// How to start a daemon in the background: the program and leading arguments that,
/// followed by `start ... --block`, run a node in the foreground.
pub struct Launcher {
    pub program: String,
    pub args: Vec<String>,
}

#[derive(Parser, Debug)]
#[command(name = "rtd", version, about = "Start, stop and inspect rtd clusters (Ray's `ray` command line).")]
#[command(subcommand_required = true, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a head node (a new cluster) or a node joining one.
    Start(Box<StartArgs>),
    /// Stop the rtd node daemons this user runs on this machine.
    Stop(StopArgs),
    /// Show the nodes, their resource usage and pending demands.
    Status(TempDirArg),
    /// List the cluster's nodes, actors, placement groups, tasks, jobs, workers or objects (Ray's state CLI).
    List(state_cli::ListArgs),
    /// Show one node, actor, placement group, job or worker by id (a task: its attempts).
    Get(state_cli::GetArgs),
    /// Summarize the cluster's actors or tasks by state, or its objects by reference type.
    Summary(state_cli::SummaryArgs),
    /// Show a node's log files, or the output of an actor, a task or a worker.
    Logs(logs_cli::LogsArgs),
    /// Show the object references of every process, by node (Ray's `ray memory`).
    Memory(state_cli::MemoryArgs),
    /// Write the tasks that ran as a Chrome trace file.
    Timeline(state_cli::TimelineArgs),
    /// Submit and manage jobs (Ray's `ray job`): submit, status, logs, stop, list, delete.
    Job(job_cli::JobArgs),
    /// Print the cluster's auth token (RTD_AUTH_TOKEN, RTD_AUTH_TOKEN_PATH or ~/.rtd/auth_token).
    GetAuthToken(GetAuthTokenArgs),
}

#[derive(Args, Debug)]
struct GetAuthTokenArgs {
    /// Create a new random token (in RTD_AUTH_TOKEN_PATH or ~/.rtd/auth_token) when there is none.
    #[arg(long)]
    generate: bool,
}

#[derive(Args, Debug)]
// `rtd start` re-runs itself with `--block --session-dir DIR` appended, and scripts
// repeat flags: the last one wins, as in Ray.
#[command(args_override_self = true)]
struct StartArgs {
    /// Start a head node: a new cluster.
    #[arg(long, conflicts_with = "address")]
    head: bool,
    /// Port the head serves other nodes on (without it, the head serves this machine only).
    #[arg(long, conflicts_with = "address")]
    port: Option<u16>,
    /// Join the cluster whose head is at HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_head_address)]
    address: Option<String>,
    /// The address other nodes reach this one at.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    node_ip_address: String,
    /// CPUs this node offers (default: the machine's cores).
    #[arg(long, value_name = "N")]
    num_cpus: Option<f64>,
    /// GPUs this node offers.
    #[arg(long, value_name = "N")]
    num_gpus: Option<f64>,
    /// Custom resources, e.g. '{"bob": 5}'.
    #[arg(long, value_name = "JSON", value_parser = parse_resources)]
    resources: Option<HashMap<String, f64>>,
    /// The node's `memory` resource in bytes (default: the machine's memory less the object store).
    #[arg(long, value_name = "BYTES")]
    memory: Option<u64>,
    /// Size of the object store in bytes (default: 30% of memory).
    #[arg(long, value_name = "BYTES", value_parser = parse_store_size)]
    object_store_memory: Option<u64>,
    /// Ray's internal settings as JSON; rtd honours object_spilling_config (a filesystem directory_path).
    #[arg(long, value_name = "JSON", value_parser = SystemConfig::parse)]
    system_config: Option<SystemConfig>,
    /// The port this node serves Prometheus metrics on, at /metrics (default: a free
    /// port, written to the session's node.json).
    #[arg(long, value_name = "PORT")]
    metrics_export_port: Option<u16>,
    /// Where sessions are kept.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_TEMP_DIR)]
    temp_dir: PathBuf,
    /// This node's session directory (default: a new one under --temp-dir).
    #[arg(long, value_name = "DIR")]
    session_dir: Option<PathBuf>,
    /// The Python interpreter that runs workers (default: $RTD_PYTHON, else python3).
    #[arg(long, value_name = "PATH")]
    python: Option<String>,
    /// Run the node in the foreground until it is stopped.
    #[arg(long)]
    block: bool,
    /// Stop when stdin reaches EOF: the process that started this node is gone.
    #[arg(long, hide = true)]
    watch_stdin: bool,
    /// Whether the head serves the dashboard and state API (default: true).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    include_dashboard: Option<bool>,
    /// The address the dashboard listens on (default: 127.0.0.1; 0.0.0.0 for every one).
    #[arg(long, value_name = "HOST")]
    dashboard_host: Option<String>,
    /// The dashboard's port (default: 8265, or the next free one if it is taken).
    #[arg(long, value_name = "PORT")]
    dashboard_port: Option<u16>,
    /// Accepted for Ray; rtd collects no usage stats.
    #[arg(long)]
    disable_usage_stats: bool,
    /// Keep the GCS's state in the Redis at HOST:PORT (default: $RTD_REDIS_ADDRESS, else
    /// an embedded database under --temp-dir), so a restarted head resumes the cluster.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_redis_address)]
    redis_address: Option<String>,
    /// The Redis user name (default: $RTD_REDIS_USERNAME).
    #[arg(long, value_name = "USER")]
    redis_username: Option<String>,
    /// The Redis password (default: $RTD_REDIS_PASSWORD).
    #[arg(long, value_name = "PASSWORD")]
    redis_password: Option<String>,
}

#[derive(Args, Debug)]
struct StopArgs {
    /// Kill the daemons at once (SIGKILL) and remove the files they leave behind.
    #[arg(short, long)]
    force: bool,
    /// Seconds a daemon has to exit after SIGTERM before it is killed.
    #[arg(short, long, value_name = "SECONDS", default_value_t = 16)]
    grace_period: u64,
    /// Only stop daemons whose session is under DIR (default: every daemon of this user).
    #[arg(long, value_name = "DIR")]
    temp_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct TempDirArg {
    /// Where the node daemons keep their sessions.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_TEMP_DIR)]
    temp_dir: PathBuf,
}

fn parse_head_address(address: &str) -> Result<String, String> {
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(address.to_string()),
        _ => Err("expected HOST:PORT of the head node".into()),
    }
}

fn parse_redis_address(address: &str) -> Result<String, String> {
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(address.to_string()),
        _ => Err(format!("expected HOST:PORT of a Redis server, got {address:?}")),
    }
}

/// The namespace that keeps this cluster's keys apart in a shared Redis, and names
/// its embedded store: `chosen` (`$RTD_EXTERNAL_STORAGE_NAMESPACE`), else the head's
/// address (`IP_PORT`) when it serves other nodes, else `default`.
fn storage_namespace(chosen: Option<String>, node_ip: &str, port: Option<u16>) -> String {
    match chosen.filter(|n| !n.is_empty()) {
        Some(namespace) => namespace,
        None => match port {
            Some(port) => format!("{node_ip}_{port}"),
            None => "default".into(),
        },
    }
}

/// A namespace as a file name: anything but letters, digits, `.`, `-` and `_` becomes `_`.
fn file_name_of(namespace: &str) -> String {
    namespace.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' }).collect()
}

fn parse_store_size(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(bytes) if bytes >= 1 << 20 => Ok(bytes),
        Ok(_) => Err("the object store needs at least 1 MiB (1048576 bytes)".into()),
        Err(e) => Err(format!("expected a number of bytes ({e})")),
    }
}

fn parse_resources(text: &str) -> Result<HashMap<String, f64>, String> {
    let resources: HashMap<String, f64> = serde_json::from_str(text)
        .map_err(|e| format!("expected a JSON object of numbers, e.g. '{{\"bob\": 5}}' ({e})"))?;
    for reserved in ["CPU", "GPU"] {
        if resources.contains_key(reserved) {
            return Err(format!("{reserved} is set with --num-{}s", reserved.to_lowercase()));
        }
    }
    Ok(resources)
}

/// Runs the CLI; returns the process exit code: 0, 1 when a command fails, 2 for
/// arguments it cannot parse.
pub fn cli_main(argv: &[String], launcher: &Launcher) -> i32 {
    // Warnings show unless RTD_LOG says otherwise: a daemon's security warnings and
    // refused peers must reach its log.
    let filter = tracing_subscriber::EnvFilter::try_from_env("RTD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                _ => 2,
            };
        }
    };
    let result = match cli.command {
        // The daemon is spawned with the same arguments; parsing succeeded, so they
        // follow `start`, the first argument.
        Command::Start(args) => start(&args, argv.get(2..).unwrap_or_default(), launcher),
        Command::Stop(args) => stop(&args),
        Command::Status(args) => status(&args.temp_dir),
        Command::List(args) => state_cli::list(&args),
        Command::Get(args) => state_cli::get(&args),
        Command::Summary(args) => state_cli::summary(&args),
        Command::Logs(args) => logs_cli::logs(&args),
        Command::Memory(args) => state_cli::memory(&args),
        Command::Timeline(args) => state_cli::timeline(&args),
        Command::GetAuthToken(args) => get_auth_token(&args),
        Command::Job(args) => job_cli::job(&args),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("rtd: error: {e:#}");
            1
        }
    }
}

impl StartArgs {
    fn role(&self) -> Result<NodeRole> {
        match (&self.address, self.head) {
            (Some(address), _) => Ok(NodeRole::Worker { head_address: address.clone() }),
            (None, true) => Ok(NodeRole::Head { port: self.port }),
            (None, false) => bail!("rtd start needs --head (a new cluster) or --address HOST:PORT (join one)"),
        }
    }

    /// One line for each flag rtd accepts but does not act on as Ray would.
    fn notices(&self) -> Vec<String> {
        let mut notices = Vec::new();
        let dashboard_flags: Vec<&str> = [
            (self.include_dashboard == Some(true), "--include-dashboard"),
            (self.dashboard_host.is_some(), "--dashboard-host"),
            (self.dashboard_port.is_some(), "--dashboard-port"),
        ]
        .into_iter()
        .filter_map(|(given, flag)| given.then_some(flag))
        .collect();
        if !dashboard_flags.is_empty() {
            if self.address.is_some() {
                notices
                    .push(format!("only the head node serves the dashboard; {} ignored", dashboard_flags.join(", ")));
            } else if self.include_dashboard == Some(false) {
                notices.push(format!(
                    "the dashboard is off (--include-dashboard=false); {} ignored",
                    dashboard_flags.join(", ")
                ));
            }
        }
        let redis_flags: Vec<&str> = [
            (self.redis_address.is_some(), "--redis-address"),
            (self.redis_username.is_some(), "--redis-username"),
            (self.redis_password.is_some(), "--redis-password"),
        ]
        .into_iter()
        .filter_map(|(given, flag)| given.then_some(flag))
        .collect();
        if !redis_flags.is_empty() {
            if self.address.is_some() {
                notices.push(format!("only the head node keeps the GCS's state; {} ignored", redis_flags.join(", ")));
            } else if self.redis_address().is_none() {
                notices.push(format!(
                    "without --redis-address (or RTD_REDIS_ADDRESS) the GCS keeps its state in an embedded store; {} ignored",
                    redis_flags.join(", ")
                ));
            }
        }
        if let Some(config) = &self.system_config {
            notices.extend(config.notices.iter().cloned());
        }
        notices
    }

    /// Where the head serves the dashboard; None on other nodes or when it is off.
    fn dashboard(&self) -> Option<DashboardOptions> {
        if self.address.is_some() || self.include_dashboard == Some(false) {
            return None;
        }
        Some(DashboardOptions {
            host: self.dashboard_host.clone().unwrap_or_else(|| "127.0.0.1".into()),
            port: match self.dashboard_port {
                Some(port) => rtd_dashboard::Port::Explicit(port),
                None => rtd_dashboard::Port::Default(rtd_dashboard::DEFAULT_PORT),
            },
        })
    }

    /// `--redis-address`, else `$RTD_REDIS_ADDRESS`.
    fn redis_address(&self) -> Option<String> {
        self.redis_address.clone().or_else(|| std::env::var("RTD_REDIS_ADDRESS").ok().filter(|a| !a.is_empty()))
    }

    /// Where the head's GCS keeps its tables: Redis if given; in memory for a head that
    /// lives and dies with the process that started it (`rtd.init()`: `--watch-stdin`),
    /// as there is never a cluster to resume; else the embedded store under
    /// `<temp-dir>/gcs/`, at a path the same command finds again after a crash.
    fn gcs_storage(&self) -> Result<StorageConfig> {
        if self.address.is_some() {
            return Ok(StorageConfig::Memory);
        }
        let chosen = std::env::var("RTD_EXTERNAL_STORAGE_NAMESPACE").ok();
        let namespace = storage_namespace(chosen, &self.node_ip_address, self.port);
        if let Some(address) = self.redis_address() {
            let address = parse_redis_address(&address).map_err(|e| anyhow::anyhow!("RTD_REDIS_ADDRESS: {e}"))?;
            let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            return Ok(StorageConfig::Redis(RedisConfig {
                address,
                username: self.redis_username.clone().or_else(|| env("RTD_REDIS_USERNAME")),
                password: self.redis_password.clone().or_else(|| env("RTD_REDIS_PASSWORD")),
                namespace,
            }));
        }
        if self.watch_stdin {
            return Ok(StorageConfig::Memory);
        }
        let temp_dir =
            std::path::absolute(&self.temp_dir).with_context(|| format!("resolving {}", self.temp_dir.display()))?;
        Ok(StorageConfig::Embedded(temp_dir.join("gcs").join(format!("{}.sqlite", file_name_of(&namespace)))))
    }

    fn node_options(&self, role: NodeRole, session_dir: PathBuf) -> Result<NodeOptions> {
        let object_store_memory = self.object_store_memory.unwrap_or_else(default_object_store_memory);
        let custom = self.resources.clone().unwrap_or_default();
        Ok(NodeOptions {
            session_dir,
            resources: node_resources(self.num_cpus, self.num_gpus, self.memory, &custom, object_store_memory)?,
            object_store_memory,
            python: self
                .python
                .clone()
                .or_else(|| std::env::var("RTD_PYTHON").ok())
                .unwrap_or_else(|| "python3".into()),
            watch_stdin: self.watch_stdin,
            role,
            node_ip: self.node_ip_address.clone(),
            spill_root: self.system_config.as_ref().and_then(|c| c.spill_directory.clone()),
            dashboard: self.dashboard(),
            metrics_export_port: self.metrics_export_port,
            gcs_storage: self.gcs_storage()?,
        })
    }
}

/// `rtd get-auth-token [--generate]`: prints the token this machine's rtd processes
/// would present, creating one with `--generate` when there is none.
fn get_auth_token(args: &GetAuthTokenArgs) -> Result<()> {
    let token = match auth::find_token()? {
        Some(token) => token,
        None if args.generate => auth::generate_token_file(&auth::token_path())?,
        None => bail!(
            "no auth token: {} does not exist and {} is not set; create one with `rtd get-auth-token --generate`",
            auth::token_path().display(),
            auth::TOKEN_ENV
        ),
    };
    println!("{}", token.secret());
    Ok(())
}

/// `rtd start`: with `--block` runs the node here; without, spawns itself with
/// `--block` (`raw_args` plus a session dir) and returns once the node serves.
fn start(args: &StartArgs, raw_args: &[String], launcher: &Launcher) -> Result<()> {
    let role = args.role()?;
    let token = auth::process().clone()?;
    rtd_common::rpc::Credentials::of_process()?;
    for notice in args.notices() {
        eprintln!("rtd: note: {notice}");
    }
    let session_dir = args.session_dir.clone().unwrap_or_else(|| Session::new_path(&args.temp_dir));
    // Absolute: clients take a relative socket path for a host name, and `rtd stop`
    // reads the daemon's command line without its working directory at hand.
    let session_dir =
        std::path::absolute(&session_dir).with_context(|| format!("resolving {}", session_dir.display()))?;
    if args.block {
        return run_node(args.node_options(role, session_dir)?);
    }
    // Checked here, before spawning, so a mistake is reported to the caller.
    args.node_options(role, session_dir.clone())?;
    // Background: the daemon's output (and its workers') goes to a log file, not to
    // our caller's terminal.
    let logs = session_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let log_path = logs.join("node.out");
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = std::process::Command::new(&launcher.program);
    cmd.args(&launcher.args)
        .arg("start")
        .args(raw_args)
        .arg("--block")
        .arg("--session-dir")
        .arg(&session_dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().context("duplicating the log file")?)
        .stderr(log);
    // The daemon and its workers use the token read here, whatever its file holds later.
    if let Some(token) = &token {
        cmd.env(auth::MODE_ENV, "token").env(auth::TOKEN_ENV, token.secret());
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {}", launcher.program))?;
    let socket = session_dir.join("sockets/raylet.sock");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !session_dir.join("node.json").exists() {
        if let Some(status) = child.try_wait()? {
            let output = std::fs::read_to_string(&log_path).unwrap_or_default();
            let _ = std::fs::remove_dir_all(&session_dir);
            bail!("the node daemon exited during start-up ({status}):\n{}", output.trim_end());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the node daemon did not come up within 15 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let kind = if args.head { "head" } else { "worker" };
    println!("Started an rtd {kind} node (pid {}).", child.id());
    let dashboard = NodeFile::read(&session_dir.join("node.json")).map(|n| n.dashboard_url).unwrap_or_default();
    if !dashboard.is_empty() {
        println!("  dashboard: http://{dashboard}");
    }
    println!("  session: {}", session_dir.display());
    println!("  socket:  {}", socket.display());
    println!("  log:     {}", log_path.display());
    // The daemon's security warnings belong on the terminal that started it too.
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    for (_, warning) in log.lines().filter_map(|l| l.split_once(auth::SECURITY_WARNING)) {
        eprintln!("rtd: {} {}", auth::SECURITY_WARNING, warning.trim());
    }
    if let (true, Some(port)) = (args.head, args.port) {
        let ip = &args.node_ip_address;
        println!("Add nodes with `rtd start --address {ip}:{port}`; connect with rtd.init(address=\"{ip}:{port}\").");
    }
    println!("Connect from this machine with rtd.init(address=\"auto\"); stop with `rtd stop`.");
    Ok(())
}

/// `rtd stop`: every node daemon of this user on this machine, as `ray stop`, or
/// only those under `--temp-dir`.
fn stop(args: &StopArgs) -> Result<()> {
    let scope = match &args.temp_dir {
        Some(dir) => Some(std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?),
        None => None,
    };
    // SAFETY: geteuid(2) cannot fail.
    let uid = unsafe { libc::geteuid() };
    let found: Vec<daemons::Daemon> = daemons::find_daemons(&daemons::scan_proc(), uid, std::process::id())
        .into_iter()
        .filter(|d| scope.as_ref().is_none_or(|dir| d.is_under(dir)))
        .collect();
    let grace = Duration::from_secs(args.grace_period);
    let report = daemons::stop(found, grace, args.force);
    remove_dead_sessions(scope.as_deref().unwrap_or(Path::new(DEFAULT_TEMP_DIR)));
    if report.killed_late > 0 {
        eprintln!(
            "rtd: note: {} daemon(s) did not exit within {} s of SIGTERM and were killed",
            report.killed_late, args.grace_period
        );
    }
    println!("Stopped {} rtd node daemon(s).", report.stopped);
    if !report.still_running.is_empty() {
        bail!(
            "{} daemon(s) are still running even after SIGKILL: pids {:?}",
            report.still_running.len(),
            report.still_running
        );
    }
    Ok(())
}

/// Asks this machine's node daemons `body`, once per cluster: nodes of one cluster
/// forward to the same GCS, so a cluster already answered (same node set) is skipped.
fn ask_clusters<R: Request>(temp_dir: &Path, request: impl Fn() -> R) -> Result<Vec<(NodeFile, R::Reply)>> {
    let nodes = NodeFile::find_all(temp_dir);
    if nodes.is_empty() {
        bail!("no rtd node is running on this machine (start one with `rtd start --head`)");
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut seen: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut answers = Vec::new();
    for node in nodes {
        let (ids, reply) = runtime.block_on(async {
            let client = RpcClient::connect(&node.raylet_socket).await?;
            let mut ids: Vec<Vec<u8>> =
                client.request(GetNodes {}).await?.nodes.iter().map(|n| n.node_id.to_vec()).collect();
            ids.sort();
            Ok::<_, rtd_common::rpc::RpcError>((ids, client.request(request()).await?))
        })?;
        if !seen.contains(&ids) {
            seen.push(ids);
            answers.push((node, reply));
        }
    }
    Ok(answers)
}

fn status(temp_dir: &Path) -> Result<()> {
    for (node, r) in ask_clusters(temp_dir, || GetNodes {})? {
        println!("======== rtd status: {} ========", node.session_dir);
        let mut demands: std::collections::BTreeMap<String, usize> = Default::default();
        for n in r.nodes {
            for d in &n.pending_demands {
                *demands.entry(rtd_common::ResourceSet::from_fixed_map(&d.amounts).to_string()).or_default() += 1;
            }
            let total = rtd_common::ResourceSet::from_fixed_map(&n.total.map(|t| t.amounts).unwrap_or_default());
            let avail = rtd_common::ResourceSet::from_fixed_map(&n.available.map(|t| t.amounts).unwrap_or_default());
            let role = if n.is_head { ", head" } else { "" };
            println!("Node {} ({}{role})", hex(&n.node_id), if n.alive { "alive" } else { "dead" });
            println!("Resources");
            for line in usage_lines(&total, &avail) {
                println!("  {line}");
            }
        }
        println!("Demands");
        if demands.is_empty() {
            println!("  (no resource demands)");
        }
        for (shape, count) in demands {
            println!("  {shape}: {count}+ pending tasks/actors");
        }
    }
    Ok(())
}

/// `rtd status` lines, as Ray's: `used/total NAME`, with what placement groups reserve
/// (`1.0/2.0 CPU (1.0 used of 1.0 reserved in placement groups)`). A group's own
/// resources (`CPU_group_...`) are folded into that note rather than listed.
fn usage_lines(total: &rtd_common::ResourceSet, avail: &rtd_common::ResourceSet) -> Vec<String> {
    let total = total.to_floats();
    let avail = avail.to_floats();
    let in_groups: Vec<(BundleResource, &String, f64)> =
        total.iter().filter_map(|(name, amount)| BundleResource::parse(name).map(|b| (b, name, *amount))).collect();
    let mut lines = Vec::new();
    for (name, amount) in &total {
        if in_groups.iter().any(|(_, group_name, _)| *group_name == name) {
            continue;
        }
        let used = amount - avail.get(name).copied().unwrap_or(0.0);
        // Group-wide resources (`CPU_group_<pg>`) sum what all groups reserve.
        let (mut reserved, mut reserved_free) = (0.0, 0.0);
        for (bundle, group_name, group_total) in &in_groups {
            if bundle.resource == *name && bundle.index.is_none() {
                reserved += group_total;
                reserved_free += avail.get(*group_name).copied().unwrap_or(0.0);
            }
        }
        let mut line = if name == "memory" || name == "object_store_memory" {
            let gib = |b: f64| b / (1u64 << 30) as f64;
            format!("{:.2}GiB/{:.2}GiB {name}", gib(used), gib(*amount))
        } else {
            format!("{used:.1}/{amount:.1} {name}")
        };
        if reserved > 0.0 {
            line.push_str(&format!(
                " ({:.1} used of {reserved:.1} reserved in placement groups)",
                reserved - reserved_free
            ));
        }
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(["rtd"].iter().chain(args))
    }

    fn parse_start(args: &[&str]) -> Result<StartArgs, clap::Error> {
        match parse(&[&["start"], args].concat())?.command {
            Command::Start(start) => Ok(*start),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn start_error(args: &[&str]) -> String {
        parse_start(args).err().unwrap_or_else(|| panic!("{args:?} parsed")).to_string()
    }

    #[test]
    fn parses_start_flags_in_both_value_forms() {
        let a = parse_start(&[
            "--head",
            "--num-cpus",
            "4",
            "--resources",
            "{\"bob\": 5}",
            "--object-store-memory=100000000",
        ])
        .unwrap();
        assert!(a.head);
        assert_eq!(a.num_cpus, Some(4.0));
        assert_eq!(a.resources.unwrap().get("bob"), Some(&5.0));
        assert_eq!(a.object_store_memory, Some(100_000_000));
        assert_eq!(a.temp_dir, PathBuf::from(DEFAULT_TEMP_DIR));
        let a = parse_start(&["--address=10.0.0.1:6379", "--num-gpus=1", "--temp-dir=/tmp/x"]).unwrap();
        assert!(matches!(a.role().unwrap(), NodeRole::Worker { head_address } if head_address == "10.0.0.1:6379"));
        assert_eq!((a.num_gpus, a.temp_dir), (Some(1.0), PathBuf::from("/tmp/x")));
    }

    #[test]
    fn parses_rays_start_flags() {
        let a = parse_start(&[
            "--head",
            "--memory=1000000000",
            "--disable-usage-stats",
            "--dashboard-host",
            "0.0.0.0",
            "--dashboard-port=8265",
            "--redis-password",
            "5241590000000000",
            "--system-config",
            r#"{"object_spilling_config": "{\"type\": \"filesystem\", \"params\": {\"directory_path\": \"/tmp/spill\"}}"}"#,
            "--block",
        ])
        .unwrap();
        assert_eq!(a.memory, Some(1_000_000_000));
        assert!(a.disable_usage_stats && a.block);
        assert_eq!(a.dashboard_host.as_deref(), Some("0.0.0.0"));
        assert_eq!(a.dashboard_port, Some(8265));
        assert_eq!(a.redis_password.as_deref(), Some("5241590000000000"));
        let options = a.node_options(a.role().unwrap(), PathBuf::from("/tmp/s")).unwrap();
        assert_eq!(options.spill_root, Some(PathBuf::from("/tmp/spill")));
        assert_eq!(options.resources.to_floats().get("memory"), Some(&1e9));
    }

    #[test]
    fn include_dashboard_takes_a_bool_in_every_ray_form() {
        for (args, expected) in [
            (&["--include-dashboard"][..], Some(true)),
            (&["--include-dashboard", "true"], Some(true)),
            (&["--include-dashboard=True"], Some(true)),
            (&["--include-dashboard", "false"], Some(false)),
            (&["--include-dashboard=False"], Some(false)),
            (&[], None),
        ] {
            let a = parse_start(&[&["--head"], args].concat()).unwrap();
            assert_eq!(a.include_dashboard, expected, "{args:?}");
        }
        // A bare flag does not swallow the next one.
        assert!(parse_start(&["--include-dashboard", "--head"]).unwrap().head);
        assert!(start_error(&["--head", "--include-dashboard=maybe"]).contains("--include-dashboard"));
    }

    #[test]
    fn notices_name_what_rtd_ignores_and_nothing_else() {
        let notices = |args: &[&str]| parse_start(&[&["--head"], args].concat()).unwrap().notices();
        assert!(notices(&["--include-dashboard=false", "--disable-usage-stats", "--memory", "1"]).is_empty());
        assert!(notices(&["--include-dashboard", "true", "--dashboard-port", "8265"]).is_empty());
        let off = notices(&["--include-dashboard=false", "--dashboard-port", "8265"]);
        assert_eq!(off, vec!["the dashboard is off (--include-dashboard=false); --dashboard-port ignored"]);
        let worker = parse_start(&["--address", "h:1", "--dashboard-host", "0.0.0.0"]).unwrap().notices();
        assert_eq!(worker, vec!["only the head node serves the dashboard; --dashboard-host ignored"]);
        if std::env::var_os("RTD_REDIS_ADDRESS").is_none() {
            assert!(notices(&["--redis-password=x"])[0].contains("--redis-password ignored"));
        }
        assert!(notices(&["--redis-address", "h:1", "--redis-password=x"]).is_empty());
        let worker = parse_start(&["--address", "h:1", "--redis-address", "h:2"]).unwrap().notices();
        assert_eq!(worker, vec!["only the head node keeps the GCS's state; --redis-address ignored"]);
        assert!(notices(&["--system-config", r#"{"max_io_workers": 2}"#])[0].contains("max_io_workers"));
    }

    #[test]
    fn the_store_namespace_is_chosen_or_the_heads_address_or_default() {
        assert_eq!(storage_namespace(Some("prod".into()), "10.0.0.1", Some(6380)), "prod");
        assert_eq!(storage_namespace(Some(String::new()), "10.0.0.1", Some(6380)), "10.0.0.1_6380");
        assert_eq!(storage_namespace(None, "10.0.0.1", None), "default");
        assert_eq!(file_name_of("a/b:c.d-e_f"), "a_b_c.d-e_f");
    }

    #[test]
    fn the_head_keeps_its_state_in_redis_if_given_else_in_memory_for_init_else_embedded() {
        let storage = |args: &[&str]| parse_start(args).unwrap().gcs_storage().unwrap();
        let redis = storage(&["--head", "--redis-address", "h:1", "--redis-username", "u", "--redis-password", "p"]);
        let StorageConfig::Redis(config) = redis else { panic!("{redis:?}") };
        assert_eq!(
            (config.address.as_str(), config.username.as_deref(), config.password.as_deref()),
            ("h:1", Some("u"), Some("p"))
        );
        assert_eq!(storage(&["--address", "h:1"]), StorageConfig::Memory);
        if std::env::var_os("RTD_REDIS_ADDRESS").is_none()
            && std::env::var_os("RTD_EXTERNAL_STORAGE_NAMESPACE").is_none()
        {
            assert_eq!(storage(&["--head", "--watch-stdin"]), StorageConfig::Memory);
            let embedded = storage(&["--head", "--port", "6380", "--temp-dir", "/tmp/x"]);
            assert_eq!(embedded, StorageConfig::Embedded("/tmp/x/gcs/127.0.0.1_6380.sqlite".into()));
        }
        assert!(start_error(&["--head", "--redis-address", "nohost"]).contains("--redis-address"));
    }

    #[test]
    fn the_head_serves_the_dashboard_unless_told_not_to() {
        let dashboard = |args: &[&str]| parse_start(args).unwrap().dashboard();
        let default = DashboardOptions {
            host: "127.0.0.1".into(),
            port: rtd_dashboard::Port::Default(rtd_dashboard::DEFAULT_PORT),
        };
        assert_eq!(dashboard(&["--head"]), Some(default));
        let chosen = dashboard(&["--head", "--dashboard-host=0.0.0.0", "--dashboard-port", "9000"]);
        let expected = DashboardOptions { host: "0.0.0.0".into(), port: rtd_dashboard::Port::Explicit(9000) };
        assert_eq!(chosen, Some(expected));
        assert_eq!(dashboard(&["--head", "--include-dashboard=false"]), None);
        assert_eq!(dashboard(&["--address", "h:1"]), None);
    }

    #[test]
    fn errors_name_the_flag() {
        assert!(start_error(&["--head", "--resources", "{bob: 5"]).contains("--resources"));
        assert!(start_error(&["--head", "--resources", "{\"CPU\": 4}"]).contains("--num-cpus"));
        assert!(start_error(&["--head", "--num-cpus", "many"]).contains("--num-cpus"));
        assert!(start_error(&["--head", "--bogus"]).contains("--bogus"));
        assert!(start_error(&["--head", "--object-store-memory", "1000"]).contains("at least 1 MiB"));
        assert!(start_error(&["--head", "--system-config", "{"]).contains("--system-config"));
        assert!(start_error(&["--address", "nohost"]).contains("--address"));
        assert!(start_error(&["--head", "--num-cpus"]).contains("--num-cpus"));
        assert!(start_error(&["--head", "--address", "h:1"]).contains("--address"));
        assert!(start_error(&["--address", "h:1", "--port", "6379"]).contains("--port"));
    }

    #[test]
    fn a_repeated_flag_takes_the_last_value() {
        let a = parse_start(&["--head", "--session-dir", "/a", "--block", "--session-dir", "/b"]).unwrap();
        assert_eq!(a.session_dir, Some(PathBuf::from("/b")));
    }

    #[test]
    fn stop_status_and_list_parse() {
        let Command::Stop(stop) = parse(&["stop", "-f", "--temp-dir=/tmp/x"]).unwrap().command else { panic!() };
        assert!(stop.force);
        assert_eq!((stop.grace_period, stop.temp_dir), (16, Some(PathBuf::from("/tmp/x"))));
        assert!(matches!(parse(&["list", "placement-groups", "--detail"]).unwrap().command, Command::List(_)));
        assert!(matches!(parse(&["get", "actor", "ab12"]).unwrap().command, Command::Get(_)));
        assert!(matches!(parse(&["summary", "actors"]).unwrap().command, Command::Summary(_)));
        assert!(matches!(parse(&["summary", "objects"]).unwrap().command, Command::Summary(_)));
        assert!(matches!(parse(&["get", "task", "ab12"]).unwrap().command, Command::Get(_)));
        assert!(matches!(parse(&["logs"]).unwrap().command, Command::Logs(_)));
        assert!(matches!(parse(&["logs", "worker-*.out", "--tail", "-1"]).unwrap().command, Command::Logs(_)));
        assert!(matches!(parse(&["logs", "actor", "--id", "ab", "-f", "--err"]).unwrap().command, Command::Logs(_)));
        assert!(matches!(
            parse(&["logs", "worker", "--pid", "7", "--node-id", "ab"]).unwrap().command,
            Command::Logs(_)
        ));
        assert!(parse(&["logs", "worker", "--node-id", "ab"]).is_err());
        assert!(matches!(parse(&["memory", "--stats-only"]).unwrap().command, Command::Memory(_)));
        assert!(matches!(parse(&["timeline", "--output", "t.json"]).unwrap().command, Command::Timeline(_)));
        assert!(parse(&["list", "tables"]).is_err());
        assert!(parse(&["list", "nodes", "--filter", "state~x"]).unwrap_err().to_string().contains("state~x"));
        assert!(matches!(parse(&["status", "--temp-dir", "/t"]).unwrap().command, Command::Status(_)));
    }

    #[test]
    fn exit_codes_help_and_version_zero_usage_errors_two_failures_one() {
        let launcher = Launcher { program: "true".into(), args: vec![] };
        let code = |args: &[&str]| {
            let argv: Vec<String> = ["rtd"].iter().chain(args).map(|s| s.to_string()).collect();
            cli_main(&argv, &launcher)
        };
        assert_eq!(code(&["--version"]), 0);
        assert_eq!(code(&["--help"]), 0);
        assert_eq!(code(&["start", "--help"]), 0);
        assert_eq!(code(&["list", "--help"]), 0);
        assert_eq!(code(&["frobnicate"]), 2);
        assert_eq!(code(&["start", "--bogus"]), 2);
        // Parses, but is neither a head nor joins one.
        assert_eq!(code(&["start"]), 1);
    }

    #[test]
    fn status_folds_group_resources_into_a_reservation_note() {
        let pg = rtd_common::PlacementGroupId([0xab; 18]);
        let (any, first) = (format!("CPU_group_{pg}"), format!("CPU_group_0_{pg}"));
        let total = rtd_common::ResourceSet::from_floats([("CPU", 2.0), (&any, 1.0), (&first, 1.0)]).unwrap();
        let avail = rtd_common::ResourceSet::from_floats([("CPU", 1.0), (&any, 0.0), (&first, 0.0)]).unwrap();
        assert_eq!(usage_lines(&total, &avail), vec!["1.0/2.0 CPU (1.0 used of 1.0 reserved in placement groups)"]);
    }
}
