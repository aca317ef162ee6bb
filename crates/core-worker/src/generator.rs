//! The owner's side of generator tasks (`num_returns="streaming"` / `"dynamic"`), as
//! in Ray.
//!
//! A generator task's worker reports each item it yields (`ReportGeneratorItem`):
//! item `i` is the object `ObjectId::for_return(task, i + 1)`, owned here like any task
//! result. The task's one declared return (`for_return(task, 0)`) is ready once the
//! task is done and is the end of the stream. `Generators` wires the streams
//! (`generator_stream.rs`, kept in `Context`) to the object table: each unconsumed item
//! is held (a local reference, released when the consumer takes it or drops the
//! generator), items get lineage, and a report's answer waits under backpressure.

use std::sync::Arc;
use std::time::Duration;

use rtd_common::proto::{object_value::Kind, FreeObjects, ObjectValue, ReportGeneratorItem, TaskSpec};
use rtd_common::{object_kind, ObjectId, TaskId};
use tokio::sync::watch;

use crate::context::{ref_list, Context};
use crate::error::CoreError;
use crate::generator_stream::{GeneratorNext, GeneratorStream, Reported, Stream};

/// The functions that drive this process's generator streams (`ctx.generators`).
pub struct Generators;

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
                Self::release(&ctx, task_id);
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

    /// The consumer dropped the generator: its unconsumed items are released, and a
    /// producer held by backpressure goes on.
    pub fn release(ctx: &Context, task_id: TaskId) {
        let Some(stream) = ctx.generators.streams.lock().remove(&task_id) else { return };
        for id in stream.state.unconsumed() {
            Self::release_hold(ctx, &id);
        }
        // Dropping `changed` wakes everything waiting on it.
    }
}

#[cfg(test)]
mod tests {
    //! The streams of a process over its object table (the stream's own rules are
    //! tested in `generator_stream`).

    use super::*;
    use crate::context::system_error;
    use crate::fake_cluster::{inline, stored, test_context};

    fn item(task: &TaskId, index: u32) -> ObjectId {
        ObjectId::for_return(task, index + 1)
    }

    /// A generator task submitted by `ctx` (its completed ref held as Python holds it).
    fn submitted(ctx: &Arc<Context>, backpressure: u64) -> TaskId {
        let task = TaskId::random();
        let completed = ObjectId::for_return(&task, 0);
        ctx.table.add_owned_pending(completed, &ctx.address);
        ctx.table.add_local_ref(completed, &ctx.address, &ctx.address);
        let spec = TaskSpec {
            task_id: task.to_vec().into(),
            return_ids: vec![completed.to_vec().into()],
            streaming_generator: true,
            generator_backpressure_num_objects: backpressure,
            ..Default::default()
        };
        Generators::register(ctx, &spec);
        task
    }

    fn report(task: &TaskId, index: u32, value: &[u8]) -> ReportGeneratorItem {
        ReportGeneratorItem { task_id: task.to_vec().into(), index, value: Some(inline(value)), ..Default::default() }
    }

    /// The consumer's `next`, as the bindings call it (off the runtime's threads), with
    /// the consumer's own reference counted as the core worker does.
    async fn take(ctx: &Arc<Context>, task: TaskId) -> GeneratorNext {
        let ctx = ctx.clone();
        tokio::task::spawn_blocking(move || {
            let next = Generators::next(&ctx, task, Some(Duration::from_secs(5)), &mut || false);
            let next = next.expect("next does not fail");
            if let GeneratorNext::Item(id) = next {
                ctx.table.add_local_ref(id, &ctx.address, &ctx.address);
                Generators::release_hold(&ctx, &id);
            }
            next
        })
        .await
        .expect("the consumer thread ran")
    }

    fn value_of(ctx: &Context, id: &ObjectId) -> Option<String> {
        stored(ctx, id).map(|(_, text)| text)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_consumer_gets_reported_items_and_a_duplicate_changes_nothing() {
        let ctx = test_context().await;
        let task = submitted(&ctx, 0);
        for (index, value) in [(1, b"b"), (0, b"a")] {
            assert!(Generators::on_report(&ctx, report(&task, index, value)).expect("a valid report").is_none());
        }
        assert_eq!(take(&ctx, task).await, GeneratorNext::Item(item(&task, 0)));
        assert_eq!(value_of(&ctx, &item(&task, 0)).as_deref(), Some("a"));
        // A retry reports item 1 again, with another value: the first stays.
        assert!(Generators::on_report(&ctx, report(&task, 1, b"again")).expect("a valid report").is_none());
        assert_eq!(take(&ctx, task).await, GeneratorNext::Item(item(&task, 1)));
        assert_eq!(value_of(&ctx, &item(&task, 1)).as_deref(), Some("b"));
        ctx.store_result(ObjectId::for_return(&task, 0), inline(b"done"), Vec::new());
        assert_eq!(take(&ctx, task).await, GeneratorNext::End);
        assert!(ctx.generators.is_finished(task));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_answer_to_a_report_waits_while_the_consumer_is_behind() {
        let ctx = test_context().await;
        let task = submitted(&ctx, 1);
        let held = Generators::on_report(&ctx, report(&task, 0, b"a")).expect("a valid report");
        let mut held = Box::pin(held.expect("one unconsumed item of one allowed: held"));
        let early = tokio::time::timeout(Duration::from_millis(50), &mut held).await;
        assert!(early.is_err(), "answered before the consumer took the item");
        assert_eq!(take(&ctx, task).await, GeneratorNext::Item(item(&task, 0)));
        tokio::time::timeout(Duration::from_secs(5), held).await.expect("answered once the item was taken");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_task_ends_the_stream_with_its_completed_ref() {
        let ctx = test_context().await;
        let task = submitted(&ctx, 0);
        assert!(Generators::on_report(&ctx, report(&task, 0, b"a")).expect("a valid report").is_none());
        let completed = ObjectId::for_return(&task, 0);
        ctx.store_result(completed, system_error(object_kind::WORKER_CRASHED, "died".into()), Vec::new());
        assert_eq!(take(&ctx, task).await, GeneratorNext::Item(item(&task, 0)));
        assert_eq!(take(&ctx, task).await, GeneratorNext::Failed(completed));
        assert_eq!(take(&ctx, task).await, GeneratorNext::End);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_generator_frees_unconsumed_items_and_later_reports() {
        let ctx = test_context().await;
        let task = submitted(&ctx, 0);
        for index in 0..3 {
            assert!(Generators::on_report(&ctx, report(&task, index, b"x")).expect("a valid report").is_none());
        }
        assert_eq!(take(&ctx, task).await, GeneratorNext::Item(item(&task, 0)));
        Generators::release(&ctx, task);
        assert!(ctx.table.contains(&item(&task, 0)), "the consumer still holds item 0");
        assert!(!ctx.table.contains(&item(&task, 1)) && !ctx.table.contains(&item(&task, 2)));
        // The task goes on yielding: nobody wants those items.
        assert!(Generators::on_report(&ctx, report(&task, 3, b"x")).expect("a valid report").is_none());
        assert!(!ctx.table.contains(&item(&task, 3)));
    }

    #[tokio::test]
    async fn a_malformed_report_is_refused() {
        let ctx = test_context().await;
        let task = submitted(&ctx, 0);
        let bad_task = ReportGeneratorItem { task_id: vec![1, 2, 3].into(), ..report(&task, 0, b"x") };
        let no_value = ReportGeneratorItem { value: None, ..report(&task, 0, b"x") };
        let too_far = report(&task, u32::MAX, b"x");
        for bad in [bad_task, no_value, too_far] {
            assert!(matches!(Generators::on_report(&ctx, bad), Err(CoreError::Invalid(_))));
        }
    }
}
