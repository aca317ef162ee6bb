//! One node's resource accounting.
//!
//! Resources are logical counters (fixed point, 1/10000 of a unit), not measurements.
//! Two questions are asked of a node, and they differ:
//!
//! - **feasible**: could the request *ever* run here? It fits in the node's *total*.
//!   An infeasible request must go elsewhere (or wait for a bigger node to join).
//! - **available**: can it run *now*? It fits in what is currently *free*. A feasible but
//!   unavailable request simply queues until something is released.
//!
//! GPUs are physical devices, so besides the aggregate count each GPU id is tracked on
//! its own (capacity 1.0) and an allocation names the ids it got (they become
//! `CUDA_VISIBLE_DEVICES`). A whole-GPU request (1, 2, ...) gets that many distinct,
//! completely free ids. A fractional request (< 1) gets a single id and *packs* onto the
//! most-used GPU that still has room: filling partly used GPUs first keeps other GPUs
//! completely free, so a later whole-GPU request can still be served. A non-integral
//! request above 1 (say 1.5) cannot be expressed as a set of ids; as in Ray it is never
//! assignable, and [`NodeResources::is_feasible`] reports it infeasible. A node's GPU
//! total is rounded down to whole devices for the same reason.
//!
//! A worker blocked in `get`/`wait` is not using its CPU, and the tasks it waits on may
//! need that CPU to run at all (a task that waits on its own child on a 1-CPU node
//! would otherwise deadlock). So while blocked it returns its CPU to the pool
//! ([`NodeResources::release_cpu`]) and, when it unblocks, takes it back
//! ([`NodeResources::reacquire_cpu`]) even if that over-commits the node. While the CPU
//! count is in deficit no request that needs CPU is granted; the deficit disappears as
//! workers finish. Each `release_cpu` must be matched by a `reacquire_cpu` before the
//! allocation is finally [`NodeResources::release`]d; with that discipline availability
//! returns exactly to the total once every worker has released.

use std::collections::BTreeMap;

use rtd_common::resources::{CPU, GPU, UNIT};
use rtd_common::ResourceSet;

/// What one grant holds: the resources taken and, if GPUs were requested, which GPU ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub resources: ResourceSet,
    pub gpu_ids: Vec<u32>,
}

/// Whether a GPU amount (fixed point) can be turned into GPU ids: any fraction up to
/// one GPU, or a whole number of GPUs.
pub fn gpu_request_is_assignable(amount: i64) -> bool {
    amount <= UNIT || amount % UNIT == 0
}

/// The resources of one node: totals, what is free now, and the free share of each GPU.
#[derive(Clone, Debug)]
pub struct NodeResources {
    total: ResourceSet,
    /// Free amount of every resource except GPU. CPU goes negative while resumed blocked
    /// workers over-commit the node.
    free: BTreeMap<String, i64>,
    /// Free share of each GPU, GPU ids `0..n`.
    gpus: GpuPool,
}

impl NodeResources {
    /// A node with `total` resources, all free. The GPU total is rounded down to whole
    /// devices, numbered `0..n`.
    pub fn new(mut total: ResourceSet) -> Self {
        let gpus = (total.get(GPU) / UNIT).min(i64::from(u32::MAX));
        total.set(GPU, gpus * UNIT);
        let free =
            total.iter().filter(|(name, _)| *name != GPU).map(|(name, amount)| (name.to_string(), amount)).collect();
        let gpus = GpuPool::new(0..u32::try_from(gpus).unwrap_or(0), UNIT);
        Self { total, free, gpus }
    }

    pub fn total(&self) -> &ResourceSet {
        &self.total
    }

    /// What is free now. A resource in deficit (over-committed CPU) reads as 0.
    pub fn available(&self) -> ResourceSet {
        let mut out = ResourceSet::new();
        for (name, amount) in &self.free {
            out.set(name, *amount);
        }
        out.set(GPU, self.gpus.free_total());
        out
    }

    /// The total and free amounts of the resources named in `wanted` only, read as
    /// [`NodeResources::total`] and [`NodeResources::available`] read them. Costs what
    /// `wanted` holds, not what the node holds (which grows with every committed bundle).
    pub fn view_of(&self, wanted: &ResourceSet) -> (ResourceSet, ResourceSet) {
        let mut total = ResourceSet::new();
        let mut free = ResourceSet::new();
        for (name, _) in wanted.iter() {
            total.set(name, self.total.get(name));
            let amount = if name == GPU { self.gpus.free_total() } else { self.free.get(name).copied().unwrap_or(0) };
            free.set(name, amount);
        }
        (total, free)
    }

    /// Whether `request` could ever be granted here: it fits in the total and its GPU
    /// amount is assignable (see [`gpu_request_is_assignable`]).
    pub fn is_feasible(&self, request: &ResourceSet) -> bool {
        request.fits_in(&self.total) && gpu_request_is_assignable(request.get(GPU))
    }

    /// Grants `request` if it is available now, choosing GPU ids; `None` otherwise
    /// (including while a requested resource is in deficit).
    pub fn try_allocate(&mut self, request: &ResourceSet) -> Option<Allocation> {
        let enough = request
            .iter()
            .filter(|(name, _)| *name != GPU)
            .all(|(name, amount)| self.free.get(name).is_some_and(|free| *free >= amount));
        if !enough {
            return None;
        }
        let gpu = request.get(GPU);
        let gpu_ids = self.gpus.choose(gpu)?;
        for (name, amount) in request.iter() {
            if let Some(free) = self.free.get_mut(name) {
                *free -= amount;
            }
        }
        self.gpus.take(&gpu_ids, gpu);
        Some(Allocation { resources: request.clone(), gpu_ids })
    }

    /// Returns everything `alloc` holds to the pool.
    pub fn release(&mut self, alloc: &Allocation) {
        for (name, amount) in alloc.resources.iter() {
            if name != GPU {
                self.credit(name, amount);
            }
        }
        self.gpus.give_back(&alloc.gpu_ids, alloc.resources.get(GPU));
    }

    /// Adds capacity to the node: a committed placement-group bundle becomes resources
    /// of its own (`CPU_group_0_<pg>`, ...), so tasks in the bundle schedule as usual.
    pub fn add_capacity(&mut self, extra: &ResourceSet) {
        for (name, amount) in extra.iter() {
            if name == GPU {
                continue;
            }
            self.total.set(name, self.total.get(name) + amount);
            *self.free.entry(name.to_string()).or_insert(0) += amount;
        }
    }

    /// Takes back capacity added by [`NodeResources::add_capacity`]. Allocations that
    /// still hold some of it release nothing later (their workers are being stopped).
    pub fn remove_capacity(&mut self, extra: &ResourceSet) {
        for (name, amount) in extra.iter() {
            if name == GPU {
                continue;
            }
            let total = self.total.get(name) - amount;
            self.total.set(name, total);
            if total <= 0 {
                self.free.remove(name);
            } else if let Some(free) = self.free.get_mut(name) {
                *free -= amount;
            }
        }
    }

    /// The worker holding `alloc` blocked: lend its CPU back to the pool.
    pub fn release_cpu(&mut self, alloc: &Allocation) {
        let cpu = alloc.resources.get(CPU);
        if cpu > 0 {
            self.credit(CPU, cpu);
        }
    }

    /// The worker holding `alloc` unblocked: take its CPU back, even into deficit.
    pub fn reacquire_cpu(&mut self, alloc: &Allocation) {
        let cpu = alloc.resources.get(CPU);
        if let Some(free) = self.free.get_mut(CPU) {
            *free -= cpu;
        }
    }

    /// Adds `amount` of `name` back, never above the total (an over-release is a bug in
    /// the caller; it is logged rather than allowed to inflate the node).
    fn credit(&mut self, name: &str, amount: i64) {
        let total = self.total.get(name);
        if let Some(free) = self.free.get_mut(name) {
            if *free + amount > total {
                tracing::warn!(resource = name, "resource released more than it was allocated");
            }
            *free = (*free + amount).min(total);
        }
    }
}

/// The free share of each of a set of GPU ids (each within `0..=UNIT`): a node's GPUs,
/// or the GPUs a placement-group bundle reserved, shared out to the work inside it.
#[derive(Clone, Debug, Default)]
pub struct GpuPool {
    free: Vec<(u32, i64)>,
}

impl GpuPool {
    /// `ids`, each with `share` of it free.
    pub fn new(ids: impl IntoIterator<Item = u32>, share: i64) -> Self {
        Self { free: ids.into_iter().map(|id| (id, share)).collect() }
    }

    /// The GPUs a grant of `reserved` holds, as a pool of their own.
    pub fn of(reserved: &Allocation) -> Self {
        Self::new(reserved.gpu_ids.iter().copied(), gpu_share(reserved.resources.get(GPU)))
    }

    pub fn free_total(&self) -> i64 {
        self.free.iter().map(|(_, free)| free).sum()
    }

    /// GPU ids for a request of `amount` (fixed point), or `None` if not possible now.
    pub fn choose(&self, amount: i64) -> Option<Vec<u32>> {
        if amount == 0 {
            return Some(Vec::new());
        }
        let ids = self.free.iter().copied();
        if amount < UNIT {
            // Best fit: the most-used GPU that still has room (first on ties).
            return ids.filter(|(_, free)| *free >= amount).min_by_key(|(_, free)| *free).map(|(id, _)| vec![id]);
        }
        if amount % UNIT != 0 {
            return None;
        }
        let wanted = usize::try_from(amount / UNIT).ok()?;
        let chosen: Vec<u32> = ids.filter(|(_, free)| *free == UNIT).map(|(id, _)| id).take(wanted).collect();
        (chosen.len() == wanted).then_some(chosen)
    }

    /// Takes what a request of `amount` needs from each of `ids` (from [`choose`](Self::choose)).
    pub fn take(&mut self, ids: &[u32], amount: i64) {
        let share = gpu_share(amount);
        for (id, free) in self.free.iter_mut() {
            if ids.contains(id) {
                *free -= share;
            }
        }
    }

    /// Returns what [`take`](Self::take) took.
    pub fn give_back(&mut self, ids: &[u32], amount: i64) {
        let share = gpu_share(amount);
        for (id, free) in self.free.iter_mut() {
            if ids.contains(id) {
                if *free + share > UNIT {
                    tracing::warn!(gpu_id = id, "GPU released more than it was allocated");
                }
                *free = (*free + share).min(UNIT);
            }
        }
    }

    /// Free share of GPU `id` (tests).
    #[cfg(test)]
    fn free_of(&self, id: usize) -> i64 {
        self.free.iter().find(|(i, _)| *i as usize == id).map_or(0, |(_, f)| *f)
    }
}

/// How much of each assigned GPU id a GPU request of `amount` takes.
fn gpu_share(amount: i64) -> i64 {
    amount.min(UNIT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(items: &[(&str, f64)]) -> ResourceSet {
        ResourceSet::from_floats(items.iter().copied()).expect("valid test resources")
    }

    #[test]
    fn a_bundles_gpu_pool_shares_out_only_the_ids_it_reserved() {
        let mut node = NodeResources::new(set(&[("GPU", 4.0)]));
        let _first = node.try_allocate(&set(&[("GPU", 1.0)])).expect("fits");
        let reserved = node.try_allocate(&set(&[("GPU", 2.0)])).expect("fits");
        assert_eq!(reserved.gpu_ids, vec![1, 2]);
        let mut pool = GpuPool::of(&reserved);
        assert_eq!(pool.free_total(), 2 * UNIT);
        let a = pool.choose(UNIT / 2).expect("half of one");
        pool.take(&a, UNIT / 2);
        let b = pool.choose(UNIT / 2).expect("the other half of the same one");
        assert_eq!(a, b);
        pool.take(&b, UNIT / 2);
        let c = pool.choose(UNIT).expect("the other whole one");
        assert!(c.len() == 1 && c != a && reserved.gpu_ids.contains(&c[0]));
        pool.take(&c, UNIT);
        assert_eq!(pool.choose(UNIT / 4), None, "nothing left");
        pool.give_back(&a, UNIT / 2);
        assert_eq!(pool.choose(UNIT), None, "half a device is not a whole one");
        pool.give_back(&b, UNIT / 2);
        assert_eq!(pool.choose(UNIT), Some(a));
        // A fractional reservation is a pool of one id with that share.
        let quarter = GpuPool::of(&Allocation { resources: set(&[("GPU", 0.25)]), gpu_ids: vec![3] });
        assert_eq!((quarter.choose(UNIT / 4), quarter.choose(UNIT / 2)), (Some(vec![3]), None));
    }

    #[test]
    fn added_capacity_is_allocatable_and_removable() {
        let mut node = NodeResources::new(set(&[("CPU", 2.0)]));
        let bundle = node.try_allocate(&set(&[("CPU", 1.0)])).expect("fits");
        let group = set(&[("CPU_group_0_pg", 1.0), ("CPU_group_pg", 1.0)]);
        node.add_capacity(&group);
        let task = node.try_allocate(&set(&[("CPU_group_0_pg", 1.0)])).expect("bundle resource");
        assert!(node.try_allocate(&set(&[("CPU_group_pg", 1.0)])).is_some());
        assert!(node.try_allocate(&set(&[("CPU_group_0_pg", 1.0)])).is_none());
        node.remove_capacity(&group);
        node.release(&task);
        node.release(&bundle);
        assert_eq!(node.available(), set(&[("CPU", 2.0)]));
        assert_eq!(*node.total(), set(&[("CPU", 2.0)]));
    }

    #[test]
    fn feasible_is_not_available() {
        let mut node = NodeResources::new(set(&[("CPU", 2.0)]));
        let two = set(&[("CPU", 2.0)]);
        let held = node.try_allocate(&two).expect("fits when idle");
        assert!(node.is_feasible(&two));
        assert!(node.try_allocate(&two).is_none());
        assert!(!node.is_feasible(&set(&[("CPU", 3.0)])));
        node.release(&held);
        assert_eq!(node.available(), *node.total());
    }

    #[test]
    fn gpu_total_rounds_down_and_ids_are_numbered() {
        let node = NodeResources::new(set(&[("GPU", 2.5)]));
        assert_eq!(node.total().get(GPU), 2 * UNIT);
        assert_eq!(node.available().get(GPU), 2 * UNIT);
    }

    #[test]
    fn whole_gpus_get_distinct_free_ids() {
        let mut node = NodeResources::new(set(&[("GPU", 4.0)]));
        let quarter = node.try_allocate(&set(&[("GPU", 0.25)])).expect("fraction fits");
        assert_eq!(quarter.gpu_ids, vec![0]);
        let two = node.try_allocate(&set(&[("GPU", 2.0)])).expect("two free GPUs");
        assert_eq!(two.gpu_ids, vec![1, 2]);
        // Only GPU 3 is fully free now.
        assert!(node.try_allocate(&set(&[("GPU", 2.0)])).is_none());
        node.release(&quarter);
        node.release(&two);
        assert_eq!(node.available(), *node.total());
    }

    #[test]
    fn fractions_pack_onto_the_most_used_gpu() {
        let mut node = NodeResources::new(set(&[("GPU", 2.0)]));
        let a = node.try_allocate(&set(&[("GPU", 0.5)])).expect("fits");
        let b = node.try_allocate(&set(&[("GPU", 0.3)])).expect("fits");
        assert_eq!((a.gpu_ids.clone(), b.gpu_ids.clone()), (vec![0], vec![0]));
        // 0.3 no longer fits on GPU 0 (0.2 left), so it goes to GPU 1; GPU 1 then packs.
        let c = node.try_allocate(&set(&[("GPU", 0.3)])).expect("fits");
        let d = node.try_allocate(&set(&[("GPU", 0.2)])).expect("fits");
        assert_eq!((c.gpu_ids.clone(), d.gpu_ids.clone()), (vec![1], vec![0]));
        for alloc in [a, b, c, d] {
            node.release(&alloc);
        }
        assert_eq!(node.available(), *node.total());
    }

    #[test]
    fn non_integral_gpu_request_above_one_is_infeasible() {
        let mut node = NodeResources::new(set(&[("GPU", 4.0)]));
        let request = set(&[("GPU", 1.5)]);
        assert!(!node.is_feasible(&request));
        assert!(node.try_allocate(&request).is_none());
    }

    #[test]
    fn unknown_resource_is_infeasible() {
        let mut node = NodeResources::new(set(&[("CPU", 1.0)]));
        let request = set(&[("bob", 1.0)]);
        assert!(!node.is_feasible(&request));
        assert!(node.try_allocate(&request).is_none());
    }

    #[test]
    fn blocked_worker_lends_cpu_and_resumes_into_deficit() {
        let mut node = NodeResources::new(set(&[("CPU", 1.0), ("GPU", 1.0)]));
        let one_cpu = set(&[("CPU", 1.0)]);
        let parent = node.try_allocate(&one_cpu).expect("idle node");
        assert!(node.try_allocate(&one_cpu).is_none());

        // The parent blocks in `get` on its child: its CPU goes back so the child can run.
        node.release_cpu(&parent);
        assert_eq!(node.available().get(CPU), UNIT);
        let child = node.try_allocate(&one_cpu).expect("lent CPU");
        // Nothing is left for a third task.
        assert!(node.try_allocate(&one_cpu).is_none());

        // The parent resumes before the child has released: the node is over-committed.
        node.reacquire_cpu(&parent);
        assert_eq!(node.available().get(CPU), 0, "deficit reads as zero");
        assert!(node.try_allocate(&set(&[("CPU", 0.5)])).is_none());
        // A request that needs no CPU is unaffected by the CPU deficit.
        let gpu_only = node.try_allocate(&set(&[("GPU", 1.0)])).expect("GPU is free");

        // The child finishes: the deficit is paid off but nothing is free yet.
        node.release(&child);
        assert_eq!(node.available().get(CPU), 0);
        assert!(node.try_allocate(&one_cpu).is_none());

        node.release(&parent);
        node.release(&gpu_only);
        assert_eq!(node.available(), *node.total());
    }

    #[test]
    fn blocked_worker_that_finishes_after_unblocking_restores_total() {
        let mut node = NodeResources::new(set(&[("CPU", 2.0)]));
        let a = node.try_allocate(&set(&[("CPU", 1.5)])).expect("fits");
        node.release_cpu(&a);
        node.release_cpu(&Allocation { resources: ResourceSet::new(), gpu_ids: vec![] });
        assert_eq!(node.available().get(CPU), 2 * UNIT);
        node.reacquire_cpu(&a);
        node.release(&a);
        assert_eq!(node.available(), *node.total());
    }

    #[test]
    fn over_release_never_inflates_the_node() {
        let mut node = NodeResources::new(set(&[("CPU", 1.0), ("GPU", 1.0)]));
        let a = node.try_allocate(&set(&[("CPU", 1.0), ("GPU", 0.5)])).expect("fits");
        node.release(&a);
        node.release(&a);
        assert_eq!(node.available(), *node.total());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Allocate { cpu: i64, gpu: i64, custom: i64 },
        Release(usize),
        Block(usize),
        Unblock(usize),
    }

    fn gpu_amount() -> impl Strategy<Value = i64> {
        prop_oneof![Just(0), Just(UNIT), Just(2 * UNIT), Just(UNIT / 2), Just(UNIT / 4), Just(UNIT * 3 / 10), 1..UNIT,]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..3 * UNIT, gpu_amount(), prop_oneof![Just(0), 1..2 * UNIT])
                .prop_map(|(cpu, gpu, custom)| Op::Allocate { cpu, gpu, custom }),
            2 => any::<usize>().prop_map(Op::Release),
            1 => any::<usize>().prop_map(Op::Block),
            1 => any::<usize>().prop_map(Op::Unblock),
        ]
    }

    struct Live {
        alloc: Allocation,
        blocked: bool,
    }

    fn check_invariants(node: &NodeResources, live: &[Live]) -> Result<(), TestCaseError> {
        // What workers hold right now: a blocked worker has lent its CPU back.
        let mut held = ResourceSet::new();
        for l in live {
            let mut r = l.alloc.resources.clone();
            if l.blocked {
                r.set(CPU, 0);
            }
            held.add(&r);
        }
        // (a) Nothing but CPU (over-committed by resumed workers) is ever held beyond the
        // total, and CPU only while the node shows a deficit. Nothing leaks: free plus
        // held is exactly the total in every resource.
        for (name, total) in node.total().iter() {
            let free = if name == GPU { node.gpus.free_total() } else { node.free.get(name).copied().unwrap_or(0) };
            prop_assert_eq!(free + held.get(name), total, "leak in {}", name);
            prop_assert!(free >= 0 || name == CPU, "{} in deficit", name);
        }
        prop_assert!(held.iter().all(|(name, _)| node.total().get(name) > 0));
        // (b) Per GPU id: fractional shares sum to at most 1; whole GPUs are exclusive.
        let gpus = node.gpus.free.len();
        let mut used = vec![0i64; gpus];
        let mut whole_owner = vec![0usize; gpus];
        for l in live {
            let gpu = l.alloc.resources.get(GPU);
            let mut ids = l.alloc.gpu_ids.clone();
            ids.sort_unstable();
            ids.dedup();
            prop_assert_eq!(ids.len(), l.alloc.gpu_ids.len(), "ids within one allocation repeat");
            if gpu >= UNIT {
                prop_assert_eq!(ids.len() as i64, gpu / UNIT);
            } else if gpu > 0 {
                prop_assert_eq!(ids.len(), 1);
            }
            for id in ids {
                let id = id as usize;
                prop_assert!(id < gpus);
                used[id] += gpu_share(gpu);
                if gpu >= UNIT {
                    whole_owner[id] += 1;
                }
            }
        }
        for id in 0..gpus {
            prop_assert!(used[id] <= UNIT, "GPU {id} shared beyond 1.0");
            prop_assert!(whole_owner[id] == 0 || used[id] == UNIT, "whole GPU {id} shared");
            prop_assert_eq!(node.gpus.free_of(id), UNIT - used[id]);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn accounting_holds_under_random_churn(
            total_cpu in 0..8 * UNIT,
            total_gpu in 0..5 * UNIT,
            total_custom in 0..4 * UNIT,
            ops in proptest::collection::vec(op(), 1..80),
        ) {
            let mut total = ResourceSet::new();
            total.set(CPU, total_cpu);
            total.set(GPU, total_gpu);
            total.set("custom", total_custom);
            let mut node = NodeResources::new(total);
            let mut live: Vec<Live> = Vec::new();
            for op in ops {
                match op {
                    Op::Allocate { cpu, gpu, custom } => {
                        let mut request = ResourceSet::new();
                        request.set(CPU, cpu);
                        request.set(GPU, gpu);
                        request.set("custom", custom);
                        let deficit = node.free.get(CPU).is_some_and(|f| *f < 0);
                        let before = node.available();
                        match node.try_allocate(&request) {
                            Some(alloc) => {
                                prop_assert!(request.fits_in(&before));
                                prop_assert!(!(deficit && cpu > 0), "granted CPU in deficit");
                                prop_assert_eq!(&alloc.resources, &request);
                                live.push(Live { alloc, blocked: false });
                            }
                            None => {
                                // Refused only if something is short right now.
                                let whole_free =
                                    node.gpus.free.iter().filter(|(_, f)| *f == UNIT).count() as i64;
                                let frac_fits = node.gpus.free.iter().any(|(_, f)| *f >= gpu);
                                let gpu_ok = gpu == 0
                                    || (gpu < UNIT && frac_fits)
                                    || (gpu % UNIT == 0 && whole_free >= gpu / UNIT);
                                let mut no_gpu = request.clone();
                                no_gpu.set(GPU, 0);
                                let cpu_short = deficit && cpu > 0;
                                prop_assert!(cpu_short || !no_gpu.fits_in(&before) || !gpu_ok);
                            }
                        }
                    }
                    Op::Release(i) if !live.is_empty() => {
                        let l = live.swap_remove(i % live.len());
                        if l.blocked {
                            node.reacquire_cpu(&l.alloc);
                        }
                        node.release(&l.alloc);
                    }
                    Op::Block(i) if !live.is_empty() => {
                        let n = live.len();
                        let l = &mut live[i % n];
                        if !l.blocked {
                            node.release_cpu(&l.alloc);
                            l.blocked = true;
                        }
                    }
                    Op::Unblock(i) if !live.is_empty() => {
                        let n = live.len();
                        let l = &mut live[i % n];
                        if l.blocked {
                            node.reacquire_cpu(&l.alloc);
                            l.blocked = false;
                        }
                    }
                    Op::Release(_) | Op::Block(_) | Op::Unblock(_) => {}
                }
                check_invariants(&node, &live)?;
            }
            // (c) Unblocking and releasing everything restores the total.
            for l in live.drain(..) {
                if l.blocked {
                    node.reacquire_cpu(&l.alloc);
                }
                node.release(&l.alloc);
            }
            prop_assert_eq!(&node.available(), node.total());
        }
    }
}
