"""Makes the README's dashboard screenshots (docs/images/dashboard-*.png): starts a
two-node cluster, gives it some work (actors, a placement group, tasks that finish, fail
and run), and photographs each page in headless Chromium at 1280x800.

    python scripts/dashboard_screenshots.py [--out docs/images]

A page whose endpoint the server does not have yet is left out (its old picture stays).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request

import rtd
from rtd.cluster_utils import Cluster
from rtd.util.placement_group import placement_group

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import chromium  # noqa: E402 - the tests' browser driver, found through the path above

# Page, the endpoint it needs, what to wait for before the picture.
PAGES = [
    ("overview", "/api/cluster_status", "#nodes-table"),
    ("actors", "/api/v0/actors", "#actors-table"),
    ("tasks", "/api/v0/tasks", "#tasks-table"),
    ("placement-groups", "/api/v0/placement_groups", "#pgs-table"),
    ("jobs", "/api/v0/jobs", "#jobs-table"),
    ("objects", "/api/v0/objects", "#objects-table"),
    ("timeline", "/api/v0/tasks/timeline", "#timeline-svg"),
]


@rtd.remote(num_cpus=1, resources={"accelerator": 1})
class ParameterServer:
    def __init__(self):
        self.weights = [0.0] * 10

    def update(self, grad):
        self.weights = [w + g for w, g in zip(self.weights, grad)]
        return sum(self.weights)


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


def available(url, endpoint):
    try:
        with urllib.request.urlopen(url + endpoint, timeout=10):
            return True
    except urllib.error.HTTPError as e:
        return e.code != 404


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
        running = [long_running.remote() for _ in range(2)]
        kept = rtd.put(b"x" * 5_000_000)  # noqa: F841 - held so the objects page lists it

        browser = chromium.Browser(binary, width=1280, height=800)
        try:
            for page, endpoint, ready in PAGES:
                if not available(url, endpoint):
                    print(f"{page}: skipped, {endpoint} answers 404")
                    continue
                browser.navigate(f"{url}/?shot={page}#/{page}")
                browser.wait_for(f"document.querySelector({ready!r})", timeout=30, what=page)
                path = os.path.join(args.out, f"dashboard-{page}.png")
                browser.screenshot(path)
                print(f"{page}: {os.path.relpath(path, ROOT)}")
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
