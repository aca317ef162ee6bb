//! The borrower protocol: how an owner learns which other processes hold refs to its
//! objects, so that it frees an object only when nobody anywhere still needs it.
//!
//! A process that unpickles a ref it does not own registers with the owner
//! (`AddBorrower`) and, when its last use of the ref ends, gives its registrations back
//! (`RemoveBorrower` with a count). Refs travel inside task arguments (the submitter
//! keeps them alive until the task is done, and the worker registers before it replies),
//! inside `put` values and task results (the object holds them while it lives; a worker
//! registers the submitter as borrower before it replies with the result). An owner
//! watches each borrower's connection and drops the registrations of one that exits.
//!
//! Messages from one process to one owner go through one queue and one connection, so an
//! owner always sees a registration before the removal that gives it back.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rtd_common::proto::{AddBorrower, RemoveBorrower};
use rtd_common::rpc::ConnectionCache;
use rtd_common::ObjectId;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::object_table::NewBorrow;

/// How long to wait for owners to confirm borrower registrations; an owner that does
/// not answer by then is gone or stuck, and its objects will be reported lost.
pub(crate) const BORROW_CONFIRM_LIMIT: Duration = Duration::from_secs(30);

enum Message {
    Add { id: ObjectId, borrower: String, done: oneshot::Sender<bool> },
    Remove { id: ObjectId, borrower: String, count: u32 },
}

type Links = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Message>>>>;

/// Registrations of this process, numbered in the order they were sent; those not yet
/// confirmed by their owners.
#[derive(Default)]
struct Registrations {
    next: u64,
    unconfirmed: BTreeSet<u64>,
}

/// Borrower side: one ordered queue per owner, and the registrations not yet confirmed.
pub struct BorrowLinks {
    rt: tokio::runtime::Handle,
    peers: Arc<ConnectionCache>,
    links: Links,
    registrations: Arc<Mutex<Registrations>>,
    confirmed: Arc<Notify>,
}

impl BorrowLinks {
    pub fn new(rt: tokio::runtime::Handle, peers: Arc<ConnectionCache>) -> Self {
        Self { rt, peers, links: Default::default(), registrations: Default::default(), confirmed: Default::default() }
    }

    /// Asks `owner` to count `borrower` as holding `id`; the receiver says if it did
    /// (false when the object is gone or the owner cannot be reached).
    pub fn add(&self, id: ObjectId, owner: &str, borrower: &str) -> oneshot::Receiver<bool> {
        let (done, rx) = oneshot::channel();
        self.send(owner, Message::Add { id, borrower: borrower.to_string(), done });
        rx
    }

    /// Registers this process (`self_address`) as a borrower; `flush` waits for it.
    /// `refused` runs if the owner did not count it (gone, or unreachable).
    pub fn register(&self, borrow: NewBorrow, self_address: &str, refused: impl FnOnce() + Send + 'static) {
        let seq = {
            let mut r = self.registrations.lock();
            r.next += 1;
            let seq = r.next;
            r.unconfirmed.insert(seq);
            seq
        };
        let rx = self.add(borrow.id, &borrow.owner, self_address);
        let (registrations, confirmed) = (self.registrations.clone(), self.confirmed.clone());
        self.rt.spawn(async move {
            if !rx.await.unwrap_or(false) {
                refused();
            }
            registrations.lock().unconfirmed.remove(&seq);
            confirmed.notify_waiters();
        });
    }

    pub fn remove(&self, id: ObjectId, owner: &str, borrower: &str, count: u32) {
        self.send(owner, Message::Remove { id, borrower: borrower.to_string(), count });
    }

    pub fn has_unconfirmed(&self) -> bool {
        !self.registrations.lock().unconfirmed.is_empty()
    }

    /// Waits until the owners have counted every registration sent so far, by any
    /// thread (or `limit`). Called from threads outside the runtime.
    pub fn flush(&self, limit: Duration) {
        let upto = self.registrations.lock().next;
        let waiting = || self.registrations.lock().unconfirmed.first().is_some_and(|first| *first <= upto);
        if !waiting() {
            return;
        }
        self.rt.block_on(async {
            let deadline = tokio::time::Instant::now() + limit;
            loop {
                let notified = self.confirmed.notified();
                tokio::pin!(notified);
                // Registered before looking, so a confirmation in between still wakes us.
                notified.as_mut().enable();
                if !waiting() {
                    return;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return;
                }
            }
        });
    }

    fn send(&self, owner: &str, mut message: Message) {
        let mut links = self.links.lock();
        // A link whose connection closed has ended; the next message starts a new one.
        for _ in 0..2 {
            let tx = links.entry(owner.to_string()).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                self.rt.spawn(run_link(self.peers.clone(), self.links.clone(), owner.to_string(), tx.clone(), rx));
                tx
            });
            match tx.send(message) {
                Ok(()) => return,
                Err(mpsc::error::SendError(m)) => {
                    message = m;
                    links.remove(owner);
                }
            }
        }
    }
}

/// Sends one owner's messages in order on one connection, until it closes.
async fn run_link(
    peers: Arc<ConnectionCache>,
    links: Links,
    owner: String,
    me: mpsc::UnboundedSender<Message>,
    mut rx: mpsc::UnboundedReceiver<Message>,
) {
    // Without a connection the owner is gone (and its objects with it): the link ends,
    // answering what is queued, and the next message tries a new connection.
    if let Ok(client) = peers.get(&owner).await {
        loop {
            let message = tokio::select! {
                m = rx.recv() => m,
                _ = client.closed() => None,
            };
            match message {
                Some(Message::Add { id, borrower, done }) => {
                    let reply = client.start_request(AddBorrower { id: id.to_vec().into(), borrower });
                    tokio::spawn(async move {
                        let _ = done.send(reply.await.is_ok());
                    });
                }
                Some(Message::Remove { id, borrower, count }) => {
                    let _ = client.send(RemoveBorrower { id: id.to_vec().into(), borrower, count });
                }
                None => break,
            }
        }
    }
    let mut links = links.lock();
    if links.get(&owner).is_some_and(|tx| tx.same_channel(&me)) {
        links.remove(&owner);
    }
    drop(links);
    rx.close();
    while let Ok(message) = rx.try_recv() {
        if let Message::Add { done, .. } = message {
            let _ = done.send(false);
        }
    }
}
