//! `/api/cluster_status`: what the dashboard's overview page draws — every node with
//! its total and free resources, and the sums over the alive ones.

use serde_json::{json, Value};

use crate::state::{ClusterState, Resources};

fn add(sum: &mut Resources, amounts: &Resources) {
    for (name, amount) in amounts {
        *sum.entry(name.clone()).or_default() += amount;
    }
}

pub fn cluster_status(state: &dyn ClusterState) -> Value {
    let nodes = state.nodes();
    let (mut total, mut available) = (Resources::new(), Resources::new());
    for node in nodes.iter().filter(|n| n.state == "ALIVE") {
        add(&mut total, &node.resources_total);
        add(&mut available, &node.resources_available);
    }
    let alive = nodes.iter().filter(|n| n.state == "ALIVE").count();
    let rows: Vec<Value> = nodes
        .iter()
        .map(|n| {
            json!({
                "node_id": n.node_id,
                "node_ip": n.node_ip,
                "node_name": n.node_name,
                "is_head_node": n.is_head_node,
                "state": n.state,
                "resources_total": n.resources_total,
                "resources_available": n.resources_available,
            })
        })
        .collect();
    json!({
        "num_nodes_alive": alive,
        "num_nodes_dead": nodes.len() - alive,
        "resources_total": total,
        "resources_available": available,
        "nodes": rows,
    })
}
