//! Bad bytes on the wire: a real head node daemon takes thousands of random frames on
//! every socket a peer can reach, and must still be alive and answering afterwards.
//!
//! Frames come in two kinds. Raw ones are arbitrary bytes behind a length prefix, so
//! most do not decode and the daemon must drop that connection only. Structured ones
//! always decode: a random message of any service's request or reply set (or an error
//! reply) holding random fields of the wire types its schema (probed from the decoder)
//! gives them — ids of every length,
//! huge and negative numbers, NaN and infinite floats, unknown enum values, missing,
//! empty or garbled sub-messages, maps with odd keys — so they reach the handlers:
//! the raylet and GCS on `raylet.sock`, the object store on `plasma.sock`, and the
//! same raylet and GCS plus `ObjectManager.Pull` on the gRPC port. `Shutdown` is the
//! one request left out, since stopping the node is what it asks for.
//!
//! Each socket gets `RTD_FUZZ_CASES` frames (default 2000, a few seconds), in batches of
//! one connection each. For a longer run by hand:
//!
//! ```text
//! RTD_FUZZ_CASES=200000 cargo test -p rtd --release --test wire_fuzz -- --nocapture
//! ```
//!
//! When the daemon dies, the test prints the end of its log, which holds the panic.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;
use rtd_common::proto::object_manager_client::ObjectManagerClient;
use rtd_common::proto::{
    frame::Body, node_manager_request, Frame, GetNodes, NodeManagerRequest, PlasmaGet, PullChunks,
};
use rtd_common::rpc::RpcClient;
use rtd_common::{ActorId, JobId, NodeId, ObjectId, TaskId, WorkerId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::task::JoinSet;

/// Frames per connection.
const BATCH: usize = 64;
/// Connections open at once.
const PARALLEL: usize = 16;
/// How long one connection may take to answer its batch before the test moves on (some
/// requests, such as waiting for an actor, rightly wait longer than that).
const BATCH_WAIT: Duration = Duration::from_secs(1);
/// Highest `Frame.body` tag probed for a variant (the last is 10).
const MAX_BODY_TAG: u32 = 16;

fn fuzz_cases() -> usize {
    std::env::var("RTD_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

/// A head node daemon in its own session; killed and cleaned up when dropped.
struct Daemon {
    child: Child,
    session: PathBuf,
    log: PathBuf,
    port: u16,
}

impl Daemon {
    fn start() -> Daemon {
        let root = std::env::temp_dir().join(format!("rtd-wire-fuzz-{}", std::process::id()));
        let session = root.join("session_wire_fuzz");
        std::fs::create_dir_all(&root).expect("creating the test's temp dir");
        let log = root.join("node.log");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let out = std::fs::File::create(&log).expect("creating the daemon's log");
        let child = Command::new(env!("CARGO_BIN_EXE_rtd"))
            .args(["start", "--head", "--block", "--num-cpus", "0", "--python", "/bin/false"])
            .args(["--node-ip-address", "127.0.0.1", "--port", &port.to_string()])
            .args(["--object-store-memory", &(64u64 << 20).to_string()])
            .arg("--session-dir")
            .arg(&session)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("duplicating the log file"))
            .stderr(out)
            .spawn()
            .expect("starting the rtd daemon");
        let mut daemon = Daemon { child, session, log, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !daemon.session.join("node.json").exists() {
            daemon.assert_alive();
            assert!(Instant::now() < deadline, "the daemon did not come up in 20 s:\n{}", daemon.log_tail());
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.session.join("sockets").join(name)
    }

    fn grpc_address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        text.get(start..).unwrap_or(&text).to_string()
    }

    /// Alive, and no task of it panicked either (a panic in a connection's task
    /// drops that connection and whatever the handler was doing, silently otherwise).
    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the daemon died ({status}):\n{}", self.log_tail());
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(!log.contains("panicked"), "the daemon panicked:\n{}", self.log_tail());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The daemon was killed: its shared-memory file is `rtd_<its pid>_<session name>`.
        let name = self.session.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let _ = std::fs::remove_file(format!("/dev/shm/rtd_{}_{name}", self.child.id()));
        if let Some(root) = self.session.parent() {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

/// One protobuf field as the wire spells it.
#[derive(Debug, Clone)]
enum Field {
    Varint(u32, u64),
    Fixed64(u32, u64),
    Fixed32(u32, u32),
    Bytes(u32, Vec<u8>),
}

impl Field {
    fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            Field::Varint(n, v) => {
                encode_key(*n, WireType::Varint, buf);
                encode_varint(*v, buf);
            }
            Field::Fixed64(n, v) => {
                encode_key(*n, WireType::SixtyFourBit, buf);
                buf.extend_from_slice(&v.to_le_bytes());
            }
            Field::Fixed32(n, v) => {
                encode_key(*n, WireType::ThirtyTwoBit, buf);
                buf.extend_from_slice(&v.to_le_bytes());
            }
            Field::Bytes(n, v) => {
                encode_key(*n, WireType::LengthDelimited, buf);
                encode_varint(v.len() as u64, buf);
                buf.extend_from_slice(v);
            }
        }
    }

    fn encoded(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.encode(&mut buf);
        buf
    }
}

/// What a field holds, as far as the wire tells.
#[derive(Debug)]
enum Kind {
    Varint,
    Fixed64,
    Fixed32,
    /// Bytes, a string, packed numbers.
    Bytes,
    Message(Schema),
}

/// The fields a message knows. prost keeps no descriptors, so the schema is found by
/// probing the decoder: a field is known when a frame carrying it decodes and encodes
/// it again (prost drops unknown fields).
type Schema = Vec<(u32, Kind)>;

/// Highest field number probed (the largest message, `TaskSpec`, has 21).
const MAX_FIELD: u32 = 24;
/// How deep sub-messages are probed (`CoreWorkerRequest.push_task.spec.arg_refs.value`
/// is 4 down).
const MAX_DEPTH: u32 = 5;

/// The schema of the message that `wrap` places inside a frame.
fn probe(wrap: &dyn Fn(&[u8]) -> Vec<u8>, depth: u32) -> Schema {
    let size = |inner: &[u8]| Frame::decode(&wrap(inner)[..]).ok().map(|f| f.encoded_len());
    let Some(empty) = size(&[]) else { return Vec::new() };
    let known = |field: Field| size(&field.encoded()).is_some_and(|len| len > empty);
    let mut schema = Vec::new();
    for n in 1..=MAX_FIELD {
        let kind = if known(Field::Varint(n, 1)) {
            Kind::Varint
        } else if known(Field::Fixed64(n, 1)) {
            Kind::Fixed64
        } else if known(Field::Fixed32(n, 1)) {
            Kind::Fixed32
        } else if known(Field::Bytes(n, b"a".to_vec())) {
            Kind::Bytes
        } else if known(Field::Bytes(n, Vec::new())) {
            // Only a sub-message (or map entry) is kept when empty.
            let inner = |bytes: &[u8]| wrap(&Field::Bytes(n, bytes.to_vec()).encoded());
            Kind::Message(if depth < MAX_DEPTH { probe(&inner, depth + 1) } else { Vec::new() })
        } else {
            continue;
        };
        schema.push((n, kind));
    }
    schema
}

/// Where a message sits in a frame: its `Frame.body` tag, then, for a message of a
/// service's request or reply set, its tag in the set.
type FramePath = Vec<u32>;

/// Every message a frame can carry, with its schema. A `Frame.body` variant whose
/// fields are all messages is a service's set (a oneof): each of its fields is one.
fn message_schemas() -> Vec<(FramePath, Schema)> {
    let mut out = Vec::new();
    for tag in (2..=MAX_BODY_TAG)
        .filter(|&tag| Frame::decode(&frame_bytes(0, &[tag], &[])[..]).is_ok_and(|f| f.body.is_some()))
    {
        let schema = probe(&|inner: &[u8]| frame_bytes(0, &[tag], inner), 1);
        if !schema.is_empty() && schema.iter().all(|(_, kind)| matches!(kind, Kind::Message(_))) {
            for (n, kind) in schema {
                if let Kind::Message(variant) = kind {
                    out.push((vec![tag, n], variant));
                }
            }
        } else {
            out.push((vec![tag], schema));
        }
    }
    out
}

/// One value from `strategy`.
fn draw<S: Strategy>(runner: &mut TestRunner, strategy: S) -> S::Value {
    strategy.new_tree(runner).expect("strategies here never reject").current()
}

/// A value for field `n`. Numbers that break careless handlers: zero, all-ones, values
/// that read as negative `int32`/`int64` or as unknown enum values, NaN and infinite
/// floats. Ids have a few fixed lengths; bytes come in every length from empty to a
/// little past the longest.
fn value(runner: &mut TestRunner, n: u32, kind: &Kind) -> Field {
    match kind {
        Kind::Varint => {
            let special =
                prop_oneof![0u64..4, Just(u64::MAX), Just(-1i64 as u64), Just(i32::MIN as u64), Just(i64::MAX as u64)];
            Field::Varint(n, draw(runner, prop_oneof![special, any::<u64>()]))
        }
        Kind::Fixed64 => {
            let floats = prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-1.0), Just(1e300), Just(-0.0)];
            Field::Fixed64(n, draw(runner, prop_oneof![floats.prop_map(f64::to_bits), any::<u64>()]))
        }
        Kind::Fixed32 => {
            let floats = prop_oneof![Just(f32::NAN), Just(f32::NEG_INFINITY), Just(-1.0)];
            Field::Fixed32(n, draw(runner, prop_oneof![floats.prop_map(f32::to_bits), any::<u32>()]))
        }
        Kind::Bytes => {
            let id_lengths = [JobId::LEN, ActorId::LEN, TaskId::LEN, ObjectId::LEN, NodeId::LEN, WorkerId::LEN];
            let bytes = prop_oneof![
                proptest::sample::select(id_lengths.to_vec())
                    .prop_flat_map(|len| proptest::collection::vec(any::<u8>(), len)),
                proptest::collection::vec(any::<u8>(), 0..40),
                "[a-zA-Z0-9_ :/.-]{0,24}".prop_map(String::into_bytes),
                ".{0,8}".prop_map(String::into_bytes),
            ];
            Field::Bytes(n, draw(runner, bytes))
        }
        Kind::Message(schema) => Field::Bytes(n, message(runner, schema)),
    }
}

/// A message of `schema` with each field absent, present once or repeated.
fn message(runner: &mut TestRunner, schema: &Schema) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, kind) in schema {
        for _ in 0..draw(runner, prop_oneof![2 => Just(0), 2 => Just(1), 1 => 2..4usize]) {
            value(runner, *n, kind).encode(&mut out);
        }
    }
    out
}

/// A frame with request id `id` carrying `message` at `path`.
fn frame_bytes(id: u64, path: &[u32], message: &[u8]) -> Vec<u8> {
    let body = path.iter().rev().fold(message.to_vec(), |inner, &tag| Field::Bytes(tag, inner).encoded());
    let mut buf = Field::Varint(1, id).encoded();
    buf.extend_from_slice(&body);
    buf
}

/// A frame built from its body's schema with random field contents. A string field
/// given bytes that are not UTF-8 would spoil the whole frame, so each top-level field
/// is kept only if the frame still decodes with it.
fn structured_frame(runner: &mut TestRunner, schemas: &[(FramePath, Schema)]) -> Vec<u8> {
    let (path, schema) = &schemas[draw(runner, 0..schemas.len())];
    let id = draw(runner, prop_oneof![Just(0u64), any::<u64>()]);
    let mut body = Vec::new();
    for (n, kind) in schema {
        for _ in 0..draw(runner, prop_oneof![2 => Just(0), 3 => Just(1), 1 => 2..4usize]) {
            let mut candidate = body.clone();
            value(runner, *n, kind).encode(&mut candidate);
            if Frame::decode(&frame_bytes(id, path, &candidate)[..]).is_ok() {
                body = candidate;
            }
        }
    }
    frame_bytes(id, path, &body)
}

/// Whether sending `bytes` asks the node to stop, which it rightly does.
fn asks_to_stop(bytes: &[u8]) -> bool {
    let Ok(Frame { body: Some(Body::NodeManager(NodeManagerRequest { request })), .. }) = Frame::decode(bytes) else {
        return false;
    };
    matches!(request, Some(node_manager_request::Request::Shutdown(_)))
}

/// `count` frames' bytes, each as it goes inside a length prefix: a quarter arbitrary
/// bytes, the rest structured.
fn frames(count: usize) -> Vec<Vec<u8>> {
    let schemas = message_schemas();
    let mut runner = TestRunner::default();
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let bytes = if draw(&mut runner, 0..4) == 0 {
            draw(&mut runner, proptest::collection::vec(any::<u8>(), 0..256))
        } else {
            structured_frame(&mut runner, &schemas)
        };
        if !asks_to_stop(&bytes) {
            out.push(bytes);
        }
    }
    out
}

/// One connection to `socket`: the batch of frames, then the end of our side; the
/// replies are read until the daemon closes (it does at the first frame that does not
/// decode) or `BATCH_WAIT` passes.
async fn send_batch(socket: PathBuf, batch: Vec<Vec<u8>>) {
    let mut stream = UnixStream::connect(&socket).await.expect("the daemon accepts connections");
    let mut bytes = Vec::new();
    for frame in &batch {
        bytes.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        bytes.extend_from_slice(frame);
    }
    // The daemon may close mid-batch; that is its answer to a bad frame.
    if stream.write_all(&bytes).await.is_ok() && stream.shutdown().await.is_ok() {
        let mut replies = Vec::new();
        let _ = tokio::time::timeout(BATCH_WAIT, stream.read_to_end(&mut replies)).await;
    }
}

/// One `NodeLink.Converse` call carrying `bodies` as requests.
async fn send_grpc_batch(address: String, bodies: Vec<Body>) {
    let client = RpcClient::connect(&address).await.expect("the daemon accepts gRPC connections");
    let calls: Vec<_> = bodies.into_iter().map(|body| client.start_call(body)).collect();
    let _ = tokio::time::timeout(BATCH_WAIT, async {
        for call in calls {
            let _ = call.await;
        }
    })
    .await;
}

/// Runs `jobs`, `PARALLEL` at a time.
async fn run_parallel<F: Future<Output = ()> + Send + 'static>(jobs: impl IntoIterator<Item = F>) {
    let mut running = JoinSet::new();
    for job in jobs {
        if running.len() >= PARALLEL {
            if let Some(done) = running.join_next().await {
                done.expect("a fuzz connection");
            }
        }
        running.spawn(job);
    }
    while let Some(done) = running.join_next().await {
        done.expect("a fuzz connection");
    }
}

/// Frames that decode go in batches; each one that does not gets a connection of its
/// own, since the daemon stops reading a connection at the first.
async fn fuzz_socket(socket: &Path, frames: Vec<Vec<u8>>) {
    let (good, bad): (Vec<_>, Vec<_>) = frames.into_iter().partition(|f| Frame::decode(&f[..]).is_ok());
    let batches = good.chunks(BATCH).map(<[_]>::to_vec).chain(bad.into_iter().map(|f| vec![f]));
    run_parallel(batches.map(|batch| send_batch(socket.to_path_buf(), batch)).collect::<Vec<_>>()).await;
}

/// The decodable frames over gRPC, a batch per connection, and random
/// `ObjectManager.Pull` requests.
async fn fuzz_grpc(address: &str, frames: Vec<Vec<u8>>) {
    let bodies: Vec<Body> = frames.iter().filter_map(|f| Frame::decode(&f[..]).ok()?.body).collect();
    run_parallel(
        bodies.chunks(BATCH).map(|batch| send_grpc_batch(address.to_string(), batch.to_vec())).collect::<Vec<_>>(),
    )
    .await;
    let client = RpcClient::connect(address).await.expect("the daemon accepts gRPC connections");
    let mut pulls = ObjectManagerClient::new(client.channel().expect("a gRPC channel"));
    let mut runner = TestRunner::default();
    let request = (proptest::collection::vec(any::<u8>(), 0..40), any::<u64>());
    for _ in 0..frames.len() / BATCH {
        let (id, chunk_size) = request.new_tree(&mut runner).expect("a pull request").current();
        let pull = pulls.pull(PullChunks { id: Bytes::from(id), chunk_size });
        let _ = tokio::time::timeout(BATCH_WAIT, pull).await;
    }
}

/// The daemon answers ordinary requests on each of its sockets.
async fn assert_serving(daemon: &mut Daemon) {
    daemon.assert_alive();
    let wait = Duration::from_secs(10);
    for address in [daemon.socket("raylet.sock").display().to_string(), daemon.grpc_address()] {
        let client = RpcClient::connect(&address).await.expect("the daemon still accepts connections");
        let reply = tokio::time::timeout(wait, client.request(GetNodes {})).await;
        assert!(matches!(reply, Ok(Ok(_))), "GetNodes on {address}: {reply:?}");
    }
    let plasma = RpcClient::connect(&daemon.socket("plasma.sock").display().to_string()).await.expect("plasma.sock");
    let get = PlasmaGet { id: vec![7u8; ObjectId::LEN].into(), timeout_ms: 0 };
    let reply = tokio::time::timeout(wait, plasma.request(get)).await;
    assert!(matches!(reply, Ok(Ok(_))), "PlasmaGet: {reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_survives_random_frames_on_every_socket() {
    let mut daemon = Daemon::start();
    let count = fuzz_cases();
    let started = Instant::now();
    for socket in ["raylet.sock", "plasma.sock"] {
        fuzz_socket(&daemon.socket(socket), frames(count)).await;
        assert_serving(&mut daemon).await;
    }
    fuzz_grpc(&daemon.grpc_address(), frames(count)).await;
    assert_serving(&mut daemon).await;
    eprintln!("{count} frames on each of raylet.sock, plasma.sock and gRPC in {:.1?}", started.elapsed());
}
