"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``, which
``scripts/test`` installs) loads each page from a live two-node cluster's head, and the
tests read the DOM the page's JavaScript built from the JSON API. Each page's screenshot
is saved under ``test-artifacts/dashboard/`` (git-ignored) for a person to look at.

The cluster holds what the pages should show: a named actor of a class no other test
uses, a placement group with a bundle on each node, a finished task and a failed one, the
driver's job, an object it put and what the actor printed. Each test checks what its page
shows of them: rows, states, sizes, the traceback, the log's lines, the timeline's bars.
Every wait is bounded (``TIMEOUT``); a wait that times out saves the page as
``FAILED-*.png`` next to the screenshots.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.request

import chromium
import pytest
import rtd
from conftest import RTD
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
        probe = dashboard_probe_task.remote()
        assert rtd.get(probe, timeout=TIMEOUT) == 42
        s.probe_task_id = probe.task_id()
        failing = dashboard_failing_task.remote()
        with pytest.raises(ValueError):
            rtd.get(failing, timeout=TIMEOUT)
        s.failing_task_id = failing.task_id()
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


def wait(browser, expression, what):
    """Waits (at most TIMEOUT) for ``expression`` to hold on the page; if it never does,
    saves what the page showed as ``test-artifacts/dashboard/FAILED-*.png`` first."""
    try:
        browser.wait_for(expression, timeout=TIMEOUT, what=what)
    except AssertionError:
        screenshot(browser, "FAILED-" + "-".join(what.split()))
        raise


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


def wait_for_task_events(scene):
    """Waits (at most TIMEOUT) until the state API has the workers' side of the two
    tasks (they ran, and how they ended), so a page that lacks it is the page's fault."""
    wanted = {scene.probe_task_id: "FINISHED", scene.failing_task_id: "FAILED"}
    deadline = time.monotonic() + TIMEOUT
    while True:
        with urllib.request.urlopen(f"{scene.url}/api/v0/tasks?limit=10000", timeout=10) as response:
            rows = json.load(response)["data"]["result"]["result"]
        seen = {r["task_id"]: r["state"] for r in rows if r["task_id"] in wanted}
        if seen == wanted:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the state API never had the workers' task events: {seen} (wanted {wanted})")
        time.sleep(0.2)


def test_tasks_page_counts_tasks_by_function_and_shows_the_failed_ones_traceback(browser, scene):
    wait_for_task_events(scene)
    open_page(browser, scene.url, "tasks")
    summary = q('#task-summary-table tr[data-func="dashboard_probe_task"]')
    finished = f"{summary}?.querySelector('[data-state=FINISHED]')"
    wait(browser, f"Number({finished}?.textContent) >= 1", "the finished count of dashboard_probe_task")
    assert browser.evaluate(f"{summary}.querySelector('[data-field=type]').textContent") == "NORMAL_TASK"
    failed = q('#task-summary-table tr[data-func="dashboard_failing_task"] [data-state="FAILED"]')
    assert browser.evaluate(f"{failed}.textContent") == "1"

    row = q('#tasks-table tr[data-name="dashboard_probe_task"][data-state="FINISHED"]')
    wait(browser, row, "the finished task's row")
    assert browser.evaluate(f"{row}.dataset.taskId") == scene.probe_task_id
    assert browser.evaluate(f"{row}.querySelector('[data-field=node] [data-node-id]') !== null")
    # Latest first: the rows' last-activity times never go up (no task is running).
    times = browser.evaluate(
        "[...document.querySelectorAll('#tasks-table tbody tr')].map(tr => Number(tr.dataset.lastActiveMs))"
    )
    assert len(times) >= 2 and times == sorted(times, reverse=True)
    failed_row = q('#tasks-table tr[data-name="dashboard_failing_task"][data-state="FAILED"]')
    error_type = browser.evaluate(f"{failed_row}.querySelector('[data-field=error]').textContent")
    assert error_type == "TASK_EXECUTION_EXCEPTION"
    assert browser.evaluate(f"{failed_row}.querySelector('a.log-link').getAttribute('href')") == (
        f"#/logs?task_id={scene.failing_task_id}"
    )

    error = q(f'#task-errors-list details.task-error[data-task-id="{scene.failing_task_id}"]')
    wait(browser, error, "the failed task's traceback")
    text = browser.evaluate(f"{error}.querySelector('pre.traceback').textContent")
    assert "Traceback" in text and "ValueError: the dashboard probe failed on purpose" in text
    assert "dashboard_failing_task" in text
    screenshot(browser, "tasks")


def test_jobs_page_shows_this_driver_running(browser, scene):
    open_page(browser, scene.url, "jobs")
    row = q(f'#jobs-table tr[data-job-id="{scene.job_id}"]')
    wait(browser, row, "this driver's job")
    assert browser.evaluate(f"{row}.dataset.status") == "RUNNING"
    driver = browser.evaluate(f"{row}.querySelector('[data-field=driver]').textContent")
    assert driver.endswith(f"pid {os.getpid()}")
    assert "pytest" in browser.evaluate(f"{row}.querySelector('[data-field=entrypoint]').textContent")
    screenshot(browser, "jobs")


def test_objects_page_shows_a_put_object_with_its_size(browser, scene):
    ref = rtd.put(b"x" * 1_000_000)
    try:
        open_page(browser, scene.url, "objects")
        row = q(f'#objects-table tr[data-object-id="{ref.hex()}"]')
        wait(browser, row, "the put object's row")
        # The pickled bytes: a little over the million put.
        size = int(browser.evaluate(f"{row}.dataset.size"))
        assert 1_000_000 <= size < 1_001_000
        cells = browser.evaluate(
            f"Object.fromEntries([...{row}.querySelectorAll('td')].map(td => [td.dataset.field, td.textContent]))"
        )
        assert cells["size"] == "976.6 KiB"
        assert cells["reference_type"] == "LOCAL_REFERENCE"
        assert cells["held_by"].startswith(f"DRIVER pid {os.getpid()} @ ")
        assert cells["owner"] == "yes"
        assert browser.evaluate(f"{row}.querySelector('[data-field=stored_on] [data-node-id]') !== null")
        local = q('#object-summary-table tr[data-reference-type="LOCAL_REFERENCE"]')
        assert browser.evaluate(f"{local} !== null")
        screenshot(browser, "objects")
    finally:
        del ref


def test_actor_log_shows_what_the_actor_printed_and_follows_it(browser, scene):
    rtd.get(scene.actor.say.remote("hello from the dashboard probe"), timeout=TIMEOUT)
    open_page(browser, scene.url, "logs", f"?actor_id={scene.actor._actor_id.hex()}")
    log = q("#log-text")
    printed = f"{log}?.textContent.includes('hello from the dashboard probe')"
    wait(browser, printed, "the actor's printed line in its log")
    assert browser.evaluate(f"{q('#log-streams a.current')}.dataset.suffix") == "out"
    # A later line is appended: read on from the last read's end, not the whole tail again.
    rtd.get(scene.actor.say.remote("and a later line"), timeout=TIMEOUT)
    wait(browser, f"{log}?.textContent.includes('and a later line')", "the actor's later line")
    text = browser.evaluate(f"{log}.textContent")
    assert text.index("hello from the dashboard probe") < text.index("and a later line")
    assert int(browser.evaluate(f"{log}.dataset.endOffset")) >= len(text.encode())
    follows = browser.evaluate(
        "performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(n => n.includes('/api/v0/logs/file') && n.includes('offset='))"
    )
    assert follows, "the page never followed the log with offset="
    screenshot(browser, "logs")


def test_timeline_draws_the_tasks_that_ran(browser, scene):
    wait_for_task_events(scene)
    open_page(browser, scene.url, "timeline")
    bar = q(f'#timeline-svg rect.event[data-task-id="{scene.probe_task_id}"]')
    wait(browser, bar, "a bar for the finished task")
    # Named as Ray's timeline names a task's execution.
    assert browser.evaluate(f"{bar}.dataset.name") == "task::dashboard_probe_task"
    assert browser.evaluate(f"{bar}.dataset.state") == "FINISHED"
    assert float(browser.evaluate(f"{bar}.getAttribute('width')")) >= 2
    assert "dashboard_probe_task" in browser.evaluate(f"{bar}.querySelector('title').textContent")
    failed = q(f'#timeline-svg rect.event.failed[data-task-id="{scene.failing_task_id}"]')
    wait(browser, failed, "the failed task's bar, marked failed")
    # One row per worker, labelled with its node and pid.
    labels = browser.evaluate("[...document.querySelectorAll('#timeline-svg .row-label')].map(t => t.textContent)")
    assert any(f"(pid {scene.actor_pid})" in label for label in labels), labels
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


def test_with_auth_on_the_dashboard_asks_for_the_token_then_serves(browser):
    # A head of its own in token mode, started by the command line: this process reads
    # its own auth settings once, with auth off.
    temp_dir = tempfile.mkdtemp(prefix="rtd-db-", dir="/tmp")
    token = secrets.token_hex(32)
    env = dict(os.environ, RTD_AUTH_MODE="token", RTD_AUTH_TOKEN=token)
    env.pop("RTD_ADDRESS", None)
    try:
        started = subprocess.run([RTD, "start", "--head", "--num-cpus", "0", "--temp-dir", temp_dir],
                                 env=env, capture_output=True, text=True, timeout=60)
        assert started.returncode == 0, started.stderr
        with open(os.path.join(temp_dir, "session_latest", "node.json")) as f:
            url = f"http://{json.load(f)['dashboard_url']}"
        browser.navigate(f"{url}/#/overview")
        browser.wait_for(q("form#login"), timeout=TIMEOUT, what="the login page")
        browser.evaluate(f"{q('#token')}.value = {js(token)}; {q('form#login')}.requestSubmit(); true")
        wait(browser, "document.getElementById('page-overview')"
             " && document.getElementById('refresh-status').dataset.refreshes >= 1", "the overview after signing in")
        wait(browser, q('#node-count[data-alive="1"]'), "1 node alive")
    finally:
        browser.evaluate("document.cookie = 'rtd_auth_token=; max-age=0; path=/'; true")
        subprocess.run([RTD, "stop", "--force", "--temp-dir", temp_dir], capture_output=True, timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)
