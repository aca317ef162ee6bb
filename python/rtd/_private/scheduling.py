"""Scheduling strategies as resource requests.

As in Ray, work in a placement group asks for the group's own resources: a committed
bundle ``i`` of group ``pg`` adds node resources ``CPU_group_i_pg`` (this bundle) and
``CPU_group_pg`` (any bundle), and a ``bundle_group_*`` marker, so a task in a bundle is
scheduled like any other task. Node affinity is checked against the live node list.
"""

from __future__ import annotations

from rtd import _core

# A sliver of the bundle marker, so that work asking for no resources is still pinned
# to its group.
_MARKER = 0.001


def _in_group(resources, pg_hex, index):
    out = {}
    for name, amount in resources.items():
        if index == -1:
            out[f"{name}_group_{pg_hex}"] = amount
        else:
            out[f"{name}_group_{index}_{pg_hex}"] = amount
            out[f"{name}_group_{pg_hex}"] = amount
    marker = f"bundle_group_{pg_hex}" if index == -1 else f"bundle_group_{index}_{pg_hex}"
    out[marker] = _MARKER
    return out


def resolve(resources, strategy):
    """``(resources, capture_pg, unschedulable)`` for work with this strategy:
    the resource request to submit, the group its children should use (raw id or None),
    and why it can never run (or None)."""
    from rtd.util.placement_group import PlacementGroup
    from rtd.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

    if strategy is None:
        from rtd._private import worker

        captured = worker.current_capture_placement_group()
        if captured is None:
            return resources, None, None
        strategy = PlacementGroupSchedulingStrategy(PlacementGroup(captured), -1, True)
    if isinstance(strategy, str):
        return resources, None, None
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
        return _in_group(resources, pg.id.hex(), index), capture, None
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        alive = {n["NodeID"] for n in _core.nodes() if n["Alive"]}
        if strategy.node_id in alive or strategy.soft:
            return resources, None, None
        return resources, None, (
            f"node {strategy.node_id} named by a hard NodeAffinitySchedulingStrategy is not alive "
            "(use soft=True to run elsewhere)"
        )
    raise ValueError(f"Unknown scheduling_strategy {strategy!r}.")
