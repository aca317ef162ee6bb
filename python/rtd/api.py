"""The driver-facing API: ``init``, ``shutdown``, ``get``, ``put``, ``wait``, ``cancel`` and
the cluster queries, with Ray's signatures and errors."""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
import time
import uuid

from rtd import _core
from rtd._core import ObjectRef
from rtd._private import runtime_env as _runtime_env
from rtd._private import serialization, services, task_context
from rtd._private.generator import ObjectRefGenerator
from rtd.runtime_context import RuntimeContext

DEFAULT_TEMP_DIR = "/tmp/rtd"


class _State:
    def __init__(self):
        self.lock = threading.RLock()
        self.node_process = None  # the local head daemon this driver started
        self.session_dir = None
        self.dashboard_url = None  # the head's dashboard as host:port, if it serves one
        self.namespace = None
        self.registered_functions = set()
        self.is_worker = False


_state = _State()


class RayContext(dict):
    """What ``init`` returns (Ray returns a context with ``address_info``, whose
    ``webui_url`` is the dashboard's ``host:port``, also ``dashboard_url``)."""

    @property
    def address_info(self):
        return self

    @property
    def dashboard_url(self):
        return self.get("webui_url")

    def disconnect(self):
        shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutdown()


def is_initialized() -> bool:
    return _core.is_connected()


def _start_local_node(num_cpus, num_gpus, resources, object_store_memory, temp_dir, dashboard_args):
    os.makedirs(temp_dir, exist_ok=True)
    session_dir = os.path.join(temp_dir, f"session_{int(time.time() * 1000)}_{os.getpid()}")
    args = ["--head", *services.node_args(num_cpus, num_gpus, resources, object_store_memory), *dashboard_args]
    return services.spawn_node(session_dir, args), session_dir


def _find_running_node(temp_dir):
    """``(session_dir, node_ip)`` of the newest node started on this machine."""
    latest = os.path.join(temp_dir, "session_latest", "node.json")
    try:
        with open(latest) as f:
            info = json.load(f)
        return info["session_dir"], info.get("node_ip") or None
    except (OSError, ValueError, KeyError):
        raise ConnectionError(
            "Could not find any running rtd instance. Start one with `rtd start --head`, "
            "or call rtd.init() without an address to start a local one."
        ) from None


def _find_cluster_node(address):
    """``(session_dir, node_ip)`` of a node of the cluster at ``address`` running on
    this machine: a driver talks to its own machine's node (the head preferred)."""
    nodes = [n for n in _core.query_nodes(address) if n["Alive"] and os.path.exists(n["RayletSocketName"])]
    if not nodes:
        raise ConnectionError(
            f"The rtd cluster at {address} has no node on this machine; start one with "
            f"`rtd start --address {address}` and connect again."
        )
    nodes.sort(key=lambda n: not n["IsHead"])
    return nodes[0]["SessionDir"], nodes[0]["NodeManagerAddress"]


def _check_resources(num_cpus, num_gpus, resources, object_store_memory):
    for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ValueError(f"{name} must be a non-negative number, got {value!r}.")
    if resources is not None:
        if not isinstance(resources, dict):
            raise ValueError(f"resources must be a dict, got {resources!r}.")
        for name, amount in resources.items():
            if name in ("CPU", "GPU"):
                raise ValueError(f"Use num_cpus / num_gpus instead of resources={{'{name}': ...}}.")
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
                raise ValueError(f"resources[{name!r}] must be a non-negative number, got {amount!r}.")
    if object_store_memory is not None and (
        not isinstance(object_store_memory, int) or object_store_memory < 1 << 20
    ):
        raise ValueError(
            f"object_store_memory must be an integer number of bytes >= 1 MiB, got {object_store_memory!r}."
        )


def init(
    address=None,
    *,
    num_cpus=None,
    num_gpus=None,
    resources=None,
    object_store_memory=None,
    namespace=None,
    ignore_reinit_error=False,
    runtime_env=None,
    _temp_dir=None,
    **kwargs,
):
    """Starts (or connects to) rtd. With no address a local head node is started and
    stopped again by ``shutdown()`` or at exit."""
    with _state.lock:
        if is_initialized():
            if ignore_reinit_error:
                return RayContext(session_dir=_state.session_dir, webui_url=_state.dashboard_url)
            raise RuntimeError(
                "Maybe you called rtd.init twice by accident? This error can be suppressed by "
                "passing in 'ignore_reinit_error=True' or by calling 'rtd.shutdown()' prior to 'rtd.init()'."
            )
        dashboard_options = {"include_dashboard", "dashboard_host", "dashboard_port"}
        ignored = {"log_to_driver", "logging_level", "configure_logging", "_system_config", "local_mode"}
        unknown = set(kwargs) - ignored - dashboard_options
        if unknown:
            raise TypeError(f"init() got unexpected keyword argument(s): {sorted(unknown)}")
        if kwargs.get("local_mode"):
            raise NotImplementedError("local_mode is not supported by rtd.")
        runtime_env = _runtime_env.job_runtime_env(runtime_env)
        _runtime_env.validate(runtime_env)
        _check_resources(num_cpus, num_gpus, resources, object_store_memory)
        # Token mode without a usable token fails here, before anything starts.
        _core.auth_token()
        temp_dir = _temp_dir or DEFAULT_TEMP_DIR
        if address is None:
            address = os.environ.get("RTD_ADDRESS") or None
        node_ip = None
        if address in (None, "local"):
            dashboard = services.dashboard_args(**{k: v for k, v in kwargs.items() if k in dashboard_options})
            process, session_dir = _start_local_node(
                num_cpus, num_gpus, resources, object_store_memory, temp_dir, dashboard
            )
            _state.node_process = process
        else:
            if any(v is not None for v in (num_cpus, num_gpus, resources, object_store_memory)):
                raise ValueError("When connecting to an existing cluster, num_cpus, num_gpus, resources "
                                 "and object_store_memory must not be given.")
            if address == "auto":
                session_dir, node_ip = _find_running_node(temp_dir)
            elif isinstance(address, str) and ":" in address:
                session_dir, node_ip = _find_cluster_node(address.removeprefix("rtd://").removeprefix("ray://"))
            else:
                raise ValueError(f"address must be None, 'auto' or 'HOST:PORT', got {address!r}")
        try:
            _core.connect(os.path.join(session_dir, "sockets", "raylet.sock"), session_dir, False, None, node_ip)
        except BaseException:
            _stop_local_node()
            raise
        try:
            _runtime_env.set_job_env(runtime_env)
        except BaseException:
            _core.disconnect()
            _stop_local_node()
            raise
        _state.session_dir = session_dir
        # As in Ray, a driver without a namespace gets an anonymous one of its own.
        _state.namespace = namespace or str(uuid.uuid4())
        info = _core.runtime_info()
        log_to_driver = kwargs.get("log_to_driver", True)
        if log_to_driver:
            _core.set_output_handler(_write_worker_output)
        _publish_job_info(info["job_id"], _state.namespace, info["address"] if log_to_driver else None, node_ip)
        _state.dashboard_url = _core.dashboard_url()
        if _state.dashboard_url:
            started = "Started a local rtd instance." if _state.node_process else "Connected to an rtd cluster."
            print(f"{started} View the dashboard at http://{_state.dashboard_url}", file=sys.stderr)
        return RayContext(
            session_dir=session_dir, node_id=info["node_id"], job_id=info["job_id"], webui_url=_state.dashboard_url
        )


def _write_worker_output(text, is_stderr):
    """Writes what this job's tasks and actors printed (prefixed lines)."""
    stream = sys.stderr if is_stderr else sys.stdout
    stream.write(text)
    stream.flush()


def _publish_job_info(job_id, namespace, driver_address, driver_ip):
    """Tells this job's workers its namespace, where the driver's own modules are, and
    where to send what they print (see worker.py)."""
    paths = [os.getcwd()]
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    if script:
        paths.insert(0, os.path.dirname(os.path.abspath(script)))
    job = {"sys_path": paths, "namespace": namespace, "driver": driver_address, "driver_ip": driver_ip}
    # A job's entrypoint gets its submission id in the job config (as Ray's
    # `job_submission_id` metadata); the jobs API links this driver to it.
    try:
        job_config = json.loads(os.environ.get("RTD_JOB_CONFIG_JSON_ENV_VAR") or "{}")
        submission_id = (job_config.get("metadata") or {}).get("job_submission_id")
    except (ValueError, AttributeError):
        submission_id = None
    if isinstance(submission_id, str):
        job["submission_id"] = submission_id
    _core.kv_put(f"job:{job_id}", json.dumps(job).encode())


def current_namespace():
    """The namespace of this job (the driver's, also inside its tasks and actors)."""
    if _state.is_worker:
        return task_context.job_namespace
    return _state.namespace


def _stop_local_node():
    process, _state.node_process = _state.node_process, None
    if process is None:
        return
    try:
        process.stdin.close()
    except OSError:
        pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def shutdown():
    """Disconnects, and stops the local node if ``init`` started one."""
    with _state.lock:
        if _state.is_worker:
            return
        _core.disconnect()
        _stop_local_node()
        _runtime_env.set_job_env(None)
        _state.session_dir = None
        _state.dashboard_url = None
        _state.registered_functions.clear()


atexit.register(shutdown)


def auto_init():
    if not _core.is_connected():
        init()


def _check_refs(object_refs, what):
    if isinstance(object_refs, ObjectRef):
        return [object_refs], True
    if isinstance(object_refs, list):
        for r in object_refs:
            if not isinstance(r, ObjectRef):
                raise TypeError(
                    f"Invalid type of object refs, {type(r)}, is given. 'object_refs' must either "
                    f"be an ObjectRef or a list of ObjectRefs."
                )
        return object_refs, False
    raise TypeError(
        f"Invalid type of object refs, {type(object_refs)}, is given. 'object_refs' must either "
        f"be an ObjectRef or a list of ObjectRefs ({what})."
    )


def get(object_refs, *, timeout=None):
    """The values of one ObjectRef or a list of them; raises the task's error."""
    auto_init()
    refs, single = _check_refs(object_refs, "get")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"timeout must be a non-negative number or None, got {timeout!r}")
    values = []
    for metadata, data in _core.get(refs, timeout):
        value = serialization.deserialize(metadata, data)
        if metadata != serialization.VALUE:
            serialization.raise_error(value)
        values.append(value)
    return values[0] if single else values


def put(value, *, _owner=None):
    """Stores ``value`` in the object store; returns its ObjectRef."""
    auto_init()
    if isinstance(value, ObjectRef):
        raise TypeError("Calling 'put' on an ObjectRef is not allowed. If you really want to do this, "
                        "you can wrap the ObjectRef in a list and call 'put' on it.")
    payload, buffers, contained = serialization.serialize(value)
    return _core.put(payload, buffers, contained)


def wait(object_refs, *, num_returns=1, timeout=None, fetch_local=True):
    """``(ready, not_ready)``: the first ``num_returns`` refs to complete (in completion
    order), or fewer when ``timeout`` passes."""
    auto_init()
    if isinstance(object_refs, ObjectRef) or not isinstance(object_refs, list):
        raise TypeError(f"wait() expected a list of ObjectRef, got {type(object_refs)}")
    for r in object_refs:
        if not isinstance(r, (ObjectRef, ObjectRefGenerator)):
            raise TypeError(f"wait() expected a list of ObjectRef, got a list containing {type(r)}")
    if len(set(object_refs)) != len(object_refs):
        raise ValueError("Wait requires a list of unique object refs.")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int) or num_returns < 0:
        raise ValueError(f"Invalid number of objects to return {num_returns!r}.")
    if num_returns > len(object_refs):
        raise ValueError("num_returns cannot be greater than the number of objects provided to wait().")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"timeout must be a non-negative number or None, got {timeout!r}")
    if not object_refs or num_returns == 0:
        return [], list(object_refs)
    if any(isinstance(r, ObjectRefGenerator) for r in object_refs):
        ready_indices = _wait_with_generators(object_refs, num_returns, timeout)
    else:
        ready_indices = _core.wait(object_refs, num_returns, timeout)
    ready = [object_refs[i] for i in ready_indices]
    chosen = set(ready_indices)
    not_ready = [r for i, r in enumerate(object_refs) if i not in chosen]
    return ready, not_ready


def _wait_with_generators(items, num_returns, timeout):
    """``wait`` over refs and generators: a generator is ready when ``next`` on it
    would not block (its next item exists, or it has ended), as in Ray."""
    ready: list = []
    changed = threading.Condition()

    def mark(index):
        with changed:
            ready.append(index)
            changed.notify_all()

    for i, item in enumerate(items):
        if isinstance(item, ObjectRefGenerator):
            item._on_next(lambda i=i: mark(i))
        else:
            _core.on_ready(item, lambda i=i: mark(i))
    deadline = None if timeout is None else time.monotonic() + timeout
    with changed:
        while len(ready) < num_returns:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            # Short slices, so Ctrl-C reaches the waiting thread.
            changed.wait(0.1 if left is None else min(left, 0.1))
        return ready[:num_returns]


def cancel(object_ref, *, force=False, recursive=True):
    """Cancels the task that creates ``object_ref`` (or the generator task behind an
    ``ObjectRefGenerator``): a queued task never runs; a running one gets
    KeyboardInterrupt, or its worker is killed with ``force=True``. ``get`` then raises
    TaskCancelledError."""
    auto_init()
    if isinstance(object_ref, ObjectRefGenerator):
        object_ref = object_ref.completed()
    if not isinstance(object_ref, ObjectRef):
        raise TypeError(f"rtd.cancel() only supports ObjectRef, got {type(object_ref)}.")
    _core.cancel(object_ref, bool(force))


def nodes():
    auto_init()
    return _core.nodes()


def _sum_resources(key):
    total = {}
    for node in _core.nodes():
        if not node["Alive"]:
            continue
        for name, amount in node[key].items():
            total[name] = total.get(name, 0.0) + amount
    return {k: v for k, v in total.items() if v > 0}


def cluster_resources():
    auto_init()
    return _sum_resources("Resources")


def available_resources():
    auto_init()
    return _sum_resources("AvailableResources")


def get_gpu_ids():
    """GPU ids assigned to the current task (empty in the driver)."""
    return list(task_context.gpu_ids)


def get_runtime_context():
    auto_init()
    return RuntimeContext(current_namespace())


def timeline(filename=None):
    """Chrome-trace events for every task and actor call that ran (one row per worker,
    grouped by node), as Ray's ``ray.timeline()``: returned as a list, or written to
    ``filename`` as JSON for ``chrome://tracing`` or Perfetto."""
    auto_init()
    events = json.loads(_core.timeline())
    if filename is None:
        return events
    with open(filename, "w") as f:
        json.dump(events, f)
    return None
