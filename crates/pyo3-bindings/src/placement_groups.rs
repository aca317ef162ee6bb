//! Placement groups from Python: create, wait (or an ObjectRef for `ready()`), look up,
//! list and remove; and the bundle resources work in a group asks for.

use std::collections::{BTreeMap, HashMap};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use rtd_common::bundle;
use rtd_common::proto::{Bundle, CreatePlacementGroup, PlacementGroupInfo, PlacementGroupState};
use rtd_common::{PlacementGroupId, ResourceSet};

use crate::blocking::EnterRtd;
use crate::core;
use crate::object_ref::ObjectRef;
use crate::tasks::resource_set;

fn placement_group_id(bytes: &[u8]) -> PyResult<PlacementGroupId> {
    PlacementGroupId::from_bytes(bytes).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))
}

fn info_to_py(py: Python<'_>, info: PlacementGroupInfo) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    let state = match PlacementGroupState::try_from(info.state).unwrap_or(PlacementGroupState::PgPending) {
        PlacementGroupState::PgPending => "PENDING",
        PlacementGroupState::PgCreated => "CREATED",
        PlacementGroupState::PgRemoved => "REMOVED",
        PlacementGroupState::PgRescheduling => "RESCHEDULING",
    };
    let bundles: Vec<_> = info.bundles.iter().map(|b| ResourceSet::from_fixed_map(&b.resources).to_floats()).collect();
    let nodes: Vec<String> = info
        .bundle_nodes
        .iter()
        .map(|n| rtd_common::NodeId::from_bytes(n).map(|id| id.hex()).unwrap_or_default())
        .collect();
    d.set_item("pg_id", PyBytes::new(py, &info.pg_id))?;
    d.set_item("name", info.name)?;
    d.set_item("strategy", info.strategy)?;
    d.set_item("state", state)?;
    d.set_item("bundles", bundles)?;
    d.set_item("bundle_nodes", nodes)?;
    d.set_item("detached", info.detached)?;
    Ok(d)
}

/// Creates a group with a new id; its info says the id and whether it is placed yet.
#[pyfunction]
pub fn create_placement_group<'py>(
    py: Python<'py>,
    name: String,
    strategy: String,
    bundles: Vec<HashMap<String, f64>>,
    detached: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let core = core()?;
    let bundles = bundles
        .iter()
        .map(|b| resource_set(b).map(|set| Bundle { resources: set.to_fixed_map() }))
        .collect::<PyResult<Vec<_>>>()?;
    let pg_id = PlacementGroupId::random().to_vec().into();
    let creator_job_id = core.job_id().to_vec().into();
    let req = CreatePlacementGroup { pg_id, name, strategy, bundles, detached, creator_job_id };
    let info = py.enter_rtd(|interrupted| core.create_placement_group(req, interrupted))?;
    info_to_py(py, info)
}

#[pyfunction]
pub fn remove_placement_group(py: Python<'_>, pg_id: Vec<u8>) -> PyResult<()> {
    let core = core()?;
    let pg_id = placement_group_id(&pg_id)?;
    py.enter_rtd(|interrupted| core.remove_placement_group(pg_id, interrupted))
}

/// The group's info once created (or removed), or None after `timeout` seconds.
#[pyfunction]
#[pyo3(signature = (pg_id, timeout=None))]
pub fn wait_placement_group(
    py: Python<'_>,
    pg_id: Vec<u8>,
    timeout: Option<f64>,
) -> PyResult<Option<Bound<'_, PyDict>>> {
    let core = core()?;
    let pg_id = placement_group_id(&pg_id)?;
    let timeout = crate::timeout_of(timeout)?;
    match py.enter_rtd(|interrupted| core.wait_placement_group(pg_id, timeout, interrupted))? {
        Some(info) => Ok(Some(info_to_py(py, info)?)),
        None => Ok(None),
    }
}

/// `PlacementGroup.ready()`: an ObjectRef this process owns that resolves to `payload`
/// (the pickled group) once the group is created; no task runs.
#[pyfunction]
pub fn placement_group_ready(py: Python<'_>, pg_id: Vec<u8>, payload: &[u8]) -> PyResult<ObjectRef> {
    let core = core()?;
    let pg_id = placement_group_id(&pg_id)?;
    let id = py.enter_rtd(|_| core.placement_group_ready(pg_id, payload))?;
    Ok(ObjectRef::new(&core, id, core.address().to_string()))
}

#[pyfunction]
#[pyo3(signature = (pg_id=None, name=None))]
pub fn get_placement_group(
    py: Python<'_>,
    pg_id: Option<Vec<u8>>,
    name: Option<String>,
) -> PyResult<Option<Bound<'_, PyDict>>> {
    let core = core()?;
    let pg_id = pg_id.as_deref().map(placement_group_id).transpose()?;
    let name = name.unwrap_or_default();
    match py.enter_rtd(|interrupted| core.get_placement_group(pg_id, &name, interrupted))? {
        Some(info) => Ok(Some(info_to_py(py, info)?)),
        None => Ok(None),
    }
}

#[pyfunction]
pub fn list_placement_groups(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let core = core()?;
    let groups = py.enter_rtd(|interrupted| core.list_placement_groups(interrupted))?;
    groups.into_iter().map(|g| info_to_py(py, g)).collect()
}

/// The resources work asking for `resources` asks for in bundle `index` (-1: any
/// bundle) of placement group `pg_id` (see `rtd_common::bundle`).
#[pyfunction]
pub fn bundle_request(resources: HashMap<String, f64>, pg_id: Vec<u8>, index: i64) -> PyResult<BTreeMap<String, f64>> {
    let group = placement_group_id(&pg_id)?;
    let index = match index {
        -1 => None,
        i => Some(u32::try_from(i).map_err(|_| {
            pyo3::exceptions::PyValueError::new_err(format!("bundle index {i} is out of range (use -1 for any bundle)"))
        })?),
    };
    Ok(bundle::request_in_group(&resource_set(&resources)?, group, index).to_floats())
}

/// The placement group (id bytes) whose bundle resources are among `names`, or None.
#[pyfunction]
pub fn placement_group_of_resources(py: Python<'_>, names: Vec<String>) -> Option<Bound<'_, PyBytes>> {
    bundle::group_of_any(names.iter().map(String::as_str)).map(|group| PyBytes::new(py, group.as_bytes()))
}
