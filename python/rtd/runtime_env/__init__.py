"""``rtd.runtime_env``: Ray's ``RuntimeEnv`` and ``RuntimeEnvConfig``.

Both are dicts, as in Ray, so they go wherever a ``runtime_env`` dict goes::

    from rtd.runtime_env import RuntimeEnv, RuntimeEnvConfig

    env = RuntimeEnv(env_vars={"MODE": "fast"}, pip=["six"],
                     config=RuntimeEnvConfig(setup_timeout_seconds=120))

    @rtd.remote(runtime_env=env)
    def f(): ...

The keys and their rules are checked by rtd's core (see the README's "Runtime
environments"); keys rtd does not implement (``conda``, ``container``, ``image_uri``)
raise ``NotImplementedError``.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from rtd import _core

__all__ = ["RuntimeEnv", "RuntimeEnvConfig"]


class RuntimeEnvConfig(dict):
    """Options of a runtime environment's setup: ``setup_timeout_seconds`` (default 600;
    -1: no limit) and ``eager_install`` (accepted; rtd sets environments up on first use)."""

    def __init__(self, setup_timeout_seconds: int = 600, eager_install: bool = True, log_files=None):
        super().__init__(setup_timeout_seconds=setup_timeout_seconds, eager_install=eager_install)
        _core.runtime_env_validate(json.dumps({"config": dict(self)}))

    @staticmethod
    def parse_and_validate_runtime_env_config(config) -> "RuntimeEnvConfig":
        if isinstance(config, RuntimeEnvConfig):
            return config
        if isinstance(config, dict):
            return RuntimeEnvConfig(**config)
        raise TypeError(f"runtime_env config must be a dict or RuntimeEnvConfig, got {config!r}")


class RuntimeEnv(dict):
    """A runtime environment: a dict of Ray's runtime_env keys, validated when made."""

    def __init__(
        self,
        *,
        py_modules: Optional[list] = None,
        working_dir: Optional[str] = None,
        pip: Any = None,
        conda: Any = None,
        container: Any = None,
        env_vars: Optional[dict[str, str]] = None,
        config: Any = None,
        _validate: bool = True,
        **kwargs,
    ):
        super().__init__()
        given = {
            "py_modules": py_modules,
            "working_dir": working_dir,
            "pip": pip,
            "conda": conda,
            "container": container,
            "env_vars": env_vars,
            "config": config,
            **kwargs,
        }
        self.update({k: v for k, v in given.items() if v is not None})
        if _validate:
            from rtd._private import runtime_env

            runtime_env.validate(self)

    def to_dict(self) -> dict:
        return dict(self)

    def serialize(self) -> str:
        from rtd._private import runtime_env

        return runtime_env.to_json(self)

    @classmethod
    def deserialize(cls, serialized: str) -> "RuntimeEnv":
        return cls(**json.loads(serialized))

    def env_vars(self) -> dict:
        return dict(self.get("env_vars") or {})

    def working_dir(self) -> str:
        return self.get("working_dir") or ""

    def py_modules(self) -> list:
        return list(self.get("py_modules") or [])

    def has_pip(self) -> bool:
        return "pip" in self or "uv" in self

    def runtime_env_config(self) -> RuntimeEnvConfig:
        return RuntimeEnvConfig.parse_and_validate_runtime_env_config(self.get("config") or {})
