//! A shared-memory region: one file (normally under `/dev/shm`) mapped `MAP_SHARED` by
//! the store and by every client on the node.
//!
//! Because every process maps the same pages, an object written by one process is
//! visible to all others without a copy; the store only hands out *offsets* into the
//! region. The store process creates the file and owns its lifetime (it unlinks the file
//! when it goes away); clients merely open and map it. Processes may map the file at
//! different addresses, which is why nothing inside the region may hold a pointer.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::{MmapOptions, MmapRaw};

/// A read-write `MAP_SHARED` mapping of a whole file (or an anonymous mapping, for tests
/// and benchmarks that need no second process).
pub struct ShmRegion {
    map: MmapRaw,
    len: u64,
    path: Option<PathBuf>,
    /// Set for the creator: the file must outlive every client, so only the process that
    /// made it removes it, when its region is dropped.
    unlink_on_drop: AtomicBool,
}

impl std::fmt::Debug for ShmRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmRegion").field("path", &self.path).field("len", &self.len).finish()
    }
}

impl ShmRegion {
    /// Creates a new file of `size` bytes at `path` and maps it. Fails if the file already
    /// exists, so two stores can never silently share (and corrupt) one region. The
    /// returned region removes the file when dropped; see [`ShmRegion::set_unlink_on_drop`].
    pub fn create(path: &Path, size: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| annotate(e, "create", path))?;
        let mapped =
            file.set_len(size).map_err(|e| annotate(e, "size", path)).and_then(|()| map_file(&file, size, path));
        match mapped {
            Ok(map) => {
                Ok(Self { map, len: size, path: Some(path.to_path_buf()), unlink_on_drop: AtomicBool::new(true) })
            }
            Err(e) => {
                // A half-made region would block the next `create` at the same path.
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }

    /// Maps an existing region file whole. The file is never removed by this handle.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| annotate(e, "open", path))?;
        let len = file.metadata().map_err(|e| annotate(e, "stat", path))?.len();
        let map = map_file(&file, len, path)?;
        Ok(Self { map, len, path: Some(path.to_path_buf()), unlink_on_drop: AtomicBool::new(false) })
    }

    /// A private anonymous mapping: same interface, no file, nothing to share. Useful
    /// for tests and benchmarks of the store alone.
    pub fn anonymous(size: u64) -> io::Result<Self> {
        let len = usize::try_from(size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "region size exceeds the address space"))?;
        let map = MmapRaw::from(MmapOptions::new().len(len).map_anon()?);
        Ok(Self { map, len: size, path: None, unlink_on_drop: AtomicBool::new(false) })
    }

    /// Size of the region in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The backing file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Start of this process's mapping. Valid for `len()` bytes while `self` lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// `len` bytes at `offset`, or `None` if that range is not inside the region.
    ///
    /// # Safety
    /// The bytes are shared with other processes: the caller must know that nobody
    /// writes them while the slice lives (plasma guarantees this for sealed objects,
    /// which are immutable, as long as the caller holds a pin).
    pub unsafe fn slice(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let start = self.checked_start(offset, len)?;
        // SAFETY: the range is inside the live mapping (checked above); exclusivity of
        // writers is the caller's promise.
        Some(unsafe { std::slice::from_raw_parts(self.as_ptr().add(start), len as usize) })
    }

    /// Mutable view of `len` bytes at `offset`, or `None` if out of range.
    ///
    /// # Safety
    /// The caller must be the only one accessing this range while the slice lives (plasma
    /// guarantees this to the creator of an object between `create` and `seal`).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, offset: u64, len: u64) -> Option<&mut [u8]> {
        let start = self.checked_start(offset, len)?;
        // SAFETY: in bounds (checked above); exclusivity is the caller's promise.
        Some(unsafe { std::slice::from_raw_parts_mut(self.as_ptr().add(start), len as usize) })
    }

    fn checked_start(&self, offset: u64, len: u64) -> Option<usize> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        usize::try_from(offset).ok()
    }

    /// Whether dropping this handle removes the backing file.
    pub fn set_unlink_on_drop(&self, unlink: bool) {
        self.unlink_on_drop.store(unlink, Ordering::Relaxed);
    }

    /// Removes the backing file now. Existing mappings (here and in clients) stay valid;
    /// only new `open`s fail. Idempotent.
    pub fn unlink(&self) -> io::Result<()> {
        self.unlink_on_drop.store(false, Ordering::Relaxed);
        match &self.path {
            Some(path) => match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(annotate(e, "remove", path)),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }
}

impl Drop for ShmRegion {
    fn drop(&mut self) {
        if self.unlink_on_drop.load(Ordering::Relaxed) {
            if let Err(e) = self.unlink() {
                tracing::warn!("{e}");
            }
        }
    }
}

fn map_file(file: &File, len: u64, path: &Path) -> io::Result<MmapRaw> {
    let len = usize::try_from(len).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{} is larger than the address space", path.display()))
    })?;
    MmapOptions::new().len(len).map_raw(file).map_err(|e| annotate(e, "map", path))
}

/// Puts the path and the failed step into the error, so a message like "No space left on
/// device" says which file and what we were doing.
fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("cannot {what} shared-memory file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(tag: &str) -> PathBuf {
        use std::sync::atomic::AtomicU64;
        static N: AtomicU64 = AtomicU64::new(0);
        std::env::temp_dir().join(format!("rtd-shm-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
    }

    #[test]
    fn writes_are_visible_through_a_second_mapping() {
        let path = temp_path("share");
        let owner = ShmRegion::create(&path, 4096).expect("create");
        let other = ShmRegion::open(&path).expect("open");
        assert_eq!(other.len(), 4096);
        unsafe {
            owner.slice_mut(100, 5).expect("in range").copy_from_slice(b"hello");
            assert_eq!(other.slice(100, 5).expect("in range"), b"hello");
        }
        drop(other);
        drop(owner);
        assert!(!path.exists(), "creator removes the file");
    }

    #[test]
    fn create_refuses_an_existing_file_and_bounds_are_checked() {
        let path = temp_path("excl");
        let region = ShmRegion::create(&path, 128).expect("create");
        assert!(ShmRegion::create(&path, 128).is_err());
        unsafe {
            assert!(region.slice(0, 128).is_some());
            assert!(region.slice(1, 128).is_none());
            assert!(region.slice(u64::MAX, 2).is_none());
            assert!(region.slice(128, 0).is_some());
        }
        region.unlink().expect("unlink");
        assert!(!path.exists());
    }

    #[test]
    fn anonymous_regions_work() {
        let region = ShmRegion::anonymous(256).expect("anon");
        unsafe {
            region.slice_mut(0, 256).expect("in range").fill(7);
            assert!(region.slice(0, 256).expect("in range").iter().all(|&b| b == 7));
        }
    }
}
