//! Actor calls from Python: creating actors, calling their methods, finding them by
//! name, killing them, and counting the handles this process holds.

use std::collections::HashMap;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use rtd_common::proto::{ActorInfo, ActorOptions, ActorState};
use rtd_common::task_events::actor_state_name;
use rtd_common::{ActorId, ResourceSet};
use rtd_core_worker::{ActorCall, Placement, TaskRequest};

use crate::blocking::EnterRtd;
use crate::object_ref::{id_owner_pairs, ObjectRef};
use crate::tasks::resource_set;
use crate::{core, core_if_connected};

fn actor_id(bytes: &[u8]) -> PyResult<ActorId> {
    ActorId::from_bytes(bytes).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))
}

/// An actor's state as a dict (Ray's state names).
fn info_to_py(py: Python<'_>, info: ActorInfo) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    let state = actor_state_name(ActorState::try_from(info.state).unwrap_or(ActorState::Pending));
    let options = info.options.unwrap_or_default();
    d.set_item("actor_id", PyBytes::new(py, &info.actor_id))?;
    d.set_item("state", state)?;
    d.set_item("pid", info.pid)?;
    d.set_item("num_restarts", info.num_restarts)?;
    d.set_item("death_cause", info.death_cause)?;
    d.set_item("name", options.name)?;
    d.set_item("namespace", options.namespace)?;
    d.set_item("class_name", options.class_name)?;
    d.set_item("class_meta", PyBytes::new(py, &options.class_meta))?;
    d.set_item("detached", options.detached)?;
    Ok(d)
}

/// How to create an actor: its class, where it may be placed, what it holds while it
/// runs, and its lifetime options (`ActorClass.remote` builds it).
#[pyclass(module = "rtd._core", frozen)]
pub struct ActorCreationOptions {
    class_id: Vec<u8>,
    /// Resources the constructor needs to be placed.
    placement: ResourceSet,
    options: ActorOptions,
    /// The runtime_env its worker runs in (canonical JSON, packages uploaded; empty: none).
    runtime_env: String,
}

#[pymethods]
impl ActorCreationOptions {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (*, class_id, class_name, placement, running, class_meta, name=String::new(),
                        namespace=String::new(), detached=false, max_restarts=0, max_task_retries=0,
                        get_if_exists=false, strategy=String::new(), affinity_node=String::new(),
                        affinity_soft=false, runtime_env=String::new()))]
    fn new(
        class_id: Vec<u8>,
        class_name: String,
        placement: HashMap<String, f64>,
        running: HashMap<String, f64>,
        class_meta: Vec<u8>,
        name: String,
        namespace: String,
        detached: bool,
        max_restarts: i32,
        max_task_retries: i32,
        get_if_exists: bool,
        strategy: String,
        affinity_node: String,
        affinity_soft: bool,
        runtime_env: String,
    ) -> PyResult<Self> {
        Ok(Self {
            class_id,
            runtime_env,
            placement: resource_set(&placement)?,
            options: ActorOptions {
                name,
                namespace,
                detached,
                max_restarts,
                max_task_retries,
                get_if_exists,
                class_name,
                class_meta: class_meta.into(),
                running_resources: resource_set(&running)?.to_fixed_map(),
                strategy,
                affinity_node,
                affinity_soft,
            },
        })
    }
}

/// Creates the actor `options` describes, with a new id, its constructor's pickled
/// `args` and the refs passed as arguments (`arg_refs`) or pickled inside them
/// (`contained`). Its info's `created` is False when `get_if_exists` found an actor of
/// that name instead.
#[pyfunction]
#[pyo3(signature = (options, args, arg_refs, contained=Vec::new()))]
pub fn create_actor<'py>(
    py: Python<'py>,
    options: &ActorCreationOptions,
    args: Vec<u8>,
    arg_refs: Vec<PyRef<'py, ObjectRef>>,
    contained: Vec<PyRef<'py, ObjectRef>>,
) -> PyResult<Bound<'py, PyDict>> {
    let core = core()?;
    let id = ActorId::random();
    let request = TaskRequest {
        function_id: options.class_id.clone(),
        function_name: format!("{}.__init__", options.options.class_name),
        args,
        arg_refs: id_owner_pairs(&arg_refs),
        contained_refs: id_owner_pairs(&contained),
        num_returns: 1,
        resources: options.placement.clone(),
        max_retries: 0,
        retry_exceptions: Vec::new(),
        actor: Some(ActorCall {
            actor_id: id,
            creation: true,
            method_name: String::new(),
            concurrency_group: String::new(),
        }),
        capture_placement_group: None,
        placement: Placement { runtime_env: options.runtime_env.clone(), ..Default::default() },
    };
    let actor_options = options.options.clone();
    let info = py.enter_rtd(|_| core.create_actor(request, actor_options))?;
    // With get_if_exists the answer may be an actor that existed before this call.
    let created = info.actor_id.as_ref() == id.as_bytes();
    let info = info_to_py(py, info)?;
    info.set_item("created", created)?;
    Ok(info)
}

#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (actor_id, method_name, function_name, args, arg_refs, num_returns, concurrency_group,
                    contained=Vec::new()))]
pub fn submit_actor_task(
    py: Python<'_>,
    actor_id: Vec<u8>,
    method_name: String,
    function_name: String,
    args: Vec<u8>,
    arg_refs: Vec<PyRef<'_, ObjectRef>>,
    num_returns: u32,
    concurrency_group: String,
    contained: Vec<PyRef<'_, ObjectRef>>,
) -> PyResult<Vec<ObjectRef>> {
    let core = core()?;
    let id = self::actor_id(&actor_id)?;
    let request = TaskRequest {
        function_id: Vec::new(),
        function_name,
        args,
        arg_refs: id_owner_pairs(&arg_refs),
        contained_refs: id_owner_pairs(&contained),
        num_returns,
        resources: ResourceSet::new(),
        max_retries: 0,
        retry_exceptions: Vec::new(),
        actor: Some(ActorCall { actor_id: id, creation: false, method_name, concurrency_group }),
        capture_placement_group: None,
        placement: Default::default(),
    };
    let ids = py.enter_rtd_ok(|| core.submit_task(request))?;
    let owner = core.address().to_string();
    Ok(ids.into_iter().map(|id| ObjectRef::new(&core, id, owner.clone())).collect())
}

#[pyfunction]
pub fn get_named_actor<'py>(py: Python<'py>, name: String, namespace: String) -> PyResult<Option<Bound<'py, PyDict>>> {
    let core = core()?;
    match py.enter_rtd(|interrupted| core.get_named_actor(&namespace, &name, interrupted))? {
        Some(info) => Ok(Some(info_to_py(py, info)?)),
        None => Ok(None),
    }
}

#[pyfunction]
#[pyo3(signature = (actor_id, no_restart, cause=String::new()))]
pub fn kill_actor(py: Python<'_>, actor_id: Vec<u8>, no_restart: bool, cause: String) -> PyResult<()> {
    let core = core()?;
    let id = self::actor_id(&actor_id)?;
    py.enter_rtd(|interrupted| core.kill_actor(id, no_restart, &cause, interrupted))
}

#[pyfunction]
pub fn list_actors(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let core = core()?;
    let actors = py.enter_rtd(|interrupted| core.list_actors(interrupted))?;
    actors.into_iter().map(|info| info_to_py(py, info)).collect()
}

#[pyfunction]
pub fn add_actor_handle(actor_id: Vec<u8>) -> PyResult<()> {
    core()?.add_actor_handle(self::actor_id(&actor_id)?);
    Ok(())
}

/// Safe at interpreter exit: does nothing once disconnected.
#[pyfunction]
pub fn remove_actor_handle(actor_id: Vec<u8>) -> PyResult<()> {
    if let Some(core) = core_if_connected() {
        core.remove_actor_handle(self::actor_id(&actor_id)?);
    }
    Ok(())
}

#[pyfunction]
pub fn mark_actor_handle_escaped(actor_id: Vec<u8>) -> PyResult<()> {
    if let Some(core) = core_if_connected() {
        core.mark_actor_handle_escaped(self::actor_id(&actor_id)?);
    }
    Ok(())
}
