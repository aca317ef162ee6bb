"""Shared fixtures and helpers for the end-to-end tests.

The machine running the suite may have only 2 cores, so one runtime is started per test
module (as Ray's ``ray_start_regular_shared``) and reused by every test in it that asks for
``shared_runtime``. A test that needs its own init arguments asks for ``start_runtime``,
which first shuts down whatever runtime is up; the next ``shared_runtime`` test brings the
shared one back.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest
import rtd
from rtd import _core

SHARED_INIT_ARGS = {"num_cpus": 2}

# Set while the runtime that is up is the shared one of the current module.
_shared = {"up": False}

# The `rtd` console script of the environment running the tests.
RTD = shutil.which("rtd") or os.path.join(os.path.dirname(sys.executable), "rtd")


def rtd_cli(*args, timeout=60, env=None):
    """Runs the ``rtd`` command line; ``env`` adds to this process's environment."""
    full_env = {**os.environ, **env} if env else None
    return subprocess.run([RTD, *args], capture_output=True, text=True, timeout=timeout, env=full_env)


@contextlib.contextmanager
def cli_head(prefix):
    """A head node started with ``rtd start --head --num-cpus 2``; yields its temp dir
    and stops the node afterwards."""
    # Short: Unix socket paths inside it must stay under 108 bytes.
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    try:
        started = rtd_cli("start", "--head", "--num-cpus", "2", "--temp-dir", path)
        assert started.returncode == 0, started.stderr
        yield path
    finally:
        rtd_cli("stop", "--temp-dir", path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def temp_dir():
    """A fresh ``--temp-dir`` for nodes a test starts with the CLI; whatever runs there
    is stopped and the directory removed afterwards."""
    # Short: Unix socket paths inside it must stay under 108 bytes.
    path = tempfile.mkdtemp(prefix="rtd-t-", dir="/tmp")
    yield path
    rtd_cli("stop", "--force", "--temp-dir", path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def redis_address():
    """A ``redis-server`` of the test's own on a free loopback port (``HOST:PORT``),
    stopped afterwards; the test is skipped where Debian's ``redis-server`` is missing."""
    from rtd.cluster_utils import _free_port

    path = shutil.which("redis-server")
    if path is None:
        pytest.skip("redis-server is not on PATH (scripts/test installs Debian's redis-server)")
    port = _free_port()
    data = tempfile.mkdtemp(prefix="rtd-redis-", dir="/tmp")
    server = subprocess.Popen(
        [path, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", data],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def accepts():
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    try:
        wait_for_condition(accepts, timeout=10)
        yield f"127.0.0.1:{port}"
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(data, ignore_errors=True)


def wait_for_condition(predicate, timeout=10, retry_interval_ms=20, **kwargs):
    """Polls ``predicate(**kwargs)`` until it is truthy; raises after ``timeout`` s.
    Exceptions raised by the predicate count as "not yet" (the last one is reported)."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            if predicate(**kwargs):
                return True
        except Exception as e:  # noqa: BLE001 - "not yet"
            last_error = e
        if time.monotonic() > deadline:
            message = f"The condition was not met within {timeout} s."
            if last_error is not None:
                message += f" Last error: {last_error!r}"
            raise RuntimeError(message)
        time.sleep(retry_interval_ms / 1000)


def cluster_views(address: str) -> list:
    """Every alive node's raylet's view of the cluster, for the cluster whose head is at
    ``address``: per raylet, ``{node id: {"Alive", "Resources", "AvailableResources"}}``
    for its own node (as it accounts it) and the others (as it last heard from the GCS)."""
    sockets = [n["RayletSocketName"] for n in _core.query_nodes(address) if n["Alive"]]
    return [{n["NodeID"]: n for n in _core.cluster_view(socket)} for socket in sockets]


def wait_for_views(address: str, predicate, timeout=10):
    """Waits until ``predicate(view)`` holds for every raylet's view of the cluster at
    ``address`` (see ``cluster_views``): raylets schedule by these views, which lag the
    cluster by a heartbeat or two, so a test that needs a decision to see a change
    waits here first."""
    wait_for_condition(lambda: all(predicate(view) for view in cluster_views(address)), timeout=timeout)


def _define_signal_actor():
    # Defined inside a function so cloudpickle ships it by value to the workers (they
    # cannot import the test modules).
    class SignalActor:
        """A latch a test holds work on, as Ray's ``ray._common.test_utils.SignalActor``:
        remote code blocks in ``rtd.get(signal.wait.remote())`` until the test calls
        ``signal.send.remote()``, so the test decides when work proceeds instead of
        guessing with sleeps. ``cur_num_waiters`` tells the test the work has reached
        the latch. Every method is async: they all run on the actor's event loop, the
        only thread that may touch the ``asyncio.Event``."""

        def __init__(self):
            import asyncio

            self.ready_event = asyncio.Event()
            self.num_waiters = 0

        async def send(self, clear=False):
            self.ready_event.set()
            if clear:
                self.ready_event.clear()

        async def wait(self, should_wait=True):
            if should_wait:
                self.num_waiters += 1
                await self.ready_event.wait()
                self.num_waiters -= 1

        async def cur_num_waiters(self):
            return self.num_waiters

    return SignalActor


# Holds no CPU, so it can be created while tasks or placement groups take every CPU.
SignalActor = rtd.remote(num_cpus=0)(_define_signal_actor())


def _stat_fields(pid: int) -> list:
    """The fields of ``/proc/PID/stat`` after the command name (state first, then the
    parent pid, ...); empty once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def pid_alive(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie counts as gone)."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def process_sleeping(pid: int) -> bool:
    """True while ``pid``'s main thread sleeps (waits in the kernel) rather than runs."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] == "S"


def session_processes(session_dir: str) -> list:
    """Pids of live processes that belong to the session: the daemon (session dir on its
    command line) and workers (``RTD_SESSION_DIR`` in their environment)."""
    found = []
    marker = f"RTD_SESSION_DIR={session_dir}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if session_dir.encode() in cmdline or marker in environ.split(b"\0"):
            if pid_alive(pid):
                found.append(pid)
    return found


def parent_pid(pid: int):
    """The parent of ``pid`` (from ``/proc/PID/stat``), or None once it is gone."""
    fields = _stat_fields(pid)
    return int(fields[1]) if len(fields) > 1 else None


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def worker_template_pids(session_dir: str) -> list:
    """The session's worker template (the daemon's child that forks workers). Forked
    workers share its command line; they are the template's children, not the daemon's."""
    return [
        p
        for p in session_processes(session_dir)
        if b"rtd._private.worker_template" in _cmdline(p) and session_dir.encode() in _cmdline(parent_pid(p) or 0)
    ]


def worker_pids_of_session(session_dir: str) -> set:
    """The session's worker processes: its processes other than the daemon and template."""
    daemons = {p for p in session_processes(session_dir) if session_dir.encode() in _cmdline(p)}
    return set(session_processes(session_dir)) - daemons - set(worker_template_pids(session_dir))


def shm_files(session_dir: str) -> list:
    """The session's shared-memory files: ``/dev/shm/rtd_<daemon pid>_<session name>``."""
    return glob.glob("/dev/shm/rtd_*_" + glob.escape(os.path.basename(session_dir.rstrip("/"))))


def spilled_bytes(session_dir: str) -> int:
    """Bytes a node wrote to disk for spilled objects: the files in its session other
    than sockets, logs and node.json."""
    total = 0
    for root, _, files in os.walk(session_dir):
        for name in files:
            path = os.path.join(root, name)
            if os.path.isfile(path) and not path.endswith((".sock", "node.json")) and "/logs" not in path:
                total += os.path.getsize(path)
    return total


def session_left_overs(session_dir: str, pids=()) -> list:
    """What of a stopped session still exists (empty when it is cleaned up)."""
    left = [f"pid {p}" for p in pids if pid_alive(p)]
    left += [f"session pid {p}" for p in session_processes(session_dir) if p not in pids]
    if os.path.exists(session_dir):
        left.append(session_dir)
    left += shm_files(session_dir)
    return left


def assert_session_gone(session_dir: str, pids=(), timeout=10):
    try:
        wait_for_condition(lambda: not session_left_overs(session_dir, pids), timeout=timeout)
    except RuntimeError:
        left = session_left_overs(session_dir, pids)
        raise AssertionError(f"left behind after the runtime stopped: {left}") from None


def run_script(source: str, timeout=60, env=None) -> subprocess.CompletedProcess:
    """Runs ``source`` in a fresh Python interpreter; returns the completed process."""
    full_env = dict(os.environ)
    full_env.pop("RTD_ADDRESS", None)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def last_json_line(stdout: str):
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{") or line.startswith("["):
            return json.loads(line)
    raise AssertionError(f"no JSON line in the script's output:\n{stdout}")


@pytest.fixture(scope="module", autouse=True)
def _module_runtime_teardown():
    """Every module starts and ends with no runtime up."""
    if rtd.is_initialized():
        rtd.shutdown()
    _shared["up"] = False
    yield
    rtd.shutdown()
    _shared["up"] = False


@pytest.fixture
def shared_runtime():
    """The module's shared runtime (``num_cpus=2``), started on first use."""
    if not (_shared["up"] and rtd.is_initialized()):
        rtd.shutdown()
        rtd.init(**SHARED_INIT_ARGS)
        _shared["up"] = True
    yield rtd


@pytest.fixture
def start_runtime():
    """A factory: ``start_runtime(**init_args)`` shuts down any runtime that is up and
    starts a fresh one; it is shut down after the test."""

    def start(**kwargs):
        rtd.shutdown()
        _shared["up"] = False
        return rtd.init(**kwargs)

    yield start
    rtd.shutdown()
    _shared["up"] = False


@pytest.fixture
def counter_file(tmp_path):
    """A file-backed counter that tasks in other processes can bump:
    ``bump(path) -> new value`` (pass ``path`` into the task)."""
    path = tmp_path / "counter"
    path.write_text("0")
    return str(path)


def _define_bump():
    # Defined inside a function so cloudpickle ships it by value to the workers (they
    # cannot import the test modules).
    def bump(path: str) -> int:
        """Increments the counter in ``path`` (one process at a time); returns the new value."""
        import fcntl

        with open(path, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            value = int(f.read() or 0) + 1
            f.seek(0)
            f.truncate()
            f.write(str(value))
            f.flush()
            return value

    return bump


bump = _define_bump()


def read_counter(path: str) -> int:
    with open(path) as f:
        return int(f.read() or 0)


def barrier_task():
    """A remote function ``meet(path, i, n, timeout)`` (1 CPU): announces itself in
    ``path`` and waits for ``n`` arrivals; True only if ``n`` ran at the same time."""

    @rtd.remote(num_cpus=1)
    def meet(path, i, n, timeout):
        import os
        import time

        open(os.path.join(path, f"arrived_{i}"), "w").close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len([f for f in os.listdir(path) if f.startswith("arrived_")]) >= n:
                return True
            time.sleep(0.02)
        return False

    return meet
