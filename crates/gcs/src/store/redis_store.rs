//! The Redis backend (`rtd start --head --redis-address HOST:PORT`), as Ray's GCS fault
//! tolerance: each GCS table is one Redis hash, `rtd:<namespace>:<table>`, so clusters
//! with different namespaces (`RTD_EXTERNAL_STORAGE_NAMESPACE`) share one Redis. A
//! batch of writes is one MULTI/EXEC transaction. It is as durable as the Redis
//! server is configured to be (its AOF/RDB settings), as in Ray.
//!
//! The writer thread is the only caller and commits batches one after another, so this
//! uses the crate's blocking connection: an async one would need a runtime of its own
//! for nothing. A lost connection is dropped and made again on the next call.

use std::collections::HashMap;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use super::{Snapshot, Storage, StoreError, Table, Write};

/// How long connecting, and each command, may take before the call fails (and the
/// writer retries).
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq)]
pub struct RedisConfig {
    /// `HOST:PORT`.
    pub address: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Prefixes every key, so clusters can share one Redis.
    pub namespace: String,
}

impl RedisConfig {
    fn url(&self) -> String {
        let encode = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
        let auth = match (&self.username, &self.password) {
            (Some(user), Some(password)) => format!("{}:{}@", encode(user), encode(password)),
            (None, Some(password)) => format!(":{}@", encode(password)),
            (Some(user), None) => format!("{}@", encode(user)),
            (None, None) => String::new(),
        };
        format!("redis://{auth}{}/", self.address)
    }

    fn key(&self, table: Table) -> String {
        format!("rtd:{}:{}", self.namespace, table.name())
    }
}

pub struct RedisStorage {
    config: RedisConfig,
    client: redis::Client,
    connection: Option<redis::Connection>,
}

impl RedisStorage {
    /// Connects now, so that a Redis that is down or refuses the password is an error
    /// at start naming its address.
    pub fn connect(config: RedisConfig) -> Result<Self, StoreError> {
        let client = redis::Client::open(config.url())
            .map_err(|e| StoreError(format!("invalid Redis address {:?}: {e}", config.address)))?;
        let mut storage = Self { config, client, connection: None };
        storage.connection()?;
        Ok(storage)
    }

    fn error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError(format!("Redis at {} (namespace {:?}): {e}", self.config.address, self.config.namespace))
    }

    fn connection(&mut self) -> Result<&mut redis::Connection, StoreError> {
        if self.connection.is_none() {
            let connection = self.client.get_connection_with_timeout(TIMEOUT).map_err(|e| self.error(e))?;
            connection.set_read_timeout(Some(TIMEOUT)).map_err(|e| self.error(e))?;
            connection.set_write_timeout(Some(TIMEOUT)).map_err(|e| self.error(e))?;
            self.connection = Some(connection);
        }
        self.connection.as_mut().ok_or_else(|| StoreError("no Redis connection".into()))
    }

    /// Runs `pipe` (one transaction) and reads its answer; a failed call drops the
    /// connection, so the next one connects again.
    fn run<T: redis::FromRedisValue>(&mut self, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        let result = pipe.query::<T>(self.connection()?);
        if result.is_err() {
            self.connection = None;
        }
        result.map_err(|e| self.error(e))
    }
}

impl Storage for RedisStorage {
    fn describe(&self) -> String {
        format!("Redis at {} (namespace {:?})", self.config.address, self.config.namespace)
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for table in Table::ALL {
            pipe.hgetall(self.config.key(table));
        }
        let tables: Vec<HashMap<Vec<u8>, Vec<u8>>> = self.run(&pipe)?;
        let mut snapshot = Snapshot::default();
        for (table, rows) in Table::ALL.into_iter().zip(tables) {
            snapshot.tables.insert(table, rows.into_iter().collect());
        }
        Ok(snapshot)
    }

    fn commit(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for write in writes {
            let key = self.config.key(write.table);
            match &write.value {
                Some(value) => pipe.hset(key, write.key.as_slice(), value.as_slice()).ignore(),
                None => pipe.hdel(key, write.key.as_slice()).ignore(),
            };
        }
        self.run(&pipe)
    }

    fn clear(&mut self) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for table in Table::ALL {
            pipe.del(self.config.key(table)).ignore();
        }
        self.run(&pipe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

    /// A `redis-server` of this test's own on a free loopback port, stopped on drop.
    struct RedisServer {
        child: Child,
        port: u16,
        dir: std::path::PathBuf,
    }

    impl RedisServer {
        /// None (with the reason printed) when `redis-server` is not installed.
        fn start(name: &str) -> Option<Self> {
            let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
            Self::start_on(name, port, &[])
        }

        /// A server on `port` with extra `redis-server` arguments.
        fn start_on(name: &str, port: u16, extra: &[&str]) -> Option<Self> {
            let Ok(path) = which_redis_server() else {
                eprintln!("skipping: redis-server is not on PATH (scripts/test installs Debian's redis-server)");
                return None;
            };
            let dir = std::env::temp_dir().join(format!("rtd-redis-test-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).ok()?;
            let child = Command::new(path)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(extra)
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            let server = Self { child, port, dir };
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(std::time::Instant::now() < deadline, "redis-server did not start within 10 s");
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(server)
        }

        fn config(&self, namespace: &str) -> RedisConfig {
            RedisConfig {
                address: format!("127.0.0.1:{}", self.port),
                username: None,
                password: None,
                namespace: namespace.into(),
            }
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn which_redis_server() -> Result<std::path::PathBuf, ()> {
        let path = std::env::var_os("PATH").ok_or(())?;
        std::env::split_paths(&path).map(|dir| dir.join("redis-server")).find(|p| p.is_file()).ok_or(())
    }

    #[test]
    fn rows_survive_reconnecting_and_namespaces_keep_clusters_apart() {
        let Some(server) = RedisServer::start("rows") else { return };
        let mut one = RedisStorage::connect(server.config("one")).expect("connects");
        let mut two = RedisStorage::connect(server.config("two")).expect("connects");
        let write = |key: &str, value: Option<&str>| Write {
            table: Table::Actors,
            key: key.as_bytes().to_vec(),
            value: value.map(|v| v.as_bytes().to_vec()),
        };
        one.commit(&[write("a", Some("1")), write("b", Some("2"))]).expect("commits");
        one.commit(&[write("b", None)]).expect("commits");
        two.commit(&[write("z", Some("26"))]).expect("commits");
        drop(one);

        let mut again = RedisStorage::connect(server.config("one")).expect("reconnects");
        let snapshot = again.load().expect("loads");
        assert_eq!(snapshot.rows(Table::Actors).collect::<Vec<_>>(), vec![(&b"a".to_vec(), &b"1".to_vec())]);
        again.clear().expect("clears");
        assert!(again.load().expect("loads").is_empty());
        assert_eq!(two.load().expect("loads").rows(Table::Actors).count(), 1);
    }

    #[test]
    fn a_redis_that_is_down_is_an_error_naming_its_address() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("binds").local_addr().expect("addr").port();
        let config =
            RedisConfig { address: format!("127.0.0.1:{port}"), username: None, password: None, namespace: "x".into() };
        let Err(error) = RedisStorage::connect(config) else { panic!("connected to nothing") };
        assert!(error.to_string().contains(&format!("127.0.0.1:{port}")), "{error}");
    }

    #[test]
    fn a_lost_connection_is_made_again_on_the_next_call() {
        let Some(server) = RedisServer::start("lost") else { return };
        let mut storage = RedisStorage::connect(server.config("lost")).expect("connects");
        // The server drops every client connection; the next calls connect again.
        let mut admin = redis::Client::open(server.config("admin").url()).expect("url").get_connection().expect("c");
        let _: redis::RedisResult<()> = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal").query(&mut admin);
        let write = Write { table: Table::Kv, key: b"k".to_vec(), value: Some(b"v".to_vec()) };
        let committed = storage.commit(std::slice::from_ref(&write)).or_else(|_| storage.commit(&[write]));
        committed.expect("commits after reconnecting");
        assert_eq!(storage.load().expect("loads").rows(Table::Kv).count(), 1);
    }

    #[tokio::test]
    async fn writes_made_while_redis_is_gone_are_kept_and_committed_when_it_is_back() {
        use crate::store::{GcsStore, Storage as _};
        let Some(server) = RedisServer::start("gone") else { return };
        let (port, config) = (server.port, server.config("gone"));
        let (store, _) =
            GcsStore::open(Box::new(RedisStorage::connect(config.clone()).expect("connects"))).expect("opens");
        drop(server);
        store.put(Table::Kv, "while-gone", b"v".to_vec());
        let durable = store.durable();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(store.has_uncommitted(), "a write cannot be committed while Redis is gone");
        let Some(_back) = RedisServer::start_on("back", port, &[]) else { return };
        tokio::time::timeout(Duration::from_secs(20), durable).await.expect("committed once Redis is back");
        let snapshot = RedisStorage::connect(config).expect("connects").load().expect("loads");
        assert_eq!(snapshot.get(Table::Kv, b"while-gone").map(Vec::as_slice), Some(&b"v"[..]));
    }

    #[test]
    fn a_password_protected_redis_takes_the_password_and_refuses_a_wrong_one() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("binds").local_addr().expect("addr").port();
        let Some(server) = RedisServer::start_on("auth", port, &["--requirepass", "s3cr:t"]) else { return };
        let config = RedisConfig { password: Some("s3cr:t".into()), ..server.config("auth") };
        let mut storage = RedisStorage::connect(config.clone()).expect("connects with the password");
        storage.commit(&[Write { table: Table::Kv, key: b"k".to_vec(), value: Some(b"v".to_vec()) }]).expect("ok");
        let Err(error) = RedisStorage::connect(RedisConfig { password: Some("wrong".into()), ..config }) else {
            panic!("a wrong password was taken")
        };
        assert!(error.to_string().contains(&format!("127.0.0.1:{port}")), "{error}");
    }

    #[test]
    fn passwords_and_user_names_are_escaped_in_the_url() {
        let config = RedisConfig {
            address: "h:1".into(),
            username: Some("u@x".into()),
            password: Some("p:/w".into()),
            namespace: "n".into(),
        };
        assert_eq!(config.url(), "redis://u%40x:p%3A%2Fw@h:1/");
    }
}
