"""Task events: what submitters and workers report of each task attempt reaches the GCS,
as ``rtd.timeline()`` shows (Chrome-trace events, one per attempt that ran)."""

from __future__ import annotations

import json
import os

import pytest
import rtd
from conftest import wait_for_condition

pytestmark = pytest.mark.timeout(120)


def _by_name(events, name):
    """Events of tasks named ``name`` (a function's qualified name ends with it)."""
    return [e for e in events if e["name"] == name or e["name"].endswith("." + name)]


def test_timeline_has_every_task_and_actor_call_with_its_worker(shared_runtime, tmp_path):
    @rtd.remote
    def traced_square(x):
        return x * x

    @rtd.remote
    class TracedCounter:
        def __init__(self):
            self.n = 0

        def incr(self):
            self.n += 1
            return os.getpid()

    assert rtd.get([traced_square.remote(i) for i in range(6)]) == [i * i for i in range(6)]
    counter = TracedCounter.remote()
    actor_pid = rtd.get([counter.incr.remote() for _ in range(3)])[-1]

    def finished(events, name):
        return [e for e in _by_name(events, name) if e["args"]["state"] == "FINISHED"]

    seen = {}

    def complete():
        seen["events"] = rtd.timeline()
        return len(finished(seen["events"], "traced_square")) == 6 and len(
            finished(seen["events"], "TracedCounter.incr")
        ) == 3

    try:
        wait_for_condition(complete, timeout=30)
    except RuntimeError as e:
        names = sorted((ev["name"], ev["args"]["state"]) for ev in seen.get("events", []))
        raise AssertionError(f"{e} The timeline had: {names}") from None
    events = seen["events"]
    for e in finished(events, "traced_square"):
        assert e["ph"] == "X" and e["dur"] >= 0 and e["ts"] > 0
        assert e["args"]["type"] == "NORMAL_TASK"
        assert e["pid"].startswith("Node ") and e["name"].startswith("task::")
    calls = finished(events, "TracedCounter.incr")
    assert {e["tid"] for e in calls} == {calls[0]["tid"]}, "every call ran on the actor's one worker"
    assert f"(pid {actor_pid})" in calls[0]["tid"]
    assert calls[0]["args"]["type"] == "ACTOR_TASK"
    assert _by_name(events, "TracedCounter.__init__")[0]["args"]["type"] == "ACTOR_CREATION_TASK"
    starts = [e["ts"] for e in events]
    assert starts == sorted(starts)

    path = tmp_path / "trace.json"
    assert rtd.timeline(filename=str(path)) is None
    written = json.loads(path.read_text())
    assert isinstance(written, list) and len(written) >= len(events)


def test_a_failed_task_shows_its_error(shared_runtime):
    @rtd.remote(max_retries=0)
    def traced_failure():
        raise ValueError("traced boom")

    with pytest.raises(rtd.exceptions.RayTaskError):
        rtd.get(traced_failure.remote())
    wait_for_condition(lambda: _by_name(rtd.timeline(), "traced_failure"), timeout=15)
    (event,) = _by_name(rtd.timeline(), "traced_failure")
    assert event["args"]["state"] == "FAILED"
    assert "traced boom" in event["args"]["error_message"]


def test_task_events_can_be_turned_off(start_runtime, monkeypatch):
    # Workers inherit the daemon's environment, the daemon the driver's.
    monkeypatch.setenv("RTD_TASK_EVENTS_REPORT_INTERVAL_MS", "0")
    start_runtime(num_cpus=1)

    @rtd.remote
    def untraced():
        return 1

    assert rtd.get(untraced.remote()) == 1
    assert _by_name(rtd.timeline(), "untraced") == []
