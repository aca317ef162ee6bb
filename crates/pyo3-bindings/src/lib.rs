//! `rtd._core`: the thin layer between the Python package and the Rust core worker.
//! Functions here convert types, release the GIL around anything that blocks, and map
//! errors to Ray's exception classes; the logic lives in `rtd-core-worker`.

mod actors;
mod blocking;
mod buffers;
mod errors;
mod generators;
mod metrics;
mod object_ref;
mod packages;
mod placement_groups;
mod runtime_env;
mod tasks;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use rtd_common::{NodeId, ObjectId, ResourceSet, WorkerId};
use rtd_core_worker::{ConnectOptions, CoreWorker, FetchedValue};

use blocking::EnterRtd;
use buffers::{BorrowedBuffers, PlasmaBuffer};
use object_ref::ObjectRef;

/// The process's core worker, set by `connect` and cleared by `disconnect`.
static CORE: RwLock<Option<Arc<CoreWorker>>> = RwLock::new(None);

fn core() -> PyResult<Arc<CoreWorker>> {
    CORE.read().clone().ok_or_else(|| {
        pyo3::exceptions::PyRuntimeError::new_err("rtd is not initialized (or was shut down): call rtd.init() first")
    })
}

fn core_if_connected() -> Option<Arc<CoreWorker>> {
    CORE.read().clone()
}

#[pyfunction]
#[pyo3(signature = (raylet_socket, session_dir, is_worker, worker_id=None, node_ip=None))]
fn connect(
    py: Python<'_>,
    raylet_socket: String,
    session_dir: String,
    is_worker: bool,
    worker_id: Option<String>,
    node_ip: Option<String>,
) -> PyResult<()> {
    let worker_id = match worker_id {
        Some(hex) => Some(parse_worker_id(&hex)?),
        None => None,
    };
    let core = py.enter_rtd(|_| {
        CoreWorker::connect(ConnectOptions { raylet_socket, session_dir, is_worker, worker_id, node_ip })
    })?;
    core.set_interrupt(worker::interrupt_main_thread);
    *CORE.write() = Some(Arc::new(core));
    Ok(())
}

fn parse_worker_id(hex: &str) -> PyResult<WorkerId> {
    let bytes: Result<Vec<u8>, _> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16)).collect();
    bytes
        .ok()
        .and_then(|b| WorkerId::from_bytes(&b).ok())
        .ok_or_else(|| pyo3::exceptions::PyValueError::new_err(format!("bad worker id {hex:?}")))
}

#[pyfunction]
fn disconnect(py: Python<'_>) -> PyResult<()> {
    let core = CORE.write().take();
    match core {
        Some(core) => py.enter_rtd_ok(move || drop(core)),
        None => Ok(()),
    }
}

#[pyfunction]
fn is_connected() -> bool {
    CORE.read().is_some()
}

/// Identity of this process in the cluster.
#[pyfunction]
fn runtime_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let core = core()?;
    let d = PyDict::new(py);
    d.set_item("node_id", core.node_id().hex())?;
    d.set_item("job_id", core.job_id().hex())?;
    d.set_item("worker_id", core.worker_id().hex())?;
    d.set_item("task_id", core.current_task_id().map(|t| t.hex()))?;
    d.set_item("address", core.address())?;
    d.set_item("session_dir", core.session_dir())?;
    d.set_item("is_worker", core.is_worker())?;
    Ok(d)
}

/// Stores a pickled value; `contained` are the refs pickled inside it.
#[pyfunction]
#[pyo3(signature = (payload, buffers, contained=Vec::new()))]
fn put(
    py: Python<'_>,
    payload: &[u8],
    buffers: Vec<Bound<'_, PyAny>>,
    contained: Vec<PyRef<'_, ObjectRef>>,
) -> PyResult<ObjectRef> {
    let core = core()?;
    let borrowed = BorrowedBuffers::new(&buffers)?;
    let contained = object_ref::id_owner_pairs(&contained);
    let id = py.enter_rtd(|_| core.put(rtd_common::object_kind::VALUE, payload, &borrowed.slices(), contained))?;
    Ok(ObjectRef::new(&core, id, core.address().to_string()))
}

fn fetched_to_py(py: Python<'_>, value: FetchedValue) -> PyResult<Bound<'_, PyTuple>> {
    match value {
        FetchedValue::Inline { metadata, data } => (metadata, PyBytes::new(py, &data)).into_pyobject(py),
        FetchedValue::Plasma(pinned) => {
            let metadata = pinned.metadata;
            (metadata, Bound::new(py, PlasmaBuffer::new(pinned))?).into_pyobject(py)
        }
    }
}

fn ids_of(refs: &[PyRef<'_, ObjectRef>]) -> Vec<ObjectId> {
    refs.iter().map(|r| r.id).collect()
}

/// Waits longer than this are waits without a deadline (and never overflow a clock).
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A timeout in seconds from Python: None, or one beyond a century (`float("inf")`,
/// `1e20`), waits forever; negative or NaN is a ValueError.
pub(crate) fn timeout_of(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        None => Ok(None),
        Some(t) if t >= 0.0 => Ok(Duration::try_from_secs_f64(t).ok().filter(|d| *d < FOREVER)),
        Some(t) => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "timeout must be a non-negative number of seconds or None, got {t}"
        ))),
    }
}

/// Checks a node id given in hex (`NodeAffinitySchedulingStrategy(node_id=...)`).
#[pyfunction]
fn check_node_id(node_id: &Bound<'_, PyAny>) -> PyResult<()> {
    let valid = node_id.extract::<String>().ok().and_then(|hex| NodeId::from_hex(&hex)).is_some();
    if valid {
        return Ok(());
    }
    Err(pyo3::exceptions::PyValueError::new_err(format!(
        "node_id must be the hex id of a node ({} hex digits, as rtd.get_runtime_context().get_node_id() \
         returns), got {}",
        2 * NodeId::LEN,
        node_id.repr().map(|r| r.to_string()).unwrap_or_default()
    )))
}

/// Values of the objects, as `(metadata, bytes | PlasmaBuffer)` tuples.
#[pyfunction]
#[pyo3(signature = (refs, timeout=None))]
fn get<'py>(py: Python<'py>, refs: Vec<PyRef<'py, ObjectRef>>, timeout: Option<f64>) -> PyResult<Bound<'py, PyList>> {
    let core = core()?;
    let ids = ids_of(&refs);
    let timeout = timeout_of(timeout)?;
    let values = py.enter_rtd(|interrupted| core.get(&ids, timeout, interrupted))?;
    let items: PyResult<Vec<_>> = values.into_iter().map(|v| fetched_to_py(py, v)).collect();
    PyList::new(py, items?)
}

/// Indices of ready refs, in completion order, at most `num_returns`.
#[pyfunction]
#[pyo3(signature = (refs, num_returns, timeout=None))]
fn wait(
    py: Python<'_>,
    refs: Vec<PyRef<'_, ObjectRef>>,
    num_returns: usize,
    timeout: Option<f64>,
) -> PyResult<Vec<usize>> {
    let core = core()?;
    let ids = ids_of(&refs);
    let timeout = timeout_of(timeout)?;
    py.enter_rtd(|interrupted| core.wait(&ids, num_returns, timeout, interrupted))
}

/// Driver side: `handler(text, is_stderr)` writes what workers of this job print. It
/// runs on one thread, in arrival order.
#[pyfunction]
fn set_output_handler(handler: PyObject) -> PyResult<()> {
    let core = core()?;
    let (tx, rx) = std::sync::mpsc::channel::<(String, bool, tokio::sync::oneshot::Sender<()>)>();
    std::thread::Builder::new()
        .name("rtd-output".into())
        .spawn(move || {
            // Ends when the core worker (and with it the sink) is dropped.
            while let Ok((text, stderr, written)) = rx.recv() {
                if !text.is_empty() {
                    Python::with_gil(|py| {
                        if let Err(e) = handler.call1(py, (text, stderr)) {
                            e.print(py);
                        }
                    });
                }
                let _ = written.send(());
            }
        })
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(format!("cannot start the output thread: {e}")))?;
    let sink: rtd_core_worker::OutputSink = Box::new(move |text, stderr, written| {
        let _ = tx.send((text, stderr, written));
    });
    core.set_output_sink(sink)
        .map_err(|_| pyo3::exceptions::PyRuntimeError::new_err("an output handler is already set"))
}

/// Worker side: sends printed text to the driver at `driver`; False if unreachable.
#[pyfunction]
fn forward_output(py: Python<'_>, driver: String, text: String, stderr: bool) -> PyResult<bool> {
    let core = core()?;
    py.enter_rtd_ok(|| core.forward_output(&driver, text, stderr))
}

/// Waits until owners have counted this process as borrowing the refs it unpickled.
#[pyfunction]
fn flush_borrows(py: Python<'_>) -> PyResult<()> {
    let core = core()?;
    if core.has_unconfirmed_borrows() {
        py.enter_rtd_ok(|| core.flush_borrows())?;
    }
    Ok(())
}

/// Every object this process knows, as Ray's `get_all_reference_counts`:
/// hex id -> counts (debugging and tests).
#[pyfunction]
fn get_all_reference_counts(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let core = core()?;
    let out = PyDict::new(py);
    for (id, c) in core.reference_counts() {
        let d = PyDict::new(py);
        d.set_item("owned", c.owned)?;
        d.set_item("local", c.local_refs)?;
        d.set_item("submitted", c.task_refs)?;
        d.set_item("contained_in", c.contained_in)?;
        d.set_item("borrowers", c.borrowers.into_iter().collect::<HashMap<_, _>>())?;
        d.set_item("pinned_forever", c.escaped)?;
        out.set_item(id.hex(), d)?;
    }
    Ok(out)
}

#[pyfunction]
fn cancel(r: PyRef<'_, ObjectRef>, force: bool) -> PyResult<()> {
    core()?.cancel(&r.id, force).map_err(errors::core_error)
}

#[pyfunction]
fn kv_put(py: Python<'_>, key: String, value: Vec<u8>) -> PyResult<()> {
    let core = core()?;
    py.enter_rtd(|interrupted| core.kv_put(&key, value, interrupted))
}

#[pyfunction]
fn kv_get<'py>(py: Python<'py>, key: String) -> PyResult<Option<Bound<'py, PyBytes>>> {
    let core = core()?;
    let value = py.enter_rtd(|interrupted| core.kv_get(&key, interrupted))?;
    Ok(value.map(|v| PyBytes::new(py, &v)))
}

/// The cluster's dashboard `host:port` (None: it serves none), from the GCS's KV.
#[pyfunction]
fn dashboard_url(py: Python<'_>) -> PyResult<Option<String>> {
    let core = core()?;
    let value = py.enter_rtd(|interrupted| core.kv_get(rtd_common::cluster_kv::DASHBOARD_URL_KEY, interrupted))?;
    Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// The dashboard of the cluster whose node serves at `address`, asked without a core
/// worker; `ConnectionError` when nothing there answers as an rtd node.
#[pyfunction]
fn dashboard_of(py: Python<'_>, address: String) -> PyResult<Option<String>> {
    let answer = py.enter_rtd_ok(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        runtime
            .block_on(rtd_common::cluster_kv::dashboard_of(&address, Duration::from_secs(5)))
            .map_err(|e| e.to_string())
    })?;
    answer.map_err(|e| pyo3::exceptions::PyConnectionError::new_err(format!("{address}: {e}")))
}

fn node_to_py(py: Python<'_>, n: rtd_common::proto::NodeInfo) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    let node_id = rtd_common::NodeId::from_bytes(&n.node_id).map(|i| i.hex()).unwrap_or_default();
    let total = ResourceSet::from_fixed_map(&n.total.map(|t| t.amounts).unwrap_or_default());
    let available = ResourceSet::from_fixed_map(&n.available.map(|t| t.amounts).unwrap_or_default());
    d.set_item("NodeID", node_id)?;
    d.set_item("Alive", n.alive)?;
    d.set_item("NodeManagerAddress", n.address)?;
    d.set_item("Resources", total.to_floats())?;
    d.set_item("AvailableResources", available.to_floats())?;
    d.set_item("SessionDir", n.session_dir)?;
    d.set_item("RayletSocketName", n.raylet_socket)?;
    d.set_item("ObjectStoreSocketName", n.plasma_socket)?;
    d.set_item("RayletAddress", n.raylet_address)?;
    d.set_item("IsHead", n.is_head)?;
    Ok(d)
}

/// The cluster's nodes as dicts shaped like Ray's `ray.nodes()`.
#[pyfunction]
fn nodes(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let core = core()?;
    let nodes = py.enter_rtd(|interrupted| core.nodes(interrupted))?;
    nodes.into_iter().map(|n| node_to_py(py, n)).collect()
}

/// Every task attempt that ran in the cluster, as a JSON list of Chrome-trace events.
#[pyfunction]
fn timeline(py: Python<'_>) -> PyResult<String> {
    let core = core()?;
    py.enter_rtd(|interrupted| core.timeline(interrupted))
}

/// Sends `request` to the node at `address` (a raylet's socket path, or `host:port`) on
/// a connection of its own, without a core worker. `Err` when it cannot connect.
fn request_without_core<R: rtd_common::rpc::Request>(
    py: Python<'_>,
    address: &str,
    request: R,
) -> PyResult<Result<Result<R::Reply, rtd_common::rpc::RpcError>, String>>
where
    R::Reply: Send,
{
    py.enter_rtd_ok(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let connect = rtd_common::rpc::RpcClient::connect(address);
            match tokio::time::timeout(Duration::from_secs(5), connect).await {
                Err(_) => Err(format!("timed out connecting to {address}")),
                Ok(Ok(client)) => Ok(client.request(request).await),
                Ok(Err(e)) => Ok(Err(e)),
            }
        })
    })
}

/// The auth token this process presents (None with auth off), read once from
/// `RTD_AUTH_MODE` and `RTD_AUTH_TOKEN` / `RTD_AUTH_TOKEN_PATH` / `~/.rtd/auth_token`;
/// a token mode without a usable token is an `AuthenticationError`.
#[pyfunction]
fn auth_token() -> PyResult<Option<String>> {
    match rtd_common::auth::process() {
        Ok(token) => Ok(token.as_ref().map(|t| t.secret().to_string())),
        Err(e) => Err(errors::rtd_error("AuthenticationError", e.to_string())),
    }
}

/// The nodes of the cluster whose head is at `address` (`host:port`), asked without
/// connecting a core worker (how a driver finds its local node).
#[pyfunction]
fn query_nodes(py: Python<'_>, address: String) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let reply = request_without_core(py, &address, rtd_common::proto::GetNodes {})?;
    let unreachable = |e: &dyn std::fmt::Display| {
        pyo3::exceptions::PyConnectionError::new_err(format!("Could not reach an rtd cluster at {address}: {e}"))
    };
    match reply {
        Ok(Ok(r)) => r.nodes.into_iter().map(|n| node_to_py(py, n)).collect(),
        Ok(Err(e @ rtd_common::rpc::RpcError::Unauthenticated { .. })) => Err(errors::rpc_error(e)),
        Ok(Err(rtd_common::rpc::RpcError::UnexpectedReply { .. })) => {
            Err(pyo3::exceptions::PyConnectionError::new_err(format!("{address} is not an rtd head node")))
        }
        Ok(Err(e)) => Err(unreachable(&e)),
        Err(e) => Err(unreachable(&e)),
    }
}

/// The cluster as the raylet at `address` schedules by (`GetClusterView`): its own node
/// first, then the others as it last heard of them. Tests wait on it instead of sleeping.
#[pyfunction]
fn cluster_view(py: Python<'_>, address: String) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let reply = request_without_core(py, &address, rtd_common::proto::GetClusterView {})?
        .and_then(|answer| answer.map_err(|e| e.to_string()))
        .map_err(|e| pyo3::exceptions::PyConnectionError::new_err(format!("{address}: {e}")))?;
    let amounts = |m: Option<rtd_common::proto::ResourceMap>| {
        ResourceSet::from_fixed_map(&m.map(|m| m.amounts).unwrap_or_default()).to_floats()
    };
    reply
        .nodes
        .into_iter()
        .map(|n| {
            let d = PyDict::new(py);
            d.set_item("NodeID", NodeId::from_bytes(&n.node_id).map(|i| i.hex()).unwrap_or_default())?;
            d.set_item("Alive", n.alive)?;
            d.set_item("Resources", amounts(n.total))?;
            d.set_item("AvailableResources", amounts(n.available))?;
            Ok(d)
        })
        .collect()
}

/// Runs the `rtd` command line (blocks while a foreground daemon runs).
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<String>, launcher: Vec<String>) -> PyResult<i32> {
    let mut launcher = launcher.into_iter();
    let program =
        launcher.next().ok_or_else(|| pyo3::exceptions::PyValueError::new_err("launcher must name a program"))?;
    let launcher = rtd_node::Launcher { program, args: launcher.collect() };
    py.enter_rtd_ok(|| rtd_node::cli_main(&argv, &launcher))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ObjectRef>()?;
    m.add_class::<PlasmaBuffer>()?;
    m.add_class::<worker::Task>()?;
    m.add_class::<tasks::TaskOptions>()?;
    m.add_class::<actors::ActorCreationOptions>()?;
    m.add_class::<metrics::PyUserMetric>()?;
    m.add_function(wrap_pyfunction!(connect, m)?)?;
    m.add_function(wrap_pyfunction!(disconnect, m)?)?;
    m.add_function(wrap_pyfunction!(is_connected, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_info, m)?)?;
    m.add_function(wrap_pyfunction!(put, m)?)?;
    m.add_function(wrap_pyfunction!(get, m)?)?;
    m.add_function(wrap_pyfunction!(wait, m)?)?;
    m.add_function(wrap_pyfunction!(tasks::submit_task, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_env::runtime_env_validate, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_env::runtime_env_merge, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_env::runtime_env_prepare, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_env::runtime_env_install_eagerly, m)?)?;
    m.add_function(wrap_pyfunction!(cancel, m)?)?;
    m.add_function(wrap_pyfunction!(kv_put, m)?)?;
    m.add_function(wrap_pyfunction!(kv_get, m)?)?;
    m.add_function(wrap_pyfunction!(dashboard_url, m)?)?;
    m.add_function(wrap_pyfunction!(dashboard_of, m)?)?;
    m.add_function(wrap_pyfunction!(nodes, m)?)?;
    m.add_function(wrap_pyfunction!(query_nodes, m)?)?;
    m.add_function(wrap_pyfunction!(auth_token, m)?)?;
    m.add_function(wrap_pyfunction!(cluster_view, m)?)?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(check_node_id, m)?)?;
    m.add_function(wrap_pyfunction!(placement_groups::create_placement_group, m)?)?;
    m.add_function(wrap_pyfunction!(placement_groups::remove_placement_group, m)?)?;
    m.add_function(wrap_pyfunction!(placement_groups::wait_placement_group, m)?)?;
    m.add_function(wrap_pyfunction!(placement_groups::placement_group_ready, m)?)?;
    m.add_function(wrap_pyfunction!(placement_groups::get_placement_group, m)?)?;
    m.add_function(wrap_pyfunction!(placement_groups::list_placement_groups, m)?)?;
    m.add_function(wrap_pyfunction!(placement_groups::bundle_request, m)?)?;
    m.add_function(wrap_pyfunction!(placement_groups::placement_group_of_resources, m)?)?;
    m.add_function(wrap_pyfunction!(actors::create_actor, m)?)?;
    m.add_function(wrap_pyfunction!(actors::submit_actor_task, m)?)?;
    m.add_function(wrap_pyfunction!(actors::get_named_actor, m)?)?;
    m.add_function(wrap_pyfunction!(actors::kill_actor, m)?)?;
    m.add_function(wrap_pyfunction!(actors::list_actors, m)?)?;
    m.add_function(wrap_pyfunction!(timeline, m)?)?;
    m.add_function(wrap_pyfunction!(packages::pack_package, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::record_metric, m)?)?;
    m.add_function(wrap_pyfunction!(actors::add_actor_handle, m)?)?;
    m.add_function(wrap_pyfunction!(actors::remove_actor_handle, m)?)?;
    m.add_function(wrap_pyfunction!(actors::mark_actor_handle_escaped, m)?)?;
    m.add_function(wrap_pyfunction!(object_ref::on_ready, m)?)?;
    m.add_function(wrap_pyfunction!(generators::generator_next, m)?)?;
    m.add_function(wrap_pyfunction!(generators::on_generator_next, m)?)?;
    m.add_function(wrap_pyfunction!(generators::generator_is_finished, m)?)?;
    m.add_function(wrap_pyfunction!(generators::release_generator, m)?)?;
    m.add_function(wrap_pyfunction!(worker::report_generator_item, m)?)?;
    m.add_function(wrap_pyfunction!(object_ref::start_collecting_refs, m)?)?;
    m.add_function(wrap_pyfunction!(object_ref::stop_collecting_refs, m)?)?;
    m.add_function(wrap_pyfunction!(flush_borrows, m)?)?;
    m.add_function(wrap_pyfunction!(set_output_handler, m)?)?;
    m.add_function(wrap_pyfunction!(forward_output, m)?)?;
    m.add_function(wrap_pyfunction!(get_all_reference_counts, m)?)?;
    m.add_function(wrap_pyfunction!(worker::next_task, m)?)?;
    m.add_function(wrap_pyfunction!(worker::finish_task, m)?)?;
    m.add_function(wrap_pyfunction!(worker::arg_values, m)?)?;
    Ok(())
}
