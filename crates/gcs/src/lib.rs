//! The GCS, Ray's control plane: one per cluster, on the head node. It owns the tables
//! (nodes, jobs, KV with the function table, task events in `task_table`), the actor
//! and placement-group managers, node health checks (`server`), the timeline
//! (`timeline`), and the client raylets use to reach it (`client`).

pub mod actor_manager;
pub mod bundle_policy;
pub mod client;
pub mod placement_group_manager;
pub mod server;
pub mod store;
pub mod task_table;
pub mod timeline;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message as _;
use rtd_common::proto::{JobInfo, NodeInfo, ResourceMap, WorkerInfo};
use rtd_common::{JobId, NodeId};

use crate::store::records::{Restored, NEXT_JOB_KEY};
use crate::store::{GcsStore, Table};

/// What a node reports about its resources in a heartbeat.
#[derive(Default)]
pub struct NodeUsage {
    pub total: ResourceMap,
    pub available: ResourceMap,
    pub pending_demands: Vec<ResourceMap>,
}

/// The GCS's tables. Every change to what a restarted head must remember (KV, jobs
/// and the job counter, nodes) is written through to `store`; heartbeats' resource
/// figures and the worker table are not (they are reported again).
pub struct Gcs {
    store: Arc<GcsStore>,
    kv: Mutex<HashMap<String, Bytes>>,
    nodes: Mutex<Vec<NodeInfo>>,
    /// When each node last reported (heartbeat).
    last_seen: Mutex<HashMap<Vec<u8>, Instant>>,
    next_job: AtomicU32,
    jobs: Mutex<Vec<JobInfo>>,
    workers: Mutex<WorkerTable>,
}

/// Dead workers kept for the state API; the oldest go first.
const MAX_DEAD_WORKERS: usize = 10_000;

/// Worker and driver processes by id, as their raylets reported them.
#[derive(Default)]
struct WorkerTable {
    by_id: HashMap<Bytes, WorkerInfo>,
    /// Dead workers in the order they died.
    dead: std::collections::VecDeque<Bytes>,
}

/// Milliseconds since the Unix epoch, as job records carry time.
fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Default for Gcs {
    fn default() -> Self {
        Self::new()
    }
}

impl Gcs {
    /// Empty tables, kept in memory only.
    pub fn new() -> Self {
        Self::with_store(Arc::new(GcsStore::in_memory()))
    }

    /// Empty tables written through to `store`.
    pub fn with_store(store: Arc<GcsStore>) -> Self {
        Self {
            store,
            kv: Mutex::default(),
            nodes: Mutex::default(),
            last_seen: Mutex::default(),
            next_job: AtomicU32::new(1),
            jobs: Mutex::default(),
            workers: Mutex::default(),
        }
    }

    /// Puts back what a store held: KV, jobs, the job counter and nodes. Nodes that
    /// were alive count as heard from now, so the usual timeout declares them dead if
    /// they do not report again.
    pub fn restore(&self, restored: &Restored) {
        self.kv.lock().extend(restored.kv.iter().cloned());
        *self.jobs.lock() = restored.jobs.clone();
        if let Some(next) = restored.next_job {
            self.next_job.store(next, Ordering::Relaxed);
        }
        let now = Instant::now();
        let mut last_seen = self.last_seen.lock();
        for node in restored.nodes.iter().filter(|n| n.alive) {
            last_seen.insert(node.node_id.to_vec(), now);
        }
        *self.nodes.lock() = restored.nodes.clone();
    }

    /// The store the tables are written through to.
    pub fn store(&self) -> &Arc<GcsStore> {
        &self.store
    }

    fn store_job(&self, job: &JobInfo) {
        self.store.put(Table::Jobs, job.job_id.to_vec(), job.encode_to_vec());
    }

    fn store_node(&self, node: &NodeInfo) {
        self.store.put(Table::Nodes, node.node_id.to_vec(), node.encode_to_vec());
    }

    pub fn kv_put(&self, key: String, value: Bytes) {
        let mut kv = self.kv.lock();
        self.store.put(Table::Kv, key.as_bytes(), value.to_vec());
        kv.insert(key, value);
    }

    pub fn kv_get(&self, key: &str) -> Option<Bytes> {
        self.kv.lock().get(key).cloned()
    }

    /// Removes `key`; whether it was there.
    pub fn kv_delete(&self, key: &str) -> bool {
        let mut kv = self.kv.lock();
        let found = kv.remove(key).is_some();
        if found {
            self.store.delete(Table::Kv, key.as_bytes());
        }
        found
    }

    /// The keys that start with `prefix`, sorted.
    pub fn kv_keys(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.kv.lock().keys().filter(|k| k.starts_with(prefix)).cloned().collect();
        keys.sort();
        keys
    }

    /// Jobs are numbered in the order drivers connect, as in Ray.
    /// The counter is stored, so a restarted head never hands out an id again.
    pub fn next_job_id(&self) -> JobId {
        // Under the jobs lock, so the stored counter only ever grows.
        let _jobs = self.jobs.lock();
        let id = self.next_job.fetch_add(1, Ordering::Relaxed);
        self.store.put(Table::Meta, NEXT_JOB_KEY, id.wrapping_add(1).to_be_bytes().to_vec());
        JobId(id.to_be_bytes())
    }

    /// Records a driver's job as started now.
    pub fn add_job(&self, mut job: JobInfo) {
        job.start_time_ms = now_ms();
        let mut jobs = self.jobs.lock();
        self.store_job(&job);
        jobs.push(job);
    }

    /// The job's driver is gone.
    pub fn job_finished(&self, job_id: &[u8]) {
        if let Some(job) = self.jobs.lock().iter_mut().find(|j| j.job_id.as_ref() == job_id && !j.is_dead) {
            job.is_dead = true;
            job.end_time_ms = now_ms();
            self.store_job(job);
        }
    }

    /// A node died: the jobs whose driver was connected there are finished (as Ray's
    /// job manager does on a node's death), since the driver's link went with it.
    pub fn finish_jobs_of_node(&self, node: &NodeId) {
        for job in self.jobs.lock().iter_mut().filter(|j| !j.is_dead && j.driver_node_id.as_ref() == node.as_bytes()) {
            job.is_dead = true;
            job.end_time_ms = now_ms();
            self.store_job(job);
        }
    }

    pub fn jobs(&self) -> Vec<JobInfo> {
        self.jobs.lock().clone()
    }

    /// A raylet's report of a worker or driver: it started, or it is gone.
    pub fn report_worker(&self, mut worker: WorkerInfo) {
        let mut table = self.workers.lock();
        let now = now_ms();
        let id = worker.worker_id.clone();
        match table.by_id.get_mut(&id) {
            Some(held) => {
                if !held.is_alive {
                    return; // a dead worker stays dead
                }
                held.is_alive = worker.is_alive;
            }
            None => {
                worker.start_time_ms = now;
                table.by_id.insert(id.clone(), worker);
            }
        }
        let Some(held) = table.by_id.get_mut(&id) else { return };
        if !held.is_alive {
            held.end_time_ms = now;
            table.dead.push_back(id);
            while table.dead.len() > MAX_DEAD_WORKERS {
                if let Some(old) = table.dead.pop_front() {
                    table.by_id.remove(&old);
                }
            }
        }
    }

    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.workers.lock().by_id.values().cloned().collect()
    }

    /// Adds a node, or updates one that registers again (keeping when it started).
    pub fn register_node(&self, mut node: NodeInfo) {
        let started = self
            .with_nodes(|nodes| nodes.iter().find(|n| n.node_id == node.node_id && n.alive).map(|n| n.start_time_ms));
        node.start_time_ms = started.filter(|t| *t > 0).unwrap_or_else(now_ms);
        node.end_time_ms = 0;
        self.last_seen.lock().insert(node.node_id.to_vec(), Instant::now());
        let mut nodes = self.nodes.lock();
        nodes.retain(|n| n.node_id != node.node_id);
        self.store_node(&node);
        nodes.push(node);
    }

    /// A node's heartbeat with its free resources; false if the node is unknown or
    /// already declared dead (it must not come back under the same id).
    pub fn report(&self, node_id: &[u8], usage: NodeUsage) -> bool {
        let mut nodes = self.nodes.lock();
        let Some(node) = nodes.iter_mut().find(|n| n.node_id.as_ref() == node_id && n.alive) else {
            return false;
        };
        node.total = Some(usage.total);
        node.available = Some(usage.available);
        node.pending_demands = usage.pending_demands;

        self.last_seen.lock().insert(node_id.to_vec(), Instant::now());
        true
    }

    /// Whether the GCS declared this node dead (it must not come back under its id).
    pub fn declared_dead(&self, node_id: &NodeId) -> bool {
        self.nodes.lock().iter().any(|n| n.node_id.as_ref() == node_id.as_bytes() && !n.alive)
    }

    /// Marks a node dead; true if it was alive.
    pub fn mark_dead(&self, node_id: &NodeId) -> bool {
        let mut nodes = self.nodes.lock();
        match nodes.iter_mut().find(|n| n.node_id.as_ref() == node_id.as_bytes() && n.alive) {
            Some(node) => {
                node.alive = false;
                node.end_time_ms = now_ms();
                self.store_node(node);
                true
            }
            None => false,
        }
    }

    /// Alive nodes (other than `except`) that have not reported within `timeout`.
    pub fn silent_nodes(&self, timeout: Duration, except: &NodeId) -> Vec<NodeId> {
        let seen = self.last_seen.lock();
        self.nodes
            .lock()
            .iter()
            .filter(|n| n.alive && n.node_id.as_ref() != except.as_bytes())
            .filter(|n| seen.get(n.node_id.as_ref()).is_none_or(|t| t.elapsed() > timeout))
            .filter_map(|n| NodeId::from_bytes(&n.node_id).ok())
            .collect()
    }

    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes.lock().clone()
    }

    /// Reads the node table in place. A node's resource maps hold every committed
    /// bundle's resources, so callers that run once per group (placing, reserving)
    /// read what they need here instead of copying the table, which would make
    /// creating N groups cost O(N²).
    pub fn with_nodes<T>(&self, f: impl FnOnce(&[NodeInfo]) -> T) -> T {
        f(&self.nodes.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_increase() {
        let gcs = Gcs::new();
        let a = gcs.next_job_id();
        let b = gcs.next_job_id();
        assert!(a < b);
        assert_eq!(a.hex(), "00000001");
    }

    #[test]
    fn workers_start_alive_and_die_once() {
        let gcs = Gcs::new();
        let worker = WorkerInfo { worker_id: Bytes::from_static(b"w1"), pid: 5, is_alive: true, ..Default::default() };
        gcs.report_worker(worker.clone());
        assert!(gcs.workers()[0].is_alive && gcs.workers()[0].start_time_ms > 0);
        gcs.report_worker(WorkerInfo { is_alive: false, ..worker.clone() });
        gcs.report_worker(worker);
        let workers = gcs.workers();
        assert_eq!(workers.len(), 1);
        assert!(!workers[0].is_alive && workers[0].end_time_ms >= workers[0].start_time_ms);
    }

    #[test]
    fn jobs_start_and_finish_once() {
        let gcs = Gcs::new();
        let id = gcs.next_job_id();
        gcs.add_job(JobInfo { job_id: id.to_vec().into(), driver_pid: 9, ..Default::default() });
        assert!(!gcs.jobs()[0].is_dead && gcs.jobs()[0].start_time_ms > 0);
        gcs.job_finished(&id.to_vec());
        let end = gcs.jobs()[0].end_time_ms;
        assert!(gcs.jobs()[0].is_dead && end >= gcs.jobs()[0].start_time_ms);
        gcs.job_finished(&id.to_vec());
        assert_eq!(gcs.jobs()[0].end_time_ms, end);
    }

    #[test]
    fn a_dead_nodes_jobs_finish_and_others_run_on() {
        let gcs = Gcs::new();
        let (dead, alive) = (NodeId::random(), NodeId::random());
        for node in [dead, alive] {
            let id = gcs.next_job_id();
            gcs.add_job(JobInfo {
                job_id: id.to_vec().into(),
                driver_node_id: node.to_vec().into(),
                ..Default::default()
            });
        }
        gcs.finish_jobs_of_node(&dead);
        let finished: Vec<bool> = gcs.jobs().iter().map(|j| j.is_dead && j.end_time_ms > 0).collect();
        assert_eq!(finished, vec![true, false]);
    }

    #[test]
    fn kv_round_trips_and_nodes_reregister() {
        let gcs = Gcs::new();
        gcs.kv_put("fn:1".into(), Bytes::from_static(b"code"));
        assert_eq!(gcs.kv_get("fn:1").as_deref(), Some(&b"code"[..]));
        assert!(gcs.kv_get("fn:2").is_none());
        gcs.kv_put("fn:0".into(), Bytes::from_static(b"other"));
        gcs.kv_put("job:1".into(), Bytes::from_static(b"job"));
        assert_eq!(gcs.kv_keys("fn:"), vec!["fn:0".to_string(), "fn:1".to_string()]);
        assert!(gcs.kv_delete("fn:0") && !gcs.kv_delete("fn:0"));
        assert_eq!(gcs.kv_keys("fn:"), vec!["fn:1".to_string()]);
        let id = NodeId::random();
        let node = NodeInfo { node_id: id.to_vec().into(), alive: true, ..Default::default() };
        gcs.register_node(node.clone());
        gcs.register_node(node);
        assert_eq!(gcs.nodes().len(), 1);
        assert!(gcs.nodes()[0].alive);
        assert!(gcs.report(&id.to_vec(), NodeUsage::default()));
        assert!(gcs.silent_nodes(Duration::from_secs(60), &NodeId::nil()).is_empty());
        assert_eq!(gcs.silent_nodes(Duration::ZERO, &NodeId::nil()), vec![id]);
        assert!(gcs.nodes()[0].start_time_ms > 0 && gcs.nodes()[0].end_time_ms == 0);
        assert!(gcs.mark_dead(&id));
        assert!(gcs.nodes()[0].end_time_ms >= gcs.nodes()[0].start_time_ms);
        assert!(!gcs.report(&id.to_vec(), NodeUsage::default()));
    }

    #[test]
    fn a_node_registering_again_keeps_its_start_and_a_dead_one_is_known_as_dead() {
        let gcs = Gcs::new();
        let id = NodeId::random();
        let node = NodeInfo { node_id: id.to_vec().into(), alive: true, ..Default::default() };
        gcs.register_node(node.clone());
        let started = gcs.nodes()[0].start_time_ms;
        std::thread::sleep(Duration::from_millis(2));
        gcs.register_node(node);
        assert_eq!(gcs.nodes()[0].start_time_ms, started);
        assert!(!gcs.declared_dead(&id) && !gcs.declared_dead(&NodeId::random()));
        gcs.mark_dead(&id);
        assert!(gcs.declared_dead(&id));
    }

    #[test]
    fn the_tables_come_back_from_an_embedded_store_reopened_on_the_same_file() {
        use crate::store::{EmbeddedStorage, OpenedStore};
        let dir = std::env::temp_dir().join(format!("rtd-gcs-tables-{}", std::process::id()));
        let path = dir.join("gcs.sqlite");
        let _ = std::fs::remove_dir_all(&dir);
        let open = || OpenedStore::open(Box::new(EmbeddedStorage::open(&path).expect("opens"))).expect("reads");

        let first = open();
        assert!(first.fresh);
        let gcs = Gcs::with_store(Arc::new(first.store));
        gcs.kv_put("fn:1".into(), Bytes::from_static(b"code"));
        let job = gcs.next_job_id();
        gcs.add_job(JobInfo { job_id: job.to_vec().into(), driver_pid: 9, ..Default::default() });
        let finished = gcs.next_job_id();
        gcs.add_job(JobInfo { job_id: finished.to_vec().into(), driver_pid: 10, ..Default::default() });
        gcs.job_finished(&finished.to_vec());
        let (alive, dead) = (NodeId::random(), NodeId::random());
        for id in [alive, dead] {
            gcs.register_node(NodeInfo { node_id: id.to_vec().into(), alive: true, ..Default::default() });
        }
        gcs.mark_dead(&dead);
        let (kv, jobs, nodes) = (gcs.kv.lock().clone(), gcs.jobs(), gcs.nodes());
        drop(gcs); // commits and closes the file, as a killed head leaves it

        let second = open();
        assert!(!second.fresh);
        let again = Gcs::with_store(Arc::new(second.store));
        again.restore(&second.restored);
        assert_eq!(*again.kv.lock(), kv);
        assert_eq!(again.jobs(), jobs);
        let mut restored_nodes = again.nodes();
        restored_nodes.sort_by_key(|n| n.node_id.clone());
        let mut nodes = nodes;
        nodes.sort_by_key(|n| n.node_id.clone());
        assert_eq!(restored_nodes, nodes);
        // The counter goes on, and the node that was alive counts as just heard from.
        assert_eq!(again.next_job_id().hex(), "00000003");
        assert!(again.silent_nodes(Duration::from_secs(60), &NodeId::nil()).is_empty());
        assert_eq!(again.silent_nodes(Duration::ZERO, &NodeId::nil()), vec![alive]);
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
