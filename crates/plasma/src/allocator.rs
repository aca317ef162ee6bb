//! Best-fit allocator over the byte range `[0, capacity)` of the shared region.
//!
//! The allocator never touches the memory it manages: it only hands out offsets, which
//! is what lets every process on the node map the region at a different address. Free
//! space is a set of extents kept twice: by offset (to find and merge the neighbours of
//! a freed block, so free space does not crumble into unusable slivers) and by size (to
//! pick the smallest extent that fits, which keeps large extents whole for large
//! objects). Every block starts and ends on a 64-byte boundary so objects never share a
//! cache line and numpy buffers inside them are suitably aligned.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Alignment and granularity of every block.
pub const ALIGN: u64 = 64;

#[derive(Debug, Clone)]
pub struct Allocator {
    capacity: u64,
    /// Free extents: offset -> size.
    free_by_offset: BTreeMap<u64, u64>,
    /// Free extents again, as (size, offset), for best-fit lookup.
    free_by_size: BTreeSet<(u64, u64)>,
    /// Live blocks: offset -> rounded size.
    live: HashMap<u64, u64>,
    used: u64,
}

/// `size` rounded up to the block granularity; a zero-byte object still takes one block
/// so that its offset is unique. `None` on overflow.
pub fn block_size(size: u64) -> Option<u64> {
    let size = size.max(1);
    Some(size.checked_add(ALIGN - 1)? & !(ALIGN - 1))
}

impl Allocator {
    /// Manages `capacity` bytes, rounded down to a multiple of [`ALIGN`] (a tail shorter
    /// than one block could never be handed out).
    pub fn new(capacity: u64) -> Self {
        let capacity = capacity & !(ALIGN - 1);
        let mut a = Self {
            capacity,
            free_by_offset: BTreeMap::new(),
            free_by_size: BTreeSet::new(),
            live: HashMap::new(),
            used: 0,
        };
        if capacity > 0 {
            a.insert_free(0, capacity);
        }
        a
    }

    /// Reserves a block of at least `size` bytes and returns its offset, or `None` when no
    /// free extent is large enough.
    pub fn alloc(&mut self, size: u64) -> Option<u64> {
        let need = block_size(size)?;
        let &(extent_size, offset) = self.free_by_size.range((need, 0)..).next()?;
        self.remove_free(offset, extent_size);
        if extent_size > need {
            self.insert_free(offset + need, extent_size - need);
        }
        self.live.insert(offset, need);
        self.used += need;
        Some(offset)
    }

    /// Returns the block at `offset`; `false` if no block starts there (a double free is
    /// refused rather than corrupting the free lists).
    pub fn free(&mut self, offset: u64) -> bool {
        let Some(size) = self.live.remove(&offset) else {
            return false;
        };
        self.used -= size;
        let mut start = offset;
        let mut len = size;
        if let Some((&prev, &prev_len)) = self.free_by_offset.range(..offset).next_back() {
            if prev + prev_len == offset {
                self.remove_free(prev, prev_len);
                start = prev;
                len += prev_len;
            }
        }
        if let Some(&next_len) = self.free_by_offset.get(&(offset + size)) {
            self.remove_free(offset + size, next_len);
            len += next_len;
        }
        self.insert_free(start, len);
        true
    }

    /// Bytes in live blocks (rounded sizes).
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Usable bytes (the constructor's capacity rounded down to [`ALIGN`]).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The largest request that would succeed right now.
    pub fn largest_free(&self) -> u64 {
        self.free_by_size.iter().next_back().map_or(0, |&(size, _)| size)
    }

    /// Number of free extents (a measure of fragmentation).
    pub fn free_extents(&self) -> usize {
        self.free_by_offset.len()
    }

    fn insert_free(&mut self, offset: u64, size: u64) {
        self.free_by_offset.insert(offset, size);
        self.free_by_size.insert((size, offset));
    }

    fn remove_free(&mut self, offset: u64, size: u64) {
        self.free_by_offset.remove(&offset);
        self.free_by_size.remove(&(size, offset));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rounds_aligns_and_coalesces() {
        let mut a = Allocator::new(1000);
        assert_eq!(a.capacity(), 960);
        let x = a.alloc(0).expect("zero-size fits");
        let y = a.alloc(65).expect("fits");
        assert_eq!(x % ALIGN, 0);
        assert_eq!(y % ALIGN, 0);
        assert_ne!(x, y);
        assert_eq!(a.used(), 64 + 128);
        assert!(a.alloc(961).is_none());
        assert!(a.alloc(u64::MAX).is_none());
        assert!(a.free(x));
        assert!(!a.free(x), "double free is refused");
        assert!(a.free(y));
        assert_eq!(a.free_extents(), 1);
        assert_eq!(a.largest_free(), 960);
    }

    #[test]
    fn best_fit_prefers_the_smallest_hole() {
        let mut a = Allocator::new(64 * 10);
        let blocks: Vec<u64> = (0..10).map(|_| a.alloc(64).expect("fits")).collect();
        // Holes of 1 block at blocks[1] and 3 blocks at blocks[4..7].
        a.free(blocks[1]);
        for &b in &blocks[4..7] {
            a.free(b);
        }
        assert_eq!(a.alloc(64), Some(blocks[1]));
        assert_eq!(a.alloc(128), Some(blocks[4]));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(u64),
        Free(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![(0u64..700).prop_map(Op::Alloc), any::<usize>().prop_map(Op::Free)]
    }

    proptest! {
        #[test]
        fn live_blocks_never_overlap(cap in 0u64..8192, ops in proptest::collection::vec(op(), 1..200)) {
            let mut a = Allocator::new(cap);
            let mut live: Vec<(u64, u64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Alloc(size) => {
                        if let Some(off) = a.alloc(size) {
                            let len = block_size(size).expect("small");
                            prop_assert!(len >= size);
                            prop_assert_eq!(off % ALIGN, 0);
                            prop_assert!(off + len <= a.capacity());
                            for &(o, l) in &live {
                                prop_assert!(off + len <= o || o + l <= off, "overlap");
                            }
                            live.push((off, len));
                        } else {
                            prop_assert!(a.largest_free() < block_size(size).expect("small"));
                        }
                    }
                    Op::Free(i) if !live.is_empty() => {
                        let (off, _) = live.swap_remove(i % live.len());
                        prop_assert!(a.free(off));
                    }
                    Op::Free(_) => {}
                }
                prop_assert_eq!(a.used(), live.iter().map(|&(_, l)| l).sum::<u64>());
            }
            for (off, _) in live.drain(..) {
                prop_assert!(a.free(off));
            }
            prop_assert_eq!(a.used(), 0);
            prop_assert_eq!(a.largest_free(), a.capacity());
            prop_assert!(a.free_extents() <= 1);
        }
    }
}
