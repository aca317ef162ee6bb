"""Multi-node clusters on one machine (``rtd.cluster_utils.Cluster``): every node is a real
node daemon with its own raylet, object store and workers, talking to the others over TCP
on 127.0.0.1.

Most tests share one module-scoped cluster (the driver connects to its head):

    head  num_cpus=1
    B     num_cpus=2, resources={"alice": 1}
    C     num_cpus=2, resources={"bob": 1}

Tests that kill nodes get small clusters of their own (``failure_cluster``), with
``RTD_NODE_TIMEOUT_MS=1500`` so silent nodes are declared dead quickly. The last part
drives a cluster started with the `rtd` command line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
import rtd
from conftest import (
    assert_session_gone,
    last_json_line,
    pid_alive,
    rtd_cli,
    run_script,
    session_processes,
    spilled_bytes,
    wait_for_condition,
    wait_for_views,
)
from rtd.cluster_utils import Cluster, _free_port
from rtd.util.placement_group import placement_group, placement_group_table, remove_placement_group
from rtd.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

# A node id of the right shape (28 bytes, hex) that no node has.
MISSING_NODE = "ab" * 28
NODE_ID_RE = re.compile(r"[0-9a-f]{56}")
TIMEOUT = 30  # bound on every get that should succeed

# Which cluster the driver (this process) is connected to.
_connected = {"address": None}


def _connect(address):
    if rtd.is_initialized() and _connected["address"] == address:
        return
    if rtd.is_initialized():
        rtd.shutdown()
    rtd.init(address=address)
    _connected["address"] = address


def _disconnect():
    if rtd.is_initialized():
        rtd.shutdown()
    _connected["address"] = None


class Nodes:
    """The shared cluster and its node ids by role."""

    def __init__(self, cluster, b, c):
        self.cluster = cluster
        self.head = cluster.head_node.node_id
        self.b = b.node_id
        self.c = c.node_id
        self.all = {self.head, self.b, self.c}
        self.name = {self.head: "head", self.b: "B", self.c: "C"}

    def names(self, ids):
        return sorted(self.name.get(i, i) for i in ids)


_shared = {"nodes": None}


def _shared_down():
    nodes, _shared["nodes"] = _shared["nodes"], None
    if nodes is not None:
        if _connected["address"] == nodes.cluster.address:
            _disconnect()
        nodes.cluster.shutdown()


@pytest.fixture(scope="module")
def _shared_cluster():
    """Holds the module's three-node cluster (made on first use); shut down at the end."""
    try:
        yield _shared
    finally:
        _disconnect()
        _shared_down()


@pytest.fixture
def nodes(_shared_cluster):
    """The shared three-node cluster, with this driver connected to it."""
    if _shared["nodes"] is None:
        _disconnect()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1}, shutdown_at_exit=False)
        try:
            b = cluster.add_node(num_cpus=2, resources={"alice": 1})
            c = cluster.add_node(num_cpus=2, resources={"bob": 1})
            cluster.wait_for_nodes()
        except BaseException:
            cluster.shutdown()
            raise
        # Let every node hear of the others (see test_a_node_that_just_joined_can_fetch_objects).
        _wait_until_every_raylet_sees(cluster, [cluster.head_node, b, c])
        _shared["nodes"] = Nodes(cluster, b, c)
    _connect(_shared["nodes"].cluster.address)
    yield _shared["nodes"]


def _wait_until_every_raylet_sees(cluster, alive):
    """Waits until every raylet's view of ``cluster`` holds exactly the nodes ``alive``,
    each alive."""
    ids = {node.node_id for node in alive}
    wait_for_views(cluster.address, lambda view: {i for i, n in view.items() if n["Alive"]} == ids)


def _where():
    @rtd.remote
    def where(sleep_s=0.0):
        import time

        import rtd

        time.sleep(sleep_s)
        return rtd.get_runtime_context().get_node_id()

    return where


# Nodes report to the head every 100 ms, and each raylet refreshes its view of the other
# nodes every 100 ms: decisions taken before a view shows a change see the cluster as it
# was. Tests that depend on a change wait until every view shows it.


def _wait_idle(expected_cpus):
    """Waits until every raylet's view of the cluster shows all ``expected_cpus`` CPUs
    free (leases are returned a few ms after their last task)."""

    def all_free(view):
        return sum(n["AvailableResources"].get("CPU", 0) for n in view.values()) == expected_cpus

    wait_for_views(_connected["address"], all_free)


def _wait_until_b_is_full(nodes):
    """Waits until every raylet's view shows B with no free ``alice``."""
    wait_for_views(nodes.cluster.address, lambda view: view[nodes.b]["AvailableResources"].get("alice", 0) == 0)


# --- nodes and resources --------------------------------------------------------------


def test_nodes_lists_all_three_alive_with_56_hex_char_ids(nodes):
    listed = rtd.nodes()
    alive = [n for n in listed if n["Alive"]]
    assert {n["NodeID"] for n in alive} == nodes.all
    for n in alive:
        assert NODE_ID_RE.fullmatch(n["NodeID"]), n["NodeID"]
        assert n["NodeManagerAddress"] == "127.0.0.1"
    assert [n["NodeID"] for n in alive if n["IsHead"]] == [nodes.head]
    by_id = {n["NodeID"]: n for n in alive}
    assert by_id[nodes.head]["Resources"]["CPU"] == 1.0
    assert by_id[nodes.b]["Resources"]["CPU"] == 2.0
    assert by_id[nodes.b]["Resources"]["alice"] == 1.0
    assert "bob" not in by_id[nodes.b]["Resources"]
    assert by_id[nodes.c]["Resources"]["bob"] == 1.0
    assert "alice" not in by_id[nodes.c]["Resources"]
    # The driver runs on the head node.
    assert rtd.get_runtime_context().get_node_id() == nodes.head


def test_cluster_resources_sum_over_all_nodes(nodes):
    total = rtd.cluster_resources()
    assert total["CPU"] == 5.0
    assert total["alice"] == 1.0
    assert total["bob"] == 1.0
    per_node = [n["Resources"] for n in rtd.nodes() if n["Alive"]]
    assert total["object_store_memory"] == sum(r["object_store_memory"] for r in per_node)
    assert total["memory"] == sum(r["memory"] for r in per_node)


def test_available_resources_cover_the_whole_cluster(nodes):
    _wait_idle(5.0)
    available = rtd.available_resources()
    assert available["alice"] == 1.0 and available["bob"] == 1.0
    assert available["object_store_memory"] == rtd.cluster_resources()["object_store_memory"]

    # A busy remote node shows up in the cluster's free resources.
    @rtd.remote(resources={"alice": 1}, num_cpus=2)
    def hold(sleep_s):
        import time

        time.sleep(sleep_s)
        return 1

    ref = hold.remote(3.0)
    wait_for_condition(
        lambda: rtd.available_resources().get("CPU") == 3.0 and "alice" not in rtd.available_resources(),
        timeout=10,
    )
    assert rtd.get(ref, timeout=TIMEOUT) == 1
    _wait_idle(5.0)
    assert rtd.available_resources()["alice"] == 1.0


# --- custom resources as node labels ---------------------------------------------------


def test_custom_resources_pin_tasks_to_the_nodes_that_have_them(nodes):
    where = _where()
    on_b = rtd.get([where.options(resources={"alice": 1}).remote() for _ in range(3)], timeout=TIMEOUT)
    on_c = rtd.get([where.options(resources={"bob": 1}).remote() for _ in range(3)], timeout=TIMEOUT)
    assert on_b == [nodes.b] * 3, nodes.names(on_b)
    assert on_c == [nodes.c] * 3, nodes.names(on_c)
    # Fractions of a label too.
    assert rtd.get(where.options(resources={"bob": 0.25}).remote(), timeout=TIMEOUT) == nodes.c


# --- spillback ---------------------------------------------------------------------------


def test_tasks_that_do_not_fit_on_the_head_spill_to_other_nodes(nodes):
    _wait_idle(5.0)
    where = _where()
    refs = [where.remote(1.0) for _ in range(4)]
    ran_on = rtd.get(refs, timeout=TIMEOUT)
    assert set(ran_on) <= nodes.all
    assert len(set(ran_on)) > 1, f"all four 1-CPU tasks ran on {nodes.names(set(ran_on))}"


def test_a_task_infeasible_on_the_head_runs_on_a_node_that_fits_it(nodes):
    where = _where()
    ran_on = rtd.get([where.options(num_cpus=2).remote() for _ in range(2)], timeout=TIMEOUT)
    assert set(ran_on) <= {nodes.b, nodes.c}, nodes.names(ran_on)


def test_nested_tasks_spill_from_a_worker_node(nodes):
    """A task on B submits through B's raylet; children that do not fit there spill on."""

    @rtd.remote(resources={"alice": 1})
    def parent():
        import rtd

        @rtd.remote(num_cpus=2, resources={"bob": 0.5})
        def child():
            import rtd

            return rtd.get_runtime_context().get_node_id()

        return rtd.get_runtime_context().get_node_id(), rtd.get(child.remote(), timeout=30)

    assert rtd.get(parent.remote(), timeout=TIMEOUT) == (nodes.b, nodes.c)


# --- SPREAD --------------------------------------------------------------------------------


def test_spread_tasks_touch_every_node(nodes):
    _wait_idle(5.0)
    where = _where()
    ran_on = rtd.get([where.options(scheduling_strategy="SPREAD").remote(0.5) for _ in range(9)], timeout=TIMEOUT)
    assert set(ran_on) == nodes.all, nodes.names(ran_on)


def test_spread_actors_land_on_distinct_nodes(nodes):
    _wait_idle(5.0)

    @rtd.remote(scheduling_strategy="SPREAD")
    class Where:
        def node(self):
            import rtd

            return rtd.get_runtime_context().get_node_id()

    actors = [Where.remote() for _ in range(3)]
    try:
        ran_on = rtd.get([a.node.remote() for a in actors], timeout=TIMEOUT)
        assert set(ran_on) == nodes.all, nodes.names(ran_on)
    finally:
        for a in actors:
            rtd.kill(a)


# --- node affinity ---------------------------------------------------------------------------


def test_hard_node_affinity_runs_on_that_node(nodes):
    _wait_idle(5.0)
    where = _where()
    for target in (nodes.c, nodes.b, nodes.head):
        strategy = NodeAffinitySchedulingStrategy(node_id=target, soft=False)
        ran_on = rtd.get([where.options(scheduling_strategy=strategy).remote() for _ in range(3)], timeout=TIMEOUT)
        assert ran_on == [target] * 3, (nodes.name[target], nodes.names(ran_on))


def test_hard_node_affinity_to_a_busy_node_waits_for_it(nodes):
    """Hard affinity never runs elsewhere, not even while the named node is busy."""
    _wait_idle(5.0)
    where = _where()
    busy = where.options(num_cpus=2, resources={"alice": 1}).remote(2.0)  # all of B
    _wait_until_b_is_full(nodes)
    strategy = NodeAffinitySchedulingStrategy(node_id=nodes.b, soft=False)
    pinned = where.options(scheduling_strategy=strategy).remote()
    assert rtd.get(busy, timeout=TIMEOUT) == nodes.b
    got = rtd.get(pinned, timeout=TIMEOUT)
    assert got == nodes.b, f"the task pinned to busy B ran on {nodes.name.get(got, got)}"


def test_spread_tasks_avoid_a_busy_node_only_while_it_is_busy(nodes, tmp_path):
    _wait_idle(5.0)
    where = _where()
    release = tmp_path / "release"

    @rtd.remote
    def hold(path):
        """Occupies its node until the test creates ``path`` (at most 30 s)."""
        import os
        import time

        import rtd

        deadline = time.monotonic() + 30
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.02)
        return rtd.get_runtime_context().get_node_id()

    # B stays full for as long as the spread tasks take, however slow the machine.
    busy = hold.options(num_cpus=2, resources={"alice": 1}).remote(str(release))
    try:
        _wait_until_b_is_full(nodes)
        ran_on = rtd.get([where.options(scheduling_strategy="SPREAD").remote(0.3) for _ in range(3)], timeout=TIMEOUT)
    finally:
        release.touch()
    assert set(ran_on) == {nodes.head, nodes.c}, nodes.names(ran_on)
    assert rtd.get(busy, timeout=TIMEOUT) == nodes.b
    # Free again, B takes its share.
    _wait_idle(5.0)
    ran_on = rtd.get([where.options(scheduling_strategy="SPREAD").remote(0.5) for _ in range(9)], timeout=TIMEOUT)
    assert nodes.b in ran_on, nodes.names(ran_on)


def test_soft_node_affinity_to_an_unknown_node_runs_somewhere(nodes):
    where = _where()
    strategy = NodeAffinitySchedulingStrategy(node_id=MISSING_NODE, soft=True)
    assert rtd.get(where.options(scheduling_strategy=strategy).remote(), timeout=TIMEOUT) in nodes.all


def test_hard_node_affinity_to_an_unknown_node_is_unschedulable(nodes):
    where = _where()
    strategy = NodeAffinitySchedulingStrategy(node_id=MISSING_NODE, soft=False)
    with pytest.raises(rtd.exceptions.TaskUnschedulableError):
        rtd.get(where.options(scheduling_strategy=strategy).remote(), timeout=TIMEOUT)


def test_hard_node_affinity_to_a_node_without_the_resources_is_unschedulable(nodes):
    """C is alive but can never provide "alice": waiting there forever helps nobody."""
    where = _where()
    strategy = NodeAffinitySchedulingStrategy(node_id=nodes.c, soft=False)
    with pytest.raises(rtd.exceptions.TaskUnschedulableError):
        rtd.get(where.options(scheduling_strategy=strategy, resources={"alice": 1}).remote(), timeout=TIMEOUT)


def test_hard_node_affinity_places_an_actor_on_that_node(nodes):
    # With the cluster idle, DEFAULT would place the actor on the head: only the
    # strategy can send it to C.
    _wait_idle(5.0)

    @rtd.remote
    class Where:
        def node(self):
            import rtd

            return rtd.get_runtime_context().get_node_id()

    strategy = NodeAffinitySchedulingStrategy(node_id=nodes.c, soft=False)
    actor = Where.options(scheduling_strategy=strategy).remote()
    try:
        got = rtd.get(actor.node.remote(), timeout=TIMEOUT)
        assert got == nodes.c, nodes.name.get(got, got)
    finally:
        rtd.kill(actor)


# --- objects between nodes ---------------------------------------------------------------------

MB20 = 20 * 1024 * 1024 // 8  # float64 elements in 20 MiB


def test_a_large_result_made_on_another_node_reaches_the_driver(nodes):
    @rtd.remote(resources={"alice": 1})
    def make(n):
        import numpy as np
        import rtd

        return rtd.get_runtime_context().get_node_id(), np.arange(n, dtype=np.float64)

    ref = make.remote(MB20)
    node, array = rtd.get(ref, timeout=TIMEOUT)
    assert node == nodes.b
    assert array.shape == (MB20,) and array[0] == 0 and array[-1] == MB20 - 1
    assert float(array.sum()) == MB20 * (MB20 - 1) / 2
    # Getting it again reads the local copy.
    assert float(rtd.get(ref, timeout=TIMEOUT)[1][12345]) == 12345.0


def test_a_large_put_is_read_by_a_task_on_another_node(nodes):
    import numpy as np

    array = np.random.default_rng(0).random(MB20)
    ref = rtd.put(array)

    @rtd.remote(resources={"bob": 1})
    def total(a):
        import rtd

        return rtd.get_runtime_context().get_node_id(), float(a.sum()), a.shape

    node, value, shape = rtd.get(total.remote(ref), timeout=TIMEOUT)
    assert node == nodes.c
    assert shape == array.shape
    assert value == pytest.approx(float(array.sum()), rel=1e-12)


def test_an_object_made_on_b_is_passed_to_a_task_on_c(nodes):
    @rtd.remote(resources={"alice": 1})
    def make(n):
        import numpy as np

        return np.full(n, 3, dtype=np.int64)

    @rtd.remote(resources={"bob": 1})
    def consume(a):
        import rtd

        return rtd.get_runtime_context().get_node_id(), int(a.sum()), int(a.size)

    n = 2_000_000  # 16 MB
    made = make.remote(n)
    assert rtd.get(consume.remote(made), timeout=TIMEOUT) == (nodes.c, 3 * n, n)
    # Small (inline) values travel too.
    small = make.remote(10)
    assert rtd.get(consume.remote(small), timeout=TIMEOUT) == (nodes.c, 30, 10)


def test_nested_refs_are_resolved_inside_a_task_on_another_node(nodes):
    import numpy as np

    @rtd.remote(resources={"alice": 1})
    def make(n):
        import numpy as np

        return np.ones(n, dtype=np.float64)

    @rtd.remote(resources={"bob": 1})
    def unpack(refs):
        import rtd

        assert all(isinstance(r, rtd.ObjectRef) for r in refs)
        values = rtd.get(refs, timeout=30)
        return rtd.get_runtime_context().get_node_id(), [float(np.asarray(v).sum()) for v in values]

    put_ref = rtd.put(np.arange(1_000_000, dtype=np.float64))  # on the head
    task_ref = make.remote(1_500_000)  # on B
    node, sums = rtd.get(unpack.remote([put_ref, task_ref, rtd.put(7)]), timeout=TIMEOUT)
    assert node == nodes.c
    assert sums == [float(np.arange(1_000_000).sum()), 1_500_000.0, 7.0]


def test_a_task_on_another_node_returns_a_ref_to_an_object_it_put(nodes):
    @rtd.remote(resources={"alice": 1})
    def make():
        import numpy as np
        import rtd

        return [rtd.put(np.full(1_000_000, 2.0))]

    [inner] = rtd.get(make.remote(), timeout=TIMEOUT)
    assert float(rtd.get(inner, timeout=TIMEOUT).sum()) == 2_000_000.0


def test_an_actor_on_another_node_borrows_a_ref_until_it_dies(nodes):
    @rtd.remote(resources={"alice": 0.5})
    class Keeper:
        def keep(self, refs):
            self.refs = refs
            return rtd.get_runtime_context().get_node_id()

        def total(self):
            return float(rtd.get(self.refs[0], timeout=30).sum())

    import numpy as np

    def known(hex_id):
        return hex_id in rtd._core.get_all_reference_counts()

    keeper = Keeper.remote()
    inner = rtd.put(np.ones(300_000))
    hex_id = inner.hex()
    assert rtd.get(keeper.keep.remote([inner]), timeout=TIMEOUT) == nodes.b
    del inner
    # The owner (this driver) counts the actor on B as its only holder now.
    borrowers = rtd._core.get_all_reference_counts()[hex_id]["borrowers"]
    assert list(borrowers.values()) == [1], borrowers
    assert rtd.get(keeper.total.remote(), timeout=TIMEOUT) == 300_000.0
    # The owner sees the borrower's process exit over gRPC and frees the object.
    rtd.kill(keeper)
    wait_for_condition(lambda: not known(hex_id), timeout=TIMEOUT)


def test_wait_sees_objects_made_on_other_nodes(nodes):
    where = _where()
    refs = [where.options(resources={"alice": 0.5}).remote(0.2), where.options(resources={"bob": 0.5}).remote(0.2)]
    ready, not_ready = rtd.wait(refs, num_returns=2, timeout=TIMEOUT)
    assert len(ready) == 2 and not not_ready
    assert set(rtd.get(ready, timeout=TIMEOUT)) == {nodes.b, nodes.c}


# --- actors on other nodes ------------------------------------------------------------------------


def _counter_class():
    @rtd.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def incr(self, by=1):
            self.n += by
            return self.n

        def node(self):
            import rtd

            return rtd.get_runtime_context().get_node_id()

        def pid(self):
            import os

            return os.getpid()

    return Counter


def test_an_actor_with_a_custom_resource_lives_on_that_node(nodes):
    counter = _counter_class().options(resources={"alice": 0.5}).remote()
    try:
        assert rtd.get(counter.node.remote(), timeout=TIMEOUT) == nodes.b
        assert rtd.get([counter.incr.remote() for _ in range(5)], timeout=TIMEOUT) == [1, 2, 3, 4, 5]
    finally:
        rtd.kill(counter)


def test_an_actor_on_b_is_called_from_a_task_on_c(nodes):
    counter = _counter_class().options(resources={"alice": 0.5}).remote()

    @rtd.remote(resources={"bob": 1})
    def call(handle, times):
        import rtd

        values = rtd.get([handle.incr.remote(10) for _ in range(times)], timeout=30)
        return rtd.get_runtime_context().get_node_id(), values, rtd.get(handle.node.remote(), timeout=30)

    try:
        assert rtd.get(counter.incr.remote(), timeout=TIMEOUT) == 1
        node, values, actor_node = rtd.get(call.remote(counter, 3), timeout=TIMEOUT)
        assert node == nodes.c
        assert actor_node == nodes.b
        assert values == [11, 21, 31]
        # The driver sees the calls the task made.
        assert rtd.get(counter.incr.remote(), timeout=TIMEOUT) == 32
    finally:
        rtd.kill(counter)


def test_actor_handles_pass_between_actors_on_different_nodes(nodes):
    counter = _counter_class().options(resources={"alice": 0.5}).remote()

    @rtd.remote(resources={"bob": 0.5})
    class Caller:
        def __init__(self, handle):
            self.handle = handle

        def bump(self):
            import rtd

            return rtd.get(self.handle.incr.remote(), timeout=30)

        def where(self):
            import rtd

            return rtd.get_runtime_context().get_node_id(), rtd.get(self.handle.node.remote(), timeout=30)

        def handle_in_a_list(self):
            return [self.handle]

    caller = Caller.remote(counter)
    try:
        assert rtd.get(caller.where.remote(), timeout=TIMEOUT) == (nodes.c, nodes.b)
        assert rtd.get([caller.bump.remote() for _ in range(3)], timeout=TIMEOUT) == [1, 2, 3]
        # A handle that went to C and came back still reaches the actor on B.
        [back] = rtd.get(caller.handle_in_a_list.remote(), timeout=TIMEOUT)
        assert rtd.get(back.incr.remote(), timeout=TIMEOUT) == 4
    finally:
        rtd.kill(caller)
        rtd.kill(counter)


def test_an_actor_created_by_a_task_on_another_node(nodes):
    @rtd.remote(resources={"bob": 0.5})
    def create_and_call():
        import rtd

        @rtd.remote(resources={"alice": 0.5})
        class A:
            def node(self):
                import rtd

                return rtd.get_runtime_context().get_node_id()

        a = A.remote()
        out = rtd.get(a.node.remote(), timeout=30)
        rtd.kill(a)
        return rtd.get_runtime_context().get_node_id(), out

    assert rtd.get(create_and_call.remote(), timeout=TIMEOUT) == (nodes.c, nodes.b)


def test_an_actor_method_returns_a_large_array_to_the_driver(nodes):
    @rtd.remote(resources={"bob": 0.5})
    class Maker:
        def make(self, n):
            import numpy as np

            return np.full(n, 1.5)

    maker = Maker.remote()
    try:
        array = rtd.get(maker.make.remote(MB20), timeout=TIMEOUT)
        assert array.shape == (MB20,) and float(array.sum()) == 1.5 * MB20
    finally:
        rtd.kill(maker)


# --- placement groups across nodes -------------------------------------------------------------


def _remove(pg):
    try:
        remove_placement_group(pg)
    except Exception:  # noqa: BLE001 - best-effort cleanup
        pass


def test_strict_spread_places_one_bundle_per_node_and_tasks_follow_their_bundles(nodes):
    _wait_idle(5.0)
    pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
    try:
        assert pg.wait(timeout_seconds=20)
        table = placement_group_table(pg)
        assert table["state"] == "CREATED"
        placed = table["bundles_to_node_id"]
        assert set(placed) == {0, 1, 2}
        assert set(placed.values()) == nodes.all, nodes.names(placed.values())
        where = _where()
        for index in range(3):
            strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index)
            ran_on = rtd.get([where.options(scheduling_strategy=strategy).remote() for _ in range(2)], timeout=10)
            assert ran_on == [placed[index]] * 2, (index, nodes.names(ran_on), nodes.name[placed[index]])
        # An actor in a bundle lives on the bundle's node.
        counter = _counter_class().options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=2)
        ).remote()
        assert rtd.get(counter.node.remote(), timeout=TIMEOUT) == placed[2]
        rtd.kill(counter)
    finally:
        _remove(pg)
    _wait_idle(5.0)


def test_strict_pack_lands_on_one_node_with_room_for_both_bundles(nodes):
    _wait_idle(5.0)
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    try:
        assert pg.wait(timeout_seconds=20)
        placed = placement_group_table(pg)["bundles_to_node_id"]
        assert len(set(placed.values())) == 1
        assert set(placed.values()) <= {nodes.b, nodes.c}, nodes.names(placed.values())
        where = _where()
        strategy = PlacementGroupSchedulingStrategy(pg)
        ran_on = rtd.get([where.options(scheduling_strategy=strategy).remote(0.2) for _ in range(4)], timeout=10)
        assert set(ran_on) == set(placed.values())
    finally:
        _remove(pg)
    _wait_idle(5.0)


def test_strict_spread_over_more_bundles_than_nodes_stays_pending(nodes):
    _wait_idle(5.0)
    pg = placement_group([{"CPU": 1}] * 4, strategy="STRICT_SPREAD")
    try:
        assert not pg.wait(timeout_seconds=1)
        table = placement_group_table(pg)
        assert table["state"] == "PENDING"
        assert table["bundles_to_node_id"] == {}
        # It reserves nothing meanwhile.
        assert rtd.available_resources()["CPU"] == 5.0
    finally:
        _remove(pg)


def test_spread_group_uses_several_nodes(nodes):
    _wait_idle(5.0)
    pg = placement_group([{"CPU": 1}] * 4, strategy="SPREAD")
    try:
        assert pg.wait(timeout_seconds=20)
        placed = placement_group_table(pg)["bundles_to_node_id"]
        assert len(set(placed.values())) == 3, nodes.names(placed.values())
    finally:
        _remove(pg)
    _wait_idle(5.0)


# --- work that fits no node waits for one ---------------------------------------------------


def test_infeasible_task_and_actor_wait_until_a_node_that_fits_joins(nodes):
    where = _where()
    ref = where.options(resources={"carol": 1}).remote()
    counter = _counter_class().options(resources={"carol": 0.5}).remote()
    call = counter.node.remote()
    with pytest.raises(rtd.exceptions.GetTimeoutError):
        rtd.get(ref, timeout=1)
    assert rtd.wait([call], timeout=0.1) == ([], [call])
    cluster = nodes.cluster
    carol = cluster.add_node(num_cpus=1, resources={"carol": 1})
    try:
        assert rtd.get(ref, timeout=TIMEOUT) == carol.node_id
        assert rtd.get(call, timeout=TIMEOUT) == carol.node_id
        assert rtd.cluster_resources()["CPU"] == 6.0
        rtd.kill(counter)
    finally:
        cluster.remove_node(carol)
    # A gracefully stopped node is dead at once; the rest of the cluster is unchanged.
    wait_for_condition(lambda: {n["NodeID"] for n in rtd.nodes() if n["Alive"]} == nodes.all, timeout=10)
    assert [n["Alive"] for n in rtd.nodes() if n["NodeID"] == carol.node_id] == [False]
    assert rtd.cluster_resources()["CPU"] == 5.0
    assert "carol" not in rtd.cluster_resources()


# --- more than one cluster ------------------------------------------------------------------------


def test_two_clusters_run_side_by_side_in_one_process(nodes):
    """Each Cluster is separate: its own head, nodes and object stores."""
    from rtd import _core

    other = Cluster(initialize_head=False, shutdown_at_exit=False)
    try:
        other.add_node(num_cpus=1)
        other.add_node(num_cpus=1, resources={"elsewhere": 1})
        listed = _core.query_nodes(other.address)
        assert len([n for n in listed if n["Alive"]]) == 2
        assert not {n["NodeID"] for n in listed} & nodes.all
    finally:
        other.shutdown()
    # The shared cluster is unharmed.
    assert _alive_ids() == nodes.all
    where = _where()
    assert rtd.get(where.options(resources={"bob": 1}).remote(), timeout=TIMEOUT) == nodes.c


# --- failures: nodes that die ----------------------------------------------------------------------


@pytest.fixture
def failure_cluster(monkeypatch, _shared_cluster):
    """A factory for a small cluster of its own, whose nodes are declared dead 1.5 s after
    they stop reporting: ``make(*worker_node_args) -> (cluster, [worker nodes])``.

    The shared cluster is shut down first: two ``Cluster`` objects of one process name
    their nodes' sessions (and so their /dev/shm files) alike (see
    test_two_clusters_run_side_by_side_in_one_process)."""
    monkeypatch.setenv("RTD_NODE_TIMEOUT_MS", "1500")
    made = []

    def make(*worker_args, settle=True):
        _disconnect()
        _shared_down()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1}, shutdown_at_exit=False)
        made.append(cluster)
        workers = [cluster.add_node(**args) for args in worker_args]
        cluster.wait_for_nodes()
        if settle:
            # Let every node hear of the others (see test_a_node_that_just_joined_can_fetch_objects).
            _wait_until_every_raylet_sees(cluster, cluster.list_all_nodes())
        _connect(cluster.address)
        return cluster, workers

    yield make
    _disconnect()
    for cluster in made:
        for node in cluster.list_all_nodes():
            try:
                os.kill(node.process.pid, signal.SIGCONT)
            except OSError:
                pass
        cluster.shutdown()


def _alive_ids():
    return {n["NodeID"] for n in rtd.nodes() if n["Alive"]}


def _started_marker(tmp_path):
    path = tmp_path / "started"
    return str(path)


def test_a_node_that_just_joined_can_fetch_objects(failure_cluster):
    """Work may reach a node as soon as the head lists it; its arguments must be
    fetchable then, not only once the node has heard of the others."""
    import numpy as np

    cluster, (x, y) = failure_cluster(
        {"num_cpus": 1, "resources": {"x": 1}}, {"num_cpus": 1, "resources": {"y": 1}}, settle=False
    )
    put_ref = rtd.put(np.arange(1_000_000, dtype=np.float64))

    @rtd.remote
    def total(a):
        import rtd

        return rtd.get_runtime_context().get_node_id(), float(a.sum())

    expected = float(np.arange(1_000_000).sum())
    refs = [total.options(resources={"y": 1}).remote(put_ref), total.options(resources={"x": 1}).remote(put_ref)]
    assert rtd.get(refs, timeout=TIMEOUT) == [(y.node_id, expected), (x.node_id, expected)]
    # And a node added later, to a cluster that is up.
    z = cluster.add_node(num_cpus=1, resources={"z": 1})
    assert rtd.get(total.options(resources={"z": 1}).remote(put_ref), timeout=TIMEOUT) == (z.node_id, expected)


def _long_task(max_retries):
    """A 3 s task on a ``pin`` node that appends the node's id to ``marker`` as it starts."""

    @rtd.remote(resources={"pin": 1}, max_retries=max_retries)
    def long_task(marker):
        import time

        import rtd

        node = rtd.get_runtime_context().get_node_id()
        with open(marker, "a") as f:
            f.write(node + "\n")
        time.sleep(3)
        return node

    return long_task


def test_a_killed_node_is_marked_dead_and_its_running_task_is_retried_elsewhere(failure_cluster, tmp_path):
    pinned = {"num_cpus": 1, "resources": {"pin": 1}}
    cluster, (x, y) = failure_cluster(pinned, dict(pinned))
    marker = _started_marker(tmp_path)

    long_task = _long_task(max_retries=3)

    ref = long_task.remote(marker)
    wait_for_condition(lambda: os.path.exists(marker) and open(marker).read().strip(), timeout=20)
    first = open(marker).read().split()[0]
    victim, survivor = (x, y) if first == x.node_id else (y, x)
    assert first == victim.node_id
    cluster.remove_node(victim, allow_graceful=False)
    wait_for_condition(lambda: victim.node_id not in _alive_ids(), timeout=10)
    assert [n["Alive"] for n in rtd.nodes() if n["NodeID"] == victim.node_id] == [False]
    assert rtd.cluster_resources()["CPU"] == 2.0
    assert rtd.cluster_resources()["pin"] == 1.0
    assert rtd.get(ref, timeout=TIMEOUT) == survivor.node_id
    assert open(marker).read().split() == [victim.node_id, survivor.node_id]


def test_a_task_without_retries_on_a_killed_node_fails_with_a_ray_error(failure_cluster, tmp_path):
    cluster, (x,) = failure_cluster({"num_cpus": 1, "resources": {"x": 1}})
    marker = _started_marker(tmp_path)

    @rtd.remote(resources={"x": 1}, max_retries=0)
    def long_task(marker):
        import time

        open(marker, "w").write("started")
        time.sleep(30)
        return 1

    ref = long_task.remote(marker)
    wait_for_condition(lambda: os.path.exists(marker), timeout=20)
    cluster.remove_node(x, allow_graceful=False)
    start = time.monotonic()
    with pytest.raises(rtd.exceptions.RayError) as info:
        rtd.get(ref, timeout=TIMEOUT)
    assert not isinstance(info.value, rtd.exceptions.GetTimeoutError)
    assert time.monotonic() - start < 15


def test_a_node_that_stops_reporting_is_declared_dead_after_the_timeout(failure_cluster):
    """A frozen node keeps its connection open: only its silence tells the head."""
    cluster, (x, y) = failure_cluster({"num_cpus": 1}, {"num_cpus": 1})
    os.kill(x.process.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        wait_for_condition(lambda: x.node_id not in _alive_ids(), timeout=15)
        took = time.monotonic() - stopped
        assert took >= 1.0, f"declared dead after {took:.2f} s, before RTD_NODE_TIMEOUT_MS=1500 passed"
        assert _alive_ids() == {cluster.head_node.node_id, y.node_id}
        # Work goes to the nodes that are left.
        where = _where()
        ran_on = rtd.get([where.options(scheduling_strategy="SPREAD").remote() for _ in range(4)], timeout=TIMEOUT)
        assert x.node_id not in ran_on
    finally:
        os.kill(x.process.pid, signal.SIGCONT)
    # Woken up, the node hears that it is no longer part of the cluster and stops.
    try:
        x.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("a node declared dead kept running after it resumed")
    assert x.node_id not in _alive_ids()


def test_work_on_a_frozen_node_fails_over_once_the_node_is_declared_dead(failure_cluster, tmp_path):
    """A node whose daemon and workers all hang (as behind a network partition) closes no
    connection; once the head declares it dead, its work must still move, as in Ray: the
    running retriable task is retried and the actor restarts on the other node."""
    pinned = {"num_cpus": 1, "resources": {"pin": 2}}
    cluster, (x, y) = failure_cluster(pinned, dict(pinned))
    counter = _counter_class().options(resources={"pin": 1}, max_restarts=1).remote()
    victim_id = rtd.get(counter.node.remote(), timeout=TIMEOUT)
    victim, survivor = (x, y) if victim_id == x.node_id else (y, x)
    marker = _started_marker(tmp_path)

    long_task = _long_task(max_retries=2)

    strategy = NodeAffinitySchedulingStrategy(node_id=victim.node_id, soft=True)
    ref = long_task.options(scheduling_strategy=strategy).remote(marker)
    wait_for_condition(lambda: os.path.exists(marker) and open(marker).read().strip(), timeout=20)
    assert open(marker).read().split() == [victim.node_id]
    frozen = [victim.process.pid] + session_processes(victim.session_dir)
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        wait_for_condition(lambda: victim.node_id not in _alive_ids(), timeout=10)
        # Both get the same 15 s.
        task_node = actor_node = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (task_node is None or actor_node is None):
            if task_node is None and rtd.wait([ref], timeout=0.2)[0]:
                task_node = rtd.get(ref)
            if actor_node is None:
                call = counter.node.remote()
                if rtd.wait([call], timeout=1.0)[0]:
                    try:
                        actor_node = rtd.get(call)
                    except rtd.exceptions.RayActorError:
                        pass
        problems = []
        if task_node != survivor.node_id:
            problems.append(f"the task that ran on the dead node returned {task_node!r} (None: never retried)")
        if actor_node != survivor.node_id:
            problems.append(f"the actor answered from {actor_node!r} (None: calls never reached it again)")
        assert not problems, "; ".join(problems)
    finally:
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        cluster.remove_node(victim, allow_graceful=False)


def test_an_actor_on_a_killed_node_restarts_on_another_node(failure_cluster):
    pinned = {"num_cpus": 1, "resources": {"pin": 1}}
    cluster, (x, y) = failure_cluster(pinned, dict(pinned))
    counter = _counter_class().options(resources={"pin": 0.5}, max_restarts=1).remote()
    old_node = rtd.get(counter.node.remote(), timeout=TIMEOUT)
    assert old_node in (x.node_id, y.node_id)
    assert rtd.get(counter.incr.remote(5), timeout=TIMEOUT) == 5
    victim, survivor = (x, y) if old_node == x.node_id else (y, x)
    cluster.remove_node(victim, allow_graceful=False)

    def restarted():
        return rtd.get(counter.node.remote(), timeout=5) == survivor.node_id

    wait_for_condition(restarted, timeout=20)
    # A restarted actor starts from its constructor.
    assert rtd.get(counter.incr.remote(1), timeout=TIMEOUT) == 1
    assert rtd.get(counter.incr.remote(1), timeout=TIMEOUT) == 2
    # Its one restart is used up: losing this node too ends it.
    cluster.remove_node(survivor, allow_graceful=False)
    with pytest.raises(rtd.exceptions.RayActorError):
        for _ in range(50):
            rtd.get(counter.incr.remote(1), timeout=TIMEOUT)
            time.sleep(0.1)


def test_objects_after_a_node_dies(failure_cluster):
    """A put lives on the driver's node and survives; a value made only on the dead
    node is lost, and ``get`` says so instead of hanging."""
    import numpy as np

    cluster, (x, y) = failure_cluster({"num_cpus": 1, "resources": {"x": 1}}, {"num_cpus": 1, "resources": {"y": 1}})
    put_ref = rtd.put(np.arange(1_000_000, dtype=np.float64))

    @rtd.remote(resources={"x": 1}, max_retries=0)
    def make():
        import numpy as np

        return np.ones(1_000_000)

    @rtd.remote(resources={"y": 1})
    def total(a):
        return float(a.sum())

    lost_ref = make.remote()
    ready, _ = rtd.wait([lost_ref], timeout=TIMEOUT)
    assert ready == [lost_ref]
    # A copy already pulled to another node is not what this test is about: never fetch.
    cluster.remove_node(x, allow_graceful=False)
    wait_for_condition(lambda: x.node_id not in _alive_ids(), timeout=10)

    expected = float(np.arange(1_000_000).sum())
    assert float(rtd.get(put_ref, timeout=TIMEOUT).sum()) == expected
    assert rtd.get(total.remote(put_ref), timeout=TIMEOUT) == expected

    start = time.monotonic()
    with pytest.raises(rtd.exceptions.RayError) as info:
        rtd.get(lost_ref, timeout=TIMEOUT)
    assert isinstance(info.value, rtd.exceptions.ObjectLostError), repr(info.value)
    assert time.monotonic() - start < 15
    # A task that depends on the lost object fails the same way.
    with pytest.raises(rtd.exceptions.RayError) as info:
        rtd.get(total.remote(lost_ref), timeout=TIMEOUT)
    assert not isinstance(info.value, rtd.exceptions.GetTimeoutError), repr(info.value)


def test_scheduling_after_a_node_dies(failure_cluster):
    cluster, (x, y) = failure_cluster({"num_cpus": 1}, {"num_cpus": 1})
    cluster.remove_node(x, allow_graceful=False)
    wait_for_condition(lambda: x.node_id not in _alive_ids(), timeout=10)
    where = _where()
    soft = NodeAffinitySchedulingStrategy(node_id=x.node_id, soft=True)
    assert rtd.get(where.options(scheduling_strategy=soft).remote(), timeout=TIMEOUT) in {
        cluster.head_node.node_id,
        y.node_id,
    }
    hard = NodeAffinitySchedulingStrategy(node_id=x.node_id, soft=False)
    with pytest.raises(rtd.exceptions.TaskUnschedulableError):
        rtd.get(where.options(scheduling_strategy=hard).remote(), timeout=TIMEOUT)
    # STRICT_SPREAD over the two nodes left works; over three it waits.
    pg = placement_group([{"CPU": 1}] * 2, strategy="STRICT_SPREAD")
    try:
        assert pg.wait(timeout_seconds=20)
        assert set(placement_group_table(pg)["bundles_to_node_id"].values()) == {cluster.head_node.node_id, y.node_id}
    finally:
        _remove(pg)


def test_placement_group_bundles_on_a_killed_node_are_placed_again(failure_cluster):
    cluster, (x, y, z) = failure_cluster({"num_cpus": 1}, {"num_cpus": 1}, {"num_cpus": 1})
    pg = placement_group([{"CPU": 1}] * 2, strategy="STRICT_SPREAD")
    try:
        assert pg.wait(timeout_seconds=20)
        placed = placement_group_table(pg)["bundles_to_node_id"]
        workers = {n.node_id: n for n in (x, y, z)}
        victim_index, victim_id = next((i, n) for i, n in placed.items() if n in workers)
        cluster.remove_node(workers[victim_id], allow_graceful=False)

        def moved():
            table = placement_group_table(pg)
            now = table["bundles_to_node_id"]
            return (
                table["state"] == "CREATED"
                and len(now) == 2
                and victim_id not in now.values()
                and len(set(now.values())) == 2
            )

        wait_for_condition(moved, timeout=20)
        # Both bundles hold their CPU again: one on each of two of the three nodes left.
        wait_for_condition(lambda: rtd.available_resources().get("CPU", 0.0) == 1.0, timeout=10)
    finally:
        _remove(pg)


def test_freed_objects_leave_every_node_that_held_a_copy(failure_cluster):
    import numpy as np

    mb = 1024**2
    _, [b] = failure_cluster({"num_cpus": 1, "resources": {"b": 1}, "object_store_memory": 200 * mb})

    @rtd.remote(resources={"b": 1})
    def make(i):
        import numpy as np

        return np.full(50 * mb // 8, i, dtype=np.int64)

    @rtd.remote(resources={"b": 1})
    def first(a):
        return int(a[0])

    # 600 MB through B's 200 MB store: results made on B (primary copies there, read by
    # the driver) and puts on the head read on B (copies there). Each is deleted on every
    # node once freed, so nothing has to spill.
    for i in range(6):
        made = make.remote(i)
        assert int(rtd.get(made, timeout=TIMEOUT)[0]) == i
        del made
        put = rtd.put(np.full(50 * mb // 8, i, dtype=np.int64))
        assert rtd.get(first.remote(put), timeout=TIMEOUT) == i
        del put
    assert spilled_bytes(b.session_dir) == 0


def test_copies_read_on_a_full_node_are_evicted_not_spilled(failure_cluster):
    import numpy as np

    mb = 1024**2
    _, [b] = failure_cluster({"num_cpus": 1, "resources": {"b": 1}, "object_store_memory": 200 * mb})

    @rtd.remote(resources={"b": 1})
    def first(a):
        return int(a[0])

    # Six live 50 MB objects on the head, each read on B: B's 200 MB store makes room by
    # dropping older copies (their primaries stay on the head) instead of spilling them.
    refs = [rtd.put(np.full(50 * mb // 8, i, dtype=np.int64)) for i in range(6)]
    assert rtd.get([first.remote(r) for r in refs], timeout=TIMEOUT) == list(range(6))
    assert spilled_bytes(b.session_dir) == 0
    # A dropped copy is simply pulled again.
    assert rtd.get(first.remote(refs[0]), timeout=TIMEOUT) == 0


def _array_on_one_of_two_pin_nodes(failure_cluster, fill):
    """Two nodes with a "pin" resource; a task with retries left makes an array of
    ``fill`` on one of them. Returns (cluster, that node, the other one, the array's ref)."""
    pinned = {"num_cpus": 1, "resources": {"pin": 1}}
    cluster, (x, y) = failure_cluster(pinned, dict(pinned))

    @rtd.remote(resources={"pin": 1}, max_retries=2, num_returns=2)
    def make(fill):
        import numpy as np
        import rtd

        return rtd.get_runtime_context().get_node_id(), np.full(1_000_000, fill)

    node_ref, array_ref = make.remote(fill)
    # The node id is small (inline, kept by the driver); the array stays on its node.
    made_on = rtd.get(node_ref, timeout=TIMEOUT)
    assert made_on in (x.node_id, y.node_id)
    rtd.wait([array_ref], timeout=TIMEOUT)
    maker, other = (x, y) if made_on == x.node_id else (y, x)
    return cluster, maker, other, array_ref


def _kill_node(cluster, node):
    cluster.remove_node(node, allow_graceful=False)
    wait_for_condition(lambda: node.node_id not in _alive_ids(), timeout=10)


def test_lineage_reconstruction_rebuilds_an_object_lost_with_its_node(failure_cluster):
    """As in Ray: a task result lost with its node is made again by re-running the task
    (it has retries left) on a node that can run it."""
    cluster, victim, _, array_ref = _array_on_one_of_two_pin_nodes(failure_cluster, 4.0)
    _kill_node(cluster, victim)
    start = time.monotonic()
    try:
        array = rtd.get(array_ref, timeout=TIMEOUT)
    except rtd.exceptions.RayError as e:
        pytest.fail(f"the lost object was not reconstructed: {e!r} (after {time.monotonic() - start:.1f} s)")
    assert float(array.sum()) == 4.0 * 1_000_000


def test_a_borrower_that_finds_an_object_lost_has_its_owner_rebuild_it(failure_cluster):
    """As in Ray, reconstruction is the owner's job, whoever noticed the loss: a task that
    borrows a ref to an object lost with its node gets it made again."""
    cluster, victim, _, array_ref = _array_on_one_of_two_pin_nodes(failure_cluster, 3.0)

    # Anywhere but needing no "pin": the rebuild needs the surviving node's.
    @rtd.remote
    def total(refs):
        import rtd

        return float(rtd.get(refs[0], timeout=30).sum())

    _kill_node(cluster, victim)
    assert rtd.get(total.remote([array_ref]), timeout=TIMEOUT) == 3.0 * 1_000_000


def test_a_task_re_run_where_a_copy_of_its_lost_result_is_uses_that_copy(failure_cluster):
    cluster, victim, survivor, array_ref = _array_on_one_of_two_pin_nodes(failure_cluster, 5.0)

    @rtd.remote
    def total(a):
        return float(a.sum())

    # The survivor reads the result, so it holds a copy; then the result's node dies.
    on_survivor = NodeAffinitySchedulingStrategy(node_id=survivor.node_id, soft=False)
    assert rtd.get(total.options(scheduling_strategy=on_survivor).remote(array_ref), timeout=TIMEOUT) == 5e6
    _kill_node(cluster, victim)
    # The task runs again on the survivor, which already has the object.
    assert float(rtd.get(array_ref, timeout=TIMEOUT).sum()) == 5e6
    assert rtd.get(total.options(scheduling_strategy=on_survivor).remote(array_ref), timeout=TIMEOUT) == 5e6


# --- a cluster started with the `rtd` command line ----------------------------------------------

def _daemon_pid(temp_dir):
    with open(os.path.join(temp_dir, "session_latest", "node.json")) as f:
        return json.load(f)["pid"]


def test_cli_head_and_worker_node_form_a_cluster_and_stop_cleans_up(_shared_cluster):
    _disconnect()
    head_dir = tempfile.mkdtemp(prefix="rtd-n-", dir="/tmp")
    worker_dir = tempfile.mkdtemp(prefix="rtd-n-", dir="/tmp")
    port = _free_port()
    try:
        head = rtd_cli("start", "--head", "--port", str(port), "--num-cpus", "1", "--temp-dir", head_dir)
        assert head.returncode == 0, head.stderr
        assert f"--address 127.0.0.1:{port}" in head.stdout
        worker = rtd_cli(
            "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--resources", '{"dave": 1}',
            "--temp-dir", worker_dir,
        )
        assert worker.returncode == 0, worker.stderr
        sessions = [os.path.realpath(os.path.join(d, "session_latest")) for d in (head_dir, worker_dir)]
        pids = [_daemon_pid(head_dir), _daemon_pid(worker_dir)]
        assert all(pid_alive(p) for p in pids)
        result = run_script(
            f"""
            import json, rtd
            rtd.init(address="127.0.0.1:{port}")

            @rtd.remote(resources={{"dave": 1}})
            def where():
                return rtd.get_runtime_context().get_node_id()

            nodes = [n for n in rtd.nodes() if n["Alive"]]
            print(json.dumps({{
                "nodes": sorted(n["NodeID"] for n in nodes),
                "head": [n["NodeID"] for n in nodes if n["IsHead"]],
                "driver": rtd.get_runtime_context().get_node_id(),
                "dave": rtd.get(where.remote(), timeout=30),
                "cpus": rtd.cluster_resources()["CPU"],
            }}))
            rtd.shutdown()
            """
        )
        assert result.returncode == 0, result.stderr
        out = last_json_line(result.stdout)
        assert len(out["nodes"]) == 2
        assert out["cpus"] == 2.0
        (head_id,) = out["head"]
        assert out["driver"] == head_id
        assert out["dave"] in out["nodes"] and out["dave"] != head_id
        # `rtd status` on the worker's machine shows the whole cluster.
        status = rtd_cli("status", "--temp-dir", worker_dir)
        assert status.returncode == 0, status.stderr
        listed = re.findall(r"^Node ([0-9a-f]{56}) \((alive|dead)", status.stdout, re.M)
        assert sorted(listed) == sorted((n, "alive") for n in out["nodes"]), status.stdout
        stopped = [rtd_cli("stop", "--temp-dir", d) for d in (worker_dir, head_dir)]
        assert all(s.returncode == 0 and "Stopped 1" in s.stdout for s in stopped), [s.stdout for s in stopped]
        for session in sessions:
            assert_session_gone(session, pids)
    finally:
        for d in (worker_dir, head_dir):
            rtd_cli("stop", "--temp-dir", d)
            shutil.rmtree(d, ignore_errors=True)


def test_a_worker_node_stops_when_its_head_is_stopped(_shared_cluster):
    _disconnect()
    head_dir = tempfile.mkdtemp(prefix="rtd-n-", dir="/tmp")
    worker_dir = tempfile.mkdtemp(prefix="rtd-n-", dir="/tmp")
    port = _free_port()
    try:
        started = rtd_cli("start", "--head", "--port", str(port), "--num-cpus", "1", "--temp-dir", head_dir)
        assert started.returncode == 0
        # It waits this long for the head to come back (60 s by default).
        worker = rtd_cli(
            "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--temp-dir", worker_dir,
            env={"RTD_GCS_RPC_SERVER_RECONNECT_TIMEOUT_S": "2"},
        )
        assert worker.returncode == 0, worker.stderr
        worker_session = os.path.realpath(os.path.join(worker_dir, "session_latest"))
        worker_pid = _daemon_pid(worker_dir)
        assert rtd_cli("stop", "--temp-dir", head_dir).returncode == 0
        # The worker node loses its head, tries to reach it again for 2 s, and shuts
        # itself down, cleaning up.
        assert_session_gone(worker_session, [worker_pid], timeout=15)
    finally:
        for d in (worker_dir, head_dir):
            rtd_cli("stop", "--temp-dir", d)
            shutil.rmtree(d, ignore_errors=True)


def test_a_task_runs_where_its_large_argument_lives(nodes):
    """Locality: DEFAULT prefers the node holding a task's largest argument."""
    _wait_idle(5.0)

    @rtd.remote(resources={"alice": 1})
    def produce():
        import numpy as np

        return np.ones(5_000_000)

    @rtd.remote
    def consume(array):
        import rtd

        return rtd.get_runtime_context().get_node_id(), float(array.sum())

    data = produce.remote()
    rtd.wait([data], timeout=TIMEOUT)
    for _ in range(3):
        node, total = rtd.get(consume.remote(data), timeout=TIMEOUT)
        assert total == 5_000_000.0
        assert node == nodes.b, nodes.names([node])
