"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``, which
``scripts/test`` installs) loads each page from a live two-node cluster's head, and the
tests read the DOM the page's JavaScript built from the JSON API. Each page's screenshot
is saved under ``test-artifacts/dashboard/`` (git-ignored) for a person to look at.

The cluster holds what the pages should show: a named actor of a class no other test
uses, a placement group with a bundle on each node, a finished task and a failed one. A page whose
endpoint the server does not have yet must say so (the 404's notice) instead of breaking;
once it has it, the test checks what the page shows.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import chromium
import pytest
import rtd
from rtd.cluster_utils import Cluster
from rtd.util.placement_group import placement_group, remove_placement_group

ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test-artifacts", "dashboard")
TIMEOUT = 30  # bound on every wait for the page


@rtd.remote(num_cpus=1)
class DashboardProbeActor:
    def where(self):
        return os.getpid(), rtd.get_runtime_context().get_node_id()

    def say(self, text):
        print(text, flush=True)
        return text


@rtd.remote(num_cpus=0)
class LateComerActor:
    def ready(self):
        return True


@rtd.remote
def dashboard_probe_task():
    return 42


@rtd.remote(max_retries=0)
def dashboard_failing_task():
    raise ValueError("the dashboard probe failed on purpose")


class Scene:
    """The live cluster and what the tests put in it."""

    def __init__(self, cluster, url):
        self.cluster = cluster
        self.url = url
        self.node_ids = {n.node_id for n in cluster.list_all_nodes()}
        self.head_id = cluster.head_node.node_id

    def status(self, path):
        """The HTTP status of ``path`` on the dashboard (404: the server lacks it)."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code


@pytest.fixture(scope="module")
def scene():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2}, shutdown_at_exit=False)
    try:
        cluster.add_node(num_cpus=2, resources={"gadget": 1})
        cluster.wait_for_nodes()
        context = rtd.init(address=cluster.address)
        # Ray's form: host:port, without the scheme.
        s = Scene(cluster, f"http://{context.dashboard_url}")
        s.actor = DashboardProbeActor.options(name="dashboard-probe").remote()
        s.actor_pid, s.actor_node = rtd.get(s.actor.where.remote(), timeout=TIMEOUT)
        s.pg = placement_group([{"CPU": 0.5}, {"CPU": 0.5}], strategy="STRICT_SPREAD", name="dashboard-pg")
        assert s.pg.wait(TIMEOUT)
        assert rtd.get(dashboard_probe_task.remote(), timeout=TIMEOUT) == 42
        with pytest.raises(ValueError):
            rtd.get(dashboard_failing_task.remote(), timeout=TIMEOUT)
        s.job_id = rtd.get_runtime_context().get_job_id()
        yield s
    finally:
        rtd.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def _chromium():
    binary = chromium.find_chromium()
    if binary is None:
        pytest.skip("no chromium on this machine: scripts/test installs Debian's chromium, and could not here")
    browser = chromium.Browser(binary)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def browser(_chromium):
    """The module's browser, with this test's page errors only; a test fails if the
    page's JavaScript threw or logged an error."""
    _chromium.clear_events()
    yield _chromium
    assert _chromium.page_errors() == []


def open_page(browser, url, page, query=""):
    """Loads ``#/page`` in a new document and waits until the page has been drawn from
    the API."""
    # Marks the old document, so the wait below cannot be answered by it.
    browser.evaluate("window.rtdOldDocument = true")
    browser.navigate(f"{url}/?load={os.urandom(4).hex()}#/{page}{query}")
    browser.wait_for(
        f"!window.rtdOldDocument && document.getElementById('page-{page}')"
        " && document.getElementById('refresh-status').dataset.refreshes >= 1",
        timeout=TIMEOUT,
        what=f"the {page} page",
    )


def screenshot(browser, name):
    browser.screenshot(os.path.join(ARTIFACTS, f"{name}.png"))


def js(value):
    """A Python string as a JavaScript literal."""
    return json.dumps(value)


def q(selector):
    """A JavaScript expression: the page's first element that matches ``selector``."""
    return f"document.querySelector({js(selector)})"


def test_overview_shows_both_nodes_alive_with_their_resources(browser, scene):
    open_page(browser, scene.url, "overview")
    browser.wait_for(q('#node-count[data-alive="2"]'), timeout=TIMEOUT, what="2 nodes alive")
    rows = browser.evaluate(
        """[...document.querySelectorAll('#nodes-table tbody tr')].map(tr => ({
            id: tr.dataset.nodeId, state: tr.dataset.state, head: tr.dataset.head,
            cpu: tr.querySelector('.bar[data-resource="CPU"]')?.dataset.total}))"""
    )
    assert {r["id"] for r in rows} == scene.node_ids
    assert all(r["state"] == "ALIVE" for r in rows)
    assert [r["id"] for r in rows if r["head"] == "true"] == [scene.head_id]
    assert all(r["cpu"] == "2" for r in rows)
    assert browser.evaluate(f"{q('#node-count')}.dataset.dead") == "0"
    # The cluster's CPU bar: 4 in all, and the actor and the placement group use some.
    cpu = q('#cluster-resources .bar[data-resource="CPU"]')
    assert browser.evaluate(f"{cpu}.dataset.total") == "4"
    assert float(browser.evaluate(f"{cpu}.dataset.used")) >= 1
    screenshot(browser, "overview")


def test_actors_page_shows_the_named_actor(browser, scene):
    open_page(browser, scene.url, "actors")
    row = q('#actors-table tr[data-class-name="DashboardProbeActor"]')
    browser.wait_for(row, timeout=TIMEOUT, what="the DashboardProbeActor row")
    cells = browser.evaluate(
        f"""Object.fromEntries([...{row}.querySelectorAll('td')].map(td => [td.dataset.field, td.textContent]))"""
    )
    assert cells["class"] == "DashboardProbeActor"
    assert cells["name"] == "dashboard-probe"
    assert cells["state"] == "ALIVE"
    assert cells["pid"] == str(scene.actor_pid)
    assert cells["restarts"] == "0"
    node = browser.evaluate(f"{row}.querySelector('[data-field=node] [data-node-id]').dataset.nodeId")
    assert node == scene.actor_node
    assert browser.evaluate(f"{row}.dataset.actorId") == scene.actor._actor_id.hex()
    assert browser.evaluate(f"{row}.querySelector('a.log-link').getAttribute('href')") == (
        f"#/logs?actor_id={scene.actor._actor_id.hex()}"
    )
    screenshot(browser, "actors")


def test_a_new_actor_shows_up_without_reloading_the_page(browser, scene):
    open_page(browser, scene.url, "actors")
    # A reload would lose this.
    browser.evaluate("window.rtdTestMarker = 'still the same document'")
    late = LateComerActor.remote()
    try:
        assert rtd.get(late.ready.remote(), timeout=TIMEOUT)
        browser.wait_for(
            q('#actors-table tr[data-class-name="LateComerActor"][data-state="ALIVE"]'),
            timeout=TIMEOUT,
            what="the new actor's row",
        )
        assert browser.evaluate("window.rtdTestMarker") == "still the same document"
        rtd.kill(late)
        browser.wait_for(
            q('#actors-table tr[data-class-name="LateComerActor"][data-state="DEAD"]'),
            timeout=TIMEOUT,
            what="the killed actor's row to turn DEAD",
        )
        dead = q('#actors-table tr[data-class-name="LateComerActor"] [data-field="death_cause"]')
        assert "rtd.kill" in browser.evaluate(f"{dead}.textContent")
    finally:
        rtd.kill(late)


def test_placement_groups_page_shows_the_group_and_where_its_bundles_are(browser, scene):
    open_page(browser, scene.url, "placement-groups")
    row = q(f'#pgs-table tr[data-pg-id="{scene.pg.id.hex()}"]')
    browser.wait_for(row, timeout=TIMEOUT, what="the placement group's row")
    assert browser.evaluate(f"{row}.dataset.state") == "CREATED"
    assert browser.evaluate(f"{row}.dataset.name") == "dashboard-pg"
    assert browser.evaluate(f"{row}.querySelector('[data-field=strategy]').textContent") == "STRICT_SPREAD"
    bundles = browser.evaluate(f"[...{row}.querySelectorAll('.bundles li')].map(li => li.dataset.nodeId)")
    # STRICT_SPREAD: one bundle on each node.
    assert sorted(bundles) == sorted(scene.node_ids)


def test_a_removed_placement_group_shows_as_removed(browser, scene):
    pg = placement_group([{"CPU": 0.1}], name="dashboard-removed-pg")
    assert pg.wait(TIMEOUT)
    remove_placement_group(pg)
    open_page(browser, scene.url, "placement-groups")
    browser.wait_for(
        q(f'#pgs-table tr[data-pg-id="{pg.id.hex()}"][data-state="REMOVED"]'),
        timeout=TIMEOUT,
        what="the removed group's row",
    )
    screenshot(browser, "placement-groups")


def unavailable_notice(browser, endpoint):
    """Waits for the page's "not available yet" notice for ``endpoint``."""
    browser.wait_for(
        q(f'.unavailable[data-endpoint="{endpoint}"]'),
        timeout=TIMEOUT,
        what=f"the notice that {endpoint} is not available",
    )


def test_tasks_page_counts_tasks_by_function_and_shows_the_failed_ones_traceback(browser, scene):
    open_page(browser, scene.url, "tasks")
    if scene.status("/api/v0/tasks") == 404:
        unavailable_notice(browser, "/api/v0/tasks")
        screenshot(browser, "tasks")
        return
    finished = q('#task-summary-table tr[data-func="dashboard_probe_task"] [data-state="FINISHED"]')
    browser.wait_for(f"{finished} && Number({finished}.textContent) >= 1", timeout=TIMEOUT, what="a finished count")
    browser.wait_for(
        q('#tasks-table tr[data-name="dashboard_probe_task"][data-state="FINISHED"]'),
        timeout=TIMEOUT,
        what="the finished task's row",
    )
    traceback = q('#task-errors-list details.task-error pre.traceback')
    browser.wait_for(traceback, timeout=TIMEOUT, what="the failed task's traceback")
    text = browser.evaluate(f"{traceback}.textContent")
    assert "ValueError" in text and "the dashboard probe failed on purpose" in text
    screenshot(browser, "tasks")


def test_jobs_page_shows_this_driver(browser, scene):
    open_page(browser, scene.url, "jobs")
    if scene.status("/api/v0/jobs") == 404:
        unavailable_notice(browser, "/api/v0/jobs")
    else:
        browser.wait_for(
            q(f'#jobs-table tr[data-job-id="{scene.job_id}"][data-status="RUNNING"]'),
            timeout=TIMEOUT,
            what="this driver's job",
        )
    screenshot(browser, "jobs")


def test_objects_page_shows_a_held_object(browser, scene):
    ref = rtd.put(b"x" * 1_000_000)
    open_page(browser, scene.url, "objects")
    if scene.status("/api/v0/objects") == 404:
        unavailable_notice(browser, "/api/v0/objects")
    else:
        browser.wait_for(
            q(f'#objects-table tr[data-object-id="{ref.hex()}"]'),
            timeout=TIMEOUT,
            what="the put object's row",
        )
    screenshot(browser, "objects")
    del ref


def test_actor_log_link_shows_what_the_actor_printed(browser, scene):
    rtd.get(scene.actor.say.remote("hello from the dashboard probe"), timeout=TIMEOUT)
    open_page(browser, scene.url, "logs", f"?actor_id={scene.actor._actor_id.hex()}")
    if scene.status(f"/api/v0/logs/file?actor_id={scene.actor._actor_id.hex()}") == 404:
        unavailable_notice(browser, "/api/v0/logs/file")
    else:
        browser.wait_for(
            f"{q('#log-text')}?.textContent.includes('hello from the dashboard probe')",
            timeout=TIMEOUT,
            what="the actor's printed line in its log",
        )
    screenshot(browser, "logs")


def test_timeline_draws_the_finished_task(browser, scene):
    open_page(browser, scene.url, "timeline")
    if scene.status("/api/v0/tasks/timeline") == 404:
        unavailable_notice(browser, "/api/v0/tasks/timeline")
    else:
        browser.wait_for(
            q('#timeline-svg rect.event[data-name*="dashboard_probe_task"]'),
            timeout=TIMEOUT,
            what="a bar for the finished task",
        )
    screenshot(browser, "timeline")


def test_a_page_whose_cluster_stopped_says_so_and_keeps_trying(browser):
    # A cluster of its own, which this test stops; no driver connects to it.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0}, shutdown_at_exit=False)
    try:
        open_page(browser, f"http://{cluster.webui_url}", "actors")
        assert browser.evaluate(f"{q('#refresh-status')}.classList.contains('offline')") is False
    finally:
        cluster.shutdown()
    browser.wait_for(q("#refresh-status.offline"), timeout=TIMEOUT, what="the status line to say the server is gone")
    assert "unreachable" in browser.evaluate(f"{q('#refresh-status')}.textContent")
    assert browser.evaluate(f"{q('#page-actors .error.unreachable')} !== null")
