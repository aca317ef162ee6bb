"""Application errors raised in tasks: their types and text at ``get``."""

import pytest
import rtd

pytestmark = pytest.mark.usefixtures("shared_runtime")


def _make_failing():
    @rtd.remote
    def failing_function(x):
        if x > 0:
            raise ValueError(f"bad value {x}")  # the raise line
        return x

    return failing_function


def test_task_error_is_both_ray_task_error_and_the_user_exception_type():
    failing = _make_failing()
    with pytest.raises(rtd.exceptions.RayTaskError) as info:
        rtd.get(failing.remote(3))
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, rtd.exceptions.RayError)


def test_task_error_can_be_caught_with_the_user_exception_type():
    failing = _make_failing()
    with pytest.raises(ValueError, match="bad value 5"):
        rtd.get(failing.remote(5))


def test_task_error_text_contains_the_remote_traceback():
    failing = _make_failing()
    with pytest.raises(ValueError) as info:
        rtd.get(failing.remote(1))
    text = str(info.value)
    assert "failing_function" in text
    assert 'raise ValueError(f"bad value {x}")  # the raise line' in text
    assert "Traceback" in text
    assert "bad value 1" in text


def test_task_error_keeps_the_cause_and_its_attributes():
    class CustomError(Exception):
        def __init__(self, message, code=0):
            super().__init__(message)
            self.code = code

    @rtd.remote
    def raise_custom():
        raise CustomError("custom failure", code=17)

    with pytest.raises(rtd.exceptions.RayTaskError) as info:
        rtd.get(raise_custom.remote())
    assert isinstance(info.value, CustomError)
    assert isinstance(info.value.cause, CustomError)
    assert info.value.cause.code == 17


def test_task_error_propagates_through_a_dependent_task():
    failing = _make_failing()

    @rtd.remote
    def consumer(value):
        return ("never ran", value)

    with pytest.raises(rtd.exceptions.RayTaskError) as info:
        rtd.get(consumer.remote(failing.remote(2)))
    assert isinstance(info.value, ValueError)
    assert "bad value 2" in str(info.value)


def test_task_error_propagates_through_a_chain_of_dependent_tasks():
    failing = _make_failing()

    @rtd.remote
    def consumer(value):
        return value

    ref = failing.remote(4)
    for _ in range(3):
        ref = consumer.remote(ref)
    with pytest.raises(ValueError, match="bad value 4"):
        rtd.get(ref)


def test_get_of_a_list_raises_the_first_error_and_the_runtime_stays_usable():
    failing = _make_failing()
    with pytest.raises(ValueError):
        rtd.get([failing.remote(0), failing.remote(9)])
    assert rtd.get(failing.remote(0)) == 0


def test_error_inside_a_nested_task_reaches_the_driver():
    failing = _make_failing()

    @rtd.remote
    def parent():
        return rtd.get(failing.remote(8))

    with pytest.raises(rtd.exceptions.RayTaskError) as info:
        rtd.get(parent.remote())
    assert isinstance(info.value, ValueError)
    assert "bad value 8" in str(info.value)
