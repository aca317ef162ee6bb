//! The socket every core worker serves. Other processes call it to push tasks to this
//! worker (when they hold a lease on it), to cancel them, and, as borrowers, to get the
//! value of an object this process owns (the reply waits until the value exists) and
//! to register and give back their borrows (`borrowing.rs`), and, running a generator
//! task, to hand over its items (`generator.rs`); the state API asks it
//! which objects it references.

use std::sync::Arc;

use rtd_common::proto::core_worker_reply::Reply as CoreWorkerReply;
use rtd_common::proto::core_worker_request::Request as CoreWorkerRequest;
use rtd_common::proto::{
    frame::Body, object_value::Kind, Ack, ErrorCode, GetNodes, GetObjectRefsReply, GetObjectReply, ObjectValue,
};
use rtd_common::rpc::{error_body, Reply, Service};
use rtd_common::{ObjectId, TaskId};

use crate::context::Context;
use crate::executor::{PushError, TaskExecutor};
use crate::generator::Generators;
use crate::submitter::TaskSubmitter;

/// Whether the cluster has declared `node_id` dead (or forgotten it).
async fn node_is_dead(ctx: &Context, node_id: &[u8]) -> bool {
    match ctx.raylet.request(GetNodes {}).await {
        Ok(r) => !r.nodes.iter().any(|n| n.node_id.as_ref() == node_id && n.alive),
        Err(_) => false,
    }
}

pub struct OwnerService {
    pub ctx: Arc<Context>,
    pub executor: Arc<TaskExecutor>,
    pub submitter: TaskSubmitter,
}

fn ack() -> Body {
    CoreWorkerReply::Ack(Ack {}).into()
}

impl Service for OwnerService {
    const NAME: &'static str = "a core worker";
    type Request = CoreWorkerRequest;
    type State = ();

    fn connected(&self) {}

    fn handle(&self, _state: &mut (), request: CoreWorkerRequest) -> Reply {
        match request {
            CoreWorkerRequest::PushTask(push) => {
                let Some(spec) = push.spec else {
                    return Reply::Now(error_body(ErrorCode::Invalid, "PushTask without a spec"));
                };
                if !self.ctx.is_worker {
                    return Reply::Now(error_body(ErrorCode::Invalid, "a driver does not run tasks"));
                }
                match self.executor.enqueue(spec, push.gpu_ids) {
                    Ok(rx) => Reply::Later(Box::pin(async move {
                        match rx.await {
                            Ok(reply) => CoreWorkerReply::PushTaskReply(reply).into(),
                            Err(_) => error_body(ErrorCode::WorkerDied, "the worker stopped before finishing the task"),
                        }
                    })),
                    Err(e @ PushError::Malformed(_)) => Reply::Now(error_body(ErrorCode::Invalid, e.to_string())),
                    Err(e @ PushError::ShuttingDown) => Reply::Now(error_body(ErrorCode::WorkerDied, e.to_string())),
                }
            }
            CoreWorkerRequest::CancelTask(cancel) => {
                if let Ok(task_id) = TaskId::from_bytes(&cancel.task_id) {
                    self.executor.cancel(task_id);
                }
                Reply::None
            }
            CoreWorkerRequest::GetObject(get) => {
                let Ok(id) = ObjectId::from_bytes(&get.id) else {
                    return Reply::Now(error_body(ErrorCode::Invalid, "bad object id"));
                };
                if !self.ctx.table.contains(&id) {
                    return Reply::Now(error_body(
                        ErrorCode::NotFound,
                        format!("object {id} is not known to its owner (freed or never created)"),
                    ));
                }
                let (ctx, submitter) = (self.ctx.clone(), self.submitter.clone());
                Reply::Later(Box::pin(async move {
                    if !get.lost_on_node.is_empty() && node_is_dead(&ctx, &get.lost_on_node).await {
                        // Rebuild only if the value still points where the borrower lost
                        // it (another borrower's report may have had it rebuilt already).
                        let lost_here = matches!(
                            ctx.table.get_value(&id),
                            Some(ObjectValue { kind: Some(Kind::Plasma(at)) }) if at.node_id == get.lost_on_node
                        );
                        if lost_here && submitter.rebuild(&ctx, &id) {
                            tracing::info!("object {id} was lost with its node; re-running the task that made it");
                        }
                    }
                    let value = ctx.wait_value(id).await;
                    CoreWorkerReply::GetObjectReply(GetObjectReply { value: Some(value) }).into()
                }))
            }
            CoreWorkerRequest::AddBorrower(add) => {
                let Ok(id) = ObjectId::from_bytes(&add.id) else {
                    return Reply::Now(error_body(ErrorCode::Invalid, "bad object id"));
                };
                if self.ctx.add_borrower(&id, &add.borrower) {
                    Reply::Now(ack())
                } else {
                    Reply::Now(error_body(
                        ErrorCode::NotFound,
                        format!("object {id} is not owned here (freed or never created)"),
                    ))
                }
            }
            CoreWorkerRequest::WorkerOutput(output) => match self.ctx.output_sink.get() {
                Some(sink) => {
                    let (written, rx) = tokio::sync::oneshot::channel();
                    sink(output.text, output.stderr, written);
                    Reply::Later(Box::pin(async move {
                        let _ = rx.await;
                        ack()
                    }))
                }
                None => {
                    use std::io::Write;
                    let _ = if output.stderr {
                        std::io::stderr().write_all(output.text.as_bytes())
                    } else {
                        std::io::stdout().write_all(output.text.as_bytes())
                    };
                    Reply::Now(ack())
                }
            },
            CoreWorkerRequest::RemoveBorrower(remove) => {
                if let Ok(id) = ObjectId::from_bytes(&remove.id) {
                    self.ctx.remove_borrower(&id, &remove.borrower, remove.count);
                }
                Reply::None
            }
            CoreWorkerRequest::ReportGeneratorItem(report) => match Generators::on_report(&self.ctx, report) {
                Ok(None) => Reply::Now(ack()),
                Ok(Some(held)) => Reply::Later(Box::pin(async move {
                    held.await;
                    ack()
                })),
                Err(e) => Reply::Now(error_body(ErrorCode::Invalid, e.to_string())),
            },
            CoreWorkerRequest::GetObjectRefs(_) => Reply::Now(
                CoreWorkerReply::GetObjectRefsReply(GetObjectRefsReply { objects: self.ctx.table.describe() }).into(),
            ),
        }
    }

    fn disconnected(&self, _state: ()) {}
}
