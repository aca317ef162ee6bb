"""Where a cluster's dashboard is: the state API and the jobs API are both served on
its port, and both clients take the same ``address``.

``address`` is the cluster's address (the head's ``HOST:PORT``, as ``rtd.init(address=...)``
takes it: the dashboard is looked up in the GCS) or the dashboard's ``HOST:PORT`` (or
``http://HOST:PORT``), as ``rtd.init()`` returns it in ``dashboard_url``. Without one (or
with ``"auto"``) the connected driver's cluster is asked, else the newest cluster started
on this machine.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional, Type

from rtd import _core

# Addresses already resolved to a dashboard (a cluster's address to its dashboard's).
_resolved: Dict[str, str] = {}


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


def _dashboard_of(address: str, error: Type[Exception]) -> str:
    """The dashboard ``address`` names: the cluster's at a node's address, else
    ``address`` itself (a dashboard does not answer as a node)."""
    if address not in _resolved:
        try:
            found = _core.dashboard_of(address)
        except ConnectionError:
            found = address
        if found is None:
            raise error(f"The rtd cluster at {address} serves no dashboard (started with include_dashboard=False?).")
        _resolved[address] = found
    return _resolved[address]


def base_url(address: Optional[str], error: Type[Exception]) -> str:
    """``http://HOST:PORT`` of the dashboard ``address`` names; ``error`` when there is none."""
    if address in (None, "auto"):
        address = _local_dashboard()
        if not address:
            raise error(
                "No rtd dashboard found: connect with rtd.init() to a cluster that serves one "
                "(include_dashboard is on by default), or pass address='HOST:PORT' of the cluster or its dashboard."
            )
    elif "://" not in address:
        address = _dashboard_of(address.rstrip("/"), error)
    assert address is not None
    return address.rstrip("/") if "://" in address else f"http://{address.rstrip('/')}"
