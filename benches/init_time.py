"""How long ``rtd.init()`` takes to a usable runtime, with the head's dashboard on and
off: each run is a fresh interpreter that starts a local head and shuts it down.

    python benches/init_time.py [RUNS]
"""

import json
import statistics
import subprocess
import sys

RUN = """
import json, sys, time
import rtd
t = time.perf_counter()
rtd.init(num_cpus=1, **json.loads(sys.argv[1]))
print(time.perf_counter() - t)
rtd.shutdown()
"""


def median_ms(options, runs):
    times = []
    for _ in range(runs):
        command = [sys.executable, "-c", RUN, json.dumps(options)]
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        times.append(float(out.stdout.split()[-1]))
    return statistics.median(times) * 1e3


if __name__ == "__main__":
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    # Alternating, so a busy moment of the machine does not land on one side only.
    for _ in range(2):
        for label, options in (("dashboard on", {}), ("dashboard off", {"include_dashboard": False})):
            print(f"init {label}: median {median_ms(options, runs):.1f} ms over {runs} runs")
