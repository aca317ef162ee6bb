"""``rtd.util``: placement groups, scheduling strategies and ``ActorPool``. As in Ray,
``rtd.util.queue`` (``Queue``) is imported on its own: it needs asyncio, which the
runtime does not load otherwise."""

from rtd.util import scheduling_strategies
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
    "placement_group",
    "remove_placement_group",
    "placement_group_table",
    "get_placement_group",
    "get_current_placement_group",
    "scheduling_strategies",
]
