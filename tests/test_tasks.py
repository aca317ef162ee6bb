"""Tasks: submission, options, returns, argument passing, nesting, get/wait/cancel,
futures and the runtime context. All on one shared ``num_cpus=2`` runtime."""

import asyncio
import os
import time

import pytest
import rtd
from conftest import wait_for_condition

pytestmark = pytest.mark.usefixtures("shared_runtime")


def test_remote_function_without_options_runs_in_another_process():
    @rtd.remote
    def where(x):
        import os

        return x * 2, os.getpid()

    value, pid = rtd.get(where.remote(21))
    assert value == 42
    assert pid != os.getpid()


def test_remote_function_with_options_uses_them():
    @rtd.remote(num_cpus=0.5, num_returns=2)
    def pair():
        return rtd.get_runtime_context().get_assigned_resources(), "second"

    resources_ref, second_ref = pair.remote()
    assert rtd.get(resources_ref) == {"CPU": 0.5}
    assert rtd.get(second_ref) == "second"


def test_options_returns_a_new_callable_and_leaves_the_original_unchanged():
    @rtd.remote
    def f():
        return rtd.get_runtime_context().get_assigned_resources(), 2

    g = f.options(num_returns=2, num_cpus=0.5)
    assert g is not f
    one = f.remote()
    assert isinstance(one, rtd.ObjectRef)
    assert rtd.get(one) == ({"CPU": 1.0}, 2)
    refs = g.remote()
    assert isinstance(refs, list) and len(refs) == 2
    assert rtd.get(refs) == [{"CPU": 0.5}, 2]
    # The original still has its own options after the copy was used.
    assert rtd.get(f.remote()) == ({"CPU": 1.0}, 2)


def test_num_returns_two_gives_two_refs():
    @rtd.remote(num_returns=2)
    def divmod_task(a, b):
        return divmod(a, b)

    q, r = divmod_task.remote(17, 5)
    assert isinstance(q, rtd.ObjectRef) and isinstance(r, rtd.ObjectRef)
    assert q != r
    assert rtd.get([q, r]) == [3, 2]


def test_num_returns_zero_returns_none_and_runs_the_task(tmp_path):
    marker = str(tmp_path / "ran")

    @rtd.remote(num_returns=0)
    def side_effect(path):
        with open(path, "w") as f:
            f.write("done")

    assert side_effect.remote(marker) is None
    wait_for_condition(lambda: os.path.exists(marker) and open(marker).read() == "done")


def test_top_level_ref_arguments_are_resolved_to_values():
    @rtd.remote
    def types(a, b, *, c):
        return type(a).__name__, a, type(b).__name__, b, type(c).__name__, c

    @rtd.remote
    def make(x):
        return x

    ref_a = rtd.put([1, 2])
    assert rtd.get(types.remote(ref_a, make.remote("b"), c=rtd.put(3.5))) == (
        "list", [1, 2], "str", "b", "float", 3.5,
    )


def test_refs_nested_in_a_list_arrive_as_refs():
    @rtd.remote
    def inspect_list(items):
        return [isinstance(r, rtd.ObjectRef) for r in items], rtd.get(items)

    refs = [rtd.put(i) for i in range(3)]
    kinds, values = rtd.get(inspect_list.remote(refs))
    assert kinds == [True, True, True]
    assert values == [0, 1, 2]


def test_refs_nested_in_a_dict_arrive_as_refs():
    @rtd.remote
    def produce():
        return "produced"

    @rtd.remote
    def inspect_dict(d):
        return {k: (isinstance(v, rtd.ObjectRef), rtd.get(v)) for k, v in d.items()}

    out = rtd.get(inspect_dict.remote({"put": rtd.put("stored"), "task": produce.remote()}))
    assert out == {"put": (True, "stored"), "task": (True, "produced")}


def test_refs_captured_in_a_closure_can_be_fetched_in_the_task():
    captured = rtd.put({"answer": 42})

    @rtd.remote
    def read_captured():
        return isinstance(captured, rtd.ObjectRef), rtd.get(captured)["answer"]

    assert rtd.get(read_captured.remote()) == (True, 42)


def test_a_task_can_submit_tasks_and_get_their_results():
    @rtd.remote
    def leaf(x):
        return x + 1

    @rtd.remote
    def parent(n):
        return sum(rtd.get([leaf.remote(i) for i in range(n)]))

    assert rtd.get(parent.remote(5)) == sum(range(1, 6))


@pytest.mark.timeout(60)
def test_nested_fan_out_on_two_cpus_does_not_deadlock():
    @rtd.remote
    def child(i):
        import time

        time.sleep(0.05)
        return i

    @rtd.remote
    def parent(k):
        # Every parent blocks in get while holding a CPU; only releasing it lets the
        # children run.
        return sum(rtd.get([child.remote(i) for i in range(4)])) + k

    refs = [parent.remote(k) for k in range(4)]
    ready, not_ready = rtd.wait(refs, num_returns=4, timeout=30)
    assert not_ready == [], "nested tasks deadlocked"
    assert rtd.get(refs) == [6 + k for k in range(4)]


def test_get_of_a_list_returns_values_in_the_list_order():
    @rtd.remote
    def slow_identity(x, delay):
        import time

        time.sleep(delay)
        return x

    refs = [slow_identity.remote(i, 0.3 - 0.1 * i) for i in range(3)]
    refs.append(rtd.put("put"))
    assert rtd.get(refs) == [0, 1, 2, "put"]
    assert rtd.get([]) == []


def test_get_with_timeout_on_a_slow_task_raises_get_timeout_error():
    @rtd.remote
    def slow():
        import time

        time.sleep(3)
        return "late"

    ref = slow.remote()
    start = time.monotonic()
    with pytest.raises(rtd.exceptions.GetTimeoutError) as info:
        rtd.get(ref, timeout=0.1)
    assert time.monotonic() - start < 2
    assert isinstance(info.value, TimeoutError)
    rtd.cancel(ref, force=True)


def test_wait_returns_ready_refs_in_completion_order():
    @rtd.remote(num_cpus=0.5)
    def sleeper(delay):
        import time

        time.sleep(delay)
        return delay

    refs = [sleeper.remote(d) for d in (0.9, 0.1, 0.5)]
    ready, not_ready = rtd.wait(refs, num_returns=3, timeout=20)
    assert not_ready == []
    assert rtd.get(ready) == [0.1, 0.5, 0.9]


def test_wait_stops_at_num_returns():
    @rtd.remote
    def sleeper(delay):
        import time

        time.sleep(delay)
        return delay

    slow, fast = sleeper.remote(1.0), sleeper.remote(0.05)
    ready, not_ready = rtd.wait([slow, fast], num_returns=1)
    assert ready == [fast] and not_ready == [slow]
    rtd.cancel(slow, force=True)


def test_wait_returns_fewer_refs_when_the_timeout_passes():
    @rtd.remote
    def sleeper(delay):
        import time

        time.sleep(delay)
        return delay

    slow, fast = sleeper.remote(3.0), sleeper.remote(0.05)
    start = time.monotonic()
    ready, not_ready = rtd.wait([slow, fast], num_returns=2, timeout=0.8)
    assert time.monotonic() - start < 2.5
    assert ready == [fast]
    assert not_ready == [slow]
    rtd.cancel(slow, force=True)


def test_force_cancel_of_a_running_task_raises_task_cancelled_error(tmp_path):
    started = str(tmp_path / "started")

    @rtd.remote(max_retries=3)
    def sleep_forever(path):
        import time

        open(path, "w").close()
        time.sleep(60)

    ref = sleep_forever.remote(started)
    wait_for_condition(lambda: os.path.exists(started))
    rtd.cancel(ref, force=True)
    start = time.monotonic()
    with pytest.raises(rtd.exceptions.TaskCancelledError):
        rtd.get(ref, timeout=10)
    assert time.monotonic() - start < 5


def test_cancel_of_a_queued_task_means_it_never_runs(tmp_path):
    started = str(tmp_path / "started")
    queued_ran = str(tmp_path / "queued_ran")

    @rtd.remote
    def hold(path, i):
        import time

        open(f"{path}{i}", "w").close()
        time.sleep(60)

    @rtd.remote
    def queued(path):
        open(path, "w").close()
        return "ran"

    holders = [hold.remote(started, i) for i in range(2)]
    wait_for_condition(lambda: all(os.path.exists(f"{started}{i}") for i in range(2)))
    ref = queued.remote(queued_ran)
    rtd.cancel(ref)
    with pytest.raises(rtd.exceptions.TaskCancelledError):
        rtd.get(ref, timeout=10)
    for h in holders:
        rtd.cancel(h, force=True)
    for h in holders:
        with pytest.raises(rtd.exceptions.TaskCancelledError):
            rtd.get(h, timeout=10)

    # Once the CPUs are free again the cancelled task still does not run.
    @rtd.remote
    def after():
        return "after"

    assert rtd.get(after.remote(), timeout=10) == "after"
    assert not os.path.exists(queued_ran)


def test_cancel_without_force_interrupts_a_running_sleep_loop(tmp_path):
    started = str(tmp_path / "started")

    @rtd.remote
    def loop(path):
        import time

        open(path, "w").close()
        for _ in range(600):
            time.sleep(0.1)
        return "finished"

    ref = loop.remote(started)
    wait_for_condition(lambda: os.path.exists(started))
    rtd.cancel(ref)
    with pytest.raises(rtd.exceptions.TaskCancelledError):
        rtd.get(ref, timeout=10)


def test_await_ref_in_asyncio():
    @rtd.remote
    def square(x):
        return x * x

    async def main():
        values = await asyncio.gather(*[square.remote(i) for i in range(4)])
        single = await square.remote(5)
        return values, single

    assert asyncio.run(asyncio.wait_for(main(), 20)) == ([0, 1, 4, 9], 25)


def test_await_ref_raises_the_task_error():
    @rtd.remote
    def fail():
        raise KeyError("missing")

    async def main():
        with pytest.raises(KeyError):
            await fail.remote()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_ref_future_result_gives_the_value():
    @rtd.remote
    def add(a, b):
        return a + b

    future = add.remote(2, 3).future()
    assert future.result(timeout=10) == 5
    assert rtd.put("x").future().result(timeout=10) == "x"


def test_runtime_context_in_the_driver():
    ctx = rtd.get_runtime_context()
    assert ctx.get_task_id() is None
    job_id = ctx.get_job_id()
    assert isinstance(job_id, str) and int(job_id, 16) >= 0
    assert ctx.get_node_id() == rtd.nodes()[0]["NodeID"]


def test_runtime_context_in_a_task():
    @rtd.remote
    def ids():
        ctx = rtd.get_runtime_context()
        return ctx.get_job_id(), ctx.get_node_id(), ctx.get_task_id()

    driver = rtd.get_runtime_context()
    job_id, node_id, task_id = rtd.get(ids.remote())
    assert job_id == driver.get_job_id()
    assert node_id == driver.get_node_id() == rtd.nodes()[0]["NodeID"]
    assert isinstance(task_id, str) and len(task_id) > 0
    int(task_id, 16)  # hex
    # Each task has its own id.
    assert rtd.get(ids.remote())[2] != task_id


def test_object_ref_is_hashable_comparable_and_has_hex():
    ref = rtd.put(1)
    same = ref
    assert {ref: "a"}[same] == "a"
    assert ref == same and ref != rtd.put(1)
    assert isinstance(ref.hex(), str) and int(ref.hex(), 16) >= 0


def test_get_with_zero_timeout_on_a_pending_task_raises_at_once():
    @rtd.remote
    def slow():
        import time

        time.sleep(2)

    ref = slow.remote()
    with pytest.raises(rtd.exceptions.GetTimeoutError):
        rtd.get(ref, timeout=0)
    rtd.cancel(ref, force=True)


def test_cancel_of_a_finished_task_keeps_its_value():
    @rtd.remote
    def done():
        return "value"

    ref = done.remote()
    assert rtd.get(ref) == "value"
    rtd.cancel(ref)
    assert rtd.get(ref) == "value"


def test_num_returns_mismatch_raises_value_error_at_get():
    @rtd.remote(num_returns=2)
    def only_one():
        return 1

    a, b = only_one.remote()
    with pytest.raises(ValueError):
        rtd.get(a)
    with pytest.raises(ValueError):
        rtd.get(b)


def test_unpicklable_return_value_raises_type_error_at_get():
    @rtd.remote
    def returns_lock():
        import threading

        return threading.Lock()

    with pytest.raises(rtd.exceptions.RayTaskError) as info:
        rtd.get(returns_lock.remote())
    assert isinstance(info.value, TypeError)
    assert "lock" in str(info.value)


def test_many_small_tasks_complete():
    @rtd.remote
    def inc(x):
        return x + 1

    assert rtd.get([inc.remote(i) for i in range(1000)], timeout=60) == list(range(1, 1001))
