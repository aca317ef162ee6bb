"""Actors: creation and options, method calls, ordering and parallelism, handles, errors,
async and threaded concurrency, named actors, resources and bad input. Lifetimes, kill,
restarts and detached actors are in test_actors_lifetime.py.

Classes are defined inside the tests (or in helpers that return them) so cloudpickle
ships them to the workers by value. Tests with their own runtime come last, so the shared
runtime is started once.
"""

import os
import time

import pytest
import rtd
from conftest import SignalActor, last_json_line, pid_alive, run_script, wait_for_condition


def _counter_class(**options):
    def define():
        class Counter:
            def __init__(self, start=0):
                self.n = start

            def incr(self, by=1):
                self.n += by
                return self.n

            def value(self):
                return self.n

            def pid(self):
                import os

                return os.getpid()

        return Counter

    cls = define()
    return rtd.remote(**options)(cls) if options else rtd.remote(cls)


def _available_cpu():
    return rtd.available_resources().get("CPU", 0.0)


# --- creation and options ------------------------------------------------------------


@pytest.mark.usefixtures("shared_runtime")
def test_decorated_class_runs_in_its_own_process_with_a_stable_pid():
    @rtd.remote
    class Where:
        def pid(self):
            import os

            return os.getpid()

    a = Where.remote()
    pids = rtd.get([a.pid.remote() for _ in range(5)])
    assert len(set(pids)) == 1
    assert pids[0] != os.getpid()


@pytest.mark.usefixtures("shared_runtime")
def test_two_actors_live_in_different_processes():
    Counter = _counter_class()
    a, b = Counter.remote(), Counter.remote()
    pid_a, pid_b = rtd.get([a.pid.remote(), b.pid.remote()])
    assert pid_a != pid_b
    assert os.getpid() not in (pid_a, pid_b)


@pytest.mark.usefixtures("shared_runtime")
def test_remote_called_as_a_function_on_a_class_makes_an_actor_class():
    Counter = _counter_class()  # rtd.remote(cls), not the decorator syntax
    c = Counter.remote(10)
    assert rtd.get(c.incr.remote(5)) == 15


@pytest.mark.usefixtures("shared_runtime")
def test_decorator_with_options_applies_them():
    @rtd.remote(num_cpus=1, max_concurrency=2)
    class Holder:
        def resources(self):
            return rtd.get_runtime_context().get_assigned_resources()

        def ready(self):
            return True

    before = _available_cpu()
    h = Holder.remote()
    assert rtd.get(h.ready.remote()) is True
    wait_for_condition(lambda: _available_cpu() == before - 1)
    assert rtd.get(h.resources.remote()).get("CPU") == 1.0


@pytest.mark.usefixtures("shared_runtime")
def test_constructor_args_and_kwargs_reach_init():
    @rtd.remote
    class Pair:
        def __init__(self, a, b=0, *, c):
            self.values = (a, b, c)

        def get(self):
            return self.values

    p = Pair.remote(1, c=3)
    q = Pair.remote(1, 2, c=3)
    assert rtd.get([p.get.remote(), q.get.remote()]) == [(1, 0, 3), (1, 2, 3)]


@pytest.mark.usefixtures("shared_runtime")
def test_options_returns_a_copy_and_leaves_the_class_unchanged():
    Counter = _counter_class()
    Named = Counter.options(name="options-copy-counter")
    assert Named is not Counter
    named = Named.remote(1)
    plain = Counter.remote(2)
    assert rtd.get(rtd.get_actor("options-copy-counter").value.remote()) == 1
    assert rtd.get(plain.value.remote()) == 2
    # The original class has no name: two more instances are fine.
    more = [Counter.remote(), Counter.remote()]
    assert rtd.get([m.value.remote() for m in more]) == [0, 0]
    del named


@pytest.mark.usefixtures("shared_runtime")
def test_method_options_num_returns_two_gives_two_refs():
    @rtd.remote
    class Splitter:
        def split(self, x):
            return x, x * 10

    s = Splitter.remote()
    refs = s.split.options(num_returns=2).remote(4)
    assert isinstance(refs, list) and len(refs) == 2
    assert all(isinstance(r, rtd.ObjectRef) for r in refs)
    assert rtd.get(refs) == [4, 40]
    # Without options the method still has one return.
    assert rtd.get(s.split.remote(1)) == (1, 10)


@pytest.mark.usefixtures("shared_runtime")
def test_method_decorator_num_returns_two_gives_two_refs():
    @rtd.remote
    class Splitter:
        @rtd.method(num_returns=2)
        def split(self, x):
            return x, -x

        def one(self):
            return "one"

    s = Splitter.remote()
    a, b = s.split.remote(7)
    assert rtd.get([a, b]) == [7, -7]
    assert rtd.get(s.one.remote()) == "one"


@pytest.mark.usefixtures("shared_runtime")
def test_method_with_num_returns_zero_returns_none_and_runs(tmp_path):
    marker = str(tmp_path / "ran")

    @rtd.remote
    class Writer:
        @rtd.method(num_returns=0)
        def write(self, path):
            with open(path, "w") as f:
                f.write("done")

    w = Writer.remote()
    assert w.write.remote(marker) is None
    wait_for_condition(lambda: os.path.exists(marker) and open(marker).read() == "done")


# --- state, ordering, parallelism ------------------------------------------------------


@pytest.mark.usefixtures("shared_runtime")
def test_state_lives_across_calls():
    Counter = _counter_class()
    c = Counter.remote()
    assert rtd.get([c.incr.remote() for _ in range(5)]) == [1, 2, 3, 4, 5]
    assert rtd.get(c.incr.remote(10)) == 15
    assert rtd.get(c.value.remote()) == 15


@pytest.mark.usefixtures("shared_runtime")
def test_calls_run_in_submission_order_even_when_an_earlier_one_waits_for_an_argument():
    @rtd.remote
    def slow(x):
        import time

        time.sleep(0.5)
        return x

    @rtd.remote
    class Log:
        def __init__(self):
            self.items = []

        def add(self, x):
            self.items.append(x)

        def items_(self):
            return self.items

    log = Log.remote()
    rtd.get(log.__ray_ready__.remote())
    log.add.remote(slow.remote("first"))
    log.add.remote("second")
    log.add.remote("third")
    assert rtd.get(log.items_.remote(), timeout=20) == ["first", "second", "third"]


@pytest.mark.usefixtures("shared_runtime")
def test_many_calls_from_one_submitter_keep_their_order():
    @rtd.remote
    class Log:
        def __init__(self):
            self.items = []

        def add(self, x):
            self.items.append(x)
            return len(self.items)

        def items_(self):
            return self.items

    log = Log.remote()
    refs = [log.add.remote(i) for i in range(200)]
    assert rtd.get(refs) == list(range(1, 201))
    assert rtd.get(log.items_.remote()) == list(range(200))


@pytest.mark.usefixtures("shared_runtime")
def test_different_actors_run_in_parallel():
    @rtd.remote
    class Sleeper:
        def sleep(self, s):
            import time

            time.sleep(s)
            return s

    a, b = Sleeper.remote(), Sleeper.remote()
    rtd.get([a.__ray_ready__.remote(), b.__ray_ready__.remote()])
    start = time.monotonic()
    assert rtd.get([a.sleep.remote(0.5), b.sleep.remote(0.5)]) == [0.5, 0.5]
    elapsed = time.monotonic() - start
    assert elapsed < 0.9, f"two actors sleeping 0.5 s each took {elapsed:.2f} s"


@pytest.mark.usefixtures("shared_runtime")
def test_calls_to_one_sync_actor_run_one_at_a_time():
    @rtd.remote
    class Serial:
        def __init__(self):
            self.active = 0
            self.peak = 0

        def work(self):
            import time

            self.active += 1
            self.peak = max(self.peak, self.active)
            time.sleep(0.05)
            self.active -= 1

        def peak_(self):
            return self.peak

    s = Serial.remote()
    rtd.get([s.work.remote() for _ in range(5)])
    assert rtd.get(s.peak_.remote()) == 1


# --- handles ---------------------------------------------------------------------------


@pytest.mark.usefixtures("shared_runtime")
def test_handle_passed_to_a_task_can_call_the_actor():
    Counter = _counter_class()
    c = Counter.remote()

    @rtd.remote
    def bump_twice(counter):
        rtd.get(counter.incr.remote())
        return rtd.get(counter.incr.remote())

    assert rtd.get(bump_twice.remote(c)) == 2
    assert rtd.get(c.value.remote()) == 2


@pytest.mark.usefixtures("shared_runtime")
def test_handle_passed_to_another_actor_can_call_the_actor():
    Counter = _counter_class()
    c = Counter.remote()

    @rtd.remote
    class Caller:
        def __init__(self, counter):
            self.counter = counter

        def call(self, by):
            return rtd.get(self.counter.incr.remote(by))

        def call_given(self, counter, by):
            return rtd.get(counter.incr.remote(by))

    caller = Caller.remote(c)
    assert rtd.get(caller.call.remote(5)) == 5
    assert rtd.get(caller.call_given.remote(c, 2)) == 7
    assert rtd.get(c.value.remote()) == 7


@pytest.mark.usefixtures("shared_runtime")
def test_handle_stored_inside_an_object_can_be_used_by_every_holder():
    Counter = _counter_class()
    c = Counter.remote()
    boxed = rtd.put([c])

    @rtd.remote
    def use(box):
        handles = rtd.get(box[0])
        return rtd.get(handles[0].incr.remote())

    # The driver itself reads the handle back out of the store.
    from_store = rtd.get(boxed)[0]
    assert rtd.get(from_store.incr.remote()) == 1
    # A task gets it through a nested ref (passed inside a list, so not resolved).
    assert rtd.get(use.remote([boxed])) == 2
    assert rtd.get(c.value.remote()) == 2


@pytest.mark.usefixtures("shared_runtime")
def test_handle_survives_pickling_in_the_driver_and_compares_equal():
    import cloudpickle

    Counter = _counter_class()
    c = Counter.remote()
    copy = cloudpickle.loads(cloudpickle.dumps(c))
    assert copy == c and hash(copy) == hash(c)
    assert rtd.get(copy.incr.remote()) == 1
    assert rtd.get(c.incr.remote()) == 2


@pytest.mark.usefixtures("shared_runtime")
def test_constructor_and_method_args_resolve_top_level_refs_and_keep_nested_refs():
    @rtd.remote
    class Holder:
        def __init__(self, top, nested):
            self.top = top
            self.nested = nested

        def kinds(self, top, nested):
            def kind(x):
                return "ref" if isinstance(x, rtd.ObjectRef) else x

            held = [kind(self.top), kind(self.nested[0]), rtd.get(self.nested[0])]
            return [*held, kind(top), kind(nested[0]), rtd.get(nested[0])]

    a, b, c, d = rtd.put("a"), rtd.put("b"), rtd.put("c"), rtd.put("d")
    h = Holder.remote(a, [b])
    assert rtd.get(h.kinds.remote(c, [d])) == ["a", "ref", "b", "c", "ref", "d"]


@pytest.mark.usefixtures("shared_runtime")
def test_task_output_ref_as_constructor_argument_is_waited_for():
    @rtd.remote
    def slow_value():
        import time

        time.sleep(0.3)
        return 41

    Counter = _counter_class()
    c = Counter.remote(slow_value.remote())
    assert rtd.get(c.incr.remote(), timeout=20) == 42


@pytest.mark.usefixtures("shared_runtime")
def test_keyword_ref_arguments_to_methods_are_resolved():
    @rtd.remote
    class Echo:
        def echo(self, *, value, nested):
            return value, isinstance(nested[0], rtd.ObjectRef)

    e = Echo.remote()
    assert rtd.get(e.echo.remote(value=rtd.put(3), nested=[rtd.put(4)])) == (3, True)


@pytest.mark.usefixtures("shared_runtime")
def test_inherited_methods_can_be_called():
    def define():
        class Base:
            def __init__(self):
                self.n = 1

            def base_method(self):
                return "base", self.n

        class Child(Base):
            def child_method(self):
                return "child", self.n

        return Child

    c = rtd.remote(define()).remote()
    assert rtd.get([c.base_method.remote(), c.child_method.remote()]) == [("base", 1), ("child", 1)]


@pytest.mark.usefixtures("shared_runtime")
def test_runtime_context_gives_the_actor_id_inside_the_actor_only():
    @rtd.remote
    class Who:
        def actor_id(self):
            return rtd.get_runtime_context().get_actor_id()

    @rtd.remote
    def task_actor_id():
        return rtd.get_runtime_context().get_actor_id()

    a, b = Who.remote(), Who.remote()
    id_a, id_a_again, id_b = rtd.get([a.actor_id.remote(), a.actor_id.remote(), b.actor_id.remote()])
    assert isinstance(id_a, str) and id_a
    assert id_a == id_a_again
    assert id_a != id_b
    assert rtd.get(task_actor_id.remote()) is None


@pytest.mark.usefixtures("shared_runtime")
def test_method_can_return_a_large_numpy_array():
    import numpy as np

    @rtd.remote
    class Maker:
        def make(self, n):
            import numpy as np

            return np.arange(n, dtype=np.int64)

    m = Maker.remote()
    value = rtd.get(m.make.remote(2_000_000), timeout=30)
    assert value.shape == (2_000_000,)
    assert int(value[-1]) == 1_999_999
    assert np.array_equal(value[:3], [0, 1, 2])


# --- errors in methods -----------------------------------------------------------------


@pytest.mark.usefixtures("shared_runtime")
def test_method_exception_reraises_at_get_and_the_actor_stays_alive():
    @rtd.remote
    class Fragile:
        def __init__(self):
            self.calls = 0

        def fail(self):
            self.calls += 1
            raise ValueError("broken method")

        def count(self):
            self.calls += 1
            return self.calls

    f = Fragile.remote()
    with pytest.raises(ValueError, match="broken method") as info:
        rtd.get(f.fail.remote())
    assert isinstance(info.value, rtd.exceptions.RayTaskError)
    assert "Fragile.fail" in str(info.value)
    # Same process, same state: the failed call counted.
    assert rtd.get(f.count.remote()) == 2


@pytest.mark.usefixtures("shared_runtime")
def test_method_error_is_passed_on_to_dependent_calls():
    @rtd.remote
    class Fragile:
        def fail(self):
            raise KeyError("missing")

        def echo(self, x):
            return x

    f = Fragile.remote()
    with pytest.raises(KeyError):
        rtd.get(f.echo.remote(f.fail.remote()))
    assert rtd.get(f.echo.remote(1)) == 1


@pytest.mark.usefixtures("shared_runtime")
def test_unpicklable_return_value_raises_at_get_and_the_actor_stays_alive():
    @rtd.remote
    class Leaky:
        def lock(self):
            import threading

            return threading.Lock()

        def ok(self):
            return "ok"

    a = Leaky.remote()
    with pytest.raises(rtd.exceptions.RayTaskError):
        rtd.get(a.lock.remote(), timeout=20)
    assert rtd.get(a.ok.remote()) == "ok"


@pytest.mark.usefixtures("shared_runtime")
def test_failed_constructor_argument_kills_the_actor_with_that_error():
    @rtd.remote
    def fail():
        raise ValueError("bad constructor input")

    Counter = _counter_class()
    c = Counter.remote(fail.remote())
    with pytest.raises(rtd.exceptions.RayActorError, match="bad constructor input"):
        rtd.get(c.incr.remote(), timeout=20)


# --- async actors ----------------------------------------------------------------------


def _async_peak_class(**options):
    @rtd.remote(**options)
    class AsyncPeak:
        def __init__(self):
            self.active = 0
            self.peak = 0

        async def work(self, seconds):
            import asyncio

            self.active += 1
            self.peak = max(self.peak, self.active)
            await asyncio.sleep(seconds)
            self.active -= 1
            return seconds

        async def peak_(self):
            return self.peak

    return AsyncPeak


@pytest.mark.usefixtures("shared_runtime")
def test_async_actor_runs_up_to_max_concurrency_calls_at_once():
    a = _async_peak_class(max_concurrency=3).remote()
    rtd.get(a.__ray_ready__.remote())
    rtd.get([a.work.remote(0.2) for _ in range(9)], timeout=20)
    assert rtd.get(a.peak_.remote()) == 3


@pytest.mark.usefixtures("shared_runtime")
def test_async_actor_default_concurrency_runs_many_calls_at_once():
    a = _async_peak_class().remote()
    rtd.get(a.__ray_ready__.remote())
    start = time.monotonic()
    rtd.get([a.work.remote(0.3) for _ in range(50)], timeout=20)
    elapsed = time.monotonic() - start
    assert elapsed < 1.5, f"50 concurrent 0.3 s sleeps took {elapsed:.2f} s"
    assert rtd.get(a.peak_.remote()) == 50


@pytest.mark.usefixtures("shared_runtime")
def test_async_method_can_await_an_object_ref():
    @rtd.remote
    def slow_square(x):
        import time

        time.sleep(0.1)
        return x * x

    @rtd.remote
    class Awaiter:
        async def await_new_task(self, x):
            return await slow_square.remote(x)

        async def await_given(self, refs):
            return await refs[0]

    a = Awaiter.remote()
    assert rtd.get(a.await_new_task.remote(6), timeout=20) == 36
    assert rtd.get(a.await_given.remote([slow_square.remote(3)]), timeout=20) == 9


@pytest.mark.usefixtures("shared_runtime")
def test_async_actor_method_exception_reraises_and_actor_stays_alive():
    @rtd.remote
    class AsyncFragile:
        async def fail(self):
            raise RuntimeError("async failure")

        async def ok(self):
            return "ok"

    a = AsyncFragile.remote()
    with pytest.raises(RuntimeError, match="async failure") as info:
        rtd.get(a.fail.remote())
    assert isinstance(info.value, rtd.exceptions.RayTaskError)
    assert rtd.get(a.ok.remote()) == "ok"


@pytest.mark.usefixtures("shared_runtime")
def test_async_actor_concurrency_group_limits_its_methods():
    @rtd.remote(concurrency_groups={"io": 2})
    class AsyncGrouped:
        def __init__(self):
            self.active = {}
            self.peak = {}

        async def _work(self, label):
            import asyncio

            self.active[label] = self.active.get(label, 0) + 1
            self.peak[label] = max(self.peak.get(label, 0), self.active[label])
            await asyncio.sleep(0.15)
            self.active[label] -= 1

        @rtd.method(concurrency_group="io")
        async def io(self):
            await self._work("io")

        async def other(self):
            await self._work("default")

        async def peaks(self):
            return dict(self.peak)

    a = AsyncGrouped.remote()
    rtd.get(a.__ray_ready__.remote())
    rtd.get([a.io.remote() for _ in range(6)] + [a.other.remote() for _ in range(6)], timeout=20)
    peaks = rtd.get(a.peaks.remote())
    assert peaks["io"] == 2
    # The default group of an async actor keeps the default concurrency.
    assert peaks["default"] == 6


@pytest.mark.usefixtures("shared_runtime")
def test_async_actor_can_mix_in_sync_methods():
    @rtd.remote
    class Mixed:
        def __init__(self):
            self.n = 0

        def sync_incr(self):
            self.n += 1
            return self.n

        async def async_value(self):
            return self.n

    m = Mixed.remote()
    assert rtd.get([m.sync_incr.remote(), m.sync_incr.remote()]) == [1, 2]
    assert rtd.get(m.async_value.remote()) == 2


# --- threaded actors and concurrency groups --------------------------------------------


def _threaded_peak_class(**options):
    @rtd.remote(**options)
    class ThreadedPeak:
        def __init__(self):
            import threading

            self.lock = threading.Lock()
            self.active = {}
            self.peak = {}

        def _enter(self, label):
            with self.lock:
                self.active[label] = self.active.get(label, 0) + 1
                self.peak[label] = max(self.peak.get(label, 0), self.active[label])
                total = sum(self.active.values())
                self.peak["total"] = max(self.peak.get("total", 0), total)

        def _leave(self, label):
            with self.lock:
                self.active[label] -= 1

        def work(self, label, seconds):
            import time

            self._enter(label)
            try:
                time.sleep(seconds)
            finally:
                self._leave(label)
            return label

        def peaks(self):
            with self.lock:
                return dict(self.peak)

    return ThreadedPeak


@pytest.mark.usefixtures("shared_runtime")
def test_threaded_actor_runs_up_to_max_concurrency_calls_at_once():
    a = _threaded_peak_class(max_concurrency=3).remote()
    rtd.get(a.__ray_ready__.remote())
    rtd.get([a.work.remote("x", 0.2) for _ in range(9)], timeout=20)
    assert rtd.get(a.peaks.remote())["x"] == 3


@pytest.mark.usefixtures("shared_runtime")
def test_concurrency_groups_limit_each_group_separately():
    @rtd.remote(concurrency_groups={"io": 2, "compute": 1})
    class Grouped:
        def __init__(self):
            import threading

            self.lock = threading.Lock()
            self.active = {}
            self.peak = {}

        def _work(self, label, seconds):
            import time

            with self.lock:
                self.active[label] = self.active.get(label, 0) + 1
                self.peak[label] = max(self.peak.get(label, 0), self.active[label])
                self.peak["total"] = max(self.peak.get("total", 0), sum(self.active.values()))
            time.sleep(seconds)
            with self.lock:
                self.active[label] -= 1

        @rtd.method(concurrency_group="io")
        def io(self):
            self._work("io", 0.2)

        @rtd.method(concurrency_group="compute")
        def compute(self):
            self._work("compute", 0.2)

        def peaks(self):
            with self.lock:
                return dict(self.peak)

    g = Grouped.remote()
    rtd.get(g.__ray_ready__.remote())
    refs = [g.io.remote() for _ in range(6)] + [g.compute.remote() for _ in range(3)]
    rtd.get(refs, timeout=20)
    peaks = rtd.get(g.peaks.remote())
    assert peaks["io"] == 2
    assert peaks["compute"] == 1
    # Compute calls ran alongside io calls, not after them.
    assert peaks["total"] == 3


@pytest.mark.usefixtures("shared_runtime")
def test_concurrency_group_chosen_at_call_time_with_options():
    Peak = _threaded_peak_class(concurrency_groups={"io": 2})
    a = Peak.remote()
    rtd.get(a.__ray_ready__.remote())
    # The default group of an actor without max_concurrency runs one call at a time ...
    rtd.get([a.work.remote("default", 0.15) for _ in range(4)], timeout=20)
    # ... and the same method sent to the io group runs two at a time.
    io_work = a.work.options(concurrency_group="io")
    rtd.get([io_work.remote("io", 0.15) for _ in range(6)], timeout=20)
    peaks = rtd.get(a.peaks.remote())
    assert peaks["default"] == 1
    assert peaks["io"] == 2


@pytest.mark.usefixtures("shared_runtime")
def test_unknown_concurrency_group_raises_value_error():
    Peak = _threaded_peak_class(concurrency_groups={"io": 2})
    a = Peak.remote()
    with pytest.raises(ValueError, match="nope"):
        a.work.options(concurrency_group="nope")
    with pytest.raises(ValueError, match="missing"):

        @rtd.remote(concurrency_groups={"io": 1})
        class Bad:
            @rtd.method(concurrency_group="missing")
            def f(self):
                return 1


# --- named actors ----------------------------------------------------------------------


@pytest.mark.usefixtures("shared_runtime")
def test_named_actor_is_found_with_get_actor_and_shares_state():
    Counter = _counter_class()
    c = Counter.options(name="named-counter").remote()
    rtd.get(c.incr.remote())
    found = rtd.get_actor("named-counter")
    assert rtd.get(found.incr.remote()) == 2
    assert rtd.get(c.value.remote()) == 2
    assert rtd.get(found.pid.remote()) == rtd.get(c.pid.remote())


@pytest.mark.usefixtures("shared_runtime")
def test_named_actor_can_be_found_from_a_task():
    Counter = _counter_class()
    c = Counter.options(name="named-for-task").remote()

    @rtd.remote
    def incr_by_name():
        return rtd.get(rtd.get_actor("named-for-task").incr.remote())

    assert rtd.get(incr_by_name.remote()) == 1
    assert rtd.get(c.value.remote()) == 1


@pytest.mark.usefixtures("shared_runtime")
def test_get_actor_of_a_missing_name_raises_value_error():
    with pytest.raises(ValueError, match="missing-actor"):
        rtd.get_actor("missing-actor")


@pytest.mark.usefixtures("shared_runtime")
def test_second_actor_with_a_taken_name_raises_value_error():
    Counter = _counter_class()
    first = Counter.options(name="taken-name").remote(1)
    rtd.get(first.__ray_ready__.remote())
    with pytest.raises(ValueError, match="taken-name"):
        Counter.options(name="taken-name").remote(2)
    # The first keeps its name and its state.
    assert rtd.get(rtd.get_actor("taken-name").value.remote()) == 1


@pytest.mark.usefixtures("shared_runtime")
def test_get_if_exists_returns_the_existing_actor():
    Counter = _counter_class()
    first = Counter.options(name="get-or-create", get_if_exists=True).remote(100)
    assert rtd.get(first.incr.remote()) == 101
    second = Counter.options(name="get-or-create", get_if_exists=True).remote(0)
    assert rtd.get(second.incr.remote()) == 102
    assert rtd.get(first.pid.remote()) == rtd.get(second.pid.remote())


@pytest.mark.usefixtures("shared_runtime")
def test_get_if_exists_creates_the_actor_when_the_name_is_free():
    Counter = _counter_class()
    c = Counter.options(name="get-or-create-fresh", get_if_exists=True).remote(5)
    assert rtd.get(c.value.remote()) == 5
    assert rtd.get(rtd.get_actor("get-or-create-fresh").value.remote()) == 5


@pytest.mark.usefixtures("shared_runtime")
def test_named_actor_in_another_namespace_is_found_only_there():
    Counter = _counter_class()
    c = Counter.options(name="ns-counter", namespace="other-ns").remote(7)
    rtd.get(c.__ray_ready__.remote())
    with pytest.raises(ValueError):
        rtd.get_actor("ns-counter")
    found = rtd.get_actor("ns-counter", namespace="other-ns")
    assert rtd.get(found.value.remote()) == 7
    # The same name is free in the driver's own namespace.
    mine = Counter.options(name="ns-counter").remote(8)
    assert rtd.get(rtd.get_actor("ns-counter").value.remote()) == 8
    del mine


@pytest.mark.usefixtures("shared_runtime")
def test_name_of_a_killed_actor_can_be_reused():
    Counter = _counter_class()
    c = Counter.options(name="reused-name").remote(1)
    rtd.get(c.__ray_ready__.remote())
    rtd.kill(c)
    wait_for_condition(lambda: _raises(ValueError, rtd.get_actor, "reused-name"))
    again = Counter.options(name="reused-name").remote(2)
    assert rtd.get(rtd.get_actor("reused-name").value.remote()) == 2
    del again


@pytest.mark.usefixtures("shared_runtime")
def test_dropping_a_handle_from_get_actor_does_not_kill_the_actor():
    Counter = _counter_class()
    c = Counter.options(name="borrowed-handle").remote()
    pid = rtd.get(c.pid.remote())
    found = rtd.get_actor("borrowed-handle")
    assert rtd.get(found.incr.remote()) == 1
    del found
    # A call goes through the same submitter queue a dropped last handle would: had
    # `del found` ended the actor, this call would fail, so no wait is needed before it.
    assert rtd.get(c.incr.remote()) == 2
    assert pid_alive(pid)


def _raises(error, fn, *args):
    try:
        fn(*args)
    except error:
        return True
    return False


# --- resources -------------------------------------------------------------------------


@pytest.mark.usefixtures("shared_runtime")
def test_default_actors_hold_no_cpu_once_running():
    wait_for_condition(lambda: _available_cpu() == 2.0)
    Counter = _counter_class()
    actors = [Counter.remote() for _ in range(3)]
    rtd.get([a.__ray_ready__.remote() for a in actors], timeout=30)
    wait_for_condition(lambda: _available_cpu() == 2.0)
    # A task can still use both CPUs while the three actors live.
    assert rtd.get([a.incr.remote() for a in actors]) == [1, 1, 1]


@pytest.mark.usefixtures("shared_runtime")
def test_actor_with_explicit_num_cpus_holds_them_for_its_life():
    wait_for_condition(lambda: _available_cpu() == 2.0)
    Counter = _counter_class(num_cpus=1)
    c = Counter.remote()
    rtd.get(c.__ray_ready__.remote())
    wait_for_condition(lambda: _available_cpu() == 1.0)
    # The GCS shrinks the actor's lease to what it holds while running before it reports
    # the actor alive, so 1.0 is the settled state, not a moment on the way to 2.0: it
    # stays while the actor works.
    assert rtd.get(c.incr.remote()) == 1
    assert _available_cpu() == 1.0
    rtd.kill(c)
    wait_for_condition(lambda: _available_cpu() == 2.0)


@pytest.mark.usefixtures("shared_runtime")
def test_actor_needing_more_cpus_than_exist_stays_pending():
    Counter = _counter_class(num_cpus=3)
    c = Counter.remote()
    ready, _ = rtd.wait([c.__ray_ready__.remote()], timeout=1.0)
    assert ready == []
    rtd.kill(c)


# --- bad input -------------------------------------------------------------------------


@pytest.mark.usefixtures("shared_runtime")
def test_calling_an_actor_method_directly_raises_type_error():
    Counter = _counter_class()
    c = Counter.remote()
    with pytest.raises(TypeError, match=r"\.remote\(\)"):
        c.incr()


def test_instantiating_an_actor_class_directly_raises_type_error():
    Counter = _counter_class()
    with pytest.raises(TypeError, match=r"\.remote\(\)"):
        Counter()


@pytest.mark.usefixtures("shared_runtime")
def test_unknown_method_raises_attribute_error_naming_the_class():
    Counter = _counter_class()
    c = Counter.remote()
    with pytest.raises(AttributeError, match="Counter") as info:
        c.no_such_method.remote()
    assert "no_such_method" in str(info.value)


@pytest.mark.usefixtures("shared_runtime")
def test_constructor_error_reraises_on_calls_as_actor_died_error():
    @rtd.remote
    class Broken:
        def __init__(self):
            raise ZeroDivisionError("constructor exploded")

        def f(self):
            return 1

    b = Broken.remote()
    with pytest.raises(rtd.exceptions.ActorDiedError, match="constructor exploded"):
        rtd.get(b.f.remote(), timeout=20)
    with pytest.raises(rtd.exceptions.RayActorError, match="constructor exploded"):
        rtd.get(b.__ray_ready__.remote(), timeout=20)
    # Every later call fails the same way.
    with pytest.raises(rtd.exceptions.ActorDiedError, match="ZeroDivisionError"):
        rtd.get(b.f.remote(), timeout=20)


def _released_later():
    """A task ``when_released(value)`` that returns (or raises) ``value`` once the test
    sends the returned signal."""
    signal = SignalActor.remote()

    @rtd.remote(num_cpus=0)
    def when_released(value):
        rtd.get(signal.wait.remote())
        if isinstance(value, BaseException):
            raise value
        return value

    return when_released, signal


@pytest.mark.usefixtures("shared_runtime")
def test_creating_an_actor_does_not_wait_for_its_constructor_arguments():
    when_released, release = _released_later()
    Counter = _counter_class()
    start = when_released.remote(10)
    t0 = time.monotonic()
    counter = Counter.options(name="pending-args").remote(start)
    first = counter.incr.remote()
    assert time.monotonic() - t0 < 2.0, "Cls.remote() waited for its argument"
    # Registered at once: the name is taken while the argument is still computing.
    assert rtd.get_actor("pending-args")._actor_id == counter._actor_id
    ready, _ = rtd.wait([first], timeout=0.3)
    assert not ready, "a call ran before the constructor had its argument"
    rtd.get(release.send.remote())
    assert rtd.get(first, timeout=20) == 11
    assert rtd.get(counter.incr.remote(), timeout=20) == 12
    rtd.kill(counter)


@pytest.mark.usefixtures("shared_runtime")
def test_a_constructor_argument_that_fails_later_kills_the_actor_with_that_error():
    when_released, release = _released_later()
    Counter = _counter_class()
    counter = Counter.remote(when_released.remote(ZeroDivisionError("argument exploded")))
    call = counter.incr.remote()
    rtd.get(release.send.remote())
    with pytest.raises(rtd.exceptions.RayActorError, match="argument exploded"):
        rtd.get(call, timeout=20)


@pytest.mark.parametrize(
    "options, word",
    [
        ({"max_restarts": "x"}, "max_restarts"),
        ({"max_task_retries": 1.5}, "max_task_retries"),
        ({"lifetime": "forever"}, "lifetime"),
        ({"bogus_option": 1}, "bogus_option"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"num_returns": 2}, "num_returns"),
        ({"get_if_exists": True}, "name"),
        ({"num_cpus": -1}, "num_cpus"),
    ],
)
def test_bad_actor_options_raise_value_error(options, word):
    with pytest.raises(ValueError, match=word):
        _counter_class(**options)
    with pytest.raises(ValueError, match=word):
        _counter_class().options(**options)


def test_handle_used_after_shutdown_raises_a_clear_error():
    result = run_script(
        """
        import json, rtd
        rtd.init(num_cpus=1)

        @rtd.remote
        class Counter:
            def incr(self):
                return 1

        c = Counter.remote()
        assert rtd.get(c.incr.remote()) == 1
        rtd.shutdown()
        try:
            c.incr.remote()
            print(json.dumps(["no error"]))
        except Exception as e:
            print(json.dumps([type(e).__name__, str(e)]))
        """,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    name, *message = last_json_line(result.stdout)
    assert name != "no error"
    text = " ".join(message).lower()
    assert "init" in text or "shut down" in text or "shutdown" in text, (name, message)


# --- tests with their own runtime ------------------------------------------------------


def test_fractional_gpu_actors_share_one_gpu(start_runtime):
    start_runtime(num_cpus=2, num_gpus=1)

    @rtd.remote(num_gpus=0.5)
    class GpuUser:
        def visible(self):
            import os

            return os.environ.get("CUDA_VISIBLE_DEVICES"), rtd.get_gpu_ids()

    a, b = GpuUser.remote(), GpuUser.remote()
    (va, ia), (vb, ib) = rtd.get([a.visible.remote(), b.visible.remote()], timeout=30)
    assert va == vb == "0"
    assert list(ia) == list(ib) == [0]
    wait_for_condition(lambda: rtd.available_resources().get("GPU", 0.0) == 0.0)
    rtd.kill(a)
    wait_for_condition(lambda: rtd.available_resources().get("GPU", 0.0) == 0.5)


def test_gpu_actor_beyond_the_gpus_stays_pending(start_runtime):
    start_runtime(num_cpus=2, num_gpus=1)

    @rtd.remote(num_gpus=1)
    class GpuUser:
        def ok(self):
            return True

    a = GpuUser.remote()
    assert rtd.get(a.ok.remote(), timeout=30) is True
    b = GpuUser.remote()
    ready, _ = rtd.wait([b.ok.remote()], timeout=1.0)
    assert ready == []
    rtd.kill(a)
    assert rtd.get(b.ok.remote(), timeout=30) is True
