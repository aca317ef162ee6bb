"""A cluster whose nodes live in separate network namespaces, as on separate machines:
they reach one another only over a virtual Ethernet (a bridge in a "switch" namespace,
10.200.0.0/24), never over loopback. The driver runs in the head's namespace.

    head   10.200.0.1   num_cpus=1
    A      10.200.0.2   num_cpus=1, {"wa": 1, "any": 2}
    B      10.200.0.3   num_cpus=1, {"wb": 1, "any": 2}

Then the link of the worker node an actor lives on is cut (its interface goes down: no
FIN, no RST, its packets just stop). The head must notice on its own
(RTD_NODE_TIMEOUT_MS=1500) while the job goes on, and the work that was on the lost
node (a retriable task, the actor) must fail over to the other worker node.

The cluster runs in token mode (``RTD_AUTH_MODE=token``): every node and the driver
present the same token over the namespaces' links.

Needs root and `ip netns`; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest
import rtd
from conftest import pid_alive, session_processes, shm_files

IP = shutil.which("ip")
SUBNET = "10.200.0"
# Every process of the cluster presents this token.
AUTH = {"RTD_AUTH_MODE": "token", "RTD_AUTH_TOKEN": secrets.token_hex(32)}


def _ip(*args, check=True):
    return subprocess.run([IP, *args], capture_output=True, text=True, timeout=20, check=check)


def _netns_unavailable():
    """Why network namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if IP is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"rtdprobe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    try:
        bridge = _ip("-n", probe, "link", "add", "br0", "type", "bridge", check=False)
        if bridge.returncode != 0:
            return f"cannot create a bridge in a namespace: {bridge.stderr.strip()}"
        veth = _ip("-n", probe, "link", "add", "va", "type", "veth", "peer", "name", "vb", check=False)
        if veth.returncode != 0:
            return f"cannot create veth pairs: {veth.stderr.strip()}"
        probe_python = [IP, "netns", "exec", probe, sys.executable, "-c", "pass"]
        ran = subprocess.run(probe_python, capture_output=True, timeout=20)
        if ran.returncode != 0:
            return f"`ip netns exec` failed: {ran.stderr.decode(errors='replace').strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


class Net:
    """The namespaces, their links and the node daemons; everything goes in ``close``."""

    def __init__(self):
        tag = str(os.getpid() % 100000)
        self.switch = f"rtd{tag}s"
        self.names = {"head": f"rtd{tag}h", "a": f"rtd{tag}a", "b": f"rtd{tag}b"}
        self.ips = {"head": f"{SUBNET}.1", "a": f"{SUBNET}.2", "b": f"{SUBNET}.3"}
        # Interface names: the node's end and the switch's end.
        self.veth = {role: (f"v{tag}{role[0]}", f"w{tag}{role[0]}") for role in self.names}
        self.namespaces = []
        self.daemons = {}
        self.temp_dirs = {}
        self.logs = {}

    def build(self):
        for ns in [self.switch, *self.names.values()]:
            _ip("netns", "add", ns)
            self.namespaces.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for role, ns in self.names.items():
            inner, outer = self.veth[role]
            _ip("-n", ns, "link", "add", inner, "type", "veth", "peer", "name", outer)
            _ip("-n", ns, "link", "set", outer, "netns", self.switch)
            _ip("-n", self.switch, "link", "set", outer, "master", "br0")
            _ip("-n", self.switch, "link", "set", outer, "up")
            _ip("-n", ns, "addr", "add", f"{self.ips[role]}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")

    def exec_cmd(self, role, *cmd):
        return [IP, "netns", "exec", self.names[role], *cmd]

    def start_node(self, role, port, *args):
        temp_dir = tempfile.mkdtemp(prefix=f"rtd-ns{role[0]}-", dir="/tmp")
        self.temp_dirs[role] = temp_dir
        log = open(os.path.join(temp_dir, "daemon.log"), "w")
        self.logs[role] = log.name
        if role == "head":
            where = ["--head", "--port", str(port)]
        else:
            where = ["--address", f"{self.ips['head']}:{port}"]
        cmd = self.exec_cmd(
            role, sys.executable, "-m", "rtd._private.node", "start", "--block", *where,
            "--node-ip-address", self.ips[role], "--temp-dir", temp_dir, "--python", sys.executable, *args,
        )
        env = dict(os.environ, RTD_NODE_TIMEOUT_MS="1500", **AUTH)
        env.pop("RTD_ADDRESS", None)
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        self.daemons[role] = process
        node_file = os.path.join(temp_dir, "session_latest", "node.json")
        deadline = time.monotonic() + 30
        while not os.path.exists(node_file):
            if process.poll() is not None:
                raise AssertionError(f"the {role} node exited during start-up:\n{self.log(role)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the {role} node did not start within 30 s:\n{self.log(role)}")
            time.sleep(0.02)
        with open(node_file) as f:
            return json.load(f)

    def log(self, role):
        try:
            with open(self.logs[role]) as f:
                return f.read()[-4000:]
        except (OSError, KeyError):
            return ""

    def close(self):
        for process in self.daemons.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.daemons.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # Workers of a daemon that could not clean up exit on their own; make sure.
        for temp_dir in self.temp_dirs.values():
            for session in [os.path.join(temp_dir, d) for d in os.listdir(temp_dir) if d.startswith("session_")]:
                for pid in session_processes(os.path.realpath(session)):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                for shm in shm_files(os.path.realpath(session)):
                    os.unlink(shm)
        for ns in reversed(self.namespaces):
            _ip("netns", "del", ns, check=False)
        for temp_dir in self.temp_dirs.values():
            shutil.rmtree(temp_dir, ignore_errors=True)


DRIVER = """
import json, os, subprocess, sys, time
import rtd
from rtd.util.scheduling_strategies import NodeAffinitySchedulingStrategy

out = {}
rtd.init(address="HEAD_IP:PORT")
nodes = rtd.nodes()
out["nodes"] = {n["NodeID"]: [n["NodeManagerAddress"], n["Alive"], n["IsHead"]] for n in nodes}
out["driver_node"] = rtd.get_runtime_context().get_node_id()

@rtd.remote
def where(sleep_s=0.0):
    import socket, time
    import rtd
    time.sleep(sleep_s)
    # The address this worker's node is reached at, seen from inside its namespace.
    return rtd.get_runtime_context().get_node_id()

@rtd.remote
def total(a):
    import rtd
    print("summing")
    return rtd.get_runtime_context().get_node_id(), float(a.sum())

import numpy as np
big = rtd.put(np.arange(2_000_000, dtype=np.float64))   # 16 MB on the head
out["on_a"] = rtd.get([where.options(resources={"wa": 1}).remote() for _ in range(2)], timeout=30)
out["on_b"] = rtd.get([where.options(resources={"wb": 1}).remote() for _ in range(2)], timeout=30)
out["sum_on_a"] = rtd.get(total.options(resources={"wa": 1}).remote(big), timeout=30)

@rtd.remote(resources={"wa": 1})
def make_on_a():
    import numpy as np
    return np.full(1_000_000, 2.0)

out["a_to_b"] = rtd.get(total.options(resources={"wb": 1}).remote(make_on_a.remote()), timeout=30)

# A working_dir made here travels to node B through the GCS (no shared disk is used:
# B unpacks it under its own session directory).
import tempfile
code = tempfile.mkdtemp(prefix="rtd-ns-wd-")
with open(os.path.join(code, "netns_wd_module.py"), "w") as f:
    f.write("ANSWER = 'from the driver'\\n")

@rtd.remote(resources={"wb": 1}, runtime_env={"working_dir": code, "env_vars": {"NETNS_ENV": "set"}})
def in_env():
    import os, netns_wd_module
    return netns_wd_module.ANSWER, os.environ.get("NETNS_ENV"), os.getcwd()

out["env_on_b"] = rtd.get(in_env.remote(), timeout=60)
print(json.dumps({"phase": 1, **out}), flush=True)

# What runs when A is cut off: tasks on B, a retriable task on A, and an actor on A
# that may restart once.
@rtd.remote(resources={"any": 1}, max_restarts=1)
class Where:
    def node(self):
        import rtd
        return rtd.get_runtime_context().get_node_id()

# The actor goes wherever the cluster puts it ("any" is on A and B); that node is the
# one cut off, and the other one, the survivor, keeps working.
actor = Where.remote()
victim_id = rtd.get(actor.node.remote(), timeout=30)
victim, survivor = ("a", "b") if victim_id == out["on_a"][0] else ("b", "a")
survivor_id = out["on_" + survivor][0]
label = {"a": {"wa": 1}, "b": {"wb": 1}}
out = {"phase": 2, "victim": victim}
on_survivor = [where.options(resources=label[survivor]).remote(1.0) for _ in range(3)]
stranded = where.options(
    resources={"any": 1}, max_retries=2,
    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=victim_id, soft=True),
).remote(3.0)
ready, _ = rtd.wait([stranded], timeout=1.0)
out["stranded_done_before_cut"] = bool(ready)
subprocess.run(CUTS[victim], check=True)
cut_at = time.monotonic()
dead_after = None
while time.monotonic() - cut_at < 20:
    if not [n for n in rtd.nodes() if n["NodeID"] == victim_id and n["Alive"]]:
        dead_after = time.monotonic() - cut_at
        break
    time.sleep(0.05)
out["dead_after"] = dead_after
out["on_survivor_after_cut"] = rtd.get(on_survivor, timeout=30)
out["new_on_survivor"] = rtd.get(where.options(resources=label[survivor]).remote(), timeout=30)
out["cluster_cpus"] = rtd.cluster_resources().get("CPU")
print(json.dumps(out), flush=True)

# Both should fail over to the survivor; each gets the same 15 s.
out = {"phase": 3}
deadline = time.monotonic() + 15
while time.monotonic() < deadline and ("stranded" not in out or "actor_after" not in out):
    if "stranded" not in out and rtd.wait([stranded], timeout=0.2)[0]:
        try:
            out["stranded"] = rtd.get(stranded)
        except Exception as e:
            out["stranded"] = repr(e)
    if "actor_after" not in out:
        call = actor.node.remote()
        if rtd.wait([call], timeout=1.0)[0]:
            try:
                out["actor_after"] = rtd.get(call)
            except Exception as e:
                out["actor_error"] = repr(e)
print(json.dumps(out), flush=True)
rtd.shutdown()
"""


def test_nodes_in_separate_network_namespaces_run_work_and_a_cut_off_node_is_declared_dead():
    why = _netns_unavailable()
    if why:
        pytest.skip(f"network namespaces are unavailable: {why}")
    if rtd.is_initialized():
        rtd.shutdown()
    net = Net()
    try:
        net.build()
        port = 23456 + os.getpid() % 1000  # inside the head's namespace: nothing else is there
        head = net.start_node("head", port, "--num-cpus", "1")
        node_a = net.start_node("a", port, "--num-cpus", "1", "--resources", '{"wa": 1, "any": 2}')
        node_b = net.start_node("b", port, "--num-cpus", "1", "--resources", '{"wb": 1, "any": 2}')
        cuts = {role: [IP, "-n", net.names[role], "link", "set", net.veth[role][0], "down"] for role in ("a", "b")}
        source = (
            textwrap.dedent(DRIVER)
            .replace("HEAD_IP", net.ips["head"])
            .replace("PORT", str(port))
            .replace("CUTS", repr(cuts))
        )
        env = dict(os.environ, **AUTH)
        env.pop("RTD_ADDRESS", None)
        try:
            driver = subprocess.run(
                net.exec_cmd("head", sys.executable, "-c", source),
                capture_output=True, text=True, timeout=120, env=env,
            )
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"the driver hung; its output so far:\n{e.stdout}\n{e.stderr}")
        phases = {}
        for line in driver.stdout.splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                phases[record["phase"]] = record
        context = f"driver stdout:\n{driver.stdout}\nstderr:\n{driver.stderr[-4000:]}\nhead log:\n{net.log('head')}"
        assert 1 in phases, context

        # Phase 1: three nodes, each at its namespace's address; work and objects move.
        one = phases[1]
        ids = {"head": head["node_id"], "a": node_a["node_id"], "b": node_b["node_id"]}
        assert one["nodes"] == {
            ids["head"]: [net.ips["head"], True, True],
            ids["a"]: [net.ips["a"], True, False],
            ids["b"]: [net.ips["b"], True, False],
        }, context
        assert one["driver_node"] == ids["head"]
        assert one["on_a"] == [ids["a"]] * 2
        assert one["on_b"] == [ids["b"]] * 2
        assert one["sum_on_a"] == [ids["a"], float(sum(range(2_000_000)))]
        assert one["a_to_b"] == [ids["b"], 2_000_000.0]
        answer, variable, cwd = one["env_on_b"]
        assert (answer, variable) == ("from the driver", "set"), context
        assert os.path.realpath(cwd).startswith(os.path.realpath(net.temp_dirs["b"])), context
        # What the tasks printed reached the driver, marked with their machines' addresses.
        for role in ("a", "b"):
            line = rf"^\(total pid=\d+, ip={re.escape(net.ips[role])}\) summing$"
            assert re.search(line, driver.stdout, re.M), context

        # Phase 2: the node the actor lives on is cut off; the head declares it dead
        # after the timeout, and the job's work on the other node finishes.
        assert 2 in phases, context
        two = phases[2]
        survivor = "b" if two["victim"] == "a" else "a"
        assert not two["stranded_done_before_cut"]
        assert two["dead_after"] is not None, "the head never declared the cut-off node dead\n" + context
        assert 1.0 <= two["dead_after"] <= 10.0, context
        assert two["on_survivor_after_cut"] == [ids[survivor]] * 3
        assert two["new_on_survivor"] == ids[survivor]
        assert two["cluster_cpus"] == 2.0

        # Phase 3: the task that was running on the lost node is retried on the survivor
        # and the actor restarts there (as in Ray, work on a node declared dead fails
        # over even when no connection to it ever closed).
        assert 3 in phases, context
        three = phases[3]
        assert three.get("stranded") == ids[survivor], context
        assert three.get("actor_after") == ids[survivor], context
        assert driver.returncode == 0, context
    finally:
        net.close()
    for temp_dir in net.temp_dirs.values():
        assert not os.path.exists(temp_dir)
    for process in net.daemons.values():
        assert not pid_alive(process.pid)
    listed = _ip("netns", "list").stdout
    assert not any(ns in listed for ns in [net.switch, *net.names.values()])
