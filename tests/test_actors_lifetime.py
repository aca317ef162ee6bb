"""Actor lifetimes and failures: destruction when the last handle is gone, rtd.kill,
restarts (max_restarts / max_task_retries) and detached actors that outlive their driver."""

import os
import signal
import time

import pytest
import rtd
from conftest import (
    SignalActor,
    assert_session_gone,
    cli_head,
    last_json_line,
    pid_alive,
    rtd_cli,
    run_script,
    wait_for_condition,
)


def _worker_class(**options):
    """An actor that reports its pid, keeps a counter and can crash on request."""

    def define():
        class Worker:
            def __init__(self, start=0):
                self.n = start

            def incr(self):
                self.n += 1
                return self.n

            def pid(self):
                import os

                return os.getpid()

            def hold(self, signal, marker=None):
                """Runs until the test sends ``signal``; then writes ``marker``."""
                rtd.get(signal.wait.remote())
                if marker:
                    with open(marker, "w") as f:
                        f.write("done")
                return "released"

            def crash(self):
                import os

                os._exit(1)

            def crash_first_time(self, marker):
                """Crashes the incarnation that finds no marker; later ones succeed."""
                import os

                if not os.path.exists(marker):
                    with open(marker, "w") as f:
                        f.write("crashed")
                    os._exit(1)
                return "recovered", os.getpid()

        return Worker

    return rtd.remote(**options)(define()) if options else rtd.remote(define())


def _new_pid(handle, old_pid):
    """The actor's pid once a call succeeds on an incarnation other than ``old_pid``."""
    found = {}

    def check():
        found["pid"] = rtd.get(handle.pid.remote(), timeout=10)
        return found["pid"] != old_pid

    wait_for_condition(check, timeout=30)
    return found["pid"]


# --- destruction -----------------------------------------------------------------------


@pytest.mark.usefixtures("shared_runtime")
def test_actor_is_destroyed_when_its_last_handle_is_gone():
    Worker = _worker_class()
    w = Worker.remote()
    pid = rtd.get(w.pid.remote())
    assert pid_alive(pid)
    del w
    wait_for_condition(lambda: not pid_alive(pid), timeout=10)


@pytest.mark.usefixtures("shared_runtime")
def test_actor_finishes_pending_calls_before_it_is_destroyed(tmp_path):
    marker = str(tmp_path / "finished")
    Worker = _worker_class()
    w = Worker.remote()
    pid = rtd.get(w.pid.remote())
    signal = SignalActor.remote()
    ref = w.hold.remote(signal, marker)
    wait_for_condition(lambda: rtd.get(signal.cur_num_waiters.remote()) == 1)
    del w
    # The call cannot finish before the signal is sent, so it is still pending when the
    # last handle goes. Killing the actor under it would fail the call, making it ready:
    # `rtd.wait` answering not-ready for a while is the window in which that did not happen.
    ready, _ = rtd.wait([ref], timeout=0.5)
    assert ready == []
    assert pid_alive(pid)
    rtd.get(signal.send.remote())
    assert rtd.get(ref, timeout=10) == "released"
    assert os.path.exists(marker)
    wait_for_condition(lambda: not pid_alive(pid), timeout=10)


@pytest.mark.usefixtures("shared_runtime")
def test_actor_lives_while_a_copy_of_its_handle_is_held():
    Worker = _worker_class()
    w = Worker.remote()
    other = w
    pid = rtd.get(w.pid.remote())
    del w
    # A call goes through the same submitter queue a dropped last handle would: had
    # `del w` ended the actor, this call would fail, so no wait is needed before it.
    assert rtd.get(other.incr.remote()) == 1
    assert pid_alive(pid)
    del other
    wait_for_condition(lambda: not pid_alive(pid), timeout=10)


@pytest.mark.usefixtures("shared_runtime")
def test_actor_whose_handle_was_passed_to_a_task_is_not_destroyed_early():
    Worker = _worker_class()
    w = Worker.remote()

    @rtd.remote
    def use(handle):
        return rtd.get(handle.incr.remote())

    assert rtd.get(use.remote(w)) == 1
    pid = rtd.get(w.pid.remote())
    ref = use.remote(w)
    del w
    assert rtd.get(ref, timeout=10) == 2
    assert pid_alive(pid)


@pytest.mark.usefixtures("shared_runtime")
def test_kill_ends_the_actor_at_once_and_later_calls_raise_actor_error():
    Worker = _worker_class()
    w = Worker.remote()
    pid = rtd.get(w.pid.remote())
    signal = SignalActor.remote()
    in_flight = w.hold.remote(signal)
    queued = w.incr.remote()
    # The first call is running (blocked on the signal, never sent) and the second queued behind it.
    wait_for_condition(lambda: rtd.get(signal.cur_num_waiters.remote()) == 1)
    start = time.monotonic()
    rtd.kill(w, no_restart=True)
    wait_for_condition(lambda: not pid_alive(pid), timeout=5)
    with pytest.raises(rtd.exceptions.RayActorError):
        rtd.get(in_flight, timeout=10)
    with pytest.raises(rtd.exceptions.RayActorError):
        rtd.get(queued, timeout=10)
    assert time.monotonic() - start < 5
    with pytest.raises(rtd.exceptions.ActorDiedError, match="kill") as info:
        rtd.get(w.incr.remote(), timeout=10)
    assert isinstance(info.value, rtd.exceptions.RayActorError)


@pytest.mark.usefixtures("shared_runtime")
def test_kill_of_something_other_than_a_handle_raises_type_error():
    with pytest.raises(TypeError):
        rtd.kill("not an actor")


@pytest.mark.usefixtures("shared_runtime")
def test_kill_with_no_restart_false_restarts_the_actor():
    Worker = _worker_class(max_restarts=1)
    w = Worker.remote(10)
    assert rtd.get(w.incr.remote()) == 11
    pid = rtd.get(w.pid.remote())
    rtd.kill(w, no_restart=False)
    new_pid = _new_pid(w, pid)
    assert new_pid != pid
    assert rtd.get(w.incr.remote()) == 11


@pytest.mark.usefixtures("shared_runtime")
def test_kill_with_no_restart_overrides_max_restarts():
    Worker = _worker_class(max_restarts=-1)
    w = Worker.remote()
    pid = rtd.get(w.pid.remote())
    rtd.kill(w)
    wait_for_condition(lambda: not pid_alive(pid), timeout=5)
    with pytest.raises(rtd.exceptions.RayActorError):
        rtd.get(w.incr.remote(), timeout=10)


# --- restarts --------------------------------------------------------------------------


@pytest.mark.usefixtures("shared_runtime")
def test_crashed_actor_restarts_with_a_new_process_and_rebuilt_state():
    Worker = _worker_class(max_restarts=1)
    w = Worker.remote(100)
    assert rtd.get([w.incr.remote(), w.incr.remote()]) == [101, 102]
    pid = rtd.get(w.pid.remote())
    with pytest.raises(rtd.exceptions.RayActorError):
        rtd.get(w.crash.remote(), timeout=20)
    new_pid = _new_pid(w, pid)
    assert new_pid != pid
    assert not pid_alive(pid)
    # The constructor ran again with the original arguments.
    assert rtd.get(w.incr.remote(), timeout=20) == 101


@pytest.mark.usefixtures("shared_runtime")
def test_actor_killed_from_outside_restarts():
    Worker = _worker_class(max_restarts=1)
    w = Worker.remote()
    assert rtd.get(w.incr.remote()) == 1
    pid = rtd.get(w.pid.remote())
    os.kill(pid, signal.SIGKILL)
    new_pid = _new_pid(w, pid)
    assert new_pid != pid
    assert rtd.get(w.incr.remote(), timeout=20) == 1


@pytest.mark.usefixtures("shared_runtime")
def test_call_in_flight_at_a_crash_is_retried_with_max_task_retries(tmp_path):
    marker = str(tmp_path / "crashed-once")
    Worker = _worker_class(max_restarts=1, max_task_retries=1)
    w = Worker.remote()
    pid = rtd.get(w.pid.remote())
    status, retry_pid = rtd.get(w.crash_first_time.remote(marker), timeout=30)
    assert status == "recovered"
    assert retry_pid != pid
    assert os.path.exists(marker)


@pytest.mark.usefixtures("shared_runtime")
def test_calls_queued_behind_a_crash_are_retried_in_order(tmp_path):
    marker = str(tmp_path / "crashed-once")
    Worker = _worker_class(max_restarts=1, max_task_retries=1)
    w = Worker.remote()
    rtd.get(w.__ray_ready__.remote())
    crash_ref = w.crash_first_time.remote(marker)
    after = [w.incr.remote() for _ in range(3)]
    assert rtd.get(crash_ref, timeout=30)[0] == "recovered"
    assert rtd.get(after, timeout=30) == [1, 2, 3]


@pytest.mark.usefixtures("shared_runtime")
def test_call_in_flight_at_a_crash_fails_without_task_retries(tmp_path):
    marker = str(tmp_path / "crashed-once")
    Worker = _worker_class(max_restarts=1, max_task_retries=0)
    w = Worker.remote()
    pid = rtd.get(w.pid.remote())
    with pytest.raises(rtd.exceptions.RayActorError):
        rtd.get(w.crash_first_time.remote(marker), timeout=30)
    # The actor itself restarted; a new call succeeds.
    assert _new_pid(w, pid) != pid
    assert rtd.get(w.crash_first_time.remote(marker), timeout=20)[0] == "recovered"


@pytest.mark.usefixtures("shared_runtime")
def test_actor_without_restarts_left_fails_every_later_call_at_once():
    Worker = _worker_class(max_restarts=1)
    w = Worker.remote()
    pid = rtd.get(w.pid.remote())
    with pytest.raises(rtd.exceptions.RayActorError):
        rtd.get(w.crash.remote(), timeout=20)
    second_pid = _new_pid(w, pid)
    with pytest.raises(rtd.exceptions.RayActorError):
        rtd.get(w.crash.remote(), timeout=20)
    wait_for_condition(lambda: not pid_alive(second_pid), timeout=10)
    for _ in range(3):
        start = time.monotonic()
        with pytest.raises(rtd.exceptions.ActorDiedError, match="restarts"):
            rtd.get(w.incr.remote(), timeout=10)
        assert time.monotonic() - start < 2


@pytest.mark.usefixtures("shared_runtime")
def test_actor_without_max_restarts_is_dead_after_one_crash():
    Worker = _worker_class()
    w = Worker.remote()
    rtd.get(w.__ray_ready__.remote())
    with pytest.raises(rtd.exceptions.RayActorError):
        rtd.get(w.crash.remote(), timeout=20)
    with pytest.raises(rtd.exceptions.ActorDiedError):
        rtd.get(w.incr.remote(), timeout=10)


@pytest.mark.usefixtures("shared_runtime")
def test_infinite_max_restarts_restarts_repeatedly():
    Worker = _worker_class(max_restarts=-1)
    w = Worker.remote(5)
    pids = [rtd.get(w.pid.remote())]
    for _ in range(3):
        with pytest.raises(rtd.exceptions.RayActorError):
            rtd.get(w.crash.remote(), timeout=20)
        pids.append(_new_pid(w, pids[-1]))
        assert rtd.get(w.incr.remote(), timeout=20) == 6
    assert len(set(pids)) == 4


@pytest.mark.usefixtures("shared_runtime")
def test_restarted_named_actor_is_still_found_by_name():
    Worker = _worker_class(max_restarts=1)
    w = Worker.options(name="restarting-named").remote()
    pid = rtd.get(w.pid.remote())
    os.kill(pid, signal.SIGKILL)
    _new_pid(w, pid)
    found = rtd.get_actor("restarting-named")
    assert rtd.get(found.pid.remote(), timeout=20) != pid


# --- shutdown --------------------------------------------------------------------------


def test_actors_end_with_the_runtime_that_started_them(start_runtime):
    start_runtime(num_cpus=1)
    Worker = _worker_class()
    w = Worker.remote()
    pid = rtd.get(w.pid.remote())
    rtd.shutdown()
    wait_for_condition(lambda: not pid_alive(pid), timeout=10)


def test_actors_of_a_driver_end_when_the_driver_exits():
    result = run_script(
        """
        import json, os, rtd
        rtd.init(num_cpus=1)

        @rtd.remote
        class A:
            def pid(self):
                return os.getpid()

        a = A.remote()
        print(json.dumps([rtd.get(a.pid.remote())]))
        os._exit(0)  # no shutdown, no atexit hooks
        """,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    (pid,) = last_json_line(result.stdout)
    wait_for_condition(lambda: not pid_alive(pid), timeout=15)


# --- detached actors across drivers ----------------------------------------------------


@pytest.fixture
def cli_cluster():
    with cli_head("rtd-a-") as path:
        yield path


def test_detached_actor_outlives_its_driver_and_is_found_by_a_later_one(cli_cluster):
    temp_dir = cli_cluster
    session = os.path.realpath(os.path.join(temp_dir, "session_latest"))
    first = run_script(
        f"""
        import json, os, rtd
        rtd.init(address="auto", namespace="ns", _temp_dir={temp_dir!r})

        @rtd.remote
        class Counter:
            def __init__(self):
                self.n = 0

            def incr(self):
                self.n += 1
                return self.n

            def pid(self):
                return os.getpid()

        keeper = Counter.options(name="keeper", lifetime="detached").remote()
        transient = Counter.options(name="transient").remote()
        rtd.get([keeper.incr.remote() for _ in range(3)])
        rtd.get(transient.incr.remote())
        print(json.dumps([rtd.get(keeper.pid.remote()), rtd.get(transient.pid.remote())]))
        """,
        timeout=60,
    )
    assert first.returncode == 0, first.stderr
    keeper_pid, transient_pid = last_json_line(first.stdout)
    # The non-detached actor ends with its driver; the detached one lives on.
    wait_for_condition(lambda: not pid_alive(transient_pid), timeout=15)
    assert pid_alive(keeper_pid)

    second = run_script(
        f"""
        import json, time, rtd
        rtd.init(address="auto", namespace="ns", _temp_dir={temp_dir!r})
        keeper = rtd.get_actor("keeper")
        value = rtd.get(keeper.incr.remote(), timeout=20)
        pid = rtd.get(keeper.pid.remote(), timeout=20)
        try:
            rtd.get_actor("transient")
            transient = "found"
        except ValueError:
            transient = "ValueError"
        try:
            rtd.get_actor("keeper", namespace="another-ns")
            other_ns = "found"
        except ValueError:
            other_ns = "ValueError"
        print(json.dumps([value, pid, transient, other_ns]))
        """,
        timeout=60,
    )
    assert second.returncode == 0, second.stderr
    value, pid, transient, other_ns = last_json_line(second.stdout)
    assert value == 4
    assert pid == keeper_pid
    assert transient == "ValueError"
    assert other_ns == "ValueError"

    # A detached actor lasts until the cluster stops.
    assert pid_alive(keeper_pid)
    stopped = rtd_cli("stop", "--temp-dir", temp_dir)
    assert stopped.returncode == 0, stopped.stderr
    assert_session_gone(session, pids=[keeper_pid])


def test_detached_actor_can_be_killed_by_a_later_driver(cli_cluster):
    temp_dir = cli_cluster
    first = run_script(
        f"""
        import json, os, rtd
        rtd.init(address="auto", namespace="ns", _temp_dir={temp_dir!r})

        @rtd.remote(lifetime="detached", name="to-kill")
        class A:
            def pid(self):
                return os.getpid()

        print(json.dumps([rtd.get(A.remote().pid.remote())]))
        """,
        timeout=60,
    )
    assert first.returncode == 0, first.stderr
    (pid,) = last_json_line(first.stdout)
    assert pid_alive(pid)
    second = run_script(
        f"""
        import json, time, rtd
        rtd.init(address="auto", namespace="ns", _temp_dir={temp_dir!r})
        rtd.kill(rtd.get_actor("to-kill"))
        deadline = time.monotonic() + 10
        while True:
            try:
                rtd.get_actor("to-kill")
            except ValueError:
                print(json.dumps(["gone"]))
                break
            if time.monotonic() > deadline:
                print(json.dumps(["still there"]))
                break
            time.sleep(0.05)
        """,
        timeout=60,
    )
    assert second.returncode == 0, second.stderr
    assert last_json_line(second.stdout) == ["gone"]
    wait_for_condition(lambda: not pid_alive(pid), timeout=10)


def test_a_detached_actor_whose_creator_exits_before_its_arguments_are_ready_dies(cli_cluster):
    temp_dir = cli_cluster
    first = run_script(
        f"""
        import rtd
        rtd.init(address="auto", namespace="ns", _temp_dir={temp_dir!r})

        @rtd.remote(num_cpus=0)
        def never_ready():
            import time
            time.sleep(60)

        @rtd.remote
        class Holder:
            def __init__(self, value):
                self.value = value

        Holder.options(name="orphan", lifetime="detached").remote(never_ready.remote())
        rtd.get_actor("orphan")  # registered at once, still waiting for its argument
        print("created")
        """,
        timeout=60,
    )
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout

    def gone():
        second = run_script(
            f"""
            import rtd
            rtd.init(address="auto", namespace="ns", _temp_dir={temp_dir!r})
            try:
                rtd.get_actor("orphan")
                print("found")
            except ValueError:
                print("gone")
            """,
            timeout=60,
        )
        assert second.returncode == 0, second.stderr
        return "gone" in second.stdout

    # Nobody is left to supply the argument: the actor is dead and its name is free.
    wait_for_condition(gone, timeout=20)


# --- exit_actor ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_exit_actor_ends_the_actor_for_good(shared_runtime):
    @rtd.remote(max_restarts=2)
    class Quitter:
        def ping(self):
            return "pong"

        def quit(self):
            rtd.actor.exit_actor()
            return "not reached"

    quitter = Quitter.remote()
    assert rtd.get(quitter.ping.remote()) == "pong"
    with pytest.raises(rtd.exceptions.RayActorError, match="exit_actor"):
        rtd.get(quitter.quit.remote(), timeout=20)
    # Not restarted, though it had restarts left.
    with pytest.raises(rtd.exceptions.RayActorError, match="exit_actor"):
        rtd.get(quitter.ping.remote(), timeout=20)


def test_exit_actor_outside_an_actor_is_a_type_error(shared_runtime):
    with pytest.raises(TypeError, match="non-actor"):
        rtd.actor.exit_actor()


@pytest.mark.timeout(60)
def test_ray_terminate_ends_the_actor_after_earlier_calls(shared_runtime):
    @rtd.remote
    class Slow:
        def work(self, s):
            import time

            time.sleep(s)
            return s

    slow = Slow.remote()
    earlier = slow.work.remote(0.3)
    done = slow.__ray_terminate__.remote()
    assert rtd.get(earlier, timeout=20) == 0.3
    with pytest.raises(rtd.exceptions.RayActorError, match="__ray_terminate__"):
        rtd.get(done, timeout=20)
    with pytest.raises(rtd.exceptions.RayActorError):
        rtd.get(slow.work.remote(0), timeout=20)
