//! A worker's answer to a task it ran: its results stored (inline or in plasma) and
//! the reply sent to the submitter.
//!
//! Each result comes with the refs pickled inside it, which the submitter will hold:
//! before replying, the submitter is registered as their borrower with each owner (and
//! this worker's own registrations, made while unpickling the arguments, are
//! confirmed), so no owner frees them when this worker lets go.
//!
//! A generator task's items go to its owner one by one as they are yielded
//! (`report_generator_item`), each with the same care; the reply waits until the owner
//! answered every report, so the owner has all items when the task is done.

use std::sync::Arc;

use rtd_common::proto::{ObjectRefProto, PushTaskReply, ReportGeneratorItem, ReturnObject};
use rtd_common::{object_kind, ObjectId};

use crate::borrowing::BORROW_CONFIRM_LIMIT;
use crate::context::{system_error, Context};
use crate::error::CoreError;
use crate::executor::{IncomingTask, TaskExecutor};
use crate::output::OutputForwarder;

/// One task result as Python hands it over: metadata, pickle, out-of-band buffers, and
/// the refs pickled inside it.
pub type ResultParts<'a> = (u32, &'a [u8], Vec<&'a [u8]>, Vec<(ObjectId, String)>);

/// Stores each result and replies to the submitter (see the module doc).
pub(crate) fn finish_task(
    ctx: &Arc<Context>,
    executor: &TaskExecutor,
    output: &OutputForwarder,
    mut task: IncomingTask,
    results: Vec<ResultParts<'_>>,
    app_error: bool,
    retryable: bool,
) -> Result<(), CoreError> {
    for report in std::mem::take(&mut task.unanswered_reports) {
        let _ = ctx.rt.block_on(report);
    }
    let mut returns = Vec::with_capacity(results.len());
    let mut first_error = None;
    let mut contained = Vec::with_capacity(results.len());
    for (raw_id, (metadata, payload, buffers, refs)) in task.spec.return_ids.iter().zip(results) {
        let id = ObjectId::from_bytes(raw_id).map_err(|e| CoreError::Invalid(e.to_string()))?;
        match ctx.store_value(id, metadata, payload, &buffers) {
            Ok(value) => {
                returns.push(ReturnObject { id: raw_id.clone(), value: Some(value), contained: Vec::new() });
                contained.push(refs);
            }
            Err(e) => {
                first_error.get_or_insert(e.to_string());
                break;
            }
        }
    }
    if first_error.is_none() && !task.spec.actor_creation {
        for (ret, refs) in returns.iter_mut().zip(contained) {
            ret.contained = register_for_submitter(ctx, &task.spec.owner, refs);
        }
    }
    ctx.borrows.flush(BORROW_CONFIRM_LIMIT);
    output.sync();
    executor.task_done();
    if let Some(message) = first_error {
        // The result could not be stored (store full): report that as the error.
        let returns = task
            .spec
            .return_ids
            .iter()
            .map(|id| ReturnObject {
                id: id.clone(),
                value: Some(system_error(object_kind::OBJECT_LOST, message.clone())),
                contained: Vec::new(),
            })
            .collect();
        task.finish(PushTaskReply { returns, app_error: true, retryable: false });
        return Err(CoreError::StoreFull(message));
    }
    task.finish(PushTaskReply { returns, app_error, retryable });
    Ok(())
}

/// Stores item `index` of a generator task and reports it to the task's owner.
/// Without backpressure the owner's answer is awaited before the task's reply; with
/// it, before this returns (the owner holds it while its consumer is behind).
pub(crate) fn report_generator_item(
    ctx: &Arc<Context>,
    task: &mut IncomingTask,
    index: u32,
    (metadata, payload, buffers, refs): ResultParts<'_>,
    interrupted: &mut dyn FnMut() -> bool,
) -> Result<ObjectId, CoreError> {
    if !task.spec.streaming_generator {
        return Err(CoreError::Invalid(format!("task {} is not a generator task", task.task_id())));
    }
    let id = ObjectId::for_return(&task.task_id(), index + 1);
    let value = ctx.store_value(id, metadata, payload, &buffers)?;
    let contained = register_for_submitter(ctx, &task.spec.owner, refs);
    ctx.borrows.flush(BORROW_CONFIRM_LIMIT);
    let report = ReportGeneratorItem {
        task_id: task.spec.task_id.clone(),
        attempt: task.spec.attempt,
        index,
        value: Some(value),
        contained,
    };
    let (owner, sender) = (task.spec.owner.clone(), ctx.clone());
    let answered = async move {
        let client = sender.peers.get(&owner).await?;
        client.request(report).await.map(|_| ())
    };
    if task.spec.generator_backpressure_num_objects > 0 {
        ctx.block_on(answered, interrupted)?
            .map_err(|e| CoreError::Internal(format!("cannot report a generator item to its owner: {e}")))?;
    } else {
        task.unanswered_reports.push(ctx.rt.spawn(async move {
            if let Err(e) = answered.await {
                tracing::warn!("cannot report a generator item to its owner: {e}");
            }
        }));
    }
    Ok(id)
}

/// Registers `submitter` as a borrower of each ref with its owner (here, or over the
/// borrower protocol) and returns those the owners counted: the others are gone.
fn register_for_submitter(ctx: &Arc<Context>, submitter: &str, refs: Vec<(ObjectId, String)>) -> Vec<ObjectRefProto> {
    if refs.is_empty() {
        return Vec::new();
    }
    let pending: Vec<_> = refs
        .into_iter()
        .map(|(id, owner)| {
            let done = if owner == ctx.address {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let _ = tx.send(ctx.add_borrower(&id, submitter));
                rx
            } else {
                ctx.borrows.add(id, &owner, submitter)
            };
            (id, owner, done)
        })
        .collect();
    ctx.rt.block_on(async {
        let deadline = tokio::time::Instant::now() + BORROW_CONFIRM_LIMIT;
        let mut counted = Vec::with_capacity(pending.len());
        for (id, owner, done) in pending {
            match tokio::time::timeout_at(deadline, done).await {
                Ok(Ok(true)) => counted.push(ObjectRefProto { id: id.to_vec().into(), owner }),
                Ok(_) => {}
                // Not confirmed in time: the submitter will not hold it, so take back
                // the registration should it still arrive (same link, so after it).
                Err(_) => ctx.borrows.remove(id, &owner, submitter, 1),
            }
        }
        counted
    })
}
