//! Placement groups from Python: create, wait (or an ObjectRef for `ready()`), look up,
//! list and remove.

use std::collections::HashMap;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use rtd_common::proto::{Bundle, CreatePlacementGroup, PlacementGroupInfo, PlacementGroupState};
use rtd_common::ResourceSet;

use crate::blocking::EnterRtd;
use crate::core;
use crate::object_ref::ObjectRef;

fn info_to_py(py: Python<'_>, info: PlacementGroupInfo) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    let state = match PlacementGroupState::try_from(info.state).unwrap_or(PlacementGroupState::PgPending) {
        PlacementGroupState::PgPending => "PENDING",
        PlacementGroupState::PgCreated => "CREATED",
        PlacementGroupState::PgRemoved => "REMOVED",
        PlacementGroupState::PgRescheduling => "RESCHEDULING",
    };
    let bundles: Vec<_> = info
        .bundles
        .iter()
        .map(|b| ResourceSet::from_fixed_map(&b.resources).to_floats())
        .collect();
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

#[pyfunction]
pub fn create_placement_group<'py>(
    py: Python<'py>,
    pg_id: Vec<u8>,
    name: String,
    strategy: String,
    bundles: Vec<HashMap<String, f64>>,
    detached: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let core = core()?;
    let bundles = bundles
        .iter()
        .map(|b| {
            ResourceSet::from_floats(b.iter().map(|(k, v)| (k.as_str(), *v)))
                .map(|set| Bundle { resources: set.to_fixed_map() })
                .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))
        })
        .collect::<PyResult<Vec<_>>>()?;
    let req = CreatePlacementGroup { pg_id: pg_id.into(), name, strategy, bundles, detached };
    let info = py.enter_rtd(|interrupted| core.create_placement_group(req, interrupted))?;
    info_to_py(py, info)
}

#[pyfunction]
pub fn remove_placement_group(py: Python<'_>, pg_id: Vec<u8>) -> PyResult<()> {
    let core = core()?;
    py.enter_rtd(|interrupted| core.remove_placement_group(&pg_id, interrupted))
}

/// The group's info once created (or removed), or None after `timeout` seconds.
#[pyfunction]
#[pyo3(signature = (pg_id, timeout=None))]
pub fn wait_placement_group(py: Python<'_>, pg_id: Vec<u8>, timeout: Option<f64>) -> PyResult<Option<Bound<'_, PyDict>>> {
    let core = core()?;
    let timeout = crate::timeout_of(timeout)?;
    match py.enter_rtd(|interrupted| core.wait_placement_group(&pg_id, timeout, interrupted))? {
        Some(info) => Ok(Some(info_to_py(py, info)?)),
        None => Ok(None),
    }
}

/// `PlacementGroup.ready()`: an ObjectRef this process owns that resolves to `payload`
/// (the pickled group) once the group is created; no task runs.
#[pyfunction]
pub fn placement_group_ready(py: Python<'_>, pg_id: Vec<u8>, payload: &[u8]) -> PyResult<ObjectRef> {
    let core = core()?;
    let id = py.enter_rtd(|_| core.placement_group_ready(&pg_id, payload))?;
    Ok(ObjectRef::new(&core, id, core.address().to_string()))
}

#[pyfunction]
#[pyo3(signature = (pg_id=None, name=None))]
pub fn get_placement_group(py: Python<'_>, pg_id: Option<Vec<u8>>, name: Option<String>) -> PyResult<Option<Bound<'_, PyDict>>> {
    let core = core()?;
    let pg_id = pg_id.unwrap_or_default();
    let name = name.unwrap_or_default();
    match py.enter_rtd(|interrupted| core.get_placement_group(&pg_id, &name, interrupted))? {
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
