//! Where the dashboard listens. Ray's default port (8265) is often taken when several
//! clusters run on one machine (tests do that): then the next free port serves, and the
//! log says so. A port the user asked for is theirs or an error.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;

use rtd_common::auth::{warn_if_exposed, HttpAuthLayer, Policy};
use tokio::net::TcpListener;

use crate::state::ClusterState;

/// Ray's dashboard port.
pub const DEFAULT_PORT: u16 = 8265;
/// How many ports past a busy default are tried before the system picks one.
const PORTS_TRIED: u16 = 100;

/// The port to serve on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// Preferred; a later one is taken if it is busy.
    Default(u16),
    /// Exactly this one (`--dashboard-port`).
    Explicit(u16),
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("the dashboard port {host}:{port} is already in use; choose another with --dashboard-port")]
    PortInUse { host: String, port: u16 },
    #[error("cannot serve the dashboard on {host}:{port}: {source}")]
    Io { host: String, port: u16, source: std::io::Error },
}

async fn try_bind(host: &str, port: u16) -> Result<TcpListener, BindError> {
    TcpListener::bind((host, port)).await.map_err(|source| match source.kind() {
        ErrorKind::AddrInUse => BindError::PortInUse { host: host.to_string(), port },
        _ => BindError::Io { host: host.to_string(), port, source },
    })
}

/// Binds the dashboard's listener on `host`.
pub async fn bind(host: &str, port: Port) -> Result<TcpListener, BindError> {
    let preferred = match port {
        Port::Explicit(port) => return try_bind(host, port).await,
        Port::Default(port) => port,
    };
    let candidates = (0..PORTS_TRIED).filter_map(|i| preferred.checked_add(i)).chain([0]);
    let mut last = None;
    for candidate in candidates {
        match try_bind(host, candidate).await {
            Ok(listener) => {
                if candidate != preferred {
                    let port = listener.local_addr().map(|a| a.port()).unwrap_or(candidate);
                    tracing::warn!("dashboard port {preferred} is in use; serving the dashboard on port {port}");
                }
                return Ok(listener);
            }
            Err(e @ BindError::PortInUse { .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(BindError::PortInUse { host: host.to_string(), port: preferred }))
}

/// Serves the dashboard on `listener` until the task is aborted, with the routes of
/// `also` beside its own (the head's `/metrics`). With auth on, every route asks for
/// the cluster's token (a browser gets a login page).
pub fn serve(listener: TcpListener, state: Arc<dyn ClusterState>, also: axum::Router) -> tokio::task::JoinHandle<()> {
    if let Ok(addr) = listener.local_addr() {
        warn_if_exposed("the dashboard", addr);
    }
    let app = crate::http::router(state).merge(also).layer(HttpAuthLayer::new(Policy::from_process()));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await {
            tracing::error!("the dashboard stopped serving: {e}");
        }
    })
}
