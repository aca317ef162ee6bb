"""``rtd.util``: placement groups and scheduling strategies."""

from rtd.util import scheduling_strategies
from rtd.util.placement_group import (
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

__all__ = [
    "placement_group",
    "remove_placement_group",
    "placement_group_table",
    "get_placement_group",
    "get_current_placement_group",
    "scheduling_strategies",
]
