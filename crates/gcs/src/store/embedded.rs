//! The embedded durable backend, the default for `rtd start --head`: one SQLite
//! database file under the head's temp dir (`rusqlite`, SQLite built from its bundled
//! source), every GCS table's rows in one SQL table keyed by (table, key).
//!
//! Why SQLite, and how it is set up: the failure this store is for is the head process
//! dying (SIGKILL, OOM, a panic). In WAL mode with `synchronous=NORMAL` a commit is in
//! the write-ahead log, in the OS's hands, when it returns — it survives the process —
//! and only checkpoints wait for the disk, so a commit costs microseconds, not an
//! fsync: requests that run one after another (create a placement group, wait for it,
//! remove it) are not slowed to the disk's pace. A power loss may lose the commits
//! since the last checkpoint, as Redis with its default `appendfsync everysec` does for
//! Ray. (redb, a pure-Rust alternative, has no such level: a commit either fsyncs or
//! does not survive the process.) SQLite also refuses a file that is not a database,
//! and `quick_check` at open finds damaged pages, so a broken store is an error at
//! start. The connection holds an exclusive lock while the head runs, so a second head
//! cannot open the same store; the OS drops the lock when the process dies.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, ErrorCode, OpenFlags};

use super::{Snapshot, Storage, StoreError, Table, Write};

pub struct EmbeddedStorage {
    path: PathBuf,
    db: Connection,
}

/// The table's name in the database's `rows` table.
fn table_named(name: &str) -> Option<Table> {
    Table::ALL.into_iter().find(|t| t.name() == name)
}

impl EmbeddedStorage {
    /// Opens the database at `path`, creating it (and its directory) if missing, and
    /// takes its lock.
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
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let db = Connection::open_with_flags(path, flags).map_err(|e| fail(&e))?;
        // A store another head holds is an error now, not after a wait.
        db.busy_timeout(std::time::Duration::ZERO).map_err(|e| fail(&e))?;
        let setup = "PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             BEGIN EXCLUSIVE;
             CREATE TABLE IF NOT EXISTS rows (tbl TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,
                                              PRIMARY KEY (tbl, key)) WITHOUT ROWID;
             COMMIT;";
        db.execute_batch(setup).map_err(|e| match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError(format!(
                "another head is running on the GCS's embedded store {} (one store per cluster): stop it, or give \
                 this head another --temp-dir, --port or RTD_EXTERNAL_STORAGE_NAMESPACE",
                path.display()
            )),
            _ => fail(&e),
        })?;
        let check: String = db.query_row("PRAGMA quick_check", [], |row| row.get(0)).map_err(|e| fail(&e))?;
        if check != "ok" {
            return Err(fail(&format!("the database is damaged ({check})")));
        }
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
        let mut query = self.db.prepare("SELECT tbl, key, value FROM rows").map_err(|e| self.error("reading", e))?;
        let rows = query
            .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?, row.get::<_, Vec<u8>>(2)?)))
            .map_err(|e| self.error("reading", e))?;
        let mut snapshot = Snapshot::default();
        for row in rows {
            let (name, key, value) = row.map_err(|e| self.error("reading", e))?;
            let table =
                table_named(&name).ok_or_else(|| self.error("reading", format!("an unknown table {name:?}")))?;
            snapshot.tables.entry(table).or_default().insert(key, value);
        }
        Ok(snapshot)
    }

    fn commit(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let error =
            |e: rusqlite::Error| StoreError(format!("writing the GCS's embedded store {}: {e}", path.display()));
        let txn = self.db.transaction().map_err(error)?;
        {
            let mut put = txn.prepare_cached("INSERT OR REPLACE INTO rows VALUES (?1, ?2, ?3)").map_err(error)?;
            let mut delete = txn.prepare_cached("DELETE FROM rows WHERE tbl = ?1 AND key = ?2").map_err(error)?;
            for write in writes {
                match &write.value {
                    Some(value) => put.execute(params![write.table.name(), write.key, value]),
                    None => delete.execute(params![write.table.name(), write.key]),
                }
                .map_err(error)?;
            }
        }
        txn.commit().map_err(error)
    }

    fn clear(&mut self) -> Result<(), StoreError> {
        self.db.execute("DELETE FROM rows", []).map(drop).map_err(|e| self.error("clearing", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("rtd-embedded-store-{}-{name}", std::process::id())).join("gcs.sqlite")
    }

    #[test]
    fn rows_survive_closing_and_reopening_and_clear_removes_them() {
        let path = temp_path("reopen");
        let _ = std::fs::remove_dir_all(path.parent().expect("a directory"));
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
        let _ = std::fs::remove_dir_all(path.parent().expect("a directory"));
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
        let Err(error) = EmbeddedStorage::open(&path).and_then(|mut s| s.load()) else { panic!("garbage opened") };
        assert!(error.to_string().contains(&path.display().to_string()), "{error}");
        let _ = std::fs::remove_dir_all(path.parent().expect("a directory"));
    }
}
