"""Placement groups: reserve bundles of resources together, then run tasks and actors
in them.

    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    rtd.get(pg.ready())
    f.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()
    remove_placement_group(pg)
"""

from __future__ import annotations

import numbers

from rtd import _core, api
from rtd._private import serialization, task_context

VALID_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class PlacementGroupID(bytes):
    """A placement group's id (Ray's ``PlacementGroupID``)."""

    def hex(self):  # noqa: A003 - Ray's name
        return bytes.hex(self)

    def binary(self):
        return bytes(self)


class PlacementGroup:
    """A handle to a placement group; picklable."""

    def __init__(self, id, bundle_specs=None):
        self.id = PlacementGroupID(id)
        self._bundle_specs = bundle_specs

    @property
    def bundle_specs(self):
        if self._bundle_specs is None:
            info = _core.get_placement_group(bytes(self.id), None)
            self._bundle_specs = info["bundles"] if info else []
        return self._bundle_specs

    @property
    def bundle_count(self):
        return len(self.bundle_specs)

    def ready(self):
        """An ObjectRef that resolves (to this group) once every bundle is reserved; a
        removed group's resolves to ``TaskUnschedulableError``. It waits on
        the same answer from the GCS as ``wait()``: no task runs for it."""
        api.auto_init()
        payload, _buffers, _contained = serialization.serialize(self)
        return _core.placement_group_ready(bytes(self.id), payload)

    def wait(self, timeout_seconds=30):
        """True once the group is created; False if that did not happen in time."""
        api.auto_init()
        info = _core.wait_placement_group(bytes(self.id), float(timeout_seconds))
        return info is not None and info["state"] == "CREATED"

    def __eq__(self, other):
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self):
        return hash(bytes(self.id))

    def __repr__(self):
        return f"PlacementGroup({self.id.hex()})"

    def __reduce__(self):
        return (PlacementGroup, (bytes(self.id), self._bundle_specs))


def _check_bundles(bundles):
    if not isinstance(bundles, list) or not bundles:
        raise ValueError("The placement group `bundles` argument must be a non-empty list of dicts.")
    for i, bundle in enumerate(bundles):
        if not isinstance(bundle, dict) or not bundle:
            raise ValueError(f"Bundle {i} must be a non-empty dict of resource amounts, got {bundle!r}.")
        for name, amount in bundle.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"Bundle {i}: resource names must be non-empty strings, got {name!r}.")
            if isinstance(amount, bool) or not isinstance(amount, numbers.Real) or amount < 0:
                raise ValueError(f"Bundle {i}: resource {name!r} must be a non-negative number, got {amount!r}.")
        if all(amount == 0 for amount in bundle.values()):
            raise ValueError(f"Bundle {i} cannot ask for zero resources: {bundle!r}.")


def placement_group(bundles, strategy="PACK", name="", lifetime=None, **kwargs):
    """Reserves ``bundles`` (a list of resource dicts) with ``strategy``; returns at once
    with a PENDING group (``ready()``/``wait()`` tell when it is CREATED)."""
    api.auto_init()
    _check_bundles(bundles)
    if strategy not in VALID_STRATEGIES:
        raise ValueError(f"Invalid placement group strategy {strategy!r}. Valid ones are {list(VALID_STRATEGIES)}.")
    if lifetime not in (None, "detached"):
        raise ValueError(f"Placement group `lifetime` must be None or 'detached', got {lifetime!r}.")
    if not isinstance(name, str):
        raise TypeError(f"Placement group `name` must be a string, got {type(name).__name__}.")
    if kwargs:
        raise TypeError(f"placement_group() got unexpected keyword argument(s): {sorted(kwargs)}")
    info = _core.create_placement_group(name, strategy, bundles, lifetime == "detached")
    return PlacementGroup(info["pg_id"], [dict(b) for b in bundles])


def remove_placement_group(placement_group):
    """Frees the group's resources; actors and tasks running in it are stopped."""
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"remove_placement_group() expects a PlacementGroup, got {type(placement_group).__name__}.")
    api.auto_init()
    _core.remove_placement_group(bytes(placement_group.id))


def _table_entry(info):
    return {
        "placement_group_id": info["pg_id"].hex(),
        "name": info["name"],
        "bundles": dict(enumerate(info["bundles"])),
        "bundles_to_node_id": dict(enumerate(info["bundle_nodes"])),
        "strategy": info["strategy"],
        "state": info["state"],
        "is_detached": info["detached"],
    }


def placement_group_table(placement_group=None):
    """One group's state, or every group's by hex id."""
    api.auto_init()
    if placement_group is not None:
        info = _core.get_placement_group(bytes(placement_group.id), None)
        return _table_entry(info) if info else {}
    return {info["pg_id"].hex(): _table_entry(info) for info in _core.list_placement_groups()}


def get_placement_group(placement_group_name):
    """The live placement group with this name; ``ValueError`` if there is none."""
    if not isinstance(placement_group_name, str) or not placement_group_name:
        raise ValueError("Please supply a non-empty placement group name.")
    api.auto_init()
    info = _core.get_placement_group(None, placement_group_name)
    if info is None:
        raise ValueError(f"Failed to look up placement group with name: {placement_group_name}")
    return PlacementGroup(info["pg_id"], info["bundles"])


def get_current_placement_group():
    """The placement group the current task or actor runs in, or None (also in the
    driver)."""
    pg_id = _core.placement_group_of_resources(list(task_context.resources))
    return None if pg_id is None else PlacementGroup(pg_id)
