"""``rtd.util``: placement groups, scheduling strategies, ``ActorPool`` and (in
``rtd.util.queue``) ``Queue``."""

from rtd.util import queue, scheduling_strategies
from rtd.util.actor_pool import ActorPool
from rtd.util.placement_group import (
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

__all__ = [
    "ActorPool",
    "queue",
    "placement_group",
    "remove_placement_group",
    "placement_group_table",
    "get_placement_group",
    "get_current_placement_group",
    "scheduling_strategies",
]
