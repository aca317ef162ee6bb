"""Monte Carlo estimate of pi with tasks.

Points are drawn uniformly in the square [-1, 1] x [-1, 1]; the fraction inside the
unit circle approaches pi / 4. Sampling is split over tasks that run in parallel, and
``wait`` reports progress as they finish.

    python examples/pi.py [NUM_TASKS] [SAMPLES_PER_TASK]
"""

import math
import sys
import time

import numpy as np
import rtd as ray


@ray.remote
def sample(num_samples: int, seed: int) -> int:
    """How many of ``num_samples`` random points fall inside the unit circle."""
    rng = np.random.default_rng(seed)
    inside = 0
    while num_samples > 0:  # in chunks of a million, to keep memory small
        n = min(1_000_000, num_samples)
        num_samples -= n
        x = rng.uniform(-1, 1, n)
        y = rng.uniform(-1, 1, n)
        inside += int(np.count_nonzero(x * x + y * y <= 1.0))
    return inside


def main():
    num_tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    per_task = int(sys.argv[2]) if len(sys.argv) > 2 else 5_000_000
    total = num_tasks * per_task

    ray.init(num_cpus=2)
    t0 = time.perf_counter()
    pending = [sample.remote(per_task, seed) for seed in range(num_tasks)]
    inside = 0
    done = 0
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        inside += ray.get(ready[0])
        done += 1
        print(f"progress: {done}/{num_tasks} tasks")
    pi = 4 * inside / total
    print(f"estimated pi = {pi:.5f} from {total:,} samples "
          f"(error {abs(pi - math.pi):.5f}) in {time.perf_counter() - t0:.2f} s")
    ray.shutdown()


if __name__ == "__main__":
    main()
