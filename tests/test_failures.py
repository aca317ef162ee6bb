"""System failures and retries: dying workers, max_retries, retry_exceptions."""

import os

import pytest
import rtd
from conftest import bump, read_counter

pytestmark = pytest.mark.usefixtures("shared_runtime")


def test_task_whose_worker_dies_is_retried_until_it_succeeds(counter_file):
    @rtd.remote(max_retries=3)
    def crash_twice(path):
        import os

        if bump(path) <= 2:
            os._exit(1)
        return "ok"

    assert rtd.get(crash_twice.remote(counter_file), timeout=60) == "ok"
    assert read_counter(counter_file) == 3


def test_task_whose_worker_dies_without_retries_raises_worker_crashed_error(counter_file):
    @rtd.remote(max_retries=0)
    def crash(path):
        import os

        bump(path)
        os._exit(1)

    with pytest.raises(rtd.exceptions.WorkerCrashedError):
        rtd.get(crash.remote(counter_file), timeout=60)
    assert read_counter(counter_file) == 1


def test_tasks_retry_system_failures_three_times_by_default(counter_file):
    @rtd.remote
    def always_crash(path):
        import os

        bump(path)
        os._exit(1)

    with pytest.raises(rtd.exceptions.WorkerCrashedError):
        rtd.get(always_crash.remote(counter_file), timeout=60)
    assert read_counter(counter_file) == 4


def test_options_max_retries_overrides_the_decorator(counter_file):
    @rtd.remote(max_retries=0)
    def crash_once(path):
        import os

        if bump(path) == 1:
            os._exit(1)
        return "recovered"

    assert rtd.get(crash_once.options(max_retries=1).remote(counter_file), timeout=60) == "recovered"


def test_application_errors_are_not_retried_by_default(counter_file):
    @rtd.remote(max_retries=3)
    def fail(path):
        bump(path)
        raise ValueError("app error")

    with pytest.raises(ValueError):
        rtd.get(fail.remote(counter_file), timeout=60)
    assert read_counter(counter_file) == 1


def test_retry_exceptions_true_retries_an_application_error_until_success(counter_file):
    @rtd.remote(max_retries=3, retry_exceptions=True)
    def flaky(path):
        n = bump(path)
        if n <= 2:
            raise RuntimeError(f"attempt {n} fails")
        return n

    assert rtd.get(flaky.remote(counter_file), timeout=60) == 3


def test_retry_exceptions_true_gives_up_after_max_retries(counter_file):
    @rtd.remote(max_retries=2, retry_exceptions=True)
    def always_fails(path):
        n = bump(path)
        raise RuntimeError(f"attempt {n} fails")

    with pytest.raises(RuntimeError, match="attempt 3 fails"):
        rtd.get(always_fails.remote(counter_file), timeout=60)
    assert read_counter(counter_file) == 3


def test_retry_exceptions_list_retries_a_listed_exception(counter_file):
    @rtd.remote(max_retries=3, retry_exceptions=[ValueError])
    def flaky(path):
        n = bump(path)
        if n == 1:
            raise ValueError("listed")
        return n

    assert rtd.get(flaky.remote(counter_file), timeout=60) == 2


def test_retry_exceptions_list_does_not_retry_an_unlisted_exception(counter_file):
    @rtd.remote(max_retries=3, retry_exceptions=[ValueError])
    def flaky(path):
        n = bump(path)
        if n == 1:
            raise KeyError("not listed")
        return n

    with pytest.raises(KeyError):
        rtd.get(flaky.remote(counter_file), timeout=60)
    assert read_counter(counter_file) == 1


def test_runtime_stays_usable_after_worker_crashes():
    @rtd.remote(max_retries=0)
    def crash():
        os._exit(3)

    @rtd.remote
    def square(x):
        return x * x

    crashed = [crash.remote() for _ in range(3)]
    for ref in crashed:
        with pytest.raises(rtd.exceptions.WorkerCrashedError):
            rtd.get(ref, timeout=60)
    assert rtd.get([square.remote(i) for i in range(6)], timeout=60) == [i * i for i in range(6)]
