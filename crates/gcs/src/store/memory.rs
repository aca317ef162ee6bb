//! The in-memory backend: rows in a map shared by its clones, so a test can drop one
//! store and open another on the same data, as a restarted head opens its file.

use std::sync::{Arc, Mutex, MutexGuard};

use super::{Snapshot, Storage, StoreError, Write};

#[derive(Clone, Default)]
pub struct MemoryStorage {
    rows: Arc<Mutex<Snapshot>>,
}

impl MemoryStorage {
    fn lock(&self) -> MutexGuard<'_, Snapshot> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every row committed so far.
    pub fn snapshot(&self) -> Snapshot {
        self.lock().clone()
    }
}

impl Storage for MemoryStorage {
    fn describe(&self) -> String {
        "the in-memory store".into()
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        Ok(self.snapshot())
    }

    fn commit(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        self.lock().apply(writes);
        Ok(())
    }

    fn clear(&mut self) -> Result<(), StoreError> {
        *self.lock() = Snapshot::default();
        Ok(())
    }

    fn commits_in_place(&self) -> bool {
        true
    }
}
