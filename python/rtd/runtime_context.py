"""``rtd.get_runtime_context()``: who and where the caller is."""

from __future__ import annotations

from rtd import _core


class RuntimeContext:
    """Ids of the current job, node, worker and task, as Ray's RuntimeContext."""

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
        from rtd._private import worker

        return worker.current_actor_id()

    @property
    def namespace(self):
        from rtd import api

        return api.current_namespace()

    @property
    def gcs_address(self):
        return self._info()["session_dir"]

    def get(self) -> dict:
        info = self._info()
        return {"job_id": info["job_id"], "node_id": info["node_id"], "task_id": info["task_id"]}

    def get_assigned_resources(self) -> dict:
        from rtd._private import worker

        return dict(worker.current_resources())
