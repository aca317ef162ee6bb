//! The object table: which object lives where in the region, who is reading it, and
//! what to do when the region is full.
//!
//! An object's life: `create` reserves space and hands its creator an offset to write
//! into; `seal` makes it immutable and visible; `get` *pins* it for a client, which then
//! reads it straight from the shared mapping (zero copy) until it `release`s the pin.
//! Pinned objects never move, since a reader holds raw offsets into them. When a
//! `create` does not fit, sealed objects nobody pins are *spilled*: their bytes are
//! written to a file under the spill directory and their space freed, least recently
//! used first. A later `get` restores a spilled object into memory (possibly spilling
//! others). Copies of objects whose primary lives on another node (`create_copy`) are
//! evicted instead: dropped, since they can be pulled again. `delete` of an object
//! still being read is deferred until its last pin goes.
//!
//! The store is plain synchronous state; the server wraps it in a mutex.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rtd_common::ObjectId;

use crate::allocator::{block_size, Allocator};
use crate::shm::ShmRegion;

/// Identity of a connected client; pins are counted per client so that a client that
/// dies without releasing is cleaned up by [`ObjectStore::disconnect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

/// Where a pinned object's bytes are in the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectInfo {
    pub offset: u64,
    pub size: u64,
    pub metadata: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Usable bytes of the region.
    pub capacity: u64,
    /// Bytes reserved in the region (block-rounded).
    pub used: u64,
    /// Bytes of objects at least one client has pinned.
    pub pinned_bytes: u64,
    /// Objects known to the store, in memory or spilled.
    pub num_objects: u64,
    pub num_spilled: u64,
    pub spilled_bytes: u64,
    /// Copies of objects held elsewhere that were dropped to make room.
    pub num_evicted: u64,
    /// Every spill and restore since the store started (objects, bytes).
    pub spilled_total: Transfers,
    pub restored_total: Transfers,
}

/// A running count of objects moved and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfers {
    pub objects: u64,
    pub bytes: u64,
}

impl Transfers {
    fn add(&mut self, bytes: u64) {
        self.objects += 1;
        self.bytes += bytes;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {0} already exists in the object store (ids must be unique; a deleted object that is still being read keeps its id until released)")]
    AlreadyExists(ObjectId),
    #[error("object {0} is not in the object store (it was never created, or was deleted or aborted)")]
    NotFound(ObjectId),
    #[error("object {0} is already sealed; sealed objects are immutable")]
    AlreadySealed(ObjectId),
    /// The object cannot be placed in memory; the message says how memory is used.
    #[error("{0}")]
    Full(String),
    #[error("cannot restore object {id} from spill file {}: {source}; the spill directory may have been removed or the disk may be failing", path.display())]
    Restore { id: ObjectId, path: PathBuf, source: io::Error },
}

#[derive(Debug)]
enum Location {
    Memory { offset: u64 },
    Spilled,
}

#[derive(Debug)]
struct Entry {
    size: u64,
    metadata: u32,
    location: Location,
    sealed: bool,
    creator: ClientId,
    /// Pin count per client; a handful of readers at most, so a Vec beats a map.
    pins: Vec<(ClientId, u64)>,
    pin_total: u64,
    /// `delete` arrived while the object was pinned or still being written.
    delete_pending: bool,
    /// Position in the eviction queue when the object may be spilled.
    lru_tick: Option<u64>,
    /// A copy of an object held elsewhere: evicted rather than spilled.
    secondary: bool,
}

impl Entry {
    fn evictable(&self) -> bool {
        self.sealed && self.pin_total == 0 && !self.delete_pending && matches!(self.location, Location::Memory { .. })
    }
}

/// Sealed, unpinned, in-memory objects in the order they were last used. Copies of
/// objects held elsewhere go first (oldest first), then the oldest primary is spilled.
#[derive(Debug, Default)]
struct Lru {
    queue: BTreeMap<u64, ObjectId>,
    /// Ticks in `queue` of copies of objects held elsewhere.
    copies: BTreeSet<u64>,
    /// Region bytes (block-rounded) that spilling everything in `queue` would free.
    bytes: u64,
    clock: u64,
}

impl Lru {
    /// Puts `e` at the young end of the queue if it may be spilled, or takes it out if not.
    fn refresh(&mut self, id: &ObjectId, e: &mut Entry) {
        self.remove(e);
        if e.evictable() {
            self.clock += 1;
            self.queue.insert(self.clock, *id);
            if e.secondary {
                self.copies.insert(self.clock);
            }
            self.bytes += block_size(e.size).unwrap_or(0);
            e.lru_tick = Some(self.clock);
        }
    }

    fn remove(&mut self, e: &mut Entry) {
        if let Some(tick) = e.lru_tick.take() {
            self.queue.remove(&tick);
            self.copies.remove(&tick);
            self.bytes -= block_size(e.size).unwrap_or(0);
        }
    }

    /// The object to make room with next.
    fn victim(&self) -> Option<ObjectId> {
        match self.copies.first() {
            Some(tick) => self.queue.get(tick).copied(),
            None => self.queue.values().next().copied(),
        }
    }
}

pub struct ObjectStore {
    region: Arc<ShmRegion>,
    alloc: Allocator,
    spill_dir: PathBuf,
    objects: HashMap<ObjectId, Entry>,
    lru: Lru,
    pinned_bytes: u64,
    /// Region bytes (block-rounded) reserved by objects not yet sealed.
    unsealed_bytes: u64,
    num_spilled: u64,
    spilled_bytes: u64,
    spilled_total: Transfers,
    restored_total: Transfers,
    num_evicted: u64,
}

impl ObjectStore {
    /// A store over all of `region`, spilling to files in `spill_dir` (created on first
    /// spill, so a store that never fills up leaves no trace on disk).
    pub fn new(region: Arc<ShmRegion>, spill_dir: PathBuf) -> Self {
        let alloc = Allocator::new(region.len());
        Self {
            region,
            alloc,
            spill_dir,
            objects: HashMap::new(),
            lru: Lru::default(),
            pinned_bytes: 0,
            unsealed_bytes: 0,
            num_spilled: 0,
            spilled_bytes: 0,
            spilled_total: Transfers::default(),
            restored_total: Transfers::default(),
            num_evicted: 0,
        }
    }

    pub fn region(&self) -> &Arc<ShmRegion> {
        &self.region
    }

    pub fn spill_dir(&self) -> &Path {
        &self.spill_dir
    }

    /// Reserves `size` bytes for a new object and returns their offset in the region.
    /// The creator writes the bytes there and then calls [`seal`](Self::seal).
    pub fn create(&mut self, id: &ObjectId, size: u64, metadata: u32, client: ClientId) -> Result<u64, StoreError> {
        self.create_entry(id, size, metadata, client, false)
    }

    /// Like [`create`](Self::create), for a copy of an object whose primary lives on
    /// another node.
    pub fn create_copy(
        &mut self,
        id: &ObjectId,
        size: u64,
        metadata: u32,
        client: ClientId,
    ) -> Result<u64, StoreError> {
        self.create_entry(id, size, metadata, client, true)
    }

    fn create_entry(
        &mut self,
        id: &ObjectId,
        size: u64,
        metadata: u32,
        client: ClientId,
        secondary: bool,
    ) -> Result<u64, StoreError> {
        if let Some(e) = self.objects.get_mut(id) {
            if !secondary && e.secondary {
                // The object is being made here (a task re-run after its primary was lost)
                // where a copy already is: the copy becomes the primary.
                e.secondary = false;
                self.lru.refresh(id, e);
            }
            return Err(StoreError::AlreadyExists(*id));
        }
        let offset = self.allocate(size)?;
        self.unsealed_bytes += block_size(size).unwrap_or(0);
        self.objects.insert(
            *id,
            Entry {
                size,
                metadata,
                location: Location::Memory { offset },
                sealed: false,
                creator: client,
                pins: Vec::new(),
                pin_total: 0,
                delete_pending: false,
                lru_tick: None,
                secondary,
            },
        );
        Ok(offset)
    }

    /// Makes the object immutable and visible to `get`.
    pub fn seal(&mut self, id: &ObjectId) -> Result<(), StoreError> {
        let e = self.objects.get_mut(id).ok_or(StoreError::NotFound(*id))?;
        if e.sealed {
            return Err(StoreError::AlreadySealed(*id));
        }
        e.sealed = true;
        self.unsealed_bytes -= block_size(e.size).unwrap_or(0);
        if e.delete_pending {
            // Deleted while being written: the writer is done with the space now.
            self.remove_entry(id);
        } else {
            self.lru.refresh(id, e);
        }
        Ok(())
    }

    /// Pins a sealed object for `client` and says where it is, restoring it from disk if
    /// it was spilled. `Ok(None)` if the object is unknown, not sealed yet, or deleted.
    pub fn get(&mut self, id: &ObjectId, client: ClientId) -> Result<Option<ObjectInfo>, StoreError> {
        let (size, spilled) = match self.objects.get(id) {
            Some(e) if e.sealed && !e.delete_pending => (e.size, matches!(e.location, Location::Spilled)),
            _ => return Ok(None),
        };
        if spilled {
            self.restore(id, size)?;
        }
        let Some(e) = self.objects.get_mut(id) else {
            return Ok(None);
        };
        let Location::Memory { offset } = e.location else {
            return Ok(None);
        };
        if e.pin_total == 0 {
            self.pinned_bytes += e.size;
            self.lru.remove(e);
        }
        e.pin_total += 1;
        match e.pins.iter_mut().find(|(c, _)| *c == client) {
            Some((_, n)) => *n += 1,
            None => e.pins.push((client, 1)),
        }
        Ok(Some(ObjectInfo { offset, size: e.size, metadata: e.metadata }))
    }

    /// Sealed and not deleted (possibly spilled).
    pub fn is_sealed(&self, id: &ObjectId) -> bool {
        self.objects.get(id).is_some_and(|e| e.sealed && !e.delete_pending)
    }

    /// Known and not deleted, sealed or not.
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.objects.get(id).is_some_and(|e| !e.delete_pending)
    }

    /// Drops one of `client`'s pins on `id`. `false` if it held none.
    pub fn release(&mut self, id: &ObjectId, client: ClientId) -> bool {
        let Some(e) = self.objects.get_mut(id) else {
            return false;
        };
        let Some(i) = e.pins.iter().position(|(c, _)| *c == client) else {
            return false;
        };
        e.pins[i].1 -= 1;
        if e.pins[i].1 == 0 {
            e.pins.swap_remove(i);
        }
        e.pin_total -= 1;
        self.after_unpin(id);
        true
    }

    /// Deletes the object now, or once its last pin is released / its writer seals or
    /// disconnects. `false` if the store does not know it.
    pub fn delete(&mut self, id: &ObjectId) -> bool {
        let Some(e) = self.objects.get_mut(id) else {
            return false;
        };
        if e.pin_total > 0 || !e.sealed {
            e.delete_pending = true;
            self.lru.remove(e);
        } else {
            self.remove_entry(id);
        }
        true
    }

    /// Forgets a client that went away: drops all its pins and aborts the objects it was
    /// still writing (nobody else can finish them).
    pub fn disconnect(&mut self, client: ClientId) {
        let affected: Vec<ObjectId> = self
            .objects
            .iter()
            .filter(|(_, e)| (!e.sealed && e.creator == client) || e.pins.iter().any(|(c, _)| *c == client))
            .map(|(id, _)| *id)
            .collect();
        for id in affected {
            let Some(e) = self.objects.get_mut(&id) else {
                continue;
            };
            if !e.sealed && e.creator == client {
                self.remove_entry(&id);
                continue;
            }
            if let Some(i) = e.pins.iter().position(|(c, _)| *c == client) {
                let (_, n) = e.pins.swap_remove(i);
                e.pin_total -= n;
                self.after_unpin(&id);
            }
        }
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            capacity: self.alloc.capacity(),
            used: self.alloc.used(),
            pinned_bytes: self.pinned_bytes,
            num_objects: self.objects.len() as u64,
            num_spilled: self.num_spilled,
            spilled_bytes: self.spilled_bytes,
            num_evicted: self.num_evicted,
            spilled_total: self.spilled_total,
            restored_total: self.restored_total,
        }
    }

    /// The objects whose bytes are in spill files now.
    pub fn spilled_ids(&self) -> Vec<ObjectId> {
        self.objects.iter().filter(|(_, e)| matches!(e.location, Location::Spilled)).map(|(id, _)| *id).collect()
    }

    fn after_unpin(&mut self, id: &ObjectId) {
        let Some(e) = self.objects.get_mut(id) else {
            return;
        };
        if e.pin_total > 0 {
            return;
        }
        self.pinned_bytes -= e.size;
        if e.delete_pending {
            self.remove_entry(id);
        } else {
            self.lru.refresh(id, e);
        }
    }

    fn remove_entry(&mut self, id: &ObjectId) {
        let Some(mut e) = self.objects.remove(id) else {
            return;
        };
        self.lru.remove(&mut e);
        if !e.sealed {
            self.unsealed_bytes -= block_size(e.size).unwrap_or(0);
        }
        if e.pin_total > 0 {
            self.pinned_bytes -= e.size;
        }
        match e.location {
            Location::Memory { offset } => {
                self.alloc.free(offset);
            }
            Location::Spilled => {
                self.num_spilled -= 1;
                self.spilled_bytes -= e.size;
                let path = self.spill_path(id);
                if let Err(err) = std::fs::remove_file(&path) {
                    tracing::warn!("cannot remove spill file {}: {err}", path.display());
                }
            }
        }
    }

    /// Finds room for `size` bytes, spilling least recently used objects as needed.
    fn allocate(&mut self, size: u64) -> Result<u64, StoreError> {
        let need = block_size(size).ok_or_else(|| self.full(size, None))?;
        if need > self.alloc.capacity() {
            return Err(self.full(size, None));
        }
        loop {
            if let Some(offset) = self.alloc.alloc(size) {
                return Ok(offset);
            }
            // Spilling cannot help if even the evictable bytes would not make room; fail
            // before moving anything to disk.
            let fixed = self.alloc.used() - self.lru.bytes;
            if fixed + need > self.alloc.capacity() {
                return Err(self.full(size, None));
            }
            let Some(victim) = self.lru.victim() else {
                // Enough bytes in total but too fragmented among pinned objects.
                return Err(self.full(size, None));
            };
            if self.objects.get(&victim).is_some_and(|e| e.secondary) {
                self.remove_entry(&victim);
                self.num_evicted += 1;
                continue;
            }
            if let Err(e) = self.spill(&victim) {
                return Err(self.full(size, Some(e)));
            }
        }
    }

    /// Moves a sealed, unpinned object's bytes to its spill file and frees its space.
    fn spill(&mut self, id: &ObjectId) -> io::Result<()> {
        let path = self.spill_path(id);
        let Some(e) = self.objects.get_mut(id) else {
            return Ok(());
        };
        let Location::Memory { offset } = e.location else {
            return Ok(());
        };
        // SAFETY: the object is sealed (immutable) and unpinned, and the store holds the
        // only reference to its offset, so nobody writes these bytes while we read them.
        let bytes = unsafe { self.region.slice(offset, e.size) }
            .ok_or_else(|| io::Error::other(format!("object {id} lies outside the region")))?;
        std::fs::create_dir_all(&self.spill_dir).map_err(|err| {
            io::Error::new(err.kind(), format!("cannot create spill directory {}: {err}", self.spill_dir.display()))
        })?;
        let written = File::create(&path).and_then(|mut f| f.write_all(bytes));
        if let Err(err) = written {
            let _ = std::fs::remove_file(&path);
            return Err(io::Error::new(err.kind(), format!("cannot spill object {id} to {}: {err}", path.display())));
        }
        self.lru.remove(e);
        e.location = Location::Spilled;
        self.alloc.free(offset);
        self.num_spilled += 1;
        self.spilled_bytes += e.size;
        self.spilled_total.add(e.size);
        tracing::debug!("spilled object {id} ({} bytes) to {}", e.size, path.display());
        Ok(())
    }

    /// Brings a spilled object back into the region.
    fn restore(&mut self, id: &ObjectId, size: u64) -> Result<(), StoreError> {
        let offset = self.allocate(size)?;
        let path = self.spill_path(id);
        // SAFETY: the block was just allocated; no one else has its offset yet.
        let dest = unsafe { self.region.slice_mut(offset, size) };
        let read = match dest {
            Some(dest) => File::open(&path).and_then(|mut f| f.read_exact(dest)),
            None => Err(io::Error::other("allocated block lies outside the region")),
        };
        if let Err(source) = read {
            self.alloc.free(offset);
            return Err(StoreError::Restore { id: *id, path, source });
        }
        if let Err(err) = std::fs::remove_file(&path) {
            tracing::warn!("cannot remove spill file {}: {err}", path.display());
        }
        if let Some(e) = self.objects.get_mut(id) {
            e.location = Location::Memory { offset };
        }
        self.num_spilled -= 1;
        self.spilled_bytes -= size;
        self.restored_total.add(size);
        tracing::debug!("restored object {id} ({size} bytes) from {}", path.display());
        Ok(())
    }

    fn spill_path(&self, id: &ObjectId) -> PathBuf {
        self.spill_dir.join(id.hex())
    }

    fn full(&self, size: u64, cause: Option<io::Error>) -> StoreError {
        let capacity = self.alloc.capacity();
        let mut msg = if block_size(size).is_none_or(|need| need > capacity) {
            format!(
                "object store full: an object of {} is larger than the whole object store ({} capacity); raise object_store_memory",
                human(size),
                human(capacity)
            )
        } else {
            format!(
                "object store full: cannot fit {}; {} capacity, {} in use, {} pinned by readers, {} being written",
                human(size),
                human(capacity),
                human(self.alloc.used()),
                human(self.pinned_bytes),
                human(self.unsealed_bytes)
            )
        };
        match cause {
            Some(e) => {
                msg.push_str(&format!("; spilling to disk failed: {e}; free disk space or raise object_store_memory"))
            }
            None => msg.push_str("; raise object_store_memory or release references"),
        }
        StoreError::Full(msg)
    }
}

impl Drop for ObjectStore {
    /// Spill files only make sense together with this store's table.
    fn drop(&mut self) {
        let spilled: Vec<ObjectId> =
            self.objects.iter().filter(|(_, e)| matches!(e.location, Location::Spilled)).map(|(id, _)| *id).collect();
        for id in spilled {
            let _ = std::fs::remove_file(self.spill_path(&id));
        }
    }
}

/// Bytes as a short human-readable size ("50.0 MiB").
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn temp_dir(tag: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        std::env::temp_dir().join(format!(
            "rtd-plasma-store-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }

    struct Fixture {
        store: ObjectStore,
        dir: PathBuf,
    }

    impl Fixture {
        fn new(tag: &str, capacity: u64) -> Self {
            let dir = temp_dir(tag);
            let region = Arc::new(ShmRegion::anonymous(capacity).expect("anonymous region"));
            Self { store: ObjectStore::new(region, dir.join("spill")), dir }
        }

        fn put(&mut self, id: &ObjectId, data: &[u8], client: ClientId) -> Result<(), StoreError> {
            let off = self.store.create(id, data.len() as u64, 0, client)?;
            unsafe { self.store.region().slice_mut(off, data.len() as u64).expect("in region") }.copy_from_slice(data);
            self.store.seal(id)
        }

        fn read(&self, info: &ObjectInfo) -> Vec<u8> {
            unsafe { self.store.region().slice(info.offset, info.size).expect("in region") }.to_vec()
        }

        fn spill_files(&self) -> usize {
            std::fs::read_dir(self.dir.join("spill")).map(|d| d.count()).unwrap_or(0)
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn oid(n: u8) -> ObjectId {
        let mut b = [0u8; 28];
        b[0] = n;
        ObjectId(b)
    }

    fn pattern(n: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(n.wrapping_mul(31))).collect()
    }

    const A: ClientId = ClientId(1);
    const B: ClientId = ClientId(2);

    #[test]
    fn spill_and_restore_round_trip_exact_bytes() {
        let mut f = Fixture::new("spill", 4096);
        let first = pattern(1, 3000);
        f.put(&oid(1), &first, A).expect("fits");
        // Does not fit next to the first: the first (sealed, unpinned) goes to disk.
        let second = pattern(2, 3000);
        f.put(&oid(2), &second, A).expect("fits after spilling");
        let s = f.store.stats();
        assert_eq!((s.num_spilled, s.spilled_bytes), (1, 3000));
        assert_eq!(f.spill_files(), 1);
        assert_eq!(f.store.spilled_ids(), vec![oid(1)]);
        // Getting the first restores it (spilling the second) with the same bytes.
        let info = f.store.get(&oid(1), B).expect("restore").expect("sealed");
        assert_eq!(f.read(&info), first);
        assert!(f.store.is_sealed(&oid(2)));
        assert_eq!(f.store.stats().num_spilled, 1);
        assert_eq!(f.store.spilled_ids(), vec![oid(2)]);
        assert!(f.store.release(&oid(1), B));
        let info = f.store.get(&oid(2), B).expect("restore").expect("sealed");
        assert_eq!(f.read(&info), second);
        f.store.release(&oid(2), B);
        assert!(f.store.delete(&oid(1)));
        assert!(f.store.delete(&oid(2)));
        let s = f.store.stats();
        assert_eq!((s.used, s.num_objects, s.num_spilled, s.spilled_bytes), (0, 0, 0, 0));
        assert_eq!(f.spill_files(), 0);
        // The running totals keep every move: 1, 2 and 1 again spilled; 1 and 2 restored.
        assert_eq!(s.spilled_total, Transfers { objects: 3, bytes: 9000 });
        assert_eq!(s.restored_total, Transfers { objects: 2, bytes: 6000 });
    }

    #[test]
    fn delete_while_pinned_frees_on_last_release() {
        let mut f = Fixture::new("delpin", 4096);
        f.put(&oid(1), &pattern(1, 100), A).expect("fits");
        f.store.get(&oid(1), B).expect("ok").expect("sealed");
        f.store.get(&oid(1), B).expect("ok").expect("sealed");
        assert!(f.store.delete(&oid(1)));
        assert!(!f.store.contains(&oid(1)));
        assert_eq!(f.store.get(&oid(1), A).expect("ok"), None, "deleted objects are not handed out");
        assert!(f.store.stats().used > 0, "still pinned, still there");
        assert!(f.store.release(&oid(1), B));
        assert!(f.store.stats().used > 0);
        assert!(f.store.release(&oid(1), B));
        assert_eq!(f.store.stats().used, 0);
        assert_eq!(f.store.stats().num_objects, 0);
        assert!(!f.store.release(&oid(1), B));
    }

    #[test]
    fn disconnect_drops_pins_and_aborts_unsealed() {
        let mut f = Fixture::new("disc", 4096);
        f.put(&oid(1), &pattern(1, 100), A).expect("fits");
        f.store.get(&oid(1), B).expect("ok").expect("sealed");
        f.store.get(&oid(1), B).expect("ok").expect("sealed");
        f.store.create(&oid(2), 500, 0, B).expect("fits");
        assert_eq!(f.store.stats().pinned_bytes, 100);
        f.store.disconnect(B);
        let s = f.store.stats();
        assert_eq!(s.pinned_bytes, 0);
        assert_eq!(s.num_objects, 1);
        assert!(!f.store.contains(&oid(2)));
        assert!(matches!(f.store.seal(&oid(2)), Err(StoreError::NotFound(_))));
        assert_eq!(s.used, 128, "only the sealed object's block remains");
        // The unpinned object can be spilled now.
        f.put(&oid(3), &pattern(3, 4000), A).expect("fits after spilling");
        assert_eq!(f.store.stats().num_spilled, 1);
    }

    #[test]
    fn copies_of_objects_held_elsewhere_are_evicted_not_spilled() {
        let mut f = Fixture::new("copy", 4096);
        f.put(&oid(2), &pattern(2, 1500), A).expect("fits");
        f.store.create_copy(&oid(1), 1500, 0, A).expect("fits");
        f.store.seal(&oid(1)).expect("sealed");
        // Room for a third object: the copy goes first, though the primary is older (the
        // copy can be pulled again), and the primary stays in memory.
        f.put(&oid(3), &pattern(3, 2000), A).expect("fits after evicting the copy");
        let s = f.store.stats();
        assert_eq!((s.num_evicted, s.num_spilled), (1, 0));
        assert!(!f.store.contains(&oid(1)));
        assert_eq!(f.store.get(&oid(1), B).expect("ok"), None);
        assert_eq!(f.spill_files(), 0);
        // A pinned copy is not evicted.
        f.store.create_copy(&oid(4), 100, 0, A).expect("fits");
        f.store.seal(&oid(4)).expect("sealed");
        f.store.get(&oid(4), B).expect("ok").expect("sealed");
        f.put(&oid(5), &pattern(5, 3000), A).expect("fits after spilling the primaries");
        assert!(f.store.contains(&oid(4)));
        assert_eq!(f.store.stats().num_evicted, 1);
    }

    #[test]
    fn full_when_everything_is_pinned() {
        let mut f = Fixture::new("full", 4096);
        f.put(&oid(1), &pattern(1, 3000), A).expect("fits");
        f.store.get(&oid(1), B).expect("ok").expect("sealed");
        let err = f.store.create(&oid(2), 2000, 0, A).expect_err("no room");
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Full(_)));
        assert!(msg.contains("cannot fit 2.0 KiB"), "{msg}");
        assert!(msg.contains("4.0 KiB capacity"), "{msg}");
        assert!(msg.contains("2.9 KiB pinned"), "{msg}");
        assert!(!f.store.contains(&oid(2)));
        assert_eq!(f.store.stats().num_spilled, 0, "nothing moved for a hopeless request");
        let err = f.store.create(&oid(3), 1 << 20, 0, A).expect_err("too big");
        assert!(err.to_string().contains("larger than the whole object store"), "{err}");
        assert!(matches!(f.store.create(&oid(1), 1, 0, A), Err(StoreError::AlreadyExists(_))));
        assert!(matches!(f.store.seal(&oid(1)), Err(StoreError::AlreadySealed(_))));
        // Once released, the same request succeeds by spilling.
        f.store.release(&oid(1), B);
        f.store.create(&oid(2), 2000, 0, A).expect("fits after spilling");
    }

    #[test]
    fn spill_failure_is_reported_as_full() {
        let mut f = Fixture::new("spillfail", 4096);
        // A file where the spill directory should be makes every spill fail.
        std::fs::create_dir_all(&f.dir).expect("dir");
        std::fs::write(f.dir.join("spill"), b"not a directory").expect("write");
        f.put(&oid(1), &pattern(1, 3000), A).expect("fits");
        let err = f.store.create(&oid(2), 3000, 0, A).expect_err("spill fails");
        assert!(err.to_string().contains("spilling to disk failed"), "{err}");
        let info = f.store.get(&oid(1), A).expect("ok").expect("still in memory");
        assert_eq!(f.read(&info), pattern(1, 3000));
    }

    #[test]
    fn delete_of_unsealed_waits_for_seal() {
        let mut f = Fixture::new("delunsealed", 4096);
        f.store.create(&oid(1), 10, 0, A).expect("fits");
        assert_eq!(f.store.get(&oid(1), B).expect("ok"), None);
        assert!(f.store.delete(&oid(1)));
        assert!(f.store.stats().used > 0, "writer may still be writing");
        f.store.seal(&oid(1)).expect("seal completes the delete");
        assert_eq!(f.store.stats().used, 0);
        assert_eq!(f.store.stats().num_objects, 0);
    }

    #[test]
    fn zero_sized_objects_are_distinct() {
        let mut f = Fixture::new("zero", 4096);
        f.put(&oid(1), &[], A).expect("fits");
        f.put(&oid(2), &[], A).expect("fits");
        let a = f.store.get(&oid(1), A).expect("ok").expect("sealed");
        let b = f.store.get(&oid(2), A).expect("ok").expect("sealed");
        assert_ne!(a.offset, b.offset);
        assert_eq!(a.size, 0);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(10), "10 B");
        assert_eq!(human(50 * 1024 * 1024), "50.0 MiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Create(u8, u16, u8),
        /// A copy of an object held elsewhere (evictable).
        CreateCopy(u8, u16, u8),
        Seal(u8),
        Get(u8, u8),
        Release(u8, u8),
        Delete(u8),
        Disconnect(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let id = 0u8..6;
        let client = 0u8..3;
        prop_oneof![
            3 => (id.clone(), 0u16..1500, client.clone()).prop_map(|(i, s, c)| Op::Create(i, s, c)),
            2 => (id.clone(), 0u16..1500, client.clone()).prop_map(|(i, s, c)| Op::CreateCopy(i, s, c)),
            3 => id.clone().prop_map(Op::Seal),
            4 => (id.clone(), client.clone()).prop_map(|(i, c)| Op::Get(i, c)),
            3 => (id.clone(), client.clone()).prop_map(|(i, c)| Op::Release(i, c)),
            1 => id.prop_map(Op::Delete),
            1 => client.prop_map(Op::Disconnect),
        ]
    }

    #[derive(Debug, Clone, PartialEq)]
    enum Model {
        Writing { size: usize, creator: ClientId, copy: bool },
        Sealed { size: usize, copy: bool },
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Sealed objects are never lost or corrupted by spilling and restoring, and
        /// deleted ones are never handed out. Copies of objects held elsewhere may be
        /// evicted, but never while pinned, and never come back corrupted; creating the
        /// object itself where its copy is makes the copy a primary.
        #[test]
        fn sealed_bytes_are_never_lost(ops in proptest::collection::vec(op(), 1..120)) {
            let mut f = Fixture::new("prop", 4096);
            let mut model: HashMap<u8, Model> = HashMap::new();
            let mut pins: HashMap<(u8, u8), u64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Create(i, size, c) | Op::CreateCopy(i, size, c) => {
                        let copy = matches!(op, Op::CreateCopy(..));
                        let size = size as usize;
                        let client = ClientId(c as u64);
                        let created = if copy {
                            f.store.create_copy(&oid(i), size as u64, 0, client)
                        } else {
                            f.store.create(&oid(i), size as u64, 0, client)
                        };
                        match created {
                            Ok(off) => {
                                // A copy evicted since is gone from the store, so not here.
                                let evicted = matches!(model.get(&i), Some(Model::Sealed { copy: true, .. }));
                                prop_assert!(!model.contains_key(&i) || evicted);
                                let data = pattern(i, size);
                                unsafe { f.store.region().slice_mut(off, size as u64).expect("in region") }
                                    .copy_from_slice(&data);
                                model.insert(i, Model::Writing { size, creator: client, copy });
                            }
                            Err(StoreError::AlreadyExists(_)) => {
                                if !copy {
                                    match model.get_mut(&i) {
                                        Some(Model::Writing { copy, .. }) | Some(Model::Sealed { copy, .. }) => *copy = false,
                                        None => {}
                                    }
                                }
                            }
                            Err(StoreError::Full(_)) => {}
                            Err(e) => prop_assert!(false, "unexpected {e}"),
                        }
                    }
                    Op::Seal(i) => {
                        let r = f.store.seal(&oid(i));
                        if let Some(Model::Writing { size, copy, .. }) = model.get(&i) {
                            prop_assert!(r.is_ok());
                            let (size, copy) = (*size, *copy);
                            model.insert(i, Model::Sealed { size, copy });
                        } else {
                            prop_assert!(r.is_err() || !f.store.contains(&oid(i)));
                        }
                    }
                    Op::Get(i, c) => match f.store.get(&oid(i), ClientId(c as u64)) {
                        Ok(Some(info)) => {
                            let Some(Model::Sealed { size, .. }) = model.get(&i) else {
                                prop_assert!(false, "got an object that is not sealed and live");
                                continue;
                            };
                            prop_assert_eq!(info.size as usize, *size);
                            prop_assert_eq!(f.read(&info), pattern(i, *size));
                            *pins.entry((i, c)).or_default() += 1;
                        }
                        Ok(None) => {
                            let primary = matches!(model.get(&i), Some(Model::Sealed { copy: false, .. }));
                            prop_assert!(!primary, "sealed object {} lost", i);
                            if matches!(model.get(&i), Some(Model::Sealed { copy: true, .. })) {
                                let pinned = pins.iter().any(|((pi, _), n)| *pi == i && *n > 0);
                                prop_assert!(!pinned, "pinned copy {} evicted", i);
                                model.remove(&i);
                            }
                        }
                        Err(StoreError::Full(_)) => {
                            let live = matches!(model.get(&i), Some(Model::Sealed { .. }));
                            prop_assert!(live, "Full for an object that needs no space");
                        }
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    },
                    Op::Release(i, c) => {
                        let held = pins.get(&(i, c)).copied().unwrap_or(0);
                        prop_assert_eq!(f.store.release(&oid(i), ClientId(c as u64)), held > 0);
                        if held > 0 {
                            pins.insert((i, c), held - 1);
                        }
                    }
                    Op::Delete(i) => {
                        f.store.delete(&oid(i));
                        model.remove(&i);
                    }
                    Op::Disconnect(c) => {
                        f.store.disconnect(ClientId(c as u64));
                        pins.retain(|(_, pc), _| *pc != c);
                        model.retain(|_, m| !matches!(m, Model::Writing { creator, .. } if *creator == ClientId(c as u64)));
                    }
                }
                let s = f.store.stats();
                prop_assert!(s.used <= s.capacity);
            }
            // Every surviving sealed object still reads back intact (a copy may be gone).
            for (&i, m) in &model {
                if let Model::Sealed { size, copy } = m {
                    match f.store.get(&oid(i), ClientId(9)) {
                        Ok(Some(info)) => {
                            prop_assert_eq!(f.read(&info), pattern(i, *size));
                            f.store.release(&oid(i), ClientId(9));
                        }
                        Err(StoreError::Full(_)) => {}
                        Ok(None) if *copy => {}
                        other => prop_assert!(false, "lost object {i}: {other:?}"),
                    }
                }
            }
            // Dropping every client and deleting everything returns the region whole.
            for c in 0..3 {
                f.store.disconnect(ClientId(c));
            }
            for i in 0..6 {
                f.store.delete(&oid(i));
                let _ = f.store.seal(&oid(i));
            }
            let s = f.store.stats();
            prop_assert_eq!((s.used, s.pinned_bytes, s.num_objects, s.num_spilled, s.spilled_bytes), (0, 0, 0, 0, 0));
            prop_assert_eq!(f.spill_files(), 0);
        }
    }
}
