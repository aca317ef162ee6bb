"""The state API's tasks, jobs, workers, objects and logs end to end on a live runtime,
through ``rtd.util.state`` and the ``rtd list/get/summary/logs/memory/timeline``
commands (logs on another node: ``test_state_api.py``'s two-node cluster). Task events
reach the GCS every second, so tests wait for what they look for (bounded) rather than
sleep."""

from __future__ import annotations

import json
import os
import uuid

import numpy as np
import pytest
import rtd
from conftest import SignalActor, rtd_cli, wait_for_condition
from rtd.util.state import (
    RayStateApiException,
    get_log,
    get_task,
    get_worker,
    list_objects,
    list_tasks,
    list_workers,
    summarize_objects,
    summarize_tasks,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def dashboard(shared_runtime):
    """The shared runtime's dashboard, ``HOST:PORT``."""
    return rtd.init(ignore_reinit_error=True).dashboard_url


def marker(what: str) -> str:
    """A line no other test prints."""
    return f"{what}-{uuid.uuid4().hex[:12]}"


def named(rows, name):
    """The rows of tasks whose function (a qualified name) is ``name``."""
    return [r for r in rows if r["func_or_class_name"].split(".")[-1] == name]


@rtd.remote(num_cpus=0)
class Speaker:
    def say(self, line):
        print(line)
        return os.getpid()


# One CPU each, so no more workers start than the pool keeps: the raylet SIGKILLs a
# surplus idle worker at once, and task events it had not sent yet are lost with it.
@rtd.remote
def state_square(x):
    return x * x


@rtd.remote(max_retries=0)
def state_explode():
    raise ValueError("state boom")


@rtd.remote
def state_chatty(line):
    print(line)
    return os.getpid()


def test_tasks_show_finished_failed_and_actor_tasks(shared_runtime):
    assert rtd.get([state_square.remote(i) for i in range(3)]) == [0, 1, 4]
    with pytest.raises(rtd.exceptions.RayTaskError):
        rtd.get(state_explode.remote())
    speaker = Speaker.remote()
    rtd.get(speaker.say.remote("hi"))

    def reported():
        rows = list_tasks(detail=True, limit=10_000)
        return (
            len([r for r in named(rows, "state_square") if r["state"] == "FINISHED"]) == 3
            and [r["state"] for r in named(rows, "state_explode")] == ["FAILED"]
            and [r["state"] for r in named(rows, "say")] == ["FINISHED"]
        )

    wait_for_condition(reported, timeout=20)
    rows = list_tasks(detail=True, limit=10_000)
    (failed,) = named(rows, "state_explode")
    assert failed.type == "NORMAL_TASK" and "state boom" in failed.error_message and failed.error_type
    (call,) = named(rows, "say")
    assert (call.type, call.actor_id) == ("ACTOR_TASK", speaker._actor_id.hex())
    creations = [r for r in rows if r.type == "ACTOR_CREATION_TASK" and r.actor_id == call.actor_id]
    assert [r.state for r in creations] == ["FINISHED"]

    failed_only = list_tasks(filters=[("state", "=", "FAILED")], limit=10_000)
    assert failed_only and {r.state for r in failed_only} == {"FAILED"}
    not_failed = list_tasks(filters=[("state", "!=", "FAILED")], limit=10_000)
    assert not named(not_failed, "state_explode") and len(named(not_failed, "state_square")) == 3

    summary = summarize_tasks()["cluster"]
    key = next(k for k in summary["summary"] if k.split(".")[-1] == "state_square")
    assert summary["summary"][key]["state_counts"]["FINISHED"] >= 3
    assert summary["summary_by"] == "func_name" and summary["total_tasks"] >= 5

    attempt = get_task(failed.task_id)
    assert attempt is not None and attempt.task_id == failed.task_id and attempt.state == "FAILED"
    assert get_task("ab" * 24) is None
    rtd.kill(speaker)


def test_workers_show_the_actors_process_and_the_driver(shared_runtime):
    speaker = Speaker.remote()
    pid = rtd.get(speaker.say.remote("where"))
    (worker,) = list_workers(filters=[("pid", "=", pid)])
    assert (worker.worker_type, worker.is_alive) == ("WORKER", True)
    assert get_worker(worker.worker_id).pid == pid
    drivers = list_workers(filters=[("worker_type", "=", "DRIVER"), ("pid", "=", os.getpid())])
    assert len(drivers) == 1 and drivers[0].is_alive
    assert get_worker("cd" * 28) is None
    rtd.kill(speaker)


def test_objects_show_their_size_and_why_they_are_held(shared_runtime):
    array = np.zeros(2 << 20, dtype=np.uint8)
    held = rtd.put(array)
    rows = list_objects(filters=[("object_id", "=", held.hex())], detail=True)
    (row,) = rows
    assert row.object_size >= array.nbytes and row.reference_type == "LOCAL_REFERENCE"
    assert (row.type, row.pid, row.task_status) == ("DRIVER", os.getpid(), "FINISHED")

    signal = SignalActor.remote()

    @rtd.remote(num_cpus=0)
    def wait_then_measure(signal, array):
        rtd.get(signal.wait.remote())
        return array.nbytes

    # The driver keeps no ref of its own: only the pending task holds the argument.
    measured = wait_then_measure.remote(signal, rtd.put(np.ones(3 << 20, dtype=np.uint8)))
    wait_for_condition(lambda: rtd.get(signal.cur_num_waiters.remote()) == 1)
    argument = list_objects(filters=[("reference_type", "=", "USED_BY_PENDING_TASK")], detail=True)
    assert any(o.object_size >= 3 << 20 and o.pid == os.getpid() for o in argument), argument
    result = list_objects(filters=[("object_id", "=", measured.hex())])
    assert [o.task_status for o in result] == ["PENDING"]

    summary = summarize_objects()["cluster"]
    assert summary["callsite_enabled"] is False and summary["summary_by"] == "callsite"
    group = summary["summary"]["disabled"]
    assert group["ref_type_counts"]["LOCAL_REFERENCE"] >= 1 and group["ref_type_counts"]["USED_BY_PENDING_TASK"] >= 1
    assert summary["total_size_mb"] >= 5.0 and group["total_num_workers"] >= 1

    signal.send.remote()
    assert rtd.get(measured) == 3 << 20


def test_logs_of_an_actor_and_a_task_and_following(shared_runtime):
    speaker = Speaker.remote()
    first, later = marker("actor-first"), marker("actor-later")
    rtd.get(speaker.say.remote(first))
    actor_id = speaker._actor_id.hex()
    assert first in "".join(get_log(actor_id=actor_id))
    assert "".join(get_log(actor_id=actor_id, tail=1)).strip().endswith(first)

    followed = get_log(actor_id=actor_id, follow=True, _interval=0.05)
    assert first in next(followed)
    rtd.get(speaker.say.remote(later))
    # Printed and flushed before the call returned: the next poll has it.
    assert later in next(followed)
    followed.close()

    line = marker("task-line")
    ref = state_chatty.remote(line)
    rtd.get(ref)
    # The task's worker is known once its events reach the GCS.
    wait_for_condition(lambda: line in "".join(get_log(task_id=ref.task_id())), timeout=15)

    # A task's log is its own lines, not its worker's whole file: the next task on the
    # same worker prints after it.
    after = marker("task-after")
    assert rtd.get(state_chatty.remote(after)) == rtd.get(ref)
    info = get_task(ref.task_id())["task_log_info"]
    node_id = rtd.get_runtime_context().get_node_id()
    wait_for_condition(lambda: after in "".join(get_log(node_id=node_id, filename=info["stdout_file"])))
    own = "".join(get_log(task_id=ref.task_id()))
    assert line in own and after not in own, own
    info = get_task(ref.task_id())["task_log_info"]
    assert info["stdout_end"] - info["stdout_start"] == len(own.encode()), info

    with pytest.raises(RayStateApiException, match="no actor"):
        "".join(get_log(actor_id="ef" * 16))
    rtd.kill(speaker)


def test_objects_say_whether_they_are_spilled(start_runtime):
    start_runtime(num_cpus=1, object_store_memory=100 << 20)
    refs = [rtd.put(np.full(30 << 20, i, dtype=np.uint8)) for i in range(5)]
    rows = {o.object_id: o for o in list_objects(detail=True) if o.object_size and o.object_size >= 30 << 20}
    assert set(rows) == {r.hex() for r in refs}
    # The store holds three at most; the oldest went to disk first.
    spilled = {oid for oid, o in rows.items() if o.spilled}
    assert len(spilled) >= 2 and refs[0].hex() in spilled and refs[-1].hex() not in spilled, rows

    memory = rtd_cli("memory", "--address", rtd.init(ignore_reinit_error=True).dashboard_url)
    assert memory.returncode == 0, memory.stderr
    assert f"{len(spilled)} objects" in memory.stdout.split("Spilled ")[-1], memory.stdout


def test_cli_lists_tasks_logs_memory_and_timeline(dashboard, tmp_path):
    address = ("--address", dashboard)
    line = marker("cli-actor")
    speaker = Speaker.remote()
    rtd.get(speaker.say.remote(line))
    held = rtd.put(np.zeros(1 << 20, dtype=np.uint8))
    wait_for_condition(lambda: named(list_tasks(filters=[("state", "=", "FINISHED")], limit=10_000), "say"))

    finished = rtd_cli("list", "tasks", "--filter", "state=FINISHED", "--limit", "10000", "--format", "json", *address)
    assert finished.returncode == 0, finished.stderr
    rows = json.loads(finished.stdout)
    assert rows and {r["state"] for r in rows} == {"FINISHED"} and named(rows, "say")
    table = rtd_cli("list", "tasks", "--filter", "state=FINISHED", *address)
    assert table.returncode == 0 and "TASK_ID" in table.stdout and "FINISHED" in table.stdout

    logs = rtd_cli("logs", "actor", "--id", speaker._actor_id.hex(), *address)
    assert logs.returncode == 0, logs.stderr
    assert line in logs.stdout
    listing = rtd_cli("logs", *address)
    assert listing.returncode == 0, listing.stderr
    assert "worker_out:" in listing.stdout and rtd.get_runtime_context().get_node_id() in listing.stdout

    memory = rtd_cli("memory", *address)
    assert memory.returncode == 0, memory.stderr
    assert held.hex() in memory.stdout and "LOCAL_REFERENCE" in memory.stdout
    assert "Summary for node address: 127.0.0.1" in memory.stdout and "1.0 MiB" in memory.stdout

    for resource in ("tasks", "objects"):
        summary = rtd_cli("summary", resource, *address)
        assert summary.returncode == 0 and "Stats:" in summary.stdout, summary.stderr

    trace = tmp_path / "trace.json"
    written = rtd_cli("timeline", "--output", str(trace), *address)
    assert written.returncode == 0, written.stderr
    assert str(trace) in written.stdout
    events = json.loads(trace.read_text())
    assert isinstance(events, list) and any(e["name"].endswith("say") for e in events)

    bad_filter = rtd_cli("list", "tasks", "--filter", "colour=red", *address)
    assert bad_filter.returncode == 1 and "colour" in bad_filter.stderr
    unknown = rtd_cli("get", "task", "ab" * 24, *address)
    assert unknown.returncode == 1 and "ab" * 24 in unknown.stderr
    no_actor = rtd_cli("logs", "actor", "--id", "ef" * 16, *address)
    assert no_actor.returncode == 1 and "no actor" in no_actor.stderr
    rtd.kill(speaker)
