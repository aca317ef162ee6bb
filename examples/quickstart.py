"""Quickstart: a remote function, put/get, wait, and zero-copy numpy.

    python examples/quickstart.py

rtd works like Ray: ``import rtd as ray`` and the Ray Core API (tasks and objects) is there.
"""

import time

import numpy as np
import rtd as ray

ray.init(num_cpus=2)


# A remote function: f.remote(...) runs it as a task in a worker process and
# returns an ObjectRef (a future) right away.
@ray.remote
def square(x):
    return x * x


refs = [square.remote(i) for i in range(4)]
print("squares:", ray.get(refs))  # [0, 1, 4, 9]

# put stores a value in the object store; its ref can be passed to tasks, which
# receive the value itself.
ref = ray.put(10)
print("square of put value:", ray.get(square.remote(ref)))  # 100


# wait returns the refs that are ready first, and the rest.
@ray.remote
def sleep_then_return(seconds):
    time.sleep(seconds)
    return seconds


pending = [sleep_then_return.remote(s) for s in (0.5, 0.01)]
ready, not_ready = ray.wait(pending, num_returns=1)
print("first ready:", ray.get(ready[0]), "still running:", len(not_ready))  # 0.01, 1
print("all:", ray.get(pending))

# numpy arrays are stored once in shared memory; get returns a read-only view of the
# stored buffer instead of a copy, in the driver and in the workers.
array = np.arange(10_000_000, dtype=np.float64)  # 80 MB
array_ref = ray.put(array)
t0 = time.perf_counter()
view = ray.get(array_ref)
print(f"get of an 80 MB array took {(time.perf_counter() - t0) * 1e3:.2f} ms, "
      f"writeable={view.flags.writeable}, sum={view.sum():.0f}")


@ray.remote
def total(a):
    return float(a.sum())


print("sum in a task:", ray.get(total.remote(array_ref)))

ray.shutdown()
