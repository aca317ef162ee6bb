//! The control plane: nodes, jobs, actors, placement groups and a key-value store (which holds the
//! function table: pickled remote functions by id). One GCS per cluster, hosted by the
//! head node's daemon. Today it is served over the head's local socket; serving it to
//! other nodes over gRPC comes with multi-node clusters.

pub mod actor_manager;
pub mod placement_group_manager;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use rtd_common::proto::NodeInfo;
use rtd_common::JobId;

#[derive(Default)]
pub struct Gcs {
    kv: Mutex<HashMap<String, Bytes>>,
    nodes: Mutex<Vec<NodeInfo>>,
    next_job: AtomicU32,
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

    pub fn register_node(&self, node: NodeInfo) {
        let mut nodes = self.nodes.lock();
        nodes.retain(|n| n.node_id != node.node_id);
        nodes.push(node);
    }

    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtd_common::NodeId;

    #[test]
    fn job_ids_increase() {
        let gcs = Gcs::new();
        let a = gcs.next_job_id();
        let b = gcs.next_job_id();
        assert!(a < b);
        assert_eq!(a.hex(), "00000001");
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
    }
}
