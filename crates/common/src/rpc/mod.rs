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
//! A frame carries one service's request or reply (or an error in place of a reply):
//! each service has its own request and reply message sets (`proto/*.proto`), and each
//! connection carries the requests of the services its server answers:
//!
//! - a raylet's client socket and node link: `NodeManagerRequest` and `GcsRequest`
//!   (the head's raylet serves the GCS in its process; another node's raylet forwards a
//!   `GcsRequest` whole to the head, so a client keeps one connection, to its raylet);
//! - a core worker's socket: `CoreWorkerRequest` (from submitters, the GCS, borrowers,
//!   and its job's workers sending their output);
//! - the plasma store's socket: `PlasmaRequest`;
//! - the raylet's `ObjectManager.Pull` gRPC service, next to the node link, streams
//!   object chunks between nodes.
//!
//! Calls are typed (`request`): a request message names its reply type ([`Request`]),
//! and a reply of another kind is [`RpcError::UnexpectedReply`]. A server sees only its
//! own request type ([`Service::Request`]); the frames it does not serve are answered
//! INVALID before they reach it.
//!
//! The server side calls the handler inline, in arrival order, so state changes keep
//! the order the client sent them in; a handler that must wait returns a future, which
//! runs as its own task and replies when it is done.
//!
//! Modules: `framing` (length-prefixed frames on a byte stream, and where a
//! connection's frames come from), `client` (`RpcClient`, `ConnectionCache`),
//! `server` (`Service`, `Reply`, serving a connection), `grpc` (the `NodeLink`
//! bridge between machines), `guard` (token authentication on gRPC), `tls` (optional
//! TLS between machines), `request`
//! (typed calls: each request's reply type, and frame bodies in and out of each
//! service's messages), `error`.

mod client;
mod error;
mod framing;
mod grpc;
mod guard;
mod request;
mod server;
pub mod tls;

pub use client::{is_unix_address, ConnectionCache, RpcClient};
pub use error::{describe_error, error_body, error_reply, RpcError};
pub use framing::{decode_frame, FrameError, MAX_FRAME};
pub use grpc::{grpc_server, grpc_server_with, link_service, serve_grpc, Credentials, GrpcRouter, GrpcServer, Link};
pub use guard::{authorized, AuthChannel, GrpcAuthLayer, PresentToken};
pub use request::Request;
pub use server::{serve_connection, Reply, Service};

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};

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
        Listener::Tcp(listener) => match grpc_server() {
            Ok(mut server) => serve_grpc(listener, server.add_service(link_service(service))).await,
            Err(e) => tracing::error!("cannot serve {} over gRPC: {e}", S::NAME),
        },
    }
}

/// Binds a Unix socket that only this user may connect to, replacing a stale socket
/// file left by a dead process. (Its directory is the owner's alone too, so nobody
/// else connects in the moment before the file's mode is set.)
pub fn bind(path: &Path) -> std::io::Result<Listener> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(Listener::Unix(listener))
}

#[cfg(test)]
mod tests {
    use super::framing::{read_frame, READ_CHUNK};
    use super::grpc::CONNECT_TIMEOUT;
    use super::*;
    use crate::proto::{frame::Body, gcs_reply, gcs_request, ErrorCode, Frame, KvGet, KvGetReply, KvPut, PlasmaSeal};
    use bytes::BytesMut;
    use prost::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;
    use tokio::sync::Notify;

    /// Echoes keys back ("slow" after a delay) and signals when a connection ends.
    #[derive(Default)]
    struct Echo {
        gone: Notify,
    }

    fn found(value: impl Into<bytes::Bytes>) -> Body {
        gcs_reply::Reply::KvGetReply(KvGetReply { found: true, value: value.into() }).into()
    }

    /// Answers `KvPut` wrongly, with a `KvGetReply`.
    impl Service for Echo {
        const NAME: &'static str = "the echo service";
        type Request = gcs_request::Request;
        type State = u32;
        fn connected(&self) -> u32 {
            0
        }
        fn handle(&self, count: &mut u32, request: gcs_request::Request) -> Reply {
            *count += 1;
            match request {
                gcs_request::Request::KvGet(KvGet { key, .. }) if key == "slow" => Reply::Later(Box::pin(async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    found("slow")
                })),
                gcs_request::Request::KvGet(KvGet { key, .. }) | gcs_request::Request::KvPut(KvPut { key, .. }) => {
                    Reply::Now(found(key.into_bytes()))
                }
                _ => Reply::Now(error_body(ErrorCode::Invalid, "unsupported")),
            }
        }
        fn disconnected(&self, _count: u32) {
            self.gone.notify_one();
        }
    }

    async fn get(client: &RpcClient, key: &str) -> Vec<u8> {
        client.request(KvGet { key: key.into(), exists_only: false }).await.unwrap().value.to_vec()
    }

    /// A slow request answered after a fast one, a large frame, error replies, a reply
    /// of the wrong kind, and the server noticing the client leave.
    async fn exercise(client: RpcClient, echo: &Echo) {
        let slow = client.start_request(KvGet { key: "slow".into(), exists_only: false });
        assert_eq!(get(&client, "fast").await, b"fast");
        assert_eq!(slow.await.unwrap().value, "slow");
        let big = "x".repeat(6 << 20);
        assert_eq!(get(&client, &big).await.len(), big.len());
        let err = client.request(PlasmaSeal::default()).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::Invalid);
        assert!(err.to_string().contains("unsupported request for the echo service"), "{err}");
        let err = client.start_call(Body::Gcs(Default::default())).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::Invalid, "an empty request set is not a request");
        let err = client.request(KvPut::default()).await.unwrap_err();
        assert!(matches!(err, RpcError::UnexpectedReply { request: "KvPut", .. }), "{err:?}");
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

    /// A server in token mode refuses a client with no token or a wrong one before
    /// any frame is read, with UNAUTHENTICATED and how to set the token; the right
    /// token gets through.
    #[tokio::test]
    async fn grpc_refuses_a_missing_or_wrong_token() {
        use crate::auth::{AuthToken, Policy};
        let token = AuthToken::generate();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let echo = Arc::new(Echo::default());
        let router =
            grpc_server_with(Policy::Token(token.clone()), None).unwrap().add_service(link_service(echo.clone()));
        let server = tokio::spawn(serve_grpc(listener, router));
        for presented in [None, Some(AuthToken::generate())] {
            let credentials = Credentials { token: presented, tls: None };
            let err = RpcClient::connect_grpc(&addr, &credentials).await.err().expect("refused");
            assert!(matches!(err, RpcError::Unauthenticated { .. }), "{err:?}");
            assert_eq!(err.code(), ErrorCode::Unauthenticated);
            assert!(err.to_string().contains(&addr) && err.to_string().contains("RTD_AUTH_TOKEN"), "{err}");
        }
        // A raw gRPC client, sending a frame without the header, is refused too.
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let frames =
            tokio_stream::iter([Frame { id: 1, body: Some(KvGet { key: "x".into(), exists_only: false }.into()) }]);
        let status = crate::proto::node_link_client::NodeLinkClient::new(channel).converse(frames).await.err().unwrap();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let client = RpcClient::connect_grpc(&addr, &Credentials { token: Some(token), tls: None }).await.unwrap();
        exercise(client, &echo).await;
        server.abort();
    }

    #[tokio::test]
    async fn unix_sockets_are_the_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("rtd-rpc-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mode.sock");
        let _listener = bind(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
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
                .map(|(i, key)| Frame { id: i as u64, body: Some(KvGet { key, exists_only: false }.into()) })
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
        assert_eq!(get(&good, "still").await, b"still");
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
        let err = client.request(KvGet { key: "x".into(), exists_only: false }).await.unwrap_err();
        assert!(matches!(err, RpcError::Disconnected(_)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
