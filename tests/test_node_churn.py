"""Nodes leaving and joining while tasks run: nothing is lost, and a node that died
leaves nothing that blocks the next one.

The churn scenario itself lives in ``benches/node_churn.py`` (its full size is the soak);
these tests run it scaled down, as a separate driver process.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
from conftest import shm_files
from rtd._private.services import spawn_node

CHURN = os.path.join(os.path.dirname(__file__), "..", "benches", "node_churn.py")


def _churn(*args):
    run = subprocess.run(
        [sys.executable, CHURN, "--tasks", "400", "--rounds", "3", "--interval", "0.3", *args],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "lost=0 wrong=0" in run.stdout, run.stdout + run.stderr


@pytest.mark.timeout(180)
def test_tasks_survive_nodes_leaving_gracefully_and_new_ones_joining():
    _churn()


@pytest.mark.timeout(180)
def test_tasks_survive_nodes_being_killed_and_new_ones_joining():
    _churn("--kill")


def _start(session_dir):
    return spawn_node(session_dir, ["--head", "--num-cpus", "0", "--object-store-memory", str(64 << 20)])


def _stop(process):
    if process.poll() is None:
        process.stdin.close()
        process.wait(timeout=10)


@pytest.mark.timeout(60)
def test_a_node_restarted_in_the_session_dir_of_a_killed_one_starts_and_cleans_up_after_it():
    temp_dir = tempfile.mkdtemp(prefix="rtdk-", dir="/tmp")
    session_dir = os.path.join(temp_dir, "session_killed")
    first = second = None
    try:
        first = _start(session_dir)
        [left_behind] = shm_files(session_dir)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        assert os.path.exists(left_behind)

        second = _start(session_dir)
        # The new instance has a file of its own, and the dead one's is gone.
        assert shm_files(session_dir) and left_behind not in shm_files(session_dir)
        assert not os.path.exists(left_behind)
    finally:
        for process in (first, second):
            if process is not None:
                if process.poll() is None:
                    _stop(process)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not shm_files(session_dir)


@pytest.mark.timeout(60)
def test_a_new_node_removes_the_session_dirs_of_dead_daemons_beside_it():
    temp_dir = tempfile.mkdtemp(prefix="rtdk-", dir="/tmp")
    dead_dir = os.path.join(temp_dir, "session_dead")
    live = None
    try:
        dead = _start(dead_dir)
        dead.send_signal(signal.SIGKILL)
        dead.wait(timeout=10)
        assert os.path.exists(os.path.join(dead_dir, "node.json"))

        live = _start(os.path.join(temp_dir, "session_live"))
        assert not os.path.exists(dead_dir)
        assert not shm_files(dead_dir)
        assert glob.glob(os.path.join(temp_dir, "session_live", "node.json"))
    finally:
        if live is not None:
            _stop(live)
        shutil.rmtree(temp_dir, ignore_errors=True)
