"""Placement groups on one node: reserving bundles all or nothing, running tasks and
actors in them, capturing child tasks, removing groups, looking them up, detached
groups and `rtd status`, and bad input.

rtd has one node today, so multi-node cases (STRICT_SPREAD over several nodes, a node
failing under a group) are not tested here.
"""

from __future__ import annotations

import time

import pytest
import rtd
from conftest import _shared, barrier_task, cli_head, last_json_line, rtd_cli, run_script, wait_for_condition
from rtd.util.placement_group import (
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from rtd.util.scheduling_strategies import PlacementGroupSchedulingStrategy

PG_INIT_ARGS = {"num_cpus": 4, "resources": {"custom": 4}}
_pg_runtime = {"up": False}


def _group_resources(resources):
    return {k: v for k, v in resources.items() if "_group_" in k}


def _idle():
    """True when nothing is reserved or used on the 4-CPU runtime."""
    avail = rtd.available_resources()
    return avail.get("CPU") == 4.0 and avail.get("custom") == 4.0 and not _group_resources(avail)


@pytest.fixture
def pg_runtime():
    """A runtime with 4 CPUs and 4 ``custom`` (room for several bundles), shared by the
    tests of this module that ask for it. Groups a test leaves behind are removed after
    it, so every test starts with the node idle."""
    up = _pg_runtime["up"] and rtd.is_initialized() and rtd.cluster_resources().get("CPU") == 4.0
    if not up:
        rtd.shutdown()
        # The conftest's shared runtime is no longer the one that is up.
        _shared["up"] = False
        rtd.init(**PG_INIT_ARGS)
        _pg_runtime["up"] = True
    wait_for_condition(_idle, timeout=10)
    yield rtd
    if rtd.is_initialized():
        for pg_hex, entry in placement_group_table().items():
            if entry["state"] != "REMOVED":
                from rtd.util.placement_group import PlacementGroup

                remove_placement_group(PlacementGroup(bytes.fromhex(pg_hex)))
        wait_for_condition(_idle, timeout=15)


def _interval_task():
    @rtd.remote(num_cpus=1)
    def interval(delay):
        import time

        start = time.time()
        time.sleep(delay)
        return start, time.time()

    return interval


def _in_bundle(pg, index=-1, capture=None):
    return PlacementGroupSchedulingStrategy(
        pg, placement_group_bundle_index=index, placement_group_capture_child_tasks=capture
    )


# --- creation and reservation ------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["PACK", "SPREAD", "STRICT_PACK"])
def test_group_that_fits_becomes_created(pg_runtime, strategy):
    pg = placement_group([{"CPU": 1}, {"CPU": 2}], strategy=strategy)
    assert rtd.get(pg.ready(), timeout=10) == pg
    assert pg.wait(5) is True
    table = placement_group_table(pg)
    assert table["state"] == "CREATED"
    assert table["strategy"] == strategy
    assert table["placement_group_id"] == pg.id.hex()
    assert table["bundles"] == {0: {"CPU": 1.0}, 1: {"CPU": 2.0}}
    node_id = rtd.get_runtime_context().get_node_id()
    assert table["bundles_to_node_id"] == {0: node_id, 1: node_id}


@pytest.mark.parametrize("strategy", ["PACK", "SPREAD", "STRICT_PACK"])
def test_created_group_reserves_its_bundles(pg_runtime, strategy):
    pg = placement_group([{"CPU": 1}, {"CPU": 2, "custom": 3}], strategy=strategy)
    assert pg.wait(5)
    hex_id = pg.id.hex()
    avail = rtd.available_resources()
    assert avail["CPU"] == 1.0
    assert avail["custom"] == 1.0
    assert avail[f"CPU_group_{hex_id}"] == 3.0
    assert avail[f"CPU_group_0_{hex_id}"] == 1.0
    assert avail[f"CPU_group_1_{hex_id}"] == 2.0
    assert avail[f"custom_group_{hex_id}"] == 3.0
    assert avail[f"custom_group_1_{hex_id}"] == 3.0
    assert f"custom_group_0_{hex_id}" not in avail
    # The reservation is the cluster's too; the node's own totals are unchanged.
    total = rtd.cluster_resources()
    assert total["CPU"] == 4.0 and total["custom"] == 4.0
    assert total[f"CPU_group_{hex_id}"] == 3.0


def test_named_group_carries_its_name_and_is_not_detached(pg_runtime):
    pg = placement_group([{"CPU": 1}], name="pg-named")
    assert pg.wait(5)
    table = placement_group_table(pg)
    assert table["name"] == "pg-named"
    assert table["is_detached"] is False


# --- all or nothing -------------------------------------------------------------------------


def test_strict_spread_of_two_bundles_on_one_node_stays_pending_and_reserves_nothing(pg_runtime):
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    assert pg.wait(1) is False
    assert placement_group_table(pg)["state"] == "PENDING"
    assert _idle(), rtd.available_resources()


def test_strict_spread_of_one_bundle_is_created(pg_runtime):
    pg = placement_group([{"CPU": 1}], strategy="STRICT_SPREAD")
    assert pg.wait(5)
    assert rtd.available_resources()["CPU"] == 3.0


def test_bundle_larger_than_the_node_stays_pending_not_an_error(pg_runtime):
    pg = placement_group([{"CPU": 8}])
    assert pg.wait(1) is False
    assert placement_group_table(pg)["state"] == "PENDING"
    with pytest.raises(rtd.exceptions.GetTimeoutError):
        rtd.get(pg.ready(), timeout=0.5)
    assert _idle(), rtd.available_resources()


def test_group_whose_second_bundle_does_not_fit_reserves_none_of_its_bundles(pg_runtime):
    # The first bundle alone would fit; all or nothing means it is not held either.
    pg = placement_group([{"CPU": 2}, {"CPU": 3}], strategy="PACK")
    assert pg.wait(1) is False
    assert placement_group_table(pg)["state"] == "PENDING"
    assert placement_group_table(pg)["bundles_to_node_id"] == {}
    assert _idle(), rtd.available_resources()


def test_pending_group_is_created_once_resources_free_up(pg_runtime):
    first = placement_group([{"CPU": 2}, {"CPU": 2}])
    assert first.wait(5)
    second = placement_group([{"CPU": 3}])
    assert second.wait(0.5) is False
    assert placement_group_table(second)["state"] == "PENDING"
    remove_placement_group(first)
    start = time.monotonic()
    assert second.wait(10) is True
    assert time.monotonic() - start < 5
    assert placement_group_table(second)["state"] == "CREATED"
    assert rtd.get(second.ready(), timeout=10) == second
    assert rtd.available_resources()["CPU"] == 1.0


def test_ready_resolves_once_a_pending_group_is_created(pg_runtime):
    blocker = placement_group([{"CPU": 4}])
    assert blocker.wait(5)
    pg = placement_group([{"CPU": 1}])
    ready = pg.ready()
    with pytest.raises(rtd.exceptions.GetTimeoutError):
        rtd.get(ready, timeout=0.5)
    remove_placement_group(blocker)
    assert rtd.get(ready, timeout=10) == pg


@pytest.mark.timeout(60)
def test_ready_is_not_ready_in_wait_until_the_group_is_created(pg_runtime):
    blocker = placement_group([{"CPU": 4}])
    assert blocker.wait(5)
    pg = placement_group([{"CPU": 1}])
    ready = pg.ready()
    assert rtd.wait([ready], timeout=0.3) == ([], [ready])
    remove_placement_group(blocker)
    assert rtd.wait([ready], timeout=10) == ([ready], [])
    assert rtd.get(ready) == pg


@pytest.mark.timeout(60)
def test_ready_of_a_group_removed_before_it_was_created_raises(pg_runtime):
    pg = placement_group([{"CPU": 8}])
    ready = pg.ready()
    remove_placement_group(pg)
    with pytest.raises(rtd.exceptions.TaskUnschedulableError, match="removed"):
        rtd.get(ready, timeout=10)


@pytest.mark.timeout(60)
def test_ready_taken_before_removal_keeps_its_group_and_one_taken_after_raises(pg_runtime):
    pg = placement_group([{"CPU": 1}])
    before = pg.ready()
    assert rtd.get(before, timeout=10) == pg
    remove_placement_group(pg)
    assert rtd.get(before, timeout=10) == pg
    with pytest.raises(rtd.exceptions.TaskUnschedulableError, match="removed"):
        rtd.get(pg.ready(), timeout=10)


@pytest.mark.timeout(60)
def test_many_groups_created_at_once_all_become_ready(pg_runtime):
    groups = [placement_group([{"custom": 0.01}]) for _ in range(200)]
    assert rtd.get([g.ready() for g in groups], timeout=30) == groups
    assert rtd.available_resources()["custom"] == pytest.approx(2.0)


@pytest.mark.timeout(60)
def test_ready_ref_can_be_passed_to_a_task(pg_runtime):
    @rtd.remote(num_cpus=0)
    def unwrap(refs):
        return rtd.get(refs[0])

    pg = placement_group([{"CPU": 1}])
    assert rtd.get(unwrap.remote([pg.ready()]), timeout=10) == pg


# --- tasks and actors in bundles ---------------------------------------------------------


def test_two_one_cpu_tasks_in_one_one_cpu_bundle_do_not_overlap(pg_runtime):
    pg = placement_group([{"CPU": 1}, {"CPU": 1}])
    assert pg.wait(5)
    interval = _interval_task().options(scheduling_strategy=_in_bundle(pg, 0))
    spans = rtd.get([interval.remote(0.5) for _ in range(2)], timeout=30)
    (s1, e1), (s2, e2) = sorted(spans)
    assert s2 >= e1, spans


def test_tasks_in_different_bundles_run_at_the_same_time(pg_runtime, tmp_path):
    pg = placement_group([{"CPU": 1}, {"CPU": 1}])
    assert pg.wait(5)
    meet = barrier_task()
    refs = [meet.options(scheduling_strategy=_in_bundle(pg, i)).remote(str(tmp_path), i, 2, 15) for i in range(2)]
    assert rtd.get(refs, timeout=30) == [True, True]


def test_task_in_a_bundle_is_assigned_that_bundles_resources(pg_runtime):
    pg = placement_group([{"CPU": 1}, {"CPU": 1}])
    assert pg.wait(5)

    @rtd.remote(num_cpus=1)
    def assigned():
        import rtd

        return rtd.get_runtime_context().get_assigned_resources()

    hex_id = pg.id.hex()
    in_one = rtd.get(assigned.options(scheduling_strategy=_in_bundle(pg, 1)).remote(), timeout=20)
    assert in_one.get(f"CPU_group_1_{hex_id}") == 1.0, in_one
    assert "CPU" not in in_one
    in_any = rtd.get(assigned.options(scheduling_strategy=_in_bundle(pg, -1)).remote(), timeout=20)
    assert in_any.get(f"CPU_group_{hex_id}") == 1.0, in_any
    assert "CPU" not in in_any


def test_tasks_with_bundle_index_minus_one_use_any_bundle(pg_runtime, tmp_path):
    pg = placement_group([{"CPU": 1}, {"CPU": 1}])
    assert pg.wait(5)
    meet = barrier_task().options(scheduling_strategy=_in_bundle(pg, -1))
    # Two 1-CPU tasks fit only if they go to different bundles.
    assert rtd.get([meet.remote(str(tmp_path), i, 2, 15) for i in range(2)], timeout=30) == [True, True]


def test_task_in_a_group_runs_while_the_group_holds_every_cpu(pg_runtime):
    pg = placement_group([{"CPU": 4}])
    assert pg.wait(5)

    @rtd.remote(num_cpus=1)
    def work(x):
        return x * 2

    # Outside the group there is no CPU left; inside it there is.
    outside = work.remote(1)
    assert rtd.get(work.options(scheduling_strategy=_in_bundle(pg, 0)).remote(21), timeout=20) == 42
    with pytest.raises(rtd.exceptions.GetTimeoutError):
        rtd.get(outside, timeout=0.5)
    remove_placement_group(pg)
    assert rtd.get(outside, timeout=20) == 2


def test_task_asking_more_than_its_bundle_waits(pg_runtime):
    pg = placement_group([{"CPU": 1}, {"CPU": 2}])
    assert pg.wait(5)

    @rtd.remote(num_cpus=2)
    def work():
        return "ran"

    too_big = work.options(scheduling_strategy=_in_bundle(pg, 0)).remote()
    assert rtd.get(work.options(scheduling_strategy=_in_bundle(pg, 1)).remote(), timeout=20) == "ran"
    with pytest.raises(rtd.exceptions.GetTimeoutError):
        rtd.get(too_big, timeout=0.5)
    rtd.cancel(too_big)


def test_actor_in_a_bundle_works_and_holds_the_bundles_cpu(pg_runtime):
    pg = placement_group([{"CPU": 1}, {"CPU": 1}])
    assert pg.wait(5)
    hex_id = pg.id.hex()

    @rtd.remote(num_cpus=1)
    class Counter:
        def __init__(self):
            self.n = 0

        def incr(self):
            self.n += 1
            return self.n

    actor = Counter.options(scheduling_strategy=_in_bundle(pg, 0)).remote()
    assert rtd.get([actor.incr.remote() for _ in range(3)], timeout=20) == [1, 2, 3]
    wait_for_condition(lambda: rtd.available_resources().get(f"CPU_group_0_{hex_id}", 0) == 0)
    avail = rtd.available_resources()
    assert avail[f"CPU_group_1_{hex_id}"] == 1.0
    assert avail[f"CPU_group_{hex_id}"] == 1.0
    assert avail["CPU"] == 2.0
    rtd.kill(actor)
    wait_for_condition(lambda: rtd.available_resources().get(f"CPU_group_0_{hex_id}") == 1.0)


def test_capture_child_tasks_puts_children_in_the_group(pg_runtime):
    pg = placement_group([{"CPU": 1}, {"CPU": 1}])
    assert pg.wait(5)
    hex_id = pg.id.hex()

    @rtd.remote(num_cpus=1)
    def child():
        import rtd

        return sorted(rtd.get_runtime_context().get_assigned_resources())

    @rtd.remote(num_cpus=1)
    def parent():
        import rtd
        from rtd.util.placement_group import get_current_placement_group

        current = get_current_placement_group()
        return (current.id.hex() if current else None), rtd.get(child.remote())

    current, child_resources = rtd.get(
        parent.options(scheduling_strategy=_in_bundle(pg, 0, capture=True)).remote(), timeout=30
    )
    assert current == hex_id
    assert f"CPU_group_{hex_id}" in child_resources, child_resources
    assert "CPU" not in child_resources


def test_without_capture_children_run_outside_the_group(pg_runtime):
    pg = placement_group([{"CPU": 1}, {"CPU": 1}])
    assert pg.wait(5)

    @rtd.remote(num_cpus=1)
    def child():
        import rtd

        return sorted(rtd.get_runtime_context().get_assigned_resources())

    @rtd.remote(num_cpus=1)
    def parent():
        import rtd

        return rtd.get(child.remote())

    child_resources = rtd.get(parent.options(scheduling_strategy=_in_bundle(pg, 0)).remote(), timeout=30)
    assert child_resources == ["CPU"]


def test_group_handle_passed_to_a_task_schedules_work_in_the_group(pg_runtime):
    pg = placement_group([{"CPU": 1}, {"custom": 2}])
    assert pg.wait(5)
    hex_id = pg.id.hex()

    @rtd.remote(num_cpus=0, resources={"custom": 2})
    def child():
        import rtd

        return rtd.get_runtime_context().get_assigned_resources()

    @rtd.remote(num_cpus=1)
    def parent(group):
        import rtd
        from rtd.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=1)
        return group.id.hex(), rtd.get(child.options(scheduling_strategy=strategy).remote())

    got_hex, child_resources = rtd.get(parent.remote(pg), timeout=30)
    assert got_hex == hex_id
    assert child_resources.get(f"custom_group_1_{hex_id}") == 2.0, child_resources


def test_current_placement_group_inside_a_task_in_a_group_is_that_group(pg_runtime):
    # As Ray's get_current_placement_group docstring: the group the task belongs to,
    # whether or not it captures child tasks.
    pg = placement_group([{"CPU": 1}])
    assert pg.wait(5)

    @rtd.remote(num_cpus=1)
    def current():
        from rtd.util.placement_group import get_current_placement_group

        return get_current_placement_group()

    assert rtd.get(current.options(scheduling_strategy=_in_bundle(pg, 0)).remote(), timeout=20) == pg


def test_current_placement_group_is_none_in_the_driver(pg_runtime):
    assert get_current_placement_group() is None


def test_rtd_util_exports_the_placement_group_api():
    # As `ray.util`: the functions are reachable without naming the submodule.
    import rtd.util

    for name in (
        "placement_group",
        "remove_placement_group",
        "placement_group_table",
        "get_placement_group",
        "get_current_placement_group",
    ):
        assert callable(getattr(rtd.util, name, None)), name
    assert rtd.util.scheduling_strategies.PlacementGroupSchedulingStrategy is PlacementGroupSchedulingStrategy


# --- removal --------------------------------------------------------------------------------


def test_remove_returns_the_reserved_resources(pg_runtime):
    pg = placement_group([{"CPU": 1}, {"CPU": 2, "custom": 2}])
    assert pg.wait(5)
    assert rtd.available_resources()["CPU"] == 1.0
    remove_placement_group(pg)
    wait_for_condition(_idle, timeout=5)
    assert not _group_resources(rtd.cluster_resources())


def test_removed_group_is_marked_removed_in_the_table(pg_runtime):
    pg = placement_group([{"CPU": 1}])
    assert pg.wait(5)
    remove_placement_group(pg)
    wait_for_condition(lambda: placement_group_table(pg)["state"] == "REMOVED", timeout=5)
    assert placement_group_table()[pg.id.hex()]["state"] == "REMOVED"


def test_removing_a_pending_group_stops_it_from_being_created(pg_runtime):
    blocker = placement_group([{"CPU": 4}])
    assert blocker.wait(5)
    pg = placement_group([{"CPU": 1}])
    assert placement_group_table(pg)["state"] == "PENDING"
    # A second pending group that needs every CPU: the retry loop that would pick up `pg`
    # is the one that creates it, and it fits only if `pg` took nothing.
    probe = placement_group([{"CPU": 4}])
    remove_placement_group(pg)
    remove_placement_group(blocker)
    assert probe.wait(10), "the removed group took resources when the blocker freed them"
    assert pg.wait(0.5) is False
    assert placement_group_table(pg)["state"] == "REMOVED"
    remove_placement_group(probe)
    wait_for_condition(_idle, timeout=5)


def test_remove_kills_the_actors_in_the_group(pg_runtime):
    pg = placement_group([{"CPU": 1}])
    assert pg.wait(5)

    @rtd.remote(num_cpus=1)
    class Pinger:
        def ping(self):
            return "pong"

    actor = Pinger.options(scheduling_strategy=_in_bundle(pg, 0)).remote()
    assert rtd.get(actor.ping.remote(), timeout=20) == "pong"
    remove_placement_group(pg)

    def dead():
        with pytest.raises(rtd.exceptions.RayActorError):
            rtd.get(actor.ping.remote(), timeout=5)
        return True

    wait_for_condition(dead, timeout=15)
    wait_for_condition(_idle, timeout=10)


def _started_long_running_task():
    @rtd.remote(num_cpus=1)
    def long_running(path):
        import time

        open(path, "w").close()
        time.sleep(60)
        return "finished"

    return long_running


def _assert_fails_soon(ref, within=8):
    """``rtd.get(ref)`` raises an rtd error (not a timeout) within ``within`` seconds."""
    start = time.monotonic()
    with pytest.raises(rtd.exceptions.RayError) as info:
        rtd.get(ref, timeout=within)
    assert not isinstance(info.value, rtd.exceptions.GetTimeoutError), (
        f"still waiting {within} s after its placement group was removed"
    )
    assert time.monotonic() - start < within
    return info.value


def test_remove_fails_a_task_running_in_the_group(pg_runtime, tmp_path):
    pg = placement_group([{"CPU": 1}])
    assert pg.wait(5)
    started = tmp_path / "started"
    long_running = _started_long_running_task().options(max_retries=0, scheduling_strategy=_in_bundle(pg, 0))
    ref = long_running.remote(str(started))
    wait_for_condition(started.exists, timeout=20)
    remove_placement_group(pg)
    error = _assert_fails_soon(ref)
    assert isinstance(error, rtd.exceptions.WorkerCrashedError), repr(error)
    wait_for_condition(_idle, timeout=10)


def test_remove_fails_a_task_with_retries_running_in_the_group(pg_runtime, tmp_path):
    # With the default retries the task is resubmitted to the group, which is gone:
    # the retry has to fail too rather than wait for the group's resources forever.
    pg = placement_group([{"CPU": 1}])
    assert pg.wait(5)
    started = tmp_path / "started"
    ref = _started_long_running_task().options(scheduling_strategy=_in_bundle(pg, 0)).remote(str(started))
    wait_for_condition(started.exists, timeout=20)
    remove_placement_group(pg)
    _assert_fails_soon(ref)


def test_remove_fails_a_task_still_queued_for_the_group(pg_runtime, tmp_path):
    # As Ray's TaskPlacementGroupRemoved: a task waiting for its bundle when the group
    # is removed fails instead of waiting for resources that will never come back.
    pg = placement_group([{"CPU": 1}])
    assert pg.wait(5)
    started = tmp_path / "started"
    long_running = _started_long_running_task().options(max_retries=0, scheduling_strategy=_in_bundle(pg, 0))
    running = long_running.remote(str(started))
    wait_for_condition(started.exists, timeout=20)
    queued = long_running.remote(str(tmp_path / "never"))
    with pytest.raises(rtd.exceptions.GetTimeoutError):
        rtd.get(queued, timeout=0.3)
    remove_placement_group(pg)
    _assert_fails_soon(running)
    _assert_fails_soon(queued)
    assert not (tmp_path / "never").exists()


# --- lookup ------------------------------------------------------------------------------


def test_get_placement_group_by_name_returns_the_same_group(pg_runtime):
    pg = placement_group([{"CPU": 1}, {"custom": 1}], name="pg-lookup")
    assert pg.wait(5)
    found = get_placement_group("pg-lookup")
    assert found == pg
    assert found.id.hex() == pg.id.hex()
    assert found.bundle_specs == [{"CPU": 1.0}, {"custom": 1.0}]
    # The handle found by name schedules work in the group.

    @rtd.remote(num_cpus=0, resources={"custom": 1})
    def f():
        return "in group"

    assert rtd.get(f.options(scheduling_strategy=_in_bundle(found, 1)).remote(), timeout=20) == "in group"


def test_get_placement_group_with_an_unknown_name_raises_value_error(pg_runtime):
    with pytest.raises(ValueError):
        get_placement_group("pg-no-such-group")


def test_get_placement_group_after_removal_raises_value_error(pg_runtime):
    pg = placement_group([{"CPU": 1}], name="pg-removed-name")
    assert pg.wait(5)
    remove_placement_group(pg)
    with pytest.raises(ValueError):
        get_placement_group("pg-removed-name")


def test_placement_group_table_lists_every_group_by_hex_id(pg_runtime):
    a = placement_group([{"CPU": 1}], name="pg-table-a")
    b = placement_group([{"CPU": 16}], strategy="SPREAD")
    assert a.wait(5)
    table = placement_group_table()
    assert {a.id.hex(), b.id.hex()} <= set(table)
    assert table[a.id.hex()]["state"] == "CREATED"
    assert table[a.id.hex()]["name"] == "pg-table-a"
    assert table[b.id.hex()]["state"] == "PENDING"
    assert table[b.id.hex()]["strategy"] == "SPREAD"
    assert table[a.id.hex()] == placement_group_table(a)


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bundles",
    [
        [],
        [{}],
        [{"CPU": 1}, {}],
        [{"CPU": 0}],
        [{"CPU": 0, "custom": 0}],
        [{"CPU": -1}],
        [{"CPU": 1, "custom": -0.5}],
        [{"CPU": "one"}],
        "CPU",
        [["CPU", 1]],
    ],
    ids=repr,
)
def test_bad_bundles_raise_value_error(pg_runtime, bundles):
    before = set(placement_group_table())
    with pytest.raises(ValueError):
        placement_group(bundles)
    assert set(placement_group_table()) == before
    assert _idle()


def test_bad_strategy_raises_value_error(pg_runtime):
    before = set(placement_group_table())
    with pytest.raises(ValueError):
        placement_group([{"CPU": 1}], strategy="FOO")
    with pytest.raises(ValueError):
        placement_group([{"CPU": 1}], strategy="pack")
    assert set(placement_group_table()) == before


def test_bad_lifetime_raises_value_error(pg_runtime):
    with pytest.raises(ValueError):
        placement_group([{"CPU": 1}], lifetime="forever")


@pytest.mark.parametrize("index", [2, 5, -2])
def test_bundle_index_out_of_range_raises_value_error(pg_runtime, index):
    pg = placement_group([{"CPU": 1}, {"CPU": 1}])
    assert pg.wait(5)

    @rtd.remote(num_cpus=1)
    def f():
        return 1

    with pytest.raises(ValueError):
        f.options(scheduling_strategy=_in_bundle(pg, index)).remote()

    @rtd.remote(num_cpus=1)
    class A:
        pass

    with pytest.raises(ValueError):
        A.options(scheduling_strategy=_in_bundle(pg, index)).remote()


@pytest.mark.parametrize("not_a_group", [None, "pg-name", b"\x00" * 18])
def test_remove_placement_group_of_a_non_group_raises_type_error(pg_runtime, not_a_group):
    with pytest.raises(TypeError):
        remove_placement_group(not_a_group)


def test_a_handle_whose_id_is_not_18_bytes_raises_value_error(pg_runtime):
    from rtd.util.placement_group import PlacementGroup

    with pytest.raises(ValueError, match="18 bytes"):
        PlacementGroup(b"\x01" * 17).wait(1)
    with pytest.raises(ValueError, match="18 bytes"):
        remove_placement_group(PlacementGroup(b"\x01" * 19))


def test_a_bundle_request_names_its_group_and_a_resource_that_merely_contains_group_does_not():
    from rtd import _core

    pg_id = bytes(range(18))
    request = _core.bundle_request({"CPU": 1.0, "my_group_x": 2.0}, pg_id, 0)
    assert request[f"my_group_x_group_0_{pg_id.hex()}"] == 2.0
    assert request[f"bundle_group_0_{pg_id.hex()}"] == 0.001
    assert _core.placement_group_of_resources(list(request)) == pg_id
    assert _core.placement_group_of_resources(["CPU", "my_group_x", "team_group_1"]) is None


# --- detached groups and `rtd status` on a CLI-started node --------------------------------


@pytest.fixture
def cli_node():
    """A node started with `rtd start --head --num-cpus 2`; its temp dir."""
    rtd.shutdown()
    _shared["up"] = False
    _pg_runtime["up"] = False
    with cli_head("rtd-pg-") as path:
        yield path


def _create_groups_and_exit(temp_dir):
    """Driver 1: a named detached group and a named non-detached group, both CREATED."""
    result = run_script(
        f"""
        import json, rtd
        from rtd.util.placement_group import placement_group, placement_group_table
        rtd.init(address="auto", _temp_dir={temp_dir!r})
        detached = placement_group([{{"CPU": 1}}], name="pg-detached", lifetime="detached")
        owned = placement_group([{{"CPU": 1}}], name="pg-owned")
        assert detached.wait(10) and owned.wait(10)
        print(json.dumps([detached.id.hex(), owned.id.hex(), placement_group_table(detached)["is_detached"]]))
        """
    )
    assert result.returncode == 0, result.stderr
    return last_json_line(result.stdout)


def test_detached_group_outlives_its_driver_and_a_non_detached_one_does_not(cli_node):
    detached_hex, owned_hex, is_detached = _create_groups_and_exit(cli_node)
    assert is_detached is True
    result = run_script(
        f"""
        import json, time, rtd
        from rtd.util.placement_group import get_placement_group, placement_group_table
        rtd.init(address="auto", _temp_dir={cli_node!r})
        found = get_placement_group("pg-detached")
        state = placement_group_table(found)["state"]
        # The first driver's non-detached group goes with its connection.
        deadline = time.monotonic() + 10
        owned_error = None
        while time.monotonic() < deadline:
            try:
                get_placement_group("pg-owned")
            except ValueError as e:
                owned_error = type(e).__name__
                break
            time.sleep(0.05)
        print(json.dumps([found.id.hex(), state, owned_error, rtd.available_resources().get("CPU")]))
        """
    )
    assert result.returncode == 0, result.stderr
    found_hex, state, owned_error, cpu = last_json_line(result.stdout)
    assert found_hex == detached_hex
    assert state == "CREATED"
    assert owned_error == "ValueError"
    assert cpu == 1.0


def test_rtd_status_shows_what_placement_groups_reserve(cli_node):
    _create_groups_and_exit(cli_node)

    def status_line():
        status = rtd_cli("status", "--temp-dir", cli_node)
        assert status.returncode == 0, status.stderr
        cpu = [line for line in status.stdout.splitlines() if line.strip().endswith(")") and " CPU " in line]
        return status.stdout, cpu

    # Once the non-detached group is gone, only the detached one's CPU is reserved.
    def settled():
        _, cpu = status_line()
        return cpu and "1.0/2.0 CPU (0.0 used of 1.0 reserved in placement groups)" in cpu[0]

    try:
        wait_for_condition(settled, timeout=10)
    except RuntimeError:
        raise AssertionError(status_line()[0]) from None
    stdout, _ = status_line()
    assert "_group_" not in stdout, stdout


# --- GPUs in bundles -------------------------------------------------------------------------


def test_work_in_gpu_bundles_sees_only_the_gpus_its_bundle_reserved(start_runtime, tmp_path):
    start_runtime(num_cpus=4, num_gpus=4)
    # Bundle 0 takes one GPU, bundle 1 two: three distinct devices in all.
    pg = placement_group([{"CPU": 1, "GPU": 1}, {"CPU": 1, "GPU": 2}], strategy="PACK")
    assert pg.wait(10)

    @rtd.remote(num_cpus=0)
    def gpus(path=None, n=0):
        import os
        import time

        if path:
            # Hold the GPUs until n tasks hold theirs, so none reuses another's share.
            open(os.path.join(path, f"arrived_{os.getpid()}"), "w").close()
            deadline = time.monotonic() + 10
            while len(os.listdir(path)) < n and time.monotonic() < deadline:
                time.sleep(0.02)
        return os.environ.get("CUDA_VISIBLE_DEVICES"), [int(i) for i in rtd.get_gpu_ids()]

    def devices(visible):
        assert visible is not None
        return sorted(int(d) for d in visible.split(","))

    whole0 = rtd.get(gpus.options(num_gpus=1, scheduling_strategy=_in_bundle(pg, 0)).remote(), timeout=30)
    whole1 = rtd.get(gpus.options(num_gpus=2, scheduling_strategy=_in_bundle(pg, 1)).remote(), timeout=30)
    assert devices(whole0[0]) == whole0[1] and len(whole0[1]) == 1
    assert devices(whole1[0]) == sorted(whole1[1]) and len(whole1[1]) == 2
    assert not set(whole0[1]) & set(whole1[1]), (whole0, whole1)
    reserved = set(whole0[1]) | set(whole1[1])

    # Two half-GPU tasks at once in bundle 0 share its one device.
    halves = rtd.get(
        [gpus.options(num_gpus=0.5, scheduling_strategy=_in_bundle(pg, 0)).remote(str(tmp_path), 2) for _ in range(2)],
        timeout=30,
    )
    assert [h[1] for h in halves] == [whole0[1], whole0[1]], halves
    # Two one-GPU tasks at once in bundle 1 get its two devices, one each.
    ones_dir = tmp_path / "ones"
    ones_dir.mkdir()
    ones = rtd.get(
        [gpus.options(num_gpus=1, scheduling_strategy=_in_bundle(pg, 1)).remote(str(ones_dir), 2) for _ in range(2)],
        timeout=30,
    )
    assert sorted(o[1][0] for o in ones) == sorted(whole1[1]), ones
    # Any bundle (index -1): still one of the group's devices.
    anywhere = rtd.get(gpus.options(num_gpus=1, scheduling_strategy=_in_bundle(pg)).remote(), timeout=30)
    assert set(anywhere[1]) <= reserved and len(anywhere[1]) == 1, anywhere
    # Outside the group, work gets the device nobody reserved.
    outside = rtd.get(gpus.options(num_gpus=1).remote(), timeout=30)
    assert outside[1] and not set(outside[1]) & reserved, (outside, reserved)


def test_an_actor_in_a_gpu_bundle_holds_that_bundles_gpu(start_runtime):
    start_runtime(num_cpus=2, num_gpus=2)
    pg = placement_group([{"CPU": 1, "GPU": 1}])
    assert pg.wait(10)

    @rtd.remote(num_gpus=1)
    class GpuActor:
        def gpus(self):
            import os

            return os.environ.get("CUDA_VISIBLE_DEVICES"), [int(i) for i in rtd.get_gpu_ids()]

    actor = GpuActor.options(scheduling_strategy=_in_bundle(pg, 0)).remote()
    visible, ids = rtd.get(actor.gpus.remote(), timeout=30)
    assert len(ids) == 1 and visible == str(ids[0])
    # The bundle's GPU is the actor's; the node's other GPU is left for everyone else.
    assert rtd.available_resources().get("GPU") == 1.0
    rtd.kill(actor)
