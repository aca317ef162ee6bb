//! The client side of plasma, used by workers and drivers on the same node.
//!
//! Control (create, seal, get, release, delete) goes over the store's Unix socket; data
//! never does. The client maps the store's region itself and reads and writes objects
//! in place at the offsets the store hands out, which is what makes a `get` of a large
//! array zero-copy. A `get` pins the object for this connection until `release`; if the
//! process dies, the store drops its pins when the connection closes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rtd_common::proto::{
    ErrorCode, PlasmaCreate, PlasmaDelete, PlasmaGet, PlasmaListSpilled, PlasmaRelease, PlasmaSeal,
};
use rtd_common::rpc::{RpcClient, RpcError};
use rtd_common::ObjectId;

use crate::shm::ShmRegion;
use crate::store::ObjectInfo;

#[derive(Debug, thiserror::Error)]
pub enum PlasmaError {
    /// The store has no room for the object even after spilling; the message says why.
    #[error("{0}")]
    Full(String),
    /// An object with this id is already in the store (possibly still being written).
    #[error("{0}")]
    Exists(String),
    #[error("cannot map the object store's shared memory {}: {source}; is the node daemon running with this session?", path.display())]
    Region { path: PathBuf, source: std::io::Error },
    #[error("object store protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

/// A connection to the node's object store plus this process's mapping of its region.
/// Cheap to clone; clones share the connection (and therefore the pins).
#[derive(Clone)]
pub struct PlasmaClient {
    rpc: RpcClient,
    region: Arc<ShmRegion>,
}

impl PlasmaClient {
    pub async fn connect(socket: &str, shm_path: &Path) -> Result<Self, PlasmaError> {
        let region =
            ShmRegion::open(shm_path).map_err(|source| PlasmaError::Region { path: shm_path.to_path_buf(), source })?;
        let rpc = RpcClient::connect(socket).await?;
        Ok(Self { rpc, region: Arc::new(region) })
    }

    /// Reserves `size` bytes for a new object and returns the offset to write them at in
    /// [`region`](Self::region). Call [`seal`](Self::seal) when done writing.
    pub async fn create(&self, id: &ObjectId, size: u64, metadata: u32) -> Result<u64, PlasmaError> {
        self.create_object(id, size, metadata, false).await
    }

    /// Like `create`, for a copy of an object whose primary lives on another node (the
    /// store evicts it instead of spilling it).
    pub async fn create_copy(&self, id: &ObjectId, size: u64, metadata: u32) -> Result<u64, PlasmaError> {
        self.create_object(id, size, metadata, true).await
    }

    async fn create_object(
        &self,
        id: &ObjectId,
        size: u64,
        metadata: u32,
        secondary: bool,
    ) -> Result<u64, PlasmaError> {
        let request = PlasmaCreate { id: id.to_vec().into(), size, metadata, secondary };
        let reply = self.rpc.request(request).await.map_err(full_or)?;
        self.check_range(reply.offset, size)?;
        Ok(reply.offset)
    }

    /// Makes the object immutable and visible to every `get`, waking those waiting.
    pub async fn seal(&self, id: &ObjectId) -> Result<(), PlasmaError> {
        self.rpc.request(PlasmaSeal { id: id.to_vec().into() }).await?;
        Ok(())
    }

    /// Creates, fills and seals an object in one go.
    pub async fn put(&self, id: &ObjectId, data: &[u8], metadata: u32) -> Result<(), PlasmaError> {
        let size = data.len() as u64;
        let offset = self.create(id, size, metadata).await?;
        // SAFETY: between create and seal the creator is the only one who knows this
        // block; `create` checked that it lies inside the mapping.
        match unsafe { self.region.slice_mut(offset, size) } {
            Some(dest) => dest.copy_from_slice(data),
            None => return Err(PlasmaError::Protocol(format!("offset {offset} is outside the region"))),
        }
        self.seal(id).await
    }

    /// Pins a sealed object and says where it is, waiting up to `timeout_ms` for it to be
    /// sealed (0: do not wait). `None` if it is not there by then. Every `Some` must be
    /// paired with one [`release`](Self::release).
    pub async fn get(&self, id: &ObjectId, timeout_ms: u64) -> Result<Option<ObjectInfo>, PlasmaError> {
        let reply = self.rpc.request(PlasmaGet { id: id.to_vec().into(), timeout_ms }).await.map_err(full_or)?;
        if !reply.found {
            return Ok(None);
        }
        self.check_range(reply.offset, reply.size)?;
        Ok(Some(ObjectInfo { offset: reply.offset, size: reply.size, metadata: reply.metadata }))
    }

    /// Drops one pin taken by `get`. One-way: a failure can only mean the connection is
    /// closed, and a closed connection has already dropped all its pins.
    pub fn release(&self, id: &ObjectId) {
        let _ = self.rpc.send(PlasmaRelease { id: id.to_vec().into() });
    }

    /// Deletes objects now, or when their last reader releases them.
    pub async fn delete(&self, ids: &[ObjectId]) -> Result<(), PlasmaError> {
        let ids = ids.iter().map(|id| id.to_vec().into()).collect();
        self.rpc.request(PlasmaDelete { ids }).await?;
        Ok(())
    }

    /// The objects the store has spilled to disk.
    pub async fn spilled(&self) -> Result<Vec<ObjectId>, PlasmaError> {
        let ids = self.rpc.request(PlasmaListSpilled {}).await?.ids;
        Ok(ids.iter().filter_map(|id| ObjectId::from_bytes(id).ok()).collect())
    }

    /// This process's mapping of the store's region.
    pub fn region(&self) -> &Arc<ShmRegion> {
        &self.region
    }

    /// The bytes of an object this client has pinned.
    ///
    /// # Safety
    /// `info` must come from a `get` whose pin has not been released yet (otherwise the
    /// space may be reused for another object while the slice lives).
    pub unsafe fn object_bytes(&self, info: &ObjectInfo) -> Option<&[u8]> {
        // SAFETY: sealed objects are immutable and the caller holds a pin.
        unsafe { self.region.slice(info.offset, info.size) }
    }

    pub fn rpc(&self) -> &RpcClient {
        &self.rpc
    }

    fn check_range(&self, offset: u64, size: u64) -> Result<(), PlasmaError> {
        match offset.checked_add(size) {
            Some(end) if end <= self.region.len() => Ok(()),
            _ => Err(PlasmaError::Protocol(format!(
                "store returned bytes {offset}+{size} beyond the {}-byte region; client and store map different files?",
                self.region.len()
            ))),
        }
    }
}

fn full_or(e: RpcError) -> PlasmaError {
    match e {
        RpcError::Remote { code: ErrorCode::StoreFull, message } => PlasmaError::Full(message),
        RpcError::Remote { code: ErrorCode::AlreadyExists, message } => PlasmaError::Exists(message),
        e => PlasmaError::Rpc(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::PlasmaService;
    use crate::store::ObjectStore;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    struct Node {
        dir: PathBuf,
        socket: String,
        shm: PathBuf,
        service: Arc<PlasmaService>,
        server: tokio::task::JoinHandle<()>,
    }

    impl Node {
        fn start(tag: &str, capacity: u64) -> Node {
            static N: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "rtd-plasma-client-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let shm = dir.join("plasma.shm");
            let region = Arc::new(ShmRegion::create(&shm, capacity).expect("region"));
            let service = PlasmaService::new(ObjectStore::new(region, dir.join("spill")));
            let sock = dir.join("plasma.sock");
            let listener = rtd_common::rpc::bind(&sock).expect("bind");
            let server = tokio::spawn(rtd_common::rpc::serve(listener, service.clone()));
            Node { socket: sock.to_string_lossy().into_owned(), shm, service, server, dir }
        }

        async fn client(&self) -> PlasmaClient {
            PlasmaClient::connect(&self.socket, &self.shm).await.expect("connect")
        }

        async fn wait_for(&self, what: &str, cond: impl Fn(&crate::store::StoreStats) -> bool) {
            let start = Instant::now();
            while !cond(&self.service.stats()) {
                assert!(start.elapsed() < Duration::from_secs(5), "timed out waiting for {what}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    impl Drop for Node {
        fn drop(&mut self) {
            self.server.abort();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn bytes_of(client: &PlasmaClient, info: &ObjectInfo) -> Vec<u8> {
        unsafe { client.object_bytes(info) }.expect("in region").to_vec()
    }

    #[tokio::test]
    async fn objects_written_by_one_client_are_read_by_another() {
        let node = Node::start("share", 1 << 20);
        let writer = node.client().await;
        let reader = node.client().await;
        let id = ObjectId::random();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let offset = writer.create(&id, data.len() as u64, 1).await.expect("create");
        unsafe { writer.region().slice_mut(offset, data.len() as u64) }.expect("in region").copy_from_slice(&data);
        assert_eq!(reader.get(&id, 0).await.expect("get"), None, "not visible before seal");
        writer.seal(&id).await.expect("seal");
        let info = reader.get(&id, 0).await.expect("get").expect("sealed");
        assert_eq!((info.offset, info.size, info.metadata), (offset, 10_000, 1));
        assert_eq!(bytes_of(&reader, &info), data);
        reader.release(&id);
        node.wait_for("release", |s| s.pinned_bytes == 0).await;

        let err = writer.create(&id, 1, 0).await.expect_err("duplicate id");
        assert!(matches!(err, PlasmaError::Exists(_)), "{err}");
        let err = writer.create(&ObjectId::random(), 2 << 20, 0).await.expect_err("too big");
        assert!(matches!(err, PlasmaError::Full(ref m) if m.contains("object store full")), "{err}");

        writer.delete(&[id]).await.expect("delete");
        assert_eq!(reader.get(&id, 0).await.expect("get"), None);
        assert_eq!(node.service.stats().used, 0);
    }

    #[tokio::test]
    async fn a_waiting_get_wakes_on_seal() {
        let node = Node::start("wait", 1 << 20);
        let writer = node.client().await;
        let reader = node.client().await;
        let id = ObjectId::random();
        let waiting = {
            let reader = reader.clone();
            tokio::spawn(async move { reader.get(&id, 10_000).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        writer.put(&id, b"hello plasma", 0).await.expect("put");
        let start = Instant::now();
        let info = waiting.await.expect("task").expect("get").expect("woken by seal");
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(bytes_of(&reader, &info), b"hello plasma");
    }

    #[tokio::test]
    async fn get_times_out_with_none() {
        let node = Node::start("timeout", 1 << 20);
        let reader = node.client().await;
        let start = Instant::now();
        assert_eq!(reader.get(&ObjectId::random(), 50).await.expect("get"), None);
        assert!(start.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn disconnect_releases_pins_and_aborts_unsealed() {
        let node = Node::start("disconnect", 1 << 20);
        let writer = node.client().await;
        let id = ObjectId::random();
        writer.put(&id, &[7u8; 1000], 0).await.expect("put");
        let reader = node.client().await;
        reader.get(&id, 0).await.expect("get").expect("sealed");
        reader.get(&id, 0).await.expect("get").expect("sealed");
        reader.create(&ObjectId::random(), 5000, 0).await.expect("create");
        // A get still waiting when its client goes away must not pin afterwards.
        let late = ObjectId::random();
        let waiting = reader.rpc().start_request(PlasmaGet { id: late.to_vec().into(), timeout_ms: 10_000 });
        assert_eq!(node.service.stats().pinned_bytes, 1000);
        drop(reader);
        drop(waiting);
        node.wait_for("disconnect", |s| s.pinned_bytes == 0 && s.num_objects == 1).await;
        writer.put(&late, b"late", 0).await.expect("put");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(node.service.stats().pinned_bytes, 0);
        writer.delete(&[id, late]).await.expect("delete");
        node.wait_for("delete", |s| s.used == 0).await;
    }

    #[tokio::test]
    async fn bad_region_path_is_explained() {
        let err = PlasmaClient::connect("/nonexistent/socket", Path::new("/nonexistent/rtd-plasma-region"))
            .await
            .err()
            .expect("no such region");
        assert!(err.to_string().contains("/nonexistent/rtd-plasma-region"), "{err}");
    }
}
