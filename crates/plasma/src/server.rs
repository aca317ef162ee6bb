//! The plasma protocol served over a Unix socket: each connection is one client, and the
//! connection's lifetime bounds the client's pins.
//!
//! Requests run inline in arrival order (see `rtd_common::rpc`), so a client's
//! create, seal and release happen in the order it sent them. A `get` for an object that
//! is not sealed yet must not block the connection, so it parks a waiter and replies
//! later, when the seal arrives or its timeout passes. Waiters are registered under the
//! same lock as the store, which is what makes "check sealed, else wait" race-free
//! against a concurrent seal.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rtd_common::ids::IdError;
use rtd_common::proto::frame::Body;
use rtd_common::proto::plasma_reply::Reply as PlasmaReply;
use rtd_common::proto::plasma_request::Request as PlasmaRequest;
use rtd_common::proto::{Ack, ErrorCode, PlasmaCreate, PlasmaCreateReply, PlasmaGetReply, PlasmaListSpilledReply};
use rtd_common::rpc::{error_body, Reply, Service};
use rtd_common::ObjectId;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::store::{ClientId, ObjectInfo, ObjectStore, StoreError, StoreStats};

pub struct PlasmaService {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    next_client: AtomicU64,
}

struct State {
    store: ObjectStore,
    /// Gets waiting for an object to be sealed, with the client each waits for, so a
    /// disconnect can cancel them.
    waiters: HashMap<ObjectId, Vec<(ClientId, oneshot::Sender<()>)>>,
    /// Clients whose connection is open; a waiting get must not pin for a client that
    /// is gone (nobody would ever release that pin).
    connected: HashSet<ClientId>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the table as it was at that point; keep
        // serving rather than failing every later request of every client.
        self.state.lock().unwrap_or_else(|poisoned| {
            tracing::error!("plasma store lock was poisoned by a panic; continuing");
            poisoned.into_inner()
        })
    }
}

impl PlasmaService {
    pub fn new(store: ObjectStore) -> Arc<PlasmaService> {
        Arc::new(PlasmaService {
            shared: Arc::new(Shared {
                state: Mutex::new(State { store, waiters: HashMap::new(), connected: HashSet::new() }),
                next_client: AtomicU64::new(1),
            }),
        })
    }

    pub fn stats(&self) -> StoreStats {
        self.shared.lock().store.stats()
    }

    fn create(&self, client: ClientId, req: &PlasmaCreate) -> Body {
        let id = match parse_id(&req.id) {
            Ok(id) => id,
            Err(e) => return bad_id(e),
        };
        let store = &mut self.shared.lock().store;
        let created = if req.secondary {
            store.create_copy(&id, req.size, req.metadata, client)
        } else {
            store.create(&id, req.size, req.metadata, client)
        };
        match created {
            Ok(offset) => PlasmaReply::PlasmaCreateReply(PlasmaCreateReply { offset }).into(),
            Err(e) => store_error(e),
        }
    }

    fn seal(&self, id: &[u8]) -> Body {
        let id = match parse_id(id) {
            Ok(id) => id,
            Err(e) => return bad_id(e),
        };
        let mut state = self.shared.lock();
        if let Err(e) = state.store.seal(&id) {
            return store_error(e);
        }
        if let Some(waiters) = state.waiters.remove(&id) {
            for (_, tx) in waiters {
                let _ = tx.send(());
            }
        }
        PlasmaReply::Ack(Ack {}).into()
    }

    fn get(&self, client: ClientId, id: &[u8], timeout_ms: u64) -> Reply {
        let id = match parse_id(id) {
            Ok(id) => id,
            Err(e) => return Reply::Now(bad_id(e)),
        };
        let rx = {
            let mut state = self.shared.lock();
            match state.store.get(&id, client) {
                Ok(Some(info)) => return Reply::Now(found(info)),
                Err(e) => return Reply::Now(store_error(e)),
                Ok(None) if timeout_ms == 0 => return Reply::Now(not_found()),
                Ok(None) => wait_for_seal(&mut state, id, client),
            }
        };
        // `None` (a timeout too large to represent) means wait for the seal however long.
        let deadline = Instant::now().checked_add(Duration::from_millis(timeout_ms));
        let shared = self.shared.clone();
        Reply::Later(Box::pin(async move {
            let mut rx = rx;
            loop {
                let timed_out = match deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline, &mut rx).await.is_err(),
                    None => {
                        let _ = (&mut rx).await;
                        false
                    }
                };
                let mut state = shared.lock();
                if !state.connected.contains(&client) {
                    return not_found();
                }
                match state.store.get(&id, client) {
                    Ok(Some(info)) => return found(info),
                    Err(e) => return store_error(e),
                    Ok(None) => {}
                }
                // Woken but still not gettable (sealed then deleted at once), or timed out.
                if timed_out || deadline.is_some_and(|d| Instant::now() >= d) {
                    // Our own sender counts as closed only once our receiver is gone.
                    drop(rx);
                    if let Some(list) = state.waiters.get_mut(&id) {
                        list.retain(|(_, tx)| !tx.is_closed());
                        if list.is_empty() {
                            state.waiters.remove(&id);
                        }
                    }
                    return not_found();
                }
                rx = wait_for_seal(&mut state, id, client);
            }
        }))
    }

    fn delete(&self, ids: &[impl AsRef<[u8]>]) -> Body {
        let mut parsed = Vec::with_capacity(ids.len());
        for id in ids {
            match parse_id(id.as_ref()) {
                Ok(id) => parsed.push(id),
                Err(e) => return bad_id(e),
            }
        }
        let mut state = self.shared.lock();
        for id in &parsed {
            state.store.delete(id);
        }
        PlasmaReply::Ack(Ack {}).into()
    }
}

fn wait_for_seal(state: &mut State, id: ObjectId, client: ClientId) -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    state.waiters.entry(id).or_default().push((client, tx));
    rx
}

impl Service for PlasmaService {
    const NAME: &'static str = "the plasma store";
    type Request = PlasmaRequest;
    type State = ClientId;

    fn connected(&self) -> ClientId {
        let client = ClientId(self.shared.next_client.fetch_add(1, Ordering::Relaxed));
        self.shared.lock().connected.insert(client);
        client
    }

    fn handle(&self, client: &mut ClientId, request: PlasmaRequest) -> Reply {
        let client = *client;
        match request {
            PlasmaRequest::PlasmaCreate(req) => Reply::Now(self.create(client, &req)),
            PlasmaRequest::PlasmaSeal(req) => Reply::Now(self.seal(&req.id)),
            PlasmaRequest::PlasmaGet(req) => self.get(client, &req.id, req.timeout_ms),
            PlasmaRequest::PlasmaRelease(req) => {
                if let Ok(id) = ObjectId::from_bytes(&req.id) {
                    self.shared.lock().store.release(&id, client);
                }
                Reply::None
            }
            PlasmaRequest::PlasmaDelete(req) => Reply::Now(self.delete(&req.ids)),
            PlasmaRequest::PlasmaListSpilled(_) => {
                let ids = self.shared.lock().store.spilled_ids().iter().map(|id| id.to_vec().into()).collect();
                Reply::Now(PlasmaReply::PlasmaListSpilledReply(PlasmaListSpilledReply { ids }).into())
            }
        }
    }

    fn disconnected(&self, client: ClientId) {
        let mut state = self.shared.lock();
        state.connected.remove(&client);
        // Dropping the senders wakes this client's waiting gets, which then see it is gone.
        state.waiters.retain(|_, list| {
            list.retain(|(c, _)| *c != client);
            !list.is_empty()
        });
        state.store.disconnect(client);
    }
}

fn parse_id(bytes: &[u8]) -> Result<ObjectId, IdError> {
    ObjectId::from_bytes(bytes)
}

fn bad_id(e: IdError) -> Body {
    error_body(ErrorCode::Invalid, format!("bad object id: {e}"))
}

fn found(info: ObjectInfo) -> Body {
    PlasmaReply::PlasmaGetReply(PlasmaGetReply {
        found: true,
        offset: info.offset,
        size: info.size,
        metadata: info.metadata,
    })
    .into()
}

fn not_found() -> Body {
    PlasmaReply::PlasmaGetReply(PlasmaGetReply { found: false, offset: 0, size: 0, metadata: 0 }).into()
}

fn store_error(e: StoreError) -> Body {
    let code = match &e {
        StoreError::Full(_) => ErrorCode::StoreFull,
        StoreError::NotFound(_) => ErrorCode::NotFound,
        StoreError::AlreadyExists(_) => ErrorCode::AlreadyExists,
        StoreError::AlreadySealed(_) => ErrorCode::Invalid,
        StoreError::Restore { .. } => ErrorCode::Internal,
    };
    error_body(code, e.to_string())
}
