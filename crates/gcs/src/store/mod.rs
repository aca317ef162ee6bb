//! Storage behind the GCS: what the head must remember to survive a restart.
//!
//! The GCS keeps its tables in memory and writes every change through a [`GcsStore`]
//! to a [`Storage`] backend: the in-memory one (tests, and clusters that end with
//! their driver), the embedded durable database in the head's temp dir (the default
//! for `rtd start --head`), or Redis (`--redis-address`). On start the GCS reads back
//! a [`Snapshot`] of every table (see `restore`), so a head killed and started again
//! with the same command finds the cluster it left.
//!
//! Writes are durable before the GCS answers the request that made them, and cheap
//! with *group commit*: writers only append to a queue; one writer thread takes
//! everything queued, commits it in a single transaction, and then publishes how far
//! it got. A request's reply waits for [`GcsStore::durable`], so many concurrent
//! requests share one transaction instead of paying one each. The in-memory store
//! commits each write as it is made instead: there is nothing to wait for.
//!
//! A clean stop of the head ends the cluster: [`GcsStore::end_cluster`] clears the
//! backend, so the next start is a fresh cluster. A crash leaves it for the next start.

mod embedded;
mod memory;
pub mod records;
mod redis_store;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

pub use embedded::EmbeddedStorage;
pub use memory::MemoryStorage;
pub use redis_store::{RedisConfig, RedisStorage};

/// The GCS's stored tables. Rows are bytes: keys as the tables key them, values
/// protobuf messages (see `restore`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// The cluster id and the job counter.
    Meta,
    /// Internal KV, the function table among it.
    Kv,
    Jobs,
    Nodes,
    Actors,
    PlacementGroups,
}

impl Table {
    pub const ALL: [Table; 6] =
        [Table::Meta, Table::Kv, Table::Jobs, Table::Nodes, Table::Actors, Table::PlacementGroups];

    /// The table's name in a backend (a database table, a Redis hash's suffix).
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Kv => "kv",
            Table::Jobs => "jobs",
            Table::Nodes => "nodes",
            Table::Actors => "actors",
            Table::PlacementGroups => "placement_groups",
        }
    }
}

/// One row written (`Some`) or deleted (`None`).
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    pub table: Table,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// Every stored row, by table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub tables: BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Snapshot {
    pub fn rows(&self, table: Table) -> impl Iterator<Item = (&Vec<u8>, &Vec<u8>)> {
        self.tables.get(&table).into_iter().flatten()
    }

    pub fn get(&self, table: Table, key: &[u8]) -> Option<&Vec<u8>> {
        self.tables.get(&table).and_then(|rows| rows.get(key))
    }

    pub fn is_empty(&self) -> bool {
        self.tables.values().all(BTreeMap::is_empty)
    }

    /// Applies committed writes, as a backend that keeps rows in memory does.
    pub fn apply(&mut self, writes: &[Write]) {
        for write in writes {
            let rows = self.tables.entry(write.table).or_default();
            match &write.value {
                Some(value) => rows.insert(write.key.clone(), value.clone()),
                None => rows.remove(&write.key),
            };
        }
    }
}

/// Why the store could not be opened, read or written; the message names the store.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// A place the GCS's tables are kept. Calls block; only the store's writer thread
/// (and start-up) makes them.
pub trait Storage: Send + 'static {
    /// Which store this is, for messages: "the embedded store at PATH", "Redis at HOST:PORT".
    fn describe(&self) -> String;
    /// Every row stored.
    fn load(&mut self) -> Result<Snapshot, StoreError>;
    /// Applies the writes atomically and durably.
    fn commit(&mut self, writes: &[Write]) -> Result<(), StoreError>;
    /// Removes every row: the cluster ended cleanly.
    fn clear(&mut self) -> Result<(), StoreError>;
    /// Whether a commit is as cheap as a map insert, so each write is committed as it
    /// is made on the caller's thread, with nothing to wait for (the in-memory store).
    fn commits_in_place(&self) -> bool {
        false
    }
}

/// Where the GCS keeps its tables, as the head's command line chose.
#[derive(Clone, Debug, PartialEq)]
pub enum StorageConfig {
    /// Only in the head's memory: gone when the head stops.
    Memory,
    /// The embedded database file at this path.
    Embedded(PathBuf),
    Redis(RedisConfig),
}

impl StorageConfig {
    /// Opens the store; an error names it (its file, or Redis's address).
    pub fn open(&self) -> Result<Box<dyn Storage>, StoreError> {
        Ok(match self {
            StorageConfig::Memory => Box::new(MemoryStorage::default()),
            StorageConfig::Embedded(path) => Box::new(EmbeddedStorage::open(path)?),
            StorageConfig::Redis(config) => Box::new(RedisStorage::connect(config.clone())?),
        })
    }
}

/// A store opened and read back whole, ready for the GCS to start on: opening it
/// first, before the head creates anything, makes a store that cannot be read an
/// error at start that leaves nothing behind.
pub struct OpenedStore {
    pub store: GcsStore,
    pub restored: records::Restored,
    /// Nothing was stored: a new cluster.
    pub fresh: bool,
}

impl OpenedStore {
    pub fn open(storage: Box<dyn Storage>) -> Result<Self, StoreError> {
        let (store, snapshot) = GcsStore::open(storage)?;
        let restored = records::Restored::decode(&snapshot, store.describe())?;
        Ok(Self { store, restored, fresh: snapshot.is_empty() })
    }
}

/// How long the writer waits before retrying a failed commit, growing to the cap.
const FIRST_RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// At a clean stop, how many tries a failing backend gets before the writer gives up
/// (a crash would leave the same state behind: the next start recovers it).
const TRIES_WHEN_STOPPING: u32 = 5;

#[derive(Default)]
struct Queue {
    writes: Vec<Write>,
    /// Writes queued since the store opened; a write's number is its position.
    enqueued: u64,
    /// The cluster ended cleanly: clear the backend after the last commit.
    clear: bool,
    closing: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The GCS's handle on its storage: takes writes, commits them, and tells when they
/// are durable. Dropping it commits what is queued and closes the backend.
pub struct GcsStore {
    describe: String,
    committer: Committer,
}

enum Committer {
    /// Each write is committed as it is made, on the caller's thread: the in-memory
    /// store, where a commit is a map insert and there is nothing to wait for.
    InPlace(Mutex<InPlace>),
    /// Writes are queued and committed in groups by a writer thread.
    Grouped(GroupCommit),
}

struct InPlace {
    storage: Box<dyn Storage>,
    /// The cluster ended cleanly: nothing more is kept.
    ended: bool,
}

struct GroupCommit {
    shared: Arc<Shared>,
    committed: watch::Receiver<u64>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl GroupCommit {
    fn start(storage: Box<dyn Storage>) -> Result<Self, StoreError> {
        let shared = Arc::new(Shared { queue: Mutex::new(Queue::default()), wake: Condvar::new() });
        let (committed_tx, committed) = watch::channel(0);
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("rtd-gcs-store".into())
            .spawn(move || write_loop(storage, writer_shared, committed_tx))
            .map_err(|e| StoreError(format!("starting the GCS store's writer thread: {e}")))?;
        Ok(Self { shared, committed, writer: Mutex::new(Some(writer)) })
    }

    fn push(&self, write: Write) {
        let mut queue = self.shared.lock();
        if queue.clear {
            return; // the cluster has ended: nothing more is kept
        }
        queue.writes.push(write);
        queue.enqueued += 1;
        drop(queue);
        self.shared.wake.notify_one();
    }

    /// Commits what is queued and stops the writer; blocks until done.
    fn close(&self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }
}

impl GcsStore {
    /// Reads every stored row, then starts committing. Fails (naming the store) if
    /// the backend cannot be read: a cluster is loaded whole or not at all.
    pub fn open(mut storage: Box<dyn Storage>) -> Result<(Self, Snapshot), StoreError> {
        let snapshot = storage.load()?;
        let describe = storage.describe();
        let committer = if storage.commits_in_place() {
            Committer::InPlace(Mutex::new(InPlace { storage, ended: false }))
        } else {
            Committer::Grouped(GroupCommit::start(storage)?)
        };
        Ok((Self { describe, committer }, snapshot))
    }

    /// A store in memory only, empty.
    pub fn in_memory() -> Self {
        let storage = Box::new(MemoryStorage::default());
        Self {
            describe: storage.describe(),
            committer: Committer::InPlace(Mutex::new(InPlace { storage, ended: false })),
        }
    }

    /// Which store this is, for messages.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    fn push(&self, write: Write) {
        match &self.committer {
            Committer::InPlace(in_place) => {
                let mut in_place = in_place.lock().unwrap_or_else(|p| p.into_inner());
                if !in_place.ended {
                    if let Err(e) = in_place.storage.commit(std::slice::from_ref(&write)) {
                        tracing::error!("committing GCS state in {}: {e}", self.describe);
                    }
                }
            }
            Committer::Grouped(group) => group.push(write),
        }
    }

    pub fn put(&self, table: Table, key: impl Into<Vec<u8>>, value: Vec<u8>) {
        self.push(Write { table, key: key.into(), value: Some(value) });
    }

    pub fn delete(&self, table: Table, key: impl Into<Vec<u8>>) {
        self.push(Write { table, key: key.into(), value: None });
    }

    /// Resolves once every write made before this call is committed.
    pub fn durable(&self) -> impl Future<Output = ()> + Send + 'static {
        let wait = match &self.committer {
            Committer::InPlace(_) => None,
            Committer::Grouped(group) => Some((group.shared.lock().enqueued, group.committed.clone())),
        };
        async move {
            if let Some((target, mut committed)) = wait {
                // An error means the writer is gone (the store closed): nothing to wait for.
                let _ = committed.wait_for(|done| *done >= target).await;
            }
        }
    }

    /// Whether some write made is not committed yet.
    pub fn has_uncommitted(&self) -> bool {
        match &self.committer {
            Committer::InPlace(_) => false,
            Committer::Grouped(group) => group.shared.lock().enqueued > *group.committed.borrow(),
        }
    }

    /// The cluster ends cleanly: commits what is queued, then removes everything
    /// stored, so the next start is a fresh cluster; blocks until done. Writes after
    /// this are dropped.
    pub fn end_cluster(&self) {
        match &self.committer {
            Committer::InPlace(in_place) => {
                let mut in_place = in_place.lock().unwrap_or_else(|p| p.into_inner());
                in_place.ended = true;
                if let Err(e) = in_place.storage.clear() {
                    tracing::error!("clearing the ended cluster's state in {}: {e}", self.describe);
                }
            }
            Committer::Grouped(group) => {
                group.shared.lock().clear = true;
                group.close();
            }
        }
    }
}

impl Drop for GcsStore {
    fn drop(&mut self) {
        if let Committer::Grouped(group) = &self.committer {
            group.close();
        }
    }
}

/// Keeps only the last write of each row: a batch commits each row once.
fn last_write_per_row(writes: Vec<Write>) -> Vec<Write> {
    let mut position: HashMap<(Table, Vec<u8>), usize> = HashMap::new();
    let mut out: Vec<Write> = Vec::with_capacity(writes.len());
    for write in writes {
        match position.get(&(write.table, write.key.clone())) {
            Some(&i) => out[i] = write,
            None => {
                position.insert((write.table, write.key.clone()), out.len());
                out.push(write);
            }
        }
    }
    out
}

/// Retries `op` with backoff until it succeeds, logging failures; when `stopping`,
/// gives up after a few tries. Returns whether it succeeded.
fn with_retries(what: &str, describe: &str, stopping: bool, mut op: impl FnMut() -> Result<(), StoreError>) -> bool {
    let mut delay = FIRST_RETRY;
    let mut tries = 0;
    loop {
        match op() {
            Ok(()) => {
                if tries > 0 {
                    tracing::warn!("{what} in {describe} succeeded after {tries} failed tries");
                }
                return true;
            }
            Err(e) => {
                tries += 1;
                if stopping && tries >= TRIES_WHEN_STOPPING {
                    tracing::error!("giving up on {what} in {describe} at shutdown: {e}");
                    return false;
                }
                tracing::warn!("{what} in {describe} failed (try {tries}); retrying in {delay:?}: {e}");
                std::thread::sleep(delay);
                delay = (delay * 2).min(MAX_RETRY);
            }
        }
    }
}

/// The writer thread: commits what is queued, in groups, until the store closes.
/// A failing backend is retried with backoff; nothing queued is dropped meanwhile.
fn write_loop(mut storage: Box<dyn Storage>, shared: Arc<Shared>, committed: watch::Sender<u64>) {
    let describe = storage.describe();
    loop {
        let (writes, upto, clear, closing) = {
            let mut queue = shared.lock();
            while queue.writes.is_empty() && !queue.closing {
                queue = shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
            (std::mem::take(&mut queue.writes), queue.enqueued, queue.clear, queue.closing)
        };
        if !writes.is_empty() {
            let writes = last_write_per_row(writes);
            with_retries("committing GCS state", &describe, closing, || storage.commit(&writes));
        }
        committed.send_replace(upto);
        if closing && shared.lock().writes.is_empty() {
            if clear {
                with_retries("clearing the ended cluster's state", &describe, true, || storage.clear());
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(table: Table, key: &str, value: Option<&str>) -> Write {
        Write { table, key: key.into(), value: value.map(Into::into) }
    }

    #[test]
    fn a_batch_keeps_the_last_write_of_each_row_in_first_write_order() {
        let writes = vec![
            row(Table::Kv, "a", Some("1")),
            row(Table::Jobs, "a", Some("job")),
            row(Table::Kv, "a", None),
            row(Table::Kv, "b", Some("2")),
        ];
        assert_eq!(
            last_write_per_row(writes),
            vec![row(Table::Kv, "a", None), row(Table::Jobs, "a", Some("job")), row(Table::Kv, "b", Some("2"))]
        );
    }

    #[tokio::test]
    async fn writes_are_durable_once_committed_and_a_closed_store_reopens_with_them() {
        let memory = MemoryStorage::default();
        let (store, snapshot) = GcsStore::open(Box::new(memory.clone())).expect("opens");
        assert!(snapshot.is_empty());
        store.put(Table::Kv, "k", b"v".to_vec());
        store.put(Table::Meta, "gone", b"x".to_vec());
        store.delete(Table::Meta, "gone");
        store.durable().await;
        assert!(!store.has_uncommitted());
        assert_eq!(memory.snapshot().get(Table::Kv, b"k").map(Vec::as_slice), Some(&b"v"[..]));
        store.put(Table::Jobs, "j", b"job".to_vec());
        drop(store); // commits what is queued

        let (_again, snapshot) = GcsStore::open(Box::new(memory)).expect("reopens");
        assert_eq!(snapshot.get(Table::Jobs, b"j").map(Vec::as_slice), Some(&b"job"[..]));
        assert!(snapshot.get(Table::Meta, b"gone").is_none());
    }

    #[test]
    fn ending_the_cluster_clears_the_store_and_drops_later_writes() {
        let memory = MemoryStorage::default();
        let (store, _) = GcsStore::open(Box::new(memory.clone())).expect("opens");
        store.put(Table::Kv, "k", b"v".to_vec());
        store.end_cluster();
        store.put(Table::Kv, "late", b"v".to_vec());
        drop(store);
        assert!(memory.snapshot().is_empty());
    }

    /// A backend whose first commits fail, as a Redis that went away and came back.
    struct Flaky {
        failures_left: u32,
        inner: MemoryStorage,
    }

    impl Storage for Flaky {
        fn describe(&self) -> String {
            "a flaky store".into()
        }
        fn load(&mut self) -> Result<Snapshot, StoreError> {
            self.inner.load()
        }
        fn commit(&mut self, writes: &[Write]) -> Result<(), StoreError> {
            if self.failures_left > 0 {
                self.failures_left -= 1;
                return Err(StoreError("connection refused".into()));
            }
            self.inner.commit(writes)
        }
        fn clear(&mut self) -> Result<(), StoreError> {
            self.inner.clear()
        }
    }

    #[tokio::test]
    async fn a_failing_backend_is_retried_and_nothing_queued_is_dropped() {
        let memory = MemoryStorage::default();
        let (store, _) = GcsStore::open(Box::new(Flaky { failures_left: 3, inner: memory.clone() })).expect("opens");
        store.put(Table::Kv, "k", b"v".to_vec());
        let durable = store.durable();
        store.put(Table::Kv, "k2", b"v2".to_vec());
        tokio::time::timeout(Duration::from_secs(10), durable).await.expect("committed after the retries");
        tokio::time::timeout(Duration::from_secs(10), store.durable()).await.expect("the second write too");
        assert_eq!(memory.snapshot().rows(Table::Kv).count(), 2);
    }
}
