//! The owner's side of generator tasks (`num_returns="streaming"` / `"dynamic"`), as
//! in Ray.
//!
//! A generator task's worker reports each item it yields (`ReportGeneratorItem`):
//! item `i` is the object `ObjectId::for_return(task, i + 1)`, owned here like any task
//! result. The task's one declared return (`for_return(task, 0)`) is ready once the
//! task is done and is the end of the stream. `GeneratorStream` keeps one stream's
//! items in order for its consumer (`next`), holds each unconsumed item (a local
//! reference, released when the consumer takes it or drops the generator), ignores
//! items a retried attempt reports again, and decides when the worker may go on
//! (backpressure: the answer to a report waits while the consumer is that many items
//! behind). `Generators` holds the streams of this process and wires them to the
//! object table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rtd_common::proto::{object_value::Kind, FreeObjects, ObjectValue, ReportGeneratorItem, TaskSpec};
use rtd_common::{object_kind, ObjectId, TaskId};
use tokio::sync::watch;

use crate::context::{ref_list, Context};
use crate::error::CoreError;

/// What the consumer of a stream gets next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeneratorNext {
    /// The next item's object.
    Item(ObjectId),
    /// The task failed (an exception, a crash, a cancel) after the items so far: its
    /// completed ref, whose value is the error, comes once as the last item.
    Failed(ObjectId),
    /// Not yet produced.
    Pending,
    /// Every item was taken and the task is done.
    End,
}

/// Whether a report brought a new item.
#[derive(Debug, PartialEq, Eq)]
pub enum Reported {
    New,
    /// Reported before (a retried or re-run attempt yields the same items again).
    Duplicate,
}

/// One generator task's items as its owner sees them (see the module doc).
#[derive(Debug, Default)]
pub struct GeneratorStream {
    /// Item objects by index; `None` where a later item arrived first.
    items: Vec<Option<ObjectId>>,
    /// How many items the consumer has taken.
    consumed: usize,
    /// Unconsumed items at which the producer waits (0: never).
    backpressure: usize,
    /// The task is done (its completed ref is ready).
    finished: bool,
    /// It failed: the completed ref still to hand out, then taken.
    failure: Option<ObjectId>,
    failure_taken: bool,
}

impl GeneratorStream {
    pub fn new(backpressure: usize) -> Self {
        Self { backpressure, ..Default::default() }
    }

    /// Records item `index`.
    pub fn report(&mut self, index: usize, id: ObjectId) -> Reported {
        if self.items.len() <= index {
            self.items.resize(index + 1, None);
        }
        match &mut self.items[index] {
            Some(_) => Reported::Duplicate,
            slot => {
                *slot = Some(id);
                Reported::New
            }
        }
    }

    /// Whether the producer may go on after reporting item `index`: once fewer than
    /// `backpressure` items, it included, are unconsumed (or the stream is over).
    pub fn may_continue(&self, index: usize) -> bool {
        self.backpressure == 0 || self.finished || index + 1 < self.consumed + self.backpressure
    }

    /// What the consumer would get now, without taking it.
    pub fn peek(&self) -> GeneratorNext {
        match self.items.get(self.consumed) {
            Some(Some(id)) => GeneratorNext::Item(*id),
            // The worker's reports all arrive before its reply, so a gap at the end is
            // filled by then; wait for it rather than skip it.
            Some(None) => GeneratorNext::Pending,
            None if !self.finished => GeneratorNext::Pending,
            None => match self.failure {
                Some(id) if !self.failure_taken => GeneratorNext::Failed(id),
                _ => GeneratorNext::End,
            },
        }
    }

    /// Takes what `peek` says.
    pub fn take(&mut self) -> GeneratorNext {
        let next = self.peek();
        match next {
            GeneratorNext::Item(_) => self.consumed += 1,
            GeneratorNext::Failed(_) => self.failure_taken = true,
            GeneratorNext::Pending | GeneratorNext::End => {}
        }
        next
    }

    /// The task is done; `failure` is its completed ref when it failed.
    pub fn finish(&mut self, failure: Option<ObjectId>) {
        self.finished = true;
        self.failure = failure;
    }

    /// The consumer took everything there is.
    pub fn is_finished(&self) -> bool {
        self.peek() == GeneratorNext::End
    }

    /// Items never taken (released when the consumer drops the generator).
    pub fn unconsumed(&self) -> impl Iterator<Item = ObjectId> + '_ {
        self.items.iter().skip(self.consumed).flatten().copied()
    }
}

struct Stream {
    state: GeneratorStream,
    /// How to rebuild its items (lineage): the task that made them.
    spec: TaskSpec,
    /// Bumped on every change, for waiting consumers and held reports.
    changed: watch::Sender<()>,
    /// `num_returns="dynamic"`: no consumer; the items stay held until the task is
    /// done, when the completed ref's value (the list of items) holds them instead.
    dynamic: bool,
}

/// The generator streams this process owns, by task.
#[derive(Default)]
pub struct Generators {
    streams: Mutex<HashMap<TaskId, Stream>>,
}

fn task_id_of(spec: &TaskSpec) -> TaskId {
    TaskId::from_bytes(&spec.task_id).unwrap_or_else(|_| TaskId::nil())
}

fn is_error(value: &ObjectValue) -> bool {
    matches!(&value.kind, Some(Kind::Inline(inline)) if inline.metadata != object_kind::VALUE)
}

impl Generators {
    /// A generator task was submitted: its stream exists from now on, and ends when
    /// the task's completed ref is ready.
    pub fn register(ctx: &Arc<Context>, spec: &TaskSpec) {
        let task_id = task_id_of(spec);
        let backpressure = usize::try_from(spec.generator_backpressure_num_objects).unwrap_or(usize::MAX);
        let stream = Stream {
            state: GeneratorStream::new(backpressure),
            spec: spec.clone(),
            changed: watch::channel(()).0,
            dynamic: spec.generator_dynamic,
        };
        ctx.generators.streams.lock().insert(task_id, stream);
        let completed = ObjectId::for_return(&task_id, 0);
        let ctx = ctx.clone();
        ctx.rt.clone().spawn(async move {
            let value = ctx.wait_value(completed).await;
            let failure = is_error(&value).then_some(completed);
            let mut streams = ctx.generators.streams.lock();
            let dynamic = match streams.get_mut(&task_id) {
                Some(stream) => {
                    stream.state.finish(failure);
                    stream.changed.send_replace(());
                    stream.dynamic
                }
                None => false,
            };
            drop(streams);
            if dynamic {
                ctx.generators.release(&ctx, task_id);
            }
        });
    }

    /// An item reported by the task's worker. Returns when the worker may go on (the
    /// answer to its report), `None` at once.
    pub fn on_report(
        ctx: &Arc<Context>,
        report: ReportGeneratorItem,
    ) -> Result<Option<impl std::future::Future<Output = ()>>, CoreError> {
        let task_id = TaskId::from_bytes(&report.task_id).map_err(|e| CoreError::Invalid(e.to_string()))?;
        let index = report.index;
        // Return indices above this one name `put` objects.
        if index >= u32::MAX >> 1 {
            return Err(CoreError::Invalid(format!("generator item index {index} is too large")));
        }
        let id = ObjectId::for_return(&task_id, index + 1);
        let value = report.value.ok_or_else(|| CoreError::Invalid("a generator item without its value".into()))?;
        let contained = ref_list(&report.contained);
        let mut streams = ctx.generators.streams.lock();
        let Some(stream) = streams.get_mut(&task_id) else {
            drop(streams);
            Self::store_rebuilt_or_drop(ctx, id, value, contained);
            return Ok(None);
        };
        if stream.state.report(index as usize, id) == Reported::Duplicate {
            drop(streams);
            Self::store_rebuilt_or_drop(ctx, id, value, contained);
            return Ok(None);
        }
        // The stream's hold on the item until the consumer takes it.
        ctx.table.add_owned_pending(id, &ctx.address);
        ctx.table.add_local_ref(id, &ctx.address, &ctx.address);
        if matches!(value.kind, Some(Kind::Plasma(_))) && stream.spec.max_retries != 0 {
            ctx.remember_lineage(id, &stream.spec);
        }
        ctx.store_result(id, value, contained);
        stream.changed.send_replace(());
        if stream.state.may_continue(index as usize) {
            return Ok(None);
        }
        let mut changed = stream.changed.subscribe();
        drop(streams);
        let ctx = ctx.clone();
        Ok(Some(async move {
            loop {
                let go_on = match ctx.generators.streams.lock().get(&task_id) {
                    Some(stream) => stream.state.may_continue(index as usize),
                    None => true,
                };
                if go_on || changed.changed().await.is_err() {
                    return;
                }
            }
        }))
    }

    /// An item reported again, or after its consumer dropped the generator: its value
    /// is wanted only if the object was lost and is being rebuilt (its entry waits for
    /// a value). Else the refs inside it, which the worker registered us as borrowing,
    /// are given back, and a plasma copy of an item freed already is deleted (one of an
    /// item still here has its id, so it goes when the item is freed).
    fn store_rebuilt_or_drop(ctx: &Arc<Context>, id: ObjectId, value: ObjectValue, contained: Vec<(ObjectId, String)>) {
        if ctx.table.is_owned(&id) && ctx.table.get_value(&id).is_none() {
            ctx.store_result(id, value, contained);
            return;
        }
        if !ctx.table.contains(&id) && matches!(value.kind, Some(Kind::Plasma(_))) {
            let _ = ctx.raylet.send(FreeObjects { ids: vec![id.to_vec().into()], from_peer: false });
        }
        for freed in ctx.table.disown_contained(contained, &ctx.address) {
            ctx.free(freed);
        }
    }

    /// Items of the generator task that made `id` (an item) whose values were in the
    /// same node's store as `id`'s, `id` included: what re-running the task rebuilds
    /// when that node is lost. Their lineage is dropped (one re-run serves them all).
    pub fn lost_with(ctx: &Context, id: &ObjectId) -> Vec<ObjectId> {
        let node_of = |id: &ObjectId| match ctx.table.get_value(id) {
            Some(ObjectValue { kind: Some(Kind::Plasma(at)) }) => Some(at.node_id),
            _ => None,
        };
        let mut lineage = ctx.lineage.lock();
        let Some(spec) = lineage.get(id) else { return Vec::new() };
        if !spec.streaming_generator {
            return Vec::new();
        }
        let Some(lost_node) = node_of(id) else { return vec![*id] };
        let task_id = id.task_id();
        let lost: Vec<ObjectId> = lineage
            .keys()
            .filter(|other| other.task_id() == task_id && node_of(other).as_ref() == Some(&lost_node))
            .copied()
            .collect();
        for other in &lost {
            if other != id {
                lineage.remove(other);
            }
        }
        lost
    }

    /// Takes the stream's next item, waiting up to `timeout` (None: as long as it
    /// takes) for it to be produced. `Pending` after the timeout.
    pub fn next(
        ctx: &Arc<Context>,
        task_id: TaskId,
        timeout: Option<Duration>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<GeneratorNext, CoreError> {
        let wait = async {
            loop {
                let mut changed = {
                    let mut streams = ctx.generators.streams.lock();
                    let Some(stream) = streams.get_mut(&task_id) else { return GeneratorNext::End };
                    let next = stream.state.take();
                    if next != GeneratorNext::Pending {
                        stream.changed.send_replace(());
                        return next;
                    }
                    stream.changed.subscribe()
                };
                if changed.changed().await.is_err() {
                    return GeneratorNext::End;
                }
            }
        };
        // An item taken stays held until the caller counted its own reference and
        // calls `release_hold`.
        Ok(match timeout {
            // The timer is made inside the runtime (block_on enters it).
            Some(t) => ctx
                .block_on(async { tokio::time::timeout(t, wait).await }, interrupted)?
                .unwrap_or(GeneratorNext::Pending),
            None => ctx.block_on(wait, interrupted)?,
        })
    }

    /// Drops the stream's hold on an item the consumer took (after it counted its own
    /// reference).
    pub fn release_hold(ctx: &Context, id: &ObjectId) {
        if let Some(freed) = ctx.table.remove_local_ref(id) {
            ctx.free(freed);
        }
    }

    /// Waits (asynchronously) until `next` would not block.
    pub async fn wait_next(ctx: Arc<Context>, task_id: TaskId) {
        loop {
            let mut changed = {
                let streams = ctx.generators.streams.lock();
                let Some(stream) = streams.get(&task_id) else { return };
                if stream.state.peek() != GeneratorNext::Pending {
                    return;
                }
                stream.changed.subscribe()
            };
            if changed.changed().await.is_err() {
                return;
            }
        }
    }

    /// Whether the stream has no more items (or is gone).
    pub fn is_finished(&self, task_id: TaskId) -> bool {
        self.streams.lock().get(&task_id).is_none_or(|s| s.state.is_finished())
    }

    /// The consumer dropped the generator: its unconsumed items are released, and a
    /// producer held by backpressure goes on.
    pub fn release(&self, ctx: &Context, task_id: TaskId) {
        let Some(stream) = self.streams.lock().remove(&task_id) else { return };
        for id in stream.state.unconsumed() {
            Self::release_hold(ctx, &id);
        }
        // Dropping `changed` wakes everything waiting on it.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(task: &TaskId, index: u32) -> ObjectId {
        ObjectId::for_return(task, index + 1)
    }

    #[test]
    fn items_come_out_in_index_order_even_when_reported_out_of_order() {
        let task = TaskId::random();
        let mut s = GeneratorStream::new(0);
        assert_eq!(s.report(1, item(&task, 1)), Reported::New);
        assert_eq!(s.take(), GeneratorNext::Pending, "item 0 is not there yet");
        assert_eq!(s.report(0, item(&task, 0)), Reported::New);
        assert_eq!(s.take(), GeneratorNext::Item(item(&task, 0)));
        assert_eq!(s.take(), GeneratorNext::Item(item(&task, 1)));
        assert_eq!(s.take(), GeneratorNext::Pending, "the task may yield more");
        s.finish(None);
        assert_eq!(s.take(), GeneratorNext::End);
        assert!(s.is_finished());
    }

    #[test]
    fn a_retried_attempt_reporting_the_same_items_adds_nothing() {
        let task = TaskId::random();
        let mut s = GeneratorStream::new(0);
        s.report(0, item(&task, 0));
        s.report(1, item(&task, 1));
        assert_eq!(s.take(), GeneratorNext::Item(item(&task, 0)));
        // The worker died; the retry yields items 0, 1 and then 2.
        assert_eq!(s.report(0, item(&task, 0)), Reported::Duplicate);
        assert_eq!(s.report(1, item(&task, 1)), Reported::Duplicate);
        assert_eq!(s.report(2, item(&task, 2)), Reported::New);
        s.finish(None);
        let rest: Vec<_> = std::iter::from_fn(|| match s.take() {
            GeneratorNext::Item(id) => Some(id),
            _ => None,
        })
        .collect();
        assert_eq!(rest, vec![item(&task, 1), item(&task, 2)]);
    }

    #[test]
    fn backpressure_holds_the_producer_while_that_many_items_are_unconsumed() {
        let task = TaskId::random();
        let mut s = GeneratorStream::new(2);
        s.report(0, item(&task, 0));
        assert!(s.may_continue(0), "one unconsumed item of two allowed");
        s.report(1, item(&task, 1));
        assert!(!s.may_continue(1), "two unconsumed: the producer waits");
        s.take();
        assert!(s.may_continue(1), "the consumer took one");
        s.report(2, item(&task, 2));
        assert!(!s.may_continue(2));
        s.finish(None);
        assert!(s.may_continue(2), "a finished stream holds nobody");
        assert!(GeneratorStream::new(0).may_continue(1_000), "0 means no backpressure");
    }

    #[test]
    fn a_failed_task_ends_the_stream_with_its_error_once_after_the_items() {
        let task = TaskId::random();
        let completed = ObjectId::for_return(&task, 0);
        let mut s = GeneratorStream::new(0);
        s.report(0, item(&task, 0));
        s.finish(Some(completed));
        assert!(!s.is_finished());
        assert_eq!(s.take(), GeneratorNext::Item(item(&task, 0)), "earlier items stay readable");
        assert_eq!(s.take(), GeneratorNext::Failed(completed));
        assert_eq!(s.take(), GeneratorNext::End);
        assert!(s.is_finished());
    }

    #[test]
    fn unconsumed_items_are_those_after_the_consumer() {
        let task = TaskId::random();
        let mut s = GeneratorStream::new(0);
        for i in 0..3 {
            s.report(i as usize, item(&task, i));
        }
        s.take();
        assert_eq!(s.unconsumed().collect::<Vec<_>>(), vec![item(&task, 1), item(&task, 2)]);
    }
}
