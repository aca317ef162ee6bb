//! Submitting plain tasks from Python: `TaskOptions` says what to run and how (built
//! by `RemoteFunction.remote`), `submit_task` adds one call's arguments.

use std::collections::HashMap;

use pyo3::prelude::*;
use rtd_common::{PlacementGroupId, ResourceSet};
use rtd_core_worker::{Placement, TaskRequest};

use crate::blocking::EnterRtd;
use crate::core;
use crate::object_ref::{id_owner_pairs, ObjectRef};

/// A resource request from Python (`{"CPU": 1, "GPU": 0.5}`); bad amounts are a
/// ValueError.
pub(crate) fn resource_set(map: &HashMap<String, f64>) -> PyResult<ResourceSet> {
    ResourceSet::from_floats(map.iter().map(|(k, v)| (k.as_str(), *v)))
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))
}

/// How to run a task: the function, its results, resources, retries and placement.
#[pyclass(module = "rtd._core", frozen)]
pub struct TaskOptions {
    function_id: Vec<u8>,
    function_name: String,
    num_returns: u32,
    resources: ResourceSet,
    max_retries: i32,
    /// The pickled retry policy (empty: only system failures retry).
    retry_exceptions: Vec<u8>,
    /// Placement group the task's children use by default, if any.
    capture_placement_group: Option<PlacementGroupId>,
    placement: Placement,
}

#[pymethods]
impl TaskOptions {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (*, function_id, function_name, num_returns, resources, max_retries=0,
                        retry_exceptions=Vec::new(), capture_placement_group=None, strategy=String::new(),
                        affinity_node=String::new(), affinity_soft=false, runtime_env=String::new()))]
    fn new(
        function_id: Vec<u8>,
        function_name: String,
        num_returns: u32,
        resources: HashMap<String, f64>,
        max_retries: i32,
        retry_exceptions: Vec<u8>,
        capture_placement_group: Option<Vec<u8>>,
        strategy: String,
        affinity_node: String,
        affinity_soft: bool,
        runtime_env: String,
    ) -> PyResult<Self> {
        Ok(Self {
            function_id,
            function_name,
            num_returns,
            resources: resource_set(&resources)?,
            max_retries,
            retry_exceptions,
            capture_placement_group: capture_placement_group
                .map(|id| PlacementGroupId::from_bytes(&id))
                .transpose()
                .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?,
            placement: Placement { strategy, affinity_node, affinity_soft, runtime_env },
        })
    }
}

/// Submits one call of the task `options` describes, with pickled `args` and the refs
/// passed as arguments (`arg_refs`) or pickled inside them (`contained`).
#[pyfunction]
#[pyo3(signature = (options, args, arg_refs, contained=Vec::new()))]
pub fn submit_task(
    py: Python<'_>,
    options: &TaskOptions,
    args: Vec<u8>,
    arg_refs: Vec<PyRef<'_, ObjectRef>>,
    contained: Vec<PyRef<'_, ObjectRef>>,
) -> PyResult<Vec<ObjectRef>> {
    let core = core()?;
    let request = TaskRequest {
        function_id: options.function_id.clone(),
        function_name: options.function_name.clone(),
        args,
        arg_refs: id_owner_pairs(&arg_refs),
        contained_refs: id_owner_pairs(&contained),
        num_returns: options.num_returns,
        resources: options.resources.clone(),
        max_retries: options.max_retries,
        retry_exceptions: options.retry_exceptions.clone(),
        actor: None,
        capture_placement_group: options.capture_placement_group,
        placement: options.placement.clone(),
    };
    let ids = py.enter_rtd_ok(|| core.submit_task(request))?;
    let owner = core.address().to_string();
    Ok(ids.into_iter().map(|id| ObjectRef::new(&core, id, owner.clone())).collect())
}
