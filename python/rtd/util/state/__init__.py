"""``rtd.util.state``: Ray's state API (``ray.util.state``) — what the cluster's nodes,
actors, placement groups, tasks, jobs, workers and objects are doing, and its logs,
read from the head's dashboard over HTTP.

    import rtd
    from rtd.util.state import get_log, list_actors, list_tasks, summarize_actors

    rtd.init()
    alive = list_actors(filters=[("state", "=", "ALIVE")], detail=True)
    print(alive[0].class_name, alive[0]["node_id"])
    print(summarize_actors())
    failed = list_tasks(filters=[("state", "=", "FAILED")], detail=True)
    print("".join(get_log(actor_id=alive[0].actor_id, tail=20)))
"""

from rtd.util.state.api import (
    ActorState,
    JobState,
    NodeState,
    ObjectState,
    PlacementGroupState,
    TaskState,
    WorkerState,
    get_actor,
    get_job,
    get_log,
    get_node,
    get_placement_group,
    get_task,
    get_worker,
    list_actors,
    list_jobs,
    list_logs,
    list_nodes,
    list_objects,
    list_placement_groups,
    list_tasks,
    list_workers,
    summarize_actors,
    summarize_objects,
    summarize_tasks,
)
from rtd.util.state.exception import RayStateApiException

__all__ = [
    "ActorState",
    "JobState",
    "NodeState",
    "ObjectState",
    "PlacementGroupState",
    "RayStateApiException",
    "TaskState",
    "WorkerState",
    "get_actor",
    "get_job",
    "get_log",
    "get_node",
    "get_placement_group",
    "get_task",
    "get_worker",
    "list_actors",
    "list_jobs",
    "list_logs",
    "list_nodes",
    "list_objects",
    "list_placement_groups",
    "list_tasks",
    "list_workers",
    "summarize_actors",
    "summarize_objects",
    "summarize_tasks",
]
