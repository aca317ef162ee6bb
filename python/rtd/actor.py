"""Actors: ``@rtd.remote`` on a class. ``Cls.remote(...)`` starts the actor in its own
worker process and returns an ``ActorHandle``; ``handle.method.remote(...)`` calls it.

    @rtd.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def incr(self):
            self.n += 1
            return self.n

    c = Counter.remote()
    print(rtd.get([c.incr.remote() for _ in range(3)]))  # [1, 2, 3]
"""

from __future__ import annotations

import hashlib
import inspect

import cloudpickle

from rtd import _core, api, exceptions
from rtd._private import options as opts
from rtd._private import runtime_env, scheduling, serialization

_METHOD_OPTIONS = "__rtd_method_options__"
DEFAULT_ASYNC_CONCURRENCY = 1000


def method(*args, **kwargs):
    """Sets a method's options: ``@rtd.method(num_returns=2, concurrency_group="io")``."""
    unknown = set(kwargs) - {"num_returns", "concurrency_group"}
    if args or unknown:
        raise ValueError(
            "@rtd.method takes only the keyword options num_returns and concurrency_group"
            + (f"; got {sorted(unknown)}" if unknown else "")
        )
    if "num_returns" in kwargs:
        opts.validate_task_options({"num_returns": kwargs["num_returns"]})

    def decorate(fn):
        setattr(fn, _METHOD_OPTIONS, dict(kwargs))
        return fn

    return decorate


_BUILTIN_METHODS = ("__ray_ready__", "__ray_terminate__")


def _class_meta(cls, options) -> dict:
    # Built in, as in Ray: a ready check, and a graceful end after the calls before it.
    methods = {name: {"num_returns": 1, "concurrency_group": ""} for name in _BUILTIN_METHODS}
    is_async = False
    for name, member in inspect.getmembers(cls, predicate=callable):
        if name.startswith("__") and name != "__call__":
            continue
        if inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member):
            is_async = True
        method_options = getattr(member, _METHOD_OPTIONS, {})
        methods[name] = {
            "num_returns": method_options.get("num_returns", 1),
            "concurrency_group": method_options.get("concurrency_group", ""),
        }
    groups = dict(options.get("concurrency_groups") or {})
    for name, m in methods.items():
        if m["concurrency_group"] and m["concurrency_group"] not in groups:
            raise ValueError(
                f"Method {cls.__name__}.{name} uses concurrency group {m['concurrency_group']!r}, "
                f"which is not in concurrency_groups={groups}."
            )
    max_concurrency = options.get("max_concurrency")
    if max_concurrency is None:
        max_concurrency = DEFAULT_ASYNC_CONCURRENCY if is_async else 1
    return {
        "class_name": cls.__name__,
        "methods": methods,
        "is_async": is_async,
        "max_concurrency": max_concurrency,
        "concurrency_groups": groups,
    }


class ActorClass:
    """What ``@rtd.remote`` makes of a class."""

    def __init__(self, cls, options, _pickled=None):
        self._cls = cls
        self._options = opts.validate_actor_options(dict(options))
        self._meta = _class_meta(cls, self._options)
        self._pickled = _pickled
        self._class_id = None
        self.__name__ = cls.__name__
        self.__doc__ = cls.__doc__

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"Actors cannot be instantiated directly. Instead of '{self.__name__}()', "
            f"use '{self.__name__}.remote()'."
        )

    def __getstate__(self):
        return {"cls": self._cls, "options": self._options}

    def __setstate__(self, state):
        self.__init__(state["cls"], state["options"])

    def _register(self):
        if self._pickled is None:
            try:
                self._pickled = serialization.pickle_dumps(self._cls)
            except Exception as e:
                raise TypeError(f"Could not serialize the actor class {self.__name__}: {e}") from e
        if self._class_id is None:
            self._class_id = hashlib.sha256(self._pickled).digest()[:20]
        registered = api._state.registered_functions
        if self._class_id not in registered:
            _core.kv_put("fn:" + self._class_id.hex(), self._pickled)
            registered.add(self._class_id)
        return self._class_id

    def options(self, **options):
        """A copy of this actor class with ``options`` overriding its own."""
        return ActorClass(self._cls, {**self._options, **options}, self._pickled)

    def remote(self, *args, **kwargs):
        api.auto_init()
        class_id = self._register()
        o = self._options
        num_cpus = o.get("num_cpus")
        extra = opts.task_resources({**o, "num_cpus": 0})
        placement = {**extra, "CPU": 1.0 if num_cpus is None else float(num_cpus)}
        running = {**extra, **({"CPU": float(num_cpus)} if num_cpus else {})}
        placement = {k: v for k, v in placement.items() if v}
        strategy = o.get("scheduling_strategy")
        placement, _ = scheduling.resolve(placement, strategy)
        placement_hint = scheduling.placement_of(strategy)
        unschedulable = scheduling.check_affinity(strategy)
        if unschedulable is not None:
            raise exceptions.ActorUnschedulableError(f"Actor {self.__name__} cannot be scheduled: {unschedulable}")
        running = scheduling.resolve(running, strategy)[0] if running else running
        lifetime = o.get("lifetime")
        namespace = o.get("namespace") or api.current_namespace()
        blob, arg_refs, contained = serialization.pack_args(args, kwargs, extra=self._meta)
        options = _core.ActorCreationOptions(
            class_id=class_id,
            class_name=self.__name__,
            placement=placement,
            running=running,
            class_meta=serialization.pickle_dumps(self._meta),
            name=o.get("name") or "",
            namespace=namespace,
            detached=lifetime == "detached",
            max_restarts=o.get("max_restarts", 0),
            max_task_retries=o.get("max_task_retries", 0),
            get_if_exists=bool(o.get("get_if_exists", False)),
            strategy=placement_hint.strategy,
            affinity_node=placement_hint.affinity_node,
            affinity_soft=placement_hint.affinity_soft,
            runtime_env=runtime_env.for_submission(o.get("runtime_env")),
        )
        info = _core.create_actor(options, blob, arg_refs, contained)
        # With get_if_exists the actor may be someone else's: only ours, and only if not
        # detached, ends with our handles.
        owned = info["created"] and lifetime != "detached"
        return ActorHandle(info["actor_id"], self._meta, owned=owned)


class ActorMethod:
    """``handle.method``: call it with ``.remote(...)``."""

    def __init__(self, handle, name, num_returns, concurrency_group):
        self._handle = handle
        self._name = name
        self._num_returns = num_returns
        self._concurrency_group = concurrency_group

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"Actor methods cannot be called directly. Instead of running 'object.{self._name}()', "
            f"try 'object.{self._name}.remote()'."
        )

    def options(self, **options):
        unknown = set(options) - {"num_returns", "concurrency_group", "name"}
        if unknown:
            raise ValueError(f"Invalid option(s) {sorted(unknown)} for an actor method.")
        if "num_returns" in options:
            opts.validate_task_options({"num_returns": options["num_returns"]})
        group = options.get("concurrency_group", self._concurrency_group)
        if group and group not in self._handle._meta["concurrency_groups"]:
            raise ValueError(f"Unknown concurrency group {group!r} for actor {self._handle._class_name}.")
        return ActorMethod(self._handle, self._name, options.get("num_returns", self._num_returns), group)

    def remote(self, *args, **kwargs):
        blob, arg_refs, contained = serialization.pack_args(args, kwargs)
        refs = _core.submit_actor_task(
            self._handle._actor_id,
            self._name,
            f"{self._handle._class_name}.{self._name}",
            blob,
            arg_refs,
            self._num_returns,
            self._concurrency_group,
            contained,
        )
        if self._num_returns == 1:
            return refs[0]
        if self._num_returns == 0:
            return None
        return refs


class ActorHandle:
    """A reference to an actor; picklable, so it can be passed to tasks and actors."""

    def __init__(self, actor_id: bytes, meta: dict, owned: bool = False):
        self._actor_id = actor_id
        self._meta = meta
        self._class_name = meta["class_name"]
        self._owned = owned
        if owned:
            _core.add_actor_handle(actor_id)

    def __getattr__(self, name):
        if name.startswith("_") and name not in _BUILTIN_METHODS:
            raise AttributeError(name)
        m = self._meta["methods"].get(name)
        if m is None:
            raise AttributeError(f"'{self._class_name}' object has no attribute '{name}'")
        return ActorMethod(self, name, m["num_returns"], m["concurrency_group"])

    def __del__(self):
        if getattr(self, "_owned", False):
            try:
                _core.remove_actor_handle(self._actor_id)
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass

    def __reduce__(self):
        _core.mark_actor_handle_escaped(self._actor_id)
        return (ActorHandle, (self._actor_id, self._meta))

    def __repr__(self):
        return f"Actor({self._class_name}, {self._actor_id.hex()})"

    def __hash__(self):
        return hash(self._actor_id)

    def __eq__(self, other):
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id


def make_actor_class(cls, options):
    return ActorClass(cls, options)


def exit_actor():
    """Ends the actor this is called in, as Ray's ``ray.actor.exit_actor()``: the current
    call's result and every later call raise ``ActorDiedError``, and the actor is not
    restarted. ``TypeError`` outside an actor."""
    from rtd._private import worker

    worker.exit_actor()


def kill(actor, *, no_restart=True):
    """Ends an actor now: running and queued calls fail with ActorDiedError. With
    ``no_restart=False`` the actor restarts if it has restarts left."""
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"rtd.kill() only supports actor handles, got {type(actor).__name__}.")
    _core.kill_actor(actor._actor_id, bool(no_restart))


def get_actor(name, namespace=None):
    """The handle of a named actor; ``ValueError`` if there is none."""
    if not isinstance(name, str) or not name:
        raise ValueError("Please supply a non-empty value to get_actor")
    api.auto_init()
    namespace = namespace or api.current_namespace()
    info = _core.get_named_actor(name, namespace)
    if info is None or info["state"] == "DEAD":
        raise ValueError(
            f"Failed to look up actor with name '{name}'. This could because 1. You are trying to "
            "look up a named actor you didn't create. 2. The named actor died. 3. You did not use a "
            f"namespace matching the namespace of the actor (looked in {namespace!r})."
        )
    return ActorHandle(info["actor_id"], cloudpickle.loads(info["class_meta"]))
