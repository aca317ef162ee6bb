"""How long a cluster takes to be usable again after its head restarts: the time from
the head's restart command (`rtd start --head ...`, the same command as its first start)
to the first successful task of a new driver. The cluster has two nodes, each a daemon
started with the command line; the head daemon is killed with SIGKILL before each run.
The time includes the command (it returns once the new head is up), a fresh
interpreter importing rtd, `rtd.init(address="auto")` and the task.

    python benches/head_restart.py [RUNS] [--redis-address HOST:PORT]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

RTD = shutil.which("rtd") or os.path.join(os.path.dirname(sys.executable), "rtd")

FIRST_TASK = """
import sys, time
import rtd
rtd.init(address="auto", _temp_dir=sys.argv[1])

@rtd.remote
def one():
    return 1

assert rtd.get(one.remote(), timeout=60) == 1
print(time.time())
"""


def rtd_cli(*args):
    subprocess.run([RTD, *args], check=True, capture_output=True, text=True, timeout=120)


def daemon_pid(temp_dir):
    with open(os.path.join(temp_dir, "session_latest", "node.json")) as f:
        return json.load(f)["pid"]


def kill_and_wait(pid):
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                break
        time.sleep(0.01)


def restart_seconds(head_command, head_dir):
    """Kills the head, restarts it; seconds from the restart command to the task."""
    kill_and_wait(daemon_pid(head_dir))
    start = time.time()
    rtd_cli(*head_command)
    done = subprocess.run([sys.executable, "-c", FIRST_TASK, head_dir], check=True, capture_output=True, text=True)
    return float(done.stdout.split()[-1]) - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="?", type=int, default=5)
    parser.add_argument("--redis-address", help="keep the GCS's state in this Redis (default: embedded)")
    args = parser.parse_args()
    head_dir = tempfile.mkdtemp(prefix="rtd-bench-hr-", dir="/tmp")
    worker_dir = tempfile.mkdtemp(prefix="rtd-bench-hr-", dir="/tmp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = ["--redis-address", args.redis_address] if args.redis_address else []
    head_command = ["start", "--head", "--port", str(port), "--num-cpus", "1", "--temp-dir", head_dir, *store]
    try:
        rtd_cli(*head_command)
        rtd_cli("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--temp-dir", worker_dir)
        times = [restart_seconds(head_command, head_dir) for _ in range(args.runs)]
        label = "redis" if args.redis_address else "embedded store"
        print(
            f"head restart to first task of a new driver ({label}): median {statistics.median(times):.2f} s, "
            f"max {max(times):.2f} s over {args.runs} runs"
        )
    finally:
        for d in (worker_dir, head_dir):
            subprocess.run([RTD, "stop", "--force", "--temp-dir", d], capture_output=True, timeout=60)
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
