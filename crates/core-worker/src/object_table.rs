//! The objects this process knows about: their values (or that they are pending) and
//! who still needs them.
//!
//! Ownership follows Ray: the process that creates an object (by submitting the task
//! that returns it, or by `put`) owns it and decides when it can be freed. An owned
//! object is needed while Python holds an `ObjectRef` to it (`local_refs`), while a
//! pending task takes it as an argument (`task_refs`), while an object that is alive
//! here has it inside its value (`contained_in`), and while other processes borrow it
//! (`borrowers`, kept by the borrower protocol in `borrowing.rs`). A ref pickled outside
//! rtd's own serialization (`pickle.dumps(ref)`) marks the object `escaped`: nobody can
//! tell when that copy is done, so, as in Ray, the object then lives as long as its owner.
//!
//! Objects owned elsewhere are borrowed: their entries cache the value after the first
//! fetch from the owner and count how many times the owner registered this process as a
//! borrower (`registrations`), which the last local use gives back.
//!
//! Python threads block on `ready` (a condition variable); tokio tasks subscribe to a
//! single object with a oneshot channel.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use rtd_common::proto::{object_value::Kind, ObjectRefInfo, ObjectValue};
use rtd_common::ObjectId;
use tokio::sync::oneshot;

struct Entry {
    value: Option<ObjectValue>,
    owned: bool,
    owner: String,
    local_refs: u32,
    task_refs: u32,
    escaped: bool,
    /// Objects alive here whose values hold a ref to this one.
    contained_in: u32,
    /// The refs this object's value holds (kept alive while it lives here).
    contains: Vec<(ObjectId, String)>,
    /// Owner side: borrowing processes and how many registrations each has.
    borrowers: HashMap<String, u32>,
    /// Borrower side: registrations the owner counts for this process.
    registrations: u32,
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
            contained_in: 0,
            contains: Vec::new(),
            borrowers: HashMap::new(),
            registrations: 0,
            fetching: false,
            ready_seq: 0,
            waiters: Vec::new(),
        }
    }

    fn unreferenced(&self) -> bool {
        self.local_refs == 0
            && self.task_refs == 0
            && self.contained_in == 0
            && !self.escaped
            && self.borrowers.is_empty()
    }
}

/// An object that nobody here references any more. The caller frees its plasma copy
/// (owned), gives its registrations back to the owner (borrowed), and releases the refs
/// its value contained.
pub struct Freed {
    pub id: ObjectId,
    pub value: Option<ObjectValue>,
    pub owned: bool,
    pub owner: String,
    pub registrations: u32,
    pub contains: Vec<(ObjectId, String)>,
}

/// A borrowed object this process must now register for with its owner.
pub struct NewBorrow {
    pub id: ObjectId,
    pub owner: String,
}

/// One object's counts, for `get_all_reference_counts` (debugging and tests).
#[derive(Debug, Clone, PartialEq)]
pub struct RefCounts {
    pub owned: bool,
    pub local_refs: u32,
    pub task_refs: u32,
    pub contained_in: u32,
    pub borrowers: Vec<(String, u32)>,
    pub escaped: bool,
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

    /// The entry for `id`, created if absent; a new entry for an object owned elsewhere
    /// is a new borrow, which the caller registers with the owner (counted here now, so
    /// that giving it back always follows it).
    fn entry<'a>(
        entries: &'a mut HashMap<ObjectId, Entry>,
        id: ObjectId,
        owner: &str,
        self_address: &str,
    ) -> (&'a mut Entry, Option<NewBorrow>) {
        let mut borrow = None;
        let entry = entries.entry(id).or_insert_with(|| {
            let owned = owner == self_address;
            let mut entry = Entry::new(owned, owner);
            if !owned {
                entry.registrations = 1;
                borrow = Some(NewBorrow { id, owner: owner.to_string() });
            }
            entry
        });
        (entry, borrow)
    }

    /// A Python `ObjectRef` was created for `id` (owned by `owner`).
    pub fn add_local_ref(&self, id: ObjectId, owner: &str, self_address: &str) -> Option<NewBorrow> {
        let mut entries = self.entries.lock();
        let (entry, borrow) = Self::entry(&mut entries, id, owner, self_address);
        entry.local_refs += 1;
        borrow
    }

    /// A Python `ObjectRef` was dropped. Returns the entry if nothing needs it now.
    pub fn remove_local_ref(&self, id: &ObjectId) -> Option<Freed> {
        let mut entries = self.entries.lock();
        let entry = entries.get_mut(id)?;
        entry.local_refs = entry.local_refs.saturating_sub(1);
        Self::take_if_unreferenced(&mut entries, id)
    }

    pub fn add_task_ref(&self, id: ObjectId, owner: &str, self_address: &str) -> Option<NewBorrow> {
        let mut entries = self.entries.lock();
        let (entry, borrow) = Self::entry(&mut entries, id, owner, self_address);
        entry.task_refs += 1;
        borrow
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

    /// Records the refs inside `outer`'s value (a `put`, or a task result). With
    /// `registered_for_us`, the process that made the value registered this one as a
    /// borrower of each ref it does not own (a task result): those registrations become
    /// ours, and for refs we own, the registration under our own address turns into
    /// the hold. Refs to owned objects that are gone already are skipped (lost).
    /// Returns what the replaced contents (or, if `outer` is gone, the new ones) free.
    pub fn add_contained(
        &self,
        outer: ObjectId,
        inner: Vec<(ObjectId, String)>,
        self_address: &str,
        registered_for_us: bool,
    ) -> Vec<Freed> {
        let mut entries = self.entries.lock();
        let held = Self::hold_contained(&mut entries, inner, self_address, registered_for_us);
        let released = match entries.get_mut(&outer) {
            Some(entry) => std::mem::replace(&mut entry.contains, held),
            None => held,
        };
        Self::release_contained_locked(&mut entries, released)
    }

    /// A task result carrying these refs will not be stored (its task was already
    /// given up): give back the registrations its worker made for us.
    pub fn disown_contained(&self, inner: Vec<(ObjectId, String)>, self_address: &str) -> Vec<Freed> {
        let mut entries = self.entries.lock();
        let held = Self::hold_contained(&mut entries, inner, self_address, true);
        Self::release_contained_locked(&mut entries, held)
    }

    fn hold_contained(
        entries: &mut HashMap<ObjectId, Entry>,
        inner: Vec<(ObjectId, String)>,
        self_address: &str,
        registered_for_us: bool,
    ) -> Vec<(ObjectId, String)> {
        let mut held = Vec::with_capacity(inner.len());
        for (id, owner) in inner {
            let owned = owner == self_address;
            let entry = match entries.get_mut(&id) {
                Some(entry) => entry,
                None if owned => continue,
                None => entries.entry(id).or_insert_with(|| Entry::new(false, &owner)),
            };
            entry.contained_in += 1;
            if registered_for_us {
                if owned {
                    Self::drop_registrations(entry, self_address, 1);
                } else {
                    entry.registrations += 1;
                }
            }
            held.push((id, owner));
        }
        held
    }

    /// `outer` (which contained these refs) is gone: release its holds.
    pub fn release_contained(&self, inner: Vec<(ObjectId, String)>) -> Vec<Freed> {
        Self::release_contained_locked(&mut self.entries.lock(), inner)
    }

    fn release_contained_locked(entries: &mut HashMap<ObjectId, Entry>, inner: Vec<(ObjectId, String)>) -> Vec<Freed> {
        let mut freed = Vec::new();
        for (id, _) in inner {
            if let Some(entry) = entries.get_mut(&id) {
                entry.contained_in = entry.contained_in.saturating_sub(1);
                freed.extend(Self::take_if_unreferenced(entries, &id));
            }
        }
        freed
    }

    /// Borrower side: the owner did not count a registration of ours.
    pub fn registration_refused(&self, id: &ObjectId) {
        if let Some(entry) = self.entries.lock().get_mut(id) {
            if !entry.owned {
                entry.registrations = entry.registrations.saturating_sub(1);
            }
        }
    }

    /// Owner side: `borrower` holds a ref to `id`. False if the object is not owned
    /// here (any more).
    pub fn add_borrower(&self, id: &ObjectId, borrower: &str) -> bool {
        match self.entries.lock().get_mut(id) {
            Some(entry) if entry.owned => {
                *entry.borrowers.entry(borrower.to_string()).or_insert(0) += 1;
                true
            }
            _ => false,
        }
    }

    /// Owner side: `borrower` gave back `count` registrations.
    pub fn remove_borrower(&self, id: &ObjectId, borrower: &str, count: u32) -> Option<Freed> {
        let mut entries = self.entries.lock();
        Self::drop_registrations(entries.get_mut(id)?, borrower, count);
        Self::take_if_unreferenced(&mut entries, id)
    }

    /// Owner side: `borrower` has exited; it holds nothing any more.
    pub fn remove_borrower_everywhere(&self, borrower: &str) -> Vec<Freed> {
        let mut entries = self.entries.lock();
        let ids: Vec<ObjectId> =
            entries.iter_mut().filter_map(|(id, e)| e.borrowers.remove(borrower).map(|_| *id)).collect();
        ids.iter().filter_map(|id| Self::take_if_unreferenced(&mut entries, id)).collect()
    }

    fn drop_registrations(entry: &mut Entry, borrower: &str, count: u32) {
        if let Some(n) = entry.borrowers.get_mut(borrower) {
            *n = n.saturating_sub(count);
            if *n == 0 {
                entry.borrowers.remove(borrower);
            }
        }
    }

    fn take_if_unreferenced(entries: &mut HashMap<ObjectId, Entry>, id: &ObjectId) -> Option<Freed> {
        if !entries.get(id)?.unreferenced() {
            return None;
        }
        let entry = entries.remove(id)?;
        Some(Freed {
            id: *id,
            value: entry.value,
            owned: entry.owned,
            owner: entry.owner,
            registrations: entry.registrations,
            contains: entry.contains,
        })
    }

    /// Every object's counts (debugging and tests).
    /// Every object referenced here, with Ray's reference type (the first that applies
    /// of: a Python ref, a pending task's argument, inside another object, borrowed by
    /// another process, pinned because a ref escaped), for the state API.
    pub fn describe(&self) -> Vec<ObjectRefInfo> {
        self.entries
            .lock()
            .iter()
            .map(|(id, e)| {
                let reference_type = if e.local_refs > 0 {
                    "LOCAL_REFERENCE"
                } else if e.task_refs > 0 {
                    "USED_BY_PENDING_TASK"
                } else if e.contained_in > 0 {
                    "CAPTURED_IN_OBJECT"
                } else if !e.borrowers.is_empty() {
                    "BORROWED"
                } else {
                    "PINNED_IN_MEMORY"
                };
                let (size, node_id) = match e.value.as_ref().and_then(|v| v.kind.as_ref()) {
                    Some(Kind::Inline(inline)) => (inline.data.len() as u64, Default::default()),
                    Some(Kind::Plasma(plasma)) => (plasma.size, plasma.node_id.clone()),
                    None => (0, Default::default()),
                };
                ObjectRefInfo {
                    object_id: id.to_vec().into(),
                    owner: e.owner.clone(),
                    owned: e.owned,
                    ready: e.value.is_some(),
                    size,
                    node_id,
                    reference_type: reference_type.into(),
                    local_refs: e.local_refs,
                    task_refs: e.task_refs,
                    contained_in: e.contained_in,
                    borrowers: e.borrowers.len() as u32,
                }
            })
            .collect()
    }

    pub fn reference_counts(&self) -> Vec<(ObjectId, RefCounts)> {
        self.entries
            .lock()
            .iter()
            .map(|(id, e)| {
                let mut borrowers: Vec<(String, u32)> = e.borrowers.iter().map(|(b, n)| (b.clone(), *n)).collect();
                borrowers.sort();
                let counts = RefCounts {
                    owned: e.owned,
                    local_refs: e.local_refs,
                    task_refs: e.task_refs,
                    contained_in: e.contained_in,
                    borrowers,
                    escaped: e.escaped,
                };
                (*id, counts)
            })
            .collect()
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

    /// A borrowed object's cached value turned out lost: forget it and claim a new
    /// fetch from the owner (returned), unless one is under way.
    pub fn refetch(&self, id: &ObjectId) -> Option<String> {
        let mut entries = self.entries.lock();
        let e = entries.get_mut(id)?;
        if e.owned || e.fetching {
            return None;
        }
        e.value = None;
        e.fetching = true;
        Some(e.owner.clone())
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
        self.entries.lock().get(id).and_then(|e| e.value.as_ref().map(|_| e.ready_seq))
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

    /// How many objects the table tracks (the tests check that none leak).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    #[cfg(test)]
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
    fn describe_names_why_each_object_is_held() {
        let t = ObjectTable::new();
        let (held, argument, pending) = (ObjectId::random(), ObjectId::random(), ObjectId::random());
        t.add_owned_ready(held, "me", inline(b"abc"));
        t.add_local_ref(held, "me", "me");
        t.add_owned_ready(argument, "me", inline(b"x"));
        t.add_task_ref(argument, "me", "me");
        t.add_owned_pending(pending, "me");
        t.add_local_ref(pending, "me", "me");
        let rows = t.describe();
        let row = |id: &ObjectId| rows.iter().find(|r| r.object_id.as_ref() == id.as_bytes()).unwrap();
        assert_eq!((row(&held).reference_type.as_str(), row(&held).size), ("LOCAL_REFERENCE", 3));
        assert_eq!(row(&argument).reference_type, "USED_BY_PENDING_TASK");
        assert!(!row(&pending).ready && row(&pending).owned);
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

    #[test]
    fn first_ref_to_a_borrowed_object_is_a_new_borrow_given_back_with_the_last() {
        let t = ObjectTable::new();
        let id = ObjectId::random();
        let borrow = t.add_local_ref(id, "owner", "me").expect("new borrow");
        assert_eq!((borrow.id, borrow.owner.as_str()), (id, "owner"));
        assert!(t.add_local_ref(id, "owner", "me").is_none());
        assert!(t.add_task_ref(id, "owner", "me").is_none());
        assert!(t.remove_local_ref(&id).is_none());
        assert!(t.remove_local_ref(&id).is_none());
        let freed = t.remove_task_ref(&id).expect("freed");
        assert!(!freed.owned);
        assert_eq!((freed.owner.as_str(), freed.registrations), ("owner", 1));
    }

    #[test]
    fn owned_object_lives_while_borrowers_are_registered() {
        let t = ObjectTable::new();
        let id = ObjectId::random();
        t.add_owned_ready(id, "me", inline(b"x"));
        t.add_local_ref(id, "me", "me");
        assert!(t.add_borrower(&id, "a"));
        assert!(t.add_borrower(&id, "a"));
        assert!(t.add_borrower(&id, "b"));
        assert!(t.remove_local_ref(&id).is_none());
        assert!(t.remove_borrower(&id, "a", 2).is_none());
        assert!(t.remove_borrower_everywhere("a").is_empty());
        let freed = t.remove_borrower_everywhere("b");
        assert_eq!(freed.len(), 1);
        assert!(!t.add_borrower(&id, "a"), "a freed object takes no borrowers");
    }

    #[test]
    fn borrower_registration_is_refused_for_objects_owned_elsewhere() {
        let t = ObjectTable::new();
        let id = ObjectId::random();
        t.add_local_ref(id, "owner", "me");
        assert!(!t.add_borrower(&id, "a"));
    }

    #[test]
    fn put_value_holds_its_contained_refs_until_it_is_freed() {
        let t = ObjectTable::new();
        let (outer, owned_inner, borrowed_inner) = (ObjectId::random(), ObjectId::random(), ObjectId::random());
        t.add_owned_ready(owned_inner, "me", inline(b"i"));
        t.add_local_ref(owned_inner, "me", "me");
        t.add_local_ref(borrowed_inner, "owner", "me");
        t.add_owned_ready(outer, "me", inline(b"o"));
        t.add_local_ref(outer, "me", "me");
        let contained = vec![(owned_inner, "me".to_string()), (borrowed_inner, "owner".to_string())];
        assert!(t.add_contained(outer, contained, "me", false).is_empty());
        assert!(t.remove_local_ref(&owned_inner).is_none());
        assert!(t.remove_local_ref(&borrowed_inner).is_none());
        let freed_outer = t.remove_local_ref(&outer).expect("outer freed");
        assert_eq!(freed_outer.contains.len(), 2);
        let freed = t.release_contained(freed_outer.contains);
        assert_eq!(freed.len(), 2);
        let borrowed = freed.iter().find(|f| f.id == borrowed_inner).expect("borrowed freed");
        assert_eq!(borrowed.registrations, 1);
        assert!(t.is_empty());
    }

    #[test]
    fn task_result_takes_over_the_registrations_made_for_us() {
        let t = ObjectTable::new();
        let (outer, mine, theirs, gone) =
            (ObjectId::random(), ObjectId::random(), ObjectId::random(), ObjectId::random());
        t.add_owned_pending(outer, "me");
        t.add_local_ref(outer, "me", "me");
        // The worker registered us as a borrower of `mine` with ourselves.
        t.add_owned_ready(mine, "me", inline(b"m"));
        assert!(t.add_borrower(&mine, "me"));
        let contained = vec![(mine, "me".to_string()), (theirs, "owner".to_string()), (gone, "me".to_string())];
        assert!(t.add_contained(outer, contained, "me", true).is_empty());
        let counts: HashMap<ObjectId, RefCounts> = t.reference_counts().into_iter().collect();
        assert!(counts[&mine].borrowers.is_empty(), "the registration became the hold");
        assert_eq!(counts[&mine].contained_in, 1);
        assert!(!counts.contains_key(&gone), "an owned object that is gone stays gone");
        let freed_outer = t.remove_local_ref(&outer).expect("outer freed");
        let freed = t.release_contained(freed_outer.contains);
        let theirs_freed = freed.iter().find(|f| f.id == theirs).expect("borrow given back");
        assert_eq!(theirs_freed.registrations, 1);
        assert!(t.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        AddLocal,
        RemoveLocal,
        AddTask,
        RemoveTask,
        AddBorrower(u8),
        RemoveBorrower(u8, u32),
        BorrowerExits(u8),
        PutOuter,
        DropOuter(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Op::AddLocal),
            Just(Op::RemoveLocal),
            Just(Op::AddTask),
            Just(Op::RemoveTask),
            (0u8..3).prop_map(Op::AddBorrower),
            ((0u8..3), (1u32..3)).prop_map(|(b, n)| Op::RemoveBorrower(b, n)),
            (0u8..3).prop_map(Op::BorrowerExits),
            Just(Op::PutOuter),
            (0usize..4).prop_map(Op::DropOuter),
        ]
    }

    proptest::proptest! {
        /// An owned object is freed exactly when its last holder (local ref, pending
        /// task, containing object, borrower) lets go, and never comes back.
        #[test]
        fn object_is_freed_exactly_when_the_last_holder_lets_go(ops in proptest::collection::vec(op(), 1..60)) {
            let t = ObjectTable::new();
            let id = ObjectId::random();
            t.add_owned_ready(id, "me", inline(b"x"));
            t.add_local_ref(id, "me", "me");
            let (mut local, mut task) = (1u32, 0u32);
            let mut borrowers = [0u32; 3];
            let mut outers: Vec<ObjectId> = Vec::new();
            let mut freed_at_least_once = false;
            for op in ops {
                if freed_at_least_once {
                    break;
                }
                let mut freed = Vec::new();
                match op {
                    Op::AddLocal => { t.add_local_ref(id, "me", "me"); local += 1; }
                    Op::RemoveLocal if local > 0 => { freed.extend(t.remove_local_ref(&id)); local -= 1; }
                    Op::AddTask => { t.add_task_ref(id, "me", "me"); task += 1; }
                    Op::RemoveTask if task > 0 => { freed.extend(t.remove_task_ref(&id)); task -= 1; }
                    Op::AddBorrower(b) => {
                        let added = t.add_borrower(&id, &format!("b{b}"));
                        proptest::prop_assert!(added);
                        borrowers[b as usize] += 1;
                    }
                    Op::RemoveBorrower(b, n) if borrowers[b as usize] > 0 => {
                        let n = n.min(borrowers[b as usize]);
                        freed.extend(t.remove_borrower(&id, &format!("b{b}"), n));
                        borrowers[b as usize] -= n;
                    }
                    Op::BorrowerExits(b) => {
                        freed.extend(t.remove_borrower_everywhere(&format!("b{b}")));
                        borrowers[b as usize] = 0;
                    }
                    Op::PutOuter => {
                        let outer = ObjectId::random();
                        t.add_owned_ready(outer, "me", inline(b"o"));
                        t.add_local_ref(outer, "me", "me");
                        proptest::prop_assert!(t.add_contained(outer, vec![(id, "me".into())], "me", false).is_empty());
                        outers.push(outer);
                    }
                    Op::DropOuter(i) if !outers.is_empty() => {
                        let outer = outers.remove(i % outers.len());
                        let dropped = t.remove_local_ref(&outer);
                        proptest::prop_assert!(dropped.is_some());
                        if let Some(dropped) = dropped {
                            freed.extend(t.release_contained(dropped.contains));
                        }
                    }
                    _ => {}
                }
                let holders = local + task + borrowers.iter().sum::<u32>() + outers.len() as u32;
                let freed_now = freed.iter().any(|f| f.id == id);
                proptest::prop_assert_eq!(freed_now, holders == 0);
                proptest::prop_assert_eq!(t.contains(&id), holders > 0);
                freed_at_least_once = freed_now;
            }
        }
    }
}
