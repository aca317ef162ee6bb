"""Node churn soak: tasks keep running while nodes leave and new ones join.

A head with no CPUs and three worker nodes; a driver submits ``--tasks`` retried-forever
tasks that only worker nodes can run, and gathers them in a thread while, ``--rounds``
times, the oldest worker node is removed and a fresh one added. Every task must come back
with the right value: a node that leaves is a system failure, retried elsewhere.

    python benches/node_churn.py                   # full size: 3000 tasks, 3 rounds
    python benches/node_churn.py --tasks 300 --rounds 2 --interval 0.3

Prints ``lost=L wrong=W seconds=S`` and exits non-zero if anything was lost or wrong.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import rtd
from rtd.cluster_utils import Cluster


def churn(tasks: int, rounds: int, interval: float, graceful: bool) -> tuple[int, int, float]:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        nodes = [cluster.add_node(num_cpus=1, resources={"w": 1}) for _ in range(3)]
        rtd.init(address=cluster.address)

        @rtd.remote(max_retries=-1, resources={"w": 0.01}, num_cpus=0.25)
        def sq(i):
            time.sleep(0.005)
            return i * i

        start = time.monotonic()
        refs = [sq.remote(i) for i in range(tasks)]
        results: list = [None] * tasks

        def gather():
            for i, ref in enumerate(refs):
                try:
                    results[i] = rtd.get(ref, timeout=120)
                except Exception as e:  # counted as lost below
                    results[i] = e

        gatherer = threading.Thread(target=gather)
        gatherer.start()
        for _ in range(rounds):
            time.sleep(interval)
            cluster.remove_node(nodes.pop(0), allow_graceful=graceful)
            nodes.append(cluster.add_node(num_cpus=1, resources={"w": 1}))
        gatherer.join()
        seconds = time.monotonic() - start
        lost = sum(isinstance(r, Exception) for r in results)
        wrong = sum(not isinstance(r, Exception) and r != i * i for i, r in enumerate(results))
        errors = {type(r).__name__ + ": " + str(r).splitlines()[0] for r in results if isinstance(r, Exception)}
        for e in sorted(errors)[:5]:
            print("error:", e, file=sys.stderr)
        return lost, wrong, seconds
    finally:
        rtd.shutdown()
        cluster.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between node swaps")
    parser.add_argument("--kill", action="store_true", help="remove nodes by SIGKILL instead of gracefully")
    args = parser.parse_args()
    lost, wrong, seconds = churn(args.tasks, args.rounds, args.interval, graceful=not args.kill)
    print(f"lost={lost} wrong={wrong} seconds={seconds:.1f}")
    return 1 if lost or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
