"""The worker process: ``python -m rtd._private.worker``, started by the raylet.

It connects its core worker, then loops: take the next pushed task, load its function
(cached by id from the GCS function table), resolve arguments, run it, and send back
the results or the error.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import traceback

import cloudpickle

from rtd import _core, api, exceptions
from rtd._private import serialization

_functions: dict = {}
_current = {"gpu_ids": (), "resources": {}}


def current_gpu_ids():
    return _current["gpu_ids"]


def current_resources():
    return _current["resources"]


def _load_function(function_id: bytes):
    fn = _functions.get(function_id)
    if fn is None:
        pickled = _core.kv_get("fn:" + function_id.hex())
        if pickled is None:
            raise exceptions.RaySystemError(f"function {function_id.hex()} is not in the function table")
        fn = cloudpickle.loads(pickled)
        if hasattr(fn, "_function"):  # a RemoteFunction object
            fn = fn._function
        _functions[function_id] = fn
    return fn


_jobs_seen: set = set()


def _set_environment(task):
    if task.gpu_ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in task.gpu_ids)
    else:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    resources = task.resources
    os.environ["OMP_NUM_THREADS"] = str(max(1, int(resources.get("CPU", 1))))
    _current["gpu_ids"] = tuple(task.gpu_ids)
    _current["resources"] = resources
    if task.job_id not in _jobs_seen:
        _jobs_seen.add(task.job_id)
        _add_job_paths(task.job_id)


def _add_job_paths(job_id):
    """Modules next to the driver's script import in tasks, as in Ray: the driver
    publishes its script directory and working directory for its job's workers."""
    paths = _core.kv_get(f"job:{job_id}:sys_path")
    if not paths:
        return
    for path in reversed(json.loads(paths)):
        if path not in sys.path:
            sys.path.insert(1, path)


class _UpstreamError(Exception):
    """An argument is an error object: the task fails with that same error."""

    def __init__(self, error):
        self.error = error


def _resolve_args(task):
    args, kwargs = pickle.loads(task.args)
    values = []
    for metadata, data in _core.arg_values(task):
        value = serialization.deserialize(metadata, data)
        if metadata != serialization.VALUE:
            raise _UpstreamError(value)
        values.append(value)
    if values:
        args = tuple(values[a.index] if type(a) is serialization.ArgRef else a for a in args)
        kwargs = {k: values[v.index] if type(v) is serialization.ArgRef else v for k, v in kwargs.items()}
    return args, kwargs


def _split_returns(task, result):
    n = task.num_returns
    if n == 1:
        return [result]
    if n == 0:
        return []
    if not isinstance(result, (tuple, list)) or len(result) != n:
        raise ValueError(
            f"Task {task.function_name} declared num_returns={n} but returned "
            f"{type(result).__name__} {'of length ' + str(len(result)) if hasattr(result, '__len__') else ''}"
        )
    return list(result)


def _error_payload(error: BaseException) -> bytes:
    try:
        return cloudpickle.dumps(error, protocol=5)
    except Exception:
        # The cause cannot be pickled: keep its type name and text.
        if isinstance(error, exceptions.RayTaskError):
            cause = exceptions.RaySystemError(f"{type(error.cause).__name__}: {error.cause}")
            error = exceptions.RayTaskError(error.function_name, error.traceback_str, cause, error.pid)
        return cloudpickle.dumps(error, protocol=5)


def _is_retryable(task, error) -> bool:
    policy = task.retry_exceptions
    if not policy:
        return False
    allowed = pickle.loads(policy)
    if allowed is True:
        return isinstance(error, Exception)
    return isinstance(error, allowed)


def _finish_with_error(task, error, retryable):
    payload = _error_payload(error)
    # A task with no declared returns still reports its error to the submitter.
    n = max(task.num_returns, 1) if task.num_returns else 0
    results = [(serialization.ERROR, payload, [])] * n
    _core.finish_task(task, results, True, retryable)


def execute(task):
    _set_environment(task)
    try:
        fn = _load_function(task.function_id)
        args, kwargs = _resolve_args(task)
        result = fn(*args, **kwargs)
        returns = _split_returns(task, result)
        results = []
        for value in returns:
            payload, buffers = serialization.serialize(value)
            results.append((serialization.VALUE, payload, buffers))
    except _UpstreamError as upstream:
        _finish_with_error(task, upstream.error, False)
        return
    except KeyboardInterrupt:
        # rtd.cancel() interrupted the task.
        _finish_with_error(task, exceptions.TaskCancelledError(f"task {task.function_name} was cancelled"), False)
        return
    except BaseException as e:  # noqa: BLE001 - every error goes back to the owner
        tb = traceback.format_exc()
        # An error from a nested get keeps its original cause (not wrapped twice).
        cause = e.cause if isinstance(e, exceptions.RayTaskError) else e
        error = exceptions.RayTaskError(task.function_name, tb, cause, os.getpid())
        _finish_with_error(task, error, _is_retryable(task, e))
        return
    _core.finish_task(task, results, False, False)


def main():
    _core.connect(
        os.environ["RTD_RAYLET_SOCKET"],
        os.environ["RTD_SESSION_DIR"],
        True,
        os.environ["RTD_WORKER_ID"],
    )
    api._state.is_worker = True
    while True:
        try:
            task = _core.next_task(1.0)
            if task is not None:
                execute(task)
        except KeyboardInterrupt:
            # A cancel that arrived after its task finished: nothing to interrupt.
            continue


if __name__ == "__main__":
    # Run the imported module's main, so that state lives in `rtd._private.worker`
    # (which the API imports) rather than in a second copy named __main__.
    from rtd._private import worker

    sys.exit(worker.main())
