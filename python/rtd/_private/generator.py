"""Generator tasks, as in Ray: a remote function or actor method that yields.

``num_returns="streaming"`` (the default for generator functions) gives the caller an
``ObjectRefGenerator``: each ``next()`` is the ref of the next item as soon as the task
has yielded it. ``num_returns="dynamic"`` gives one ref whose value, once the task is
done, is a ``DynamicObjectRefGenerator`` listing the items' refs. Either way the caller
owns the items. The stream itself lives in the core worker; the task's one declared
return (``completed()``) names it.
"""

from __future__ import annotations

import asyncio
import inspect
import threading

from rtd import _core
from rtd.exceptions import GetTimeoutError, ObjectRefStreamEndOfStreamError

STREAMING = "streaming"
DYNAMIC = "dynamic"


def default_num_returns(function, num_returns):
    """``num_returns`` as given, or Ray's default for ``function`` when not given:
    "streaming" for a generator (or async generator) function, else 1."""
    if num_returns is not None:
        return num_returns
    if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
        return STREAMING
    return 1


def core_returns(num_returns, backpressure):
    """The core's ``(num_returns, generator)`` for a call: a generator task declares one
    return (its completion) and passes ``(backpressure_num_objects, dynamic)``."""
    if num_returns in (STREAMING, DYNAMIC):
        limit = backpressure if backpressure is not None and backpressure > 0 else 0
        return 1, (limit if num_returns == STREAMING else 0, num_returns == DYNAMIC)
    return num_returns, None


def call_result(refs, num_returns):
    """What ``.remote()`` returns for the refs the core gave."""
    if num_returns == STREAMING:
        return ObjectRefGenerator(refs[0])
    if num_returns == 0:
        return None
    if num_returns in (1, DYNAMIC):
        return refs[0]
    return refs


class ObjectRefGenerator:
    """The refs a streaming generator task yields, in order, as it yields them.

    ``for ref in gen`` / ``next(gen)`` blocks until the next item exists; ``async for``
    waits without blocking the event loop. An exception raised by the task comes as the
    last ref (``get`` raises it); then the iteration stops. Unconsumed items are freed
    when the generator is dropped."""

    def __init__(self, completed_ref):
        self._completed = completed_ref
        # An item taken by `next_ready()`, handed out by the next `next()`.
        self._taken = None
        self._lock = threading.Lock()

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return self._next_sync()
        except ObjectRefStreamEndOfStreamError:
            raise StopIteration from None

    def _next_sync(self, timeout_s=None):
        """The next ref (Ray's name). Raises ObjectRefStreamEndOfStreamError at the end
        and GetTimeoutError when none comes within ``timeout_s`` seconds."""
        with self._lock:
            if self._taken is not None:
                ref, self._taken = self._taken, None
                return ref
        kind, ref = _core.generator_next(self._completed, timeout_s)
        if kind == "pending":
            raise GetTimeoutError(f"no generator item within {timeout_s} s")
        if ref is None:
            raise ObjectRefStreamEndOfStreamError("the generator has no more items")
        return ref

    def _try_take(self):
        """The next ref if it exists now: ``(True, ref)``, ``(True, None)`` at the end,
        ``(False, None)`` if it is not produced yet."""
        with self._lock:
            if self._taken is not None:
                ref, self._taken = self._taken, None
                return True, ref
        kind, ref = _core.generator_next(self._completed, 0)
        return kind != "pending", ref

    def __aiter__(self):
        return self

    async def __anext__(self):
        while True:
            done, ref = self._try_take()
            if done:
                if ref is None:
                    raise StopAsyncIteration
                return ref
            loop = asyncio.get_running_loop()
            produced = loop.create_future()

            def wake(produced=produced):
                if not produced.done():
                    produced.set_result(None)

            _core.on_generator_next(self._completed, lambda loop=loop, wake=wake: loop.call_soon_threadsafe(wake))
            await produced

    def completed(self):
        """A ref ready once the task is done; ``get`` raises the task's error if it
        failed."""
        return self._completed

    def is_finished(self) -> bool:
        """Whether every item was taken and the task is done (``next`` would stop)."""
        with self._lock:
            if self._taken is not None:
                return False
        return _core.generator_is_finished(self._completed)

    def next_ready(self) -> bool:
        """Whether ``next(gen)`` returns a ref at once (False at the end: see
        ``is_finished``)."""
        done, ref = self._try_take()
        if ref is not None:
            with self._lock:
                self._taken = ref
        return done and ref is not None

    def _on_next(self, callback):
        """Calls ``callback()`` (on a background thread) once ``next`` would not block."""
        with self._lock:
            taken = self._taken is not None
        if taken:
            callback()
        else:
            _core.on_generator_next(self._completed, callback)

    def task_id(self):
        return self._completed.task_id()

    def __reduce__(self):
        raise TypeError("An ObjectRefGenerator cannot be passed to other tasks or actors; pass its refs instead.")

    def __repr__(self):
        return f"ObjectRefGenerator({self._completed.hex()})"

    def __del__(self):
        completed = getattr(self, "_completed", None)
        if completed is not None:
            _core.release_generator(completed)


class DynamicObjectRefGenerator:
    """The value of a ``num_returns="dynamic"`` task: its items' refs, in order."""

    def __init__(self, refs):
        self._refs = list(refs)

    def __iter__(self):
        return iter(self._refs)

    def __len__(self):
        return len(self._refs)
