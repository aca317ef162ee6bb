"""The state API's client: each function is one GET of the head's dashboard
(``/api/v0/<resource>``, ``/api/v0/logs``, see the ``rtd-dashboard`` crate), which
filters, counts and limits; this module only builds the request and wraps the rows.

``address`` names the cluster or its dashboard, as ``rtd._private.dashboard`` resolves it:
the cluster's address (the head's ``HOST:PORT``), the dashboard's ``HOST:PORT`` (or
``http://HOST:PORT``), or nothing (or ``"auto"``): the connected driver's cluster, else the
newest cluster started on this machine.
"""

from __future__ import annotations

import codecs
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, Generator, List, Optional, Tuple, Type, Union

from rtd import _core
from rtd._private import dashboard
from rtd.exceptions import AuthenticationError
from rtd.util.state.exception import RayStateApiException, ServerUnavailable

DEFAULT_LIMIT = 100
DEFAULT_RPC_TIMEOUT = 30

Filter = Tuple[str, str, Union[str, bool, int, float]]


class StateRow(dict):
    """One row with Ray's state field names; read as ``row["state"]`` or ``row.state``,
    as Ray's state objects allow both."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}") from None


class NodeState(StateRow):
    """Ray's ``NodeState``."""


class ActorState(StateRow):
    """Ray's ``ActorState``."""


class PlacementGroupState(StateRow):
    """Ray's ``PlacementGroupState``."""


class TaskState(StateRow):
    """Ray's ``TaskState``: one attempt of a task."""


class JobState(StateRow):
    """Ray's ``JobState`` (its ``JobDetails``): a driver's job."""


class WorkerState(StateRow):
    """Ray's ``WorkerState``: a worker or driver process."""


class ObjectState(StateRow):
    """Ray's ``ObjectState``: one object as one process references it."""


@dataclass(frozen=True)
class _Resource:
    """A kind of thing the state API lists: its path, its id field, its row type."""

    name: str
    id_key: str
    row: Type[StateRow]


NODES = _Resource("nodes", "node_id", NodeState)
ACTORS = _Resource("actors", "actor_id", ActorState)
PLACEMENT_GROUPS = _Resource("placement_groups", "placement_group_id", PlacementGroupState)
TASKS = _Resource("tasks", "task_id", TaskState)
# Looked up by the driver's job id (a submitted job's row carries both; the jobs API,
# rtd.job_submission, takes either).
JOBS = _Resource("jobs", "job_id", JobState)
WORKERS = _Resource("workers", "worker_id", WorkerState)
OBJECTS = _Resource("objects", "object_id", ObjectState)


def _base_url(address: Optional[str]) -> str:
    return dashboard.base_url(address, ServerUnavailable)


def _filter_params(filters: Optional[List[Filter]]) -> List[Tuple[str, str]]:
    params = []
    for given in filters or []:
        if not isinstance(given, (tuple, list)) or len(given) != 3:
            raise ValueError(f"The given filter has incorrect input type, {given!r}. Provide (key, predicate, value).")
        key, predicate, value = given
        if predicate not in ("=", "!="):
            raise ValueError(f"Unsupported filter predicate {predicate!r} is given. Available predicates: =, !=.")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        params += [("filter_keys", str(key)), ("filter_predicates", predicate), ("filter_values", text)]
    return params


def _refusal(url: str, error: urllib.error.HTTPError) -> RayStateApiException:
    """The state API's error answer (a JSON message) as an exception."""
    try:
        msg = json.load(error).get("msg")
    except (ValueError, AttributeError):
        return RayStateApiException(f"{url} answered {error.code} without a JSON body")
    return RayStateApiException(msg or f"{url} refused the request ({error.code})")


def _get(address: Optional[str], path: str, params: List[Tuple[str, str]], timeout: float) -> Tuple[bytes, Any]:
    """GETs ``path`` of the dashboard: the body and the headers of a 200 answer."""
    url = f"{_base_url(address)}{path}?{urllib.parse.urlencode([*params, ('timeout', str(int(timeout)))])}"
    request = urllib.request.Request(url)
    token = _core.auth_token()
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read(), response.headers
    except urllib.error.HTTPError as e:
        if e.code == 401:
            raise AuthenticationError(e.read().decode(errors="replace").strip()) from None
        raise _refusal(url, e) from None
    except (urllib.error.URLError, OSError) as e:
        raise ServerUnavailable(f"Failed to reach the state API at {url}: {e}") from None


def _request(address: Optional[str], path: str, params: List[Tuple[str, str]], timeout: float) -> Any:
    """GETs ``path`` of the state API; the answer's ``data.result``."""
    body, _ = _get(address, path, params, timeout)
    try:
        answer = json.loads(body)
    except ValueError:
        raise RayStateApiException(f"{path} did not answer with JSON; is it an rtd dashboard?") from None
    if answer.get("result") is not True:
        raise RayStateApiException(answer.get("msg") or f"{path} was refused")
    return answer["data"]["result"]


def _check_complete(resource: _Resource, listed: Dict[str, Any]) -> None:
    if listed.get("partial_failure_warning"):
        raise RayStateApiException(
            f"Failed to retrieve all {resource.name}: {listed['partial_failure_warning']}. "
            "To allow missing output, set raise_on_missing_output=False."
        )
    if listed["total"] != listed["num_after_truncation"]:
        raise RayStateApiException(
            f"Failed to retrieve all {listed['total']} {resource.name}: only {listed['num_after_truncation']} "
            "can be returned. To allow missing output, set raise_on_missing_output=False."
        )


def _list(
    resource: _Resource,
    address: Optional[str],
    filters: Optional[List[Filter]],
    limit: int,
    timeout: float,
    detail: bool,
    raise_on_missing_output: bool,
) -> List[Any]:
    params = [*_filter_params(filters), ("limit", str(limit)), ("detail", str(bool(detail)).lower())]
    listed = _request(address, f"/api/v0/{resource.name}", params, timeout)
    if raise_on_missing_output:
        _check_complete(resource, listed)
    return [resource.row(row) for row in listed["result"]]


def _get_rows(resource: _Resource, id: str, address: Optional[str], timeout: float) -> List[Any]:
    return _list(resource, address, [(resource.id_key, "=", id)], DEFAULT_LIMIT, timeout, True, False)


def _get_one(resource: _Resource, id: str, address: Optional[str], timeout: float) -> Optional[Any]:
    rows = _get_rows(resource, id, address, timeout)
    return rows[0] if rows else None


def list_nodes(
    address: Optional[str] = None,
    filters: Optional[List[Filter]] = None,
    limit: int = DEFAULT_LIMIT,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    detail: bool = False,
    raise_on_missing_output: bool = True,
) -> List[NodeState]:
    """The cluster's nodes, e.g. ``list_nodes(filters=[("state", "=", "ALIVE")])``."""
    return _list(NODES, address, filters, limit, timeout, detail, raise_on_missing_output)


def list_actors(
    address: Optional[str] = None,
    filters: Optional[List[Filter]] = None,
    limit: int = DEFAULT_LIMIT,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    detail: bool = False,
    raise_on_missing_output: bool = True,
) -> List[ActorState]:
    """The cluster's actors, e.g. ``list_actors(filters=[("class_name", "=", "Counter")])``."""
    return _list(ACTORS, address, filters, limit, timeout, detail, raise_on_missing_output)


def list_placement_groups(
    address: Optional[str] = None,
    filters: Optional[List[Filter]] = None,
    limit: int = DEFAULT_LIMIT,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    detail: bool = False,
    raise_on_missing_output: bool = True,
) -> List[PlacementGroupState]:
    """The cluster's placement groups, e.g. ``list_placement_groups(detail=True)``."""
    return _list(PLACEMENT_GROUPS, address, filters, limit, timeout, detail, raise_on_missing_output)


def get_node(id: str, address: Optional[str] = None, timeout: int = DEFAULT_RPC_TIMEOUT) -> Optional[NodeState]:
    """The node with this hex id, with every field; None if there is none."""
    return _get_one(NODES, id, address, timeout)


def get_actor(id: str, address: Optional[str] = None, timeout: int = DEFAULT_RPC_TIMEOUT) -> Optional[ActorState]:
    """The actor with this hex id, with every field; None if there is none."""
    return _get_one(ACTORS, id, address, timeout)


def get_placement_group(
    id: str, address: Optional[str] = None, timeout: int = DEFAULT_RPC_TIMEOUT
) -> Optional[PlacementGroupState]:
    """The placement group with this hex id, with every field; None if there is none."""
    return _get_one(PLACEMENT_GROUPS, id, address, timeout)


def list_tasks(
    address: Optional[str] = None,
    filters: Optional[List[Filter]] = None,
    limit: int = DEFAULT_LIMIT,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    detail: bool = False,
    raise_on_missing_output: bool = True,
) -> List[TaskState]:
    """The cluster's task attempts, e.g. ``list_tasks(filters=[("state", "=", "FAILED")])``.
    Workers report task events every second (``RTD_TASK_EVENTS_REPORT_INTERVAL_MS``), so
    a change shows up to that late."""
    return _list(TASKS, address, filters, limit, timeout, detail, raise_on_missing_output)


def list_jobs(
    address: Optional[str] = None,
    filters: Optional[List[Filter]] = None,
    limit: int = DEFAULT_LIMIT,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    detail: bool = False,
    raise_on_missing_output: bool = True,
) -> List[JobState]:
    """The cluster's jobs (one per driver), e.g. ``list_jobs(filters=[("status", "=", "RUNNING")])``."""
    return _list(JOBS, address, filters, limit, timeout, detail, raise_on_missing_output)


def list_workers(
    address: Optional[str] = None,
    filters: Optional[List[Filter]] = None,
    limit: int = DEFAULT_LIMIT,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    detail: bool = False,
    raise_on_missing_output: bool = True,
) -> List[WorkerState]:
    """The cluster's worker and driver processes, e.g. ``list_workers(filters=[("is_alive", "=", True)])``."""
    return _list(WORKERS, address, filters, limit, timeout, detail, raise_on_missing_output)


def list_objects(
    address: Optional[str] = None,
    filters: Optional[List[Filter]] = None,
    limit: int = DEFAULT_LIMIT,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    detail: bool = False,
    raise_on_missing_output: bool = True,
) -> List[ObjectState]:
    """The objects live processes reference, one row per reference, e.g.
    ``list_objects(filters=[("reference_type", "=", "LOCAL_REFERENCE")])``."""
    return _list(OBJECTS, address, filters, limit, timeout, detail, raise_on_missing_output)


def get_task(
    id: Union[str, Any], address: Optional[str] = None, timeout: int = DEFAULT_RPC_TIMEOUT
) -> Optional[Union[TaskState, List[TaskState]]]:
    """The attempts of the task with this hex id (or of the task an ``ObjectRef`` is the
    result of), with every field, as Ray's: None if there is none, the attempt if there
    is one, else the list of attempts."""
    # An rtd ObjectRef's task_id() is already hex.
    task_id = id if isinstance(id, str) else id.task_id()
    attempts = _get_rows(TASKS, task_id, address, timeout)
    if not attempts:
        return None
    return attempts[0] if len(attempts) == 1 else attempts


def get_job(id: str, address: Optional[str] = None, timeout: int = DEFAULT_RPC_TIMEOUT) -> Optional[JobState]:
    """The job with this hex job id, with every field; None if there is none."""
    return _get_one(JOBS, id, address, timeout)


def get_worker(id: str, address: Optional[str] = None, timeout: int = DEFAULT_RPC_TIMEOUT) -> Optional[WorkerState]:
    """The worker with this hex id, with every field; None if there is none."""
    return _get_one(WORKERS, id, address, timeout)


def _summarize(resource: _Resource, address: Optional[str], timeout: int, raise_on_missing_output: bool) -> Any:
    summary = _request(address, f"/api/v0/{resource.name}/summarize", [], timeout)
    if raise_on_missing_output:
        _check_complete(resource, summary)
    return summary["result"]["node_id_to_summary"]


def summarize_actors(
    address: Optional[str] = None, timeout: int = DEFAULT_RPC_TIMEOUT, raise_on_missing_output: bool = True
) -> Dict[str, Any]:
    """Actors by class with counts by state, as Ray's:
    ``{"cluster": {"summary": {CLASS: {"class_name", "state_counts"}}, "total_actors", "summary_by"}}``."""
    return _summarize(ACTORS, address, timeout, raise_on_missing_output)


def summarize_tasks(
    address: Optional[str] = None, timeout: int = DEFAULT_RPC_TIMEOUT, raise_on_missing_output: bool = True
) -> Dict[str, Any]:
    """Task attempts by function with counts by state, as Ray's: ``{"cluster": {"summary":
    {FUNC: {"func_or_class_name", "state_counts"}}, "total_tasks", "summary_by": "func_name"}}``."""
    return _summarize(TASKS, address, timeout, raise_on_missing_output)


def summarize_objects(
    address: Optional[str] = None, timeout: int = DEFAULT_RPC_TIMEOUT, raise_on_missing_output: bool = True
) -> Dict[str, Any]:
    """Object references by call site (rtd records none: one group, ``"disabled"``), as
    Ray's ``ObjectSummaries``: ``{"cluster": {"summary": {CALL_SITE: {"total_objects",
    "total_size_mb", "total_num_workers", "total_num_nodes", "task_state_counts",
    "ref_type_counts"}}, "total_objects", "total_size_mb", "callsite_enabled", "summary_by"}}``."""
    return _summarize(OBJECTS, address, timeout, raise_on_missing_output)


def list_logs(
    address: Optional[str] = None,
    node_id: Optional[str] = None,
    node_ip: Optional[str] = None,
    glob_filter: Optional[str] = None,
    timeout: int = DEFAULT_RPC_TIMEOUT,
) -> Dict[str, List[str]]:
    """A node's log files by Ray's categories (``worker_out``, ``worker_err``, ``raylet``,
    ``misc``), those matching the shell pattern ``glob_filter`` (e.g. ``"*worker*"``).
    The node is named by id, or by address when one alive node has it."""
    if node_id is None and node_ip is None:
        raise ValueError("At least one of node ip and node id is required")
    params = [(name, value) for name, value in (("node_id", node_id), ("node_ip", node_ip)) if value is not None]
    return _request(address, "/api/v0/logs", [*params, ("glob", glob_filter or "*")], timeout)


# How often ``get_log(follow=True)`` asks for more: by default, and at the slowest.
FOLLOW_INTERVAL_S = 0.5
MAX_FOLLOW_INTERVAL_S = 5.0


def get_log(
    address: Optional[str] = None,
    node_id: Optional[str] = None,
    node_ip: Optional[str] = None,
    filename: Optional[str] = None,
    actor_id: Optional[str] = None,
    task_id: Optional[str] = None,
    pid: Optional[int] = None,
    follow: bool = False,
    tail: int = 1000,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    suffix: str = "out",
    encoding: Optional[str] = "utf-8",
    errors: str = "strict",
    _interval: Optional[float] = None,
) -> Generator[Any, None, None]:
    """A log's text in chunks, as Ray's: the file ``filename`` of a node (``node_id`` or
    ``node_ip``), or the ``.out`` (``suffix="err"``: ``.err``) of the worker that ran an
    actor, a task, or the process ``pid`` on a node. The last ``tail`` lines first (-1:
    all); with ``follow=True`` it then asks every ``_interval`` seconds (0.5 by default,
    at most 5) for what was written since, until the caller stops iterating. Chunks are
    text, or bytes when ``encoding`` is None.

        for chunk in get_log(actor_id=actor._actor_id.hex(), tail=50):
            print(chunk, end="")
    """
    named: Dict[str, Any] = {"node_id": node_id, "node_ip": node_ip, "filename": filename, "actor_id": actor_id}
    named.update(task_id=task_id, pid=pid)
    params = [(name, str(value)) for name, value in named.items() if value is not None]
    params += [("suffix", suffix), ("lines", str(tail))]
    decoder = codecs.getincrementaldecoder(encoding)(errors) if encoding else None
    interval = min(max(_interval or FOLLOW_INTERVAL_S, 0.01), MAX_FOLLOW_INTERVAL_S)
    offset: Optional[str] = None
    while True:
        read_on = [("offset", offset)] if offset else []
        body, headers = _get(address, "/api/v0/logs/file", [*params, *read_on], timeout)
        offset = headers.get("x-rtd-end-offset")
        if offset is None:
            raise RayStateApiException("The log API did not say where the log ends (x-rtd-end-offset)")
        chunk = decoder.decode(body) if decoder else body
        if chunk:
            yield chunk
        if not follow:
            return
        time.sleep(interval)
