"""The state API's client: each function is one GET of the head's dashboard
(``/api/v0/<resource>``, see the ``rtd-dashboard`` crate), which filters, counts and
limits; this module only builds the request and wraps the rows.

``address`` is the dashboard's ``HOST:PORT`` (or ``http://HOST:PORT``), as
``rtd.init()`` returns it in ``dashboard_url``. Without one (or with ``"auto"``) the
connected driver's cluster is asked, else the newest cluster started on this machine.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Type, Union

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



@dataclass(frozen=True)
class _Resource:
    """A kind of thing the state API lists: its path, its id field, its row type."""

    name: str
    id_key: str
    row: Type[StateRow]


NODES = _Resource("nodes", "node_id", NodeState)
ACTORS = _Resource("actors", "actor_id", ActorState)
PLACEMENT_GROUPS = _Resource("placement_groups", "placement_group_id", PlacementGroupState)


def _local_dashboard() -> Optional[str]:
    """The dashboard of the connected driver's cluster, else of the newest cluster
    started on this machine."""
    from rtd import api

    if api.is_initialized():
        return api._state.dashboard_url
    try:
        with open(os.path.join(api.DEFAULT_TEMP_DIR, "session_latest", "node.json")) as f:
            return json.load(f).get("dashboard_url") or None
    except (OSError, ValueError):
        return None


def _base_url(address: Optional[str]) -> str:
    if address in (None, "auto"):
        address = _local_dashboard()
        if not address:
            raise ServerUnavailable(
                "No rtd dashboard found: connect with rtd.init() to a cluster that serves one "
                "(include_dashboard is on by default), or pass address='HOST:PORT' of a dashboard."
            )
    assert address is not None
    return address.rstrip("/") if "://" in address else f"http://{address.rstrip('/')}"


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


def _request(address: Optional[str], path: str, params: List[Tuple[str, str]], timeout: float) -> Dict[str, Any]:
    """GETs ``path`` of the state API; the answer's ``data.result``."""
    url = f"{_base_url(address)}{path}?{urllib.parse.urlencode([*params, ('timeout', str(int(timeout)))])}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as e:
        try:
            answer = json.load(e)
        except ValueError:
            raise RayStateApiException(f"{url} answered {e.code} without a JSON body") from None
    except (urllib.error.URLError, OSError) as e:
        raise ServerUnavailable(f"Failed to reach the state API at {url}: {e}") from None
    except ValueError:
        raise RayStateApiException(f"{url} did not answer with JSON; is it an rtd dashboard?") from None
    if answer.get("result") is not True:
        raise RayStateApiException(answer.get("msg") or f"{url} refused the request")
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


def _get(resource: _Resource, id: str, address: Optional[str], timeout: float) -> Optional[Any]:
    rows = _list(resource, address, [(resource.id_key, "=", id)], 1, timeout, True, False)
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
    return _get(NODES, id, address, timeout)


def get_actor(id: str, address: Optional[str] = None, timeout: int = DEFAULT_RPC_TIMEOUT) -> Optional[ActorState]:
    """The actor with this hex id, with every field; None if there is none."""
    return _get(ACTORS, id, address, timeout)


def get_placement_group(
    id: str, address: Optional[str] = None, timeout: int = DEFAULT_RPC_TIMEOUT
) -> Optional[PlacementGroupState]:
    """The placement group with this hex id, with every field; None if there is none."""
    return _get(PLACEMENT_GROUPS, id, address, timeout)


def summarize_actors(
    address: Optional[str] = None, timeout: int = DEFAULT_RPC_TIMEOUT, raise_on_missing_output: bool = True
) -> Dict[str, Any]:
    """Actors by class with counts by state, as Ray's:
    ``{"cluster": {"summary": {CLASS: {"class_name", "state_counts"}}, "total_actors", "summary_by"}}``."""
    summary = _request(address, "/api/v0/actors/summarize", [], timeout)
    if raise_on_missing_output:
        _check_complete(ACTORS, summary)
    return summary["result"]["node_id_to_summary"]
