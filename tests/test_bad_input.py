"""Wrong use of the API gives Ray's errors, and leaves nothing behind."""

import threading

import pytest
import rtd
from conftest import assert_session_gone, last_json_line, run_script


def _square():
    @rtd.remote
    def square(x):
        return x * x

    return square


def test_calling_a_remote_function_directly_raises_type_error():
    square = _square()
    with pytest.raises(TypeError, match=r"\.remote\(\)"):
        square(3)


def test_unknown_option_in_the_decorator_raises_value_error_naming_it():
    with pytest.raises(ValueError, match="bogus_option"):

        @rtd.remote(bogus_option=1)
        def f():
            return 1


def test_unknown_option_in_options_raises_value_error_naming_it():
    with pytest.raises(ValueError, match="not_an_option"):
        _square().options(not_an_option=True)


def test_negative_num_cpus_raises_value_error():
    with pytest.raises(ValueError, match="num_cpus"):
        _square().options(num_cpus=-1)


def test_non_integer_num_returns_raises_value_error():
    with pytest.raises(ValueError, match="num_returns"):
        _square().options(num_returns="x")


def test_bad_init_arguments_raise_value_error():
    with pytest.raises(ValueError, match="num_cpus"):
        rtd.init(num_cpus=-1)
    assert not rtd.is_initialized()


def test_unpicklable_argument_raises_type_error_naming_the_type(shared_runtime):
    square = _square()
    with pytest.raises(TypeError, match="lock"):
        square.remote(threading.Lock())
    # The runtime is unaffected.
    assert rtd.get(square.remote(4)) == 16


def test_put_of_an_unpicklable_value_raises_type_error_naming_the_type(shared_runtime):
    with pytest.raises(TypeError, match="lock"):
        rtd.put(threading.Lock())


def test_get_of_a_non_ref_raises_type_error(shared_runtime):
    with pytest.raises(TypeError):
        rtd.get(1)
    with pytest.raises(TypeError):
        rtd.get([rtd.put(1), 2])


def test_put_of_an_object_ref_raises_type_error(shared_runtime):
    with pytest.raises(TypeError):
        rtd.put(rtd.put(1))


def test_wait_with_bad_arguments_raises(shared_runtime):
    ref = rtd.put(1)
    with pytest.raises(TypeError):
        rtd.wait(ref)
    with pytest.raises(ValueError):
        rtd.wait([ref, ref])
    with pytest.raises(ValueError):
        rtd.wait([ref], num_returns=2)


def test_get_with_negative_timeout_raises_value_error(shared_runtime):
    with pytest.raises(ValueError):
        rtd.get(rtd.put(1), timeout=-1)


@pytest.mark.parametrize("timeout", [float("inf"), 1e20, 1e300, 2.0**64])
def test_get_and_wait_with_huge_timeouts_wait_as_long_as_needed(shared_runtime, timeout):
    ref = _square().remote(3)
    assert rtd.get(ref, timeout=timeout) == 9
    assert rtd.wait([ref], timeout=timeout) == ([ref], [])


def test_get_and_wait_with_nan_timeout_raise_value_error(shared_runtime):
    ref = rtd.put(1)
    with pytest.raises(ValueError, match="timeout"):
        rtd.get(ref, timeout=float("nan"))
    with pytest.raises(ValueError, match="timeout"):
        rtd.wait([ref], timeout=float("nan"))


def test_placement_group_wait_takes_any_timeout(shared_runtime):
    pg = rtd.util.placement_group([{"CPU": 1}])
    try:
        assert pg.wait(float("inf")) is True
        assert pg.wait(1e20) is True
        with pytest.raises(ValueError, match="timeout"):
            pg.wait(float("nan"))
        with pytest.raises(ValueError, match="timeout"):
            pg.wait(-1)
    finally:
        rtd.util.remove_placement_group(pg)


@pytest.mark.parametrize("node_id", ["zz", "abc", "00" * 27, "00" * 29, "", 123, None])
def test_node_affinity_to_a_malformed_node_id_raises_value_error(shared_runtime, node_id):
    from rtd.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    strategy = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
    with pytest.raises(ValueError, match="node_id"):
        _square().options(scheduling_strategy=strategy).remote(2)

    @rtd.remote
    class Actor:
        pass

    with pytest.raises(ValueError, match="node_id"):
        Actor.options(scheduling_strategy=strategy).remote()


def test_a_resource_whose_name_contains_group_is_an_ordinary_resource(start_runtime):
    start_runtime(num_cpus=1, resources={"my_group_x": 2, "team_group_1": 1})
    square = _square()
    assert rtd.get(square.options(resources={"my_group_x": 1}).remote(4), timeout=30) == 16
    assert rtd.get(square.options(resources={"team_group_1": 1}).remote(5), timeout=30) == 25


def test_cancel_of_a_non_ref_raises_type_error(shared_runtime):
    with pytest.raises(TypeError):
        rtd.cancel("not a ref")


def test_api_before_init_auto_initializes():
    proc = run_script(
        """
        import json, rtd
        assert not rtd.is_initialized()
        ref = rtd.put(1)
        print(json.dumps({"value": rtd.get(ref), "initialized": rtd.is_initialized(),
                          "session_dir": rtd.api._state.session_dir,
                          "daemon": rtd.api._state.node_process.pid}))
        """
    )
    assert proc.returncode == 0, proc.stderr
    info = last_json_line(proc.stdout)
    assert info["value"] == 1 and info["initialized"] is True
    assert_session_gone(info["session_dir"], [info["daemon"]])


def test_bad_input_leaves_no_processes_behind():
    proc = run_script(
        """
        import json, threading, rtd

        @rtd.remote
        def square(x):
            return x * x

        errors = []
        for bad in (lambda: square(1), lambda: square.options(nope=1),
                    lambda: square.options(num_cpus=-1), lambda: square.options(num_returns="x")):
            try:
                bad()
            except (TypeError, ValueError) as e:
                errors.append(type(e).__name__)
        validated_without_runtime = not rtd.is_initialized()
        for bad in (lambda: square.remote(threading.Lock()), lambda: rtd.get(1)):
            try:
                bad()
            except TypeError as e:
                errors.append(type(e).__name__)

        @rtd.remote
        def pid():
            import os
            return os.getpid()

        print(json.dumps({"errors": errors, "validated_without_runtime": validated_without_runtime,
                          "session_dir": rtd.api._state.session_dir,
                          "pids": [rtd.api._state.node_process.pid, rtd.get(pid.remote())]}))
        """
    )
    assert proc.returncode == 0, proc.stderr
    info = last_json_line(proc.stdout)
    assert info["errors"] == ["TypeError", "ValueError", "ValueError", "ValueError", "TypeError", "TypeError"]
    assert info["validated_without_runtime"] is True
    assert_session_gone(info["session_dir"], info["pids"])
