//! The bridge between machines: the same frames as the messages of one bidirectional
//! gRPC call (`NodeLink.Converse`) per connection, over tonic, with the auth token
//! and, optionally, TLS.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Router;
use tonic::transport::{Endpoint, Server};
use tower::layer::util::{Identity, Stack};

use super::error::{describe_error, RpcError};
use super::framing::{Inbound, MAX_FRAME};
use super::guard::{authorized, AuthChannel, GrpcAuthLayer};
use super::server::{run_connection, Service};
use super::tls::{self, TlsSettings};
use crate::auth::{self, AuthToken, Policy};
use crate::proto::node_link_client::NodeLinkClient;
use crate::proto::node_link_server::{NodeLink, NodeLinkServer};
use crate::proto::Frame;

/// How long connecting to another machine may take before it counts as unreachable.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 flow-control windows between nodes: large enough that streaming an object's
/// chunks is not throttled to one round trip per 64 KiB.
const STREAM_WINDOW: u32 = 8 << 20;
const CONNECTION_WINDOW: u32 = 32 << 20;
/// HTTP/2 frames up to 1 MiB (the default is 16 KiB): an object chunk crosses in a few
/// frames instead of hundreds.
const MAX_HTTP2_FRAME: u32 = 1 << 20;

/// What this end presents to a peer on another machine: the auth token, and TLS.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub token: Option<AuthToken>,
    pub tls: Option<TlsSettings>,
}

impl Credentials {
    /// This process's token and TLS settings (`RTD_AUTH_*`, `RTD_USE_TLS`...).
    pub fn of_process() -> Result<Self, RpcError> {
        let tls = tls::process().as_ref().map_err(|e| RpcError::Tls(e.to_string()))?;
        Ok(Credentials { token: auth::process_token(), tls: tls.clone() })
    }
}

/// Opens a `NodeLink.Converse` call to `addr` (`host:port`), presenting `credentials`:
/// the sender of this end's frames, the stream of the peer's, and the HTTP/2 channel
/// other services can share.
pub(super) async fn converse(
    addr: &str,
    credentials: &Credentials,
) -> Result<(mpsc::UnboundedSender<Frame>, tonic::Streaming<Frame>, AuthChannel), RpcError> {
    let error = |message: String| RpcError::Connect { addr: addr.to_string(), source: std::io::Error::other(message) };
    let scheme = if credentials.tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| error(format!("not a host:port address ({})", describe_error(&e))))?;
    if let Some(tls) = &credentials.tls {
        endpoint = endpoint.tls_config(tls.client.clone()).map_err(|e| RpcError::Tls(describe_error(&e)))?;
    }
    let channel = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_HTTP2_FRAME)
        .connect()
        .await
        .map_err(|e| error(describe_error(&e)))?;
    let channel = authorized(channel, credentials.token.as_ref());
    let (tx, rx) = mpsc::unbounded_channel();
    let replies = NodeLinkClient::new(channel.clone())
        .max_decoding_message_size(MAX_FRAME)
        .max_encoding_message_size(MAX_FRAME)
        .converse(UnboundedReceiverStream::new(rx))
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unauthenticated => {
                RpcError::Unauthenticated { addr: addr.to_string(), message: status.message().to_string() }
            }
            _ => error(status.message().to_string()),
        })?
        .into_inner();
    Ok((tx, replies, channel))
}

/// An rtd gRPC server, with the layers every one runs calls through.
pub type GrpcServer = Server<Stack<GrpcAuthLayer, Identity>>;
/// The services of a `GrpcServer`.
pub type GrpcRouter = Router<Stack<GrpcAuthLayer, Identity>>;

/// A gRPC server configured as every rtd node-to-node server is, with this process's
/// auth and TLS configuration.
pub fn grpc_server() -> Result<GrpcServer, RpcError> {
    let tls = tls::process().as_ref().map_err(|e| RpcError::Tls(e.to_string()))?;
    grpc_server_with(Policy::from_process(), tls.as_ref())
}

/// A gRPC server configured as every rtd node-to-node server is, letting in the calls
/// `policy` lets in, over TLS when `tls` is given.
pub fn grpc_server_with(policy: Policy, tls: Option<&TlsSettings>) -> Result<GrpcServer, RpcError> {
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls.server.clone()).map_err(|e| RpcError::Tls(describe_error(&e)))?;
    }
    Ok(server
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_HTTP2_FRAME)
        .layer(GrpcAuthLayer::new(policy)))
}

/// `service` as the gRPC `NodeLink` service, for a router that offers more services.
pub fn link_service<S: Service>(service: Arc<S>) -> NodeLinkServer<Link<S>> {
    NodeLinkServer::new(Link(service)).max_decoding_message_size(MAX_FRAME).max_encoding_message_size(MAX_FRAME)
}

/// Serves gRPC on an already bound TCP listener until the task is dropped.
pub async fn serve_grpc(listener: TcpListener, router: GrpcRouter) {
    let incoming = TcpListenerStream::new(listener).map(|stream| {
        if let Ok(s) = &stream {
            let _ = s.set_nodelay(true);
        }
        stream
    });
    if let Err(e) = router.serve_with_incoming(incoming).await {
        tracing::warn!("gRPC server stopped: {}", describe_error(&e));
    }
}

/// The gRPC face of a `Service`: each `Converse` call is one connection.
pub struct Link<S>(Arc<S>);

type FrameStream = Pin<Box<dyn Stream<Item = Result<Frame, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl<S: Service> NodeLink for Link<S> {
    type ConverseStream = FrameStream;

    async fn converse(
        &self,
        request: tonic::Request<tonic::Streaming<Frame>>,
    ) -> Result<tonic::Response<FrameStream>, tonic::Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_connection(self.0.clone(), Inbound::Grpc(request.into_inner()), tx));
        Ok(tonic::Response::new(Box::pin(UnboundedReceiverStream::new(rx).map(Ok))))
    }
}
