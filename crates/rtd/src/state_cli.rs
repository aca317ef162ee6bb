//! `rtd list`, `rtd get`, `rtd summary`, `rtd logs`, `rtd memory` and `rtd timeline`:
//! Ray's state CLI, a client of the head's state API over HTTP (`rtd_dashboard`), with
//! Ray's output formats.
//!
//! A command finds the cluster of this machine by itself — the head's `node.json` names
//! its dashboard address — or talks to the dashboard at `--address HOST:PORT`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, ValueEnum};
use rtd_common::cluster_kv;
use serde_json::Value;

use crate::session::{NodeFile, DEFAULT_TEMP_DIR};

/// What the state API lists. Adding one is a variant here.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum StateResource {
    #[value(alias = "node")]
    Nodes,
    #[value(alias = "actor")]
    Actors,
    #[value(alias = "placement-group")]
    PlacementGroups,
    #[value(alias = "task")]
    Tasks,
    #[value(alias = "job")]
    Jobs,
    #[value(alias = "worker")]
    Workers,
    #[value(alias = "object")]
    Objects,
}

impl StateResource {
    /// Its name in the API (`/api/v0/<name>`) and in Ray's output.
    fn api_name(self) -> &'static str {
        match self {
            Self::Nodes => "nodes",
            Self::Actors => "actors",
            Self::PlacementGroups => "placement_groups",
            Self::Tasks => "tasks",
            Self::Jobs => "jobs",
            Self::Workers => "workers",
            Self::Objects => "objects",
        }
    }

    /// The column `rtd get` looks rows up by. A task has a row per attempt and an
    /// object one per process referencing it; anything else one row.
    fn id_column(self) -> &'static str {
        match self {
            Self::Nodes => "node_id",
            Self::Actors => "actor_id",
            Self::PlacementGroups => "placement_group_id",
            Self::Tasks => "task_id",
            // By the driver's job id (`rtd job status` takes a submission id too).
            Self::Jobs => "job_id",
            Self::Workers => "worker_id",
            Self::Objects => "object_id",
        }
    }
}

/// Resources with a summary.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum SummaryResource {
    #[value(alias = "actor")]
    Actors,
    #[value(alias = "task")]
    Tasks,
    #[value(alias = "object")]
    Objects,
}

impl SummaryResource {
    fn api_name(self) -> &'static str {
        match self {
            Self::Actors => "actors",
            Self::Tasks => "tasks",
            Self::Objects => "objects",
        }
    }

    /// The title of Ray's summary.
    fn title(self) -> &'static str {
        match self {
            Self::Actors => "Actors Summary",
            Self::Tasks => "Tasks Summary",
            Self::Objects => "Object Summary",
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum OutputFormat {
    /// A header with the counts, then a table.
    Default,
    Json,
    Yaml,
    /// The table alone.
    Table,
}

/// Which cluster to ask.
#[derive(Args, Clone, Debug)]
pub struct ClusterArgs {
    /// The cluster to ask: its head's address, or its dashboard's (default: the cluster
    /// running on this machine).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) address: Option<String>,
    /// Where this machine's node daemons keep their sessions.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_TEMP_DIR)]
    temp_dir: PathBuf,
    /// Seconds to wait for the answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub(crate) timeout: u64,
}

/// `key=value` or `key!=value`, as `--filter` takes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    key: String,
    predicate: &'static str,
    value: String,
}

fn parse_filter(text: &str) -> Result<Filter, String> {
    let (key, predicate, value) = match (text.split_once("!="), text.split_once('=')) {
        (Some((key, value)), _) => (key, "!=", value),
        (None, Some((key, value))) => (key, "=", value),
        (None, None) => return Err(format!("{text:?} is not KEY=VALUE or KEY!=VALUE")),
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("{text:?} names no column: expected KEY=VALUE or KEY!=VALUE"));
    }
    Ok(Filter { key: key.to_string(), predicate, value: value.trim().to_string() })
}

#[derive(Args, Debug)]
pub struct ListArgs {
    resource: StateResource,
    /// Only rows where KEY=VALUE or KEY!=VALUE (repeat: all must hold).
    #[arg(long = "filter", value_name = "KEY=VALUE", value_parser = parse_filter)]
    filters: Vec<Filter>,
    /// At most this many rows.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Every column, not only the main ones.
    #[arg(long)]
    detail: bool,
    #[arg(long, value_enum, default_value = "default")]
    format: OutputFormat,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    resource: StateResource,
    id: String,
    #[arg(long, value_enum, default_value = "yaml")]
    format: OutputFormat,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args, Debug)]
pub struct MemoryArgs {
    /// Only the summary of each node, not every reference.
    #[arg(long)]
    stats_only: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args, Debug)]
pub struct TimelineArgs {
    /// The file to write (default: rtd-timeline-<time>.json in the system's temporary directory).
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args, Debug)]
pub struct SummaryArgs {
    resource: SummaryResource,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// The dashboard address of the newest head on this machine under `temp_dir`.
fn local_dashboard(temp_dir: &Path) -> Result<String> {
    let latest = NodeFile::read(&temp_dir.join("session_latest/node.json")).ok();
    let mut heads: Vec<NodeFile> = NodeFile::find_all(temp_dir);
    // Session names start with their start time: the newest last.
    heads.sort_by(|a, b| a.session_dir.cmp(&b.session_dir));
    latest
        .into_iter()
        .chain(heads.into_iter().rev())
        .map(|node| node.dashboard_url)
        .find(|url| !url.is_empty())
        .ok_or_else(|| {
            anyhow!(
                "no rtd cluster with a dashboard is running on this machine under {} (start one with \
                 `rtd start --head`, or pass --address HOST:PORT of a cluster's dashboard)",
                temp_dir.display()
            )
        })
}

/// The dashboard `address` names: the cluster's when a node answers there, else
/// `address` itself (a dashboard does not answer as a node).
fn dashboard_of(address: &str) -> Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match runtime.block_on(cluster_kv::dashboard_of(address, Duration::from_secs(5))) {
        Ok(Some(dashboard)) => Ok(dashboard),
        Ok(None) => bail!("the rtd cluster at {address} serves no dashboard (started with --include-dashboard=false?)"),
        Err(_) => Ok(address.to_string()),
    }
}

/// The dashboard to ask, as a URL without a trailing slash.
pub(crate) fn dashboard_url(cluster: &ClusterArgs) -> Result<String> {
    let address = match &cluster.address {
        Some(address) if !address.contains("://") => dashboard_of(address)?,
        Some(address) => address.clone(),
        None => local_dashboard(&cluster.temp_dir)?,
    };
    let base = if address.contains("://") { address } else { format!("http://{address}") };
    Ok(base.trim_end_matches('/').to_string())
}

/// The most bytes of one answer read (a whole log, a long timeline).
const MAX_ANSWER_BYTES: u64 = 1 << 30;

/// A successful answer of the dashboard: its body, and where a log read ended.
pub(crate) struct Answer {
    pub body: Vec<u8>,
    pub end_offset: Option<u64>,
}

/// `GET path` with `query` from the cluster's dashboard; an error answer becomes an
/// error with the message the dashboard gave.
pub(crate) fn fetch(cluster: &ClusterArgs, path: &str, query: &[(&str, String)]) -> Result<Answer> {
    let url = format!("{}{path}", dashboard_url(cluster)?);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(cluster.timeout.max(1))))
        .http_status_as_error(false)
        .build()
        .into();
    let mut call = agent.get(&url).query("timeout", cluster.timeout.to_string());
    if let Some(token) = rtd_common::auth::process_token() {
        call = call.header("authorization", token.bearer());
    }
    for (name, value) in query {
        call = call.query(*name, value);
    }
    let mut response = call.call().with_context(|| format!("cannot reach the state API at {url}"))?;
    let end_offset =
        response.headers().get("x-rtd-end-offset").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES)
        .read_to_vec()
        .with_context(|| format!("reading the answer of {url}"))?;
    if !response.status().is_success() {
        let msg = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["msg"].as_str().map(String::from));
        match msg {
            Some(msg) => bail!("{msg}"),
            None => bail!("{url} answered {}: {:.200}", response.status(), String::from_utf8_lossy(&body)),
        }
    }
    Ok(Answer { body, end_offset })
}

/// `GET path` with `query` from the cluster's state API; the `data.result` of the answer.
pub(crate) fn request(cluster: &ClusterArgs, path: &str, query: &[(&str, String)]) -> Result<Value> {
    let body = fetch(cluster, path, query)?.body;
    let answer: Value = serde_json::from_slice(&body)
        .map_err(|_| anyhow!("{path} did not answer with JSON: {:.200}", String::from_utf8_lossy(&body)))?;
    if answer["result"] != Value::Bool(true) {
        bail!("{}", answer["msg"].as_str().unwrap_or("the state API refused the request"));
    }
    Ok(answer["data"]["result"].clone())
}

fn filter_query(filters: &[Filter]) -> Vec<(&'static str, String)> {
    filters
        .iter()
        .flat_map(|f| {
            [
                ("filter_keys", f.key.clone()),
                ("filter_predicates", f.predicate.into()),
                ("filter_values", f.value.clone()),
            ]
        })
        .collect()
}

/// The most rows the state API returns (its `limit` at most).
const MAX_ROWS: usize = 10_000;

/// `rtd list RESOURCE`.
pub fn list(args: &ListArgs) -> Result<()> {
    let mut query = filter_query(&args.filters);
    query.push(("limit", args.limit.to_string()));
    query.push(("detail", args.detail.to_string()));
    let listed = request(&args.cluster, &format!("/api/v0/{}", args.resource.api_name()), &query)?;
    let rows = listed["result"].as_array().cloned().unwrap_or_default();
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        OutputFormat::Yaml => print!("{}", yaml(&Value::Array(rows))?),
        OutputFormat::Table => print!("{}", table(&rows)),
        OutputFormat::Default => {
            println!("======== List: {} ========", args.resource.api_name());
            println!("Stats:\n------------------------------");
            println!("Total: {}\n", listed["total"]);
            println!("Table:\n------------------------------");
            print!("{}", table(&rows));
            let shown = rows.len() as u64;
            if listed["num_filtered"].as_u64().is_some_and(|n| n > shown) {
                eprintln!(
                    "rtd: note: showing {shown} of {} rows; raise --limit or add --filter to see the rest",
                    listed["num_filtered"]
                );
            }
        }
    }
    Ok(())
}

/// `rtd get RESOURCE ID`.
pub fn get(args: &GetArgs) -> Result<()> {
    let filter = Filter { key: args.resource.id_column().into(), predicate: "=", value: args.id.clone() };
    let mut query = filter_query(&[filter]);
    query.push(("detail", "true".into()));
    query.push(("limit", MAX_ROWS.to_string()));
    let listed = request(&args.cluster, &format!("/api/v0/{}", args.resource.api_name()), &query)?;
    let rows = listed["result"].as_array().cloned().unwrap_or_default();
    // A task's attempts, an object's references: all of them; anything else: its row.
    let shown = match rows.as_slice() {
        [] => bail!("no {} with {}={} in the cluster", args.resource.api_name(), args.resource.id_column(), args.id),
        [row] => row.clone(),
        _ => Value::Array(rows.clone()),
    };
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&shown)?),
        OutputFormat::Yaml | OutputFormat::Default => print!("{}", yaml(&shown)?),
        OutputFormat::Table => print!("{}", table(&rows)),
    }
    Ok(())
}

/// `rtd summary actors|tasks|objects`, as `ray summary` prints them: the totals, then a
/// row per group with its counts.
pub fn summary(args: &SummaryArgs) -> Result<()> {
    let answer = request(&args.cluster, &format!("/api/v0/{}/summarize", args.resource.api_name()), &[])?;
    let cluster = &answer["result"]["node_id_to_summary"]["cluster"];
    println!("======== {} ========", args.resource.title());
    println!("Stats:\n------------------------------------");
    for (name, value) in cluster.as_object().into_iter().flatten() {
        if name != "summary" && name != "summary_by" {
            println!("{name}: {}", cell(value));
        }
    }
    println!("\nTable (group by {}):\n------------------------------------", cell(&cluster["summary_by"]));
    let rows: Vec<Value> = cluster["summary"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(key, group)| {
            let mut row = serde_json::Map::new();
            // Actors and tasks name their group in it; objects' groups are call sites.
            if args.resource == SummaryResource::Objects {
                row.insert("call_site".into(), key.clone().into());
            }
            for (name, value) in group.as_object().into_iter().flatten() {
                row.insert(name.clone(), counts(value).map_or_else(|| value.clone(), Value::String));
            }
            Value::Object(row)
        })
        .collect();
    print!("{}", table(&rows));
    Ok(())
}

/// Counts by name (`{"ALIVE": 2, "DEAD": 1}`) as Ray prints them: `ALIVE: 2, DEAD: 1`.
fn counts(value: &Value) -> Option<String> {
    let counts = value.as_object()?;
    Some(counts.iter().map(|(name, n)| format!("{name}: {n}")).collect::<Vec<_>>().join(", "))
}

/// `rtd memory`, as `ray memory` prints it: per node address, a summary (bytes of the
/// objects, references by type) and every reference, largest first.
pub fn memory(args: &MemoryArgs) -> Result<()> {
    let query = [("limit", MAX_ROWS.to_string()), ("detail", "true".into())];
    let listed = request(&args.cluster, "/api/v0/objects", &query)?;
    let rows = listed["result"].as_array().cloned().unwrap_or_default();
    let mut by_node: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for row in rows.iter().cloned() {
        by_node.entry(cell(&row["ip"])).or_default().push(row);
    }
    println!("======== Object references status ========");
    println!("Grouping by node address...        Sorting by object size...\n");
    for (ip, mut references) in by_node {
        println!("--- Summary for node address: {ip} ---");
        print!("{}", table(&[reference_summary(&references)]));
        if !args.stats_only {
            references.sort_by_key(|r| std::cmp::Reverse(r["object_size"].as_u64().unwrap_or(0)));
            println!("\n--- Object references for node address: {ip} ---");
            let rows: Vec<Value> = references.iter().map(reference_row).collect();
            print!("{}", table(&rows));
        }
        println!();
    }
    let summary = request(&args.cluster, "/api/v0/objects/summarize", &[])?;
    let cluster = &summary["result"]["node_id_to_summary"]["cluster"];
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    for group in cluster["summary"].as_object().into_iter().flatten().map(|(_, g)| g) {
        for (kind, n) in group["ref_type_counts"].as_object().into_iter().flatten() {
            *by_type.entry(kind.clone()).or_default() += n.as_u64().unwrap_or(0);
        }
    }
    let by_type: Vec<String> = by_type.iter().map(|(kind, n)| format!("{kind}: {n}")).collect();
    println!("--- Aggregate object references across all nodes ---");
    println!(
        "{} references, {} referenced; {}",
        cluster["total_objects"],
        size_text((cluster["total_size_mb"].as_f64().unwrap_or(0.0) * MIB as f64) as u64),
        if by_type.is_empty() { "none".to_string() } else { by_type.join(", ") }
    );
    let mut spilled: BTreeMap<String, u64> = BTreeMap::new();
    for r in rows.iter().filter(|r| r["spilled"].as_bool() == Some(true)) {
        spilled.insert(cell(&r["object_id"]), r["object_size"].as_u64().unwrap_or(0));
    }
    println!("Spilled {}, {} objects", size_text(spilled.values().sum()), spilled.len());
    if listed["partial_failure_warning"].as_str().is_some_and(|w| !w.is_empty()) {
        eprintln!("rtd: warning: {}", cell(&listed["partial_failure_warning"]));
    }
    Ok(())
}

/// Ray's reference types, in the order and with the names `ray memory` shows them.
const REFERENCE_TYPES: &[(&str, &str)] = &[
    ("LOCAL_REFERENCE", "local_references"),
    ("PINNED_IN_MEMORY", "pinned"),
    ("USED_BY_PENDING_TASK", "used_by_task"),
    ("CAPTURED_IN_OBJECT", "captured_in_objects"),
    ("BORROWED", "borrowed"),
];

const MIB: u64 = 1 << 20;

/// A node's summary row: the bytes of its distinct objects, then per reference type how
/// many references and the bytes they hold.
fn reference_summary(references: &[Value]) -> Value {
    let size = |r: &Value| r["object_size"].as_u64().unwrap_or(0);
    let mut distinct: BTreeMap<String, u64> = BTreeMap::new();
    for r in references {
        distinct.insert(cell(&r["object_id"]), size(r));
    }
    let mut row = serde_json::Map::new();
    row.insert("mem_used_by_objects".into(), size_text(distinct.values().sum()).into());
    for (kind, column) in REFERENCE_TYPES {
        let of_kind: Vec<&Value> = references.iter().filter(|r| r["reference_type"] == *kind).collect();
        let bytes = of_kind.iter().map(|r| size(r)).sum();
        row.insert((*column).into(), format!("{}, ({})", of_kind.len(), size_text(bytes)).into());
    }
    Value::Object(row)
}

/// One reference as `ray memory` lists it.
fn reference_row(r: &Value) -> Value {
    let size = r["object_size"].as_u64().map_or_else(|| "?".to_string(), size_text);
    serde_json::json!({
        "ip_address": r["ip"], "pid": r["pid"], "type": cell(&r["type"]).to_lowercase(), "call_site": r["call_site"],
        "status": r["task_status"], "size": size, "reference_type": r["reference_type"], "object_ref": r["object_id"],
    })
}

/// Bytes as a person reads them: `512 B`, `1.5 KiB`, `8.0 MiB`.
fn size_text(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `rtd timeline`: the tasks that ran as a Chrome trace, written to a file (load it in
/// chrome://tracing or Perfetto), as `ray timeline` does.
pub fn timeline(args: &TimelineArgs) -> Result<()> {
    let events = fetch(&args.cluster, "/api/v0/tasks/timeline", &[])?.body;
    let count = serde_json::from_slice::<Vec<Value>>(&events)
        .map(|events| events.len())
        .map_err(|e| anyhow!("the timeline is not a JSON list of trace events: {e}"))?;
    let path = match &args.output {
        Some(path) => path.clone(),
        None => {
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
            std::env::temp_dir().join(format!("rtd-timeline-{now}.json"))
        }
    };
    std::fs::write(&path, &events).with_context(|| format!("writing the timeline to {}", path.display()))?;
    println!("Trace file written to {} ({count} events).", path.display());
    println!("You can open this with chrome://tracing in the Chrome browser, or with https://ui.perfetto.dev.");
    Ok(())
}

/// A YAML document of `value`, as `ray list --format yaml` writes one.
fn yaml(value: &Value) -> Result<String> {
    Ok(format!("---\n{}", serde_norway::to_string(value).context("writing YAML")?))
}

/// A cell: text as is, nothing for null, anything else as compact JSON.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Ray's table: an index column, then the rows' columns in order, headers in capitals.
fn table(rows: &[Value]) -> String {
    let Some(columns) = rows.first().and_then(Value::as_object).map(|r| r.keys().cloned().collect::<Vec<_>>()) else {
        return String::new();
    };
    let mut lines: Vec<Vec<String>> =
        vec![std::iter::once(String::new()).chain(columns.iter().map(|c| c.to_uppercase())).collect()];
    for (index, row) in rows.iter().enumerate() {
        let cells = columns.iter().map(|c| cell(row.get(c).unwrap_or(&Value::Null)));
        lines.push(std::iter::once(index.to_string()).chain(cells).collect());
    }
    let widths: Vec<usize> =
        (0..=columns.len()).map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for line in lines {
        let padded: Vec<String> = line.iter().zip(&widths).map(|(text, width)| format!("{text:<width$}")).collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_take_both_predicates_and_name_what_is_wrong() {
        assert_eq!(
            parse_filter("state=ALIVE"),
            Ok(Filter { key: "state".into(), predicate: "=", value: "ALIVE".into() })
        );
        assert_eq!(
            parse_filter("name != a=b"),
            Ok(Filter { key: "name".into(), predicate: "!=", value: "a=b".into() })
        );
        assert!(parse_filter("state~x").unwrap_err().contains("state~x"));
        assert!(parse_filter("=x").unwrap_err().contains("names no column"));
    }

    #[test]
    fn a_table_keeps_the_row_order_of_its_columns() {
        let rows: Vec<Value> = serde_json::from_str(
            r#"[{"node_id": "aa", "state": "ALIVE", "resources_total": {"CPU": 1.0}, "labels": null},
                {"node_id": "bbbb", "state": "DEAD", "resources_total": {}, "labels": null}]"#,
        )
        .expect("json");
        let text = table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["NODE_ID", "STATE", "RESOURCES_TOTAL", "LABELS"]);
        assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["0", "aa", "ALIVE", r#"{"CPU":1.0}"#]);
        assert_eq!(lines.len(), 3);
        assert_eq!(table(&[]), "");
    }
}
