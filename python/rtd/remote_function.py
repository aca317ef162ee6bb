"""``@rtd.remote`` functions: ``f.remote(...)`` submits a task, ``f.options(...)``
returns a copy with other options."""

from __future__ import annotations

import hashlib

from rtd import _core, api
from rtd._private import options as opts
from rtd._private import runtime_env, scheduling, serialization


class RemoteFunction:
    def __init__(self, function, options: dict, _pickled=None):
        self._function = function
        self._options = opts.validate_task_options(dict(options))
        merged = {**opts.DEFAULT_TASK_OPTIONS, **self._options}
        self._num_returns = merged["num_returns"]
        self._max_retries = merged["max_retries"]
        self._resources = opts.task_resources(merged)
        self._strategy = merged["scheduling_strategy"]
        self._placement = scheduling.placement_of(self._strategy)
        retry = merged["retry_exceptions"]
        self._retry_exceptions = b"" if retry is False else serialization.pickle_dumps(
            True if retry is True else tuple(retry)
        )
        self._name = getattr(function, "__qualname__", getattr(function, "__name__", "function"))
        self._pickled = _pickled
        self._function_id = None
        self.__name__ = getattr(function, "__name__", self._name)
        self.__doc__ = function.__doc__
        self.__wrapped__ = function

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"Remote functions cannot be called directly. Instead of running '{self.__name__}()', "
            f"try '{self.__name__}.remote()'."
        )

    # Pickled as (function, options): a recursive remote function refers to itself
    # through its globals, and the outer pickler's memo resolves that cycle.
    def __getstate__(self):
        return {"function": self._function, "options": self._options}

    def __setstate__(self, state):
        self.__init__(state["function"], state["options"])

    def _ensure_pickled(self):
        if self._pickled is None:
            try:
                self._pickled = serialization.pickle_dumps(self._function)
            except Exception as e:
                raise TypeError(f"Could not serialize the function {self._name}: {e}") from e
            self._function_id = hashlib.sha256(self._pickled).digest()[:20]
        elif self._function_id is None:
            self._function_id = hashlib.sha256(self._pickled).digest()[:20]

    def _register(self):
        self._ensure_pickled()
        registered = api._state.registered_functions
        if self._function_id not in registered:
            _core.kv_put("fn:" + self._function_id.hex(), self._pickled)
            registered.add(self._function_id)
        return self._function_id

    def options(self, **options):
        """A copy of this remote function with ``options`` overriding its own."""
        self._ensure_pickled()
        return RemoteFunction(self._function, {**self._options, **options}, self._pickled)

    def remote(self, *args, **kwargs):
        api.auto_init()
        function_id = self._register()
        resources, capture = scheduling.resolve(self._resources, self._strategy)
        blob, arg_refs, contained = serialization.pack_args(args, kwargs)
        options = _core.TaskOptions(
            function_id=function_id,
            function_name=self._name,
            num_returns=self._num_returns,
            resources=resources,
            max_retries=self._max_retries,
            retry_exceptions=self._retry_exceptions,
            capture_placement_group=capture,
            strategy=self._placement.strategy,
            affinity_node=self._placement.affinity_node,
            affinity_soft=self._placement.affinity_soft,
            runtime_env=runtime_env.for_submission(self._options.get("runtime_env")),
        )
        refs = _core.submit_task(options, blob, arg_refs, contained)
        if self._num_returns == 1:
            return refs[0]
        if self._num_returns == 0:
            return None
        return refs
