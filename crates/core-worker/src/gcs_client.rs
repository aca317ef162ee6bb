//! Requests the GCS answers: the KV store, actors by name, and placement groups. They
//! travel through this node's raylet, which passes them on, so the process keeps one
//! connection for all of them.
//!
//! Every call here may block on another machine, so each takes the caller's interrupt
//! check (Ctrl-C); a placement group's `wait` may block for as long as the cluster
//! lacks room for it.

use std::sync::Arc;
use std::time::Duration;

use rtd_common::proto::{
    frame::Body, ActorInfo, CreatePlacementGroup, ErrorCode, GetNamedActor, GetPlacementGroup, GetTimeline, KillActor,
    KvGet, KvPut, ListActors, ListPlacementGroups, ObjectValue, PlacementGroupInfo, PlacementGroupState,
    RemovePlacementGroup, WaitPlacementGroup,
};
use rtd_common::rpc::RpcError;
use rtd_common::{object_kind, ActorId, PlacementGroupId};

use crate::context::{system_error, Context};
use crate::error::CoreError;

/// An unexpected answer to `request`.
fn unexpected(request: &str) -> CoreError {
    CoreError::Internal(format!("unexpected reply to {request}"))
}

fn is_not_found(e: &CoreError) -> bool {
    matches!(e, CoreError::Rpc(RpcError::Remote { code: ErrorCode::NotFound, .. }))
}

pub(crate) struct GcsClient {
    ctx: Arc<Context>,
}

impl GcsClient {
    pub(crate) fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }

    pub(crate) fn kv_put(
        &self,
        key: &str,
        value: Vec<u8>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<(), CoreError> {
        self.ctx.node_call(Body::KvPut(KvPut { key: key.to_string(), value: value.into() }), interrupted)?;
        Ok(())
    }

    pub(crate) fn kv_get(
        &self,
        key: &str,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Option<bytes::Bytes>, CoreError> {
        match self.ctx.node_call(Body::KvGet(KvGet { key: key.to_string() }), interrupted)? {
            Body::KvGetReply(r) if r.found => Ok(Some(r.value)),
            _ => Ok(None),
        }
    }

    // ------------------------------------------------------------------ actors

    pub(crate) fn get_named_actor(
        &self,
        namespace: &str,
        name: &str,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Option<ActorInfo>, CoreError> {
        let request = GetNamedActor { name: name.to_string(), namespace: namespace.to_string() };
        match self.ctx.node_call(Body::GetNamedActor(request), interrupted) {
            Ok(Body::ActorInfo(info)) => Ok(Some(info)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
            Ok(_) => Err(unexpected("GetNamedActor")),
        }
    }

    /// Ends an actor (`cause` empty: killed with `rtd.kill()`).
    pub(crate) fn kill_actor(
        &self,
        actor_id: ActorId,
        no_restart: bool,
        cause: &str,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<(), CoreError> {
        let kill = KillActor { actor_id: actor_id.to_vec().into(), no_restart, cause: cause.to_string() };
        self.ctx.node_call(Body::KillActor(kill), interrupted)?;
        Ok(())
    }

    pub(crate) fn list_actors(&self, interrupted: &mut dyn FnMut() -> bool) -> Result<Vec<ActorInfo>, CoreError> {
        match self.ctx.node_call(Body::ListActors(ListActors {}), interrupted)? {
            Body::ListActorsReply(r) => Ok(r.actors),
            _ => Err(unexpected("ListActors")),
        }
    }

    /// The tasks the GCS holds, as a JSON list of Chrome-trace events.
    pub(crate) fn timeline(&self, interrupted: &mut dyn FnMut() -> bool) -> Result<String, CoreError> {
        match self.ctx.node_call(Body::GetTimeline(GetTimeline {}), interrupted)? {
            Body::GetTimelineReply(r) => Ok(r.trace_json),
            _ => Err(unexpected("GetTimeline")),
        }
    }

    // ------------------------------------------------------------------ placement groups

    pub(crate) fn create_placement_group(
        &self,
        req: CreatePlacementGroup,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<PlacementGroupInfo, CoreError> {
        match self.ctx.node_call(Body::CreatePlacementGroup(req), interrupted)? {
            Body::PlacementGroupInfo(info) => Ok(info),
            _ => Err(unexpected("CreatePlacementGroup")),
        }
    }

    pub(crate) fn remove_placement_group(
        &self,
        pg_id: PlacementGroupId,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<(), CoreError> {
        let request = RemovePlacementGroup { pg_id: pg_id.to_vec().into() };
        self.ctx.node_call(Body::RemovePlacementGroup(request), interrupted)?;
        Ok(())
    }

    /// The group's info once it is created or removed; None if `timeout` passes first
    /// (no timeout: wait as long as it takes).
    pub(crate) fn wait_placement_group(
        &self,
        pg_id: PlacementGroupId,
        timeout: Option<Duration>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Option<PlacementGroupInfo>, CoreError> {
        let call = self.ctx.raylet.call(Body::WaitPlacementGroup(WaitPlacementGroup { pg_id: pg_id.to_vec().into() }));
        let waited = self.ctx.block_on(
            async {
                match timeout {
                    Some(timeout) => tokio::time::timeout(timeout, call).await,
                    None => Ok(call.await),
                }
            },
            interrupted,
        )?;
        match waited {
            Err(_) => Ok(None),
            Ok(Ok(Body::PlacementGroupInfo(info))) => Ok(Some(info)),
            Ok(Ok(_)) => Err(unexpected("WaitPlacementGroup")),
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// The group with this id, or without one the live group named `name`.
    pub(crate) fn get_placement_group(
        &self,
        pg_id: Option<PlacementGroupId>,
        name: &str,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Option<PlacementGroupInfo>, CoreError> {
        let pg_id = pg_id.map(|id| id.to_vec()).unwrap_or_default();
        let req = GetPlacementGroup { pg_id: pg_id.into(), name: name.to_string() };
        match self.ctx.node_call(Body::GetPlacementGroup(req), interrupted) {
            Ok(Body::PlacementGroupInfo(info)) => Ok(Some(info)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
            Ok(_) => Err(unexpected("GetPlacementGroup")),
        }
    }

    pub(crate) fn list_placement_groups(
        &self,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Vec<PlacementGroupInfo>, CoreError> {
        match self.ctx.node_call(Body::ListPlacementGroups(ListPlacementGroups {}), interrupted)? {
            Body::ListPlacementGroupsReply(r) => Ok(r.groups),
            _ => Err(unexpected("ListPlacementGroups")),
        }
    }
}

/// The value `PlacementGroup.ready()`'s object takes: `created` once the GCS reports
/// the group created, else the error a task in a removed group gets.
pub(crate) async fn placement_group_outcome(
    ctx: Arc<Context>,
    pg_id: PlacementGroupId,
    created: ObjectValue,
) -> ObjectValue {
    let group = pg_id.hex();
    let request = WaitPlacementGroup { pg_id: pg_id.to_vec().into() };
    match ctx.raylet.call(Body::WaitPlacementGroup(request)).await {
        Ok(Body::PlacementGroupInfo(info)) if info.state == PlacementGroupState::PgCreated as i32 => created,
        Ok(Body::PlacementGroupInfo(_)) => {
            system_error(object_kind::UNSCHEDULABLE, format!("placement group {group} was removed"))
        }
        Ok(_) => system_error(object_kind::WORKER_CRASHED, "unexpected reply to WaitPlacementGroup".into()),
        Err(e) if e.code() == ErrorCode::NotFound => {
            system_error(object_kind::UNSCHEDULABLE, format!("no placement group {group}"))
        }
        Err(e) => system_error(object_kind::WORKER_CRASHED, format!("waiting for placement group {group} failed: {e}")),
    }
}
