"""rtd: Ray Core with a Rust core. ``import rtd as ray`` and use it as Ray.

    import rtd

    @rtd.remote
    def square(x):
        return x * x

    print(rtd.get([square.remote(i) for i in range(4)]))  # [0, 1, 4, 9]
"""

from rtd import (
    exceptions,
    runtime_env,
    util,  # noqa: E402 - `rtd.util` is available after `import rtd`, as in Ray
)
from rtd._core import ObjectRef
from rtd.actor import get_actor, kill, method
from rtd.api import (
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_gpu_ids,
    get_runtime_context,
    init,
    is_initialized,
    nodes,
    put,
    shutdown,
    timeline,
    wait,
)
from rtd.remote_function import RemoteFunction

__version__ = "0.1.0"


def remote(*args, **kwargs):
    """Makes a function a remote function (``f.remote()`` runs it as a task); with
    keyword arguments, sets its default options: ``@rtd.remote(num_cpus=2)``."""
    import inspect

    from rtd.actor import make_actor_class

    def wrap(target, options):
        if inspect.isclass(target):
            return make_actor_class(target, options)
        if not callable(target):
            raise TypeError(f"@rtd.remote expects a function or a class, got {type(target).__name__}")
        return RemoteFunction(target, options)

    if len(args) == 1 and not kwargs and callable(args[0]):
        return wrap(args[0], {})
    if args:
        raise TypeError("@rtd.remote takes either a function/class or keyword options, e.g. @rtd.remote(num_cpus=2)")
    return lambda target: wrap(target, kwargs)


__all__ = [
    "ObjectRef",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "runtime_env",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "timeline",
    "util",
    "wait",
]
