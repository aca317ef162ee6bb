//! `rtd list`, `rtd get` and `rtd summary`: Ray's state CLI, a client of the head's
//! state API over HTTP (`rtd_dashboard`), with Ray's output formats.
//!
//! A command finds the cluster of this machine by itself — the head's `node.json` names
//! its dashboard address — or talks to the dashboard at `--address HOST:PORT`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, ValueEnum};
use serde_json::Value;

use crate::session::{NodeFile, DEFAULT_TEMP_DIR};

/// What the state API lists. Adding one (tasks, jobs) is a variant here.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum StateResource {
    #[value(alias = "node")]
    Nodes,
    #[value(alias = "actor")]
    Actors,
    #[value(alias = "placement-group")]
    PlacementGroups,
}

impl StateResource {
    /// Its name in the API (`/api/v0/<name>`) and in Ray's output.
    fn api_name(self) -> &'static str {
        match self {
            Self::Nodes => "nodes",
            Self::Actors => "actors",
            Self::PlacementGroups => "placement_groups",
        }
    }

    /// The column `rtd get` looks a row up by.
    fn id_column(self) -> &'static str {
        match self {
            Self::Nodes => "node_id",
            Self::Actors => "actor_id",
            Self::PlacementGroups => "placement_group_id",
        }
    }
}

/// Resources with a summary.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum SummaryResource {
    Actors,
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
#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// The dashboard of the cluster to ask (default: the cluster running on this machine).
    #[arg(long, value_name = "HOST:PORT")]
    address: Option<String>,
    /// Where this machine's node daemons keep their sessions.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_TEMP_DIR)]
    temp_dir: PathBuf,
    /// Seconds to wait for the answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    timeout: u64,
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

/// `GET path` with `query` from the cluster's state API; the `data` of the answer.
fn request(cluster: &ClusterArgs, path: &str, query: &[(&str, String)]) -> Result<Value> {
    let address = match &cluster.address {
        Some(address) => address.clone(),
        None => local_dashboard(&cluster.temp_dir)?,
    };
    let base = if address.contains("://") { address } else { format!("http://{address}") };
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(cluster.timeout.max(1))))
        .http_status_as_error(false)
        .build()
        .into();
    let mut call = agent.get(&url).query("timeout", cluster.timeout.to_string());
    for (name, value) in query {
        call = call.query(*name, value);
    }
    let mut response = call.call().with_context(|| format!("cannot reach the state API at {url}"))?;
    let text = response.body_mut().read_to_string().with_context(|| format!("reading the answer of {url}"))?;
    let answer: Value = serde_json::from_str(&text)
        .map_err(|_| anyhow!("{url} did not answer with JSON (status {}): {text:.200}", response.status()))?;
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
    let listed = request(&args.cluster, &format!("/api/v0/{}", args.resource.api_name()), &query)?;
    let Some(row) = listed["result"].as_array().and_then(|rows| rows.first()).cloned() else {
        bail!("no {} with {}={} in the cluster", args.resource.api_name(), args.resource.id_column(), args.id);
    };
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&row)?),
        OutputFormat::Yaml | OutputFormat::Default => print!("{}", yaml(&row)?),
        OutputFormat::Table => print!("{}", table(&[row])),
    }
    Ok(())
}

/// `rtd summary actors`, as `ray summary actors` prints it.
pub fn summary(args: &SummaryArgs) -> Result<()> {
    let SummaryResource::Actors = args.resource;
    let answer = request(&args.cluster, "/api/v0/actors/summarize", &[])?;
    let cluster = &answer["result"]["node_id_to_summary"]["cluster"];
    println!("======== Actors Summary ========");
    println!("Stats:\n------------------------------------");
    println!("total_actors: {}\n", cluster["total_actors"]);
    println!("Table (group by class):\n------------------------------------");
    let rows: Vec<Value> = cluster["summary"]
        .as_object()
        .map(|groups| {
            groups
                .values()
                .map(|group| {
                    let counts = group["state_counts"]
                        .as_object()
                        .map(|c| c.iter().map(|(state, n)| format!("{state}: {n}")).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default();
                    serde_json::json!({"class_name": group["class_name"], "state_counts": counts})
                })
                .collect()
        })
        .unwrap_or_default();
    print!("{}", table(&rows));
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
