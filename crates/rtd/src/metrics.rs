//! What a node daemon exports on `/metrics`, under Ray's names so Ray's Grafana
//! dashboards read it: every node its resources, object store, scheduler queue and
//! workers (`NodeMetrics`); the head also the cluster's tasks, actors and placement
//! groups as the GCS knows them (`ClusterMetrics`). Both read their sources when
//! Prometheus scrapes.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use rtd_common::task_events::{actor_state_name, status_name};
use rtd_gcs::server::GcsServer;
use rtd_metrics::{encode_counter, encode_gauge};
use rtd_plasma::PlasmaService;
use rtd_raylet::lease::Raylet;

/// This node's raylet and object store.
pub struct NodeMetrics {
    pub raylet: Arc<Raylet>,
    pub plasma: Arc<PlasmaService>,
}

impl fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeMetrics").field("node_id", &self.raylet.node_id()).finish_non_exhaustive()
    }
}

impl Collector for NodeMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let (total, available) = (self.raylet.total().to_floats(), self.raylet.available().to_floats());
        let resources = total.iter().flat_map(|(name, total)| {
            let free = available.get(name).copied().unwrap_or(0.0);
            [
                ([("Name", name.as_str()), ("State", "AVAILABLE")], free),
                ([("Name", name.as_str()), ("State", "USED")], total - free),
            ]
        });
        encode_gauge(&mut encoder, "resources", "Logical Ray resources broken per state {AVAILABLE, USED}", resources)?;

        let store = self.plasma.stats();
        let memory =
            [([("Location", "MMAP_SHM")], store.used as f64), ([("Location", "SPILLED")], store.spilled_bytes as f64)];
        encode_gauge(
            &mut encoder,
            "object_store_memory",
            "Object store memory by location {MMAP_SHM, SPILLED} on this node, in bytes",
            memory,
        )?;
        let no_labels: [(&str, &str); 0] = [];
        let free = store.capacity.saturating_sub(store.used) as f64;
        encode_gauge(
            &mut encoder,
            "object_store_available_memory",
            "Free object store memory on this node, in bytes",
            [(no_labels, free)],
        )?;
        encode_gauge(
            &mut encoder,
            "object_store_num_local_objects",
            "Objects in this node's store, in memory or spilled",
            [(no_labels, store.num_objects as f64)],
        )?;
        let (spilled, restored) = (store.spilled_total, store.restored_total);
        encode_gauge(
            &mut encoder,
            "spill_manager_request_total",
            "Objects spilled to disk and restored from it since the node started, per type {Spilled, Restored}",
            [([("Type", "Spilled")], spilled.objects as f64), ([("Type", "Restored")], restored.objects as f64)],
        )?;
        encode_counter(
            &mut encoder,
            "spill_manager_bytes",
            "Bytes spilled to disk and restored from it since the node started, per type {Spilled, Restored}",
            [([("Type", "Spilled")], spilled.bytes as f64), ([("Type", "Restored")], restored.bytes as f64)],
        )?;

        let pool = self.raylet.pool_stats();
        encode_gauge(
            &mut encoder,
            "scheduler_tasks",
            "Lease requests on this node per state {Waiting: for resources or a worker, Executing: granted}",
            [
                ([("State", "Waiting")], pool.pending_leases as f64),
                ([("State", "Executing")], pool.granted_leases as f64),
            ],
        )?;
        encode_gauge(
            &mut encoder,
            "workers",
            "Worker processes of this node per state {IDLE, STARTING, RUNNING_TASK, ACTOR}",
            [
                ([("State", "IDLE")], pool.idle_workers as f64),
                ([("State", "STARTING")], pool.starting_workers as f64),
                ([("State", "RUNNING_TASK")], pool.task_workers as f64),
                ([("State", "ACTOR")], pool.actor_workers as f64),
            ],
        )
    }
}

/// The cluster as the GCS (on the head) knows it.
pub struct ClusterMetrics {
    pub gcs: Arc<GcsServer>,
}

impl fmt::Debug for ClusterMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterMetrics").finish_non_exhaustive()
    }
}

impl Collector for ClusterMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let tasks = self.gcs.task_counts();
        let tasks = tasks.iter().map(|(key, count)| {
            let is_retry = if key.is_retry { "1" } else { "0" };
            ([("Name", key.name.as_str()), ("State", status_name(key.state)), ("IsRetry", is_retry)], *count as f64)
        });
        encode_gauge(&mut encoder, "tasks", "Current number of tasks (task attempts the GCS holds) per state", tasks)?;
        let actors = self.gcs.actor_counts();
        let actors = actors.iter().map(|((class, state), count)| {
            ([("Name", class.as_str()), ("State", actor_state_name(*state))], *count as f64)
        });
        encode_gauge(&mut encoder, "actors", "Current number of actors per class and state", actors)?;
        let groups = self.gcs.placement_group_counts();
        let groups = groups.iter().map(|(state, count)| {
            // The wire names carry a `PG_` prefix that Ray's states do not.
            let name = state.as_str_name();
            ([("State", name.strip_prefix("PG_").unwrap_or(name))], *count as f64)
        });
        encode_gauge(&mut encoder, "placement_groups", "Number of placement groups per state", groups)
    }
}
