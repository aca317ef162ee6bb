"""Validation of ``@remote`` / ``.options()`` arguments, with Ray's names and rules."""

from __future__ import annotations

import numbers

from rtd._private import runtime_env

TASK_OPTIONS = {
    "num_cpus",
    "num_gpus",
    "memory",
    "resources",
    "num_returns",
    "max_retries",
    "retry_exceptions",
    "scheduling_strategy",
    "runtime_env",
    "name",
    "accelerator_type",
    "_metadata",
}

ACTOR_ONLY_OPTIONS = {
    "max_restarts",
    "max_task_retries",
    "max_concurrency",
    "concurrency_groups",
    "lifetime",
    "get_if_exists",
    "namespace",
}

DEFAULT_TASK_OPTIONS = {
    "num_cpus": 1,
    "num_gpus": 0,
    "memory": 0,
    "resources": None,
    "num_returns": 1,
    "max_retries": 3,
    "retry_exceptions": False,
    "scheduling_strategy": None,
    "runtime_env": None,
    "name": None,
}


def _non_negative(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0:
        raise ValueError(f"The option {name!r} must be a non-negative number, got {value!r}.")


def validate_task_options(options: dict) -> dict:
    """Checks options given to a remote function; returns them unchanged."""
    for key, value in options.items():
        if key in ACTOR_ONLY_OPTIONS:
            raise ValueError(f"The option {key!r} is only valid for actors, not tasks.")
        if key not in TASK_OPTIONS:
            raise ValueError(
                f"Invalid option keyword {key!r} for remote functions. "
                f"Valid ones are {sorted(TASK_OPTIONS)}."
            )
        if key in ("num_cpus", "num_gpus", "memory"):
            if value is not None:
                _non_negative(key, value)
        elif key == "resources":
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ValueError(f"The option 'resources' must be a dict, got {value!r}.")
            for name, amount in value.items():
                if not isinstance(name, str) or not name:
                    raise ValueError(f"Resource names must be non-empty strings, got {name!r}.")
                if name in ("CPU", "GPU"):
                    raise ValueError(
                        f"Use the 'num_cpus' and 'num_gpus' options instead of "
                        f"resources={{'{name}': ...}}."
                    )
                _non_negative(f"resources[{name!r}]", amount)
        elif key == "num_returns":
            if value in ("dynamic", "streaming"):
                raise NotImplementedError(f"num_returns={value!r} (generators) is not implemented in rtd yet.")
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"The option 'num_returns' must be a non-negative integer, got {value!r}.")
        elif key == "max_retries":
            if isinstance(value, bool) or not isinstance(value, int) or value < -1:
                raise ValueError(f"The option 'max_retries' must be an integer >= -1, got {value!r}.")
        elif key == "retry_exceptions":
            if isinstance(value, bool):
                continue
            if isinstance(value, (list, tuple)) and all(
                isinstance(c, type) and issubclass(c, BaseException) for c in value
            ):
                continue
            raise ValueError(
                "The option 'retry_exceptions' must be a bool or a list of exception classes, "
                f"got {value!r}."
            )
        elif key == "scheduling_strategy":
            check_scheduling_strategy(value)
        elif key == "runtime_env":
            runtime_env.validate(value)
    return options


ACTOR_OPTIONS = {
    "num_cpus",
    "num_gpus",
    "memory",
    "resources",
    "max_restarts",
    "max_task_retries",
    "max_concurrency",
    "concurrency_groups",
    "name",
    "namespace",
    "lifetime",
    "get_if_exists",
    "scheduling_strategy",
    "runtime_env",
    "accelerator_type",
    "_metadata",
}


def validate_actor_options(options: dict) -> dict:
    """Checks options given to an actor class; returns them unchanged."""
    shared = {k: v for k, v in options.items() if k in TASK_OPTIONS}
    for key, value in options.items():
        if key not in ACTOR_OPTIONS:
            if key in TASK_OPTIONS:
                raise ValueError(f"The option {key!r} is only valid for tasks, not actors.")
            raise ValueError(
                f"Invalid option keyword {key!r} for actors. Valid ones are {sorted(ACTOR_OPTIONS)}."
            )
        if key in ("max_restarts", "max_task_retries"):
            if isinstance(value, bool) or not isinstance(value, int) or value < -1:
                raise ValueError(f"The option {key!r} must be an integer >= -1, got {value!r}.")
        elif key == "max_concurrency":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"The option 'max_concurrency' must be a positive integer, got {value!r}.")
        elif key == "concurrency_groups":
            if value is None:
                continue
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and k and isinstance(n, int) and not isinstance(n, bool) and n >= 1
                for k, n in value.items()
            ):
                raise ValueError(
                    f"The option 'concurrency_groups' must map group names to positive integers, got {value!r}."
                )
        elif key in ("name", "namespace"):
            if value is not None and (not isinstance(value, str) or (key == "name" and not value)):
                raise ValueError(f"The option {key!r} must be a non-empty string, got {value!r}.")
        elif key == "lifetime":
            if value not in (None, "detached", "non_detached"):
                raise ValueError(f"The option 'lifetime' must be None, 'detached' or 'non_detached', got {value!r}.")
        elif key == "get_if_exists":
            if not isinstance(value, bool):
                raise ValueError(f"The option 'get_if_exists' must be a bool, got {value!r}.")
    if options.get("get_if_exists") and not options.get("name"):
        raise ValueError("The option 'get_if_exists' needs a 'name'.")
    validate_task_options(shared)
    return options


def check_scheduling_strategy(value):
    from rtd.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

    if value in (None, "DEFAULT", "SPREAD"):
        return
    if isinstance(value, (PlacementGroupSchedulingStrategy, NodeAffinitySchedulingStrategy)):
        return
    raise ValueError(
        f"Invalid scheduling_strategy {value!r}: use 'DEFAULT', 'SPREAD', "
        "PlacementGroupSchedulingStrategy or NodeAffinitySchedulingStrategy."
    )


def task_resources(options: dict) -> dict:
    """The resource request of a task with these (merged) options."""
    num_cpus = options.get("num_cpus")
    request = {"CPU": 1 if num_cpus is None else num_cpus}
    if options.get("num_gpus"):
        request["GPU"] = options["num_gpus"]
    if options.get("memory"):
        request["memory"] = options["memory"]
    for name, amount in (options.get("resources") or {}).items():
        request[name] = amount
    return {k: float(v) for k, v in request.items() if v}
