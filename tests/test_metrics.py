"""Prometheus metrics: every node daemon serves ``/metrics`` (Ray's metric and label
names), the head adds the cluster's tasks and actors, and ``rtd.util.metrics`` values
recorded in drivers, tasks and actors are exported by the node their process runs on.
Scrapes are parsed with ``prometheus_client``'s parser.

The module shares one two-node cluster (head: 1 CPU; worker: 1 CPU and ``alice``); user
metrics are reported every 200 ms so waits stay short.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import urllib.request
import warnings

import numpy as np
import pytest
import rtd
from conftest import rtd_cli, wait_for_condition
from prometheus_client.parser import text_string_to_metric_families
from rtd.cluster_utils import Cluster, _free_port
from rtd.util.metrics import Counter, Gauge, Histogram

TIMEOUT = 20


@pytest.fixture(scope="module")
def cluster():
    os.environ["RTD_METRICS_REPORT_INTERVAL_MS"] = "200"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1, resources={"alice": 1})
    cluster.wait_for_nodes()
    if rtd.is_initialized():
        rtd.shutdown()
    rtd.init(address=cluster.address)
    yield cluster
    rtd.shutdown()
    cluster.shutdown()
    del os.environ["RTD_METRICS_REPORT_INTERVAL_MS"]


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return response.read().decode()


def samples(node, name: str, **labels) -> list:
    """The samples called ``name`` in ``node``'s scrape whose labels include ``labels``."""
    found = []
    for family in text_string_to_metric_families(scrape_text(node.metrics_export_port)):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                found.append(sample)
    return found


def value(node, name: str, **labels) -> float:
    return sum(s.value for s in samples(node, name, **labels))


def cluster_value(cluster, name: str, **labels) -> float:
    return sum(value(node, name, **labels) for node in cluster.list_all_nodes())


def test_every_node_exports_its_resources_with_node_labels(cluster):
    head, worker = cluster.head_node, cluster.worker_nodes[0]
    for node in (head, worker):
        cpu = samples(node, "ray_resources", Name="CPU")
        assert {s.labels["State"] for s in cpu} == {"AVAILABLE", "USED"}
        assert sum(s.value for s in cpu) == 1.0
        assert {s.labels["NodeAddress"] for s in cpu} == {"127.0.0.1"}
        # One cluster, one SessionName: the head's session's, on every node.
        assert {s.labels["SessionName"] for s in cpu} == {os.path.basename(head.session_dir)}
    assert value(worker, "ray_resources", Name="alice", State="AVAILABLE") == 1.0
    assert samples(head, "ray_resources", Name="alice") == []
    # Both nodes' scrapes carry the node gauges; the worker has no cluster view.
    assert samples(worker, "ray_workers", State="IDLE")
    assert samples(head, "ray_scheduler_tasks", State="Waiting")
    assert "ray_tasks" not in scrape_text(worker.metrics_export_port)


def test_object_store_memory_grows_after_a_large_put(cluster):
    head = cluster.head_node
    before = value(head, "ray_object_store_memory", Location="MMAP_SHM")
    array = np.ones(20 * 1024 * 1024, dtype=np.uint8)
    ref = rtd.put(array)
    wait_for_condition(
        lambda: value(head, "ray_object_store_memory", Location="MMAP_SHM") >= before + array.nbytes, timeout=TIMEOUT
    )
    assert value(head, "ray_object_store_num_local_objects") >= 1
    assert samples(head, "ray_spill_manager_bytes_total", Type="Spilled")
    del ref


def test_every_node_times_the_requests_it_answers(cluster):
    @rtd.remote(resources={"alice": 1})
    def on_worker():
        return 1

    assert rtd.get(on_worker.remote()) == 1
    for node in cluster.list_all_nodes():
        # Every process on a node registers with its raylet first.
        registered = samples(node, "ray_grpc_server_req_process_time_ms_count", Method="RegisterClient")
        assert registered and registered[0].value >= 1
        assert value(node, "ray_grpc_server_req_finished_total", Method="RegisterClient") >= 1
    # The head's raylet serves the GCS: its requests are timed there too.
    assert value(cluster.head_node, "ray_grpc_server_req_process_time_ms_count", Method="RegisterNode") >= 1
    buckets = samples(cluster.head_node, "ray_grpc_server_req_process_time_ms_bucket", Method="RequestLease")
    assert {float(b.labels["le"]) for b in buckets} == {0.1, 1, 10, 100, 1000, 10000, float("inf")}


def test_the_head_counts_tasks_by_function_and_state(cluster):
    @rtd.remote
    def metrics_square(x):
        return x * x

    assert rtd.get([metrics_square.remote(i) for i in range(3)], timeout=TIMEOUT) == [0, 1, 4]

    def finished():
        tasks = samples(cluster.head_node, "ray_tasks", State="FINISHED")
        return sum(s.value for s in tasks if s.labels["Name"].endswith("metrics_square")) == 3

    wait_for_condition(finished, timeout=TIMEOUT)
    sample = next(s for s in samples(cluster.head_node, "ray_tasks") if s.labels["Name"].endswith("metrics_square"))
    assert sample.labels["IsRetry"] == "0"


def test_the_head_counts_actors_by_class_and_state(cluster):
    @rtd.remote(num_cpus=0)
    class MetricsProbe:
        def ping(self):
            return "pong"

    probe = MetricsProbe.remote()
    assert rtd.get(probe.ping.remote(), timeout=TIMEOUT) == "pong"

    def count(state):
        return sum(
            s.value for s in samples(cluster.head_node, "ray_actors", State=state) if s.labels["Name"] == "MetricsProbe"
        )

    wait_for_condition(lambda: count("ALIVE") == 1, timeout=TIMEOUT)
    rtd.kill(probe)
    wait_for_condition(lambda: count("DEAD") == 1 and count("ALIVE") == 0, timeout=TIMEOUT)


def test_user_metrics_from_a_task_and_an_actor_reach_their_node(cluster):
    @rtd.remote
    def record_in_task():
        Counter("rtd_test_requests", "Requests served", tag_keys=("origin",)).inc(2, tags={"origin": "task"})
        histogram = Histogram("rtd_test_latency_s", "Latency", boundaries=[0.1, 1.0], tag_keys=("origin",))
        histogram.set_default_tags({"origin": "task"})
        histogram.observe(0.05)
        histogram.observe(0.5)
        return True

    @rtd.remote(num_cpus=0)
    class Recorder:
        def __init__(self):
            self.requests = Counter("rtd_test_requests", "Requests served", tag_keys=("origin",))
            self.queue = Gauge("rtd_test_queue_size", "Queue size", tag_keys=("origin",))

        def record(self):
            self.requests.inc(tags={"origin": "actor"})
            self.requests.inc(tags={"origin": "actor"})
            self.requests.inc(tags={"origin": "actor"})
            self.queue.set(7, tags={"origin": "actor"})
            self.queue.set(4, tags={"origin": "actor"})
            return True

    recorder = Recorder.remote()
    assert rtd.get([record_in_task.remote(), recorder.record.remote()], timeout=TIMEOUT) == [True, True]

    def exported():
        return (
            cluster_value(cluster, "ray_rtd_test_requests_total", origin="task") == 2
            and cluster_value(cluster, "ray_rtd_test_requests_total", origin="actor") == 3
            and cluster_value(cluster, "ray_rtd_test_queue_size", origin="actor") == 4
            and cluster_value(cluster, "ray_rtd_test_latency_s_count", origin="task") == 2
        )

    wait_for_condition(exported, timeout=TIMEOUT)
    assert cluster_value(cluster, "ray_rtd_test_latency_s_bucket", origin="task", le="0.1") == 1
    assert cluster_value(cluster, "ray_rtd_test_latency_s_bucket", origin="task", le="1") == 2
    assert cluster_value(cluster, "ray_rtd_test_latency_s_sum", origin="task") == pytest.approx(0.55)
    rtd.kill(recorder)


def test_a_drivers_metrics_are_exported_by_the_node_it_connected_to(cluster):
    Gauge("rtd_test_driver_gauge", "Set by the driver").set(3.5)
    wait_for_condition(lambda: value(cluster.head_node, "ray_rtd_test_driver_gauge") == 3.5, timeout=TIMEOUT)


def test_bad_metric_definitions_and_tags_raise_clear_errors():
    with pytest.raises(ValueError, match="Empty name"):
        Counter("")
    with pytest.warns(UserWarning, match="Invalid metric name: 1st"):
        discarded = Gauge("1st")
    discarded.set(1)  # a discarded metric records nothing, as Ray's
    with pytest.raises(TypeError, match="tag_keys should be a tuple"):
        Counter("c", tag_keys=["a"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Invalid tag key: 'a-b'"):
        Counter("c", tag_keys=("a-b",))
    counter = Counter("c", tag_keys=("route",))
    with pytest.raises(ValueError, match="Missing value for tag key"):
        counter.inc()
    with pytest.raises(ValueError, match="Unrecognized tag key"):
        counter.set_default_tags({"other": "x"})
    with pytest.raises(TypeError, match="Tag values must be str"):
        counter.inc(tags={"route": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="value must be >0"):
        counter.inc(-1, tags={"route": "/"})
    with pytest.raises(ValueError, match="boundaries argument should be provided"):
        Histogram("h")
    with pytest.raises(ValueError, match="Use positive values"):
        Histogram("h", boundaries=[0, 1])
    with pytest.raises(ValueError, match="Boundaries must increase"):
        Histogram("h", boundaries=[2.0, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Counter("valid:name_1").info  # noqa: B018 - a valid name warns nothing


def test_metrics_export_port_flag_chooses_the_port_and_a_busy_one_is_an_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        port = _free_port()
        temp_dir = tempfile.mkdtemp(prefix="rtdm-", dir="/tmp")
        try:
            flags = ["--num-cpus", "1", "--temp-dir", temp_dir, "--metrics-export-port", str(port)]
            started = rtd_cli("start", "--head", *flags)
            assert started.returncode == 0, started.stderr
            with open(os.path.join(temp_dir, "session_latest", "node.json")) as f:
                assert json.load(f)["metrics_export_port"] == port
            assert "ray_resources" in scrape_text(port)
            # Another cluster (its own temp dir, so its own GCS store) on the busy port.
            other = os.path.join(temp_dir, "other")
            refused = rtd_cli("start", "--head", "--temp-dir", other, "--metrics-export-port", str(taken))
            assert refused.returncode != 0
            assert f"serving metrics on 127.0.0.1:{taken}" in refused.stderr
            assert "--metrics-export-port" in refused.stderr
        finally:
            rtd_cli("stop", "--temp-dir", temp_dir)
            shutil.rmtree(temp_dir, ignore_errors=True)
