"""Resources: fractional CPUs, custom resources, GPUs, OMP_NUM_THREADS, the cluster
queries, and infeasible tasks."""

import time

import pytest
import rtd
from conftest import barrier_task, run_script, wait_for_condition


def _interval_task():
    @rtd.remote
    def interval(delay):
        import time

        start = time.time()
        time.sleep(delay)
        return start, time.time()

    return interval


# --- on the shared runtime (num_cpus=2) -------------------------------------------------


def test_half_cpu_tasks_run_four_at_a_time_on_two_cpus(shared_runtime, tmp_path):
    meet = barrier_task().options(num_cpus=0.5)
    assert rtd.get([meet.remote(str(tmp_path), i, 4, 15) for i in range(4)], timeout=30) == [True] * 4


def test_one_cpu_tasks_run_at_most_two_at_a_time_on_two_cpus(shared_runtime):
    interval = _interval_task()
    spans = rtd.get([interval.remote(0.4) for _ in range(3)], timeout=30)
    # At any task's start, at most one other task is running.
    for start, _ in spans:
        running = sum(1 for s, e in spans if s <= start < e)
        assert running <= 2, spans


def test_task_with_two_cpus_sees_omp_num_threads_2(shared_runtime):
    @rtd.remote(num_cpus=2)
    def omp():
        import os

        return os.environ.get("OMP_NUM_THREADS")

    assert rtd.get(omp.remote()) == "2"
    assert rtd.get(omp.options(num_cpus=1).remote()) == "1"


def test_cluster_resources_has_rays_shape(shared_runtime):
    total = rtd.cluster_resources()
    assert total["CPU"] == 2.0
    assert "GPU" not in total
    assert all(isinstance(k, str) and isinstance(v, float) for k, v in total.items())


def test_nodes_has_rays_shape(shared_runtime):
    nodes = rtd.nodes()
    assert isinstance(nodes, list) and len(nodes) == 1
    node = nodes[0]
    assert node["Alive"] is True
    assert isinstance(node["NodeID"], str) and len(node["NodeID"]) == 56
    int(node["NodeID"], 16)
    assert node["Resources"]["CPU"] == 2.0
    assert node["NodeID"] == rtd.get_runtime_context().get_node_id()


def test_available_resources_are_all_free_when_idle(shared_runtime):
    wait_for_condition(lambda: rtd.available_resources().get("CPU") == 2.0)


def test_available_resources_drop_while_a_long_task_runs(shared_runtime, tmp_path):
    flag = str(tmp_path / "release")

    @rtd.remote(num_cpus=1)
    def hold(path):
        import os
        import time

        while not os.path.exists(path):
            time.sleep(0.02)
        return "released"

    wait_for_condition(lambda: rtd.available_resources().get("CPU") == 2.0)
    ref = hold.remote(flag)
    wait_for_condition(lambda: rtd.available_resources().get("CPU") == 1.0)
    open(flag, "w").close()
    assert rtd.get(ref, timeout=10) == "released"
    wait_for_condition(lambda: rtd.available_resources().get("CPU") == 2.0)


@pytest.mark.timeout(60)
def test_infeasible_task_does_not_block_a_feasible_one(shared_runtime):
    @rtd.remote
    def work(x):
        return x

    infeasible = work.options(num_cpus=100).remote("never")
    start = time.monotonic()
    assert rtd.get(work.remote("feasible"), timeout=10) == "feasible"
    assert time.monotonic() - start < 5
    with pytest.raises(rtd.exceptions.GetTimeoutError):
        rtd.get(infeasible, timeout=1)
    rtd.cancel(infeasible)


@pytest.mark.timeout(60)
def test_infeasible_task_warns_on_the_driver_stderr():
    proc = run_script(
        """
        import rtd
        rtd.init(num_cpus=1)

        @rtd.remote(num_cpus=100)
        def impossible():
            return 1

        ref = impossible.remote()
        try:
            rtd.get(ref, timeout=2)
        except rtd.exceptions.GetTimeoutError:
            print("timed out")
        rtd.shutdown()
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "timed out" in proc.stdout
    warning_lines = [line for line in proc.stderr.splitlines() if "CPU" in line and "100" in line]
    assert warning_lines, proc.stderr


# --- own runtimes ------------------------------------------------------------------------


def test_custom_resource_limits_concurrency(start_runtime):
    start_runtime(num_cpus=2, resources={"custom": 1})
    interval = _interval_task().options(resources={"custom": 1}, num_cpus=0.5)
    (s1, e1), (s2, e2) = rtd.get([interval.remote(0.5), interval.remote(0.5)], timeout=30)
    assert e1 <= s2 or e2 <= s1, ((s1, e1), (s2, e2))


def test_custom_resource_shows_in_the_task_assigned_resources(start_runtime):
    start_runtime(num_cpus=2, resources={"custom": 1})
    assert rtd.cluster_resources()["custom"] == 1.0

    @rtd.remote(resources={"custom": 1})
    def uses_custom():
        return rtd.get_runtime_context().get_assigned_resources().get("custom")

    assert rtd.get(uses_custom.remote(), timeout=10) == 1.0


def test_task_with_one_gpu_sees_one_cuda_visible_device(start_runtime):
    start_runtime(num_cpus=2, num_gpus=2)
    assert rtd.cluster_resources()["GPU"] == 2.0

    @rtd.remote(num_gpus=1)
    def gpu_env():
        import os

        return os.environ.get("CUDA_VISIBLE_DEVICES"), rtd.get_gpu_ids()

    visible, ids = rtd.get(gpu_env.remote(), timeout=10)
    assert visible is not None and len(visible.split(",")) == 1
    assert len(ids) == 1
    # Ray returns ints (strings only when CUDA_VISIBLE_DEVICES was set before start).
    assert [str(i) for i in ids] == [visible]


def test_concurrent_gpu_tasks_get_different_gpus(start_runtime, tmp_path):
    start_runtime(num_cpus=2, num_gpus=2)

    @rtd.remote(num_gpus=1)
    def gpu_then_meet(path, i):
        import os
        import time

        open(os.path.join(path, f"arrived_{i}"), "w").close()
        deadline = time.monotonic() + 10
        while len(os.listdir(path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    visible = rtd.get([gpu_then_meet.remote(str(tmp_path), i) for i in range(2)], timeout=30)
    assert all(v is not None and "," not in v for v in visible), visible
    assert len(set(visible)) == 2, visible


def test_get_gpu_ids_is_empty_in_the_driver(start_runtime):
    start_runtime(num_cpus=1, num_gpus=1)
    assert rtd.get_gpu_ids() == []
