"""Tasks that submit tasks: a parallel quicksort and a recursive Fibonacci.

A task may call ``.remote()`` and ``get`` itself. While a task blocks in ``get`` its CPU
is lent back, so the child tasks can run even when every CPU is taken by parents.

    python examples/nested_tasks.py
"""

import random
import time

import rtd as ray

CUTOFF = 20_000  # below this many items, sort locally: a task costs more than it saves


@ray.remote
def quicksort(items):
    if len(items) <= CUTOFF:
        return sorted(items)
    pivot = items[len(items) // 2]
    less = [x for x in items if x < pivot]
    equal = [x for x in items if x == pivot]
    greater = [x for x in items if x > pivot]
    left, right = quicksort.remote(less), quicksort.remote(greater)  # the two halves in parallel
    return ray.get(left) + equal + ray.get(right)


@ray.remote
def fib(n):
    if n < 10:  # cutoff: small cases are computed in the task itself
        a, b = 0, 1
        for _ in range(n):
            a, b = b, a + b
        return a
    return sum(ray.get([fib.remote(n - 1), fib.remote(n - 2)]))


def main():
    ray.init(num_cpus=2)

    random.seed(0)
    data = [random.random() for _ in range(200_000)]
    t0 = time.perf_counter()
    result = ray.get(quicksort.remote(data))
    assert result == sorted(data)
    print(f"quicksort of {len(data):,} floats with nested tasks: sorted correctly "
          f"in {time.perf_counter() - t0:.2f} s")

    t0 = time.perf_counter()
    value = ray.get(fib.remote(15))
    assert value == 610
    print(f"fib(15) = {value} with nested tasks in {time.perf_counter() - t0:.2f} s")

    ray.shutdown()


if __name__ == "__main__":
    main()
