//! The client end of a connection: requests out, each reply back to its waiter.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};

use super::error::RpcError;
use super::framing::{write_loop, Inbound};
use super::grpc::{self, Credentials};
use super::guard::AuthChannel;
use super::request::Request;
use crate::proto::{frame::Body, ErrorCode, Frame};

/// Whether an address names a Unix socket (a path) rather than a TCP `host:port`.
pub fn is_unix_address(addr: &str) -> bool {
    addr.starts_with('/')
}

/// Waiters by request id; `None` once the connection is closed, so a late call fails
/// instead of waiting forever.
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Body>>>>>;

/// The client end of a connection: `request` sends a request and awaits its reply.
/// Cheap to clone; the connection closes when every clone is dropped.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    /// Shared, so that a call holds the address for its errors without copying it.
    addr: Arc<str>,
    tx: mpsc::UnboundedSender<Frame>,
    pending: Pending,
    next_id: AtomicU64,
    closed: watch::Receiver<bool>,
    /// The HTTP/2 connection to a peer on another machine, which its other gRPC
    /// services (the object manager) share.
    channel: Option<AuthChannel>,
}

impl RpcClient {
    /// Connects to `addr`: a Unix socket path (starts with `/`) or a TCP `host:port`
    /// of another machine's gRPC server, presenting this process's credentials there.
    pub async fn connect(addr: &str) -> Result<Self, RpcError> {
        if is_unix_address(addr) {
            let stream = UnixStream::connect(Path::new(addr))
                .await
                .map_err(|source| RpcError::Connect { addr: addr.to_string(), source })?;
            let (read_half, write_half) = tokio::io::split(stream);
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_loop(write_half, rx));
            Ok(Self::start(addr, tx, Inbound::socket(read_half), None))
        } else {
            Self::connect_grpc(addr, &Credentials::of_process()?).await
        }
    }

    /// Connects to another machine's gRPC server at `addr` (`host:port`), presenting
    /// `credentials`.
    pub async fn connect_grpc(addr: &str, credentials: &Credentials) -> Result<Self, RpcError> {
        let (tx, replies, channel) = grpc::converse(addr, credentials).await?;
        Ok(Self::start(addr, tx, Inbound::Grpc(replies), Some(channel)))
    }

    /// Starts the task that hands each reply to its waiter.
    fn start(addr: &str, tx: mpsc::UnboundedSender<Frame>, mut inbound: Inbound, channel: Option<AuthChannel>) -> Self {
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (closed_tx, closed_rx) = watch::channel(false);
        let reader_pending = pending.clone();
        tokio::spawn(async move {
            while let Some(frame) = inbound.next().await {
                let Some(body) = frame.body else { continue };
                let waiter = reader_pending.lock().ok().and_then(|mut p| p.as_mut().and_then(|p| p.remove(&frame.id)));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(body);
                }
            }
            // Dropping the senders wakes every waiter with a disconnect.
            if let Ok(mut p) = reader_pending.lock() {
                *p = None;
            }
            let _ = closed_tx.send(true);
        });
        Self {
            inner: Arc::new(ClientInner {
                addr: Arc::from(addr),
                tx,
                pending,
                next_id: AtomicU64::new(1),
                closed: closed_rx,
                channel,
            }),
        }
    }

    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// The gRPC channel of a connection to another machine (None for a Unix socket),
    /// presenting the same token.
    pub fn channel(&self) -> Option<AuthChannel> {
        self.inner.channel.clone()
    }

    /// Queues `body` as a request; the receiver yields its reply, `None` when the
    /// connection is closed.
    fn enqueue(&self, body: Body) -> Option<oneshot::Receiver<Body>> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.inner.pending.lock().ok()?;
            pending.as_mut()?.insert(id, tx);
        }
        if self.inner.tx.send(Frame { id, body: Some(body) }).is_ok() {
            return Some(rx);
        }
        if let Ok(mut p) = self.inner.pending.lock() {
            if let Some(p) = p.as_mut() {
                p.remove(&id);
            }
        }
        None
    }

    /// Sends a frame body as a request and returns a future for the body of its
    /// reply (an error reply is the future's error). The request is queued before this
    /// returns, so calls made in order are sent in order. For passing a request on
    /// untouched; a caller that knows its request uses `start_request`.
    pub fn start_call(&self, body: Body) -> impl Future<Output = Result<Body, RpcError>> + Send + 'static {
        let reply = self.enqueue(body);
        let addr = self.inner.addr.clone();
        async move { reply_body(reply, &addr).await }
    }

    /// Sends `request` and returns a future for its reply. The request is queued
    /// before this returns, so requests made in order are sent in order.
    pub fn start_request<R: Request>(
        &self,
        request: R,
    ) -> impl Future<Output = Result<R::Reply, RpcError>> + Send + 'static {
        let reply = self.enqueue(request.into());
        let addr = self.inner.addr.clone();
        async move {
            let body = reply_body(reply, &addr).await?;
            R::reply_from(body).ok_or_else(|| RpcError::UnexpectedReply { request: R::NAME, from: addr.to_string() })
        }
    }

    /// Sends `request` and waits for its reply.
    pub async fn request<R: Request>(&self, request: R) -> Result<R::Reply, RpcError> {
        self.start_request(request).await
    }

    /// One-way message: no reply is expected.
    pub fn send(&self, message: impl Into<Body>) -> Result<(), RpcError> {
        self.inner
            .tx
            .send(Frame { id: 0, body: Some(message.into()) })
            .map_err(|_| RpcError::Disconnected(self.inner.addr.to_string()))
    }

    pub fn is_closed(&self) -> bool {
        *self.inner.closed.borrow()
    }

    /// Resolves when the peer has gone away.
    pub async fn closed(&self) {
        let mut rx = self.inner.closed.clone();
        while !*rx.borrow() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The body of the reply `reply` brings: an error reply, or none because the
/// connection closed, is an error.
async fn reply_body(reply: Option<oneshot::Receiver<Body>>, addr: &str) -> Result<Body, RpcError> {
    let disconnected = || RpcError::Disconnected(addr.to_string());
    match reply.ok_or_else(disconnected)?.await {
        Ok(Body::Error(e)) => Err(RpcError::Remote {
            code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal),
            message: e.message,
        }),
        Ok(body) => Ok(body),
        Err(_) => Err(disconnected()),
    }
}

/// Open connections by address, reused across calls and re-opened once closed.
#[derive(Default)]
pub struct ConnectionCache {
    clients: Mutex<HashMap<String, RpcClient>>,
}

impl ConnectionCache {
    pub async fn get(&self, addr: &str) -> Result<RpcClient, RpcError> {
        let cached = self.clients.lock().ok().and_then(|c| c.get(addr).cloned());
        if let Some(client) = cached {
            if !client.is_closed() {
                return Ok(client);
            }
        }
        let client = RpcClient::connect(addr).await?;
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(addr.to_string(), client.clone());
        }
        Ok(client)
    }
}
