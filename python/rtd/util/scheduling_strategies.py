"""Scheduling strategies, as Ray's: place work in a placement group's bundle, or on a
given node."""

from __future__ import annotations


class PlacementGroupSchedulingStrategy:
    """Run in ``placement_group``: in bundle ``placement_group_bundle_index`` (-1: any
    bundle). With ``placement_group_capture_child_tasks`` the tasks it submits use the
    group too."""

    def __init__(self, placement_group, placement_group_bundle_index=-1, placement_group_capture_child_tasks=None):
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks


class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id`` (hex). If it is gone: with ``soft`` anywhere else,
    otherwise the task fails with TaskUnschedulableError."""

    def __init__(self, node_id, soft, _spill_on_unavailable=False, _fail_on_unavailable=False):
        self.node_id = node_id
        self.soft = soft
