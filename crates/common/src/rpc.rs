//! Request/reply between rtd processes: protobuf `Frame`s over a Unix socket on one
//! machine, and over a tonic gRPC stream between machines.
//!
//! Every conversation in rtd (driver and workers with their node daemon, plasma clients
//! with the store, a submitter with the worker it leased, a borrower with an object's
//! owner, a node with the head's GCS) is a stream of `Frame`s. A request carries a
//! non-zero id and its reply the same id, so many requests can be in flight on one
//! connection and replies may come back in any order (a lease request waits for
//! resources while a plasma seal does not). Id 0 marks a one-way message.
//!
//! On a Unix socket a frame is a little-endian `u32` length, then the encoded message.
//! Between machines the same frames travel as the messages of one bidirectional gRPC
//! call (`NodeLink.Converse`) per connection: HTTP/2 does the framing and flow control,
//! and the call's lifetime is the connection's, so a server still sees its peer leave.
//!
//! The server side calls the handler inline, in arrival order, so state changes keep
//! the order the client sent them in; a handler that must wait returns a future, which
//! runs as its own task and replies when it is done.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Router;
use tonic::transport::{Channel, Endpoint, Server};

use crate::proto::node_link_client::NodeLinkClient;
use crate::proto::node_link_server::{NodeLink, NodeLinkServer};
use crate::proto::{frame::Body, ErrorCode, ErrorReply, Frame};

/// The largest frame a peer may send (as Ray's gRPC message limit). Objects move
/// through the store or in object-manager chunks, so frames come nowhere near it.
pub const MAX_FRAME: usize = 512 << 20;
/// How many more bytes a connection's read buffer makes room for at a time.
const READ_CHUNK: usize = 64 << 10;
/// How long connecting to another machine may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 flow-control windows between nodes: large enough that streaming an object's
/// chunks is not throttled to one round trip per 64 KiB.
const STREAM_WINDOW: u32 = 8 << 20;
const CONNECTION_WINDOW: u32 = 32 << 20;
/// HTTP/2 frames up to 1 MiB (the default is 16 KiB): an object chunk crosses in a few
/// frames instead of hundreds.
const MAX_HTTP2_FRAME: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("connection to {0} is closed")]
    Disconnected(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("{message}")]
    Remote { code: ErrorCode, message: String },
    #[error("unexpected reply from {0}")]
    UnexpectedReply(String),
}

impl RpcError {
    pub fn code(&self) -> ErrorCode {
        match self {
            RpcError::Remote { code, .. } => *code,
            RpcError::Disconnected(_) => ErrorCode::WorkerDied,
            _ => ErrorCode::Internal,
        }
    }
}

pub fn error_body(code: ErrorCode, message: impl Into<String>) -> Body {
    Body::Error(ErrorReply { code: code as i32, message: message.into() })
}

/// An error and its causes on one line (tonic's own message is only "transport error").
pub fn describe_error(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
    }
    text
}

/// Why a peer's bytes cannot be read as frames. Each closes that one connection: the
/// stream has no way to find the next frame boundary after either.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge { len: usize },
    #[error("frame does not decode: {0}")]
    Garbled(#[from] prost::DecodeError),
}

/// Takes the first complete frame off the front of `buf`; `Ok(None)` while more bytes
/// are needed. Bytes after that frame stay in `buf`.
pub fn decode_frame(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    let Some(prefix) = buf.first_chunk::<4>() else { return Ok(None) };
    let len = u32::from_le_bytes(*prefix) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge { len });
    }
    if buf.len() - 4 < len {
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(Frame::decode(buf.split_to(len).freeze())?))
}

async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut BytesMut) -> std::io::Result<Option<Frame>> {
    loop {
        if let Some(frame) = decode_frame(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))? {
            return Ok(Some(frame));
        }
        // Room in proportion to what has arrived, not to what the prefix announces: a
        // peer that announces a huge frame must send its bytes before we hold memory
        // for them. Doubling keeps a large frame to a few reads.
        buf.reserve(READ_CHUNK.max(buf.len()));
        if reader.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Drains `rx` into the socket, flushing only when no more frames are queued so that
/// bursts of small messages go out in few syscalls.
async fn write_loop<W: AsyncWrite + Unpin>(writer: W, mut rx: mpsc::UnboundedReceiver<Frame>) {
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    let mut scratch = Vec::with_capacity(4096);
    while let Some(frame) = rx.recv().await {
        let mut next = Some(frame);
        while let Some(f) = next {
            scratch.clear();
            let len = f.encoded_len() as u32;
            scratch.extend_from_slice(&len.to_le_bytes());
            if f.encode(&mut scratch).is_err() || writer.write_all(&scratch).await.is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
    // Every sender is gone: close our direction so the peer sees the end even though
    // the read half (held by the reader task) keeps the socket open.
    let _ = writer.shutdown().await;
}

/// Where a connection's incoming frames come from.
enum Inbound {
    Socket { reader: Box<dyn AsyncRead + Unpin + Send>, buf: BytesMut },
    Grpc(tonic::Streaming<Frame>),
}

impl Inbound {
    fn socket(reader: impl AsyncRead + Unpin + Send + 'static) -> Self {
        Inbound::Socket { reader: Box::new(reader), buf: BytesMut::with_capacity(64 * 1024) }
    }

    /// The next frame; `None` once the peer has gone (closed, reset or garbled).
    async fn next(&mut self) -> Option<Frame> {
        match self {
            Inbound::Socket { reader, buf } => read_frame(reader, buf).await.unwrap_or_else(|e| {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    tracing::warn!("closing a connection that sent bad bytes: {e}");
                }
                None
            }),
            Inbound::Grpc(stream) => stream.message().await.unwrap_or_else(|status| {
                if matches!(status.code(), tonic::Code::Internal | tonic::Code::OutOfRange) {
                    tracing::warn!("closing a connection that sent bad bytes: {}", describe_error(&status));
                }
                None
            }),
        }
    }
}

/// Waiters by request id; `None` once the connection is closed, so a late call fails
/// instead of waiting forever.
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Body>>>>>;

/// The client end of a connection: `call` sends a request and awaits its reply.
/// Cheap to clone; the connection closes when every clone is dropped.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    addr: String,
    tx: mpsc::UnboundedSender<Frame>,
    pending: Pending,
    next_id: AtomicU64,
    closed: watch::Receiver<bool>,
    /// The HTTP/2 connection to a peer on another machine, which its other gRPC
    /// services (the object manager) share.
    channel: Option<Channel>,
}

impl RpcClient {
    /// Connects to `addr`: a Unix socket path (starts with `/`) or a TCP `host:port`
    /// of another machine's gRPC server.
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
            Self::connect_grpc(addr).await
        }
    }

    async fn connect_grpc(addr: &str) -> Result<Self, RpcError> {
        let error =
            |message: String| RpcError::Connect { addr: addr.to_string(), source: std::io::Error::other(message) };
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
        Ok(Self::start(addr, tx, Inbound::Grpc(replies), Some(channel)))
    }

    /// Starts the task that hands each reply to its waiter.
    fn start(addr: &str, tx: mpsc::UnboundedSender<Frame>, mut inbound: Inbound, channel: Option<Channel>) -> Self {
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
                addr: addr.to_string(),
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

    /// The gRPC channel of a connection to another machine (None for a Unix socket).
    pub fn channel(&self) -> Option<Channel> {
        self.inner.channel.clone()
    }
    /// Sends a request and returns a future for its reply. The request is queued
    /// before this returns, so calls made in order are sent in order.
    pub fn start_call(&self, body: Body) -> impl Future<Output = Result<Body, RpcError>> + Send + 'static {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let registered = match self.inner.pending.lock() {
            Ok(mut p) => match p.as_mut() {
                Some(p) => {
                    p.insert(id, tx);
                    true
                }
                None => false,
            },
            Err(_) => false,
        };
        let sent = registered && self.inner.tx.send(Frame { id, body: Some(body) }).is_ok();
        if registered && !sent {
            if let Ok(mut p) = self.inner.pending.lock() {
                if let Some(p) = p.as_mut() {
                    p.remove(&id);
                }
            }
        }
        let addr = self.inner.addr.clone();
        async move {
            if !sent {
                return Err(RpcError::Disconnected(addr));
            }
            match rx.await {
                Ok(Body::Error(e)) => Err(RpcError::Remote {
                    code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal),
                    message: e.message,
                }),
                Ok(body) => Ok(body),
                Err(_) => Err(RpcError::Disconnected(addr)),
            }
        }
    }

    pub async fn call(&self, body: Body) -> Result<Body, RpcError> {
        self.start_call(body).await
    }

    /// One-way message: no reply is expected.
    pub fn send(&self, body: Body) -> Result<(), RpcError> {
        self.inner
            .tx
            .send(Frame { id: 0, body: Some(body) })
            .map_err(|_| RpcError::Disconnected(self.inner.addr.clone()))
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

/// What a handler answers to one request.
// `Now` is the common answer and stays unboxed: boxing it would cost an allocation on
// every reply to spare a few bytes on the rare `None`/`Later`.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    /// No reply (one-way message).
    None,
    /// Reply right away.
    Now(Body),
    /// Reply when the future finishes; other requests are served meanwhile.
    Later(Pin<Box<dyn Future<Output = Body> + Send>>),
}

/// A server-side protocol. `State` lives as long as the connection.
pub trait Service: Send + Sync + 'static {
    type State: Send + 'static;
    fn connected(&self) -> Self::State;
    fn handle(&self, state: &mut Self::State, body: Body) -> Reply;
    fn disconnected(&self, state: Self::State);
}

/// Whether an address names a Unix socket (a path) rather than a TCP `host:port`.
pub fn is_unix_address(addr: &str) -> bool {
    addr.starts_with('/')
}

/// Where a server accepts connections: a Unix socket on this machine, or TCP (gRPC)
/// for other machines.
pub enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    /// Binds TCP on `host:port` (port 0: any free port).
    pub async fn bind_tcp(addr: &str) -> std::io::Result<Self> {
        Ok(Listener::Tcp(TcpListener::bind(addr).await?))
    }

    /// The TCP port actually bound (None for Unix sockets).
    pub fn port(&self) -> Option<u16> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok().map(|a| a.port()),
            Listener::Unix(_) => None,
        }
    }
}

/// Accepts connections on `listener` until the task is dropped. On TCP the service is
/// offered as the gRPC `NodeLink` service.
pub async fn serve<S: Service>(listener: Listener, service: Arc<S>) {
    match listener {
        Listener::Unix(listener) => loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, service.clone()));
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        },
        Listener::Tcp(listener) => serve_grpc(listener, grpc_server().add_service(link_service(service))).await,
    }
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

pub async fn serve_connection<S: Service, T: AsyncRead + AsyncWrite + Send + 'static>(stream: T, service: Arc<S>) {
    let (read_half, write_half) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(write_loop(write_half, rx));
    run_connection(service, Inbound::socket(read_half), tx).await;
}

/// Serves one connection: each request to the handler in arrival order, each reply
/// into `tx`, until the peer goes away.
async fn run_connection<S: Service>(service: Arc<S>, mut inbound: Inbound, tx: mpsc::UnboundedSender<Frame>) {
    let mut state = service.connected();
    while let Some(frame) = inbound.next().await {
        let Some(body) = frame.body else { continue };
        let id = frame.id;
        match service.handle(&mut state, body) {
            Reply::None => {}
            Reply::Now(reply) => {
                if id != 0 {
                    let _ = tx.send(Frame { id, body: Some(reply) });
                }
            }
            Reply::Later(fut) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let reply = fut.await;
                    if id != 0 {
                        let _ = tx.send(Frame { id, body: Some(reply) });
                    }
                });
            }
        }
    }
    service.disconnected(state);
}

/// Binds a Unix socket, replacing a stale socket file left by a dead process.
pub fn bind(path: &Path) -> std::io::Result<Listener> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    Ok(Listener::Unix(UnixListener::bind(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{KvGet, KvGetReply};
    use tokio::sync::Notify;

    /// Echoes keys back ("slow" after a delay) and signals when a connection ends.
    #[derive(Default)]
    struct Echo {
        gone: Notify,
    }

    impl Service for Echo {
        type State = u32;
        fn connected(&self) -> u32 {
            0
        }
        fn handle(&self, count: &mut u32, body: Body) -> Reply {
            *count += 1;
            match body {
                Body::KvGet(KvGet { key }) if key == "slow" => Reply::Later(Box::pin(async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Body::KvGetReply(KvGetReply { found: true, value: "slow".into() })
                })),
                Body::KvGet(KvGet { key }) => {
                    Reply::Now(Body::KvGetReply(KvGetReply { found: true, value: key.into_bytes().into() }))
                }
                _ => Reply::Now(error_body(ErrorCode::Invalid, "unsupported")),
            }
        }
        fn disconnected(&self, _count: u32) {
            self.gone.notify_one();
        }
    }

    fn value_of(reply: Body) -> Vec<u8> {
        match reply {
            Body::KvGetReply(r) => r.value.to_vec(),
            _ => panic!("wrong reply"),
        }
    }

    /// A slow request answered after a fast one, a large frame, an error reply, and the
    /// server noticing the client leave.
    async fn exercise(client: RpcClient, echo: &Echo) {
        let slow = client.start_call(Body::KvGet(KvGet { key: "slow".into() }));
        assert_eq!(value_of(client.call(Body::KvGet(KvGet { key: "fast".into() })).await.unwrap()), b"fast");
        assert_eq!(value_of(slow.await.unwrap()), b"slow");
        let big = "x".repeat(6 << 20);
        assert_eq!(value_of(client.call(Body::KvGet(KvGet { key: big.clone() })).await.unwrap()).len(), big.len());
        let err = client.call(Body::Ack(Default::default())).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::Invalid);
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), echo.gone.notified()).await.expect("server saw the client leave");
    }

    #[tokio::test]
    async fn unix_socket_requests_and_replies() {
        let dir = std::env::temp_dir().join(format!("rtd-rpc-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("echo.sock");
        let echo = Arc::new(Echo::default());
        let server = tokio::spawn(serve(bind(&path).unwrap(), echo.clone()));
        let client = RpcClient::connect(path.to_str().unwrap()).await.unwrap();
        assert!(client.channel().is_none());
        exercise(client, &echo).await;
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn grpc_requests_and_replies() {
        let listener = Listener::bind_tcp("127.0.0.1:0").await.unwrap();
        let addr = format!("127.0.0.1:{}", listener.port().unwrap());
        let echo = Arc::new(Echo::default());
        let server = tokio::spawn(serve(listener, echo.clone()));
        let client = RpcClient::connect(&addr).await.unwrap();
        assert!(client.channel().is_some());
        exercise(client, &echo).await;
        server.abort();
    }

    #[tokio::test]
    async fn grpc_connect_to_nothing_fails_fast_and_says_why() {
        let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = free.local_addr().unwrap().to_string();
        drop(free);
        let started = std::time::Instant::now();
        let err = RpcClient::connect(&addr).await.err().expect("nothing listens there");
        assert!(started.elapsed() < CONNECT_TIMEOUT);
        let text = err.to_string();
        assert!(text.contains(&addr) && text.to_lowercase().contains("refused"), "{text}");
        let err = RpcClient::connect("not an address").await.err().expect("a bad address");
        assert!(err.to_string().contains("not an address"), "{err}");
    }

    /// Proptest cases per property; `RTD_FUZZ_CASES` raises it for a longer run by hand.
    fn fuzz_cases() -> u32 {
        std::env::var("RTD_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
    }

    /// A length prefix then `payload` as a peer might send it.
    fn framed(len: u32, payload: &[u8]) -> Vec<u8> {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(payload);
        bytes
    }

    fn encoded(frames: &[Frame]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for frame in frames {
            bytes.extend(framed(frame.encoded_len() as u32, &frame.encode_to_vec()));
        }
        bytes
    }

    /// Length prefixes worth trying: tiny, around the limit, and anything at all.
    fn length_prefix() -> impl proptest::strategy::Strategy<Value = u32> {
        use proptest::prelude::*;
        let max = MAX_FRAME as u32;
        prop_oneof![0u32..64, Just(max), Just(max + 1), Just(u32::MAX), any::<u32>()]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(fuzz_cases()))]

        /// Whatever the bytes, the decoder takes a whole frame, waits for more, or says
        /// why the stream is unreadable; it never panics.
        #[test]
        fn decoder_takes_whole_frames_or_refuses(len in length_prefix(), payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let bytes = framed(len, &payload);
            let mut buf = BytesMut::from(&bytes[..]);
            match decode_frame(&mut buf) {
                Ok(Some(_)) => proptest::prop_assert_eq!(buf.len(), payload.len() - len as usize),
                Ok(None) => {
                    proptest::prop_assert!(len as usize > payload.len());
                    proptest::prop_assert_eq!(&buf[..], &bytes[..]);
                }
                Err(FrameError::TooLarge { .. }) => proptest::prop_assert!(len as usize > MAX_FRAME),
                Err(FrameError::Garbled(_)) => proptest::prop_assert!(len as usize <= payload.len()),
            }
        }

        /// Frames arriving in arbitrary pieces come out whole and in order.
        #[test]
        fn frames_split_anywhere_decode_in_order(
            keys in proptest::collection::vec(".{0,40}", 1..8),
            cuts in proptest::collection::vec(1usize..64, 0..40),
        ) {
            let frames: Vec<Frame> = keys
                .into_iter()
                .enumerate()
                .map(|(i, key)| Frame { id: i as u64, body: Some(Body::KvGet(KvGet { key })) })
                .collect();
            let bytes = encoded(&frames);
            let mut buf = BytesMut::new();
            let mut decoded = Vec::new();
            let mut rest = &bytes[..];
            for cut in cuts.into_iter().chain(std::iter::once(usize::MAX)) {
                let (piece, after) = rest.split_at(cut.min(rest.len()));
                buf.extend_from_slice(piece);
                rest = after;
                while let Some(frame) = decode_frame(&mut buf).expect("valid frames decode") {
                    decoded.push(frame);
                }
            }
            proptest::prop_assert_eq!(decoded, frames);
            proptest::prop_assert!(buf.is_empty());
        }

        /// A prefix announcing a large frame costs memory only for the bytes that
        /// actually arrive.
        #[test]
        fn announced_length_does_not_allocate(len in length_prefix(), sent in 0usize..200_000) {
            let bytes = framed(len, &vec![0xff; sent]);
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
            let mut buf = BytesMut::new();
            let _ = rt.block_on(read_frame(&mut &bytes[..], &mut buf));
            proptest::prop_assert!(buf.capacity() <= 4 * bytes.len() + 2 * READ_CHUNK, "{} bytes held", buf.capacity());
        }
    }

    /// Garbage on one connection closes that connection; the server and its other
    /// connections carry on.
    #[tokio::test]
    async fn bad_bytes_close_only_their_connection() {
        let dir = std::env::temp_dir().join(format!("rtd-rpc-garbage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("echo.sock");
        let echo = Arc::new(Echo::default());
        let server = tokio::spawn(serve(bind(&path).unwrap(), echo.clone()));
        let good = RpcClient::connect(path.to_str().unwrap()).await.unwrap();
        let garbage = [framed(u32::MAX, b"x"), framed(5, &[0xff; 5]), framed(MAX_FRAME as u32 + 1, &[])];
        for bytes in garbage {
            let mut bad = UnixStream::connect(&path).await.unwrap();
            bad.write_all(&bytes).await.unwrap();
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), bad.read_to_end(&mut rest)).await;
            assert!(matches!(read, Ok(Ok(0))), "the server closes a connection that sent {bytes:?}");
            tokio::time::timeout(Duration::from_secs(5), echo.gone.notified()).await.expect("server dropped it");
        }
        assert_eq!(value_of(good.call(Body::KvGet(KvGet { key: "still".into() })).await.unwrap()), b"still");
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn calls_fail_when_peer_is_gone() {
        let dir = std::env::temp_dir().join(format!("rtd-rpc-gone-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gone.sock");
        let listener = bind(&path).unwrap();
        let Listener::Unix(listener) = listener else { panic!("a Unix listener") };
        let accept = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            drop(stream);
        });
        let client = RpcClient::connect(path.to_str().unwrap()).await.unwrap();
        accept.await.unwrap();
        client.closed().await;
        let err = client.call(Body::KvGet(KvGet { key: "x".into() })).await.unwrap_err();
        assert!(matches!(err, RpcError::Disconnected(_)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
