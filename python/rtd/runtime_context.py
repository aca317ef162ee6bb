"""``rtd.get_runtime_context()``: who and where the caller is."""

from __future__ import annotations

import json

from rtd import _core
from rtd._private import runtime_env, task_context


class RuntimeContext:
    """Ids of the current job, node, worker and task, as Ray's RuntimeContext."""

    def __init__(self, namespace: str | None):
        self._namespace = namespace

    def _info(self):
        return _core.runtime_info()

    def get_job_id(self) -> str:
        return self._info()["job_id"]

    def get_node_id(self) -> str:
        return self._info()["node_id"]

    def get_worker_id(self) -> str:
        return self._info()["worker_id"]

    def get_task_id(self):
        return self._info()["task_id"]

    def get_actor_id(self):
        return task_context.actor_id

    @property
    def namespace(self):
        return self._namespace

    @property
    def runtime_env(self):
        """This job's or worker's runtime_env (a ``RuntimeEnv``), as Ray's."""
        from rtd.runtime_env import RuntimeEnv

        return RuntimeEnv(**runtime_env.current(), _validate=False)

    def get_runtime_env_string(self) -> str:
        return json.dumps(runtime_env.current())

    @property
    def gcs_address(self):
        return self._info()["session_dir"]

    def get(self) -> dict:
        info = self._info()
        return {"job_id": info["job_id"], "node_id": info["node_id"], "task_id": info["task_id"]}

    def get_assigned_resources(self) -> dict:
        return dict(task_context.resources)
