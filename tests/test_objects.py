"""Objects: put/get of small and large values, zero-copy numpy, pickle-5 buffers,
reference counting and spilling."""

import os
import pickle

import numpy as np
import pytest
import rtd
from conftest import SignalActor, shm_files, spilled_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MB = 1024**2


def _base_chain(array):
    chain = []
    obj = array
    while obj is not None and len(chain) < 20:
        chain.append(obj)
        obj = getattr(obj, "base", None) if not isinstance(obj, memoryview) else obj.obj
    return chain


# --- on the shared runtime -------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [0, -5, 3.25, "text", b"bytes", None, True, [1, "two", 3.0], {"a": [1, 2], "b": (3, 4)}, {1, 2, 3}],
    ids=lambda v: type(v).__name__,
)
def test_put_get_round_trips_small_values(shared_runtime, value):
    assert rtd.get(rtd.put(value)) == value


def test_put_get_round_trips_a_large_bytes_value(shared_runtime):
    data = bytes(range(256)) * (10 * MB // 256)
    assert rtd.get(rtd.put(data)) == data


def test_put_get_round_trips_a_custom_object(shared_runtime):
    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

    p = rtd.get(rtd.put(Point(1, 2)))
    assert (type(p).__name__, p.x, p.y) == ("Point", 1, 2)


def test_large_numpy_array_round_trips_equal(shared_runtime):
    array = np.random.default_rng(0).random(20 * MB // 8)
    out = rtd.get(rtd.put(array))
    assert out.dtype == array.dtype and out.shape == array.shape
    assert np.array_equal(out, array)


def test_numpy_array_from_the_store_is_read_only(shared_runtime):
    out = rtd.get(rtd.put(np.arange(20 * MB // 8, dtype=np.float64)))
    assert out.flags.writeable is False
    with pytest.raises(ValueError):
        out[0] = 1.0


def test_numpy_array_get_is_zero_copy_from_shared_memory(shared_runtime):
    ref = rtd.put(np.arange(20 * MB // 8, dtype=np.float64))
    first = rtd.get(ref)
    second = rtd.get(ref)
    assert first.__array_interface__["data"][0] == second.__array_interface__["data"][0]
    chain = _base_chain(first)
    assert any(isinstance(o, rtd._core.PlasmaBuffer) for o in chain), [type(o) for o in chain]


def test_numpy_array_returned_by_a_task_comes_back_zero_copy(shared_runtime):
    @rtd.remote
    def make(n):
        import numpy as np

        return np.full(n, 7, dtype=np.int64)

    out = rtd.get(make.remote(20 * MB // 8))
    assert out.shape == (20 * MB // 8,) and int(out[0]) == 7 and int(out[-1]) == 7
    assert out.flags.writeable is False
    assert any(isinstance(o, rtd._core.PlasmaBuffer) for o in _base_chain(out))


def test_numpy_array_passed_to_a_task_is_read_correctly(shared_runtime):
    @rtd.remote
    def total(a):
        return float(a.sum()), a.flags.writeable

    array = np.ones(20 * MB // 8)
    assert rtd.get(total.remote(rtd.put(array))) == (float(array.size), False)
    assert rtd.get(total.remote(array))[0] == float(array.size)


def test_pickle_buffer_round_trips(shared_runtime):
    data = bytearray(b"0123456789abcdef" * (4 * MB // 16))
    out = rtd.get(rtd.put(pickle.PickleBuffer(data)))
    assert bytes(memoryview(out)) == bytes(data)


def test_array_stays_valid_after_its_ref_is_dropped(shared_runtime):
    ref = rtd.put(np.arange(10 * MB // 8, dtype=np.int64))
    out = rtd.get(ref)
    del ref
    # Other puts must not reuse the memory a live view points at.
    others = [rtd.put(np.zeros(10 * MB // 8, dtype=np.int64)) for _ in range(3)]
    assert int(out[12345]) == 12345 and int(out[-1]) == out.size - 1
    del others


def test_object_ref_can_be_pickled_and_fetched_after_unpickling(shared_runtime):
    ref = rtd.put({"k": "v"})
    copy = pickle.loads(pickle.dumps(ref))
    assert copy == ref
    assert rtd.get(copy) == {"k": "v"}


def test_object_put_by_a_task_can_be_fetched_by_the_driver(shared_runtime):
    @rtd.remote
    def put_inside():
        import numpy as np

        return [rtd.put(np.arange(1000)), rtd.put("small")]

    big, small = rtd.get(put_inside.remote())
    assert np.array_equal(rtd.get(big), np.arange(1000))
    assert rtd.get(small) == "small"


def test_ref_nested_in_an_argument_stays_alive_after_the_driver_drops_it(shared_runtime):
    @rtd.remote
    def total_later(refs, signal):
        rtd.get(signal.wait.remote())
        return float(rtd.get(refs[0]).sum())

    signal = SignalActor.remote()
    inner = rtd.put(np.ones(MB // 8 * 4))
    out = total_later.remote([inner], signal)
    del inner
    # The task reads the ref only once the signal is sent, after the driver dropped it.
    rtd.get(signal.send.remote())
    assert rtd.get(out, timeout=20) == float(MB // 8 * 4)


def test_non_contiguous_numpy_view_round_trips(shared_runtime):
    base = np.arange(4 * MB // 8, dtype=np.int64).reshape(-1, 4)
    view = base[::3, 1::2]
    out = rtd.get(rtd.put(view))
    assert np.array_equal(out, view)


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=5)
    | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=5), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_values)
def test_put_get_round_trips_generated_values(shared_runtime, value):
    assert rtd.get(rtd.put(value)) == value


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_values)
def test_task_identity_round_trips_generated_values(shared_runtime, value):
    @rtd.remote
    def identity(x):
        return x

    assert rtd.get(identity.remote(value)) == value


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dtype=st.sampled_from(["int8", "int64", "float32", "float64", "complex128", "bool"]),
    shape=st.lists(st.integers(0, 40), min_size=0, max_size=3),
)
def test_numpy_arrays_of_any_dtype_and_shape_round_trip(shared_runtime, dtype, shape):
    array = (np.arange(int(np.prod(shape)) if shape else 1) % 7).astype(dtype).reshape(shape)
    out = rtd.get(rtd.put(array))
    assert out.dtype == array.dtype and out.shape == array.shape
    assert np.array_equal(out, array)


# --- own runtimes with a small store -----------------------------------------------------


@pytest.mark.timeout(90)
def test_dropped_objects_free_store_memory(start_runtime):
    start_runtime(num_cpus=2, object_store_memory=200 * MB)
    for i in range(30):
        ref = rtd.put(np.full(50 * MB // 8, i, dtype=np.int64))
        assert int(rtd.get(ref)[0]) == i
        del ref


@pytest.mark.timeout(90)
def test_task_outputs_dropped_right_away_free_store_memory(start_runtime):
    start_runtime(num_cpus=2, object_store_memory=200 * MB)

    @rtd.remote
    def make(i):
        import numpy as np

        return np.full(50 * MB // 8, i, dtype=np.int64)

    for i in range(12):
        assert int(rtd.get(make.remote(i))[-1]) == i


@pytest.mark.timeout(120)
def test_live_puts_beyond_store_capacity_are_spilled_and_restored(start_runtime):
    start_runtime(num_cpus=2, object_store_memory=200 * MB)
    refs = [rtd.put(np.full(40 * MB // 8, i, dtype=np.int64)) for i in range(12)]
    # The store did not grow to hold them: they went to disk.
    [shm] = shm_files(rtd.api._state.session_dir)
    assert os.stat(shm).st_size <= 210 * MB
    assert spilled_bytes(rtd.api._state.session_dir) >= 200 * MB
    for i, ref in enumerate(refs):
        out = rtd.get(ref)
        assert out.shape == (40 * MB // 8,)
        assert int(out[0]) == i and int(out[-1]) == i and int(out.sum()) == i * out.size
        del out


@pytest.mark.timeout(120)
def test_live_task_outputs_beyond_store_capacity_are_spilled_and_restored(start_runtime):
    start_runtime(num_cpus=2, object_store_memory=200 * MB)

    @rtd.remote
    def make(i):
        import numpy as np

        return np.full(40 * MB // 8, i, dtype=np.int64)

    refs = [make.remote(i) for i in range(12)]
    ready, _ = rtd.wait(refs, num_returns=len(refs), timeout=90)
    assert len(ready) == len(refs)
    for i, ref in enumerate(refs):
        out = rtd.get(ref)
        assert int(out[0]) == i and int(out[-1]) == i and int(out.sum()) == i * out.size
        del out


@pytest.mark.timeout(120)
def test_spilled_objects_can_be_task_arguments(start_runtime):
    start_runtime(num_cpus=2, object_store_memory=200 * MB)

    @rtd.remote
    def first_and_sum(a):
        return int(a[0]), int(a.sum())

    refs = [rtd.put(np.full(40 * MB // 8, i, dtype=np.int64)) for i in range(8)]
    results = rtd.get([first_and_sum.remote(r) for r in refs])
    n = 40 * MB // 8
    assert results == [(i, i * n) for i in range(8)]

