//! `/metrics` over HTTP: the route (for any axum server that wants to serve it, such as
//! the dashboard's) and the node's own metrics server on `--metrics-export-port`,
//! which asks for the cluster's token when auth is on.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::header;
use axum::routing::get;
use axum::Router;
use rtd_common::auth::{warn_if_exposed, HttpAuthLayer, Policy};
use tokio::net::TcpListener;

use crate::registry::MetricsRegistry;

/// Prometheus's text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics` rendering `registry`; merge it into another router to serve it there.
pub fn router(registry: Arc<MetricsRegistry>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], registry.render()) }
        }),
    )
}

/// Binds the metrics port on `host`: `port`, or one the system picks when None.
pub async fn bind(host: &str, port: Option<u16>) -> std::io::Result<TcpListener> {
    TcpListener::bind((host, port.unwrap_or(0))).await
}

/// Serves `/metrics` on `listener` until the task is aborted.
pub fn serve(listener: TcpListener, registry: Arc<MetricsRegistry>) -> tokio::task::JoinHandle<()> {
    if let Ok(addr) = listener.local_addr() {
        warn_if_exposed("the metrics endpoint", addr);
    }
    let app = router(registry).layer(HttpAuthLayer::new(Policy::from_process()));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await {
            tracing::error!("the metrics endpoint stopped serving: {e}");
        }
    })
}
