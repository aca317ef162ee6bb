//! The state API over the head's GCS: its tables converted to Ray's state schema.
//!
//! The GCS hands out copies of its entries (each manager's lock is held only while it
//! copies); everything here runs on those copies.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use rtd_common::bundle::{BundleResource, MARKER};
use rtd_common::ids::hex;
use rtd_common::proto::{
    ActorState as WireActorState, ErrorCode, GetObjectRefs, GetObjectRefsReply, JobInfo, ListLogs, ListSpilledObjects,
    ListSpilledObjectsReply, NodeInfo, ObjectRefInfo, PlacementGroupInfo, PlacementGroupState as WireGroupState,
    ReadLog, TaskEvent, TaskStatus, TaskType, WorkerInfo,
};
use rtd_common::rpc::{Request, RpcClient, RpcError};
use rtd_common::task_events::{actor_state_name, is_terminal, status_name, type_name};
use rtd_common::{PlacementGroupId, ResourceSet};
use rtd_gcs::actor_manager::ActorRecord;
use rtd_gcs::server::GcsServer;
use rtd_gcs::task_table::latest_state;

use crate::jobs::cluster::Durable;
use crate::jobs::JobsCluster;
use crate::state::{
    ActorState, BundleState, ClusterState, DeathCause, JobState, LogError, LogFileState, LogRead, NodeState,
    ObjectState, PlacementGroupState, Resources, TaskLogInfo, TaskState, WorkerState,
};

impl ClusterState for GcsServer {
    fn nodes(&self) -> Vec<NodeState> {
        GcsServer::nodes(self).iter().map(node_state).collect()
    }

    fn actors(&self) -> Vec<ActorState> {
        GcsServer::actors(self).iter().map(actor_state).collect()
    }

    fn placement_groups(&self) -> Vec<PlacementGroupState> {
        GcsServer::placement_groups(self).iter().map(placement_group_state).collect()
    }

    fn tasks(&self) -> (Vec<TaskState>, u64) {
        let (events, dropped) = self.task_events();
        (events.iter().map(task_state).collect(), dropped)
    }

    fn jobs(&self) -> Vec<JobState> {
        crate::jobs::list_jobs(self)
    }

    fn workers(&self) -> Vec<WorkerState> {
        GcsServer::workers(self).iter().map(worker_state).collect()
    }

    fn objects(&self, timeout: Duration) -> (Vec<ObjectState>, Vec<String>) {
        let processes: Vec<WorkerInfo> =
            GcsServer::workers(self).into_iter().filter(|w| w.is_alive && !w.address.is_empty()).collect();
        let nodes: Vec<NodeInfo> = GcsServer::nodes(self).into_iter().filter(|n| n.alive).collect();
        let mut asked: Vec<Call<Answer>> = processes
            .iter()
            .map(|p| answer_with(call(p.address.clone(), GetObjectRefs {}, timeout), Answer::References))
            .collect();
        asked.extend(
            nodes.iter().map(|n| answer_with(call(raylet_address(n), ListSpilledObjects {}, timeout), Answer::Spilled)),
        );
        let mut answers = block_on_all(asked);
        let spill_answers = answers.split_off(processes.len());
        let (mut objects, mut warnings) = (Vec::new(), Vec::new());
        let mut spilled = HashSet::new();
        for (node, answer) in nodes.iter().zip(spill_answers) {
            match answer {
                Ok(Answer::Spilled(reply)) => {
                    spilled.extend(reply.object_ids.iter().map(|id| (node.node_id.clone(), id.clone())))
                }
                Ok(Answer::References(_)) => {}
                Err(e) => warnings.push(format!("node {} did not say what it spilled: {e}", hex(&node.node_id))),
            }
        }
        for (process, answer) in processes.iter().zip(answers) {
            match answer {
                Ok(Answer::References(reply)) => objects.extend(reply.objects.iter().map(|o| {
                    let is_spilled = spilled.contains(&(o.node_id.clone(), o.object_id.clone()));
                    object_state(process, o, is_spilled)
                })),
                Ok(Answer::Spilled(_)) => {}
                // It exited since the worker table was read: nothing of it to show.
                Err(RpcError::Connect { .. }) => {}
                Err(e) => warnings.push(format!("process {} on {} did not answer: {e}", process.pid, process.ip)),
            }
        }
        (objects, warnings)
    }

    fn timeline(&self) -> Vec<serde_json::Value> {
        GcsServer::timeline(self)
    }

    fn list_logs(&self, node_id: &str, timeout: Duration) -> Result<Vec<LogFileState>, LogError> {
        let address = raylet_of(self, node_id)?;
        let reply = block_on_all(vec![call(address, ListLogs {}, timeout)]).pop().ok_or_else(unavailable)?;
        let files = reply.map_err(log_error)?.files;
        Ok(files.into_iter().map(|f| LogFileState { name: f.name, size: f.size, modified_ms: f.modified_ms }).collect())
    }

    fn read_log(&self, node_id: &str, read: LogRead, timeout: Duration) -> Result<(Vec<u8>, u64), LogError> {
        let address = raylet_of(self, node_id)?;
        let request = ReadLog {
            name: read.filename,
            tail_lines: read.tail_lines,
            offset: read.offset,
            range_start: read.range.map(|(start, _)| start),
            range_end: read.range.and_then(|(_, end)| end),
        };
        let reply = block_on_all(vec![call(address, request, timeout)]).pop().ok_or_else(unavailable)?;
        let reply = reply.map_err(log_error)?;
        Ok((reply.data.to_vec(), reply.end_offset))
    }
}

impl JobsCluster for GcsServer {
    fn kv_get(&self, key: &str) -> Option<bytes::Bytes> {
        GcsServer::kv_get(self, key)
    }

    fn kv_put(&self, key: &str, value: bytes::Bytes) {
        GcsServer::kv_put(self, key, value)
    }

    fn kv_delete(&self, key: &str) -> bool {
        GcsServer::kv_delete(self, key)
    }

    fn kv_keys(&self, prefix: &str) -> Vec<String> {
        GcsServer::kv_keys(self, prefix)
    }

    fn durable(&self) -> Durable {
        Box::pin(GcsServer::durable(self))
    }

    fn driver_jobs(&self) -> Vec<JobState> {
        GcsServer::jobs(self)
            .iter()
            .map(|job| {
                let mut state = job_state(job);
                state.submission_id = driver_submission(self, &hex(&job.job_id));
                state
            })
            .collect()
    }

    fn cluster_id(&self) -> String {
        GcsServer::cluster_id(self)
    }
}

/// The submission a driver said it runs for: `submission_id` in the job info its
/// `rtd.init()` publishes (`job:<job id>`), read from the job config its entrypoint
/// was given.
fn driver_submission(gcs: &GcsServer, job_id: &str) -> Option<String> {
    let info = gcs.kv_get(&format!("job:{job_id}"))?;
    let info: serde_json::Value = serde_json::from_slice(&info).ok()?;
    info.get("submission_id")?.as_str().map(String::from)
}

type Call<T> = std::pin::Pin<Box<dyn Future<Output = Result<T, RpcError>> + Send>>;

/// What the calls of one listing of objects answer: a process's references, or a
/// node's spilled objects.
enum Answer {
    References(GetObjectRefsReply),
    Spilled(ListSpilledObjectsReply),
}

fn answer_with<T: Send + 'static>(call: Call<T>, wrap: fn(T) -> Answer) -> Call<Answer> {
    Box::pin(async move { call.await.map(wrap) })
}

/// `request` to the process serving at `address`, given up after `timeout`.
fn call<R: Request>(address: String, request: R, timeout: Duration) -> Call<R::Reply> {
    Box::pin(async move {
        let asked = async {
            let client = RpcClient::connect(&address).await?;
            client.request(request).await
        };
        tokio::time::timeout(timeout, asked).await.unwrap_or_else(|_| Err(RpcError::Disconnected(address)))
    })
}

/// Runs `calls` at once on the daemon's runtime, from the blocking thread the state
/// API reads on; their answers in order.
fn block_on_all<T: Send + 'static>(calls: Vec<Call<T>>) -> Vec<Result<T, RpcError>> {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return calls.iter().map(|_| Err(RpcError::Disconnected("no runtime to call from".into()))).collect();
    };
    runtime.block_on(async {
        let tasks: Vec<_> = calls.into_iter().map(tokio::spawn).collect();
        let mut answers = Vec::with_capacity(tasks.len());
        for task in tasks {
            answers.push(task.await.unwrap_or_else(|e| Err(RpcError::Disconnected(e.to_string()))));
        }
        answers
    })
}

fn unavailable() -> LogError {
    LogError::Unavailable("the node did not answer".into())
}

fn log_error(e: RpcError) -> LogError {
    match e.code() {
        ErrorCode::NotFound => LogError::NotFound(e.to_string()),
        ErrorCode::Invalid => LogError::Invalid(e.to_string()),
        _ => LogError::Unavailable(e.to_string()),
    }
}

/// Where to reach the raylet of the node `node_id` (hex): its TCP address in a
/// multi-node cluster, else its Unix socket (a lone node, on this machine).
fn raylet_of(gcs: &GcsServer, node_id: &str) -> Result<String, LogError> {
    let node = gcs
        .nodes()
        .into_iter()
        .find(|n| hex(&n.node_id) == node_id.to_ascii_lowercase())
        .ok_or_else(|| LogError::NotFound(format!("no node {node_id:?} in the cluster")))?;
    if !node.alive {
        return Err(LogError::NotFound(format!("node {node_id} is dead; its logs are on its machine")));
    }
    Ok(raylet_address(&node))
}

/// Where the state API reaches a node's raylet: over TCP in a multi-node cluster, else
/// its socket.
fn raylet_address(node: &NodeInfo) -> String {
    if node.raylet_address.is_empty() {
        node.raylet_socket.clone()
    } else {
        node.raylet_address.clone()
    }
}

fn ms(ns: u64) -> u64 {
    ns / 1_000_000
}

fn non_empty(bytes: &[u8]) -> Option<String> {
    (!bytes.is_empty()).then(|| hex(bytes))
}

fn task_state(event: &TaskEvent) -> TaskState {
    let state = latest_state(event).unwrap_or(TaskStatus::TaskPendingArgsAvail);
    let time_of = |wanted: fn(TaskStatus) -> bool| {
        event.changes.iter().filter(|c| TaskStatus::try_from(c.state).is_ok_and(wanted)).map(|c| ms(c.time_ns)).min()
    };
    let mut changes = event.changes.clone();
    changes.sort_by_key(|c| c.time_ns);
    let events = changes
        .iter()
        .filter_map(|c| {
            let state = TaskStatus::try_from(c.state).ok()?;
            Some(serde_json::json!({"state": status_name(state), "created_ms": ms(c.time_ns)}))
        })
        .collect();
    TaskState {
        task_id: hex(&event.task_id),
        attempt_number: event.attempt,
        name: event.name.clone(),
        state: status_name(state),
        job_id: hex(&event.job_id),
        actor_id: non_empty(&event.actor_id),
        task_type: type_name(TaskType::try_from(event.r#type).unwrap_or(TaskType::NormalTask)),
        func_or_class_name: event.name.clone(),
        parent_task_id: non_empty(&event.parent_task_id),
        node_id: non_empty(&event.node_id),
        worker_id: non_empty(&event.worker_id),
        worker_pid: (event.worker_pid != 0).then_some(event.worker_pid),
        error_type: (!event.error_type.is_empty()).then(|| event.error_type.clone()),
        error_message: (!event.error_message.is_empty()).then(|| event.error_message.clone()),
        required_resources: ResourceSet::from_fixed_map(&event.required_resources).to_floats().into_iter().collect(),
        events,
        creation_time_ms: changes.first().map(|c| ms(c.time_ns)),
        start_time_ms: time_of(|s| s == TaskStatus::TaskRunning),
        end_time_ms: time_of(is_terminal),
        task_log_info: task_log_info(event),
    }
}

fn task_log_info(event: &TaskEvent) -> Option<TaskLogInfo> {
    event.stdout_start.or(event.stdout_end)?;
    let file = |suffix: &str| {
        (!event.worker_id.is_empty()).then(|| format!("worker-{}-{}.{suffix}", hex(&event.worker_id), event.worker_pid))
    };
    Some(TaskLogInfo {
        stdout_file: file("out"),
        stderr_file: file("err"),
        stdout_start: event.stdout_start,
        stdout_end: event.stdout_end,
        stderr_start: event.stderr_start,
        stderr_end: event.stderr_end,
    })
}

fn job_state(job: &JobInfo) -> JobState {
    JobState {
        job_id: Some(hex(&job.job_id)),
        submission_id: None,
        job_type: "DRIVER",
        status: if job.is_dead { "SUCCEEDED" } else { "RUNNING" },
        entrypoint: job.entrypoint.clone(),
        message: None,
        error_type: None,
        start_time: job.start_time_ms,
        end_time: job.is_dead.then_some(job.end_time_ms),
        metadata: Default::default(),
        runtime_env: serde_json::json!({}),
        driver_info: serde_json::json!({
            "id": hex(&job.job_id),
            "node_ip_address": job.driver_ip,
            "pid": job.driver_pid.to_string(),
        }),
        driver_agent_http_address: None,
        driver_node_id: Some(hex(&job.driver_node_id)),
        driver_exit_code: None,
    }
}

fn worker_state(worker: &WorkerInfo) -> WorkerState {
    WorkerState {
        worker_id: hex(&worker.worker_id),
        is_alive: worker.is_alive,
        worker_type: if worker.is_driver { "DRIVER" } else { "WORKER" },
        exit_type: None,
        node_id: hex(&worker.node_id),
        ip: worker.ip.clone(),
        pid: worker.pid,
        exit_detail: None,
        worker_launch_time_ms: worker.start_time_ms,
        start_time_ms: worker.start_time_ms,
        end_time_ms: (!worker.is_alive).then_some(worker.end_time_ms),
    }
}

fn object_state(process: &WorkerInfo, object: &ObjectRefInfo, spilled: bool) -> ObjectState {
    ObjectState {
        object_id: hex(&object.object_id),
        object_size: object.ready.then_some(object.size),
        task_status: if object.ready { "FINISHED" } else { "PENDING" },
        reference_type: object.reference_type.clone(),
        // rtd does not record where refs are made (Ray's RAY_record_ref_creation_sites=0).
        call_site: "disabled".into(),
        process_type: if process.is_driver { "DRIVER" } else { "WORKER" },
        pid: process.pid,
        ip: process.ip.clone(),
        node_id: non_empty(&object.node_id),
        owned: object.owned,
        spilled,
    }
}

/// A node's resources as floats, without those placement-group bundles add.
fn node_resources(map: Option<&rtd_common::proto::ResourceMap>) -> Resources {
    let Some(map) = map else { return Resources::new() };
    ResourceSet::from_fixed_map(&map.amounts)
        .to_floats()
        .into_iter()
        .filter(|(name, _)| BundleResource::parse(name).is_none())
        .collect()
}

fn node_state(node: &NodeInfo) -> NodeState {
    NodeState {
        node_id: hex(&node.node_id),
        node_ip: node.address.clone(),
        is_head_node: node.is_head,
        state: if node.alive { "ALIVE" } else { "DEAD" },
        state_message: None,
        // Ray names a node after its address unless told otherwise.
        node_name: node.address.clone(),
        resources_total: node_resources(node.total.as_ref()),
        resources_available: node_resources(node.available.as_ref()),
        labels: Default::default(),
        start_time_ms: (node.start_time_ms != 0).then_some(node.start_time_ms),
        end_time_ms: (node.end_time_ms != 0).then_some(node.end_time_ms),
    }
}

/// What an actor asked for, as the user wrote it: a request inside a placement group
/// is spelled in the group's resources (`CPU_group_<pg>`), named back here.
fn requested_resources(placement: &ResourceSet) -> (Resources, Option<PlacementGroupId>) {
    let mut group = None;
    let mut asked = Resources::new();
    for (name, amount) in placement.to_floats() {
        match BundleResource::parse(&name) {
            // The group-wide name carries every request; the marker is rtd's own.
            Some(bundle) if bundle.index.is_none() && bundle.resource != MARKER => {
                group = Some(bundle.group);
                asked.insert(bundle.resource, amount);
            }
            Some(bundle) => group = Some(bundle.group),
            None => {
                asked.insert(name, amount);
            }
        }
    }
    (asked, group)
}

fn actor_state(record: &ActorRecord) -> ActorState {
    let info = &record.info;
    let options = info.options.clone().unwrap_or_default();
    let state = match WireActorState::try_from(info.state) {
        Ok(WireActorState::Pending) if record.args_pending => "DEPENDENCIES_UNREADY",
        Ok(state) => actor_state_name(state),
        Err(_) => "DEAD",
    };
    let (required_resources, group) = requested_resources(&record.placement_resources);
    ActorState {
        actor_id: hex(&info.actor_id),
        class_name: options.class_name,
        state,
        job_id: hex(&record.job_id),
        name: options.name,
        node_id: record.node.map(|node| node.hex()),
        pid: info.pid,
        ray_namespace: options.namespace,
        // Ray shows "{}" for an actor without one.
        serialized_runtime_env: Some(if record.runtime_env.is_empty() {
            "{}".into()
        } else {
            record.runtime_env.clone()
        }),
        required_resources,
        death_cause: (state == "DEAD").then(|| DeathCause { error_message: info.death_cause.clone() }),
        is_detached: options.detached,
        placement_group_id: group.map(|g| g.hex()),
        repr_name: String::new(),
        num_restarts: info.num_restarts,
        num_restarts_due_to_lineage_reconstruction: 0,
    }
}

fn placement_group_state(group: &PlacementGroupInfo) -> PlacementGroupState {
    let state = match WireGroupState::try_from(group.state) {
        Ok(WireGroupState::PgPending) => "PENDING",
        Ok(WireGroupState::PgCreated) => "CREATED",
        Ok(WireGroupState::PgRemoved) | Err(_) => "REMOVED",
        Ok(WireGroupState::PgRescheduling) => "RESCHEDULING",
    };
    let bundles = group
        .bundles
        .iter()
        .enumerate()
        .map(|(index, bundle)| BundleState {
            bundle_id: index as u32,
            node_id: group.bundle_nodes.get(index).map(|node| hex(node)),
            unit_resources: ResourceSet::from_fixed_map(&bundle.resources).to_floats().into_iter().collect(),
        })
        .collect();
    PlacementGroupState {
        placement_group_id: hex(&group.pg_id),
        name: group.name.clone(),
        creator_job_id: (!group.creator_job_id.is_empty()).then(|| hex(&group.creator_job_id)),
        state,
        bundles,
        is_detached: group.detached,
        strategy: group.strategy.clone(),
        stats: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_actor_in_a_group_asks_for_what_the_user_wrote_and_names_its_group() {
        let group = PlacementGroupId([0x5a; PlacementGroupId::LEN]);
        let asked = ResourceSet::from_floats([("CPU", 1.0), ("GPU", 0.5)]).expect("valid");
        let spelled = rtd_common::bundle::request_in_group(&asked, group, Some(0));
        let (resources, found) = requested_resources(&spelled);
        assert_eq!(resources, asked.to_floats());
        assert_eq!(found, Some(group));
        let (plain, none) = requested_resources(&asked);
        assert_eq!((plain, none), (asked.to_floats(), None));
    }

    #[test]
    fn node_resources_leave_out_what_bundles_add() {
        let group = PlacementGroupId([0x5a; PlacementGroupId::LEN]);
        let mut total = ResourceSet::from_floats([("CPU", 2.0)]).expect("valid");
        total.add(&rtd_common::bundle::committed_resources(
            &ResourceSet::from_floats([("CPU", 1.0)]).expect("valid"),
            group,
            0,
        ));
        let map = rtd_common::proto::ResourceMap { amounts: total.to_fixed_map() };
        assert_eq!(node_resources(Some(&map)), Resources::from([("CPU".to_string(), 2.0)]));
    }
}
