"""``rtd.util.state``: Ray's state API (``ray.util.state``) — what the cluster's nodes,
actors and placement groups are doing, read from the head's dashboard over HTTP.

    import rtd
    from rtd.util.state import list_actors, summarize_actors

    rtd.init()
    alive = list_actors(filters=[("state", "=", "ALIVE")], detail=True)
    print(alive[0].class_name, alive[0]["node_id"])
    print(summarize_actors())
"""

from rtd.util.state.api import (
    ActorState,
    NodeState,
    PlacementGroupState,
    get_actor,
    get_node,
    get_placement_group,
    list_actors,
    list_nodes,
    list_placement_groups,
    summarize_actors,
)
from rtd.util.state.exception import RayStateApiException

__all__ = [
    "ActorState",
    "NodeState",
    "PlacementGroupState",
    "RayStateApiException",
    "get_actor",
    "get_node",
    "get_placement_group",
    "list_actors",
    "list_nodes",
    "list_placement_groups",
    "summarize_actors",
]
