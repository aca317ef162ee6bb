//! The embedded durable backend, the default for `rtd start --head`: one `redb`
//! database file under the head's temp dir, one database table per GCS table. redb is
//! a maintained, pure-Rust embedded key-value store with ACID transactions (a commit
//! is fsynced before it returns) and checksummed pages, so a torn or foreign file is
//! refused when opened rather than half read.

use std::path::{Path, PathBuf};

use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::{Snapshot, Storage, StoreError, Table, Write};

fn definition(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

pub struct EmbeddedStorage {
    path: PathBuf,
    db: Database,
}

impl EmbeddedStorage {
    /// Opens the database at `path`, creating it (and its directory) if missing.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let fail = |e: &dyn std::fmt::Display| {
            StoreError(format!(
                "cannot open the GCS's embedded store {}: {e} (if it is damaged, delete it to start a fresh cluster)",
                path.display()
            ))
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        }
        let db = Database::create(path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError(format!(
                "another head is running on the GCS's embedded store {} (one store per cluster): stop it, or give \
                 this head another --temp-dir, --port or RTD_EXTERNAL_STORAGE_NAMESPACE",
                path.display()
            )),
            e => fail(&e),
        })?;
        Ok(Self { path: path.to_path_buf(), db })
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError(format!("{what} the GCS's embedded store {}: {e}", self.path.display()))
    }
}

impl Storage for EmbeddedStorage {
    fn describe(&self) -> String {
        format!("the embedded store {}", self.path.display())
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.error("reading", e))?;
        let mut snapshot = Snapshot::default();
        for table in Table::ALL {
            let rows = match read.open_table(definition(table)) {
                Ok(rows) => rows,
                Err(TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(self.error("reading", e)),
            };
            let held = snapshot.tables.entry(table).or_default();
            for row in rows.iter().map_err(|e| self.error("reading", e))? {
                let (key, value) = row.map_err(|e| self.error("reading", e))?;
                held.insert(key.value().to_vec(), value.value().to_vec());
            }
        }
        Ok(snapshot)
    }

    fn commit(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.error("writing", e))?;
        for table in Table::ALL {
            let mut rows = None;
            for write in writes.iter().filter(|w| w.table == table) {
                let rows = match &mut rows {
                    Some(rows) => rows,
                    None => rows.insert(txn.open_table(definition(table)).map_err(|e| self.error("writing", e))?),
                };
                match &write.value {
                    Some(value) => rows.insert(write.key.as_slice(), value.as_slice()).map(drop),
                    None => rows.remove(write.key.as_slice()).map(drop),
                }
                .map_err(|e| self.error("writing", e))?;
            }
        }
        txn.commit().map_err(|e| self.error("committing to", e))
    }

    fn clear(&mut self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.error("clearing", e))?;
        for table in Table::ALL {
            txn.delete_table(definition(table)).map_err(|e| self.error("clearing", e))?;
        }
        txn.commit().map_err(|e| self.error("clearing", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("rtd-embedded-store-{}-{name}", std::process::id())).join("gcs.redb")
    }

    #[test]
    fn rows_survive_closing_and_reopening_and_clear_removes_them() {
        let path = temp_path("reopen");
        let _ = std::fs::remove_file(&path);
        let mut store = EmbeddedStorage::open(&path).expect("creates");
        assert!(store.load().expect("loads").is_empty());
        let writes = vec![
            Write { table: Table::Kv, key: b"fn:1".to_vec(), value: Some(b"code".to_vec()) },
            Write { table: Table::Actors, key: b"a".to_vec(), value: Some(b"actor".to_vec()) },
        ];
        store.commit(&writes).expect("commits");
        store.commit(&[Write { table: Table::Actors, key: b"a".to_vec(), value: None }]).expect("commits");
        drop(store);

        let mut again = EmbeddedStorage::open(&path).expect("reopens");
        let snapshot = again.load().expect("loads");
        assert_eq!(snapshot.get(Table::Kv, b"fn:1").map(Vec::as_slice), Some(&b"code"[..]));
        assert!(snapshot.get(Table::Actors, b"a").is_none());
        again.clear().expect("clears");
        assert!(again.load().expect("loads").is_empty());
        drop(again);
        let _ = std::fs::remove_dir_all(path.parent().expect("a directory"));
    }

    #[test]
    fn a_store_another_head_holds_open_is_refused_saying_so() {
        let path = temp_path("locked");
        let _held = EmbeddedStorage::open(&path).expect("creates");
        let Err(error) = EmbeddedStorage::open(&path) else { panic!("opened twice") };
        assert!(error.to_string().contains("another head is running"), "{error}");
        let _ = std::fs::remove_dir_all(path.parent().expect("a directory"));
    }

    #[test]
    fn a_file_of_garbage_is_refused_with_its_path() {
        let path = temp_path("garbage");
        std::fs::create_dir_all(path.parent().expect("a directory")).expect("mkdir");
        std::fs::write(&path, vec![0xAB; 64 * 1024]).expect("writes garbage");
        let error = EmbeddedStorage::open(&path).and_then(|mut s| s.load()).expect_err("refused");
        assert!(error.to_string().contains(&path.display().to_string()), "{error}");
        let _ = std::fs::remove_dir_all(path.parent().expect("a directory"));
    }
}
