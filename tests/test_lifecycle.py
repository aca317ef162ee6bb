"""Runtime lifecycle: init, re-init, shutdown and what it cleans up, interpreter exit,
worker reuse and replacement."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from time import monotonic as time_monotonic

import pytest
import rtd
from conftest import (
    assert_session_gone,
    last_json_line,
    pid_alive,
    run_script,
    session_processes,
    shm_files,
    wait_for_condition,
    worker_pids_of_session,
)


def _worker_pids(n=2):
    """Pids of the processes that run ``n`` concurrent tasks."""

    @rtd.remote
    def pid_after(delay):
        import os
        import time

        time.sleep(delay)
        return os.getpid()

    return set(rtd.get([pid_after.remote(0.3) for _ in range(n)]))


def test_init_without_address_starts_a_local_daemon_and_is_usable(start_runtime):
    start_runtime()
    assert rtd.is_initialized()
    daemon = rtd.api._state.node_process
    assert daemon is not None and pid_alive(daemon.pid)
    session_dir = rtd.api._state.session_dir
    assert os.path.isdir(session_dir)
    assert shm_files(session_dir)

    @rtd.remote
    def add(a, b):
        return a + b

    assert rtd.get(add.remote(1, 2)) == 3
    assert rtd.get(rtd.put("hello")) == "hello"


def test_init_resource_arguments_are_reflected_in_cluster_resources(start_runtime):
    start_runtime(num_cpus=3, num_gpus=2, resources={"custom": 4, "half": 0.5}, object_store_memory=100 * 1024**2)
    total = rtd.cluster_resources()
    assert total["CPU"] == 3
    assert total["GPU"] == 2
    assert total["custom"] == 4
    assert total["half"] == 0.5
    assert total["object_store_memory"] == 100 * 1024**2


def test_init_twice_raises_runtime_error(start_runtime):
    start_runtime(num_cpus=1)
    with pytest.raises(RuntimeError, match="ignore_reinit_error"):
        rtd.init(num_cpus=1)
    assert rtd.is_initialized()


def test_init_with_ignore_reinit_error_keeps_the_running_runtime(start_runtime):
    start_runtime(num_cpus=1)
    daemon_pid = rtd.api._state.node_process.pid
    session_dir = rtd.api._state.session_dir
    rtd.init(num_cpus=2, ignore_reinit_error=True)
    assert rtd.is_initialized()
    assert rtd.api._state.node_process.pid == daemon_pid
    assert rtd.api._state.session_dir == session_dir
    assert rtd.cluster_resources()["CPU"] == 1
    assert rtd.get(rtd.put(7)) == 7


def test_shutdown_stops_the_daemon_and_every_worker(start_runtime):
    start_runtime(num_cpus=2)
    daemon_pid = rtd.api._state.node_process.pid
    session_dir = rtd.api._state.session_dir
    workers = _worker_pids(2)
    assert daemon_pid not in workers and os.getpid() not in workers
    assert all(pid_alive(p) for p in workers | {daemon_pid})
    rtd.shutdown()
    assert not rtd.is_initialized()
    wait_for_condition(lambda: not any(pid_alive(p) for p in workers | {daemon_pid}), timeout=10)
    assert session_processes(session_dir) == []


def test_shutdown_removes_the_session_dir_sockets_and_shared_memory_file(start_runtime):
    start_runtime(num_cpus=1)
    session_dir = rtd.api._state.session_dir
    sockets = os.path.join(session_dir, "sockets")
    assert os.path.exists(os.path.join(sockets, "raylet.sock"))
    assert shm_files(session_dir)
    rtd.shutdown()
    assert_session_gone(session_dir)
    assert not os.path.exists(sockets)


def test_init_after_shutdown_starts_a_new_usable_runtime(start_runtime):
    start_runtime(num_cpus=1)
    first_session = rtd.api._state.session_dir
    rtd.shutdown()
    rtd.init(num_cpus=2)
    assert rtd.api._state.session_dir != first_session
    assert rtd.cluster_resources()["CPU"] == 2

    @rtd.remote
    def one():
        return 1

    assert rtd.get(one.remote()) == 1


REPORT_AND_EXIT = """
    import json, os, sys, rtd
    rtd.init(num_cpus=2)

    @rtd.remote
    def pid(delay):
        import os, time
        time.sleep(delay)
        return os.getpid()

    workers = sorted(set(rtd.get([pid.remote(0.3) for _ in range(2)])))
    print(json.dumps({{"daemon": rtd.api._state.node_process.pid,
                      "session_dir": rtd.api._state.session_dir,
                      "workers": workers}}), flush=True)
    {exit}
"""


@pytest.mark.timeout(60)
def test_interpreter_exit_without_shutdown_leaves_nothing_behind():
    proc = run_script(REPORT_AND_EXIT.format(exit="sys.exit(0)"))
    assert proc.returncode == 0, proc.stderr
    info = last_json_line(proc.stdout)
    assert len(info["workers"]) >= 1
    assert_session_gone(info["session_dir"], [info["daemon"], *info["workers"]])


@pytest.mark.timeout(60)
def test_driver_killed_without_cleanup_leaves_nothing_behind():
    # os._exit skips atexit: only the daemon's watch on its driver can clean up.
    proc = run_script(REPORT_AND_EXIT.format(exit="os._exit(0)"))
    assert proc.returncode == 0, proc.stderr
    info = last_json_line(proc.stdout)
    assert_session_gone(info["session_dir"], [info["daemon"], *info["workers"]])


@pytest.mark.timeout(60)
def test_driver_killed_by_sigkill_leaves_nothing_behind(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(REPORT_AND_EXIT.format(exit="import time; time.sleep(60)")))
    env = dict(os.environ)
    env.pop("RTD_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        info = json.loads(line)
        assert all(pid_alive(p) for p in [info["daemon"], *info["workers"]])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert_session_gone(info["session_dir"], [info["daemon"], *info["workers"]])


def test_workers_are_reused_across_sequential_tasks(shared_runtime):
    @rtd.remote
    def pid():
        import os

        return os.getpid()

    pids = [rtd.get(pid.remote()) for _ in range(30)]
    assert os.getpid() not in pids
    # Sequential tasks of one shape run on one leased worker; at most the 2 pool workers.
    assert len(set(pids)) <= 2, pids


def test_workers_are_reused_across_parallel_batches(shared_runtime):
    first = _worker_pids(2)
    second = _worker_pids(2)
    assert first & second, (first, second)


def test_a_worker_that_dies_is_replaced(shared_runtime):
    @rtd.remote(max_retries=0)
    def die():
        os._exit(1)

    @rtd.remote
    def pid():
        import os

        return os.getpid()

    with pytest.raises(rtd.exceptions.WorkerCrashedError):
        rtd.get(die.remote())
    # Later tasks still run, on live workers, in parallel as before.
    pids = rtd.get([pid.remote() for _ in range(10)])
    assert all(pid_alive(p) for p in set(pids))
    # The replacement may still be starting on a busy machine.
    wait_for_condition(lambda: len(_worker_pids(2)) == 2, timeout=20)


def test_the_pool_refills_without_waiting_for_work_after_a_worker_or_actor_dies(start_runtime):
    start_runtime(num_cpus=2)
    session_dir = rtd.api._state.session_dir

    def task_workers():
        return worker_pids_of_session(session_dir)

    wait_for_condition(lambda: len(task_workers()) == 2, timeout=10)

    @rtd.remote(max_retries=0)
    def die():
        os._exit(1)

    with pytest.raises(rtd.exceptions.WorkerCrashedError):
        rtd.get(die.remote())
    # Nothing is submitted: the node starts the replacement on its own.
    wait_for_condition(lambda: len(task_workers()) == 2, timeout=10)

    @rtd.remote
    class Actor:
        def pid(self):
            return os.getpid()

    before = task_workers()
    actor = Actor.remote()
    actor_pid = rtd.get(actor.pid.remote())
    rtd.kill(actor)
    wait_for_condition(lambda: not pid_alive(actor_pid), timeout=10)
    # The actor took a pool worker; once it is gone the pool is back to its size.
    wait_for_condition(lambda: len(task_workers()) == 2 and actor_pid not in task_workers(), timeout=10)
    assert before != task_workers()


def test_shutdown_while_a_task_runs_stops_its_worker(start_runtime, tmp_path):
    start_runtime(num_cpus=2)
    session_dir = rtd.api._state.session_dir
    pid_file = tmp_path / "pid"

    @rtd.remote
    def long_running(path):
        import os
        import time

        with open(path, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(120)

    long_running.remote(str(pid_file))
    wait_for_condition(lambda: pid_file.exists() and pid_file.read_text() != "")
    worker = int(pid_file.read_text())
    assert pid_alive(worker)
    start = time_monotonic()
    rtd.shutdown()
    assert time_monotonic() - start < 10
    assert_session_gone(session_dir, [worker])


def test_shutdown_stops_extra_workers_started_for_blocked_tasks(start_runtime):
    start_runtime(num_cpus=1)
    session_dir = rtd.api._state.session_dir

    @rtd.remote
    def child():
        import os

        return os.getpid()

    @rtd.remote
    def parent():
        import os

        # Blocking in get releases this task's CPU, so the child needs another worker.
        return os.getpid(), rtd.get(child.remote())

    parent_pid, child_pid = rtd.get(parent.remote(), timeout=30)
    assert parent_pid != child_pid
    rtd.shutdown()
    assert_session_gone(session_dir, [parent_pid, child_pid])
