"""Generator tasks, as in Ray 2.x: a remote function or actor method that yields gives
the caller an ObjectRefGenerator whose refs arrive while the task still runs; errors,
cancels, backpressure, retries, "dynamic" generators, ownership and lineage."""

import asyncio
import os
import signal
import time

import numpy as np
import pytest
import rtd
from conftest import SignalActor, wait_for_condition
from rtd.cluster_utils import Cluster
from rtd.util.scheduling_strategies import NodeAffinitySchedulingStrategy

TIMEOUT = 30


def _known_here(hex_id):
    return hex_id in rtd._core.get_all_reference_counts()


@rtd.remote(num_cpus=0)
class Counter:
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n

    def get(self):
        return self.n


# --- streaming ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_items_arrive_while_the_task_still_runs(shared_runtime):
    signal_actor = SignalActor.remote()

    @rtd.remote
    def produce(signal_actor):
        yield "first"
        rtd.get(signal_actor.wait.remote())
        yield "second"

    gen = produce.remote(signal_actor)
    assert isinstance(gen, rtd.ObjectRefGenerator)
    # Item 0 is readable while the producer is blocked on the signal.
    assert rtd.get(next(gen), timeout=TIMEOUT) == "first"
    wait_for_condition(lambda: rtd.get(signal_actor.cur_num_waiters.remote()) == 1, timeout=TIMEOUT)
    assert not gen.is_finished()
    signal_actor.send.remote()
    assert rtd.get(next(gen), timeout=TIMEOUT) == "second"
    with pytest.raises(StopIteration):
        next(gen)
    assert gen.is_finished()
    assert rtd.get(gen.completed(), timeout=TIMEOUT) is None


@pytest.mark.timeout(60)
def test_for_loop_gets_every_item_in_order_and_large_items_go_through_plasma(shared_runtime):
    @rtd.remote
    def produce(n):
        for i in range(n):
            yield np.full(50_000, i) if i % 10 == 0 else i

    values = [rtd.get(ref, timeout=TIMEOUT) for ref in produce.remote(25)]
    assert [int(v[0]) if isinstance(v, np.ndarray) else v for v in values] == list(range(25))


@pytest.mark.timeout(60)
def test_streaming_is_explicit_too_and_options_check_backpressure(shared_runtime):
    @rtd.remote(num_returns="streaming")
    def produce():
        yield from range(3)

    assert [rtd.get(r) for r in produce.remote()] == [0, 1, 2]
    with pytest.raises(ValueError, match="_generator_backpressure_num_objects"):
        produce.options(_generator_backpressure_num_objects=0)
    with pytest.raises(ValueError, match="num_returns"):
        produce.options(num_returns="sometimes")


@pytest.mark.timeout(60)
def test_async_for_does_not_block_the_event_loop(shared_runtime):
    signal_actor = SignalActor.remote()

    @rtd.remote
    def produce(signal_actor):
        yield 1
        rtd.get(signal_actor.wait.remote())
        yield 2

    async def main():
        gen = produce.remote(signal_actor)
        ticks = 0
        seen = []

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.ensure_future(ticker())
        async for ref in gen:
            seen.append(await ref)
            if len(seen) == 1:
                before = ticks
                while rtd.get(signal_actor.cur_num_waiters.remote()) == 0:
                    await asyncio.sleep(0.05)
                signal_actor.send.remote()
                await asyncio.sleep(0.2)
                # The loop kept running while the generator had nothing to give.
                assert ticks > before
        tick_task.cancel()
        return seen

    assert asyncio.run(asyncio.wait_for(main(), TIMEOUT)) == [1, 2]


@pytest.mark.timeout(60)
def test_an_exception_mid_stream_surfaces_at_its_item(shared_runtime):
    @rtd.remote
    def produce():
        yield 0
        yield 1
        raise ValueError("bad item 2")

    gen = produce.remote()
    first, second, failed = next(gen), next(gen), next(gen)
    assert rtd.get([first, second], timeout=TIMEOUT) == [0, 1]
    with pytest.raises(rtd.exceptions.RayTaskError) as info:
        rtd.get(failed, timeout=TIMEOUT)
    assert isinstance(info.value, ValueError)
    assert "bad item 2" in str(info.value)
    with pytest.raises(StopIteration):
        next(gen)
    with pytest.raises(ValueError):
        rtd.get(gen.completed(), timeout=TIMEOUT)
    # Earlier items stay readable.
    assert rtd.get(first) == 0


@pytest.mark.timeout(60)
def test_cancel_stops_the_generator_task(shared_runtime, tmp_path):
    marker = tmp_path / "count"

    @rtd.remote
    def forever(path):
        i = 0
        while True:
            with open(path, "w") as f:
                f.write(str(i))
            yield i
            i += 1
            time.sleep(0.01)

    gen = forever.remote(str(marker))
    assert rtd.get(next(gen), timeout=TIMEOUT) == 0
    rtd.cancel(gen)
    with pytest.raises(rtd.exceptions.TaskCancelledError):
        for ref in gen:
            rtd.get(ref, timeout=TIMEOUT)
    assert gen.is_finished()
    # The producer stopped: its count no longer moves.
    wait_for_condition(lambda: _stable(marker), timeout=TIMEOUT)


def _stable(marker):
    before = marker.read_text()
    time.sleep(0.2)
    return marker.read_text() == before


@pytest.mark.timeout(60)
def test_backpressure_keeps_the_producer_at_most_n_items_ahead(shared_runtime):
    counter = Counter.remote()

    @rtd.remote(_generator_backpressure_num_objects=2)
    def produce(counter, n):
        for i in range(n):
            rtd.get(counter.incr.remote())
            yield i

    gen = produce.remote(counter, 10)
    # Nothing consumed: the producer stops after 2 unconsumed items.
    wait_for_condition(lambda: rtd.get(counter.get.remote()) == 2, timeout=TIMEOUT)
    time.sleep(0.5)
    assert rtd.get(counter.get.remote()) == 2
    consumed = 0
    for ref in gen:
        assert rtd.get(ref, timeout=TIMEOUT) == consumed
        consumed += 1
        assert rtd.get(counter.get.remote()) <= consumed + 2
    assert consumed == 10


@pytest.mark.timeout(60)
def test_wait_on_a_generator_says_when_next_would_not_block(shared_runtime):
    signal_actor = SignalActor.remote()

    @rtd.remote
    def produce(signal_actor):
        rtd.get(signal_actor.wait.remote())
        yield "x"

    gen = produce.remote(signal_actor)
    ready, not_ready = rtd.wait([gen], timeout=0.3)
    assert (ready, not_ready) == ([], [gen])
    assert not gen.next_ready()
    signal_actor.send.remote()
    ready, _ = rtd.wait([gen], timeout=TIMEOUT)
    assert ready == [gen]
    assert gen.next_ready()
    assert rtd.get(next(gen)) == "x"
    wait_for_condition(gen.is_finished, timeout=TIMEOUT)


@pytest.mark.timeout(60)
def test_a_task_consuming_a_generator_gives_its_cpus_back_while_it_waits(shared_runtime):
    @rtd.remote(num_cpus=1)
    def produce(n):
        yield from range(n)

    # Holds both CPUs of the runtime: the producer can only run while it waits.
    @rtd.remote(num_cpus=2)
    def consume(n):
        return sum(rtd.get(ref) for ref in produce.remote(n))

    assert rtd.get(consume.remote(4), timeout=TIMEOUT) == 6


# --- dynamic -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_dynamic_returns_one_ref_to_the_items(shared_runtime):
    @rtd.remote(num_returns="dynamic")
    def produce(n):
        for i in range(n):
            yield np.full(40_000, i) if i == 1 else i

    ref = produce.remote(3)
    assert isinstance(ref, rtd.ObjectRef)
    items = rtd.get(ref, timeout=TIMEOUT)
    assert isinstance(items, rtd.DynamicObjectRefGenerator)
    assert len(items) == 3
    values = [rtd.get(r, timeout=TIMEOUT) for r in items]
    assert values[0] == 0 and int(values[1][0]) == 1 and values[2] == 2
    hex_ids = [r.hex() for r in items]
    del items, values, ref
    # The caller owns the items: gone once nothing refers to them.
    wait_for_condition(lambda: not any(_known_here(h) for h in hex_ids), timeout=TIMEOUT)


# --- actors ------------------------------------------------------------------------------


@rtd.remote
class Streamer:
    def items(self, n):
        for i in range(n):
            yield i * 10

    def failing(self):
        yield "ok"
        raise KeyError("actor item")


@rtd.remote
class AsyncStreamer:
    async def items(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i * 10

    async def gated(self, signal_actor):
        yield "before"
        await signal_actor.wait.remote()
        yield "after"


@pytest.mark.timeout(90)
def test_actor_generators_sync_threaded_and_async(shared_runtime):
    sync_actor = Streamer.remote()
    threaded = Streamer.options(max_concurrency=4).remote()
    async_actor = AsyncStreamer.remote()
    for actor in (sync_actor, threaded, async_actor):
        assert [rtd.get(r, timeout=TIMEOUT) for r in actor.items.remote(5)] == [0, 10, 20, 30, 40]
    # Several generators of a threaded actor at once.
    gens = [threaded.items.remote(3) for _ in range(3)]
    assert [[rtd.get(r) for r in g] for g in gens] == [[0, 10, 20]] * 3
    gen = sync_actor.failing.remote()
    assert rtd.get(next(gen)) == "ok"
    with pytest.raises(KeyError):
        rtd.get(next(gen))
    with pytest.raises(StopIteration):
        next(gen)
    dynamic = rtd.get(async_actor.items.options(num_returns="dynamic").remote(2), timeout=TIMEOUT)
    assert [rtd.get(r) for r in dynamic] == [0, 10]


@pytest.mark.timeout(60)
def test_async_actor_generator_streams_while_it_awaits(shared_runtime):
    signal_actor = SignalActor.remote()
    actor = AsyncStreamer.remote()
    gen = actor.gated.remote(signal_actor)
    assert rtd.get(next(gen), timeout=TIMEOUT) == "before"
    signal_actor.send.remote()
    assert rtd.get(next(gen), timeout=TIMEOUT) == "after"


# --- ownership and failures ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_items_are_owned_by_the_caller_and_freed_when_dropped(shared_runtime):
    @rtd.remote
    def produce(n):
        for i in range(n):
            yield np.full(30_000, i)

    gen = produce.remote(4)
    first = next(gen)
    assert rtd.get(gen.completed(), timeout=TIMEOUT) is None
    task_id, first_hex = first.task_id(), first.hex()

    def known():
        return [h for h in rtd._core.get_all_reference_counts() if h.startswith(task_id)]

    # The completed ref and the four items, all owned here.
    assert len(known()) == 5
    assert all(rtd._core.get_all_reference_counts()[h]["owned"] for h in known())
    del gen
    # Unconsumed items (and the stream) are released with the generator.
    wait_for_condition(lambda: known() == [first_hex], timeout=TIMEOUT)
    assert int(rtd.get(first)[0]) == 0
    del first
    wait_for_condition(lambda: known() == [], timeout=TIMEOUT)


@pytest.mark.timeout(90)
def test_a_worker_crash_mid_stream_is_retried_without_duplicating_items(shared_runtime, tmp_path):
    attempts = tmp_path / "attempts"

    @rtd.remote(max_retries=2)
    def produce(path):
        import os

        with open(path, "a") as f:
            f.write("x")
        with open(path) as f:
            attempt = len(f.read())
        for i in range(6):
            if i == 3 and attempt == 1:
                os._exit(1)
            yield i

    values = [rtd.get(r, timeout=TIMEOUT) for r in produce.remote(str(attempts))]
    assert values == list(range(6))
    assert attempts.read_text() == "xx"


@pytest.mark.timeout(60)
def test_a_crash_without_retries_ends_the_stream_with_worker_crashed_error(shared_runtime):
    signal_actor = SignalActor.remote()

    @rtd.remote(max_retries=0)
    def produce(signal_actor):
        import os

        yield 1
        # Crashes once the caller has item 0 (an item not yet reported dies with it).
        rtd.get(signal_actor.wait.remote())
        os._exit(1)

    gen = produce.remote(signal_actor)
    assert rtd.get(next(gen), timeout=TIMEOUT) == 1
    signal_actor.send.remote()
    with pytest.raises(rtd.exceptions.WorkerCrashedError):
        rtd.get(next(gen), timeout=TIMEOUT)
    with pytest.raises(StopIteration):
        next(gen)


@pytest.mark.timeout(120)
def test_items_lost_with_their_node_are_rebuilt_by_rerunning_the_generator():
    if rtd.is_initialized():
        rtd.shutdown()
    os.environ["RTD_NODE_TIMEOUT_MS"] = "1500"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1}, shutdown_at_exit=False)
    try:
        victim = cluster.add_node(num_cpus=1)
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        rtd.init(address=cluster.address)

        @rtd.remote(max_retries=2)
        def produce():
            import numpy as np
            import rtd

            yield rtd.get_runtime_context().get_node_id()
            for i in range(3):
                yield np.full(500_000, i)

        # Soft affinity: the re-run may go elsewhere once the victim is gone.
        on_victim = NodeAffinitySchedulingStrategy(victim.node_id, soft=True)
        refs = list(produce.options(scheduling_strategy=on_victim).remote())
        assert rtd.get(refs[0], timeout=TIMEOUT) == victim.node_id
        rtd.wait(refs[1:], num_returns=3, timeout=TIMEOUT)
        cluster.remove_node(victim, allow_graceful=False)
        wait_for_condition(
            lambda: victim.node_id not in {n["NodeID"] for n in rtd.nodes() if n["Alive"]}, timeout=TIMEOUT
        )
        arrays = rtd.get(refs[1:], timeout=TIMEOUT)
        assert [int(a[0]) for a in arrays] == [0, 1, 2]
    finally:
        os.environ.pop("RTD_NODE_TIMEOUT_MS", None)
        if rtd.is_initialized():
            rtd.shutdown()
        for node in cluster.list_all_nodes():
            try:
                os.kill(node.process.pid, signal.SIGCONT)
            except OSError:
                pass
        cluster.shutdown()
