//! `rtd logs`: Ray's `ray logs`, a client of the head's log API (`/api/v0/logs`).
//!
//! - `rtd logs`: the head node's log files, by category (`--node-id` for another node);
//! - `rtd logs PATTERN`: the one file whose name matches (a name, or a shell pattern
//!   with `*` and `?`), or the list of those that match when there are several;
//! - `rtd logs actor --id ID`, `rtd logs task --id ID`, `rtd logs worker --pid PID`:
//!   the stdout (`--err`: stderr) of the worker process that ran it.
//!
//! `--tail N` shows the last N lines (-1: all), `--follow` then prints what is written
//! until interrupted.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::state_cli::{fetch, request, ClusterArgs};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LogsArgs {
    #[command(subcommand)]
    of: Option<LogsOf>,
    /// A log file's name or a shell pattern (`worker-*.out`): one match is printed, several are listed.
    #[arg(value_name = "FILENAME_OR_GLOB")]
    glob: Option<String>,
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    read: ReadArgs,
}

/// What wrote the log to show.
#[derive(Subcommand, Debug)]
enum LogsOf {
    /// The output of the worker process that runs an actor.
    Actor {
        /// The actor's id (hex).
        #[arg(long)]
        id: String,
        #[command(flatten)]
        read: ProcessReadArgs,
    },
    /// The output of the worker process that ran a task (its last attempt).
    Task {
        /// The task's id (hex).
        #[arg(long)]
        id: String,
        #[command(flatten)]
        read: ProcessReadArgs,
    },
    /// The output of a worker process, by its pid on a node.
    Worker {
        /// The worker's process id.
        #[arg(long)]
        pid: u32,
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        read: ProcessReadArgs,
    },
}

/// The node whose logs to show (default: the head node).
#[derive(Args, Debug)]
struct NodeArgs {
    /// The node's id (hex).
    #[arg(long, value_name = "ID", conflicts_with = "node_ip")]
    node_id: Option<String>,
    /// The node's address, when one alive node has it.
    #[arg(long, value_name = "IP")]
    node_ip: Option<String>,
}

/// How much of a log to show.
#[derive(Args, Debug)]
struct ReadArgs {
    /// Show the last N lines first (-1: the whole file).
    #[arg(long, value_name = "N", default_value_t = 1000, allow_negative_numbers = true)]
    tail: i64,
    /// Keep printing what is written to the log until interrupted.
    #[arg(short, long)]
    follow: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// How much of a process's log to show, and which of its two.
#[derive(Args, Debug)]
struct ProcessReadArgs {
    /// The process's stderr (`.err`) rather than its stdout (`.out`).
    #[arg(long)]
    err: bool,
    #[command(flatten)]
    read: ReadArgs,
}

impl ProcessReadArgs {
    fn suffix(&self) -> (&'static str, String) {
        ("suffix", if self.err { "err" } else { "out" }.into())
    }
}

/// How often `--follow` asks for what was written since.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

/// `rtd logs ...`.
pub fn logs(args: &LogsArgs) -> Result<()> {
    match &args.of {
        Some(LogsOf::Actor { id, read }) => print_log(&read.read, vec![("actor_id", id.clone()), read.suffix()]),
        Some(LogsOf::Task { id, read }) => print_log(&read.read, vec![("task_id", id.clone()), read.suffix()]),
        Some(LogsOf::Worker { pid, node, read }) => {
            let mut query = node.query(&read.read.cluster)?;
            query.extend([("pid", pid.to_string()), read.suffix()]);
            print_log(&read.read, query)
        }
        None => {
            let mut query = args.node.query(&args.read.cluster)?;
            query.push(("glob", args.glob.clone().unwrap_or_else(|| "*".into())));
            let categories = request(&args.read.cluster, "/api/v0/logs", &query)?;
            let files: Vec<&str> = categories.as_object().into_iter().flatten().flat_map(|(_, f)| names(f)).collect();
            match (&args.glob, files.as_slice()) {
                (Some(glob), []) => bail!("no log file of node {} matches {glob:?}", node_named(&query)),
                (Some(_), [file]) => {
                    query.retain(|(name, _)| *name != "glob");
                    query.push(("filename", file.to_string()));
                    print_log(&args.read, query)
                }
                _ => {
                    print_categories(node_named(&query), &categories);
                    Ok(())
                }
            }
        }
    }
}

fn names(files: &Value) -> impl Iterator<Item = &str> {
    files.as_array().into_iter().flatten().filter_map(Value::as_str)
}

/// How the query names its node, for messages.
fn node_named<'a>(query: &'a [(&str, String)]) -> &'a str {
    query.iter().find(|(name, _)| *name == "node_id" || *name == "node_ip").map_or("", |(_, v)| v.as_str())
}

impl NodeArgs {
    /// The node as the log API takes it: the one given, else the head node.
    fn query(&self, cluster: &ClusterArgs) -> Result<Vec<(&'static str, String)>> {
        Ok(match (&self.node_id, &self.node_ip) {
            (Some(id), _) => vec![("node_id", id.clone())],
            (None, Some(ip)) => vec![("node_ip", ip.clone())],
            (None, None) => vec![("node_id", head_node(cluster)?)],
        })
    }
}

/// The id of the cluster's alive head node.
fn head_node(cluster: &ClusterArgs) -> Result<String> {
    let query = [
        ("filter_keys", "is_head_node".to_string()),
        ("filter_predicates", "=".into()),
        ("filter_values", "true".into()),
        ("filter_keys", "state".into()),
        ("filter_predicates", "=".into()),
        ("filter_values", "ALIVE".into()),
    ];
    let nodes = request(cluster, "/api/v0/nodes", &query)?;
    match nodes["result"][0]["node_id"].as_str() {
        Some(id) => Ok(id.to_string()),
        None => bail!("the cluster has no alive head node to show the logs of; name one with --node-id"),
    }
}

/// Ray's listing of a node's logs: each category, then its files.
fn print_categories(node: &str, categories: &Value) {
    println!("======== Logs of node {node} ========");
    for (category, files) in categories.as_object().into_iter().flatten() {
        println!("{category}:");
        for file in names(files) {
            println!("  {file}");
        }
    }
}

/// Prints the log `query` names: its last lines, then, following, what is added.
fn print_log(read: &ReadArgs, mut query: Vec<(&'static str, String)>) -> Result<()> {
    query.push(("lines", read.tail.to_string()));
    let mut stdout = std::io::stdout().lock();
    loop {
        let answer = fetch(&read.cluster, "/api/v0/logs/file", &query)?;
        stdout.write_all(&answer.body).and_then(|()| stdout.flush()).context("writing the log to stdout")?;
        if !read.follow {
            return Ok(());
        }
        let Some(end) = answer.end_offset else { bail!("the log API did not say where the log ends") };
        query.retain(|(name, _)| *name != "offset");
        query.push(("offset", end.to_string()));
        std::thread::sleep(FOLLOW_INTERVAL);
    }
}
