//! The object manager: copies objects between nodes' stores over gRPC. Every node in a
//! cluster serves `ObjectManager.Pull` from its store, and pulls from another node
//! when a client on this node needs an object that lives there.

use std::pin::Pin;

use bytes::Bytes;
use rtd_common::proto::object_manager_client::ObjectManagerClient;
use rtd_common::proto::object_manager_server::{ObjectManager, ObjectManagerServer};
use rtd_common::proto::{ObjectChunk, PullChunks};
use rtd_common::rpc::{describe_error, AuthChannel};
use rtd_common::ObjectId;
use rtd_plasma::{PlasmaClient, PlasmaError};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Objects move between nodes in pieces of this size.
const CHUNK: u64 = 8 << 20;
/// The most a single chunk may be; a larger request is served in pieces of this size.
const MAX_CHUNK: u64 = 64 << 20;
/// Largest gRPC message either side accepts: one chunk plus its header.
const MAX_MESSAGE: usize = (MAX_CHUNK as usize) + 4096;
/// How long a second pull of an object waits for the first one to finish writing it.
const CONCURRENT_PULL_WAIT_MS: u64 = 30_000;

/// Serves this node's objects to other nodes.
pub struct ObjectServer {
    plasma: PlasmaClient,
}

impl ObjectServer {
    pub fn new(plasma: PlasmaClient) -> ObjectManagerServer<ObjectServer> {
        ObjectManagerServer::new(ObjectServer { plasma }).max_decoding_message_size(MAX_MESSAGE)
    }
}

/// A sealed object pinned in this node's store, released when dropped.
struct PinnedObject {
    plasma: PlasmaClient,
    id: ObjectId,
    offset: u64,
    size: u64,
}

impl PinnedObject {
    fn bytes(&self) -> Option<&[u8]> {
        // SAFETY: sealed objects are immutable and stay in place while pinned, and the
        // pin lasts as long as `self`.
        unsafe { self.plasma.region().slice(self.offset, self.size) }
    }
}

impl AsRef<[u8]> for PinnedObject {
    fn as_ref(&self) -> &[u8] {
        self.bytes().unwrap_or_default()
    }
}

impl Drop for PinnedObject {
    fn drop(&mut self) {
        self.plasma.release(&self.id);
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<ObjectChunk, Status>> + Send>>;

#[tonic::async_trait]
impl ObjectManager for ObjectServer {
    type PullStream = ChunkStream;

    async fn pull(&self, request: Request<PullChunks>) -> Result<Response<ChunkStream>, Status> {
        let request = request.into_inner();
        let id =
            ObjectId::from_bytes(&request.id).map_err(|e| Status::invalid_argument(format!("bad object id: {e}")))?;
        let chunk_size = request.chunk_size.clamp(1, MAX_CHUNK);
        let info = match self.plasma.get(&id, 0).await {
            Ok(Some(info)) => info,
            Ok(None) => return Err(Status::not_found(format!("object {id} is not in this node's store"))),
            Err(e) => return Err(Status::internal(format!("reading object {id}: {e}"))),
        };
        let pinned = PinnedObject { plasma: self.plasma.clone(), id, offset: info.offset, size: info.size };
        if pinned.bytes().is_none() {
            return Err(Status::internal(format!("object {id} lies outside the store")));
        }
        // Chunks are views of the store's memory, not copies; the pin is released when
        // the last of them is gone (sent, or the reader went away).
        let whole = Bytes::from_owner(pinned);
        let step = chunk_size as usize;
        // An empty object still sends one chunk: it carries the size and kind.
        let chunks: Vec<_> = (0..whole.len().max(1))
            .step_by(step)
            .map(|start| {
                let end = whole.len().min(start + step);
                Ok(ObjectChunk {
                    total_size: info.size,
                    metadata: info.metadata,
                    offset: start as u64,
                    data: whole.slice(start..end),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}

/// Why copying an object to this node failed.
#[derive(Debug)]
pub enum PullError {
    /// The source node does not have the object (any more): it is lost there.
    Missing(String),
    /// This node's store has no room for the copy.
    Full(String),
    /// The transfer failed; the source may still have the object.
    Failed(String),
}

impl std::fmt::Display for PullError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PullError::Missing(m) | PullError::Full(m) | PullError::Failed(m) => f.write_str(m),
        }
    }
}

/// Copies object `id` from the node at the other end of `source` (a gRPC connection to
/// `source_addr`) into this node's store, as a copy the store may evict. Returns once
/// the object is sealed here (or already was).
pub async fn pull_object(
    plasma: &PlasmaClient,
    source: AuthChannel,
    source_addr: &str,
    id: ObjectId,
) -> Result<(), PullError> {
    let mut chunks = ObjectManagerClient::new(source)
        .max_decoding_message_size(MAX_MESSAGE)
        .pull(PullChunks { id: id.to_vec().into(), chunk_size: CHUNK })
        .await
        .map_err(|status| match status.code() {
            tonic::Code::NotFound => PullError::Missing(format!("object {id} is no longer on its node")),
            _ => PullError::Failed(format!("pulling object {id} from {source_addr}: {}", status.message())),
        })?
        .into_inner();
    let first = next_chunk(&mut chunks, id).await.map_err(PullError::Failed)?;
    let start = match plasma.create_copy(&id, first.total_size, first.metadata).await {
        Ok(start) => start,
        Err(PlasmaError::Full(m)) => return Err(PullError::Full(m)),
        // Another pull of the same object is writing it: wait for its seal.
        Err(_) => {
            return match plasma.get(&id, CONCURRENT_PULL_WAIT_MS).await {
                Ok(Some(_)) => {
                    plasma.release(&id);
                    Ok(())
                }
                _ => Err(PullError::Failed(format!("object {id} could not be copied to this node"))),
            };
        }
    };
    let total = first.total_size;
    let copied: Result<(), String> = async {
        let mut chunk = first;
        let mut received = 0u64;
        loop {
            let len = chunk.data.len() as u64;
            if chunk.total_size != total || chunk.offset != received || received + len > total {
                return Err(format!("object {id} arrived garbled (chunk at {} of {total} bytes)", chunk.offset));
            }
            // SAFETY: the store gave us [start, start + total) to write until we seal it.
            let dst = unsafe { plasma.region().slice_mut(start + received, len) }
                .ok_or_else(|| format!("object {id} lies outside the store"))?;
            dst.copy_from_slice(&chunk.data);
            received += len;
            if received == total {
                return Ok(());
            }
            chunk = next_chunk(&mut chunks, id).await?;
        }
    }
    .await;
    match copied {
        Ok(()) => plasma.seal(&id).await.map_err(|e| PullError::Failed(e.to_string())),
        Err(e) => {
            // Abort the half-written copy: deleted while unsealed, the seal frees it.
            let _ = plasma.delete(&[id]).await;
            let _ = plasma.seal(&id).await;
            Err(PullError::Failed(e))
        }
    }
}

async fn next_chunk(chunks: &mut tonic::Streaming<ObjectChunk>, id: ObjectId) -> Result<ObjectChunk, String> {
    match chunks.message().await {
        Ok(Some(chunk)) => Ok(chunk),
        Ok(None) => Err(format!("object {id} ended early: its node stopped sending")),
        Err(status) => Err(format!("object {id} could not be read from its node: {}", describe_error(&status))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::Arc;

    use rtd_common::auth::{AuthToken, Policy};
    use rtd_common::rpc::{authorized, grpc_server_with, serve_grpc};
    use rtd_plasma::{ObjectStore, PlasmaService, ShmRegion};
    use tokio::net::TcpListener;

    /// A real store on its own socket and shared-memory file.
    struct Store {
        dir: PathBuf,
        service: Arc<PlasmaService>,
        client: PlasmaClient,
        server: tokio::task::JoinHandle<()>,
    }

    impl Store {
        async fn start(tag: &str) -> Store {
            let dir = std::env::temp_dir().join(format!("rtd-om-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let shm = dir.join("plasma.shm");
            let region = Arc::new(ShmRegion::create(&shm, 64 << 20).expect("region"));
            let service = PlasmaService::new(ObjectStore::new(region, dir.join("spill")));
            let socket = dir.join("plasma.sock");
            let listener = rtd_common::rpc::bind(&socket).expect("bind");
            let server = tokio::spawn(rtd_common::rpc::serve(listener, service.clone()));
            let client = PlasmaClient::connect(&socket.display().to_string(), &shm).await.expect("connect");
            Store { dir, service, client, server }
        }

        fn bytes(&self, info: &rtd_plasma::ObjectInfo) -> Vec<u8> {
            // SAFETY: the caller holds the pin from the get that returned `info`.
            unsafe { self.client.region().slice(info.offset, info.size) }.expect("in region").to_vec()
        }
    }

    impl Drop for Store {
        fn drop(&mut self) {
            self.server.abort();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A channel to `addr` presenting `token`.
    async fn channel_to(addr: &str, token: Option<&AuthToken>) -> AuthChannel {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        authorized(channel, token)
    }

    /// Serves `store` over gRPC on a free port, letting in what `policy` lets in.
    async fn serve_objects_checking(store: &Store, policy: Policy) -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let router =
            grpc_server_with(policy, None).expect("a server").add_service(ObjectServer::new(store.client.clone()));
        (addr, tokio::spawn(serve_grpc(listener, router)))
    }

    /// Serves `store` over gRPC on a free port and returns a channel to it.
    async fn serve_objects(store: &Store) -> (AuthChannel, String, tokio::task::JoinHandle<()>) {
        let (addr, server) = serve_objects_checking(store, Policy::Open).await;
        (channel_to(&addr, None).await, addr, server)
    }

    #[tokio::test]
    async fn pulls_need_the_clusters_token() {
        let (source, target) = (Store::start("auth-src").await, Store::start("auth-dst").await);
        let token = AuthToken::generate();
        let (addr, server) = serve_objects_checking(&source, Policy::Token(token.clone())).await;
        let id = ObjectId::random();
        source.client.put(&id, b"secret", 0).await.expect("put");
        for presented in [None, Some(AuthToken::generate())] {
            let channel = channel_to(&addr, presented.as_ref()).await;
            let err = pull_object(&target.client, channel, &addr, id).await.expect_err("refused");
            assert!(err.to_string().contains("RTD_AUTH_TOKEN"), "{err}");
        }
        pull_object(&target.client, channel_to(&addr, Some(&token)).await, &addr, id).await.expect("let in");
        server.abort();
    }

    #[tokio::test]
    async fn objects_of_every_size_arrive_whole_with_their_kind() {
        let (source, target) = (Store::start("src").await, Store::start("dst").await);
        let (channel, addr, server) = serve_objects(&source).await;
        for (size, kind) in [(0usize, 0u32), (1, 1), (CHUNK as usize, 0), (2 * CHUNK as usize + 12_345, 2)] {
            let id = ObjectId::random();
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            source.client.put(&id, &data, kind).await.expect("put");
            pull_object(&target.client, channel.clone(), &addr, id).await.expect("pulled");
            // A second pull finds it already there.
            pull_object(&target.client, channel.clone(), &addr, id).await.expect("pulled again");
            let info = target.client.get(&id, 0).await.expect("get").expect("sealed on the target");
            assert_eq!((info.size as usize, info.metadata), (size, kind));
            assert!(target.bytes(&info) == data, "{size} bytes arrived intact");
            target.client.release(&id);
        }
        // Serving pins each object only while its chunks are in flight.
        for _ in 0..500 {
            if source.service.stats().pinned_bytes == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(source.service.stats().pinned_bytes, 0, "the source released every pin");
        server.abort();
    }

    #[tokio::test]
    async fn a_missing_object_is_reported_and_leaves_nothing_behind() {
        let (source, target) = (Store::start("src-missing").await, Store::start("dst-missing").await);
        let (channel, addr, server) = serve_objects(&source).await;
        let id = ObjectId::random();
        let err = pull_object(&target.client, channel, &addr, id).await.expect_err("nothing to pull");
        assert!(matches!(&err, PullError::Missing(m) if m.contains("no longer on its node")), "{err}");
        assert_eq!(target.client.get(&id, 0).await.expect("get"), None);
        server.abort();
    }

    /// A peer that stops after the first of several chunks.
    struct Truncating;

    #[tonic::async_trait]
    impl ObjectManager for Truncating {
        type PullStream = ChunkStream;

        async fn pull(&self, _request: Request<PullChunks>) -> Result<Response<ChunkStream>, Status> {
            let first = ObjectChunk { total_size: 100, metadata: 0, offset: 0, data: Bytes::from_static(&[7; 10]) };
            Ok(Response::new(Box::pin(tokio_stream::iter([Ok(first)]))))
        }
    }

    #[tokio::test]
    async fn a_transfer_cut_short_is_aborted_so_the_object_can_arrive_later() {
        let target = Store::start("dst-cut").await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let router =
            grpc_server_with(Policy::Open, None).expect("a server").add_service(ObjectManagerServer::new(Truncating));
        let server = tokio::spawn(rtd_common::rpc::serve_grpc(listener, router));
        let channel = channel_to(&addr, None).await;
        let id = ObjectId::random();
        let err = pull_object(&target.client, channel, &addr, id).await.expect_err("cut short");
        assert!(matches!(&err, PullError::Failed(m) if m.contains("ended early")), "{err}");
        assert_eq!(target.client.get(&id, 0).await.expect("get"), None);
        target.client.put(&id, &[1; 100], 0).await.expect("the aborted copy left no entry behind");
        server.abort();
    }
}
