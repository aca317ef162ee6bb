"""Word count with map and reduce tasks.

Each map task counts the words of one chunk of text and splits its counts into one
partition per reducer (by hash of the word), returned as separate objects with
``num_returns``. Reducer ``r`` receives partition ``r`` of every mapper and merges them.

    python examples/map_reduce.py
"""

import collections
import zlib

import rtd as ray

NUM_MAPPERS = 4
NUM_REDUCERS = 3

TEXT = """
Ray is a unified framework for scaling AI and Python applications. Ray consists of a
core distributed runtime and a set of AI libraries for simplifying machine learning
compute. Tasks are remote functions that run asynchronously in worker processes, and
objects are the values that tasks return or that are put in the object store. A task
returns object refs immediately, and get waits for the values. Small objects are kept
in process memory and large objects live in shared memory, so that tasks on the same
node read them without copying. The scheduler places tasks where their resources are
available, and the owner of an object keeps track of its references so that the object
is freed when no reference to it is left.
""" * 50


def partition_of(word: str) -> int:
    return zlib.crc32(word.encode()) % NUM_REDUCERS  # stable across processes


@ray.remote(num_returns=NUM_REDUCERS)
def map_words(chunk: str):
    counts = collections.Counter(
        w.strip(".,").lower() for w in chunk.split() if w.strip(".,")
    )
    partitions = [{} for _ in range(NUM_REDUCERS)]
    for word, n in counts.items():
        partitions[partition_of(word)][word] = n
    return tuple(partitions)


@ray.remote
def reduce_words(*partitions):
    total = collections.Counter()
    for p in partitions:
        total.update(p)
    return dict(total)


def main():
    ray.init(num_cpus=2)
    lines = TEXT.strip().splitlines()
    chunks = ["\n".join(lines[i::NUM_MAPPERS]) for i in range(NUM_MAPPERS)]

    # map_outputs[m][r]: the ref of partition r from mapper m
    map_outputs = [map_words.remote(chunk) for chunk in chunks]
    reduce_refs = [
        reduce_words.remote(*[map_outputs[m][r] for m in range(NUM_MAPPERS)])
        for r in range(NUM_REDUCERS)
    ]

    counts = {}
    for part in ray.get(reduce_refs):
        counts.update(part)

    expected = collections.Counter(
        w.strip(".,").lower() for w in TEXT.split() if w.strip(".,")
    )
    assert counts == dict(expected), "map/reduce result differs from a local count"
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:8]
    print(f"{sum(counts.values())} words, {len(counts)} distinct; most common:")
    for word, n in top:
        print(f"  {word:10s} {n}")
    ray.shutdown()


if __name__ == "__main__":
    main()
