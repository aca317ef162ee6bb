//! The GCS, Ray's control plane: one per cluster, on the head node. It owns the tables
//! (nodes, jobs, KV with the function table, task events in `task_table`), the actor
//! and placement-group managers, node health checks (`server`), the timeline
//! (`timeline`), and the client raylets use to reach it (`client`).

pub mod actor_manager;
pub mod bundle_policy;
pub mod client;
pub mod placement_group_manager;
pub mod server;
pub mod task_table;
pub mod timeline;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use rtd_common::proto::{JobInfo, NodeInfo, ResourceMap, WorkerInfo};
use rtd_common::{JobId, NodeId};

/// What a node reports about its resources in a heartbeat.
#[derive(Default)]
pub struct NodeUsage {
    pub total: ResourceMap,
    pub available: ResourceMap,
    pub pending_demands: Vec<ResourceMap>,
}

#[derive(Default)]
pub struct Gcs {
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

impl Gcs {
    pub fn new() -> Self {
        Self { next_job: AtomicU32::new(1), ..Default::default() }
    }

    pub fn kv_put(&self, key: String, value: Bytes) {
        self.kv.lock().insert(key, value);
    }

    pub fn kv_get(&self, key: &str) -> Option<Bytes> {
        self.kv.lock().get(key).cloned()
    }

    /// Jobs are numbered in the order drivers connect, as in Ray.
    pub fn next_job_id(&self) -> JobId {
        JobId(self.next_job.fetch_add(1, Ordering::Relaxed).to_be_bytes())
    }

    /// Records a driver's job as started now.
    pub fn add_job(&self, mut job: JobInfo) {
        job.start_time_ms = now_ms();
        self.jobs.lock().push(job);
    }

    /// The job's driver is gone.
    pub fn job_finished(&self, job_id: &[u8]) {
        if let Some(job) = self.jobs.lock().iter_mut().find(|j| j.job_id.as_ref() == job_id && !j.is_dead) {
            job.is_dead = true;
            job.end_time_ms = now_ms();
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
    fn kv_round_trips_and_nodes_reregister() {
        let gcs = Gcs::new();
        gcs.kv_put("fn:1".into(), Bytes::from_static(b"code"));
        assert_eq!(gcs.kv_get("fn:1").as_deref(), Some(&b"code"[..]));
        assert!(gcs.kv_get("fn:2").is_none());
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
}
