//! The `rtd` command line: `rtd start`, `rtd stop`, `rtd status`. The same code runs in
//! the standalone binary and behind the Python package's `rtd` console script.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use rtd_common::proto::frame::Body;
use rtd_common::rpc::RpcClient;

use crate::node::{default_object_store_memory, node_resources, run_node, NodeOptions, NodeRole};
use crate::session::{NodeFile, Session, DEFAULT_TEMP_DIR};

const USAGE: &str = "usage: rtd <command> [options]

commands:
  start (--head [--port P] | --address HOST:P) [--node-ip-address IP]
        [--num-cpus N] [--num-gpus N] [--resources JSON]
        [--object-store-memory BYTES] [--temp-dir DIR] [--block]
                      start a head node (a new cluster) or a node joining one
  stop [--temp-dir DIR]    stop the node daemons started on this machine
  status [--temp-dir DIR]  show nodes and resource usage
  list nodes|actors|placement-groups [--temp-dir DIR]";

/// How to start a daemon in the background: the program and leading arguments that,
/// followed by `start ... --block`, run a node in the foreground.
pub struct Launcher {
    pub program: String,
    pub args: Vec<String>,
}

/// Runs the CLI; returns the process exit code.
pub fn cli_main(argv: &[String], launcher: &Launcher) -> i32 {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("RTD_LOG"))
        .with_writer(std::io::stderr)
        .try_init();
    match run(argv, launcher) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("rtd: error: {e:#}");
            1
        }
    }
}

fn run(argv: &[String], launcher: &Launcher) -> Result<()> {
    let Some(command) = argv.get(1) else {
        println!("{USAGE}");
        return Ok(());
    };
    let rest = &argv[2..];
    match command.as_str() {
        "start" => start(rest, launcher),
        "stop" => stop(rest),
        "status" => status(rest),
        "list" => list(rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}

#[derive(Default)]
struct StartArgs {
    head: bool,
    port: Option<u16>,
    address: Option<String>,
    node_ip_address: Option<String>,
    block: bool,
    watch_stdin: bool,
    num_cpus: Option<f64>,
    num_gpus: Option<f64>,
    resources: HashMap<String, f64>,
    object_store_memory: Option<u64>,
    temp_dir: Option<PathBuf>,
    session_dir: Option<PathBuf>,
    python: Option<String>,
}

fn parse_number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T> {
    value.parse().map_err(|_| anyhow!("{flag} expects a number, got {value:?}"))
}

fn parse_start(args: &[String]) -> Result<StartArgs> {
    let mut out = StartArgs::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let (flag, inline_value) = match flag.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (flag.clone(), None),
        };
        let mut value = || -> Result<String> {
            inline_value.clone().or_else(|| it.next().cloned()).ok_or_else(|| anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--head" => out.head = true,
            "--block" => out.block = true,
            "--watch-stdin" => out.watch_stdin = true,
            "--num-cpus" => out.num_cpus = Some(parse_number(&flag, &value()?)?),
            "--num-gpus" => out.num_gpus = Some(parse_number(&flag, &value()?)?),
            "--object-store-memory" => out.object_store_memory = Some(parse_number(&flag, &value()?)?),
            "--resources" => {
                let text = value()?;
                let parsed: HashMap<String, f64> = serde_json::from_str(&text)
                    .map_err(|e| anyhow!("--resources must be a JSON object of numbers, e.g. '{{\"bob\": 5}}': {e}"))?;
                out.resources = parsed;
            }
            "--temp-dir" => out.temp_dir = Some(PathBuf::from(value()?)),
            "--session-dir" => out.session_dir = Some(PathBuf::from(value()?)),
            "--python" => out.python = Some(value()?),
            "--port" => out.port = Some(parse_number(&flag, &value()?)?),
            "--address" => {
                let address = value()?;
                if address.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                    bail!("--address must be HOST:PORT of the head node, got {address:?}");
                }
                out.address = Some(address);
            }
            "--node-ip-address" => out.node_ip_address = Some(value()?),
            other => bail!("unknown option {other:?} for rtd start"),
        }
    }
    for reserved in ["CPU", "GPU"] {
        if out.resources.contains_key(reserved) {
            bail!("--resources must not set {reserved}; use --num-cpus / --num-gpus");
        }
    }
    Ok(out)
}

fn start(args: &[String], launcher: &Launcher) -> Result<()> {
    let parsed = parse_start(args)?;
    let role = match (parsed.head, &parsed.address) {
        (true, None) => NodeRole::Head { port: parsed.port },
        (false, Some(address)) => NodeRole::Worker { head_address: address.clone() },
        (true, Some(_)) => bail!("rtd start takes either --head or --address HOST:PORT, not both"),
        (false, None) => bail!("rtd start needs --head (a new cluster) or --address HOST:PORT (join one)"),
    };
    let temp_dir = parsed.temp_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_TEMP_DIR));
    let session_dir = parsed.session_dir.clone().unwrap_or_else(|| Session::new_path(&temp_dir));
    if parsed.block {
        let object_store_memory = parsed.object_store_memory.unwrap_or_else(default_object_store_memory);
        if object_store_memory < 1 << 20 {
            bail!("--object-store-memory must be at least 1 MiB, got {object_store_memory}");
        }
        let resources =
            node_resources(parsed.num_cpus, parsed.num_gpus, &parsed.resources, object_store_memory)?;
        return run_node(NodeOptions {
            session_dir,
            resources,
            object_store_memory,
            python: parsed
                .python
                .clone()
                .or_else(|| std::env::var("RTD_PYTHON").ok())
                .unwrap_or_else(|| "python3".into()),
            watch_stdin: parsed.watch_stdin,
            role,
            node_ip: parsed.node_ip_address.clone().unwrap_or_else(|| "127.0.0.1".into()),
        });
    }
    // Background: run ourselves with --block, detached, and wait until it serves. Its
    // output (and its workers') goes to a log file, not to our caller's terminal.
    let logs = session_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let log_path = logs.join("node.out");
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = std::process::Command::new(&launcher.program);
    cmd.args(&launcher.args)
        .arg("start")
        .args(args)
        .arg("--block")
        .arg("--session-dir")
        .arg(&session_dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().context("duplicating the log file")?)
        .stderr(log);
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
    let kind = if parsed.head { "head" } else { "worker" };
    println!("Started an rtd {kind} node (pid {}).", child.id());
    println!("  session: {}", session_dir.display());
    println!("  socket:  {}", socket.display());
    println!("  log:     {}", log_path.display());
    if let (true, Some(port)) = (parsed.head, parsed.port) {
        let ip = parsed.node_ip_address.as_deref().unwrap_or("127.0.0.1");
        println!("Add nodes with `rtd start --address {ip}:{port}`; connect with rtd.init(address=\"{ip}:{port}\").");
    }
    println!("Connect from this machine with rtd.init(address=\"auto\"); stop with `rtd stop`.");
    Ok(())
}

fn session_nodes(temp_dir: &Path) -> Vec<NodeFile> {
    let Ok(entries) = std::fs::read_dir(temp_dir) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("session_") && e.file_name() != "session_latest")
        .filter_map(|e| NodeFile::read(&e.path().join("node.json")).ok())
        .collect()
}

/// The only option of `stop` and `status`.
fn temp_dir_arg(command: &str, args: &[String]) -> Result<PathBuf> {
    match args {
        [] => Ok(PathBuf::from(DEFAULT_TEMP_DIR)),
        [flag, dir] if flag == "--temp-dir" => Ok(PathBuf::from(dir)),
        _ => bail!("usage: rtd {command} [--temp-dir DIR]"),
    }
}

fn stop(args: &[String]) -> Result<()> {
    let temp_dir = temp_dir_arg("stop", args)?;
    let nodes = session_nodes(&temp_dir);
    let mut stopped = 0;
    for node in &nodes {
        // SAFETY: kill(2) with a pid read from node.json.
        if node.pid == 0 || unsafe { libc::kill(node.pid as libc::pid_t, libc::SIGTERM) } != 0 {
            let _ = std::fs::remove_dir_all(&node.session_dir);
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while unsafe { libc::kill(node.pid as libc::pid_t, 0) } == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        stopped += 1;
    }
    println!("Stopped {stopped} rtd node daemon(s).");
    Ok(())
}

/// Asks this machine's node daemons `body`, once per cluster: nodes of one cluster
/// forward to the same GCS, so a cluster already answered (same node set) is skipped.
fn ask_clusters(temp_dir: &Path, body: impl Fn() -> Body) -> Result<Vec<(NodeFile, Body)>> {
    let nodes = session_nodes(temp_dir);
    if nodes.is_empty() {
        bail!("no rtd node is running on this machine (start one with `rtd start --head`)");
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut seen: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut answers = Vec::new();
    for node in nodes {
        let (ids, reply) = runtime.block_on(async {
            let client = RpcClient::connect(&node.raylet_socket).await?;
            let ids = match client.call(Body::GetNodes(Default::default())).await? {
                Body::GetNodesReply(r) => {
                    let mut ids: Vec<Vec<u8>> = r.nodes.iter().map(|n| n.node_id.to_vec()).collect();
                    ids.sort();
                    ids
                }
                _ => Vec::new(),
            };
            Ok::<_, rtd_common::rpc::RpcError>((ids, client.call(body()).await?))
        })?;
        if !seen.contains(&ids) {
            seen.push(ids);
            answers.push((node, reply));
        }
    }
    Ok(answers)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn status(args: &[String]) -> Result<()> {
    for (node, reply) in ask_clusters(&temp_dir_arg("status", args)?, || Body::GetNodes(Default::default()))? {
        let Body::GetNodesReply(r) = reply else { continue };
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

/// `rtd list nodes|actors|placement-groups [--temp-dir DIR]`.
fn list(args: &[String]) -> Result<()> {
    let (what, rest) = args.split_first().ok_or_else(|| anyhow!("usage: rtd list nodes|actors|placement-groups"))?;
    let temp_dir = temp_dir_arg("list", rest)?;
    let body = match what.as_str() {
        "nodes" => || Body::GetNodes(Default::default()),
        "actors" => || Body::ListActors(Default::default()),
        "placement-groups" => || Body::ListPlacementGroups(Default::default()),
        other => bail!("cannot list {other:?}: choose nodes, actors or placement-groups"),
    };
    for (_, reply) in ask_clusters(&temp_dir, body)? {
        match reply {
            Body::GetNodesReply(r) => {
                println!("{:<56}  {:<5}  {:<4}  ADDRESS", "NODE_ID", "STATE", "HEAD");
                for n in r.nodes {
                    let state = if n.alive { "ALIVE" } else { "DEAD" };
                    println!("{:<56}  {state:<5}  {:<4}  {}", hex(&n.node_id), if n.is_head { "yes" } else { "" }, n.address);
                }
            }
            Body::ListActorsReply(r) => {
                println!("{:<32}  {:<20}  {:<16}  {:<8}  NAME", "ACTOR_ID", "CLASS", "STATE", "RESTARTS");
                for a in r.actors {
                    let options = a.options.unwrap_or_default();
                    let state = rtd_common::proto::ActorState::try_from(a.state)
                        .map(|s| s.as_str_name())
                        .unwrap_or("UNKNOWN");
                    println!("{:<32}  {:<20}  {state:<16}  {:<8}  {}", hex(&a.actor_id), options.class_name, a.num_restarts, options.name);
                }
            }
            Body::ListPlacementGroupsReply(r) => {
                println!("{:<36}  {:<14}  {:<16}  {:<7}  NAME", "PLACEMENT_GROUP_ID", "STRATEGY", "STATE", "BUNDLES");
                for g in r.groups {
                    let state = rtd_common::proto::PlacementGroupState::try_from(g.state)
                        .map(|s| s.as_str_name().trim_start_matches("PG_"))
                        .unwrap_or("UNKNOWN");
                    println!("{:<36}  {:<14}  {state:<16}  {:<7}  {}", hex(&g.pg_id), g.strategy, g.bundles.len(), g.name);
                }
            }
            _ => bail!("unexpected reply from the node"),
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
    let mut lines = Vec::new();
    for (name, amount) in &total {
        if name.contains("_group_") {
            continue;
        }
        let used = amount - avail.get(name).copied().unwrap_or(0.0);
        // Wildcard group resources (`CPU_group_<pg>`) sum what all groups reserve.
        let prefix = format!("{name}_group_");
        let (mut reserved, mut reserved_free) = (0.0, 0.0);
        for (group_name, group_total) in &total {
            let Some(rest) = group_name.strip_prefix(&prefix) else { continue };
            if !rest.contains('_') {
                reserved += group_total;
                reserved_free += avail.get(group_name).copied().unwrap_or(0.0);
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

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_start_flags() {
        let a = parse_start(&args(&["--head", "--num-cpus", "4", "--resources", "{\"bob\": 5}", "--object-store-memory=100000000"]))
            .unwrap();
        assert!(a.head);
        assert_eq!(a.num_cpus, Some(4.0));
        assert_eq!(a.resources.get("bob"), Some(&5.0));
        assert_eq!(a.object_store_memory, Some(100_000_000));
    }

    #[test]
    fn malformed_resources_json_names_the_flag() {
        let err = parse_start(&args(&["--head", "--resources", "{bob: 5"])).err().unwrap();
        assert!(err.to_string().contains("--resources"));
        let err = parse_start(&args(&["--num-cpus", "many"])).err().unwrap();
        assert!(err.to_string().contains("--num-cpus"));
        let err = parse_start(&args(&["--bogus"])).err().unwrap();
        assert!(err.to_string().contains("--bogus"));
    }

    #[test]
    fn status_folds_group_resources_into_a_reservation_note() {
        let total = rtd_common::ResourceSet::from_floats([("CPU", 2.0), ("CPU_group_ab", 1.0), ("CPU_group_0_ab", 1.0)]).unwrap();
        let avail = rtd_common::ResourceSet::from_floats([("CPU", 1.0), ("CPU_group_ab", 0.0), ("CPU_group_0_ab", 0.0)]).unwrap();
        assert_eq!(usage_lines(&total, &avail), vec!["1.0/2.0 CPU (1.0 used of 1.0 reserved in placement groups)"]);
    }

    #[test]
    fn unknown_command_fails() {
        let launcher = Launcher { program: "true".into(), args: vec![] };
        assert_eq!(cli_main(&args(&["rtd", "frobnicate"]), &launcher), 1);
        assert_eq!(cli_main(&args(&["rtd", "start"]), &launcher), 1);
        assert_eq!(cli_main(&args(&["rtd", "start", "--head", "--address", "h:1"]), &launcher), 1);
        assert!(parse_start(&args(&["--address", "nohost"])).is_err());
    }
}
