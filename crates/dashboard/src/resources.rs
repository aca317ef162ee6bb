//! The state API's resources (`nodes`, `actors`, `placement_groups`, `tasks`, `jobs`,
//! `workers`, `objects`) as one table:
//! for each, Ray's columns (which are filterable, which only come with `detail`) and
//! how to read its rows from [`ClusterState`]. Listing — truncating at the source,
//! filtering, limiting, choosing columns — and summarizing are written once, for all.
//!
//! Adding a resource is one more [`Resource`] in [`RESOURCES`]: its columns and a
//! function returning its rows.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::query::{parse_bool, Filter, ListOptions, Predicate, QueryError};
use crate::state::ClusterState;

/// One row as JSON: Ray's column names to values.
pub type Row = Map<String, Value>;

/// Ray's most rows read from a data source (`RAY_MAX_LIMIT_FROM_DATA_SOURCE`).
pub const MAX_FROM_SOURCE: usize = 10_000;

/// One column of a resource's schema.
pub struct Column {
    pub name: &'static str,
    /// May be used in a filter.
    pub filterable: bool,
    /// Shown only with `detail`.
    pub detail: bool,
}

const fn column(name: &'static str, filterable: bool, detail: bool) -> Column {
    Column { name, filterable, detail }
}

/// A kind of thing the state API lists.
pub struct Resource {
    /// Its name in `/api/v0/<name>`.
    pub name: &'static str,
    /// The column that identifies a row (what `get` looks up).
    pub id_column: &'static str,
    /// Ray's columns, in Ray's order.
    pub columns: &'static [Column],
    pub rows: fn(&dyn ClusterState, Duration) -> Rows,
    /// What `/api/v0/<name>/summarize` answers (None: the resource has no summary).
    pub summary: Option<Summary>,
}

/// Ray's summary of a resource, `node_id_to_summary.cluster` in its answer.
pub enum Summary {
    /// Rows grouped by `by_column` with counts by state (Ray's `ActorSummaries`,
    /// `TaskSummaries`); `summary_by` and `total_name` are Ray's names in the answer.
    StateCounts { by_column: &'static str, summary_by: &'static str, total_name: &'static str },
    /// Ray's `ObjectSummaries`: objects grouped by call site (rtd records none, so one
    /// group, `disabled`), with their size, how many processes and nodes reference
    /// them, and counts by task status and reference type.
    Objects,
}

/// A resource's rows, and warnings when they are partial (dropped task events,
/// processes that did not answer).
pub struct Rows {
    pub rows: Vec<Row>,
    pub warnings: Vec<String>,
}

fn rows_of<T: Serialize>(items: Vec<T>) -> Rows {
    let rows = items
        .into_iter()
        .filter_map(|item| match serde_json::to_value(item) {
            Ok(Value::Object(row)) => Some(row),
            _ => None,
        })
        .collect();
    Rows { rows, warnings: Vec::new() }
}

fn task_rows(state: &dyn ClusterState) -> Rows {
    let (tasks, dropped) = state.tasks();
    let mut rows = rows_of(tasks);
    if dropped > 0 {
        rows.warnings.push(format!(
            "{dropped} task attempts were dropped (the GCS keeps at most RTD_TASK_EVENTS_MAX_NUM_TASK_IN_GCS, \
             oldest finished first); the task list is partial"
        ));
    }
    rows
}

fn object_rows(state: &dyn ClusterState, timeout: Duration) -> Rows {
    let (objects, warnings) = state.objects(timeout);
    Rows { warnings, ..rows_of(objects) }
}

pub const RESOURCES: &[Resource] = &[
    Resource {
        name: "nodes",
        id_column: "node_id",
        columns: &[
            column("node_id", true, false),
            column("node_ip", true, false),
            column("is_head_node", true, false),
            column("state", true, false),
            column("state_message", false, false),
            column("node_name", true, false),
            column("resources_total", false, false),
            column("labels", false, false),
            column("resources_available", false, true),
            column("start_time_ms", false, true),
            column("end_time_ms", false, true),
        ],
        rows: |state, _| rows_of(state.nodes()),
        summary: None,
    },
    Resource {
        name: "actors",
        id_column: "actor_id",
        columns: &[
            column("actor_id", true, false),
            column("class_name", true, false),
            column("state", true, false),
            column("job_id", true, false),
            column("name", true, false),
            column("node_id", true, false),
            column("pid", true, false),
            column("ray_namespace", true, false),
            column("serialized_runtime_env", false, true),
            column("required_resources", false, true),
            column("death_cause", false, true),
            column("is_detached", false, true),
            column("placement_group_id", true, true),
            column("repr_name", true, true),
            column("num_restarts", false, true),
            column("num_restarts_due_to_lineage_reconstruction", false, true),
        ],
        rows: |state, _| rows_of(state.actors()),
        summary: Some(Summary::StateCounts {
            by_column: "class_name",
            summary_by: "class",
            total_name: "total_actors",
        }),
    },
    Resource {
        name: "placement_groups",
        id_column: "placement_group_id",
        columns: &[
            column("placement_group_id", true, false),
            column("name", true, false),
            column("creator_job_id", true, false),
            column("state", true, false),
            column("bundles", false, true),
            column("is_detached", true, true),
            column("strategy", true, true),
            column("stats", false, true),
        ],
        rows: |state, _| rows_of(state.placement_groups()),
        summary: None,
    },
    Resource {
        name: "tasks",
        id_column: "task_id",
        columns: &[
            column("task_id", true, false),
            column("attempt_number", true, false),
            column("name", true, false),
            column("state", true, false),
            column("job_id", true, false),
            column("actor_id", true, false),
            column("type", true, false),
            column("func_or_class_name", true, false),
            column("parent_task_id", true, false),
            column("node_id", true, false),
            column("worker_id", true, false),
            column("worker_pid", true, false),
            column("error_type", true, false),
            column("error_message", false, true),
            column("required_resources", false, true),
            column("events", false, true),
            column("creation_time_ms", false, true),
            column("start_time_ms", false, true),
            column("end_time_ms", false, true),
            column("task_log_info", false, true),
        ],
        rows: |state, _| task_rows(state),
        summary: Some(Summary::StateCounts {
            by_column: "func_or_class_name",
            summary_by: "func_name",
            total_name: "total_tasks",
        }),
    },
    Resource {
        name: "jobs",
        id_column: "job_id",
        columns: &[
            column("job_id", true, false),
            column("submission_id", true, false),
            column("type", true, false),
            column("status", true, false),
            column("entrypoint", false, false),
            column("message", false, false),
            column("error_type", false, false),
            column("start_time", false, false),
            column("end_time", false, false),
            column("metadata", false, false),
            column("runtime_env", false, false),
            column("driver_info", false, false),
            column("driver_node_id", true, false),
            column("driver_agent_http_address", false, true),
            column("driver_exit_code", false, true),
        ],
        rows: |state, _| rows_of(state.jobs()),
        summary: None,
    },
    Resource {
        name: "workers",
        id_column: "worker_id",
        columns: &[
            column("worker_id", true, false),
            column("is_alive", true, false),
            column("worker_type", true, false),
            column("exit_type", true, false),
            column("node_id", true, false),
            column("ip", true, false),
            column("pid", true, false),
            column("exit_detail", false, false),
            column("worker_launch_time_ms", false, true),
            column("start_time_ms", false, true),
            column("end_time_ms", false, true),
        ],
        rows: |state, _| rows_of(state.workers()),
        summary: None,
    },
    Resource {
        name: "objects",
        id_column: "object_id",
        columns: &[
            column("object_id", true, false),
            column("object_size", true, false),
            column("task_status", true, false),
            column("reference_type", true, false),
            column("call_site", true, false),
            column("type", true, false),
            column("pid", true, false),
            column("ip", true, false),
            column("node_id", true, true),
            column("owned", true, true),
            column("spilled", true, true),
        ],
        rows: object_rows,
        summary: Some(Summary::Objects),
    },
];

/// The resource named `name`, if the state API has it.
pub fn resource(name: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.name == name)
}

/// A resource's rows that pass the filters, with the counts before.
struct Filtered {
    total: usize,
    after_truncation: usize,
    rows: Vec<Row>,
    warnings: Vec<String>,
}

/// Ray's `ListApiResponse`: the counts at each step, then the rows.
#[derive(Debug, Serialize, PartialEq)]
pub struct ListResponse {
    /// Rows the cluster has.
    pub total: usize,
    /// Rows read from the source (at most [`MAX_FROM_SOURCE`]).
    pub num_after_truncation: usize,
    /// Rows that pass the filters.
    pub num_filtered: usize,
    /// At most `limit` of those, with the columns `detail` asks for.
    pub result: Vec<Row>,
    pub partial_failure_warning: String,
    pub warnings: Option<Vec<String>>,
}

/// Whether `value` (a row's) satisfies `filter.value`, compared as Ray does: strings
/// without regard to case, booleans and numbers by value.
fn matches(column: &str, value: &Value, wanted: &str) -> Result<bool, QueryError> {
    let bad = |kind| QueryError::BadFilterValue { column: column.to_string(), value: wanted.to_string(), kind };
    Ok(match value {
        Value::String(s) => s.eq_ignore_ascii_case(wanted),
        Value::Bool(b) => *b == parse_bool(wanted).ok_or_else(|| bad("boolean"))?,
        Value::Number(n) => n.as_f64() == Some(wanted.parse::<f64>().map_err(|_| bad("number"))?),
        // No value equals nothing given; anything else is not filterable.
        _ => false,
    })
}

impl Resource {
    fn check_filter(&self, filter: &Filter) -> Result<(), QueryError> {
        if self.columns.iter().any(|c| c.filterable && c.name == filter.key) {
            return Ok(());
        }
        let supported: Vec<&str> = self.columns.iter().filter(|c| c.filterable).map(|c| c.name).collect();
        Err(QueryError::UnknownColumn { column: filter.key.clone(), supported: supported.join(", ") })
    }

    /// The rows the source holds (sorted by id, so pages are stable), truncated at
    /// [`MAX_FROM_SOURCE`], then those that pass `filters`.
    fn filtered(&self, state: &dyn ClusterState, options: &ListOptions) -> Result<Filtered, QueryError> {
        for filter in &options.filters {
            self.check_filter(filter)?;
        }
        let Rows { mut rows, warnings } = (self.rows)(state, Duration::from_secs(options.timeout_s));
        let total = rows.len();
        let id = |row: &Row| row.get(self.id_column).and_then(Value::as_str).unwrap_or_default().to_string();
        rows.sort_by_key(id);
        rows.truncate(MAX_FROM_SOURCE);
        let after_truncation = rows.len();
        let mut kept = Vec::with_capacity(rows.len());
        for row in rows {
            let mut pass = true;
            for f in &options.filters {
                let equal = matches(&f.key, row.get(&f.key).unwrap_or(&Value::Null), &f.value)?;
                pass &= equal == (f.predicate == Predicate::Equal);
            }
            if pass {
                kept.push(row);
            }
        }
        Ok(Filtered { total, after_truncation, rows: kept, warnings })
    }

    pub fn list(&self, state: &dyn ClusterState, options: &ListOptions) -> Result<ListResponse, QueryError> {
        let Filtered { total, after_truncation: num_after_truncation, rows, warnings } =
            self.filtered(state, options)?;
        let num_filtered = rows.len();
        let result = rows
            .into_iter()
            .take(options.limit)
            .map(|mut row| {
                let mut shown = Row::new();
                for column in self.columns.iter().filter(|c| options.detail || !c.detail) {
                    shown.insert(column.name.to_string(), row.remove(column.name).unwrap_or(Value::Null));
                }
                shown
            })
            .collect();
        Ok(ListResponse {
            total,
            num_after_truncation,
            num_filtered,
            result,
            partial_failure_warning: warnings.join("; "),
            warnings: (!warnings.is_empty()).then_some(warnings),
        })
    }

    /// Ray's `SummaryApiResponse` for this resource (None: it has no summary): the
    /// summary of the rows that pass `filters`.
    pub fn summarize(&self, state: &dyn ClusterState, options: &ListOptions) -> Option<Result<Value, QueryError>> {
        let summary = self.summary.as_ref()?;
        Some(self.filtered(state, options).map(|Filtered { total, after_truncation, rows, warnings }| {
            serde_json::json!({
                "total": total,
                "num_after_truncation": after_truncation,
                "num_filtered": rows.len(),
                "result": {"node_id_to_summary": {"cluster": summary.of(&rows)}},
                "partial_failure_warning": warnings.join("; "),
                "warnings": (!warnings.is_empty()).then_some(&warnings),
            })
        }))
    }
}

/// A row's text in `column` ("" when it has none).
fn text(row: &Row, column: &str) -> String {
    match row.get(column) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

impl Summary {
    fn of(&self, rows: &[Row]) -> Value {
        match self {
            Summary::StateCounts { by_column, summary_by, total_name } => {
                let mut groups: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
                for row in rows {
                    *groups.entry(text(row, by_column)).or_default().entry(text(row, "state")).or_default() += 1;
                }
                let summary: Map<String, Value> = groups
                    .into_iter()
                    .map(|(key, state_counts)| {
                        let entry = serde_json::json!({ *by_column: key, "state_counts": state_counts });
                        (key, entry)
                    })
                    .collect();
                serde_json::json!({ "summary": summary, *total_name: rows.len(), "summary_by": summary_by })
            }
            Summary::Objects => objects_summary(rows),
        }
    }
}

/// Bytes in Ray's `total_size_mb` (MiB).
const MB: f64 = 1024.0 * 1024.0;

/// Ray's `ObjectSummaries` of object rows.
fn objects_summary(rows: &[Row]) -> Value {
    #[derive(Default)]
    struct Group {
        objects: u64,
        bytes: u64,
        processes: BTreeSet<String>,
        nodes: BTreeSet<String>,
        task_state_counts: BTreeMap<String, u64>,
        ref_type_counts: BTreeMap<String, u64>,
    }
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for row in rows {
        let group = groups.entry(text(row, "call_site")).or_default();
        group.objects += 1;
        // No size: the task that makes the object is pending.
        group.bytes += row.get("object_size").and_then(Value::as_u64).unwrap_or(0);
        // A process is its pid on its node, as Ray counts workers by pid and nodes by ip.
        group.processes.insert(format!("{}@{}", text(row, "pid"), text(row, "ip")));
        group.nodes.insert(text(row, "ip"));
        *group.task_state_counts.entry(text(row, "task_status")).or_default() += 1;
        *group.ref_type_counts.entry(text(row, "reference_type")).or_default() += 1;
    }
    let total_bytes: u64 = groups.values().map(|g| g.bytes).sum();
    let callsite_enabled = !groups.contains_key("disabled");
    let summary: Map<String, Value> = groups
        .into_iter()
        .map(|(call_site, g)| {
            let entry = serde_json::json!({
                "total_objects": g.objects,
                "total_size_mb": g.bytes as f64 / MB,
                "total_num_workers": g.processes.len(),
                "total_num_nodes": g.nodes.len(),
                "task_state_counts": g.task_state_counts,
                "ref_type_counts": g.ref_type_counts,
            });
            (call_site, entry)
        })
        .collect();
    serde_json::json!({
        "summary": summary,
        "total_objects": rows.len(),
        "total_size_mb": total_bytes as f64 / MB,
        "callsite_enabled": callsite_enabled,
        "summary_by": "callsite",
    })
}
