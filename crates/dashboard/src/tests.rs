//! The HTTP API against a fake cluster behind [`ClusterState`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt as _;

use crate::resources::RESOURCES;
use crate::state::*;

struct FakeCluster;

fn resources(items: &[(&str, f64)]) -> Resources {
    items.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn node(id: &str, head: bool, alive: bool, cpus: f64, free: f64) -> NodeState {
    NodeState {
        node_id: id.into(),
        node_ip: "127.0.0.1".into(),
        is_head_node: head,
        state: if alive { "ALIVE" } else { "DEAD" },
        state_message: None,
        node_name: "127.0.0.1".into(),
        resources_total: resources(&[("CPU", cpus), ("memory", 1e9)]),
        resources_available: resources(&[("CPU", free), ("memory", 1e9)]),
        labels: BTreeMap::new(),
        start_time_ms: None,
        end_time_ms: None,
    }
}

fn actor(id: &str, class_name: &str, state: &'static str) -> ActorState {
    ActorState {
        actor_id: id.into(),
        class_name: class_name.into(),
        state,
        job_id: "01000000".into(),
        name: String::new(),
        node_id: Some("aa".into()),
        pid: 42,
        ray_namespace: "ns".into(),
        serialized_runtime_env: None,
        required_resources: resources(&[("CPU", 1.0)]),
        death_cause: None,
        is_detached: false,
        placement_group_id: None,
        repr_name: String::new(),
        num_restarts: 0,
        num_restarts_due_to_lineage_reconstruction: 0,
    }
}

impl ClusterState for FakeCluster {
    fn nodes(&self) -> Vec<NodeState> {
        vec![node("bb", false, true, 2.0, 1.0), node("aa", true, true, 4.0, 4.0), node("cc", false, false, 8.0, 0.0)]
    }

    fn actors(&self) -> Vec<ActorState> {
        vec![actor("a1", "Counter", "ALIVE"), actor("a2", "Counter", "DEAD"), actor("a3", "Queue", "ALIVE")]
    }

    fn placement_groups(&self) -> Vec<PlacementGroupState> {
        vec![PlacementGroupState {
            placement_group_id: "pg1".into(),
            name: "mine".into(),
            creator_job_id: None,
            state: "CREATED",
            bundles: vec![BundleState {
                bundle_id: 0,
                node_id: Some("aa".into()),
                unit_resources: resources(&[("CPU", 1.0)]),
            }],
            is_detached: false,
            strategy: "PACK".into(),
            stats: None,
        }]
    }

    fn tasks(&self) -> (Vec<TaskState>, u64) {
        (vec![task("t1", "f", "FINISHED", 0), task("t2", "f", "FAILED", 0), task("t2", "f", "RUNNING", 1)], 3)
    }

    fn jobs(&self) -> Vec<JobState> {
        vec![JobState {
            job_id: Some("01000000".into()),
            submission_id: None,
            job_type: "DRIVER",
            status: "RUNNING",
            entrypoint: "python x.py".into(),
            message: None,
            error_type: None,
            start_time: 1,
            end_time: None,
            metadata: BTreeMap::new(),
            runtime_env: serde_json::json!({}),
            driver_info: serde_json::json!({"pid": "7"}),
            driver_agent_http_address: None,
            driver_node_id: Some("aa".into()),
            driver_exit_code: None,
        }]
    }

    fn workers(&self) -> Vec<WorkerState> {
        vec![WorkerState {
            worker_id: "w1".into(),
            is_alive: true,
            worker_type: "WORKER",
            exit_type: None,
            node_id: "aa".into(),
            ip: "127.0.0.1".into(),
            pid: 42,
            exit_detail: None,
            worker_launch_time_ms: 1,
            start_time_ms: 1,
            end_time_ms: None,
        }]
    }

    fn objects(&self, _timeout: Duration) -> (Vec<ObjectState>, Vec<String>) {
        let objects = vec![
            object("o1", Some(3 << 20), "LOCAL_REFERENCE", "DRIVER", 7),
            object("o1", Some(3 << 20), "BORROWED", "WORKER", 42),
            object("o2", None, "USED_BY_PENDING_TASK", "DRIVER", 7),
        ];
        (objects, vec!["process 8 on 127.0.0.1 did not answer".into()])
    }

    fn timeline(&self) -> Vec<Value> {
        vec![serde_json::json!({"name": "task::f", "ph": "X"})]
    }

    fn list_logs(&self, node_id: &str, _timeout: Duration) -> Result<Vec<LogFileState>, LogError> {
        if node_id != "aa" {
            return Err(LogError::NotFound(format!("no node {node_id:?}")));
        }
        let file = |name: &str| LogFileState { name: name.into(), size: 3, modified_ms: 0 };
        Ok(vec![file("worker-w1-42.out"), file("worker-w1-42.err"), file("worker-w2-43.out")])
    }

    fn read_log(&self, node_id: &str, read: LogRead, _timeout: Duration) -> Result<(Vec<u8>, u64), LogError> {
        Ok((format!("{node_id}/{} from {}", read.filename, read.offset).into_bytes(), 99))
    }
}

fn object(id: &str, size: Option<u64>, reference_type: &str, process_type: &'static str, pid: u32) -> ObjectState {
    ObjectState {
        object_id: id.into(),
        object_size: size,
        task_status: if size.is_some() { "FINISHED" } else { "PENDING" },
        reference_type: reference_type.into(),
        call_site: "disabled".into(),
        process_type,
        pid,
        ip: "127.0.0.1".into(),
        node_id: None,
        owned: process_type == "DRIVER",
        spilled: false,
    }
}

fn task(id: &str, name: &str, state: &'static str, attempt: u32) -> TaskState {
    TaskState {
        task_id: id.into(),
        attempt_number: attempt,
        name: name.into(),
        state,
        job_id: "01000000".into(),
        actor_id: None,
        task_type: "NORMAL_TASK",
        func_or_class_name: name.into(),
        parent_task_id: None,
        node_id: Some("aa".into()),
        worker_id: Some("w1".into()),
        worker_pid: Some(42),
        error_type: None,
        error_message: None,
        required_resources: resources(&[("CPU", 1.0)]),
        events: Vec::new(),
        creation_time_ms: Some(1),
        start_time_ms: Some(2),
        end_time_ms: None,
        task_log_info: None,
    }
}

/// (status, body as text, the end-offset header) of `GET uri`.
async fn get_text(uri: &str) -> (StatusCode, String, Option<String>) {
    let app = crate::router(Arc::new(FakeCluster));
    let response = app.oneshot(Request::get(uri).body(Body::empty()).expect("request")).await.expect("answered");
    let status = response.status();
    let end = response.headers().get("x-rtd-end-offset").and_then(|v| v.to_str().ok()).map(String::from);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned(), end)
}

/// (status, JSON body) of `GET uri`.
async fn get(uri: &str) -> (StatusCode, Value) {
    let app = crate::router(Arc::new(FakeCluster));
    let response = app.oneshot(Request::get(uri).body(Body::empty()).expect("request")).await.expect("answered");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// The list answer (`data.result`) of a successful `GET uri`.
async fn listed(uri: &str) -> Value {
    let (status, body) = get(uri).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((&body["result"], &body["msg"]), (&Value::Bool(true), &Value::from("")));
    body["data"]["result"].clone()
}

fn ids(list: &Value, column: &str) -> Vec<String> {
    list["result"].as_array().expect("rows").iter().map(|r| r[column].as_str().unwrap_or("").to_string()).collect()
}

#[tokio::test]
async fn lists_rows_sorted_by_id_with_the_base_columns_unless_detail() {
    let list = listed("/api/v0/nodes").await;
    assert_eq!(ids(&list, "node_id"), ["aa", "bb", "cc"]);
    assert_eq!(
        (&list["total"], &list["num_after_truncation"], &list["num_filtered"]),
        (&3.into(), &3.into(), &3.into())
    );
    assert_eq!((&list["partial_failure_warning"], &list["warnings"]), (&Value::from(""), &Value::Null));
    let row = &list["result"][0];
    assert_eq!(row["resources_total"]["CPU"], 4.0);
    assert!(row.get("resources_available").is_none());
    let detailed = listed("/api/v0/nodes?detail=true").await;
    assert_eq!(detailed["result"][0]["resources_available"]["CPU"], 4.0);
}

#[tokio::test]
async fn every_column_of_every_resource_is_a_field_of_its_rows() {
    // Read the rows as the source gives them: a listed row has every column (a missing
    // field shows as null), so only the source can tell a misspelt column.
    for resource in RESOURCES {
        let rows = (resource.rows)(&FakeCluster, Duration::from_secs(1)).rows;
        let row = rows.first().unwrap_or_else(|| panic!("the fake has a row of {}", resource.name));
        let mut columns: Vec<&str> = resource.columns.iter().map(|c| c.name).collect();
        let mut fields: Vec<&str> = row.keys().map(String::as_str).collect();
        columns.sort();
        fields.sort();
        assert_eq!(columns, fields, "{}", resource.name);
    }
}

#[tokio::test]
async fn filters_hold_together_and_compare_strings_without_case() {
    let alive = listed("/api/v0/nodes?filter_keys=state&filter_predicates=%3D&filter_values=alive").await;
    assert_eq!(ids(&alive, "node_id"), ["aa", "bb"]);
    assert_eq!((&alive["total"], &alive["num_filtered"]), (&3.into(), &2.into()));
    let workers = listed(
        "/api/v0/nodes?filter_keys=state&filter_predicates=%3D&filter_values=ALIVE\
         &filter_keys=is_head_node&filter_predicates=!%3D&filter_values=True",
    )
    .await;
    assert_eq!(ids(&workers, "node_id"), ["bb"]);
    let by_pid = listed("/api/v0/actors?filter_keys=pid&filter_predicates=%3D&filter_values=42").await;
    assert_eq!(by_pid["num_filtered"], 3);
}

#[tokio::test]
async fn limit_cuts_the_rows_but_not_the_counts() {
    let list = listed("/api/v0/actors?limit=1").await;
    assert_eq!(ids(&list, "actor_id"), ["a1"]);
    assert_eq!((&list["total"], &list["num_filtered"]), (&3.into(), &3.into()));
}

#[tokio::test]
async fn bad_requests_are_4xx_with_a_message_naming_the_problem() {
    let cases = [
        ("/api/v0/nodes?filter_keys=colour&filter_predicates=%3D&filter_values=x", StatusCode::BAD_REQUEST, "colour"),
        ("/api/v0/nodes?filter_keys=state&filter_predicates=~&filter_values=x", StatusCode::BAD_REQUEST, "\"~\""),
        (
            "/api/v0/nodes?filter_keys=resources_total&filter_predicates=%3D&filter_values=x",
            StatusCode::BAD_REQUEST,
            "resources_total",
        ),
        (
            "/api/v0/nodes?filter_keys=is_head_node&filter_predicates=%3D&filter_values=perhaps",
            StatusCode::BAD_REQUEST,
            "perhaps",
        ),
        ("/api/v0/nodes?limit=-1", StatusCode::BAD_REQUEST, "limit"),
        ("/api/v0/widgets", StatusCode::NOT_FOUND, "widgets"),
        ("/api/v0/nodes/summarize", StatusCode::NOT_FOUND, "nodes"),
        ("/api/v0/nodes/aa/bb", StatusCode::NOT_FOUND, "no such endpoint"),
        ("/static/nothing.js", StatusCode::NOT_FOUND, "nothing.js"),
    ];
    for (uri, status, named) in cases {
        let (got, body) = get(uri).await;
        assert_eq!(got, status, "{uri}: {body}");
        assert_eq!(body["result"], false, "{uri}");
        assert!(body["msg"].as_str().unwrap_or("").contains(named), "{uri}: {body}");
    }
}

#[tokio::test]
async fn actors_summarize_by_class_with_counts_by_state() {
    let summary = listed("/api/v0/actors/summarize").await;
    let cluster = &summary["result"]["node_id_to_summary"]["cluster"];
    assert_eq!(cluster["total_actors"], 3);
    assert_eq!(cluster["summary_by"], "class");
    assert_eq!(cluster["summary"]["Counter"]["state_counts"], serde_json::json!({"ALIVE": 1, "DEAD": 1}));
    assert_eq!(cluster["summary"]["Queue"]["class_name"], "Queue");
    let alive = listed("/api/v0/actors/summarize?filter_keys=state&filter_predicates=%3D&filter_values=ALIVE").await;
    assert_eq!(alive["result"]["node_id_to_summary"]["cluster"]["total_actors"], 2);
}

#[tokio::test]
async fn cluster_status_sums_the_alive_nodes() {
    let (status, body) = get("/api/cluster_status").await;
    assert_eq!(status, StatusCode::OK);
    let data = &body["data"];
    assert_eq!((&data["num_nodes_alive"], &data["num_nodes_dead"]), (&2.into(), &1.into()));
    assert_eq!((&data["resources_total"]["CPU"], &data["resources_available"]["CPU"]), (&6.0.into(), &5.0.into()));
    assert_eq!(data["nodes"].as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn the_index_page_is_served() {
    let app = crate::router(Arc::new(FakeCluster));
    let response = app.oneshot(Request::get("/").body(Body::empty()).expect("request")).await.expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().unwrap_or("").starts_with("text/html"));
}

#[tokio::test]
async fn the_pages_scripts_are_served_as_javascript() {
    let app = crate::router(Arc::new(FakeCluster));
    let response =
        app.oneshot(Request::get("/static/app.js").body(Body::empty()).expect("request")).await.expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().unwrap_or("").starts_with("text/javascript"));
}

/// A page module added to `static/` but not to `STATIC_FILES` would only show up as a
/// blank page in a browser; this names it.
#[test]
fn every_file_the_pages_load_is_embedded() {
    let embedded = |file: &str| crate::http::STATIC_FILES.iter().any(|(name, _, _)| *name == file);
    for (name, _, bytes) in crate::http::STATIC_FILES {
        let text = std::str::from_utf8(bytes).expect("static files are text");
        // Module imports (`from './lib.js'`) and the index's `/static/...` links.
        let imports = text.split("from './").skip(1).filter_map(|rest| rest.split('\'').next());
        let links = text.split("\"/static/").skip(1).filter_map(|rest| rest.split('"').next());
        for file in imports.chain(links) {
            assert!(embedded(file), "{name} loads {file}, which is not in STATIC_FILES");
        }
    }
}

#[tokio::test]
async fn a_busy_default_port_moves_on_and_a_busy_explicit_port_is_an_error() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let port = taken.local_addr().expect("address").port();
    let moved = crate::bind("127.0.0.1", crate::Port::Default(port)).await.expect("another port");
    assert_ne!(moved.local_addr().expect("address").port(), port);
    let error = crate::bind("127.0.0.1", crate::Port::Explicit(port)).await.expect_err("busy");
    assert!(error.to_string().contains(&format!("127.0.0.1:{port} is already in use")), "{error}");
}

#[tokio::test]
async fn tasks_list_every_attempt_summarize_by_function_and_warn_of_drops() {
    let list = listed("/api/v0/tasks?filter_keys=state&filter_predicates=%3D&filter_values=failed").await;
    assert_eq!(ids(&list, "task_id"), ["t2"]);
    assert!(list["partial_failure_warning"].as_str().unwrap_or("").contains("3 task attempts were dropped"));
    let (status, body) = get("/api/v0/tasks/summarize").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cluster = &body["data"]["result"]["result"]["node_id_to_summary"]["cluster"];
    assert_eq!(cluster["summary"]["f"]["state_counts"], serde_json::json!({"FAILED": 1, "FINISHED": 1, "RUNNING": 1}));
    assert_eq!((&cluster["total_tasks"], &cluster["summary_by"]), (&3.into(), &"func_name".into()));
}

#[tokio::test]
async fn objects_name_the_processes_that_did_not_answer() {
    let list = listed("/api/v0/objects").await;
    assert_eq!(list["warnings"][0], "process 8 on 127.0.0.1 did not answer");
    assert_eq!(ids(&list, "object_id"), ["o1", "o1", "o2"]);
}

#[tokio::test]
async fn objects_summarize_as_rays_object_summaries() {
    let summary = listed("/api/v0/objects/summarize").await;
    assert_eq!(summary["warnings"][0], "process 8 on 127.0.0.1 did not answer");
    let cluster = &summary["result"]["node_id_to_summary"]["cluster"];
    assert_eq!(
        (&cluster["total_objects"], &cluster["total_size_mb"], &cluster["callsite_enabled"], &cluster["summary_by"]),
        (&3.into(), &6.0.into(), &false.into(), &"callsite".into())
    );
    let group = &cluster["summary"]["disabled"];
    assert_eq!(
        (&group["total_objects"], &group["total_size_mb"], &group["total_num_workers"], &group["total_num_nodes"]),
        (&3.into(), &6.0.into(), &2.into(), &1.into())
    );
    assert_eq!(group["task_state_counts"], serde_json::json!({"FINISHED": 2, "PENDING": 1}));
    assert_eq!(
        group["ref_type_counts"],
        serde_json::json!({"BORROWED": 1, "LOCAL_REFERENCE": 1, "USED_BY_PENDING_TASK": 1})
    );
    let pending =
        listed("/api/v0/objects/summarize?filter_keys=task_status&filter_predicates=%3D&filter_values=PENDING").await;
    assert_eq!(pending["result"]["node_id_to_summary"]["cluster"]["total_objects"], 1);
}

#[tokio::test]
async fn the_timeline_is_a_bare_list_of_trace_events() {
    let (status, body) = get("/api/v0/tasks/timeline").await;
    assert_eq!((status, &body[0]["name"]), (StatusCode::OK, &Value::from("task::f")));
}

#[tokio::test]
async fn logs_are_listed_by_category_and_found_by_what_wrote_them() {
    let (status, body) = get("/api/v0/logs?node_id=aa").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["result"]["worker_out"], serde_json::json!(["worker-w1-42.out", "worker-w2-43.out"]));
    let (_, body) = get("/api/v0/logs?node_id=aa&glob=*-42.*").await;
    assert_eq!(
        body["data"]["result"],
        serde_json::json!({"worker_err": ["worker-w1-42.err"], "worker_out": ["worker-w1-42.out"]})
    );
    let (status, text, end) = get_text("/api/v0/logs/file?node_id=aa&filename=worker-w2-43.out&offset=5").await;
    assert_eq!((status, text.as_str(), end.as_deref()), (StatusCode::OK, "aa/worker-w2-43.out from 5", Some("99")));
    // The actor a1 runs as pid 42 on node aa; the task t2's last attempt ran there too.
    let (_, text, _) = get_text("/api/v0/logs/file?actor_id=a1&suffix=err").await;
    assert_eq!(text, "aa/worker-w1-42.err from 0");
    let (_, text, _) = get_text("/api/v0/logs/file?task_id=t2").await;
    assert_eq!(text, "aa/worker-w1-42.out from 0");
    for (uri, status) in [
        ("/api/v0/logs", StatusCode::BAD_REQUEST),
        ("/api/v0/logs?node_id=zz", StatusCode::NOT_FOUND),
        ("/api/v0/logs/file?actor_id=nope", StatusCode::NOT_FOUND),
        ("/api/v0/logs/file?lines=many&node_id=aa&filename=x", StatusCode::BAD_REQUEST),
        ("/api/v0/logs/file", StatusCode::BAD_REQUEST),
        // Every fake node is at 127.0.0.1: the address names none of them alone.
        ("/api/v0/logs?node_ip=127.0.0.1", StatusCode::BAD_REQUEST),
        ("/api/v0/logs?node_ip=10.0.0.9", StatusCode::NOT_FOUND),
    ] {
        let (got, body) = get(uri).await;
        assert_eq!(got, status, "{uri}: {body}");
        assert!(!body["msg"].as_str().unwrap_or("").is_empty(), "{uri} says why");
    }
}
