"""Workers forked from the node's worker template (``rtd._private.worker_template``):
they start from a pre-imported interpreter, fall back to a fresh one when the template
is disabled or gone, and leave nothing behind when the node stops or dies."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import rtd
from conftest import (
    assert_session_gone,
    parent_pid,
    pid_alive,
    session_processes,
    wait_for_condition,
    worker_template_pids,
)


@rtd.remote
class Probe:
    def pids(self):
        return os.getpid(), os.getppid()


def _forked_actor(template):
    """An actor whose worker the template forked (the first workers of a node may start
    fresh while the template imports): (handle, pid), or None if this one was spawned."""
    actor = Probe.remote()
    pid, ppid = rtd.get(actor.pids.remote(), timeout=30)
    if ppid == template:
        return actor, pid
    rtd.kill(actor)
    return None


def _wait_for_forked_actor(session_dir, timeout=30):
    found = {}

    def forked():
        templates = worker_template_pids(session_dir)
        if len(templates) != 1:
            return False
        got = _forked_actor(templates[0])
        if got:
            found["template"], (found["actor"], found["pid"]) = templates[0], got
        return bool(got)

    wait_for_condition(forked, timeout=timeout)
    return found["template"], found["actor"], found["pid"]


@pytest.mark.timeout(90)
def test_actor_workers_are_forked_from_the_template(start_runtime):
    start_runtime(num_cpus=2)
    session_dir = rtd.api._state.session_dir
    daemon = rtd.api._state.node_process.pid
    template, _, _ = _wait_for_forked_actor(session_dir)
    assert parent_pid(template) == daemon
    # Many at once: every one answers. Actors first take the idle pool's workers (up to
    # num_cpus of them, possibly started fresh); the template forks all the others.
    actors = [Probe.remote() for _ in range(10)]
    answers = rtd.get([a.pids.remote() for a in actors], timeout=60)
    assert len({pid for pid, _ in answers}) == 10
    parents = [ppid for _, ppid in answers]
    assert set(parents) <= {template, daemon}
    assert parents.count(template) >= 10 - 2, parents


@pytest.mark.timeout(90)
def test_rtd_worker_fork_0_starts_every_worker_fresh(start_runtime, monkeypatch):
    monkeypatch.setenv("RTD_WORKER_FORK", "0")
    start_runtime(num_cpus=2)
    session_dir = rtd.api._state.session_dir
    daemon = rtd.api._state.node_process.pid
    actors = [Probe.remote() for _ in range(5)]
    answers = rtd.get([a.pids.remote() for a in actors], timeout=60)
    assert {ppid for _, ppid in answers} == {daemon}
    assert worker_template_pids(session_dir) == []


@pytest.mark.timeout(120)
def test_a_killed_template_is_replaced_and_workers_keep_starting(start_runtime):
    start_runtime(num_cpus=2)
    session_dir = rtd.api._state.session_dir
    old_template, actor, actor_pid = _wait_for_forked_actor(session_dir)
    os.kill(old_template, signal.SIGKILL)
    wait_for_condition(lambda: not pid_alive(old_template), timeout=10)
    # Its workers do not depend on it.
    assert rtd.get(actor.pids.remote(), timeout=30)[0] == actor_pid
    # Workers start meanwhile (fresh), and a new template takes over.
    more = [Probe.remote() for _ in range(3)]
    assert len(rtd.get([a.pids.remote() for a in more], timeout=60)) == 3
    new_template, _, _ = _wait_for_forked_actor(session_dir, timeout=60)
    assert new_template != old_template


@pytest.mark.timeout(90)
def test_shutdown_stops_the_template_and_its_workers(start_runtime):
    start_runtime(num_cpus=2)
    session_dir = rtd.api._state.session_dir
    daemon = rtd.api._state.node_process.pid
    template, _, actor_pid = _wait_for_forked_actor(session_dir)
    rtd.shutdown()
    assert_session_gone(session_dir, [daemon, template, actor_pid])


_REPORT_AND_WAIT = """
import json, os, time, rtd
rtd.init(num_cpus=2)
from conftest import worker_template_pids

@rtd.remote
class Probe:
    def pids(self):
        return os.getpid(), os.getppid()

session_dir = rtd.api._state.session_dir
actors = []  # kept alive: a dropped actor handle ends its worker
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    templates = worker_template_pids(session_dir)
    actors.append(Probe.remote())
    pid, ppid = rtd.get(actors[-1].pids.remote())
    if templates and ppid == templates[0]:
        break
print(json.dumps({"daemon": rtd.api._state.node_process.pid, "session_dir": session_dir,
                  "template": ppid, "worker": pid}), flush=True)
time.sleep(60)
"""


@pytest.mark.timeout(90)
def test_a_killed_daemon_takes_the_template_and_forked_workers_with_it(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(_REPORT_AND_WAIT))
    env = dict(os.environ)
    env.pop("RTD_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        info = json.loads(proc.stdout.readline())
        assert info["template"] in worker_template_pids(info["session_dir"])
        assert info["worker"] in session_processes(info["session_dir"])
        os.kill(info["daemon"], signal.SIGKILL)
        # The session's files stay for the next start to clean; its processes must end.
        pids = [info["daemon"], info["template"], info["worker"]]
        wait_for_condition(
            lambda: not any(pid_alive(p) for p in pids) and not session_processes(info["session_dir"]), timeout=10
        )
    finally:
        proc.kill()
        proc.wait()
