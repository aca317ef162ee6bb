"""Starting node daemons: ``python -m rtd._private.node ARGS`` runs the `rtd` command
line in a fresh process (``rtd start``, ``rtd.init()``, ``Cluster``)."""

import json
import os
import subprocess
import sys
import time

_START_TIMEOUT_S = 30.0


def launcher():
    # Workers of daemons started from here run on this same interpreter.
    os.environ.setdefault("RTD_PYTHON", sys.executable)
    return [sys.executable, "-m", "rtd._private.node"]


def node_args(num_cpus=None, num_gpus=None, resources=None, object_store_memory=None):
    """`rtd start` options for a node's resources."""
    args = []
    if num_cpus is not None:
        args += ["--num-cpus", str(num_cpus)]
    if num_gpus is not None:
        args += ["--num-gpus", str(num_gpus)]
    if resources:
        args += ["--resources", json.dumps(resources)]
    if object_store_memory is not None:
        args += ["--object-store-memory", str(int(object_store_memory))]
    return args


def dashboard_args(include_dashboard=None, dashboard_host=None, dashboard_port=None):
    """`rtd start` options for the head's dashboard (Ray's ``init``/``Cluster`` names)."""
    args = []
    if include_dashboard is not None:
        args += ["--include-dashboard", "true" if include_dashboard else "false"]
    if dashboard_host is not None:
        args += ["--dashboard-host", str(dashboard_host)]
    if dashboard_port is not None:
        args += ["--dashboard-port", str(int(dashboard_port))]
    return args


def _node_file_pid(path):
    try:
        with open(path) as f:
            return json.load(f).get("pid")
    except (OSError, ValueError):
        return None


def daemon_env():
    """The environment of a daemon started from here: this process's, with the auth
    token it read (so the daemon and its workers use the same one). Raises
    ``AuthenticationError`` when ``RTD_AUTH_MODE=token`` finds no usable token."""
    from rtd import _core

    env = dict(os.environ)
    token = _core.auth_token()
    if token is not None:
        env["RTD_AUTH_MODE"] = "token"
        env["RTD_AUTH_TOKEN"] = token
    return env


def spawn_node(session_dir, args):
    """Starts a node daemon in the foreground of a child process and waits until it
    serves. It stops when the returned process's stdin is closed (or its parent dies),
    so it never outlives whoever started it."""
    cmd = [*launcher(), "start", "--block", "--watch-stdin", "--session-dir", session_dir,
           "--python", sys.executable, *args]
    process = subprocess.Popen(cmd, stdin=subprocess.PIPE, env=daemon_env())
    node_file = os.path.join(session_dir, "node.json")
    deadline = time.monotonic() + _START_TIMEOUT_S
    # The daemon runs in `process` itself; a node.json of another pid is a dead one's.
    while _node_file_pid(node_file) != process.pid:
        code = process.poll()
        if code is not None:
            raise RuntimeError(f"The rtd node daemon failed to start (exit code {code}); see its output above.")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"The rtd node daemon did not start within {_START_TIMEOUT_S:.0f} s.")
        time.sleep(0.002)
    return process
