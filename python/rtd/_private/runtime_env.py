"""The driver's (and a worker's) side of ``runtime_env``: turning the user's dict into
the canonical JSON a task or actor carries.

The rules (keys, types, merging) are in rtd's core (``rtd_runtime_env``); this module
only makes the user's objects JSON (module objects in ``py_modules``, ``Path``s,
``RuntimeEnvConfig``) and remembers what it prepared. Preparing packs local directories
and stores the packages in the GCS KV (once per content); the result is cached per spec,
so submitting many tasks with one environment packs it once.

The parent of a submission's environment is the job's (``rtd.init(runtime_env=...)``,
or ``RTD_JOB_CONFIG_JSON_ENV_VAR`` set by a job submission) in a driver, and the
worker's own environment (``RTD_RUNTIME_ENV``, set by the raylet; see ``adopt``) in a
task or actor: children inherit it, as in Ray.
"""

from __future__ import annotations

import json
import os
import pathlib
import threading
import types

from rtd import _core

# Set by the raylet in a worker started in a runtime environment (canonical JSON).
WORKER_ENV_VAR = "RTD_RUNTIME_ENV"
# Set by a job submission for its entrypoint: {"runtime_env": {...}} (Ray's
# RAY_JOB_CONFIG_JSON_ENV_VAR).
JOB_CONFIG_ENV_VAR = "RTD_JOB_CONFIG_JSON_ENV_VAR"

_lock = threading.Lock()
_prepared: dict[tuple[str, str], str] = {}
# The job's environment, prepared (canonical JSON; "" for none). Set by rtd.init.
_job_env = ""
# Package URIs this process stored in the GCS, all clusters (tests read it).
uploaded: list[str] = []
# Those stored in the cluster it is connected to now: not put again.
_in_cluster: set[str] = set()


def _plain(value):
    if isinstance(value, types.ModuleType):
        # A package's directory (or a single module's file), as Ray takes modules.
        paths = getattr(value, "__path__", None)
        return str(list(paths)[0]) if paths else str(value.__file__)
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_json(runtime_env) -> str:
    """The user's runtime_env (a dict or RuntimeEnv; None for none) as JSON."""
    if runtime_env is None:
        return "{}"
    if not isinstance(runtime_env, dict):
        raise TypeError(f"runtime_env must be a dict or RuntimeEnv, got {type(runtime_env).__name__}")
    try:
        return json.dumps(_plain(dict(runtime_env)))
    except (TypeError, ValueError) as e:
        raise TypeError(f"runtime_env must be JSON-serializable: {e}") from None


def validate(runtime_env) -> None:
    """Raises ValueError/TypeError/NotImplementedError for a runtime_env rtd cannot run."""
    if runtime_env:
        _core.runtime_env_validate(to_json(runtime_env))


def for_submission(runtime_env) -> str:
    """The canonical JSON a task or actor carries: ``runtime_env`` merged over its
    parent's, packages uploaded ("" for the empty environment)."""
    parent = _job_env
    if not runtime_env and not parent:
        return ""
    child = to_json(runtime_env) if runtime_env else "{}"
    key = (child, parent)
    with _lock:
        found = _prepared.get(key)
        if found is None:
            found, put = _core.runtime_env_prepare(child, parent, os.getcwd(), sorted(_in_cluster))
            _note_uploads(put)
            _prepared[key] = found
    return found


def job_runtime_env(runtime_env):
    """The job's runtime_env: ``rtd.init``'s merged over what a job submission set in
    ``RTD_JOB_CONFIG_JSON_ENV_VAR`` (the driver's keys win, env_vars merge), as Ray does."""
    injected = os.environ.get(JOB_CONFIG_ENV_VAR)
    if not injected:
        return runtime_env
    try:
        config = json.loads(injected)
    except ValueError as e:
        raise ValueError(f"{JOB_CONFIG_ENV_VAR} is not JSON: {e}") from None
    submitted = (config or {}).get("runtime_env") or {}
    if not runtime_env:
        return submitted
    return json.loads(_core.runtime_env_merge(to_json(runtime_env), to_json(submitted)))


def _note_uploads(put: list[str]) -> None:
    uploaded.extend(put)
    _in_cluster.update(put)


def set_job_env(runtime_env) -> None:
    """Prepares the job's environment (rtd.init, once connected to a cluster, whose GCS
    has none of the packages put before); None clears it (rtd.shutdown)."""
    global _job_env
    with _lock:
        _prepared.clear()
        _in_cluster.clear()
        _job_env = ""
    if runtime_env:
        prepared, put = _core.runtime_env_prepare(to_json(runtime_env), "", os.getcwd(), [])
        _note_uploads(put)
        _job_env = prepared
        _core.runtime_env_install_eagerly(prepared)


def adopt(prepared: str) -> None:
    """A worker takes the environment it was started in (already prepared) as its parent."""
    global _job_env
    _job_env = prepared


def current() -> dict:
    """This process's runtime_env as a dict (the job's in a driver, the worker's own)."""
    return json.loads(_job_env) if _job_env else {}
