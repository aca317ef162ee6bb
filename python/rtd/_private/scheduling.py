"""Scheduling strategies as resource requests.

As in Ray, work in a placement group asks for the group's own resources, which a
committed bundle adds to its node; so a task in a bundle is scheduled like any other
task. How those resources are named is ``rtd_common::bundle``'s business:
``_core.bundle_request`` builds the request. Node affinity is checked against the live
node list.
"""

from __future__ import annotations

from rtd import _core
from rtd._private import task_context


def check_affinity(strategy):
    """Why hard node affinity can never be met (the node is not alive), or None."""
    from rtd.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not isinstance(strategy, NodeAffinitySchedulingStrategy) or strategy.soft:
        return None
    if strategy.node_id in {n["NodeID"] for n in _core.nodes() if n["Alive"]}:
        return None
    return (
        f"node {strategy.node_id} named by a hard NodeAffinitySchedulingStrategy is not alive "
        "(use soft=True to run elsewhere)"
    )


class Placement:
    """Where work may run, as the raylets read it."""

    __slots__ = ("strategy", "affinity_node", "affinity_soft")

    def __init__(self, strategy="", affinity_node="", affinity_soft=False):
        self.strategy = strategy
        self.affinity_node = affinity_node
        self.affinity_soft = affinity_soft


DEFAULT = Placement()


def placement_of(strategy):
    """The raylet-level placement for a strategy string or NodeAffinity object."""
    from rtd.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        _core.check_node_id(strategy.node_id)
        return Placement("", strategy.node_id, bool(strategy.soft))
    if strategy == "SPREAD":
        return Placement("SPREAD")
    return DEFAULT


def resolve(resources, strategy):
    """``(resources, capture_pg)`` for work with this strategy: the resource request to
    submit, and the group its children should use (raw id or None). Node affinity is
    left to the raylets (see ``placement_of``)."""
    from rtd.util.placement_group import PlacementGroup
    from rtd.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

    if strategy is None:
        captured = task_context.capture_placement_group
        if captured is None:
            return resources, None
        strategy = PlacementGroupSchedulingStrategy(PlacementGroup(captured), -1, True)
    if isinstance(strategy, str):
        return resources, None
    if isinstance(strategy, PlacementGroupSchedulingStrategy):
        pg = strategy.placement_group
        if not isinstance(pg, PlacementGroup):
            raise ValueError(f"PlacementGroupSchedulingStrategy needs a PlacementGroup, got {type(pg).__name__}.")
        index = strategy.placement_group_bundle_index
        if isinstance(index, bool) or not isinstance(index, int) or index < -1 or index >= pg.bundle_count:
            raise ValueError(
                f"placement_group_bundle_index {index!r} is out of range: the group has "
                f"{pg.bundle_count} bundle(s) (use -1 for any bundle)."
            )
        capture = bytes(pg.id) if strategy.placement_group_capture_child_tasks else None
        return _core.bundle_request(resources, bytes(pg.id), index), capture
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return resources, None
    raise ValueError(f"Unknown scheduling_strategy {strategy!r}.")
