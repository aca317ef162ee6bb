"""The worker process: ``python -m rtd._private.worker``, started by the raylet.

It connects its core worker, then loops: take the next pushed task, load its function
(cached by id from the GCS function table), resolve arguments, run it, and send back
the results or the error.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import threading
import traceback

import cloudpickle

from rtd import _core, api, exceptions
from rtd._private import runtime_env, serialization, task_context

_functions: dict = {}


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


_jobs: dict = {}  # job id -> {"sys_path": [...], "namespace": str}
_current_job = {"id": None}


def _set_environment(task):
    if task.gpu_ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in task.gpu_ids)
    else:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    resources = task.resources
    os.environ["OMP_NUM_THREADS"] = str(max(1, int(resources.get("CPU", 1))))
    task_context.gpu_ids = tuple(task.gpu_ids)
    task_context.resources = resources
    task_context.name = task.function_name
    task_context.capture_placement_group = task.capture_placement_group
    _current_job["id"] = task.job_id
    if task.job_id not in _jobs:
        _load_job(task.job_id)
    task_context.job_namespace = _jobs[task.job_id]["namespace"]


def _load_job(job_id):
    """Modules next to the driver's script import in tasks, as in Ray: the driver
    publishes its script directory and working directory (and its namespace)."""
    raw = _core.kv_get(f"job:{job_id}")
    job = json.loads(raw) if raw else {"sys_path": [], "namespace": None}
    _jobs[job_id] = job
    for path in reversed(job["sys_path"]):
        if path not in sys.path:
            sys.path.insert(1, path)


class _UpstreamError(Exception):
    """An argument is an error object: the task fails with that same error."""

    def __init__(self, error):
        self.error = error


def _arg_values(task):
    values = []
    for metadata, data in _core.arg_values(task):
        value = serialization.deserialize(metadata, data)
        if metadata != serialization.VALUE:
            raise _UpstreamError(value)
        values.append(value)
    return values


def _substitute(args, kwargs, values):
    if values:
        args = tuple(values[a.index] if type(a) is serialization.ArgRef else a for a in args)
        kwargs = {k: values[v.index] if type(v) is serialization.ArgRef else v for k, v in kwargs.items()}
    return args, kwargs


def _resolve_args(task):
    args, kwargs = serialization.loads(task.args)
    return _substitute(args, kwargs, _arg_values(task))


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
        return serialization.pickle_dumps(error)
    except Exception:
        # The cause cannot be pickled: keep its type name and text.
        if isinstance(error, exceptions.RayTaskError):
            cause = exceptions.RaySystemError(f"{type(error.cause).__name__}: {error.cause}")
            error = exceptions.RayTaskError(error.function_name, error.traceback_str, cause, error.pid)
        return serialization.pickle_dumps(error)


def _finish(task, results, app_error, retryable, error=None):
    """Sends the results; what the task printed (even a partial line) goes first.
    ``error`` is (Ray's error type name, text) for the task's state when it failed."""
    sys.stdout.flush()
    sys.stderr.flush()
    _core.finish_task(task, results, app_error, retryable, error)


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
    results = [(serialization.ERROR, payload, [], [])] * n
    kind = "TASK_CANCELLED" if isinstance(error, exceptions.TaskCancelledError) else "TASK_EXECUTION_EXCEPTION"
    _finish(task, results, True, retryable, (kind, str(error)))


class _ActorRuntime:
    """The actor this worker is dedicated to, and how its calls run: one at a time in
    arrival order (the default), on threads (``max_concurrency`` > 1 or concurrency
    groups), or as coroutines on one event loop (async actors)."""

    def __init__(self, task, instance, config):
        self.actor_id = task.actor_id
        self.instance = instance
        self.class_name = config["class_name"]
        groups = {"": config["max_concurrency"], **config["concurrency_groups"]}
        self.loop = None
        self.pools = None
        if config["is_async"]:
            import asyncio

            self.loop = asyncio.new_event_loop()
            threading.Thread(target=self.loop.run_forever, name="rtd-actor-loop", daemon=True).start()

            async def make_semaphores():
                return {name: asyncio.Semaphore(n) for name, n in groups.items()}

            self.semaphores = asyncio.run_coroutine_threadsafe(make_semaphores(), self.loop).result()
        elif config["max_concurrency"] > 1 or config["concurrency_groups"]:
            from concurrent.futures import ThreadPoolExecutor

            self.pools = {
                name: ThreadPoolExecutor(n, thread_name_prefix=f"rtd-{name or 'default'}") for name, n in groups.items()
            }

    def dispatch(self, task):
        if self.loop is not None:
            import asyncio

            sem = self.semaphores.get(task.concurrency_group, self.semaphores[""])
            asyncio.run_coroutine_threadsafe(self._run_async(task, sem), self.loop)
        elif self.pools is not None:
            self.pools.get(task.concurrency_group, self.pools[""]).submit(_run_call, task, self._bound(task))
        else:
            _run_call(task, self._bound(task))

    def _bound(self, task):
        if task.method_name == "__ray_ready__":
            return lambda: True
        if task.method_name == "__ray_terminate__":
            return _terminate
        return getattr(self.instance, task.method_name)

    async def _run_async(self, task, sem):
        import inspect as _inspect

        async with sem:
            try:
                fn = self._bound(task)
                args, kwargs = _resolve_args(task)
                result = fn(*args, **kwargs)
                if _inspect.isawaitable(result):
                    result = await result
            except BaseException as e:  # noqa: BLE001
                _finish_failed(task, e)
                return
            _finish_ok(task, result)


_actor = None


class _PrefixedStream:
    """Prefixes every line a task or actor prints with its name and pid, as Ray's
    driver output does: ``(Counter pid=4321) started`` (with ``, ip=...`` when the
    worker's machine is not the driver's). Whole lines go to the driver of the job
    (over its core worker's socket). Everything printed also goes, as printed, to
    ``stream``: the worker's log file (see ``_log_to_files``)."""

    def __init__(self, stream, is_stderr):
        self._stream = stream
        self._is_stderr = is_stderr
        self._pending = []
        self._at_line_start = True
        # Reentrant: a signal handler or __del__ may print while this thread sends.
        self._lock = threading.RLock()

    def write(self, text):
        if not text:
            return 0
        self._stream.write(text)
        prefix = f"({_current_name()} pid={os.getpid()}{_ip_suffix()}) "
        with self._lock:
            for line in text.splitlines(keepends=True):
                if self._at_line_start:
                    self._pending.append(prefix)
                self._pending.append(line)
                self._at_line_start = line.endswith("\n")
            if "\n" in text:
                self._send()
        return len(text)

    def flush(self):
        with self._lock:
            self._send()

    def _send(self):
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending = []
        self._stream.flush()
        driver = _driver_address()
        if driver is not None and driver not in _gone_drivers and _core.is_connected():
            if not _core.forward_output(driver, text, self._is_stderr):
                _gone_drivers.add(driver)  # it exited (a detached actor outlives it)

    def __getattr__(self, name):
        return getattr(self._stream, name)


_gone_drivers: set[str] = set()


def _driver_address():
    job = _jobs.get(_current_job["id"])
    return job.get("driver") if job else None


def _ip_suffix():
    """``, ip=HOST`` when this worker and its driver are on different machines."""
    job = _jobs.get(_current_job["id"])
    driver_ip = job.get("driver_ip") if job else None
    own_ip = os.environ.get("RTD_NODE_IP")
    if driver_ip and own_ip and driver_ip != own_ip:
        return f", ip={own_ip}"
    return ""


def _current_name():
    if _actor is not None:
        return _actor.class_name
    return task_context.name or "worker"


def _create_actor(task):
    global _actor
    task_context.name = task.function_name.removesuffix(".__init__")
    try:
        cls = _load_function(task.function_id)
        args, kwargs, config = serialization.loads(task.args)
        values = _arg_values(task)
        args, kwargs = _substitute(args, kwargs, values)
        instance = cls(*args, **kwargs)
        _actor = _ActorRuntime(task, instance, config)
        task_context.actor_id = _actor.actor_id
    except BaseException as e:  # noqa: BLE001 - the creation error is the actor's death cause
        cause = e.error if isinstance(e, _UpstreamError) else e
        text = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
        message = f"The actor died because of an error raised in its creation task, {task.function_name}:\n{text}"
        _finish(task, [(serialization.ACTOR_DIED, message.encode(), [], [])], True, False,
                ("TASK_EXECUTION_EXCEPTION", message))
        return
    _finish(task, [(serialization.VALUE, pickle.dumps(None), [], [])], False, False)


def execute(task):
    if task.method_name:
        # An actor keeps the environment (GPUs, job) its creation task set up.
        if _actor is None:
            _finish_failed(task, exceptions.RaySystemError("this worker holds no actor"))
        else:
            _actor.dispatch(task)
        return
    _set_environment(task)
    if task.actor_creation:
        _create_actor(task)
    else:
        _run_call(task, None)


def _run_call(task, fn):
    """Runs a task (``fn`` None: the task's function) or a bound actor method."""
    try:
        if fn is None:
            fn = _load_function(task.function_id)
        args, kwargs = _resolve_args(task)
        result = fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - every error goes back to the owner
        _finish_failed(task, e)
        return
    _finish_ok(task, result)


def _finish_ok(task, result):
    try:
        results = []
        for value in _split_returns(task, result):
            payload, buffers, contained = serialization.serialize(value)
            results.append((serialization.VALUE, payload, buffers, contained))
    except BaseException as e:  # noqa: BLE001
        _finish_failed(task, e)
        return
    _finish(task, results, False, False)


class _ExitActor(BaseException):
    """Raised by ``exit_actor()``; a BaseException so that ``except Exception`` in user
    code does not swallow it."""


def exit_actor():
    if _actor is None:
        raise TypeError("exit_actor API is called on a non-actor worker")
    raise _ExitActor("exited by calling exit_actor()")


def _terminate():
    raise _ExitActor("was terminated by __ray_terminate__ after the calls submitted before it")


def _end_actor(task, how):
    """The actor ended itself: this call and every later one fail with ActorDiedError,
    and the actor is dead for good (no restart)."""
    cause = f"The actor {_actor.class_name} ({_actor.actor_id}) {how}."
    n = max(task.num_returns, 1) if task.num_returns else 0
    _finish(task, [(serialization.ACTOR_DIED, cause.encode(), [], [])] * n, True, False, ("ACTOR_DIED", cause))
    try:
        # The node ends this process once the GCS marks the actor dead.
        _core.kill_actor(bytes.fromhex(_actor.actor_id), True, cause)
    finally:
        os._exit(0)


def _finish_failed(task, e):
    if isinstance(e, _ExitActor):
        _end_actor(task, e.args[0])
    elif isinstance(e, _UpstreamError):
        _finish_with_error(task, e.error, False)
    elif isinstance(e, KeyboardInterrupt):
        # rtd.cancel() interrupted the task.
        _finish_with_error(task, exceptions.TaskCancelledError(f"task {task.function_name} was cancelled"), False)
    else:
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        # An error from a nested get keeps its original cause (not wrapped twice).
        cause = e.cause if isinstance(e, exceptions.RayTaskError) else e
        error = exceptions.RayTaskError(task.function_name, tb, cause, os.getpid())
        _finish_with_error(task, error, _is_retryable(task, e))


def _log_to_files():
    """Points this process's stdout and stderr (fds 1 and 2, so C extensions and
    crashes land there too) at ``<session>/logs/worker-<worker id>-<pid>.out`` and
    ``.err``, Ray's log file names, where ``rtd logs`` and the dashboard find them."""
    base = os.path.join(
        os.environ["RTD_SESSION_DIR"], "logs", f"worker-{os.environ['RTD_WORKER_ID']}-{os.getpid()}"
    )
    for fd, suffix in ((1, ".out"), (2, ".err")):
        try:
            log = os.open(base + suffix, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError:
            return  # no log directory (an older node): keep the daemon's output
        os.dup2(log, fd)
        os.close(log)


def _exit_when_asked(signum, frame):
    """The node stops an idle worker with SIGTERM: what it buffered (task events,
    metrics) goes out as it disconnects, then the process ends."""
    _core.disconnect()
    os._exit(0)


def main():
    signal.signal(signal.SIGTERM, _exit_when_asked)
    _log_to_files()
    sys.stdout = _PrefixedStream(sys.stdout, False)
    sys.stderr = _PrefixedStream(sys.stderr, True)
    try:
        _core.connect(
            os.environ["RTD_RAYLET_SOCKET"],
            os.environ["RTD_SESSION_DIR"],
            True,
            os.environ["RTD_WORKER_ID"],
            os.environ.get("RTD_NODE_IP") or None,
        )
    except exceptions.RaySystemError:
        # The node stopped while this worker was starting: nothing to do.
        return 1
    api._state.is_worker = True
    # Started in a runtime_env: tasks it submits inherit it.
    runtime_env.adopt(os.environ.get(runtime_env.WORKER_ENV_VAR, ""))
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
