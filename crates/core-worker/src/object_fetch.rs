//! Getting objects' values: waiting until they are ready (`get`, `wait`), fetching
//! borrowed ones from their owners, pulling copies from other nodes' stores and pinning
//! plasma objects while Python reads them.
//!
//! A value that turns out lost on the way (its node died, or the store evicted the
//! only copy) is rebuilt where possible: an owner re-runs the task that made it, a
//! borrower asks the owner to. A worker that blocks in `get` while running a task tells
//! its raylet, so that the CPU it holds can run other tasks meanwhile: nested tasks
//! would otherwise deadlock once every CPU waits on children.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rtd_common::proto::{object_value::Kind, NotifyBlocked, NotifyUnblocked, ObjectValue, PullObject, TaskArg};
use rtd_common::rpc::RpcError;
use rtd_common::ObjectId;
use rtd_plasma::PlasmaClient;

use crate::context::{self, Context};
use crate::error::CoreError;
use crate::executor::TaskExecutor;
use crate::object_table::Lookup;
use crate::submitter::TaskSubmitter;

/// How long `get` and `wait` block between looks at their interrupt check.
const GET_SLICE: Duration = Duration::from_millis(50);
/// Copies of another node's object made before giving up when each is evicted at once.
const PULL_ATTEMPTS: usize = 3;

/// A value ready for Python: inline bytes, or an object pinned in plasma.
pub enum FetchedValue {
    Inline { metadata: u32, data: bytes::Bytes },
    Plasma(PinnedObject),
}

/// A sealed plasma object this process has pinned; unpinned on drop.
pub struct PinnedObject {
    plasma: PlasmaClient,
    id: ObjectId,
    offset: u64,
    size: u64,
    pub metadata: u32,
}

impl PinnedObject {
    pub fn as_ptr(&self) -> *const u8 {
        // The store guarantees [offset, offset+size) lies inside the region.
        unsafe { self.plasma.region().as_ptr().add(self.offset as usize) }
    }

    pub fn len(&self) -> usize {
        self.size as usize
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
}

impl Drop for PinnedObject {
    fn drop(&mut self) {
        self.plasma.release(&self.id);
    }
}

pub(crate) struct ObjectFetcher {
    ctx: Arc<Context>,
    executor: Arc<TaskExecutor>,
    /// Re-runs the tasks of lost objects this process owns.
    tasks: TaskSubmitter,
}

impl ObjectFetcher {
    pub(crate) fn new(ctx: Arc<Context>, executor: Arc<TaskExecutor>, tasks: TaskSubmitter) -> Self {
        Self { ctx, executor, tasks }
    }

    /// Blocks until every object is ready (or `timeout`), then returns their values.
    pub(crate) fn get(
        &self,
        ids: &[ObjectId],
        timeout: Option<Duration>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Vec<FetchedValue>, CoreError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        self.wait_until(ids, ids.len(), timeout, interrupted)?;
        ids.iter()
            .map(|id| {
                let left = || deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let value = match self.ctx.table.get_value(id) {
                    Some(value) => value,
                    None => {
                        // Being made again by the re-run that rebuilds an object before
                        // it (items of one generator are rebuilt together).
                        self.wait_until(&[*id], 1, left(), interrupted)?;
                        self.ctx.table.get_value(id).unwrap_or_else(|| context::lost(*id))
                    }
                };
                match self.fetch_value(*id, value.clone(), interrupted) {
                    Err(CoreError::ObjectLost(why)) if self.reconstruct(id, &value) => {
                        tracing::info!("object {id} was lost ({why}); re-running the task that made it");
                        self.wait_until(&[*id], 1, left(), interrupted)?;
                        let value = self.ctx.table.get_value(id).unwrap_or_else(|| context::lost(*id));
                        self.fetch_value(*id, value, interrupted)
                    }
                    other => other,
                }
            })
            .collect()
    }

    /// Has a lost object made again: by re-running its task if this process owns it
    /// (and the task has retries left), else by asking its owner to. True if asked.
    fn reconstruct(&self, id: &ObjectId, lost: &ObjectValue) -> bool {
        if self.tasks.rebuild(&self.ctx, id) {
            return true;
        }
        let Some(Kind::Plasma(at)) = &lost.kind else { return false };
        match self.ctx.table.refetch(id) {
            Some(owner) => {
                self.ctx.fetch_from_owner(*id, owner, at.node_id.to_vec());
                true
            }
            None => false,
        }
    }

    /// Indices of ready objects in the order they became ready, at most `num_returns`.
    pub(crate) fn wait(
        &self,
        ids: &[ObjectId],
        num_returns: usize,
        timeout: Option<Duration>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Vec<usize>, CoreError> {
        match self.wait_until(ids, num_returns, timeout, interrupted) {
            Ok(()) | Err(CoreError::Timeout(_)) => {}
            Err(e) => return Err(e),
        }
        let mut ready: Vec<(u64, usize)> =
            ids.iter().enumerate().filter_map(|(i, id)| self.ctx.table.ready_seq(id).map(|seq| (seq, i))).collect();
        ready.sort();
        ready.dedup_by_key(|(_, i)| ids[*i]);
        Ok(ready.into_iter().take(num_returns).map(|(_, i)| i).collect())
    }

    /// Waits until `count` of `ids` are ready, telling the raylet meanwhile that a
    /// worker running a task is blocked (see the module doc).
    fn wait_until(
        &self,
        ids: &[ObjectId],
        count: usize,
        timeout: Option<Duration>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<(), CoreError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut blocked = false;
        let result = loop {
            let mut ready = 0;
            for id in ids {
                match self.ctx.table.poll(id) {
                    Lookup::Ready(_) => ready += 1,
                    Lookup::FetchFrom(owner) => self.ctx.fetch_from_owner(*id, owner, Vec::new()),
                    Lookup::Pending => {}
                    Lookup::Missing => {
                        return Err(CoreError::ObjectLost(format!("object {id} is not known to this process")))
                    }
                }
            }
            if ready >= count.min(ids.len()) {
                break Ok(());
            }
            let now = Instant::now();
            if let Some(d) = deadline {
                if now >= d {
                    break Err(CoreError::Timeout(timeout.unwrap_or_default()));
                }
            }
            if !blocked && self.ctx.is_worker && self.executor.current_task().is_some() {
                blocked = true;
                let _ = self.ctx.raylet.send(NotifyBlocked {});
            }
            let slice_end = now + GET_SLICE;
            self.ctx.table.wait_for_change(deadline.map_or(slice_end, |d| d.min(slice_end)));
            if interrupted() {
                break Err(CoreError::Interrupted);
            }
        };
        if blocked {
            let _ = self.ctx.raylet.send(NotifyUnblocked {});
        }
        result
    }

    fn fetch_value(
        &self,
        id: ObjectId,
        value: ObjectValue,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<FetchedValue, CoreError> {
        match value.kind {
            Some(Kind::Inline(inline)) => Ok(FetchedValue::Inline { metadata: inline.metadata, data: inline.data }),
            Some(Kind::Plasma(at)) if at.node_id.as_ref() != self.ctx.node_id.as_bytes() => {
                // Another node's store holds it: have our raylet copy it here, then pin
                // the copy. The store may evict a copy to make room before we pin it;
                // then copy it again.
                for _ in 0..PULL_ATTEMPTS {
                    let pull = PullObject { id: id.to_vec().into(), node_id: at.node_id.clone() };
                    self.ctx.node_call(pull, interrupted).map_err(|e| match e {
                        // Only an object its node no longer has is lost (and may be rebuilt).
                        CoreError::Rpc(RpcError::Remote { code: rtd_common::proto::ErrorCode::NotFound, message }) => {
                            CoreError::ObjectLost(format!("object {id} cannot be fetched from its node: {message}"))
                        }
                        CoreError::Rpc(RpcError::Remote { code: rtd_common::proto::ErrorCode::StoreFull, message }) => {
                            CoreError::StoreFull(message)
                        }
                        CoreError::Interrupted => CoreError::Interrupted,
                        other => CoreError::Internal(format!("object {id} could not be copied from its node: {other}")),
                    })?;
                    if let Some(pinned) = self.pin_within(id, 0)? {
                        return Ok(FetchedValue::Plasma(pinned));
                    }
                }
                Err(CoreError::StoreFull(format!(
                    "object {id} was evicted from this node's store each time it was copied here: \
                     the store is too small for the objects in use"
                )))
            }
            Some(Kind::Plasma(_)) => self.pin(id).map(FetchedValue::Plasma),
            None => Err(CoreError::Internal(format!("object {id} has no value"))),
        }
    }

    /// Pins a sealed plasma object (restoring it from disk if it was spilled).
    fn pin(&self, id: ObjectId) -> Result<PinnedObject, CoreError> {
        self.pin_within(id, 30_000)?
            .ok_or_else(|| CoreError::ObjectLost(format!("object {id} is not in the object store")))
    }

    /// Pins the object if it is (or, within `wait_ms`, becomes) sealed in the store.
    fn pin_within(&self, id: ObjectId, wait_ms: u64) -> Result<Option<PinnedObject>, CoreError> {
        let info = self.ctx.rt.block_on(self.ctx.plasma.get(&id, wait_ms)).map_err(context::plasma_error)?;
        Ok(info.map(|info| PinnedObject {
            plasma: self.ctx.plasma.clone(),
            id,
            offset: info.offset,
            size: info.size,
            metadata: info.metadata,
        }))
    }

    /// A task argument's value as Python needs it.
    pub(crate) fn arg_value(
        &self,
        arg: &TaskArg,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<FetchedValue, CoreError> {
        let id = arg
            .r#ref
            .as_ref()
            .and_then(|r| ObjectId::from_bytes(&r.id).ok())
            .ok_or_else(|| CoreError::Invalid("task argument without an object id".into()))?;
        let value = arg.value.clone().ok_or_else(|| CoreError::Internal("unresolved task argument".into()))?;
        self.fetch_value(id, value, interrupted)
    }
}
