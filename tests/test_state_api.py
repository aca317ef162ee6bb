"""The state API end to end: the head's dashboard over a live two-node cluster, read
through ``rtd.util.state``, raw HTTP and the ``rtd list/get/summary`` commands."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
import uuid

import pytest
import rtd
from conftest import last_json_line, rtd_cli, run_script, wait_for_condition
from rtd.cluster_utils import Cluster
from rtd.util.placement_group import placement_group, remove_placement_group
from rtd.util.state import (
    RayStateApiException,
    get_actor,
    get_job,
    get_log,
    get_node,
    get_placement_group,
    list_actors,
    list_jobs,
    list_logs,
    list_nodes,
    list_placement_groups,
    summarize_actors,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def cluster():
    """A head (1 CPU) and a worker node (2 CPUs), with this driver connected."""
    rtd.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1}, shutdown_at_exit=False)
    try:
        cluster.add_node(num_cpus=2, resources={"alice": 1})
        cluster.context = rtd.init(address=cluster.address)
        yield cluster
    finally:
        cluster.shutdown()


def http_get(cluster, path):
    """(status, JSON body) of ``GET path`` on the cluster's dashboard."""
    try:
        with urllib.request.urlopen(f"http://{cluster.webui_url}{path}", timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


@rtd.remote(num_cpus=0)
class Counter:
    def where(self):
        import os

        return rtd.get_runtime_context().get_node_id(), os.getpid()


@rtd.remote(num_cpus=0)
class Printer:
    def say(self, line):
        print(line)
        return os.getpid()


def test_init_returns_the_dashboard_url_which_serves_the_cluster_overview(cluster):
    assert cluster.webui_url
    assert cluster.context.dashboard_url == cluster.webui_url
    assert cluster.context.address_info["webui_url"] == cluster.webui_url
    status, body = http_get(cluster, "/api/cluster_status")
    assert status == 200 and body["result"] is True
    assert body["data"]["num_nodes_alive"] == 2
    assert body["data"]["resources_total"]["CPU"] == 3.0
    with urllib.request.urlopen(f"http://{cluster.webui_url}/", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/html")


def test_list_nodes_shows_both_nodes_with_rays_fields(cluster):
    nodes = list_nodes()
    assert len(nodes) == 2
    head = next(n for n in nodes if n.is_head_node)
    worker = next(n for n in nodes if not n["is_head_node"])
    assert (head.node_id, worker.node_id) == (cluster.head_node.node_id, cluster.worker_nodes[0].node_id)
    assert {n.state for n in nodes} == {"ALIVE"}
    assert head.node_ip == "127.0.0.1"
    assert (head.resources_total["CPU"], worker.resources_total["CPU"]) == (1.0, 2.0)
    assert worker.resources_total["alice"] == 1.0
    assert "resources_available" not in head
    assert [n.node_id for n in list_nodes(filters=[("is_head_node", "=", False)])] == [worker.node_id]
    detailed = get_node(worker.node_id)
    assert detailed is not None and detailed.resources_available["alice"] == 1.0
    assert detailed.start_time_ms > 0 and detailed.end_time_ms is None
    assert get_node("ff" * 28) is None


def test_actors_show_their_node_pid_class_and_death(cluster):
    here = Counter.options(name="counter-here", resources={"alice": 0.5}).remote()
    other = Counter.remote()
    node_id, pid = rtd.get(here.where.remote())
    rtd.get(other.where.remote())

    row = get_actor(here._actor_id.hex())
    assert row is not None
    assert (row.class_name, row.state, row.name) == ("Counter", "ALIVE", "counter-here")
    assert (row.node_id, row.pid) == (node_id, pid)
    assert row.node_id == cluster.worker_nodes[0].node_id
    assert row.required_resources == {"alice": 0.5}
    assert row.job_id and row.ray_namespace and row.death_cause is None and not row.is_detached

    named = list_actors(filters=[("name", "=", "counter-here")])
    assert [a.actor_id for a in named] == [row.actor_id]

    rtd.kill(other)
    wait_for_condition(lambda: get_actor(other._actor_id.hex())["state"] == "DEAD")
    dead = get_actor(other._actor_id.hex())
    assert "rtd.kill()" in dead.death_cause["error_message"]
    alive_ids = {a.actor_id for a in list_actors(filters=[("state", "=", "ALIVE")])}
    assert row.actor_id in alive_ids and dead.actor_id not in alive_ids

    counts = summarize_actors()["cluster"]["summary"]["Counter"]["state_counts"]
    assert counts.get("ALIVE", 0) >= 1 and counts.get("DEAD", 0) >= 1
    rtd.kill(here)


def test_placement_groups_show_their_bundles_and_where_they_are(cluster):
    group = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD", name="spread-pair")
    assert group.wait(10)
    row = get_placement_group(group.id.hex())
    assert row is not None
    assert (row.name, row.state, row.strategy, row.is_detached) == ("spread-pair", "CREATED", "STRICT_SPREAD", False)
    assert row.creator_job_id == rtd.get_runtime_context().get_job_id()
    assert [b["bundle_id"] for b in row.bundles] == [0, 1]
    assert {b["node_id"] for b in row.bundles} == {cluster.head_node.node_id, cluster.worker_nodes[0].node_id}
    assert all(b["unit_resources"] == {"CPU": 1.0} for b in row.bundles)
    # Nodes list what they own, not the resources bundles add.
    assert all(not any("_group_" in name for name in n.resources_total) for n in list_nodes())

    remove_placement_group(group)
    wait_for_condition(lambda: get_placement_group(group.id.hex())["state"] == "REMOVED")
    created = list_placement_groups(filters=[("state", "=", "CREATED")])
    assert group.id.hex() not in {g.placement_group_id for g in created}


def test_jobs_show_the_running_driver_and_a_finished_one(cluster):
    job_id = rtd.get_runtime_context().get_job_id()
    running = get_job(job_id)
    assert running is not None and (running.status, running.type) == ("RUNNING", "DRIVER")
    assert job_id in {j.job_id for j in list_jobs(filters=[("status", "=", "RUNNING")])}

    script = run_script(
        f"""
        import json, rtd
        rtd.init(address={cluster.address!r})
        print(json.dumps([rtd.get_runtime_context().get_job_id()]))
        """
    )
    assert script.returncode == 0, script.stderr
    (finished_id,) = last_json_line(script.stdout)
    wait_for_condition(lambda: get_job(finished_id).status == "SUCCEEDED", timeout=15)
    assert get_job(finished_id).end_time is not None


def test_logs_on_the_second_node(cluster):
    worker_node = cluster.worker_nodes[0].node_id
    speaker = Printer.options(resources={"alice": 0.1}).remote()
    line = f"second-node-{uuid.uuid4().hex[:12]}"
    pid = rtd.get(speaker.say.remote(line))

    files = list_logs(node_id=worker_node, glob_filter=f"worker-*-{pid}.*")
    assert [f.endswith(f"-{pid}.out") for f in files["worker_out"]] == [True]
    assert [f.endswith(f"-{pid}.err") for f in files["worker_err"]] == [True]
    (name,) = files["worker_out"]
    assert line in "".join(get_log(node_id=worker_node, filename=name))
    assert line in "".join(get_log(node_id=worker_node, pid=pid))
    assert line in "".join(get_log(actor_id=speaker._actor_id.hex()))

    head_files = list_logs(node_id=cluster.head_node.node_id)
    assert name not in head_files.get("worker_out", [])
    assert head_files["worker_out"], "the head's workers write logs too"
    with pytest.raises(ValueError, match="node"):
        list_logs()
    rtd.kill(speaker)


def test_bad_filters_raise_naming_the_problem(cluster):
    with pytest.raises(RayStateApiException, match="colour"):
        list_actors(filters=[("colour", "=", "red")])
    with pytest.raises(ValueError, match="~"):
        list_nodes(filters=[("state", "~", "ALIVE")])
    with pytest.raises(RayStateApiException, match="perhaps"):
        list_nodes(filters=[("is_head_node", "=", "perhaps")])


def test_http_api_answers_4xx_with_a_json_message(cluster):
    status, body = http_get(cluster, "/api/v0/widgets")
    assert status == 404 and body["result"] is False and "widgets" in body["msg"]
    status, body = http_get(cluster, "/api/v0/nodes?filter_keys=colour&filter_predicates=%3D&filter_values=x")
    assert status == 400 and "colour" in body["msg"]
    status, body = http_get(cluster, "/api/v0/nodes?limit=1")
    listed = body["data"]["result"]
    assert status == 200 and (listed["total"], listed["num_filtered"], len(listed["result"])) == (2, 2, 1)


def test_cli_lists_gets_and_summarizes_through_the_dashboard(cluster):
    here = Counter.options(name="cli-counter").remote()
    rtd.get(here.where.remote())
    actor_id = here._actor_id.hex()
    # Found by itself, from the head's session on this machine.
    found = rtd_cli("list", "actors", "--filter", "name=cli-counter", "--format", "json",
                    "--temp-dir", cluster._temp_dir)
    assert found.returncode == 0, found.stderr
    assert [a["actor_id"] for a in json.loads(found.stdout)] == [actor_id]

    table = rtd_cli("list", "nodes", "--filter", "state=ALIVE", "--address", cluster.webui_url)
    assert table.returncode == 0, table.stderr
    assert "Total: 2" in table.stdout and "NODE_ID" in table.stdout
    assert cluster.head_node.node_id in table.stdout and cluster.worker_nodes[0].node_id in table.stdout

    # The cluster's own address finds its dashboard through the GCS.
    by_cluster = rtd_cli("list", "nodes", "--format", "json", "--address", cluster.address)
    assert by_cluster.returncode == 0, by_cluster.stderr
    assert len(json.loads(by_cluster.stdout)) == 2
    listed = {n["node_id"] for n in json.loads(by_cluster.stdout)}
    assert {n["node_id"] for n in list_nodes(address=cluster.address)} == listed

    got = rtd_cli("get", "actor", actor_id, "--address", cluster.webui_url)
    assert got.returncode == 0, got.stderr
    assert f"actor_id: {actor_id}" in got.stdout and "required_resources:" in got.stdout

    summary = rtd_cli("summary", "actors", "--address", cluster.webui_url)
    assert summary.returncode == 0, summary.stderr
    assert "Counter" in summary.stdout and "ALIVE: " in summary.stdout

    missing = rtd_cli("get", "actor", "ab" * 16, "--address", cluster.webui_url)
    assert missing.returncode == 1 and "ab" * 16 in missing.stderr
    unknown_key = rtd_cli("list", "actors", "--filter", "colour=red", "--address", cluster.webui_url)
    assert unknown_key.returncode == 1 and "colour" in unknown_key.stderr
    bad_filter = rtd_cli("list", "actors", "--filter", "state~x", "--address", cluster.webui_url)
    assert bad_filter.returncode == 2 and "state~x" in bad_filter.stderr
    rtd.kill(here)


def test_include_dashboard_false_serves_no_dashboard():
    result = run_script(
        """
        import json, rtd
        from rtd.util.state import list_nodes
        from rtd.util.state.exception import ServerUnavailable
        context = rtd.init(num_cpus=1, include_dashboard=False)
        try:
            list_nodes()
            refused = False
        except ServerUnavailable:
            refused = True
        print(json.dumps([context.dashboard_url, refused]))
        """
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == [None, True]
    assert "View the dashboard" not in result.stderr



def test_a_busy_default_port_moves_on_and_a_busy_chosen_port_is_an_error(temp_dir):
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            taken.bind(("127.0.0.1", 8265))
        except OSError:
            pass  # Already taken by another cluster: just as good.
        result = run_script(
            """
            import json, rtd
            from rtd.util.state import list_nodes
            context = rtd.init(num_cpus=1)
            print(json.dumps([context.dashboard_url, len(list_nodes())]))
            """
        )
        assert result.returncode == 0, result.stderr
        url, nodes = json.loads(result.stdout.splitlines()[-1])
        assert url.startswith("127.0.0.1:") and url != "127.0.0.1:8265" and nodes == 1
        assert f"View the dashboard at http://{url}" in result.stderr

        chosen = rtd_cli("start", "--head", "--dashboard-port", "8265", "--temp-dir", temp_dir)
        assert chosen.returncode == 1
        assert "127.0.0.1:8265 is already in use" in chosen.stderr
