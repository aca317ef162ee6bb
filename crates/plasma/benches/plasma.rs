//! Throughput of the store's bookkeeping (no sockets): the full life of a small object,
//! and allocator churn with mixed sizes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rtd_common::ObjectId;
use rtd_plasma::{Allocator, ClientId, ObjectStore, ShmRegion};

fn object_lifecycle(c: &mut Criterion) {
    let region = Arc::new(ShmRegion::anonymous(64 << 20).expect("anonymous region"));
    let spill: PathBuf = std::env::temp_dir().join(format!("rtd-plasma-bench-{}", std::process::id()));
    let mut store = ObjectStore::new(region, spill.clone());
    let client = ClientId(1);
    let payload = [42u8; 1024];
    let mut n: u64 = 0;
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    group.bench_function("create_seal_get_release_delete_1KiB", |b| {
        b.iter(|| {
            n += 1;
            let mut raw = [0u8; 28];
            raw[..8].copy_from_slice(&n.to_le_bytes());
            let id = ObjectId(raw);
            let offset = store.create(&id, 1024, 0, client).expect("fits");
            // SAFETY: the block is ours between create and seal.
            unsafe { store.region().slice_mut(offset, 1024) }.expect("in region").copy_from_slice(&payload);
            store.seal(&id).expect("seal");
            let info = store.get(&id, client).expect("get").expect("sealed");
            std::hint::black_box(info);
            store.release(&id, client);
            store.delete(&id);
        })
    });
    group.finish();
    drop(store);
    let _ = std::fs::remove_dir_all(spill);
}

fn allocator_churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("allocator");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    group.bench_function("alloc_free_churn", |b| {
        let mut a = Allocator::new(256 << 20);
        // Keep a window of live blocks so frees land between live neighbours.
        let mut live: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
        let mut size: u64 = 1;
        b.iter(|| {
            size = size.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let s = 64 + (size >> 40) % 65536;
            if let Some(off) = a.alloc(s) {
                live.push_back(off);
            }
            if live.len() > 512 {
                if let Some(off) = live.pop_front() {
                    a.free(off);
                }
            }
        })
    });
    group.finish();
}

criterion_group!(benches, object_lifecycle, allocator_churn);
criterion_main!(benches);
