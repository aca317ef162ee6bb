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
    ActorInfo, CreatePlacementGroup, ErrorCode, GetNamedActor, GetPlacementGroup, GetTimeline, KillActor, KvGet, KvPut,
    ListActors, ListPlacementGroups, ObjectValue, PlacementGroupInfo, PlacementGroupState, RemovePlacementGroup,
    WaitPlacementGroup,
};
use rtd_common::rpc::RpcError;
use rtd_common::{object_kind, ActorId, PlacementGroupId};

use crate::context::{system_error, Context};
use crate::error::CoreError;

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
        self.ctx.node_call(KvPut { key: key.to_string(), value: value.into() }, interrupted)?;
        Ok(())
    }

    pub(crate) fn kv_get(
        &self,
        key: &str,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Option<bytes::Bytes>, CoreError> {
        let reply = self.ctx.node_call(KvGet { key: key.to_string(), exists_only: false }, interrupted)?;
        Ok(reply.found.then_some(reply.value))
    }

    pub(crate) fn kv_exists(&self, key: &str, interrupted: &mut dyn FnMut() -> bool) -> Result<bool, CoreError> {
        Ok(self.ctx.node_call(KvGet { key: key.to_string(), exists_only: true }, interrupted)?.found)
    }

    // ------------------------------------------------------------------ actors

    pub(crate) fn get_named_actor(
        &self,
        namespace: &str,
        name: &str,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Option<ActorInfo>, CoreError> {
        let request = GetNamedActor { name: name.to_string(), namespace: namespace.to_string() };
        match self.ctx.node_call(request, interrupted) {
            Ok(info) => Ok(Some(info)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
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
        self.ctx.node_call(kill, interrupted)?;
        Ok(())
    }

    pub(crate) fn list_actors(&self, interrupted: &mut dyn FnMut() -> bool) -> Result<Vec<ActorInfo>, CoreError> {
        Ok(self.ctx.node_call(ListActors {}, interrupted)?.actors)
    }

    /// The tasks the GCS holds, as a JSON list of Chrome-trace events.
    pub(crate) fn timeline(&self, interrupted: &mut dyn FnMut() -> bool) -> Result<String, CoreError> {
        Ok(self.ctx.node_call(GetTimeline {}, interrupted)?.trace_json)
    }

    // ------------------------------------------------------------------ placement groups

    pub(crate) fn create_placement_group(
        &self,
        req: CreatePlacementGroup,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<PlacementGroupInfo, CoreError> {
        self.ctx.node_call(req, interrupted)
    }

    pub(crate) fn remove_placement_group(
        &self,
        pg_id: PlacementGroupId,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<(), CoreError> {
        let request = RemovePlacementGroup { pg_id: pg_id.to_vec().into() };
        self.ctx.node_call(request, interrupted)?;
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
        let call = self.ctx.raylet.request(WaitPlacementGroup { pg_id: pg_id.to_vec().into() });
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
            Ok(Ok(info)) => Ok(Some(info)),
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
        match self.ctx.node_call(req, interrupted) {
            Ok(info) => Ok(Some(info)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn list_placement_groups(
        &self,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Vec<PlacementGroupInfo>, CoreError> {
        Ok(self.ctx.node_call(ListPlacementGroups {}, interrupted)?.groups)
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
    match ctx.raylet.request(request).await {
        Ok(info) if info.state == PlacementGroupState::PgCreated as i32 => created,
        Ok(_) => system_error(object_kind::UNSCHEDULABLE, format!("placement group {group} was removed")),
        Err(e) if e.code() == ErrorCode::NotFound => {
            system_error(object_kind::UNSCHEDULABLE, format!("no placement group {group}"))
        }
        Err(e) => system_error(object_kind::WORKER_CRASHED, format!("waiting for placement group {group} failed: {e}")),
    }
}
