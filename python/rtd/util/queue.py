"""``rtd.util.queue.Queue``: a first-in first-out queue shared by tasks and actors, as
Ray's. It lives in an async actor, so every holder of the queue (it pickles with its
actor handle) puts to and gets from the same items.

    q = Queue(maxsize=10)
    producer.remote(q); consumer.remote(q)

``put``/``get`` block (optionally up to ``timeout`` seconds) like ``queue.Queue``'s and
raise ``Full``/``Empty`` (subclasses of the standard library's) when they give up.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterable

from rtd import actor as _actor
from rtd import api


class Empty(queue.Empty):
    pass


class Full(queue.Full):
    pass


class Queue:
    def __init__(self, maxsize: int = 0, actor_options: dict | None = None):
        if not isinstance(maxsize, int) or isinstance(maxsize, bool):
            raise TypeError(f"maxsize must be an int, got {type(maxsize).__name__}")
        self.maxsize = maxsize
        self.actor = _actor.make_actor_class(_QueueActor, {}).options(**(actor_options or {})).remote(maxsize)

    def __len__(self):
        return self.size()

    def size(self) -> int:
        return _get(self.actor.qsize.remote())

    def qsize(self) -> int:
        return self.size()

    def empty(self) -> bool:
        return _get(self.actor.empty.remote())

    def full(self) -> bool:
        return _get(self.actor.full.remote())

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        """Adds ``item``; waits for room (up to ``timeout`` s) unless ``block`` is
        false. ``Full`` when there is no room."""
        if not block:
            return _get(self.actor.put_nowait.remote(item))
        _check_timeout(timeout)
        _get(self.actor.put.remote(item, timeout))

    async def put_async(self, item, block: bool = True, timeout: float | None = None) -> None:
        if not block:
            return await _aget(self.actor.put_nowait.remote(item))
        _check_timeout(timeout)
        await _aget(self.actor.put.remote(item, timeout))

    def get(self, block: bool = True, timeout: float | None = None):
        """Removes and returns the oldest item; waits for one (up to ``timeout`` s)
        unless ``block`` is false. ``Empty`` when there is none."""
        if not block:
            return _get(self.actor.get_nowait.remote())
        _check_timeout(timeout)
        return _get(self.actor.get.remote(timeout))

    async def get_async(self, block: bool = True, timeout: float | None = None):
        if not block:
            return await _aget(self.actor.get_nowait.remote())
        _check_timeout(timeout)
        return await _aget(self.actor.get.remote(timeout))

    def put_nowait(self, item) -> None:
        self.put(item, block=False)

    def put_nowait_batch(self, items) -> None:
        """Adds all ``items`` at once, or none (``Full``) if they do not all fit."""
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        _get(self.actor.put_nowait_batch.remote(list(items)))

    def get_nowait(self):
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list:
        """Removes ``num_items`` items at once, or none (``Empty``) if there are fewer."""
        if not isinstance(num_items, int) or isinstance(num_items, bool):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        return _get(self.actor.get_nowait_batch.remote(num_items))

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """Ends the queue's actor: after the calls already made to it (up to
        ``grace_period_s``), or at once with ``force``. The queue cannot be used
        afterwards."""
        if self.actor is not None:
            if force:
                _actor.kill(self.actor, no_restart=True)
            else:
                done = self.actor.__ray_terminate__.remote()
                _, not_done = api.wait([done], timeout=grace_period_s)
                if not_done:
                    _actor.kill(self.actor, no_restart=True)
        self.actor = None


def _get(ref):
    try:
        return api.get(ref)
    except (Empty, Full) as e:
        raise _plain(e) from None


async def _aget(ref):
    try:
        return await ref
    except (Empty, Full) as e:
        raise _plain(e) from None


def _plain(error):
    """The queue's own ``Empty``/``Full`` for one raised in its actor (which arrives as
    a task error that is also an instance of it)."""
    cls = Full if isinstance(error, Full) else Empty
    cause = getattr(error, "cause", error)
    return cls(*getattr(cause, "args", ()))


def _check_timeout(timeout):
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


class _QueueActor:
    def __init__(self, maxsize):
        self.maxsize = maxsize
        self._queue = None

    @property
    def queue(self):
        # Made on first use, on the actor's event loop (the constructor runs elsewhere).
        if self._queue is None:
            self._queue = asyncio.Queue(self.maxsize)
        return self._queue

    def qsize(self):
        return self.queue.qsize()

    def empty(self):
        return self.queue.empty()

    def full(self):
        return self.queue.full()

    async def put(self, item, timeout=None):
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            raise Full from None

    async def get(self, timeout=None):
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            raise Empty from None

    def put_nowait(self, item):
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Full from None

    def put_nowait_batch(self, items):
        if self.maxsize > 0 and len(items) + self.qsize() > self.maxsize:
            raise Full(f"Cannot add {len(items)} items to queue of size {self.qsize()} and maxsize {self.maxsize}.")
        for item in items:
            self.queue.put_nowait(item)

    def get_nowait(self):
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            raise Empty from None

    def get_nowait_batch(self, num_items):
        if num_items > self.qsize():
            raise Empty(f"Cannot get {num_items} items from queue of size {self.qsize()}.")
        return [self.queue.get_nowait() for _ in range(num_items)]
