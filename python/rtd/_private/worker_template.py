"""The worker template: ``python -m rtd._private.worker_template``, one per node.

A fresh worker interpreter spends most of its start-up importing rtd and its
dependencies (~60 ms of CPU). The template pays that once: it imports everything a
worker imports, then forks a worker per request. The child already has every module
loaded, so it only connects to the raylet (``_core.connect``) and starts serving.

Forking is safe only because the template runs no threads: it never connects (that
starts the tokio runtime) and it checks, after its imports, that it is the only thread
in its process. If it is not, it refuses (a line on stderr and ``refused`` on the reply
pipe) and the raylet starts every worker with a fresh interpreter instead.

The raylet talks to the template over two pipes:

* requests arrive on stdin, one line per worker to start: the worker id in hex;
* replies go out on fd 3 (a pipe the raylet set up): first ``ready`` once the imports
  are done (or ``refused <why>``), then one line per request, the child's pid or
  ``error <why>``.

Replies use fd 3 rather than stdout so that the template's stdout and stderr stay the
node's own output, which forked workers inherit unchanged, exactly as spawned workers
inherit them from the node daemon. A child drops both pipes (stdin becomes /dev/null).

Lifetime: the template exits when its request pipe closes, that is when the raylet
stops or dies. Its children are reaped automatically (SIGCHLD is ignored here; a child
restores the default). A worker outlives neither the template's nor the daemon's death
by design of the worker itself: it exits when its raylet connection closes, as a
spawned worker does, so a killed template does not take its workers with it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

# Everything a worker imports, loaded before any fork.
from rtd._private import worker

REPLY_FD = 3


def _thread_count() -> int:
    """Threads of this process, native ones included (Python's count misses those)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _reply(line: str) -> None:
    data = (line + "\n").encode()
    while data:
        data = data[os.write(REPLY_FD, data):]


def _valid_worker_id(text: str) -> bool:
    return len(text) > 0 and len(text) % 2 == 0 and all(c in "0123456789abcdef" for c in text)


def _serve():
    """Answers requests until the raylet closes the pipe. Returns None in the template
    (time to exit) and the worker id in a forked child (time to become that worker)."""
    threads = max(threading.active_count(), _thread_count())
    if threads != 1:
        why = f"{threads} threads are running after the imports; forking is unsafe"
        print(f"rtd worker template: {why}: workers start with a fresh interpreter", file=sys.stderr, flush=True)
        _reply(f"refused {why}")
        return None
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    _reply("ready")
    pending = b""
    while True:
        data = os.read(0, 4096)
        if not data:
            return None
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            worker_id = line.decode(errors="replace").strip()
            if not _valid_worker_id(worker_id):
                _reply("error bad worker id")
                continue
            # Output buffered here must not be written twice, by the template and the child.
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                pid = os.fork()
            except OSError as e:
                _reply(f"error fork failed: {e}")
                continue
            if pid == 0:
                return worker_id
            _reply(str(pid))


def _become_worker(worker_id: str) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.close(REPLY_FD)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.environ["RTD_WORKER_ID"] = worker_id
    sys.argv = [worker.__file__]


def main() -> int:
    worker_id = _serve()
    if worker_id is None:
        return 0
    # Only a forked child gets here, outside every frame of the template's loop.
    _become_worker(worker_id)
    return worker.main()


if __name__ == "__main__":
    sys.exit(main())
