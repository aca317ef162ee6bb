//! The objects this process knows about: their values (or that they are pending) and
//! who still needs them.
//!
//! Ownership follows Ray: the process that creates an object (by submitting the task
//! that returns it, or by `put`) owns it and decides when it can be freed. An owned
//! object is needed while Python holds an `ObjectRef` to it (`local_refs`), while a
//! pending task takes it as an argument (`task_refs`), or once a ref to it has left the
//! process inside a pickled value (`escaped`): without a borrower protocol we cannot
//! know when the borrower is done, so an escaped object lives as long as its owner.
//!
//! Objects owned elsewhere are cached here after their first fetch from the owner and
//! dropped from the cache with the last local ref.
//!
//! Python threads block on `ready` (a condition variable); tokio tasks subscribe to a
//! single object with a oneshot channel.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use rtd_common::proto::ObjectValue;
use rtd_common::ObjectId;
use tokio::sync::oneshot;

struct Entry {
    value: Option<ObjectValue>,
    owned: bool,
    owner: String,
    local_refs: u32,
    task_refs: u32,
    escaped: bool,
    /// A fetch from the owner is under way.
    fetching: bool,
    /// Order in which values arrived, for `wait`'s completion order.
    ready_seq: u64,
    waiters: Vec<oneshot::Sender<ObjectValue>>,
}

impl Entry {
    fn new(owned: bool, owner: &str) -> Self {
        Self {
            value: None,
            owned,
            owner: owner.to_string(),
            local_refs: 0,
            task_refs: 0,
            escaped: false,
            fetching: false,
            ready_seq: 0,
            waiters: Vec::new(),
        }
    }

    fn unreferenced(&self) -> bool {
        self.local_refs == 0 && self.task_refs == 0 && !self.escaped
    }
}

/// An object that nobody references any more; the caller frees its plasma copy.
pub struct Freed {
    pub id: ObjectId,
    pub value: Option<ObjectValue>,
    pub owned: bool,
}

/// What `poll` found for each requested id.
pub enum Lookup {
    Ready(ObjectValue),
    /// Not ready; the caller must fetch it from this owner.
    FetchFrom(String),
    Pending,
    /// Unknown here and owned by us: it was freed or never existed.
    Missing,
}

#[derive(Default)]
pub struct ObjectTable {
    entries: Mutex<HashMap<ObjectId, Entry>>,
    ready: Condvar,
    seq: std::sync::atomic::AtomicU64,
}

impl ObjectTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an object this process owns and will produce (a task return).
    pub fn add_owned_pending(&self, id: ObjectId, owner: &str) {
        self.entries.lock().entry(id).or_insert_with(|| Entry::new(true, owner));
    }

    /// Registers an owned object whose value is already known (`put`).
    pub fn add_owned_ready(&self, id: ObjectId, owner: &str, value: ObjectValue) {
        let mut entries = self.entries.lock();
        let entry = entries.entry(id).or_insert_with(|| Entry::new(true, owner));
        entry.value = Some(value);
        entry.ready_seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// A Python `ObjectRef` was created for `id` (owned by `owner`).
    pub fn add_local_ref(&self, id: ObjectId, owner: &str, self_address: &str) {
        let mut entries = self.entries.lock();
        let entry = entries
            .entry(id)
            .or_insert_with(|| Entry::new(owner == self_address, owner));
        entry.local_refs += 1;
    }

    /// A Python `ObjectRef` was dropped. Returns the entry if nothing needs it now.
    pub fn remove_local_ref(&self, id: &ObjectId) -> Option<Freed> {
        let mut entries = self.entries.lock();
        let entry = entries.get_mut(id)?;
        entry.local_refs = entry.local_refs.saturating_sub(1);
        Self::take_if_unreferenced(&mut entries, id)
    }

    pub fn add_task_ref(&self, id: ObjectId, owner: &str, self_address: &str) {
        let mut entries = self.entries.lock();
        let entry = entries
            .entry(id)
            .or_insert_with(|| Entry::new(owner == self_address, owner));
        entry.task_refs += 1;
    }

    pub fn remove_task_ref(&self, id: &ObjectId) -> Option<Freed> {
        let mut entries = self.entries.lock();
        let entry = entries.get_mut(id)?;
        entry.task_refs = entry.task_refs.saturating_sub(1);
        Self::take_if_unreferenced(&mut entries, id)
    }

    /// A ref to `id` was pickled: some other process may hold it from now on.
    pub fn mark_escaped(&self, id: &ObjectId) {
        if let Some(entry) = self.entries.lock().get_mut(id) {
            entry.escaped = true;
        }
    }

    fn take_if_unreferenced(entries: &mut HashMap<ObjectId, Entry>, id: &ObjectId) -> Option<Freed> {
        if !entries.get(id)?.unreferenced() {
            return None;
        }
        let entry = entries.remove(id)?;
        Some(Freed { id: *id, value: entry.value, owned: entry.owned })
    }

    /// Records a value. Returns false when nobody references the object any more, in
    /// which case the caller should free what the value points to.
    pub fn set_value(&self, id: ObjectId, value: ObjectValue) -> bool {
        let mut entries = self.entries.lock();
        let Some(entry) = entries.get_mut(&id) else {
            return false;
        };
        for waiter in entry.waiters.drain(..) {
            let _ = waiter.send(value.clone());
        }
        entry.fetching = false;
        entry.ready_seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        entry.value = Some(value);
        drop(entries);
        self.ready.notify_all();
        true
    }

    /// The value is gone and will be produced again (lineage reconstruction).
    pub fn reset_pending(&self, id: &ObjectId) {
        if let Some(entry) = self.entries.lock().get_mut(id) {
            entry.value = None;
        }
    }

    pub fn get_value(&self, id: &ObjectId) -> Option<ObjectValue> {
        self.entries.lock().get(id).and_then(|e| e.value.clone())
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.entries.lock().contains_key(id)
    }

    pub fn is_owned(&self, id: &ObjectId) -> bool {
        self.entries.lock().get(id).map(|e| e.owned).unwrap_or(false)
    }

    /// Looks up `id`, claiming the fetch from a remote owner when one is needed (only
    /// one caller gets `FetchFrom` per fetch).
    pub fn poll(&self, id: &ObjectId) -> Lookup {
        let mut entries = self.entries.lock();
        match entries.get_mut(id) {
            None => Lookup::Missing,
            Some(e) => match &e.value {
                Some(v) => Lookup::Ready(v.clone()),
                None if e.owned || e.fetching => Lookup::Pending,
                None => {
                    e.fetching = true;
                    Lookup::FetchFrom(e.owner.clone())
                }
            },
        }
    }

    /// Forget that a fetch was started (it failed), so another can be tried.
    pub fn fetch_failed(&self, id: &ObjectId) {
        if let Some(e) = self.entries.lock().get_mut(id) {
            e.fetching = false;
        }
    }

    /// A future for the value; `None` if the object is unknown here.
    pub fn subscribe(&self, id: &ObjectId) -> Option<oneshot::Receiver<ObjectValue>> {
        let mut entries = self.entries.lock();
        let entry = entries.get_mut(id)?;
        let (tx, rx) = oneshot::channel();
        match &entry.value {
            Some(v) => {
                let _ = tx.send(v.clone());
            }
            None => entry.waiters.push(tx),
        }
        Some(rx)
    }

    pub fn ready_seq(&self, id: &ObjectId) -> Option<u64> {
        self.entries
            .lock()
            .get(id)
            .and_then(|e| e.value.as_ref().map(|_| e.ready_seq))
    }

    /// Blocks the calling (non-async) thread until some object changes or `until`.
    pub fn wait_for_change(&self, until: Instant) {
        let mut entries = self.entries.lock();
        let _ = self.ready.wait_until(&mut entries, until);
    }

    /// Wakes threads blocked in `wait_for_change` (e.g. at shutdown).
    pub fn notify_all(&self) {
        self.ready.notify_all();
    }

    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtd_common::proto::{object_value::Kind, InlineObject};

    fn inline(b: &[u8]) -> ObjectValue {
        ObjectValue { kind: Some(Kind::Inline(InlineObject { metadata: 0, data: b.to_vec().into() })) }
    }

    #[test]
    fn owned_object_is_freed_with_last_ref() {
        let t = ObjectTable::new();
        let id = ObjectId::random();
        t.add_owned_ready(id, "me", inline(b"x"));
        t.add_local_ref(id, "me", "me");
        t.add_local_ref(id, "me", "me");
        assert!(t.remove_local_ref(&id).is_none());
        let freed = t.remove_local_ref(&id).expect("freed");
        assert!(freed.owned);
        assert!(t.is_empty());
    }

    #[test]
    fn pending_task_keeps_argument_alive() {
        let t = ObjectTable::new();
        let id = ObjectId::random();
        t.add_owned_ready(id, "me", inline(b"x"));
        t.add_local_ref(id, "me", "me");
        t.add_task_ref(id, "me", "me");
        assert!(t.remove_local_ref(&id).is_none());
        assert!(t.remove_task_ref(&id).is_some());
    }

    #[test]
    fn escaped_object_is_never_freed() {
        let t = ObjectTable::new();
        let id = ObjectId::random();
        t.add_owned_ready(id, "me", inline(b"x"));
        t.add_local_ref(id, "me", "me");
        t.mark_escaped(&id);
        assert!(t.remove_local_ref(&id).is_none());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn borrowed_object_is_fetched_once() {
        let t = ObjectTable::new();
        let id = ObjectId::random();
        t.add_local_ref(id, "owner", "me");
        assert!(matches!(t.poll(&id), Lookup::FetchFrom(o) if o == "owner"));
        assert!(matches!(t.poll(&id), Lookup::Pending));
        let rx = t.subscribe(&id).expect("known");
        assert!(t.set_value(id, inline(b"v")));
        assert!(rx.blocking_recv().is_ok());
        assert!(matches!(t.poll(&id), Lookup::Ready(_)));
    }
}
