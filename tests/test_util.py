"""Ray Core's utility classes built on actors: ``rtd.util.ActorPool`` and
``rtd.util.queue.Queue``, against real actor processes."""

import asyncio
import queue as stdlib_queue
import time

import pytest
import rtd
from rtd.util import ActorPool
from rtd.util.queue import Empty, Full, Queue


@rtd.remote
class Doubler:
    def double(self, v, delay=0.0):
        time.sleep(delay)
        return 2 * v

    def pid(self):
        import os

        return os.getpid()


# --- ActorPool ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_pool_map_returns_results_in_order_using_every_actor(shared_runtime):
    actors = [Doubler.remote() for _ in range(2)]
    pool = ActorPool(actors)
    assert list(pool.map(lambda a, v: a.double.remote(v), range(8))) == [0, 2, 4, 6, 8, 10, 12, 14]
    pids = set(pool.map(lambda a, _: a.pid.remote(), range(6)))
    assert pids == set(rtd.get([a.pid.remote() for a in actors]))


@pytest.mark.timeout(60)
def test_pool_map_unordered_yields_the_fastest_result_first(shared_runtime):
    pool = ActorPool([Doubler.remote() for _ in range(2)])
    delays = {1: 2.0, 2: 0.0}
    results = pool.map_unordered(lambda a, v: a.double.remote(v), [7])
    assert pool.has_next(), "map submits at once, before its results are read"
    assert list(results) == [14]
    out = list(pool.map_unordered(lambda a, v: a.double.remote(v, delays[v]), [1, 2]))
    assert out == [4, 2]


@pytest.mark.timeout(60)
def test_pool_submit_queues_work_beyond_its_actors(shared_runtime):
    pool = ActorPool([Doubler.remote()])
    for v in range(3):
        pool.submit(lambda a, v: a.double.remote(v), v)
    assert not pool.has_free()
    results = []
    while pool.has_next():
        results.append(pool.get_next())
    assert results == [0, 2, 4]
    assert pool.has_free()
    with pytest.raises(StopIteration):
        pool.get_next()


@pytest.mark.timeout(60)
def test_pool_get_next_times_out_and_can_skip_a_slow_result(shared_runtime):
    pool = ActorPool([Doubler.remote()])
    pool.submit(lambda a, v: a.double.remote(v, 2.0), 5)
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.1)
    assert pool.has_next()
    with pytest.raises(TimeoutError, match="ignored"):
        pool.get_next(timeout=0.1, ignore_if_timedout=True)
    assert not pool.has_next()


@pytest.mark.timeout(60)
def test_pool_pop_and_push_actors(shared_runtime):
    a, b = Doubler.remote(), Doubler.remote()
    pool = ActorPool([a])
    popped = pool.pop_idle()
    assert popped == a and pool.pop_idle() is None
    pool.push(b)
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(b)
    assert list(pool.map(lambda actor, v: actor.double.remote(v), [21])) == [42]


# --- Queue -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_queue_passes_items_from_a_producer_task_to_a_consumer_actor(shared_runtime):
    q = Queue(maxsize=3)

    @rtd.remote
    def produce(q, n):
        for i in range(n):
            q.put(i)  # blocks while the queue is full
        return n

    @rtd.remote
    class Consumer:
        def take(self, q, n):
            return [q.get(timeout=20) for _ in range(n)]

    consumer = Consumer.remote()
    taken = consumer.take.remote(q, 10)
    assert rtd.get(produce.remote(q, 10), timeout=30) == 10
    assert rtd.get(taken, timeout=30) == list(range(10))
    assert q.empty() and len(q) == 0
    q.shutdown()


@pytest.mark.timeout(60)
def test_queue_nonblocking_and_timed_calls_raise_empty_and_full(shared_runtime):
    q = Queue(maxsize=2)
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(stdlib_queue.Empty):
        q.get(timeout=0.1)
    q.put_nowait_batch(["a", "b"])
    assert q.full() and q.qsize() == 2
    with pytest.raises(Full):
        q.put_nowait("c")
    with pytest.raises(Full):
        q.put("c", timeout=0.1)
    with pytest.raises(Full):
        q.put_nowait_batch(["c"])
    with pytest.raises(Empty):
        q.get_nowait_batch(3)
    assert q.get_nowait_batch(2) == ["a", "b"]
    with pytest.raises(ValueError):
        q.get(timeout=-1)
    with pytest.raises(TypeError):
        q.put_nowait_batch(5)
    q.shutdown()


@pytest.mark.timeout(60)
def test_queue_async_put_and_get(shared_runtime):
    q = Queue()

    async def roundtrip():
        await q.put_async({"k": 1})
        return await q.get_async(timeout=5)

    assert asyncio.run(roundtrip()) == {"k": 1}
    q.shutdown()
