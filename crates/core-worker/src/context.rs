//! What every part of a core worker shares: its identity, its connections (raylet,
//! plasma store, other core workers) and its object table, plus the object operations
//! built on them (storing values, freeing them, fetching borrowed ones from owners).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use rtd_common::config::RuntimeConfig;
use rtd_common::proto::{
    object_value::Kind, FreeObjects, GetObject, InlineObject, ObjectRefProto, ObjectValue, PlasmaObject, PushTaskReply,
    TaskSpec,
};
use rtd_common::rpc::{ConnectionCache, Request, RpcClient, RpcError};
use rtd_common::{object_kind, JobId, NodeId, ObjectId, WorkerId};
use rtd_plasma::{PlasmaClient, PlasmaError};

use crate::borrowing::BorrowLinks;
use crate::error::CoreError;
use crate::generator_stream::GeneratorStreams;
use crate::layout::Layout;
use crate::object_table::{Freed, Lookup, NewBorrow, ObjectTable};
use crate::task_events::TaskEventBuffer;
use crate::user_metrics::MetricBuffer;

/// How long a task result waits for a copy of the same object that is still being
/// written into the store (a pull in progress) to be sealed.
const EXISTING_OBJECT_WAIT_MS: u64 = 30_000;

/// How often a blocking call checks whether its caller was interrupted.
const INTERRUPT_POLL: Duration = Duration::from_millis(50);

/// Failed reconnections after which a borrower counts as exited.
const BORROWER_GONE_AFTER: u32 = 3;

pub type OutputSink = Box<dyn Fn(String, bool, tokio::sync::oneshot::Sender<()>) + Send + Sync>;

pub struct Context {
    pub rt: tokio::runtime::Handle,
    /// The socket this process serves (its address as an owner and as a worker).
    pub address: String,
    pub worker_id: WorkerId,
    pub node_id: NodeId,
    pub job_id: JobId,
    pub session_dir: String,
    pub is_worker: bool,
    pub raylet: RpcClient,
    pub plasma: PlasmaClient,
    pub table: ObjectTable,
    /// Connections to other core workers (leased workers, owners) and raylets.
    pub peers: Arc<ConnectionCache>,
    /// Borrower protocol messages to the owners of objects this process borrows.
    pub borrows: BorrowLinks,
    /// Processes borrowing objects owned here whose exit this process watches.
    pub watched_borrowers: Mutex<HashSet<String>>,
    /// Driver side: where output forwarded by workers goes (set by the bindings); the
    /// sender is answered once the text is written.
    pub output_sink: std::sync::OnceLock<OutputSink>,
    /// How to rebuild owned objects held in plasma: the task that made them.
    pub lineage: Mutex<HashMap<ObjectId, TaskSpec>>,
    /// The streams of generator tasks submitted here.
    pub(crate) generators: GeneratorStreams,
    /// Task state changes waiting to go to the GCS.
    pub(crate) task_events: TaskEventBuffer,
    pub(crate) user_metrics: MetricBuffer,
}

/// Who a process is, as its node told it when it registered.
pub struct Identity {
    /// The socket this process serves.
    pub address: String,
    pub worker_id: WorkerId,
    pub node_id: NodeId,
    pub job_id: JobId,
    pub session_dir: String,
    pub is_worker: bool,
}

impl Context {
    /// A process's context on the runtime it is called from, with empty tables.
    pub fn new(identity: Identity, raylet: RpcClient, plasma: PlasmaClient) -> Self {
        let peers: Arc<ConnectionCache> = Default::default();
        let rt = tokio::runtime::Handle::current();
        Self {
            borrows: BorrowLinks::new(rt.clone(), peers.clone()),
            rt,
            address: identity.address,
            worker_id: identity.worker_id,
            node_id: identity.node_id,
            job_id: identity.job_id,
            session_dir: identity.session_dir,
            is_worker: identity.is_worker,
            raylet,
            plasma,
            table: ObjectTable::new(),
            peers,
            watched_borrowers: Default::default(),
            output_sink: Default::default(),
            lineage: Default::default(),
            generators: Default::default(),
            task_events: Default::default(),
            user_metrics: Default::default(),
        }
    }
}

impl Context {
    /// Runs `call` to completion on this thread, checking `interrupted` every
    /// `INTERRUPT_POLL` while it is pending.
    pub fn block_on<F: Future>(&self, call: F, interrupted: &mut dyn FnMut() -> bool) -> Result<F::Output, CoreError> {
        self.rt.block_on(async {
            tokio::pin!(call);
            loop {
                match tokio::time::timeout(INTERRUPT_POLL, &mut call).await {
                    Ok(out) => return Ok(out),
                    Err(_) if interrupted() => return Err(CoreError::Interrupted),
                    Err(_) => {}
                }
            }
        })
    }

    /// A request to the node daemon (or, through it, the GCS); a request it rejects
    /// is the caller's error.
    pub fn node_call<R: Request>(
        &self,
        request: R,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<R::Reply, CoreError> {
        match self.block_on(self.raylet.request(request), interrupted)? {
            Ok(reply) => Ok(reply),
            Err(RpcError::Remote { code: rtd_common::proto::ErrorCode::Invalid, message }) => {
                Err(CoreError::Invalid(message))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Serializes a value's parts into an inline value or a sealed plasma object.
    pub fn store_value(
        &self,
        id: ObjectId,
        metadata: u32,
        payload: &[u8],
        buffers: &[&[u8]],
    ) -> Result<ObjectValue, CoreError> {
        if metadata >= object_kind::WORKER_CRASHED {
            // System errors carry a bare UTF-8 message (the GCS reads it).
            return Ok(system_error(metadata, String::from_utf8_lossy(payload).into_owned()));
        }
        let lens: Vec<usize> = buffers.iter().map(|b| b.len()).collect();
        let layout = Layout::new(payload.len(), &lens);
        if layout.total <= RuntimeConfig::get().max_inline_bytes {
            let data = layout.to_vec(payload, buffers);
            return Ok(ObjectValue { kind: Some(Kind::Inline(InlineObject { metadata, data: data.into() })) });
        }
        let size = layout.total as u64;
        let at_this_node =
            ObjectValue { kind: Some(Kind::Plasma(PlasmaObject { node_id: self.node_id.to_vec().into(), size })) };
        let offset = match self.rt.block_on(self.plasma.create(&id, size, metadata)) {
            Ok(offset) => offset,
            // A re-run of the task that made it (after its node was lost) finds a copy
            // of the object here, or an earlier attempt's result: the store made that
            // the primary; it is the object's value.
            Err(PlasmaError::Exists(_)) => {
                return match self.rt.block_on(self.plasma.get(&id, EXISTING_OBJECT_WAIT_MS)) {
                    Ok(Some(_)) => {
                        self.plasma.release(&id);
                        Ok(at_this_node)
                    }
                    _ => Err(CoreError::ObjectLost(format!("object {id} is being replaced in the store"))),
                };
            }
            Err(e) => return Err(plasma_error(e)),
        };
        // SAFETY: the store gave this range to us alone until we seal it.
        let dst = unsafe { self.plasma.region().slice_mut(offset, size) }
            .ok_or_else(|| CoreError::Internal("plasma returned a range outside the store".into()))?;
        layout.write(dst, payload, buffers);
        self.rt.block_on(self.plasma.seal(&id)).map_err(plasma_error)?;
        Ok(at_this_node)
    }

    /// Records a task result (and the refs inside it, which the worker registered us
    /// as borrowing); frees it at once if nobody wants it any more.
    pub fn store_result(&self, id: ObjectId, value: ObjectValue, contained: Vec<(ObjectId, String)>) {
        if !contained.is_empty() {
            for freed in self.table.add_contained(id, contained, &self.address, true) {
                self.free(freed);
            }
        }
        if !self.table.set_value(id, value.clone()) {
            self.free(Freed {
                id,
                value: Some(value),
                owned: true,
                owner: self.address.clone(),
                registrations: 0,
                contains: Vec::new(),
            });
        }
    }

    /// A reply for a task that was already given up: its results are dropped, and the
    /// borrower registrations its worker made for us are given back.
    pub fn drop_reply(&self, reply: PushTaskReply) {
        for ret in reply.returns {
            for freed in self.table.disown_contained(ref_list(&ret.contained), &self.address) {
                self.free(freed);
            }
            if let Some(ObjectValue { kind: Some(Kind::Plasma(_)) }) = ret.value {
                let _ = self.raylet.send(FreeObjects { ids: vec![ret.id], from_peer: false });
            }
        }
    }

    pub fn remember_lineage(&self, id: ObjectId, spec: &TaskSpec) {
        self.lineage.lock().insert(id, spec.clone());
    }

    /// Drops what an unreferenced object holds outside this process: its plasma copy
    /// (owned), its registrations with the owner (borrowed), and the refs its value
    /// contained, which may free more objects in turn.
    pub fn free(&self, freed: Freed) {
        let mut work = vec![freed];
        while let Some(mut freed) = work.pop() {
            if !freed.contains.is_empty() {
                work.extend(self.table.release_contained(std::mem::take(&mut freed.contains)));
            }
            if !freed.owned {
                if freed.registrations > 0 {
                    self.borrows.remove(freed.id, &freed.owner, &self.address, freed.registrations);
                }
                continue;
            }
            self.lineage.lock().remove(&freed.id);
            if let Some(ObjectValue { kind: Some(Kind::Plasma(_)) }) = freed.value {
                // The node deletes its copy and has every other node delete theirs (the
                // primary may live where the task ran, copies where it was read).
                let free = FreeObjects { ids: vec![freed.id.to_vec().into()], from_peer: false };
                let _ = self.raylet.send(free);
            }
        }
    }

    /// The task is done: its arguments (top-level and contained) are no longer needed
    /// for it.
    pub fn release_task_args(&self, spec: &TaskSpec) {
        let top_level = spec.arg_refs.iter().filter_map(|arg| arg.r#ref.as_ref());
        for r in top_level.chain(&spec.contained_refs) {
            if let Ok(id) = ObjectId::from_bytes(&r.id) {
                if let Some(freed) = self.table.remove_task_ref(&id) {
                    self.free(freed);
                }
            }
        }
    }

    /// Starts fetching a borrowed object's value from its owner into the table;
    /// `lost_on_node` (if not empty) reports that the value last given was lost there.
    pub fn fetch_from_owner(self: &Arc<Self>, id: ObjectId, owner: String, lost_on_node: Vec<u8>) {
        let ctx = self.clone();
        self.rt.spawn(async move {
            let request = GetObject { id: id.to_vec().into(), lost_on_node: lost_on_node.into() };
            let result = match ctx.peers.get(&owner).await {
                Ok(client) => client.request(request).await,
                Err(e) => Err(e),
            };
            let value = match result {
                Ok(reply) => reply.value,
                Err(e) => Some(system_error(
                    object_kind::OBJECT_LOST,
                    format!("object {id} is lost: its owner {owner} cannot serve it ({e})"),
                )),
            };
            match value {
                Some(v) => {
                    ctx.table.set_value(id, v);
                }
                None => ctx.table.fetch_failed(&id),
            }
        });
    }

    /// Waits (asynchronously) for an object's value, fetching it if borrowed.
    pub async fn wait_value(self: &Arc<Self>, id: ObjectId) -> ObjectValue {
        loop {
            match self.table.poll(&id) {
                Lookup::Ready(v) => return v,
                Lookup::FetchFrom(owner) => self.fetch_from_owner(id, owner, Vec::new()),
                Lookup::Pending => {}
                Lookup::Missing => return lost(id),
            }
            match self.table.subscribe(&id) {
                Some(rx) => match rx.await {
                    Ok(v) => return v,
                    // Freed while we waited, or the fetch failed: look again.
                    Err(_) => {
                        if matches!(self.table.poll(&id), Lookup::Missing) {
                            return lost(id);
                        }
                    }
                },
                None => return lost(id),
            }
        }
    }
}

/// Ids and owners of refs sent over the wire (malformed ids are skipped).
pub fn ref_list(refs: &[ObjectRefProto]) -> Vec<(ObjectId, String)> {
    refs.iter().filter_map(|r| ObjectId::from_bytes(&r.id).ok().map(|id| (id, r.owner.clone()))).collect()
}

pub fn lost(id: ObjectId) -> ObjectValue {
    system_error(object_kind::OBJECT_LOST, format!("object {id} is lost: no process holds it any more"))
}

pub fn plasma_error(e: PlasmaError) -> CoreError {
    match e {
        PlasmaError::Full(message) => CoreError::StoreFull(message),
        other => CoreError::Internal(other.to_string()),
    }
}

/// Owner side of the borrower protocol (see `borrowing` for the borrower side).
impl Context {
    /// Counts `borrower` as holding `id` (owned here). False if the object is gone.
    pub fn add_borrower(self: &Arc<Self>, id: &ObjectId, borrower: &str) -> bool {
        if !self.table.add_borrower(id, borrower) {
            return false;
        }
        if borrower != self.address && self.watched_borrowers.lock().insert(borrower.to_string()) {
            let ctx = self.clone();
            let borrower = borrower.to_string();
            self.rt.spawn(async move {
                // A borrower is gone when its connection closes and it cannot be reached
                // again (a dropped connection alone is not an exit).
                let mut failures = 0;
                while failures < BORROWER_GONE_AFTER {
                    match ctx.peers.get(&borrower).await {
                        Ok(client) => {
                            failures = 0;
                            client.closed().await;
                        }
                        Err(_) => {
                            failures += 1;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                ctx.watched_borrowers.lock().remove(&borrower);
                for freed in ctx.table.remove_borrower_everywhere(&borrower) {
                    ctx.free(freed);
                }
            });
        }
        true
    }

    pub fn remove_borrower(&self, id: &ObjectId, borrower: &str, count: u32) {
        if let Some(freed) = self.table.remove_borrower(id, borrower, count) {
            self.free(freed);
        }
    }

    /// Registers this process as a borrower if taking a ref created a new borrow.
    pub fn note_borrow(self: &Arc<Self>, borrow: Option<NewBorrow>) {
        if let Some(borrow) = borrow {
            let (ctx, id) = (self.clone(), borrow.id);
            // Not counted by the owner: nothing to give back for it later.
            self.borrows.register(borrow, &self.address, move || ctx.table.registration_refused(&id));
        }
    }
}

/// An error value stored in place of a task's results.
pub fn system_error(kind: u32, message: String) -> ObjectValue {
    ObjectValue {
        kind: Some(Kind::Inline(rtd_common::proto::InlineObject { metadata: kind, data: message.into_bytes().into() })),
    }
}
