"""The storage behind the GCS: a head killed with SIGKILL and started again with the
same command resumes its cluster (on the embedded store and on Redis); a clean stop
ends the cluster; a store that cannot be read stops the start with an error naming it.

The restart of a multi-node cluster, where actors on surviving nodes keep running, is
in the head-restart tests; here the head is the only node, so what lived on it (its
workers) is gone after the kill, and its actors are restarted or dead as their
``max_restarts`` says."""

from __future__ import annotations

import glob
import json
import os
import signal

import pytest
from conftest import last_json_line, pid_alive, rtd_cli, run_script, wait_for_condition
from rtd.cluster_utils import _free_port


def _head_pid(temp_dir: str) -> int:
    with open(os.path.join(temp_dir, "session_latest", "node.json")) as f:
        return json.load(f)["pid"]


def _start_head(temp_dir: str, *extra: str) -> None:
    started = rtd_cli("start", "--head", "--num-cpus", "4", "--temp-dir", temp_dir, *extra)
    assert started.returncode == 0, started.stderr


def _kill_head(temp_dir: str) -> None:
    pid = _head_pid(temp_dir)
    os.kill(pid, signal.SIGKILL)
    wait_for_condition(lambda: not pid_alive(pid), timeout=10)


def _driver(temp_dir: str, body: str):
    header = (
        "import json, rtd\n"
        "from rtd import _core\n"
        "from rtd.util.placement_group import get_placement_group, placement_group\n"
        f"rtd.init(address='auto', _temp_dir={temp_dir!r}, namespace='store')\n"
    )
    result = run_script(header + body, timeout=90)
    assert result.returncode == 0, result.stderr
    return last_json_line(result.stdout)


_FILL_THE_CLUSTER = """
@rtd.remote
class Counter:
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n

@rtd.remote
def plus_one(x):
    return x + 1

keeps = Counter.options(name="keeps", lifetime="detached", max_restarts=-1).remote()
fragile = Counter.options(name="fragile", lifetime="detached", max_restarts=0).remote()
assert rtd.get([keeps.incr.remote(), fragile.incr.remote(), plus_one.remote(1)]) == [1, 1, 2]
pg = placement_group([{"CPU": 1}], name="pg", lifetime="detached")
assert pg.wait(30)
_core.kv_put("my-key", b"my-value")
print(json.dumps({
    "job": rtd.get_runtime_context().get_job_id(),
    "function": plus_one._function_id.hex(),
    "pg": pg.id.hex(),
    "cluster": _core.kv_get("session_name").decode(),
}))
"""

_CHECK_THE_CLUSTER = """
def actor_state(name):
    return [{"state": a["state"], "death_cause": a["death_cause"]} for a in _core.list_actors() if a["name"] == name]

out = {"kv": _core.kv_get("my-key").decode(), "cluster": _core.kv_get("session_name").decode()}
out["function_stored"] = _core.kv_get("fn:" + FUNCTION) is not None
# The detached actor that may restart is restarted on the new head and answers again
# (its state is new: the old worker died with the head).
keeps = rtd.get_actor("keeps", namespace="store")
out["keeps"] = rtd.get(keeps.incr.remote(), timeout=60)
out["fragile"] = actor_state("fragile")
pg = get_placement_group("pg")
out["pg"] = pg.id.hex()
out["pg_ready"] = pg.wait(30)
out["job"] = rtd.get_runtime_context().get_job_id()
print(json.dumps(out))
"""


@pytest.mark.timeout(240)
@pytest.mark.parametrize("store", ["embedded", "redis"])
def test_a_head_killed_and_started_again_with_the_same_command_resumes_its_cluster(store, temp_dir, request):
    flags = ["--redis-address", request.getfixturevalue("redis_address")] if store == "redis" else []
    _start_head(temp_dir, *flags)
    before = _driver(temp_dir, _FILL_THE_CLUSTER)
    if store == "embedded":
        assert glob.glob(os.path.join(temp_dir, "gcs", "*.sqlite")), os.listdir(temp_dir)

    _kill_head(temp_dir)
    _start_head(temp_dir, *flags)

    after = _driver(temp_dir, _CHECK_THE_CLUSTER.replace("FUNCTION", repr(before["function"])))
    assert after["kv"] == "my-value"
    # The cluster keeps its id (the first start's session name).
    assert after["cluster"] == before["cluster"] and before["cluster"].startswith("session_")
    assert after["function_stored"]
    assert after["keeps"] == 1
    # The actor that may not restart is still known, dead with a cause.
    [fragile] = after["fragile"]
    assert fragile["state"] == "DEAD" and fragile["death_cause"], fragile
    assert after["pg"] == before["pg"] and after["pg_ready"]
    # Job ids go on from where the old head left them; the old job is still listed.
    assert int(after["job"], 16) > int(before["job"], 16)
    jobs = rtd_cli("list", "jobs", "--format", "json", "--temp-dir", temp_dir)
    assert jobs.returncode == 0, jobs.stderr
    assert before["job"] in jobs.stdout


@pytest.mark.timeout(120)
def test_a_clean_stop_ends_the_cluster_and_the_next_start_is_a_fresh_one(temp_dir):
    _start_head(temp_dir)
    first = _driver(temp_dir, 'print(json.dumps({"job": rtd.get_runtime_context().get_job_id()}))')
    stopped = rtd_cli("stop", "--temp-dir", temp_dir)
    assert stopped.returncode == 0, stopped.stderr
    _start_head(temp_dir)
    again = _driver(temp_dir, 'print(json.dumps({"job": rtd.get_runtime_context().get_job_id()}))')
    # A fresh cluster numbers its jobs from the start again.
    assert again["job"] == first["job"]


@pytest.mark.timeout(60)
def test_a_corrupted_embedded_store_is_an_error_at_start_naming_the_file(temp_dir):
    store = os.path.join(temp_dir, "gcs", "default.sqlite")
    os.makedirs(os.path.dirname(store))
    with open(store, "wb") as f:
        f.write(os.urandom(64 * 1024))
    started = rtd_cli("start", "--head", "--num-cpus", "1", "--temp-dir", temp_dir)
    assert started.returncode != 0
    assert store in started.stderr, started.stderr
    assert not glob.glob(os.path.join(temp_dir, "session_*", "node.json"))


@pytest.mark.timeout(60)
def test_a_redis_that_is_down_at_start_is_an_error_naming_its_address(temp_dir):
    address = f"127.0.0.1:{_free_port()}"
    started = rtd_cli("start", "--head", "--num-cpus", "1", "--redis-address", address, "--temp-dir", temp_dir)
    assert started.returncode != 0
    assert address in started.stderr, started.stderr
