"""The head restarts and the cluster goes on: a two-node cluster (the head and a second
node, each started with the ``rtd`` command line) whose head daemon is killed with
SIGKILL and started again with the same command, once on the embedded store and once on
a real ``redis-server``.

A driver on the second node holds a detached named actor with state there, and a
detached placement group whose bundle is there. It keeps calling the actor all along:
actor calls go straight to the actor's worker, so they do not need the GCS. The second
node's raylet reconnects to the new head and registers again under the same node id;
then the driver is still running, a new driver finds the actor by name with its state,
the placement group still holds its reservation, and new tasks run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest
from conftest import last_json_line, pid_alive, rtd_cli, run_script, wait_for_condition
from rtd import _core
from rtd.cluster_utils import _free_port

pytestmark = pytest.mark.timeout(240)

NAMESPACE = "restart"

# The long-running driver on the second node: it makes the actor and the group, says so
# on one JSON line, then calls the actor until `stop` appears, counting calls and errors
# in `progress` as it goes; at the end it prints the tally. When `lookup` appears it
# looks the actor up by name (a GCS call) once, saying when it starts and what it got.
DRIVER = """
import json, os, sys, time
import rtd
from rtd.util.placement_group import placement_group

worker_dir, progress, stop, lookup = sys.argv[1:5]
rtd.init(address="auto", _temp_dir=worker_dir, namespace="restart")

@rtd.remote(resources={"far": 1}, lifetime="detached", name="keeper")
class Keeper:
    def __init__(self):
        self.count = 0

    def incr(self):
        self.count += 1
        return self.count

    def node(self):
        return rtd.get_runtime_context().get_node_id()

keeper = Keeper.remote()
for _ in range(3):
    rtd.get(keeper.incr.remote(), timeout=60)
group = placement_group([{"far": 1}], name="held", lifetime="detached")
assert group.wait(timeout_seconds=60)
print(json.dumps({"actor_node": rtd.get(keeper.node.remote(), timeout=60),
                  "driver_node": rtd.get_runtime_context().get_node_id()}), flush=True)
ok, errors = 0, []
while not os.path.exists(stop):
    if os.path.exists(lookup) and not os.path.exists(lookup + ".done"):
        open(lookup + ".started", "w").close()
        try:
            found = rtd.get_actor("keeper", namespace="restart")
            outcome = {"node": rtd.get(found.node.remote(), timeout=60)}
        except Exception as e:
            outcome = {"error": repr(e)}
        with open(lookup + ".tmp", "w") as f:
            json.dump(outcome, f)
        os.replace(lookup + ".tmp", lookup + ".done")
    try:
        rtd.get(keeper.incr.remote(), timeout=10)
        ok += 1
    except Exception as e:  # every failure is reported, none stops the loop
        errors.append(repr(e))
    with open(progress + ".tmp", "w") as f:
        json.dump({"ok": ok, "errors": errors, "t": time.time()}, f)
    os.replace(progress + ".tmp", progress)
    time.sleep(0.02)
print(json.dumps({"ok": ok, "errors": errors}), flush=True)
"""

# A new driver after the restart, on the head: finds the actor and the group, runs tasks.
NEW_DRIVER = """
import json, rtd
from rtd.util.placement_group import get_placement_group, placement_group_table
from rtd.util.scheduling_strategies import PlacementGroupSchedulingStrategy

rtd.init(address="auto", _temp_dir={head_dir!r})
keeper = rtd.get_actor("keeper", namespace="restart")
count = rtd.get(keeper.incr.remote(), timeout=60)
group = get_placement_group("held")
table = placement_group_table(group)

@rtd.remote(num_cpus=0, resources={{"far": 1}})
def where():
    return rtd.get_runtime_context().get_node_id()

@rtd.remote
def add(a, b):
    return a + b

in_group = where.options(
    scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0)
).remote()
print(json.dumps({{
    "count": count,
    "actor_node": rtd.get(keeper.node.remote(), timeout=60),
    "group_state": table["state"],
    "group_nodes": list(table["bundles_to_node_id"].values()),
    "in_group_node": rtd.get(in_group, timeout=60),
    "sum": rtd.get(add.remote(40, 2), timeout=60),
    "nodes": sorted(n["NodeID"] for n in rtd.nodes() if n["Alive"]),
}}))
"""


def _daemon_pid(temp_dir):
    with open(os.path.join(temp_dir, "session_latest", "node.json")) as f:
        return json.load(f)["pid"]


def _read_progress(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"ok": 0, "errors": []}


@pytest.fixture(params=["embedded", "redis"])
def head_store(request):
    """The head's store flags: none (the embedded store under its temp dir), or a Redis
    of the test's own."""
    if request.param == "embedded":
        return []
    return ["--redis-address", request.getfixturevalue("redis_address")]


def test_a_two_node_cluster_survives_a_head_restart(head_store):
    head_dir = tempfile.mkdtemp(prefix="rtd-hr-", dir="/tmp")
    worker_dir = tempfile.mkdtemp(prefix="rtd-hr-", dir="/tmp")
    scratch = tempfile.mkdtemp(prefix="rtd-hr-", dir="/tmp")
    progress, stop = os.path.join(scratch, "progress.json"), os.path.join(scratch, "stop")
    lookup = os.path.join(scratch, "lookup")
    port = _free_port()
    head_command = ["start", "--head", "--port", str(port), "--num-cpus", "1", "--temp-dir", head_dir, *head_store]
    driver = None
    try:
        assert (started := rtd_cli(*head_command)).returncode == 0, started.stderr
        worker = rtd_cli(
            "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--resources", '{"far": 2}',
            "--temp-dir", worker_dir,
        )
        assert worker.returncode == 0, worker.stderr
        worker_pid = _daemon_pid(worker_dir)
        driver = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(DRIVER), worker_dir, progress, stop, lookup],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert driver.stdout is not None
        placed = json.loads(driver.stdout.readline() or "null")
        assert placed, driver.stderr.read() if driver.poll() is not None else "the driver said nothing"
        assert placed["actor_node"] == placed["driver_node"], "the actor runs on the second node"
        worker_node = placed["driver_node"]

        head_pid = _daemon_pid(head_dir)
        os.kill(head_pid, signal.SIGKILL)
        wait_for_condition(lambda: not pid_alive(head_pid), timeout=10)
        # While the head is away the driver's actor calls go on.
        during = _read_progress(progress)["ok"]
        wait_for_condition(lambda: _read_progress(progress)["ok"] >= during + 20, timeout=20)
        # A GCS call made now waits for the head to come back, then goes on.
        open(lookup, "w").close()
        wait_for_condition(lambda: os.path.exists(lookup + ".started"), timeout=20)

        assert (restarted := rtd_cli(*head_command)).returncode == 0, restarted.stderr
        # The second node registers again under the same id.
        def second_node_back():
            nodes = {n["NodeID"]: n for n in _core.query_nodes(f"127.0.0.1:{port}")}
            return nodes.get(worker_node, {}).get("Alive")

        wait_for_condition(second_node_back, timeout=30)
        result = run_script(NEW_DRIVER.format(head_dir=head_dir), timeout=120)
        assert result.returncode == 0, result.stderr
        out = last_json_line(result.stdout)
        assert out["count"] > 3 + 20, "the actor kept its state (and the calls made during the outage)"
        assert out["actor_node"] == worker_node
        assert out["group_state"] == "CREATED" and out["group_nodes"] == [worker_node]
        assert out["in_group_node"] == worker_node
        assert out["sum"] == 42
        assert worker_node in out["nodes"] and len(out["nodes"]) == 2
        wait_for_condition(lambda: os.path.exists(lookup + ".done"), timeout=60)
        with open(lookup + ".done") as f:
            assert json.load(f) == {"node": worker_node}, "the lookup made during the outage went through"

        # The second node's daemon and its driver lived through it all, without an error.
        assert pid_alive(worker_pid)
        assert driver.poll() is None
        open(stop, "w").close()
        stdout, stderr = driver.communicate(timeout=60)
        assert driver.returncode == 0, stderr
        tally = last_json_line(stdout)
        assert tally["errors"] == [] and tally["ok"] >= 20, tally
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.communicate()
        for d in (worker_dir, head_dir):
            rtd_cli("stop", "--force", "--temp-dir", d)
            shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


def test_a_worker_node_gives_up_on_a_head_that_does_not_come_back():
    """Past RTD_GCS_RPC_SERVER_RECONNECT_TIMEOUT_S without the head the node stops, as
    before the head could restart; not sooner."""
    head_dir = tempfile.mkdtemp(prefix="rtd-hr-", dir="/tmp")
    worker_dir = tempfile.mkdtemp(prefix="rtd-hr-", dir="/tmp")
    port = _free_port()
    try:
        head = rtd_cli("start", "--head", "--port", str(port), "--num-cpus", "1", "--temp-dir", head_dir)
        assert head.returncode == 0, head.stderr
        worker = rtd_cli(
            "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--temp-dir", worker_dir,
            env={"RTD_GCS_RPC_SERVER_RECONNECT_TIMEOUT_S": "3"},
        )
        assert worker.returncode == 0, worker.stderr
        worker_pid = _daemon_pid(worker_dir)
        head_pid = _daemon_pid(head_dir)
        os.kill(head_pid, signal.SIGKILL)
        wait_for_condition(lambda: not pid_alive(head_pid), timeout=10)
        lost_at = time.monotonic()
        wait_for_condition(lambda: not pid_alive(worker_pid), timeout=20)
        # It tried to reconnect for the 3 s it was given (less the heartbeat's 0.1 s).
        assert time.monotonic() - lost_at >= 2.5
    finally:
        for d in (worker_dir, head_dir):
            rtd_cli("stop", "--force", "--temp-dir", d)
            shutil.rmtree(d, ignore_errors=True)
