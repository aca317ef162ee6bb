"""Reference counting across processes (the borrower protocol): refs nested in task
arguments, in task results and in `put` values keep their objects alive exactly as long
as some process can still use them, and no longer."""

import pickle

import numpy as np
import pytest
import rtd
from conftest import spilled_bytes, wait_for_condition

MB = 1024**2


def _counts(ref):
    """This process's counts for `ref`, or None when it no longer knows the object."""
    return rtd._core.get_all_reference_counts().get(ref.hex())


def _known_here(hex_id):
    return hex_id in rtd._core.get_all_reference_counts()


@rtd.remote
class Holder:
    """Keeps refs it is given (nested, so they arrive as refs) until told to drop them."""

    def __init__(self):
        self.refs = []

    def hold(self, refs):
        self.refs.extend(refs)
        return len(self.refs)

    def total(self):
        return float(sum(np.sum(rtd.get(r)) for r in self.refs))

    def forget(self):
        self.refs = []

    def make(self, n):
        """Puts an object it owns and returns a ref to it inside a list."""
        return [rtd.put(np.full(n, 7, dtype=np.int64))]

    def knows(self, hex_id):
        return hex_id in rtd._core.get_all_reference_counts()


# --- on the shared runtime -------------------------------------------------------------


@pytest.mark.timeout(60)
def test_nested_argument_is_freed_once_the_task_is_done(shared_runtime):
    @rtd.remote
    def total(refs):
        return float(sum(np.sum(rtd.get(r)) for r in refs))

    inner = rtd.put(np.ones(1000))
    hex_id = inner.hex()
    assert rtd.get(total.remote([inner])) == 1000.0
    del inner
    wait_for_condition(lambda: not _known_here(hex_id), timeout=10)


@pytest.mark.timeout(60)
def test_actor_holding_a_nested_ref_keeps_the_object_until_it_lets_go(shared_runtime):
    holder = Holder.remote()
    inner = rtd.put(np.arange(100))
    hex_id = inner.hex()
    assert rtd.get(holder.hold.remote([inner])) == 1
    del inner
    # The driver has no ref left, but the actor borrows the object.
    counts = rtd._core.get_all_reference_counts()[hex_id]
    assert counts["local"] == 0 and sum(counts["borrowers"].values()) == 1, counts
    assert rtd.get(holder.total.remote()) == float(sum(range(100)))
    rtd.get(holder.forget.remote())
    wait_for_condition(lambda: not _known_here(hex_id), timeout=10)


@pytest.mark.timeout(60)
def test_borrower_that_dies_gives_its_refs_back(shared_runtime):
    holder = Holder.remote()
    inner = rtd.put("kept by the actor")
    hex_id = inner.hex()
    rtd.get(holder.hold.remote([inner]))
    del inner
    assert _known_here(hex_id)
    rtd.kill(holder)
    wait_for_condition(lambda: not _known_here(hex_id), timeout=10)


@pytest.mark.timeout(60)
def test_ref_returned_by_an_actor_that_owns_it_lives_until_the_driver_drops_it(shared_runtime):
    holder = Holder.remote()
    [made] = rtd.get(holder.make.remote(1000))
    hex_id = made.hex()
    # The actor dropped its own ref when the method returned; the driver's keeps it.
    assert _counts(made)["owned"] is False
    assert int(rtd.get(made).sum()) == 7000
    assert rtd.get(holder.knows.remote(hex_id))
    del made
    wait_for_condition(lambda: not rtd.get(holder.knows.remote(hex_id)), timeout=10)


@pytest.mark.timeout(60)
def test_borrowed_ref_returned_to_its_owner_stays_alive(shared_runtime):
    @rtd.remote
    def pass_back(refs):
        return [refs[0]]

    inner = rtd.put({"v": 1})
    hex_id = inner.hex()
    outer = pass_back.remote([inner])
    del inner
    [again] = rtd.get(outer)
    assert rtd.get(again) == {"v": 1}
    del outer
    assert rtd.get(again) == {"v": 1}
    del again
    wait_for_condition(lambda: not _known_here(hex_id), timeout=10)


@pytest.mark.timeout(60)
def test_put_value_holds_the_refs_inside_it(shared_runtime):
    inner = rtd.put(np.arange(10))
    hex_id = inner.hex()
    outer = rtd.put({"inner": inner})
    del inner
    assert _known_here(hex_id)
    assert rtd._core.get_all_reference_counts()[hex_id]["contained_in"] == 1

    @rtd.remote
    def read(box):
        return int(rtd.get(box["inner"]).sum())

    assert rtd.get(read.remote(outer)) == 45
    del outer
    wait_for_condition(lambda: not _known_here(hex_id), timeout=10)


@pytest.mark.timeout(60)
def test_ref_pickled_outside_rtd_pins_its_object(shared_runtime):
    inner = rtd.put("pinned")
    hex_id = inner.hex()
    blob = pickle.dumps(inner)
    del inner
    assert rtd._core.get_all_reference_counts()[hex_id]["pinned_forever"] is True
    assert rtd.get(pickle.loads(blob)) == "pinned"


@pytest.mark.timeout(60)
def test_ref_passed_down_a_chain_of_tasks_stays_alive_until_the_last_is_done(shared_runtime):
    @rtd.remote
    def leaf(refs):
        return float(np.sum(rtd.get(refs[0])))

    @rtd.remote
    def middle(refs):
        return rtd.get(leaf.remote(refs))

    inner = rtd.put(np.ones(500))
    hex_id = inner.hex()
    out = middle.remote([inner])
    del inner
    assert rtd.get(out) == 500.0
    wait_for_condition(lambda: not _known_here(hex_id), timeout=10)


@pytest.mark.timeout(60)
def test_threaded_actor_keeps_refs_unpickled_by_concurrent_calls(shared_runtime):
    @rtd.remote(max_concurrency=8)
    class Keeper:
        def __init__(self):
            import threading

            self.refs = []
            self.lock = threading.Lock()

        def keep(self, refs):
            with self.lock:
                self.refs.extend(refs)

        def read_all(self):
            return sorted(rtd.get(self.refs, timeout=10))

    keeper = Keeper.remote()
    calls = []
    for i in range(60):
        ref = rtd.put(i)
        calls.append(keeper.keep.remote([ref]))
        del ref
    rtd.get(calls, timeout=30)
    # Every call's borrow was counted before its reply, so nothing was freed early.
    assert rtd.get(keeper.read_all.remote(), timeout=30) == list(range(60))


@pytest.mark.timeout(60)
def test_constructor_arguments_are_released_when_the_actor_is_dead_for_good(shared_runtime):
    @rtd.remote
    class Built:
        def __init__(self, top, nested):
            self.value = top + rtd.get(nested[0])

        def value_of(self):
            return self.value

    top, inner = rtd.put(1), rtd.put(2)
    ids = [top.hex(), inner.hex()]
    actor = Built.remote(top, [inner])
    del top, inner
    assert rtd.get(actor.value_of.remote()) == 3
    # Kept while the actor might restart and need them again.
    assert all(_known_here(i) for i in ids)
    rtd.kill(actor)
    wait_for_condition(lambda: not any(_known_here(i) for i in ids), timeout=10)


@pytest.mark.timeout(60)
def test_arguments_of_an_actor_found_by_get_if_exists_are_not_kept(shared_runtime):
    @rtd.remote
    class Named:
        def __init__(self, refs):
            pass

    first = Named.options(name="borrow-named", get_if_exists=True).remote([rtd.put("a")])
    extra = rtd.put("b")
    hex_id = extra.hex()
    second = Named.options(name="borrow-named", get_if_exists=True).remote([extra])
    del extra
    wait_for_condition(lambda: not _known_here(hex_id), timeout=10)
    rtd.kill(first)
    del second


# --- own runtimes with a small store -----------------------------------------------------


@pytest.mark.timeout(120)
def test_large_objects_passed_nested_pass_through_a_small_store_without_spilling(start_runtime):
    start_runtime(num_cpus=2, object_store_memory=200 * MB)

    @rtd.remote
    def first_value(refs):
        return int(rtd.get(refs[0])[0])

    for i in range(12):
        ref = rtd.put(np.full(50 * MB // 8, i, dtype=np.int64))
        assert rtd.get(first_value.remote([ref])) == i
        del ref
    assert spilled_bytes(rtd.api._state.session_dir) == 0


@pytest.mark.timeout(120)
def test_large_objects_returned_nested_pass_through_a_small_store_without_spilling(start_runtime):
    start_runtime(num_cpus=2, object_store_memory=200 * MB)

    @rtd.remote
    def make(i):
        return [rtd.put(np.full(50 * MB // 8, i, dtype=np.int64))]

    for i in range(12):
        [ref] = rtd.get(make.remote(i))
        assert int(rtd.get(ref)[-1]) == i
        del ref
    assert spilled_bytes(rtd.api._state.session_dir) == 0
