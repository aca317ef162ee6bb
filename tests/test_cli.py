"""The `rtd` command line (the console script runs the same Rust CLI as the binary)."""

from __future__ import annotations

import os
import re

import pytest
from conftest import RTD, assert_session_gone, rtd_cli, run_script


def _session_dir(temp_dir):
    return os.path.realpath(os.path.join(temp_dir, "session_latest"))


def test_start_head_then_driver_connects_with_auto_and_stop_cleans_up(temp_dir):
    started = rtd_cli("start", "--head", "--num-cpus", "1", "--resources", '{"bob": 5}', "--temp-dir", temp_dir)
    assert started.returncode == 0, started.stderr
    session = _session_dir(temp_dir)
    result = run_script(
        f"""
        import json, rtd
        rtd.init(address="auto", _temp_dir={temp_dir!r})

        @rtd.remote(resources={{"bob": 1}})
        def f(x):
            return x + 1

        print(json.dumps([rtd.get(f.remote(1)), rtd.cluster_resources()["bob"]]))
        rtd.shutdown()
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[2, 5.0]"
    # The driver's shutdown leaves the daemon it did not start running.
    assert os.path.exists(os.path.join(session, "node.json"))
    status = rtd_cli("status", "--temp-dir", temp_dir)
    assert status.returncode == 0, status.stderr
    assert "0.0/1.0 CPU" in status.stdout and "0.0/5.0 bob" in status.stdout
    stopped = rtd_cli("stop", "--temp-dir", temp_dir)
    assert stopped.returncode == 0
    assert "Stopped 1" in stopped.stdout
    assert_session_gone(session)


def test_malformed_resources_json_is_a_cli_error_naming_the_flag(temp_dir):
    result = rtd_cli("start", "--head", "--resources", "{bob: 5", "--temp-dir", temp_dir)
    assert result.returncode != 0
    assert "--resources" in result.stderr
    assert not os.path.exists(os.path.join(temp_dir, "session_latest"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["frobnicate"], "frobnicate"),
        (["start", "--head", "--num-cpus", "many"], "--num-cpus"),
        (["start", "--head", "--bogus"], "--bogus"),
        (["start", "--head", "--resources", '{"CPU": 4}'], "--num-cpus"),
    ],
)
def test_bad_arguments_exit_non_zero_with_a_message(args, message, temp_dir):
    result = rtd_cli(*args, "--temp-dir", temp_dir) if args[0] == "start" else rtd_cli(*args)
    assert result.returncode != 0
    assert message in result.stderr


def test_joining_a_head_that_is_not_there_fails_within_seconds(temp_dir):
    # Nothing listens on port 1.
    result = rtd_cli("start", "--address", "127.0.0.1:1", "--temp-dir", temp_dir, timeout=20)
    assert result.returncode != 0
    assert "cannot reach the head node" in result.stderr


def test_auto_without_a_running_node_raises_connection_error(tmp_path):
    result = run_script(
        f"""
        import rtd
        try:
            rtd.init(address="auto", _temp_dir={str(tmp_path)!r})
        except ConnectionError as e:
            print("ConnectionError", e)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "ConnectionError" in result.stdout


def test_workers_that_cannot_start_fail_tasks_with_a_clear_error(temp_dir):
    started = rtd_cli("start", "--head", "--num-cpus", "1", "--python", "/bin/false", "--temp-dir", temp_dir)
    assert started.returncode == 0, started.stderr
    result = run_script(
        f"""
        import rtd
        rtd.init(address="auto", _temp_dir={temp_dir!r})

        @rtd.remote
        def f():
            return 1

        try:
            rtd.get(f.remote(), timeout=30)
        except rtd.exceptions.WorkerCrashedError as e:
            print("WorkerCrashedError", e)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "WorkerCrashedError" in result.stdout
    assert "/bin/false" in result.stdout


def test_list_shows_nodes_actors_and_placement_groups(temp_dir):
    started = rtd_cli("start", "--head", "--num-cpus", "2", "--temp-dir", temp_dir)
    assert started.returncode == 0, started.stderr
    result = run_script(
        f"""
        import rtd
        from rtd.util import placement_group
        rtd.init(address="auto", _temp_dir={temp_dir!r})

        @rtd.remote
        class Keeper:
            def ping(self):
                return "pong"

        k = Keeper.options(name="keeper", lifetime="detached").remote()
        assert rtd.get(k.ping.remote()) == "pong"
        pg = placement_group([{{"CPU": 1}}], name="kept", lifetime="detached")
        assert pg.wait(10)
        """
    )
    assert result.returncode == 0, result.stderr
    nodes = rtd_cli("list", "nodes", "--temp-dir", temp_dir)
    assert nodes.returncode == 0, nodes.stderr
    assert "ALIVE" in nodes.stdout
    actors = rtd_cli("list", "actors", "--temp-dir", temp_dir)
    # Ray's columns: actor id, class, state, job id, name, node id, pid, namespace.
    assert re.search(r"Keeper\s+ALIVE\s+[0-9a-f]+\s+keeper\s+[0-9a-f]{56}\s+[1-9]", actors.stdout), actors.stdout
    groups = rtd_cli("list", "placement-groups", "--temp-dir", temp_dir)
    # Placement group id, name, creator job id (not tracked: empty), state.
    assert re.search(r"[0-9a-f]{36}\s+kept\s+[0-9a-f]{8}\s+CREATED", groups.stdout), groups.stdout
    bogus = rtd_cli("list", "tasks-and-more", "--temp-dir", temp_dir)
    assert bogus.returncode != 0 and "tasks-and-more" in bogus.stderr and "placement-groups" in bogus.stderr


def test_status_shows_pending_demands(temp_dir):
    started = rtd_cli("start", "--head", "--num-cpus", "1", "--temp-dir", temp_dir)
    assert started.returncode == 0, started.stderr
    result = run_script(
        f"""
        import subprocess, time, rtd
        rtd.init(address="auto", _temp_dir={temp_dir!r})

        @rtd.remote(num_cpus=1)
        def hold():
            time.sleep(5)

        refs = [hold.remote() for _ in range(3)]
        deadline = time.time() + 10
        while time.time() < deadline:
            out = subprocess.run([{RTD!r}, "status", "--temp-dir", {temp_dir!r}], capture_output=True, text=True).stdout
            # The demand can show before the first lease holds the CPU: wait for both.
            if "pending" in out and "1.0/1.0 CPU" in out:
                print(out)
                break
            time.sleep(0.1)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "1.0/1.0 CPU" in result.stdout
    assert re.search(r"\{CPU: 1\}: \d\+ pending", result.stdout), result.stdout
