"""Makes the README's dashboard screenshots (docs/images/dashboard-*.png): starts a
two-node cluster, gives it some work (actors, one of which prints, a placement group,
tasks that finish, fail and run, objects put), and photographs each page in headless
Chromium at 1280x800.

    python scripts/dashboard_screenshots.py [--out docs/images]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request

import rtd
from rtd.cluster_utils import Cluster
from rtd.util.placement_group import placement_group

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import chromium  # noqa: E402 - the tests' browser driver, found through the path above

# Page (with its query), what to wait for before the picture. {actor} is the printing
# actor's id.
PAGES = [
    ("overview", "#nodes-table"),
    ("actors", "#actors-table"),
    ("tasks", "#task-errors-list details.task-error"),
    ("placement-groups", "#pgs-table"),
    ("jobs", "#jobs-table"),
    ("objects", "#objects-table"),
    ("logs?actor_id={actor}", "#log-text"),
    ("timeline", "#timeline-svg rect.event.failed"),
]


@rtd.remote(num_cpus=1, resources={"accelerator": 1})
class ParameterServer:
    def __init__(self):
        self.weights = [0.0] * 10

    def update(self, grad):
        self.weights = [w + g for w, g in zip(self.weights, grad)]
        return sum(self.weights)


@rtd.remote(num_cpus=0)
class Trainer:
    """Prints its progress, which the logs page shows."""

    def train(self, epochs):
        for epoch in range(epochs):
            print(f"epoch {epoch}: loss {1 / (epoch + 1):.3f}", flush=True)
        return epochs


@rtd.remote(num_cpus=0)
class Counter:
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n


@rtd.remote
def preprocess(i):
    time.sleep(0.05 * (i % 4))
    return [i] * 10


@rtd.remote
def flaky(i):
    if i % 3 == 0:
        raise ValueError(f"bad shard {i}")
    return i


@rtd.remote
def long_running():
    time.sleep(60)


def wait_for_task_events(url, names, timeout=30):
    """Until the state API has every task of ``names`` finished or failed (workers
    report their side of a task about once a second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url + "/api/v0/tasks?limit=10000", timeout=10) as response:
            rows = json.load(response)["data"]["result"]["result"]
        done = {r["name"] for r in rows if r["state"] in ("FINISHED", "FAILED")}
        if names <= done and all(r["state"] in ("FINISHED", "FAILED") for r in rows if r["name"] in names):
            return
        time.sleep(0.2)
    print(f"warning: some tasks of {names} are not reported done after {timeout} s", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "images"))
    args = parser.parse_args()

    binary = chromium.find_chromium()
    if binary is None:
        sys.exit("chromium is not installed (apt-get install chromium)")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4})
    try:
        cluster.add_node(num_cpus=4, num_gpus=1, resources={"accelerator": 2})
        cluster.wait_for_nodes()
        url = "http://" + rtd.init(address=cluster.address, namespace="demo").dashboard_url  # Ray's form: host:port

        ps = ParameterServer.options(name="parameter-server").remote()
        counters = [Counter.options(name=f"counter-{i}").remote() for i in range(3)]
        rtd.get([c.incr.remote() for c in counters])
        rtd.get([ps.update.remote([0.1] * 10) for _ in range(5)])
        rtd.kill(counters[2])  # a dead actor, with its death cause
        pg = placement_group([{"CPU": 1}, {"CPU": 1, "GPU": 1}], strategy="SPREAD", name="trainers")
        pg.wait(30)
        placement_group([{"CPU": 64}], name="too-big")  # stays PENDING
        rtd.get([preprocess.remote(i) for i in range(40)])
        for ref in [flaky.remote(i) for i in range(6)]:
            try:
                rtd.get(ref)
            except rtd.exceptions.RayTaskError:
                pass
        trainer = Trainer.options(name="trainer").remote()
        rtd.get(trainer.train.remote(12))
        running = [long_running.remote() for _ in range(2)]
        kept = [rtd.put(b"x" * 5_000_000), rtd.put(list(range(100_000))), rtd.put("small")]  # noqa: F841 - listed
        wait_for_task_events(url, {"preprocess", "flaky", "Trainer.train"})

        browser = chromium.Browser(binary, width=1280, height=800)
        try:
            for page, ready in PAGES:
                name = page.split("?")[0]
                browser.navigate(f"{url}/?shot={name}#/{page.format(actor=trainer._actor_id.hex())}")
                browser.wait_for(f"document.querySelector({ready!r})", timeout=30, what=name)
                path = os.path.join(args.out, f"dashboard-{name}.png")
                browser.screenshot(path)
                print(f"{name}: {os.path.relpath(path, ROOT)} ({os.path.getsize(path) // 1024} KiB)")
            errors = browser.page_errors()
            if errors:
                sys.exit(f"the pages logged errors: {errors}")
        finally:
            browser.close()
        for ref in running:
            rtd.cancel(ref, force=True)
    finally:
        rtd.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
