"""The `rtd` command line accepts what Ray users type: `--help` everywhere, `--version`,
`ray start`'s flags (working, or accepted with a notice), and `rtd stop` finds daemons
by their processes whatever `--temp-dir` they were started with.

Every `rtd stop` here is scoped with `--temp-dir`: other test suites may run daemons of
this user on the same machine, and a bare `rtd stop` would stop them too."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess

import pytest
from conftest import RTD, assert_session_gone, last_json_line, rtd_cli, run_script, wait_for_condition

RAY_START_FLAGS = [
    "--include-dashboard",
    "--dashboard-host",
    "--dashboard-port",
    "--disable-usage-stats",
    "--memory",
    "--system-config",
    "--block",
    "--redis-password",
]



def spilling_config(directory):
    # As Ray's docs write it: object_spilling_config is a JSON string inside the JSON.
    inner = json.dumps({"type": "filesystem", "params": {"directory_path": directory}})
    return json.dumps({"object_spilling_config": inner})


def started_pid(started):
    return int(re.search(r"\(pid (\d+)\)", started.stdout).group(1))


def started_session(started):
    return re.search(r"session: (\S+)", started.stdout).group(1)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("command", [[], ["start"], ["stop"], ["status"], ["list"]])
def test_help_on_every_command_exits_zero(command):
    result = rtd_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: rtd" in result.stdout


@pytest.mark.timeout(30)
def test_start_help_lists_rays_flags():
    result = rtd_cli("start", "--help")
    assert result.returncode == 0, result.stderr
    missing = [flag for flag in RAY_START_FLAGS if flag not in result.stdout]
    assert not missing, result.stdout


@pytest.mark.timeout(30)
def test_version_prints_the_package_version():
    result = rtd_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"rtd {importlib.metadata.version('rtd')}"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "args, named",
    [
        (["--no-such-flag"], "--no-such-flag"),
        (["--include-dashboard=maybe"], "--include-dashboard"),
        (["--memory", "lots"], "--memory"),
        (["--system-config", '{"object_spilling_config": "{oops"}'], "--system-config"),
    ],
)
def test_a_bad_flag_exits_non_zero_naming_it(args, named, temp_dir):
    result = rtd_cli("start", "--head", *args, "--temp-dir", temp_dir)
    assert result.returncode == 2
    assert named in result.stderr
    assert not os.listdir(temp_dir)


@pytest.mark.timeout(60)
def test_head_started_with_rays_flags_runs_tasks_and_says_what_it_ignores(temp_dir):
    started = rtd_cli(
        "start", "--head", "--num-cpus", "1",
        "--include-dashboard=false", "--dashboard-host", "0.0.0.0", "--disable-usage-stats",
        "--memory", "1000000000", "--redis-password", "5241590000000000",
        "--system-config", json.dumps({"max_io_workers": 2}),
        "--temp-dir", temp_dir,
    )
    assert started.returncode == 0, started.stderr
    notices = [line for line in started.stderr.splitlines() if line.startswith("rtd: note:")]
    assert notices == [
        "rtd: note: the dashboard is off (--include-dashboard=false); --dashboard-host ignored",
        "rtd: note: without --redis-address (or RTD_REDIS_ADDRESS) the GCS keeps its state in an embedded store;"
        " --redis-password ignored",
        "rtd: note: --system-config keys rtd does not support, ignored: max_io_workers",
    ], started.stderr
    result = run_script(
        f"""
        import json, rtd
        rtd.init(address="auto", _temp_dir={temp_dir!r})

        @rtd.remote
        def f(x):
            return x * 2

        print(json.dumps([rtd.get(f.remote(21)), rtd.cluster_resources()["memory"]]))
        """
    )
    assert result.returncode == 0, result.stderr
    assert last_json_line(result.stdout) == [42, 1e9]


@pytest.mark.timeout(90)
def test_objects_spill_into_the_system_config_directory_and_it_is_cleaned_at_stop(temp_dir):
    spill_root = os.path.join(temp_dir, "spill")
    started = rtd_cli(
        "start", "--head", "--num-cpus", "1", "--object-store-memory", "100000000",
        f"--system-config={spilling_config(spill_root)}", "--temp-dir", temp_dir,
    )
    assert started.returncode == 0, started.stderr
    assert "rtd: note:" not in started.stderr
    session = started_session(started)
    # The driver holds four 40 MB objects in a 100 MB store, so some must spill; it
    # waits for a spill file to appear, then reads every object back.
    result = run_script(
        f"""
        import json, os, time
        import numpy as np
        import rtd
        rtd.init(address="auto", _temp_dir={temp_dir!r})
        refs = [rtd.put(np.full(40_000_000, i, dtype=np.uint8)) for i in range(4)]

        def spill_files():
            if not os.path.isdir({spill_root!r}):
                return []
            return [os.path.join(d, f) for d in os.listdir({spill_root!r})
                    for f in os.listdir(os.path.join({spill_root!r}, d))]

        deadline = time.monotonic() + 30
        while not spill_files() and time.monotonic() < deadline:
            time.sleep(0.05)
        files = spill_files()
        values = [int(rtd.get(r)[0]) for r in refs]
        print(json.dumps([files, values]))
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    files, values = last_json_line(result.stdout)
    assert files, "nothing was spilled into the --system-config directory"
    assert all(re.fullmatch(r"rtd_spilled_objects_[0-9a-f]+/[0-9a-f]+", f) for f in files), files
    assert values == [0, 1, 2, 3]
    stopped = rtd_cli("stop", "--temp-dir", temp_dir)
    assert "Stopped 1" in stopped.stdout, stopped.stderr
    assert_session_gone(session)
    # The user's directory stays; the node's own directory in it goes.
    assert os.listdir(spill_root) == []


@pytest.mark.timeout(90)
def test_stop_finds_daemons_whatever_temp_dir_they_were_started_with(temp_dir):
    sessions = []
    for name in ("a", "b"):
        started = rtd_cli("start", "--head", "--num-cpus", "1", "--temp-dir", os.path.join(temp_dir, name))
        assert started.returncode == 0, started.stderr
        sessions.append((started_session(started), started_pid(started)))
    stopped = rtd_cli("stop", "--temp-dir", temp_dir)
    assert stopped.returncode == 0, stopped.stderr
    assert "Stopped 2 rtd node daemon(s)." in stopped.stdout
    for session, pid in sessions:
        assert_session_gone(session, pids=[pid])


@pytest.mark.timeout(90)
def test_stop_force_kills_daemons_and_removes_what_they_left(temp_dir):
    spill_root = os.path.join(temp_dir, "spill")
    background = rtd_cli(
        "start", "--head", "--num-cpus", "1", "--system-config", spilling_config(spill_root),
        "--temp-dir", os.path.join(temp_dir, "bg"),
    )
    assert background.returncode == 0, background.stderr
    # A daemon in the foreground picks its own session dir: `stop` finds it by pid.
    fg_dir = os.path.join(temp_dir, "fg")
    foreground = subprocess.Popen(
        [RTD, "start", "--head", "--num-cpus", "1", "--block", "--temp-dir", fg_dir],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def fg_session():
            for name in os.listdir(fg_dir):
                node_file = os.path.join(fg_dir, name, "node.json")
                if name != "session_latest" and os.path.exists(node_file):
                    return os.path.join(fg_dir, name)
            return None

        wait_for_condition(fg_session, timeout=30)
        foreground_session = fg_session()
        # Something in the spill directory to clean up, as if it had spilled.
        with open(os.path.join(started_session(background), "node.json")) as f:
            spill_dir = json.load(f)["spill_dir"]
        os.makedirs(spill_dir)
        open(os.path.join(spill_dir, "00ff"), "wb").close()

        stopped = rtd_cli("stop", "--force", "--temp-dir", temp_dir)
        assert stopped.returncode == 0, stopped.stderr
        assert "Stopped 2 rtd node daemon(s)." in stopped.stdout
        assert foreground.wait(timeout=10) == -9
        assert_session_gone(started_session(background), pids=[started_pid(background)])
        assert_session_gone(foreground_session, pids=[foreground.pid])
        assert os.listdir(spill_root) == []
    finally:
        foreground.kill()
        foreground.wait()
