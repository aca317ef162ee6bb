//! The bridge between machines: the same frames as the messages of one bidirectional
//! gRPC call (`NodeLink.Converse`) per connection, over tonic.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Router;
use tonic::transport::{Channel, Endpoint, Server};

use super::error::{describe_error, RpcError};
use super::framing::{Inbound, MAX_FRAME};
use super::server::{run_connection, Service};
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

/// Opens a `NodeLink.Converse` call to `addr` (`host:port`): the sender of this end's
/// frames, the stream of the peer's, and the HTTP/2 channel other services can share.
pub(super) async fn converse(
    addr: &str,
) -> Result<(mpsc::UnboundedSender<Frame>, tonic::Streaming<Frame>, Channel), RpcError> {
    let error = |message: String| RpcError::Connect { addr: addr.to_string(), source: std::io::Error::other(message) };
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| error(format!("not a host:port address ({})", describe_error(&e))))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_HTTP2_FRAME)
        .connect()
        .await
        .map_err(|e| error(describe_error(&e)))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let replies = NodeLinkClient::new(channel.clone())
        .max_decoding_message_size(MAX_FRAME)
        .max_encoding_message_size(MAX_FRAME)
        .converse(UnboundedReceiverStream::new(rx))
        .await
        .map_err(|status| error(status.message().to_string()))?
        .into_inner();
    Ok((tx, replies, channel))
}

/// A gRPC server configured as every rtd node-to-node server is.
pub fn grpc_server() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_HTTP2_FRAME)
}

/// `service` as the gRPC `NodeLink` service, for a router that offers more services.
pub fn link_service<S: Service>(service: Arc<S>) -> NodeLinkServer<Link<S>> {
    NodeLinkServer::new(Link(service)).max_decoding_message_size(MAX_FRAME).max_encoding_message_size(MAX_FRAME)
}

/// Serves gRPC on an already bound TCP listener until the task is dropped.
pub async fn serve_grpc(listener: TcpListener, router: Router) {
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
