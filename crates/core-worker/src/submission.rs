//! Where tasks and actors enter the core worker: a request from the API becomes a
//! `TaskSpec` whose results this process owns, and goes to the task submitter (leases)
//! or the actor submitter (one ordered queue per actor). Actor creation is registered
//! with the GCS, which places the actor and runs its constructor.
//!
//! The process that created an actor owns it: it counts its handles, and once the last
//! one is gone (and none was pickled away) a non-detached actor ends after its pending
//! calls.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rtd_common::proto::{
    ActorArgsReady, ActorInfo, ActorOptions, ActorState, CreateActor, ObjectRefProto, TaskArg, TaskSpec, TaskStatus,
    WaitActor,
};
use rtd_common::{ActorId, JobId, ObjectId, PlacementGroupId, ResourceSet, TaskId};

use crate::actor_submitter::ActorSubmitter;
use crate::context::Context;
use crate::error::CoreError;
use crate::submitter::{resolve_args, TaskSubmitter};

/// A task as the API hands it over.
pub struct TaskRequest {
    pub function_id: Vec<u8>,
    pub function_name: String,
    pub args: Vec<u8>,
    pub arg_refs: Vec<(ObjectId, String)>,
    /// Refs pickled inside `args`.
    pub contained_refs: Vec<(ObjectId, String)>,
    pub num_returns: u32,
    pub resources: ResourceSet,
    pub max_retries: i32,
    pub retry_exceptions: Vec<u8>,
    pub actor: Option<ActorCall>,
    /// Placement group that tasks submitted by this task use by default.
    pub capture_placement_group: Option<PlacementGroupId>,
    pub placement: Placement,
}

/// Where a task may run, besides its resources.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    /// "DEFAULT" (or empty) or "SPREAD".
    pub strategy: String,
    /// Node affinity: a node's hex id (empty: none), and whether it is soft.
    pub affinity_node: String,
    pub affinity_soft: bool,
    /// The runtime_env its worker must run in (canonical JSON, packages uploaded; empty: none).
    pub runtime_env: String,
}

/// What makes a task an actor task.
pub struct ActorCall {
    pub actor_id: ActorId,
    /// The constructor (else a method call).
    pub creation: bool,
    pub method_name: String,
    pub concurrency_group: String,
}

/// How many handles to an actor this process holds, and whether one left it.
#[derive(Default)]
struct HandleCount {
    count: u32,
    escaped: bool,
}

pub(crate) struct Submission {
    ctx: Arc<Context>,
    tasks: TaskSubmitter,
    actors: ActorSubmitter,
    /// Handles to actors this process created (the owner decides their end).
    owned_actor_handles: Mutex<HashMap<ActorId, HandleCount>>,
}

impl Submission {
    pub(crate) fn new(ctx: Arc<Context>, tasks: TaskSubmitter, actors: ActorSubmitter) -> Self {
        Self { ctx, tasks, actors, owned_actor_handles: Default::default() }
    }

    /// The spec of a new task of `job` and the ids of its results (registered as
    /// pending).
    fn build_spec(&self, req: TaskRequest, job: JobId) -> (TaskSpec, Vec<ObjectId>) {
        let task_id = TaskId::random();
        let return_ids: Vec<ObjectId> = (0..req.num_returns).map(|i| ObjectId::for_return(&task_id, i)).collect();
        // A constructor's result goes to the GCS, not to us.
        let creation = req.actor.as_ref().is_some_and(|a| a.creation);
        if !creation {
            for id in &return_ids {
                self.ctx.table.add_owned_pending(*id, &self.ctx.address);
            }
        }
        let hold = |id: &ObjectId, owner: &String| {
            self.ctx.note_borrow(self.ctx.table.add_task_ref(*id, owner, &self.ctx.address));
            ObjectRefProto { id: id.to_vec().into(), owner: owner.clone() }
        };
        let arg_refs = req
            .arg_refs
            .iter()
            .map(|(id, owner)| TaskArg { r#ref: Some(hold(id, owner)), value: self.ctx.table.get_value(id) })
            .collect();
        let contained_refs = req.contained_refs.iter().map(|(id, owner)| hold(id, owner)).collect();
        let (actor_id, actor_creation, method_name, concurrency_group) = match req.actor {
            Some(a) => (a.actor_id.to_vec().into(), a.creation, a.method_name, a.concurrency_group),
            None => (Default::default(), false, String::new(), String::new()),
        };
        let spec = TaskSpec {
            task_id: task_id.to_vec().into(),
            job_id: job.to_vec().into(),
            function_id: req.function_id.into(),
            function_name: req.function_name,
            args: req.args.into(),
            arg_refs,
            return_ids: return_ids.iter().map(|id| id.to_vec().into()).collect(),
            resources: req.resources.to_fixed_map(),
            owner: self.ctx.address.clone(),
            max_retries: req.max_retries,
            retry_exceptions: req.retry_exceptions.into(),
            attempt: 0,
            actor_id,
            actor_creation,
            method_name,
            concurrency_group,
            capture_placement_group: req.capture_placement_group.map(|g| g.to_vec()).unwrap_or_default().into(),
            scheduling_strategy: req.placement.strategy,
            affinity_node: req.placement.affinity_node,
            affinity_soft: req.placement.affinity_soft,
            runtime_env: req.placement.runtime_env,
            contained_refs,
        };
        (spec, return_ids)
    }

    pub(crate) fn submit_task(&self, req: TaskRequest, job: JobId, parent: Option<TaskId>) -> Vec<ObjectId> {
        let actor_id = req.actor.as_ref().map(|a| a.actor_id);
        let (spec, return_ids) = self.build_spec(req, job);
        self.ctx.task_events.submitted(&spec, parent, first_state(&spec));
        match actor_id {
            Some(actor_id) => self.actors.submit(actor_id, spec),
            None => self.tasks.submit(spec),
        }
        return_ids
    }

    /// Registers an actor with the GCS, which places it and runs its constructor.
    /// Arguments are resolved first. Returns the actor's info (with `get_if_exists`,
    /// possibly an existing actor's).
    ///
    /// Not interruptible: once the GCS may have the actor, the arguments must stay
    /// referenced, so the registration is always seen through.
    pub(crate) fn create_actor(
        &self,
        req: TaskRequest,
        options: ActorOptions,
        job: JobId,
        parent: Option<TaskId>,
    ) -> Result<ActorInfo, CoreError> {
        let (spec, _) = self.build_spec(req, job);
        self.ctx.task_events.submitted(&spec, parent, first_state(&spec));
        // The arguments stay referenced while the actor may (re)run its constructor:
        // until it is dead for good.
        let args_pending = spec.arg_refs.iter().any(|arg| arg.value.is_none() && arg.r#ref.is_some());
        let create = CreateActor { spec: Some(spec.clone()), options: Some(options), args_pending };
        let info = match self.ctx.node_call(create, &mut || false) {
            Ok(info) => info,
            Err(e) => {
                self.ctx.release_task_args(&spec);
                return Err(e);
            }
        };
        if info.actor_id != spec.actor_id {
            // `get_if_exists` found an existing actor: this one is never created.
            self.ctx.release_task_args(&spec);
            return Ok(info);
        }
        let holds_refs = !spec.arg_refs.is_empty() || !spec.contained_refs.is_empty();
        let ctx = self.ctx.clone();
        // As in Ray, `.remote()` returns at once; the actor is placed when the arguments
        // are ready.
        self.ctx.rt.spawn(async move {
            let spec = if args_pending {
                let spec = resolve_args(ctx.clone(), spec).await;
                let ready = ActorArgsReady { spec: Some(spec.clone()) };
                if let Err(e) = ctx.raylet.request(ready).await {
                    tracing::warn!("cannot hand the actor's constructor arguments to the GCS: {e}");
                }
                spec
            } else {
                spec
            };
            if holds_refs {
                release_args_when_dead(ctx, spec).await;
            }
        });
        Ok(info)
    }

    /// Cancels the task that creates `id` (only the owner can).
    pub(crate) fn cancel(&self, id: &ObjectId, force: bool) -> Result<(), CoreError> {
        if !self.ctx.table.is_owned(id) {
            return Err(CoreError::Invalid(format!(
                "only the owner of object {id} can cancel the task that creates it"
            )));
        }
        self.tasks.cancel(id.task_id(), force);
        Ok(())
    }

    /// A handle to an actor this process created was made.
    pub(crate) fn add_actor_handle(&self, actor_id: ActorId) {
        self.owned_actor_handles.lock().entry(actor_id).or_default().count += 1;
    }

    /// A handle was dropped; the last one (if none escaped) ends a non-detached actor
    /// once its pending calls are done.
    pub(crate) fn remove_actor_handle(&self, actor_id: ActorId) {
        let mut handles = self.owned_actor_handles.lock();
        let Some(h) = handles.get_mut(&actor_id) else { return };
        h.count = h.count.saturating_sub(1);
        if h.count == 0 {
            let escaped = h.escaped;
            handles.remove(&actor_id);
            if !escaped {
                self.actors.handles_gone(actor_id);
            }
        }
    }

    /// A handle was pickled: some other process may call the actor from now on.
    pub(crate) fn mark_actor_handle_escaped(&self, actor_id: ActorId) {
        if let Some(h) = self.owned_actor_handles.lock().get_mut(&actor_id) {
            h.escaped = true;
        }
    }
}

/// Where a new task starts: waiting for its arguments, or already for a worker.
fn first_state(spec: &TaskSpec) -> TaskStatus {
    if spec.arg_refs.iter().all(|a| a.value.is_some()) {
        TaskStatus::TaskPendingNodeAssignment
    } else {
        TaskStatus::TaskPendingArgsAvail
    }
}

/// Releases an actor's constructor arguments once the GCS reports it dead for good
/// (or cannot say: then no restart will need them either).
async fn release_args_when_dead(ctx: Arc<Context>, spec: TaskSpec) {
    let actor_id = spec.actor_id.clone();
    let mut after_epoch = 0;
    loop {
        let wait = WaitActor { actor_id: actor_id.clone(), after_epoch };
        match ctx.raylet.request(wait).await {
            Ok(info) if info.state != ActorState::Dead as i32 => {
                after_epoch = info.epoch;
            }
            _ => break,
        }
    }
    ctx.release_task_args(&spec);
}
