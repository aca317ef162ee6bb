"""Core microbenchmark for rtd, with the metric names of Ray's ``ray microbenchmark``
(python/ray/_private/ray_perf.py), so figures can be compared line by line.

    python benches/microbenchmark.py [--duration S] [--repeats N] [--only SUBSTRING]
                                     [--many-pgs 50,100,200] [--json out.json] [--ray]
                                     [--cross-node]

Each throughput metric is run like Ray's ``timeit``: warm up, then ``--repeats`` rounds of
``--duration`` seconds each, printed as ``NAME per second MEAN +- SD``. ``multiplier`` turns
calls into the unit counted (e.g. 1000 tasks per batch, or GB per put).

Two extra figures that Ray's script has not got:

* ``init``: seconds from ``init(num_cpus=2)`` until a ``get(put(1))`` has come back,
  measured in fresh subprocesses (module import not counted).
* ``idle runtime memory``: MiB of RSS (VmRSS) of every process the driver started (the
  node daemon and its workers for rtd; GCS, raylet, workers ... for Ray), after
  ``init(num_cpus=2)`` and 1 s idle. The driver itself is not counted.

``generator items sync`` / ``generator items async``: items per second the caller takes
and gets from one generator task / one async actor's async generator method.

Placement groups and actors as users wait for them:

* ``placement group create/removal (ready)``: 20 groups at a time, each waited for with
  ``get(pg.ready())`` (``placement group create/removal`` uses ``wait()``, as Ray's does).
* ``many placement groups (N at once)``: seconds until N groups created at once are all
  ready (``--many-pgs 50,100,200`` shows how the cost grows with N).
* ``actor creation``: 50 actors created at once until each answered a first call, and
  ``actor creation latency``: one actor every 0.2 s, kept alive, median ms.

``--ray`` runs the same script against real Ray (``import ray``) when it is installed.

``--cross-node`` measures what crosses nodes instead (not in Ray's list): a two-node
``cluster_utils.Cluster`` on this machine, the driver on a head with no CPUs, so every
task and actor runs on the other node and every result travels between the two over
gRPC (``cross-node ...`` metrics).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

rt = None  # the module under test: rtd, or ray with --ray


# --------------------------------------------------------------------------- helpers

_only = ""
_results: list = []


def _record(name, mean, sd, unit):
    _results.append({"name": name, "mean": mean, "sd": sd, "unit": unit})


def timeit(name, fn, multiplier=1, *, duration=2.0, repeats=4, warmup=1.0):
    """Runs ``fn`` repeatedly; prints and records calls/s times ``multiplier``."""
    if _only and _only not in name:
        return None
    start = time.perf_counter()
    count = 0
    while time.perf_counter() - start < warmup or count == 0:
        fn()
        count += 1
    # Time a few calls at once so the clock is not read after every tiny call.
    step = max(1, int(count * min(duration, 1.0) / max(warmup, 1e-9) / 10))
    stats = []
    for _ in range(repeats):
        start = time.perf_counter()
        count = 0
        while time.perf_counter() - start < duration:
            for _ in range(step):
                fn()
            count += step
        stats.append(multiplier * count / (time.perf_counter() - start))
    mean = statistics.fmean(stats)
    sd = statistics.pstdev(stats)
    print(name, "per second", round(mean, 2), "+-", round(sd, 2), flush=True)
    _record(name, mean, sd, "per second")
    return mean, sd


def _children(pid):
    kids = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as f:
                kids += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return kids


def _descendants(pid):
    out, todo = [], _children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


def _rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _proc_name(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return "?"
    args = [a.decode(errors="replace") for a in args if a]
    if len(args) >= 3 and args[1] == "-m":
        return args[2]
    return os.path.basename(args[0]) if args else "?"


# ----------------------------------------------------------------------- init timing

_INIT_PROBE = """
import sys, time
import {module} as rt
t0 = time.perf_counter()
rt.init(num_cpus=2)
assert rt.get(rt.put(1)) == 1
t1 = time.perf_counter()
rt.shutdown()
print("INIT_SECONDS", t1 - t0)
"""


def measure_init(module_name, runs):
    name = "init"
    if _only and _only not in name:
        return
    times = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", _INIT_PROBE.format(module=module_name)],
            capture_output=True, text=True, timeout=120,
        )
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("INIT_SECONDS")]
        if out.returncode != 0 or not line:
            print(f"init: probe failed (exit {out.returncode}):\n{out.stderr[-2000:]}", file=sys.stderr)
            return
        times.append(float(line[0].split()[1]))
    mean, sd = statistics.fmean(times), statistics.pstdev(times)
    print(name, "seconds", round(mean, 4), "+-", round(sd, 4), f"(min {min(times):.4f}, {runs} runs)", flush=True)
    _record(name, mean, sd, "seconds")


def measure_idle_memory():
    name = "idle runtime memory"
    if _only and _only not in name:
        return
    time.sleep(1.0)
    procs = _descendants(os.getpid())
    per_proc = [(p, _proc_name(p), _rss_kib(p)) for p in procs]
    total_mib = sum(r for _, _, r in per_proc) / 1024
    print(name, "MiB", round(total_mib, 1),
          f"({len(per_proc)} processes: " + ", ".join(f"{n} {r / 1024:.1f}" for _, n, r in per_proc) + ")",
          f"[driver {_rss_kib(os.getpid()) / 1024:.1f} MiB not counted]", flush=True)
    _record(name, total_mib, 0.0, "MiB")


# ------------------------------------------------------------------------ the metrics


def _timing(args):
    return {"duration": args.duration, "repeats": args.repeats, "warmup": min(1.0, args.duration)}


def _small_value_task_and_actor():
    """Ray's ``small_value``: a task, and an actor class with a method, returning b"ok"."""

    @rt.remote
    def small_value():
        return b"ok"

    @rt.remote
    class Actor:
        def small_value(self):
            return b"ok"

    return small_value, Actor


def run_benchmarks(args):
    import numpy as np

    kw = _timing(args)
    small_value, Actor = _small_value_task_and_actor()

    @rt.remote
    def do_put_small():
        for _ in range(100):
            rt.put(0)

    value = rt.put(0)

    def get_small():
        rt.get(value)

    timeit("single client get calls (Plasma Store)", get_small, **kw)

    def put_small():
        rt.put(0)

    timeit("single client put calls (Plasma Store)", put_small, **kw)

    def put_multi_small():
        rt.get([do_put_small.remote() for _ in range(10)])

    timeit("multi client put calls (Plasma Store)", put_multi_small, 1000, **kw)

    # 100 MiB (Ray's own metric puts 800 MiB and counts it as 0.8 GB; same convention here).
    arr = np.zeros(100 * 1024 * 1024, dtype=np.uint8)

    def put_large():
        rt.put(arr)

    timeit("single client put gigabytes", put_large, 0.1, **kw)

    # Not in Ray's list: get of a 100 MiB numpy array that is already in the store.
    # A zero-copy get maps the buffer and does not touch it, so this is a per-call rate.
    big = rt.put(arr)

    def get_large():
        x = rt.get(big)
        assert x.nbytes == arr.nbytes

    timeit("single client get calls 100MiB numpy (zero-copy)", get_large, **kw)
    big = None  # frees the 100 MiB object

    def small_value_batch():
        rt.get([small_value.remote() for _ in range(1000)])

    timeit("single client tasks and get batch", small_value_batch, **kw)

    def wait_multiple_refs():
        not_ready = [small_value.remote() for _ in range(1000)]
        fetch_local = True
        for _ in range(1000):
            _ready, not_ready = rt.wait(not_ready, fetch_local=fetch_local)
            fetch_local = False

    timeit("single client wait 1k refs", wait_multiple_refs, **kw)

    def small_task():
        rt.get(small_value.remote())

    timeit("single client tasks sync", small_task, **kw)

    def small_task_async():
        rt.get([small_value.remote() for _ in range(1000)])

    timeit("single client tasks async", small_task_async, 1000, **kw)

    @rt.remote
    class AsyncActor:
        async def small_value(self):
            return b"ok"

    @rt.remote
    class Client:
        def __init__(self, servers):
            self.servers = servers

        def small_value_batch(self, n):
            rt.get([s.small_value.remote() for s in self.servers for _ in range(n)])

    actor = Actor.remote()
    rt.get(actor.small_value.remote())

    def actor_sync():
        rt.get(actor.small_value.remote())

    timeit("1:1 actor calls sync", actor_sync, **kw)

    def actor_async():
        rt.get([actor.small_value.remote() for _ in range(1000)])

    timeit("1:1 actor calls async", actor_async, 1000, **kw)

    async_actor = AsyncActor.remote()
    rt.get(async_actor.small_value.remote())

    def async_actor_async():
        rt.get([async_actor.small_value.remote() for _ in range(1000)])

    timeit("1:1 async-actor calls async", async_actor_async, 1000, **kw)

    n = 2
    servers = [Actor.remote() for _ in range(n)]
    clients = [Client.remote([s]) for s in servers]
    rt.get([c.small_value_batch.remote(1) for c in clients])

    def actor_n_to_n():
        rt.get([c.small_value_batch.remote(500) for c in clients])

    timeit("n:n actor calls async", actor_n_to_n, 500 * n, **kw)

    # Generators: items per second the caller consumes (gets) from one generator task,
    # and from an async actor's async generator method.
    @rt.remote
    def items(n):
        for i in range(n):
            yield i

    def generator_sync():
        for ref in items.remote(1000):
            rt.get(ref)

    timeit("generator items sync", generator_sync, 1000, **kw)

    @rt.remote
    class AsyncGenerator:
        async def items(self, n):
            for i in range(n):
                yield i

    async_generator = AsyncGenerator.remote()
    rt.get(async_generator.items.options(num_returns="dynamic").remote(1))

    def generator_async():
        for ref in async_generator.items.remote(1000):
            rt.get(ref)

    timeit("generator items async", generator_async, 1000, **kw)

    placement_group, remove_placement_group = rt.util.placement_group, rt.util.remove_placement_group

    def pg_create_removal():
        groups = [placement_group([{"custom": 0.001} for _ in range(10)]) for _ in range(10)]
        for g in groups:
            g.wait(10)
        for g in groups:
            remove_placement_group(g)

    timeit("placement group create/removal", pg_create_removal, 10, **kw)

    def pg_create_ready_removal():
        # What users write: wait for the group with get(ready()), not wait().
        groups = [placement_group([{"custom": 0.001}]) for _ in range(20)]
        rt.get([g.ready() for g in groups])
        for g in groups:
            remove_placement_group(g)

    timeit("placement group create/removal (ready)", pg_create_ready_removal, 20, **kw)

    for count in args.many_pgs:
        measure_many_placement_groups(count)

    measure_actor_creation(args.repeats)


def measure_many_placement_groups(count):
    """Seconds until ``count`` groups created at once are all ready (Ray's ``many_pgs``
    scalability figure); a cost linear in the number of groups keeps groups/s flat."""
    name = f"many placement groups ({count} at once)"
    if _only and _only not in name:
        return
    placement_group, remove_placement_group = rt.util.placement_group, rt.util.remove_placement_group
    start = time.perf_counter()
    groups = [placement_group([{"custom": 0.001}]) for _ in range(count)]
    rt.get([g.ready() for g in groups])
    seconds = time.perf_counter() - start
    for g in groups:
        remove_placement_group(g)
    print(name, "seconds", round(seconds, 3), f"({count / seconds:.0f} groups/s)", flush=True)
    _record(name, seconds, 0.0, "seconds")


def measure_actor_creation(repeats, count=50):
    """Actors/s for ``count`` actors created at once, until each has answered a first
    call (each needs a worker process of its own)."""
    name = "actor creation"
    if _only and _only not in name:
        return

    @rt.remote
    class Actor:
        def ready(self):
            return True

    stats = []
    for _ in range(repeats):
        start = time.perf_counter()
        actors = [Actor.remote() for _ in range(count)]
        rt.get([a.ready.remote() for a in actors])
        stats.append(count / (time.perf_counter() - start))
        for a in actors:
            rt.kill(a)
    mean, sd = statistics.fmean(stats), statistics.pstdev(stats)
    print(name, "per second", round(mean, 2), "+-", round(sd, 2), f"({count} actors at once)", flush=True)
    _record(name, mean, sd, "per second")

    # One actor at a time, kept alive, the driver busy in between: a pool refilled in
    # the background answers at once; an actor that waits for a fresh interpreter pays
    # its whole start-up.
    name = "actor creation latency (one every 0.2 s)"
    if _only and _only not in name:
        return
    latencies, actors = [], []
    for _ in range(10):
        start = time.perf_counter()
        actors.append(Actor.remote())
        rt.get(actors[-1].ready.remote())
        latencies.append(time.perf_counter() - start)
        time.sleep(0.2)
    for a in actors:
        rt.kill(a)
    median = statistics.median(latencies) * 1000
    print(name, "ms", round(median, 1), f"(median of {len(latencies)}, max {max(latencies) * 1000:.1f})", flush=True)
    _record(name, median, 0.0, "ms")


def run_cross_node_benchmarks(args):
    import numpy as np

    kw = _timing(args)
    small_value, Actor = _small_value_task_and_actor()

    @rt.remote
    def large_value():
        return np.zeros(100 * 1024 * 1024, dtype=np.uint8)

    def tasks_sync():
        rt.get(small_value.remote())

    timeit("cross-node tasks sync", tasks_sync, **kw)

    def tasks_async():
        rt.get([small_value.remote() for _ in range(1000)])

    timeit("cross-node tasks async", tasks_async, 1000, **kw)

    actor = Actor.remote()
    rt.get(actor.small_value.remote())

    def actor_async():
        rt.get([actor.small_value.remote() for _ in range(1000)])

    timeit("cross-node 1:1 actor calls async", actor_async, 1000, **kw)

    def pull_large():
        x = rt.get(large_value.remote())
        assert x.nbytes == 100 * 1024 * 1024

    # Made on the worker node, copied into the head's store, then read zero-copy.
    timeit("cross-node get gigabytes (100MiB task result)", pull_large, 0.1, **kw)


def main_cross_node(args):
    cluster_utils = __import__(f"{rt.__name__}.cluster_utils", fromlist=["Cluster"])
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        cluster.add_node(num_cpus=2, object_store_memory=1 << 30)
        cluster.wait_for_nodes()
        rt.init(address=cluster.address)
        run_cross_node_benchmarks(args)
    finally:
        rt.shutdown()
        cluster.shutdown()


def main(argv=None):
    global rt, _only
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per timed round (default 2)")
    parser.add_argument("--repeats", type=int, default=4, help="timed rounds per metric (default 4)")
    parser.add_argument("--init-runs", type=int, default=3, help="subprocesses for the init metric (default 3)")
    parser.add_argument("--only", default=os.environ.get("TESTS_TO_RUN", ""),
                        help="run only metrics whose name contains this substring")
    parser.add_argument("--many-pgs", default="200", type=lambda v: [int(n) for n in v.split(",") if n],
                        help="group counts for `many placement groups`, comma-separated (default 200)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--ray", action="store_true", help="benchmark real Ray (import ray) instead of rtd")
    parser.add_argument("--cross-node", action="store_true",
                        help="measure a two-node cluster on this machine instead (cross-node metrics)")
    args = parser.parse_args(argv)
    _only = args.only

    module_name = "ray" if args.ray else "rtd"
    try:
        rt = __import__(module_name)
    except ImportError as e:
        sys.exit(f"cannot import {module_name}: {e}")
    version = getattr(rt, "__version__", "?")
    print(f"# {module_name} {version}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"duration {args.duration}s x {args.repeats}", flush=True)

    if args.cross_node:
        main_cross_node(args)
        write_json(args, module_name, version)
        return

    measure_init(module_name, args.init_runs)

    t0 = time.perf_counter()
    rt.init(num_cpus=2, resources={"custom": 100})
    try:
        rt.get(rt.put(1))
        print(f"# in-process init took {time.perf_counter() - t0:.3f}s", flush=True)
        measure_idle_memory()
        run_benchmarks(args)
    finally:
        rt.shutdown()

    write_json(args, module_name, version)


def write_json(args, module_name, version):
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"module": module_name, "version": version, "cpus": os.cpu_count(),
                       "duration": args.duration, "repeats": args.repeats, "results": _results}, f, indent=2)
        print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
