//! Choosing a node for a request from a view of the cluster.
//!
//! Every decision first splits the alive nodes in two ways. A node is **feasible** for a
//! request when the request fits in its *total* resources: it could run there some day.
//! It is **available** when the request fits in what the node has *free* now. If no alive
//! node is feasible the request is [`Decision::Infeasible`] (it waits for a node to join
//! and the driver is warned); if some are feasible but none available, the answer is
//! [`Decision::Wait`]: queue until resources are released. Only available nodes are ever
//! chosen, so following a decision never over-commits the view.
//!
//! Strategies, as in Ray:
//! - **DEFAULT** (hybrid): score every available node by its utilisation of the
//!   requested resources (the highest used/total among them). Below the spread threshold
//!   (0.5) every node counts as equally idle (score 0), so work *packs* onto the local
//!   node while it is lightly loaded, which keeps data local and avoids remote leases.
//!   The local node wins while its score is the lowest; otherwise the pick is random
//!   among the k lowest-scoring nodes, k = max(⌈0.2·alive nodes⌉, 1): randomness keeps
//!   many raylets deciding on the same stale view from all piling onto one node.
//! - **SPREAD**: round-robin over the available nodes.
//! - **NodeAffinity**: only the named node while it is alive and feasible (waiting if it
//!   is busy). If it is dead or could never fit the request, a *soft* affinity falls back
//!   to DEFAULT and a *hard* one is infeasible.
//!
//! The policy is pure apart from its round-robin cursor and a small seeded RNG, so tests
//! and benches are deterministic.

use rtd_common::resources::GPU;
// The GCS speaks this vocabulary too (actor and bundle placement), so it lives in
// common; the policy that acts on it lives here.
pub use rtd_common::scheduling::{NodeView, Strategy};
use rtd_common::{NodeId, ResourceSet};

use crate::resources::gpu_request_is_assignable;

/// Utilisation below this counts as idle (score 0).
pub const SPREAD_THRESHOLD: f64 = 0.5;
/// Fraction of the alive nodes that DEFAULT chooses among at random.
pub const TOP_K_FRACTION: f64 = 0.2;

/// Scores are utilisation in parts per million, so they order exactly.
const SCORE_SCALE: i128 = 1_000_000;
const SPREAD_THRESHOLD_PPM: i128 = (SPREAD_THRESHOLD * SCORE_SCALE as f64) as i128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run it on this node now.
    Node(NodeId),
    /// Feasible somewhere, but nothing is available now: queue and retry.
    Wait,
    /// No alive node could ever run it.
    Infeasible,
}

/// The scheduling state one raylet keeps between decisions.
#[derive(Clone, Debug)]
pub struct SchedulingPolicy {
    spread_cursor: usize,
    rng: XorShift64,
    /// Reused between calls: (score, index into the view) of each candidate.
    candidates: Vec<(i128, usize)>,
}

impl SchedulingPolicy {
    /// A policy whose random choices are determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { spread_cursor: 0, rng: XorShift64::new(seed), candidates: Vec::new() }
    }

    /// Chooses where `request` runs under `strategy`; `local` is this raylet's node.
    pub fn pick_node(
        &mut self,
        nodes: &[NodeView],
        request: &ResourceSet,
        strategy: &Strategy,
        local: NodeId,
    ) -> Decision {
        if !gpu_request_is_assignable(request.get(GPU)) {
            return Decision::Infeasible;
        }
        match strategy {
            Strategy::Default => self.pick_default(nodes, request, local),
            Strategy::Spread => self.pick_spread(nodes, request),
            Strategy::NodeAffinity { node_id, soft } => {
                let target = nodes.iter().find(|n| n.node_id == *node_id && is_feasible(n, request));
                match target {
                    Some(n) if is_available(n, request) => Decision::Node(n.node_id),
                    Some(_) => Decision::Wait,
                    None if *soft => self.pick_default(nodes, request, local),
                    None => Decision::Infeasible,
                }
            }
        }
    }

    fn pick_default(&mut self, nodes: &[NodeView], request: &ResourceSet, local: NodeId) -> Decision {
        self.candidates.clear();
        let mut alive = 0usize;
        let mut any_feasible = false;
        let mut local_score = None;
        for (index, node) in nodes.iter().enumerate() {
            if !node.alive {
                continue;
            }
            alive += 1;
            if !is_feasible(node, request) {
                continue;
            }
            any_feasible = true;
            if !request.fits_in(&node.available) {
                continue;
            }
            let score = score(node, request);
            if node.node_id == local {
                local_score = Some(score);
            }
            self.candidates.push((score, index));
        }
        let Some(lowest) = self.candidates.iter().map(|(score, _)| *score).min() else {
            return if any_feasible { Decision::Wait } else { Decision::Infeasible };
        };
        if local_score.is_some_and(|score| score <= lowest) {
            return Decision::Node(local);
        }
        // k = max(ceil(0.2 * alive), 1), at most the number of candidates.
        let k = ((alive as f64 * TOP_K_FRACTION).ceil() as usize).max(1).min(self.candidates.len());
        self.candidates.select_nth_unstable(k - 1);
        let (_, index) = self.candidates[self.rng.below(k)];
        Decision::Node(nodes[index].node_id)
    }

    fn pick_spread(&mut self, nodes: &[NodeView], request: &ResourceSet) -> Decision {
        let n = nodes.len();
        let start = if n == 0 { 0 } else { self.spread_cursor % n };
        let mut any_feasible = false;
        for step in 0..n {
            let index = (start + step) % n;
            let node = &nodes[index];
            if !is_feasible(node, request) {
                continue;
            }
            any_feasible = true;
            if request.fits_in(&node.available) {
                self.spread_cursor = index + 1;
                return Decision::Node(node.node_id);
            }
        }
        if any_feasible {
            Decision::Wait
        } else {
            Decision::Infeasible
        }
    }
}

fn is_feasible(node: &NodeView, request: &ResourceSet) -> bool {
    node.alive && request.fits_in(&node.total)
}

fn is_available(node: &NodeView, request: &ResourceSet) -> bool {
    is_feasible(node, request) && request.fits_in(&node.available)
}

/// The node's critical utilisation over the requested resources, in parts per million,
/// with everything below the spread threshold counted as 0.
fn score(node: &NodeView, request: &ResourceSet) -> i128 {
    let utilisation = request
        .iter()
        .map(|(name, _)| {
            let total = i128::from(node.total.get(name));
            if total <= 0 {
                return 0;
            }
            let free = i128::from(node.available.get(name)).min(total);
            (total - free) * SCORE_SCALE / total
        })
        .max()
        .unwrap_or(0);
    if utilisation < SPREAD_THRESHOLD_PPM {
        0
    } else {
        utilisation
    }
}

/// xorshift64: tiny, fast and deterministic; plenty for breaking ties between nodes.
#[derive(Clone, Debug)]
struct XorShift64(u64);

impl XorShift64 {
    fn new(seed: u64) -> Self {
        // The all-zero state is a fixed point; any other state cycles through 2^64 - 1.
        Self(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    /// A number in `0..n`; `n` must be at least 1.
    fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::{any, prop, prop_assert, prop_assert_eq, prop_oneof, proptest, Just};
    use proptest::prelude::{ProptestConfig, Strategy as Gen};
    use rtd_common::resources::{CPU, UNIT};
    use std::collections::HashSet;

    fn cpu(amount: f64) -> ResourceSet {
        ResourceSet::from_floats([(CPU, amount)]).expect("valid test resources")
    }

    fn node(total: f64, free: f64) -> NodeView {
        NodeView { node_id: NodeId::random(), total: cpu(total), available: cpu(free), alive: true }
    }

    #[test]
    fn empty_cluster_is_infeasible() {
        let mut policy = SchedulingPolicy::new(1);
        for strategy in [Strategy::Default, Strategy::Spread] {
            let decision = policy.pick_node(&[], &cpu(1.0), &strategy, NodeId::random());
            assert_eq!(decision, Decision::Infeasible);
        }
    }

    #[test]
    fn feasible_but_busy_waits_and_too_big_is_infeasible() {
        let mut policy = SchedulingPolicy::new(1);
        let nodes = vec![node(4.0, 0.5), node(2.0, 0.0)];
        let local = nodes[0].node_id;
        for strategy in [Strategy::Default, Strategy::Spread] {
            assert_eq!(policy.pick_node(&nodes, &cpu(1.0), &strategy, local), Decision::Wait);
            assert_eq!(policy.pick_node(&nodes, &cpu(8.0), &strategy, local), Decision::Infeasible);
        }
    }

    #[test]
    fn dead_nodes_are_never_chosen_nor_feasible() {
        let mut policy = SchedulingPolicy::new(1);
        let mut nodes = vec![node(8.0, 8.0), node(1.0, 1.0)];
        nodes[0].alive = false;
        let local = nodes[0].node_id;
        assert_eq!(policy.pick_node(&nodes, &cpu(1.0), &Strategy::Default, local), Decision::Node(nodes[1].node_id));
        assert_eq!(policy.pick_node(&nodes, &cpu(4.0), &Strategy::Default, local), Decision::Infeasible);
    }

    #[test]
    fn non_integral_multi_gpu_request_is_infeasible() {
        let mut policy = SchedulingPolicy::new(1);
        let mut gpus = ResourceSet::new();
        gpus.set(GPU, 8 * UNIT);
        let nodes = vec![NodeView { node_id: NodeId::random(), total: gpus.clone(), available: gpus, alive: true }];
        let request = ResourceSet::from_floats([(GPU, 1.5)]).expect("valid");
        let local = nodes[0].node_id;
        assert_eq!(policy.pick_node(&nodes, &request, &Strategy::Default, local), Decision::Infeasible);
    }

    #[test]
    fn default_packs_locally_below_the_threshold() {
        let mut policy = SchedulingPolicy::new(7);
        // Local is 25% used, the others idle: all score 0, so local keeps the work.
        let mut nodes: Vec<NodeView> = (0..10).map(|_| node(4.0, 4.0)).collect();
        nodes[3].available = cpu(3.0);
        let local = nodes[3].node_id;
        for _ in 0..20 {
            assert_eq!(policy.pick_node(&nodes, &cpu(1.0), &Strategy::Default, local), Decision::Node(local));
        }
    }

    #[test]
    fn default_leaves_a_busy_local_node_for_the_least_loaded() {
        let mut policy = SchedulingPolicy::new(7);
        // 10 alive nodes: k = 2. Nodes 2 and 5 are idle, the rest (local included) 75% used.
        let mut nodes: Vec<NodeView> = (0..10).map(|_| node(4.0, 1.0)).collect();
        nodes[2].available = cpu(4.0);
        nodes[5].available = cpu(4.0);
        let local = nodes[0].node_id;
        let mut seen = HashSet::new();
        for _ in 0..100 {
            match policy.pick_node(&nodes, &cpu(1.0), &Strategy::Default, local) {
                Decision::Node(id) => {
                    seen.insert(id);
                }
                other => panic!("expected a node, got {other:?}"),
            }
        }
        let expected: HashSet<NodeId> = [nodes[2].node_id, nodes[5].node_id].into();
        assert_eq!(seen, expected);
    }

    #[test]
    fn default_prefers_a_local_node_that_ties_for_lowest() {
        let mut policy = SchedulingPolicy::new(3);
        let nodes: Vec<NodeView> = (0..5).map(|_| node(4.0, 1.0)).collect();
        let local = nodes[4].node_id;
        assert_eq!(policy.pick_node(&nodes, &cpu(1.0), &Strategy::Default, local), Decision::Node(local));
    }

    #[test]
    fn affinity_waits_for_a_busy_target_and_falls_back_only_when_soft() {
        let mut policy = SchedulingPolicy::new(1);
        let nodes = vec![node(4.0, 0.0), node(4.0, 4.0)];
        let (busy, idle) = (nodes[0].node_id, nodes[1].node_id);
        for soft in [false, true] {
            let strategy = Strategy::NodeAffinity { node_id: busy, soft };
            assert_eq!(policy.pick_node(&nodes, &cpu(1.0), &strategy, busy), Decision::Wait);
        }
        let gone = NodeId::random();
        let hard = Strategy::NodeAffinity { node_id: gone, soft: false };
        let soft = Strategy::NodeAffinity { node_id: gone, soft: true };
        assert_eq!(policy.pick_node(&nodes, &cpu(1.0), &hard, busy), Decision::Infeasible);
        assert_eq!(policy.pick_node(&nodes, &cpu(1.0), &soft, busy), Decision::Node(idle));

        let mut dead = nodes.clone();
        dead[1].alive = false;
        let hard = Strategy::NodeAffinity { node_id: idle, soft: false };
        assert_eq!(policy.pick_node(&dead, &cpu(1.0), &hard, busy), Decision::Infeasible);
        // Infeasible on the target (too big): soft falls back to DEFAULT.
        let soft = Strategy::NodeAffinity { node_id: busy, soft: true };
        let big = vec![node(1.0, 1.0), node(8.0, 8.0)];
        let decision = policy.pick_node(&big, &cpu(4.0), &soft, big[0].node_id);
        assert_eq!(decision, Decision::Node(big[1].node_id));
    }

    #[test]
    fn spread_round_robins_and_skips_busy_nodes() {
        let mut policy = SchedulingPolicy::new(1);
        let mut nodes: Vec<NodeView> = (0..4).map(|_| node(2.0, 2.0)).collect();
        nodes[1].available = cpu(0.0);
        let local = nodes[0].node_id;
        let picks: Vec<Decision> =
            (0..6).map(|_| policy.pick_node(&nodes, &cpu(1.0), &Strategy::Spread, local)).collect();
        let id = |i: usize| Decision::Node(nodes[i].node_id);
        assert_eq!(picks, vec![id(0), id(2), id(3), id(0), id(2), id(3)]);
    }

    fn arb_cluster() -> impl Gen<Value = Vec<NodeView>> {
        proptest::collection::vec((0..8 * UNIT, 0..=UNIT, 0..3 * UNIT, 0..=UNIT, any::<bool>(), 0..10u8), 1..24)
            .prop_map(|nodes| {
                nodes
                    .into_iter()
                    .map(|(cpu_total, cpu_free_frac, custom_total, custom_free_frac, busy, dead)| {
                        let mut total = ResourceSet::new();
                        total.set(CPU, cpu_total);
                        total.set("custom", custom_total);
                        let mut available = ResourceSet::new();
                        if !busy {
                            available.set(CPU, cpu_total * cpu_free_frac / UNIT);
                            available.set("custom", custom_total * custom_free_frac / UNIT);
                        }
                        NodeView { node_id: NodeId::random(), total, available, alive: dead != 0 }
                    })
                    .collect()
            })
    }

    fn arb_request() -> impl Gen<Value = ResourceSet> {
        (0..3 * UNIT, prop_oneof![Just(0), 1..UNIT]).prop_map(|(cpu, custom)| {
            let mut request = ResourceSet::new();
            request.set(CPU, cpu);
            request.set("custom", custom);
            request
        })
    }

    fn arb_strategy(nodes: usize) -> impl Gen<Value = (Strategy, usize)> {
        (0..4u8, 0..nodes.max(1), any::<bool>()).prop_map(|(kind, index, soft)| {
            let strategy = match kind {
                0 | 1 => Strategy::Default,
                2 => Strategy::Spread,
                // The target id is filled in from `index` by the test.
                _ => Strategy::NodeAffinity { node_id: NodeId::nil(), soft },
            };
            (strategy, index)
        })
    }

    fn with_target(strategy: Strategy, target: NodeId) -> Strategy {
        match strategy {
            Strategy::NodeAffinity { soft, .. } => Strategy::NodeAffinity { node_id: target, soft },
            other => other,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn decisions_never_over_commit(
            (mut nodes, picks) in arb_cluster().prop_flat_map(|nodes| {
                let n = nodes.len();
                (Just(nodes), proptest::collection::vec((arb_request(), arb_strategy(n)), 1..40))
            }),
            seed in any::<u64>(),
            local_index in any::<prop::sample::Index>(),
        ) {
            let mut policy = SchedulingPolicy::new(seed);
            let local = nodes[local_index.index(nodes.len())].node_id;
            for (request, (strategy, target)) in picks {
                let strategy = with_target(strategy, nodes[target % nodes.len()].node_id);
                let feasible = nodes.iter().any(|n| n.alive && request.fits_in(&n.total));
                match policy.pick_node(&nodes, &request, &strategy, local) {
                    Decision::Node(id) => {
                        let chosen = nodes.iter_mut().find(|n| n.node_id == id);
                        prop_assert!(chosen.is_some(), "chose a node outside the view");
                        if let Some(chosen) = chosen {
                            prop_assert!(chosen.alive);
                            prop_assert!(request.fits_in(&chosen.available), "over-commit");
                            chosen.available.subtract(&request);
                            prop_assert!(chosen.available.fits_in(&chosen.total));
                        }
                    }
                    Decision::Wait => prop_assert!(feasible),
                    Decision::Infeasible => {
                        // Only hard affinity may give up while another node is feasible.
                        let hard = matches!(strategy, Strategy::NodeAffinity { soft: false, .. });
                        prop_assert!(!feasible || hard);
                    }
                }
            }
        }

        #[test]
        fn default_and_spread_wait_only_when_nothing_is_available(
            nodes in arb_cluster(),
            request in arb_request(),
            seed in any::<u64>(),
            spread in any::<bool>(),
        ) {
            let mut policy = SchedulingPolicy::new(seed);
            let strategy = if spread { Strategy::Spread } else { Strategy::Default };
            let feasible = nodes.iter().any(|n| n.alive && request.fits_in(&n.total));
            let available = nodes
                .iter()
                .any(|n| n.alive && request.fits_in(&n.total) && request.fits_in(&n.available));
            let decision = policy.pick_node(&nodes, &request, &strategy, nodes[0].node_id);
            match decision {
                Decision::Node(_) => prop_assert!(available),
                Decision::Wait => prop_assert!(feasible && !available),
                Decision::Infeasible => prop_assert!(!feasible),
            }
        }

        #[test]
        fn hard_affinity_never_returns_another_node(
            nodes in arb_cluster(),
            request in arb_request(),
            target in any::<prop::sample::Index>(),
            elsewhere in any::<bool>(),
        ) {
            let mut policy = SchedulingPolicy::new(1);
            let target =
                if elsewhere { NodeId::random() } else { nodes[target.index(nodes.len())].node_id };
            let strategy = Strategy::NodeAffinity { node_id: target, soft: false };
            let decision = policy.pick_node(&nodes, &request, &strategy, nodes[0].node_id);
            if let Decision::Node(id) = decision {
                prop_assert_eq!(id, target);
            }
        }

        #[test]
        fn spread_uses_every_idle_node(n in 1usize..64, start in 0usize..200) {
            let nodes: Vec<NodeView> = (0..n).map(|_| node(4.0, 4.0)).collect();
            let mut policy = SchedulingPolicy::new(1);
            policy.spread_cursor = start;
            let mut view = nodes.clone();
            let mut used = HashSet::new();
            for _ in 0..n {
                match policy.pick_node(&view, &cpu(0.5), &Strategy::Spread, nodes[0].node_id) {
                    Decision::Node(id) => {
                        used.insert(id);
                        if let Some(chosen) = view.iter_mut().find(|v| v.node_id == id) {
                            chosen.available.subtract(&cpu(0.5));
                        }
                    }
                    other => prop_assert!(false, "expected a node, got {:?}", other),
                }
            }
            prop_assert_eq!(used.len(), n);
        }
    }
}
