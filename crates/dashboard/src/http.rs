//! The HTTP routes: the state API, the overview, and the dashboard's own files.
//!
//! Every JSON answer has Ray's envelope, `{"result": bool, "msg": str, "data": {...}}`;
//! a request the server cannot answer gets `result: false` with a message that names
//! what was wrong and a 4xx status, never a 500.
//!
//! Reading and filtering the tables runs on a blocking thread: the head daemon's async
//! runtime (one thread) also runs the GCS and the raylet, which a request for thousands
//! of rows must not hold up.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::logs::{self, categorize, LogQuery, LogQueryError};
use crate::overview::cluster_status;
use crate::query::{ListOptions, QueryError};
use crate::resources::{resource, Resource, RESOURCES};
use crate::state::{ClusterState, LogError};

type Shared = Arc<dyn ClusterState>;

/// One file of `crates/dashboard/static/`: (its name, content type, bytes).
macro_rules! embed {
    ($name:literal, $content_type:expr) => {
        ($name, $content_type, include_bytes!(concat!("../static/", $name)))
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// The dashboard's files, built into the binary so they ship with it: (path under
/// `/static/`, content type, bytes). The pages are JavaScript modules, which browsers
/// run only when served with a JavaScript content type.
pub(crate) const STATIC_FILES: &[(&str, &str, &[u8])] = &[
    embed!("index.html", "text/html; charset=utf-8"),
    embed!("style.css", "text/css; charset=utf-8"),
    embed!("app.js", JS),
    embed!("lib.js", JS),
    embed!("overview.js", JS),
    embed!("jobs.js", JS),
    embed!("actors.js", JS),
    embed!("tasks.js", JS),
    embed!("placement_groups.js", JS),
    embed!("objects.js", JS),
    embed!("logs.js", JS),
    embed!("timeline.js", JS),
];

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(|| static_file(Path("index.html".to_string()))))
        .route("/static/{*path}", get(static_file))
        .route("/api/cluster_status", get(overview))
        .route("/api/v0/tasks/timeline", get(timeline))
        .route("/api/v0/logs", get(list_logs))
        .route("/api/v0/logs/file", get(log_file))
        .route("/api/v0/{resource}", get(list))
        .route("/api/v0/{resource}/summarize", get(summarize))
        .fallback(|| async { not_found("no such endpoint".into()) })
        .with_state(state)
}

fn success(data: Value) -> Response {
    Json(json!({"result": true, "msg": "", "data": data})).into_response()
}

/// A request the API cannot answer: its status and what was wrong.
struct ApiError {
    status: StatusCode,
    msg: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"result": false, "msg": self.msg, "data": {}}))).into_response()
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        Self { status: StatusCode::BAD_REQUEST, msg: e.to_string() }
    }
}

fn not_found(msg: String) -> ApiError {
    ApiError { status: StatusCode::NOT_FOUND, msg }
}

/// Runs `read` over the cluster's state on a blocking thread.
async fn read_state<T: Send + 'static>(
    state: Shared,
    read: impl FnOnce(&dyn ClusterState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || read(state.as_ref())).await.map_err(|e| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        msg: format!("the state API could not read the cluster's state: {e}"),
    })?
}

fn find(name: &str) -> Result<&'static Resource, ApiError> {
    resource(name).ok_or_else(|| {
        let known: Vec<&str> = RESOURCES.iter().map(|r| r.name).collect();
        not_found(format!("unknown resource {name:?}; the state API has {}", known.join(", ")))
    })
}

async fn list(
    State(state): State<Shared>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let resource = find(&name)?;
    let options = ListOptions::from_query(query.as_deref())?;
    let listed = read_state(state, move |state| Ok(resource.list(state, &options)?)).await?;
    Ok(success(json!({ "result": listed })))
}

async fn summarize(
    State(state): State<Shared>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let resource = find(&name)?;
    let options = ListOptions::from_query(query.as_deref())?;
    let summary = read_state(state, move |state| match resource.summarize(state, &options) {
        Some(summary) => Ok(summary?),
        None => Err(not_found(format!("{name} have no summary"))),
    })
    .await?;
    Ok(success(json!({ "result": summary })))
}

/// Ray's `/api/v0/tasks/timeline`: the Chrome-trace events as a bare JSON list.
async fn timeline(State(state): State<Shared>) -> Result<Response, ApiError> {
    Ok(Json(read_state(state, |state| Ok(state.timeline())).await?).into_response())
}

impl From<LogQueryError> for ApiError {
    fn from(e: LogQueryError) -> Self {
        let status = match &e {
            LogQueryError::Bad(_) | LogQueryError::Log(LogError::Invalid(_)) => StatusCode::BAD_REQUEST,
            LogQueryError::Log(LogError::NotFound(_)) => StatusCode::NOT_FOUND,
            LogQueryError::Log(LogError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self { status, msg: e.to_string() }
    }
}

/// How long a log request waits for the node that has the file.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

/// `/api/v0/logs?node_id=...[&glob=...]`: the node's log files by Ray's categories.
async fn list_logs(State(state): State<Shared>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let q = LogQuery::from_query(query.as_deref())?;
    let files = read_state(state, move |state| Ok(logs::list(state, &q, LOG_TIMEOUT)?)).await?;
    Ok(success(json!({ "result": categorize(files) })))
}

/// `/api/v0/logs/file?...`: the log's text; the header `x-rtd-end-offset` says where
/// a follower asks on from (`offset=`).
async fn log_file(State(state): State<Shared>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let q = LogQuery::from_query(query.as_deref())?;
    let (data, end) = read_state(state, move |state| Ok(logs::read(state, q, LOG_TIMEOUT)?)).await?;
    let headers = [(header::CONTENT_TYPE, "text/plain; charset=utf-8".to_string()), (END_OFFSET, end.to_string())];
    Ok((headers, data).into_response())
}

/// The response header that carries where a log read ended.
const END_OFFSET: header::HeaderName = header::HeaderName::from_static("x-rtd-end-offset");

async fn overview(State(state): State<Shared>) -> Result<Response, ApiError> {
    Ok(success(read_state(state, |state| Ok(cluster_status(state))).await?))
}

async fn static_file(Path(path): Path<String>) -> Result<Response, ApiError> {
    match STATIC_FILES.iter().find(|(name, _, _)| *name == path) {
        Some((_, content_type, bytes)) => Ok(([(header::CONTENT_TYPE, *content_type)], *bytes).into_response()),
        None => Err(not_found(format!("no static file {path:?}"))),
    }
}
