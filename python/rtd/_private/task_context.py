"""What this worker process is running now: the task's GPUs and resources, its name,
the placement group its children inherit, its job's namespace, and the actor the
process hosts.

The worker loop (``rtd._private.worker``) sets these before each task; the API
(``get_gpu_ids``, ``get_runtime_context``, namespaces, placement groups) reads them. This
module imports nothing of rtd, so every module can read it without an import cycle.
In a driver they keep their defaults.
"""

from __future__ import annotations

gpu_ids: tuple = ()
resources: dict = {}
# The running function's (or the hosted actor's class's) name, for output prefixes.
name: str | None = None
# Raw id of the placement group the running task's children are scheduled in.
capture_placement_group: bytes | None = None
job_namespace: str | None = None
actor_id: str | None = None
