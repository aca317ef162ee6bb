"""Scheduling strategies other than placement groups: "DEFAULT", "SPREAD", node
affinity (hard and soft), and bad strategies. Placement group strategies are tested in
test_placement_groups.py."""

from __future__ import annotations

import pytest
import rtd
from rtd.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

# A node id of the right shape (28 bytes, hex) that no node has.
MISSING_NODE = "ab" * 28


def _where():
    @rtd.remote
    def where():
        import rtd

        return rtd.get_runtime_context().get_node_id()

    return where


def _actor_class():
    @rtd.remote
    class Where:
        def node(self):
            import rtd

            return rtd.get_runtime_context().get_node_id()

    return Where


@pytest.mark.parametrize("strategy", ["DEFAULT", "SPREAD", None])
def test_string_strategies_run_tasks(shared_runtime, strategy):
    where = _where()
    node_id = rtd.get_runtime_context().get_node_id()
    refs = [where.options(scheduling_strategy=strategy).remote() for _ in range(3)]
    assert rtd.get(refs, timeout=30) == [node_id] * 3


def test_strategy_given_in_the_decorator_is_used(shared_runtime):
    @rtd.remote(scheduling_strategy="SPREAD")
    def f(x):
        return x + 1

    assert rtd.get(f.remote(1), timeout=20) == 2


@pytest.mark.parametrize("strategy", ["DEFAULT", "SPREAD"])
def test_string_strategies_place_actors(shared_runtime, strategy):
    actor = _actor_class().options(scheduling_strategy=strategy).remote()
    assert rtd.get(actor.node.remote(), timeout=20) == rtd.get_runtime_context().get_node_id()
    rtd.kill(actor)


@pytest.mark.parametrize("strategy", ["FOO", "spread", "", 42, {"node_id": "x"}], ids=repr)
def test_invalid_strategy_raises_value_error(shared_runtime, strategy):
    where = _where()
    with pytest.raises(ValueError):
        where.options(scheduling_strategy=strategy)
    with pytest.raises(ValueError):

        @rtd.remote(scheduling_strategy=strategy)
        def f():
            return 1

    with pytest.raises(ValueError):
        _actor_class().options(scheduling_strategy=strategy)


def test_placement_group_strategy_without_a_group_raises_value_error(shared_runtime):
    where = _where()
    with pytest.raises(ValueError):
        where.options(scheduling_strategy=PlacementGroupSchedulingStrategy("not a group")).remote()


def test_hard_node_affinity_to_the_local_node_runs_there(shared_runtime):
    node_id = rtd.get_runtime_context().get_node_id()
    where = _where().options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False))
    assert rtd.get(where.remote(), timeout=20) == node_id


def test_hard_node_affinity_to_the_local_node_places_an_actor(shared_runtime):
    node_id = rtd.get_runtime_context().get_node_id()
    actor = _actor_class().options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
    ).remote()
    assert rtd.get(actor.node.remote(), timeout=20) == node_id
    rtd.kill(actor)


def test_soft_node_affinity_to_a_missing_node_runs_anyway(shared_runtime):
    where = _where().options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=MISSING_NODE, soft=True))
    assert rtd.get(where.remote(), timeout=20) == rtd.get_runtime_context().get_node_id()


def test_soft_node_affinity_to_a_missing_node_places_an_actor(shared_runtime):
    actor = _actor_class().options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=MISSING_NODE, soft=True)
    ).remote()
    assert rtd.get(actor.node.remote(), timeout=20) == rtd.get_runtime_context().get_node_id()
    rtd.kill(actor)


def test_hard_node_affinity_to_a_missing_node_fails_the_task(shared_runtime):
    where = _where().options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=MISSING_NODE, soft=False))
    ref = where.remote()
    with pytest.raises(rtd.exceptions.TaskUnschedulableError):
        rtd.get(ref, timeout=10)


def test_hard_node_affinity_to_a_missing_node_fails_every_return(shared_runtime):
    @rtd.remote(num_returns=2)
    def pair():
        return 1, 2

    strategy = NodeAffinitySchedulingStrategy(node_id=MISSING_NODE, soft=False)
    refs = pair.options(scheduling_strategy=strategy).remote()
    assert len(refs) == 2
    for ref in refs:
        with pytest.raises(rtd.exceptions.TaskUnschedulableError):
            rtd.get(ref, timeout=10)


def test_unschedulable_task_does_not_block_other_work(shared_runtime):
    where = _where()
    bad = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=MISSING_NODE, soft=False)).remote()
    assert rtd.get(where.remote(), timeout=20) == rtd.get_runtime_context().get_node_id()
    with pytest.raises(rtd.exceptions.TaskUnschedulableError):
        rtd.get(bad, timeout=10)


def test_hard_node_affinity_to_a_missing_node_fails_actor_creation(shared_runtime):
    with pytest.raises(rtd.exceptions.ActorUnschedulableError):
        _actor_class().options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=MISSING_NODE, soft=False)
        ).remote()
