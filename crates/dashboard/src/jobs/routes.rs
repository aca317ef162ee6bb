//! Ray's Jobs REST API on the dashboard port (`dashboard/modules/job/job_head.py`):
//! JSON answers in Ray's shapes, errors as plain text with Ray's status codes (404 for
//! an unknown job, 400 for a bad request), so Ray's own `JobSubmissionClient` and
//! `ray job` work against an rtd head.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::manager::{read_log, JobError, JobManager};
use super::record::SubmitRequest;

type Shared = Arc<JobManager>;

/// Ray's Jobs API version (`dashboard/modules/version.py`): 4 has DELETE.
const API_VERSION: &str = "4";
/// The Ray release whose API rtd serves; Ray's client refuses servers older than 2.0.
pub const RAY_VERSION: &str = "2.60.0";
/// The most bytes one package upload may carry (a working_dir is limited to 500 MiB).
const MAX_PACKAGE_BYTES: usize = 512 << 20;
/// How often a log tail looks for more output.
const TAIL_INTERVAL: Duration = Duration::from_millis(200);
/// The response header that says where a log read ended (`?offset=` reads on).
const END_OFFSET: HeaderName = HeaderName::from_static("x-rtd-end-offset");

pub fn router(manager: Arc<JobManager>) -> Router {
    Router::new()
        .route("/api/version", get(version))
        .route(
            "/api/packages/{protocol}/{package_name}",
            get(package_exists).put(upload_package).layer(DefaultBodyLimit::max(MAX_PACKAGE_BYTES)),
        )
        .route("/api/jobs/", get(list_jobs).post(submit_job))
        .route("/api/jobs", get(list_jobs).post(submit_job))
        .route("/api/jobs/{id}", get(get_job).delete(delete_job))
        .route("/api/jobs/{id}/stop", post(stop_job))
        .route("/api/jobs/{id}/logs", get(job_logs))
        .route("/api/jobs/{id}/logs/tail", get(tail_logs))
        .with_state(manager)
}

/// A refusal as Ray words it: plain text.
fn refuse(status: StatusCode, text: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

impl IntoResponse for JobError {
    fn into_response(self) -> Response {
        let status = match &self {
            JobError::NotFound(_) => StatusCode::NOT_FOUND,
            JobError::BadRequest(_) => StatusCode::BAD_REQUEST,
        };
        refuse(status, self.to_string())
    }
}

/// Runs `work` (KV reads, files) off the daemon's runtime thread.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, Response> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| refuse(StatusCode::SERVICE_UNAVAILABLE, format!("the jobs API could not answer: {e}")))
}

async fn version(State(jobs): State<Shared>) -> Response {
    Json(json!({
        "version": API_VERSION,
        "ray_version": RAY_VERSION,
        "ray_commit": format!("rtd-{}", env!("CARGO_PKG_VERSION")),
        "session_name": jobs.cluster_id(),
    }))
    .into_response()
}

/// A package's URI from its URL (`gcs://_ray_pkg_<hash>.zip`), as Ray's
/// `http_uri_components_to_uri`; only the GCS holds uploaded packages.
fn package_uri(protocol: &str, name: &str) -> Result<String, JobError> {
    if protocol != "gcs" {
        return Err(JobError::BadRequest(format!("packages are kept in the GCS only, not {protocol:?}")));
    }
    if !(name.ends_with(".zip") || name.ends_with(".whl")) || name.contains('/') {
        return Err(JobError::BadRequest(format!("package name {name:?} must end in .zip or .whl")));
    }
    Ok(format!("{protocol}://{name}"))
}

async fn package_exists(State(jobs): State<Shared>, Path((protocol, name)): Path<(String, String)>) -> Response {
    let uri = match package_uri(&protocol, &name) {
        Ok(uri) => uri,
        Err(e) => return e.into_response(),
    };
    if jobs.has_package(&uri) {
        StatusCode::OK.into_response()
    } else {
        refuse(StatusCode::NOT_FOUND, format!("Package {uri} does not exist"))
    }
}

async fn upload_package(
    State(jobs): State<Shared>,
    Path((protocol, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let uri = match package_uri(&protocol, &name) {
        Ok(uri) => uri,
        Err(e) => return e.into_response(),
    };
    jobs.put_package(&uri, body.to_vec()).await;
    StatusCode::OK.into_response()
}

async fn submit_job(State(jobs): State<Shared>, body: Bytes) -> Response {
    let request = match SubmitRequest::parse(&body) {
        Ok(request) => request,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, why),
    };
    match jobs.submit(request).await {
        Ok(id) => Json(json!({"job_id": id, "submission_id": id})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn list_jobs(State(jobs): State<Shared>) -> Response {
    let manager = jobs.clone();
    let answer = blocking(move || manager.list()).await;
    // What was read is durable before it is told (see `JobManager::durable`).
    jobs.durable().await;
    match answer {
        Ok(list) => Json(list).into_response(),
        Err(refusal) => refusal,
    }
}

async fn get_job(State(jobs): State<Shared>, Path(id): Path<String>) -> Response {
    let manager = jobs.clone();
    let answer = blocking(move || manager.get(&id)).await;
    jobs.durable().await;
    match answer {
        Ok(Ok(job)) => Json(job).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(refusal) => refusal,
    }
}

async fn stop_job(State(jobs): State<Shared>, Path(id): Path<String>) -> Response {
    match blocking(move || jobs.stop(&id)).await {
        Ok(Ok(stopped)) => Json(json!({ "stopped": stopped })).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(refusal) => refusal,
    }
}

async fn delete_job(State(jobs): State<Shared>, Path(id): Path<String>) -> Response {
    match blocking(move || jobs.delete(&id)).await {
        Ok(Ok(deleted)) => Json(json!({ "deleted": deleted })).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(refusal) => refusal,
    }
}

#[derive(serde::Deserialize)]
struct LogQuery {
    /// rtd's: read on from this byte (the `x-rtd-end-offset` of the last read), at
    /// most a MiB at a time. Without it, the whole log (Ray's answer).
    offset: Option<u64>,
}

/// Ray's `{"logs": text}`; the header `x-rtd-end-offset` says where the text ends.
async fn job_logs(State(jobs): State<Shared>, Path(id): Path<String>, Query(query): Query<LogQuery>) -> Response {
    let read = blocking(move || {
        let record = jobs.submission(&id)?;
        Ok::<_, JobError>(read_log(
            std::path::Path::new(&record.log_path),
            query.offset.unwrap_or(0),
            query.offset.is_some(),
        ))
    })
    .await;
    match read {
        Ok(Ok((logs, end))) => ([(END_OFFSET, end.to_string())], Json(json!({ "logs": logs }))).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(refusal) => refusal,
    }
}

/// Ray's log tail: a websocket that carries the log as text messages while the job
/// runs, and closes once it has ended and all of its log was sent.
async fn tail_logs(State(jobs): State<Shared>, Path(id): Path<String>, upgrade: WebSocketUpgrade) -> Response {
    let lookup = jobs.clone();
    let record = match blocking(move || lookup.submission(&id)).await {
        Ok(Ok(record)) => record,
        Ok(Err(e)) => return e.into_response(),
        Err(refusal) => return refusal,
    };
    upgrade.on_upgrade(move |socket| follow(socket, jobs, record.submission_id))
}

async fn follow(mut socket: WebSocket, jobs: Shared, submission_id: String) {
    let mut offset = 0;
    loop {
        // The status first: a job that had ended before this read has all its log in.
        let lookup = jobs.clone();
        let id = submission_id.clone();
        let Ok(Some(record)) = blocking(move || lookup.record(&id)).await else { break };
        let ended = record.status.is_terminal();
        let path = std::path::PathBuf::from(&record.log_path);
        let Ok((text, end)) = blocking(move || read_log(&path, offset, true)).await else { break };
        let more = end > offset;
        offset = end;
        if !text.is_empty() && socket.send(Message::Text(text.into())).await.is_err() {
            return;
        }
        if ended && !more {
            break;
        }
        if !more {
            tokio::time::sleep(TAIL_INTERVAL).await;
        }
    }
    // A normal close (1000), as aiohttp ends Ray's tail; Ray's client treats any other
    // end as an error. Then the client's answering close frame, within a bound.
    let normal = CloseFrame { code: close_code::NORMAL, reason: "".into() };
    if socket.send(Message::Close(Some(normal))).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(5), async { while let Some(Ok(_)) = socket.recv().await {} })
            .await;
    }
}
