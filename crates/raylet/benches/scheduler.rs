//! Scheduler micro-benchmarks: node choice on a 1 000-node cluster view and one node's
//! allocate/release churn.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rtd_common::resources::{CPU, GPU, UNIT};
use rtd_common::{NodeId, ResourceSet};
use rtd_raylet::policy::{Decision, NodeView, SchedulingPolicy, Strategy};
use rtd_raylet::resources::NodeResources;

const NODES: usize = 1_000;

/// A cluster of mixed sizes and loads; every fourth node has GPUs, some are dead.
fn cluster() -> Vec<NodeView> {
    (0..NODES)
        .map(|i| {
            let i = i as i64;
            let mut total = ResourceSet::new();
            total.set(CPU, (4 + i % 61) * UNIT);
            total.set("memory", (16 + i % 48) * 1_024 * UNIT);
            if i % 4 == 0 {
                total.set(GPU, (1 + i % 8) * UNIT);
            }
            let mut available = ResourceSet::new();
            for (name, amount) in total.iter() {
                // Between 0% and 90% used.
                available.set(name, amount - amount * (i * 37 % 10) / 10);
            }
            NodeView { node_id: NodeId::random(), total, available, alive: i % 50 != 7 }
        })
        .collect()
}

fn request(cpus: i64) -> ResourceSet {
    let mut r = ResourceSet::new();
    r.set(CPU, cpus * UNIT);
    r
}

fn bench_pick_node(c: &mut Criterion) {
    let nodes = cluster();
    let local = nodes[1].node_id;
    let mut group = c.benchmark_group("pick_node_1000_nodes");
    group.throughput(Throughput::Elements(1));
    for (name, strategy) in [("default", Strategy::Default), ("spread", Strategy::Spread)] {
        let mut policy = SchedulingPolicy::new(42);
        let req = request(2);
        group.bench_function(name, |b| {
            b.iter(|| {
                let decision = policy.pick_node(black_box(&nodes), &req, &strategy, local);
                debug_assert!(matches!(decision, Decision::Node(_)));
                black_box(decision)
            })
        });
    }
    group.finish();
}

fn bench_node_churn(c: &mut Criterion) {
    let mut total = ResourceSet::new();
    total.set(CPU, 64 * UNIT);
    total.set(GPU, 8 * UNIT);
    total.set("memory", 256 * 1_024 * UNIT);
    let requests = [
        request(1),
        ResourceSet::from_floats([(CPU, 1.0), (GPU, 0.25)]).unwrap_or_default(),
        ResourceSet::from_floats([(CPU, 4.0), (GPU, 2.0)]).unwrap_or_default(),
    ];
    // A node already half busy, so GPU packing has partly used devices to search.
    let mut node = NodeResources::new(total);
    let held: Vec<_> = requests.iter().filter_map(|r| node.try_allocate(r)).collect();
    let mut group = c.benchmark_group("node_resources");
    group.throughput(Throughput::Elements(requests.len() as u64));
    group.bench_function("try_allocate_release", |b| {
        b.iter(|| {
            for req in &requests {
                if let Some(alloc) = node.try_allocate(black_box(req)) {
                    node.release(&alloc);
                }
            }
        })
    });
    group.finish();
    for alloc in &held {
        node.release(alloc);
    }
    assert_eq!(node.available(), *node.total());
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = bench_pick_node, bench_node_churn
}
criterion_main!(benches);
