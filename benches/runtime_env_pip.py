"""The first task in a new `pip` runtime environment, from `.remote()` to its result:

* cold: a new venv, with pip's download cache empty (the package comes from the index);
* new venv: a new venv, the package already in pip's download cache (a second cluster);
* cached venv: the venv exists on the node, a new worker starts in it (another env with
  the same pip list, e.g. other env_vars);
* warm worker: a second task in the same env (an idle worker of the env is reused).

Each run starts a fresh local cluster (its session directory holds the venvs), with
`PIP_CACHE_DIR`/`UV_CACHE_DIR` pointed at a fresh directory for the cold case.

    python benches/runtime_env_pip.py [RUNS] [--package six==1.17.0]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

RUN = """
import json, sys, time
import rtd

package = sys.argv[1]
rtd.init(num_cpus=2, _temp_dir=sys.argv[2])

@rtd.remote
def probe():
    import sys
    return sys.prefix

def timed(env):
    start = time.perf_counter()
    rtd.get(probe.options(runtime_env=env).remote(), timeout=600)
    return time.perf_counter() - start

rtd.get(probe.remote(), timeout=60)  # the node's plain workers are up
first = timed({"pip": [package]})
warm = timed({"pip": [package]})
cached = timed({"pip": [package], "env_vars": {"OTHER_ENV": "1"}})
print(json.dumps({"first": first, "warm_worker": warm, "cached_venv": cached}))
rtd.shutdown()
"""


def run_once(package, pip_cache):
    temp_dir = tempfile.mkdtemp(prefix="rtd-bench-env-", dir="/tmp")
    env = dict(os.environ, PIP_CACHE_DIR=pip_cache, UV_CACHE_DIR=pip_cache)
    env.pop("RTD_ADDRESS", None)
    try:
        done = subprocess.run(
            [sys.executable, "-c", RUN, package, temp_dir],
            capture_output=True, text=True, timeout=900, env=env, check=True,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="?", type=int, default=3)
    parser.add_argument("--package", default="six==1.17.0")
    args = parser.parse_args()
    figures = {"cold": [], "new_venv": [], "cached_venv": [], "warm_worker": []}
    for _ in range(args.runs):
        pip_cache = tempfile.mkdtemp(prefix="rtd-bench-pipcache-", dir="/tmp")
        try:
            cold = run_once(args.package, pip_cache)
            again = run_once(args.package, pip_cache)
        finally:
            shutil.rmtree(pip_cache, ignore_errors=True)
        figures["cold"].append(cold["first"])
        figures["new_venv"].append(again["first"])
        figures["cached_venv"].append(again["cached_venv"])
        figures["warm_worker"].append(again["warm_worker"])
    installer = "uv" if shutil.which("uv") else "python -m venv + pip"
    print(f"first task in a pip env ({args.package}, {installer}), median of {args.runs}:")
    for name, values in figures.items():
        print(f"  {name:12s} {statistics.median(values) * 1000:8.1f} ms   (min {min(values) * 1000:.1f})")


if __name__ == "__main__":
    main()
