"""``rtd.util.ActorPool``: spreads work over a fixed set of actors, as Ray's.

    pool = ActorPool([Worker.remote() for _ in range(4)])
    results = list(pool.map(lambda actor, v: actor.double.remote(v), range(10)))

Each submitted call goes to an idle actor, or waits until one is returned to the pool
(when a result is taken with ``get_next``/``get_next_unordered``). ``map`` yields
results in submission order, ``map_unordered`` as they complete.
"""

from __future__ import annotations

from rtd import api


class ActorPool:
    def __init__(self, actors):
        self._idle = list(actors)
        # Future (a ref, or a tuple of refs for several returns) -> (index, actor).
        self._running = {}
        # Submission index -> future, for in-order results.
        self._by_index = {}
        self._next_index = 0
        self._next_result = 0
        self._queued = []

    # --- submitting ------------------------------------------------------------------

    def submit(self, fn, value):
        """Runs ``fn(actor, value)`` (which must return an ObjectRef, or a list of them)
        on an idle actor, or once one is free."""
        if not self._idle:
            self._queued.append((fn, value))
            return
        actor = self._idle.pop()
        future = fn(actor, value)
        self._running[_key(future)] = (self._next_index, actor)
        self._by_index[self._next_index] = future
        self._next_index += 1

    def map(self, fn, values):
        """Submits ``fn(actor, v)`` for each value now; returns a generator of the
        results in order."""
        self._submit_all(fn, values)
        return self._results(self.get_next)

    def map_unordered(self, fn, values):
        """Like ``map``; the generator yields each result as soon as it is ready."""
        self._submit_all(fn, values)
        return self._results(self.get_next_unordered)

    def _submit_all(self, fn, values):
        self._drop_pending_results()
        for value in values:
            self.submit(fn, value)

    def _results(self, take):
        while self.has_next():
            yield take()

    def _drop_pending_results(self):
        # As in Ray, a new map forgets what earlier submissions would still return.
        while self.has_next():
            try:
                self.get_next(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass

    # --- results ---------------------------------------------------------------------

    def has_next(self):
        """Whether any submitted call has a result not taken yet."""
        return bool(self._running)

    def get_next(self, timeout=None, ignore_if_timedout=False):
        """The next result in submission order. ``TimeoutError`` if it is not ready
        within ``timeout`` s; with ``ignore_if_timedout`` that result is skipped."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_result >= self._next_index:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        future = self._by_index[self._next_result]
        timed_out = False
        if timeout is not None:
            ready, _ = api.wait(_refs(future), num_returns=len(_refs(future)), timeout=timeout)
            if len(ready) < len(_refs(future)):
                if not ignore_if_timedout:
                    raise TimeoutError("Timed out waiting for result")
                timed_out = True
        del self._by_index[self._next_result]
        self._next_result += 1
        _, actor = self._running.pop(_key(future))
        self._return_actor(actor)
        if timed_out:
            raise TimeoutError(f"Timed out waiting for result. The task {future} has been ignored.")
        return api.get(future)

    def get_next_unordered(self, timeout=None, ignore_if_timedout=False):
        """Whichever result is ready first. ``TimeoutError`` if none is within
        ``timeout`` s."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        firsts = {_refs(f)[0]: f for f in self._running}
        ready, _ = api.wait(list(firsts), num_returns=1, timeout=timeout)
        if not ready:
            raise TimeoutError("Timed out waiting for result")
        key = firsts[ready[0]]
        index, actor = self._running.pop(key)
        self._return_actor(actor)
        future = self._by_index.pop(index)
        self._next_result = max(self._next_result, index + 1)
        return api.get(future)

    # --- the actors --------------------------------------------------------------------

    def _return_actor(self, actor):
        self._idle.append(actor)
        if self._queued:
            self.submit(*self._queued.pop(0))

    def has_free(self):
        """Whether an actor is idle and no submission is waiting for one."""
        return bool(self._idle) and not self._queued

    def pop_idle(self):
        """Takes an idle actor out of the pool (None if none is free)."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor):
        """Adds an actor to the pool (``ValueError`` if it is in it already)."""
        busy = [a for _, a in self._running.values()]
        if actor in self._idle or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)


def _key(future):
    return tuple(future) if isinstance(future, list) else future


def _refs(future):
    return list(future) if isinstance(future, (list, tuple)) else [future]
