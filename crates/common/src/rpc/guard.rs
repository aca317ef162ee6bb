//! Token authentication on gRPC: the layer every rtd gRPC server runs its calls
//! through, and the interceptor every client channel adds the token with.
//!
//! The check reads the call's headers before any service sees the call, so a refused
//! peer's request is never decoded. A `NodeLink.Converse` call lasts as long as its
//! connection, so the cost is one comparison per connection, not per frame.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::Channel;

use crate::auth::{AuthToken, Policy};

/// Server side: calls that do not present the token are answered `UNAUTHENTICATED`.
#[derive(Clone)]
pub struct GrpcAuthLayer {
    policy: Arc<Policy>,
}

impl GrpcAuthLayer {
    pub fn new(policy: Policy) -> Self {
        Self { policy: Arc::new(policy) }
    }
}

impl<S> tower::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;
    fn layer(&self, inner: S) -> GrpcAuth<S> {
        GrpcAuth { inner, policy: self.policy.clone() }
    }
}

#[derive(Clone)]
pub struct GrpcAuth<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S, B> tower::Service<http::Request<B>> for GrpcAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let extensions = request.extensions();
        let peer = extensions
            .get::<TcpConnectInfo>()
            .and_then(|c| c.remote_addr())
            .or_else(|| extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|c| c.get_ref().remote_addr()));
        match self.policy.check(request.headers(), peer) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(message) => Box::pin(std::future::ready(Ok(tonic::Status::unauthenticated(message).into_http()))),
        }
    }
}

/// Client side: adds `authorization: Bearer <token>` to every call (nothing with auth
/// off).
#[derive(Clone)]
pub struct PresentToken(Option<AsciiMetadataValue>);

impl PresentToken {
    pub fn new(token: Option<&AuthToken>) -> Self {
        // A token is printable ASCII (checked when read), so it always makes a value.
        Self(token.and_then(|t| MetadataValue::try_from(t.bearer()).ok()))
    }
}

impl tonic::service::Interceptor for PresentToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel to another machine that presents this process's token on every call:
/// what gRPC clients of rtd's services (the node link, the object manager) run on.
pub type AuthChannel = InterceptedService<Channel, PresentToken>;

/// `channel`, presenting `token` on every call.
pub fn authorized(channel: Channel, token: Option<&AuthToken>) -> AuthChannel {
    InterceptedService::new(channel, PresentToken::new(token))
}
