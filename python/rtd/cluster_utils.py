"""``Cluster``: a multi-node cluster on one machine, for tests (as Ray's
``ray.cluster_utils.Cluster``). Every node is a real node daemon process with its own
raylet, object store and workers; they talk over TCP on 127.0.0.1.

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=2, resources={"alice": 1})
    cluster.wait_for_nodes()
    rtd.init(address=cluster.address)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

from rtd import _core
from rtd._private.services import dashboard_args, node_args, spawn_node


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One node daemon of a ``Cluster``."""

    def __init__(self, process, session_dir, is_head):
        self.process = process
        self.session_dir = session_dir
        self.is_head = is_head
        with open(os.path.join(session_dir, "node.json")) as f:
            info = json.load(f)
        self.node_id = info["node_id"]
        self.unique_id = self.node_id
        self.shm_path = info["shm_path"]
        # The head's dashboard as host:port (Ray's ``webui_url``); None on other nodes.
        self.webui_url = info.get("dashboard_url") or None
        # Where the node serves Prometheus metrics (`http://127.0.0.1:PORT/metrics`).
        self.metrics_export_port = info["metrics_export_port"]

    def __repr__(self):
        return f"Node({'head' if self.is_head else 'worker'}, {self.node_id[:8]})"


class Cluster:
    def __init__(self, initialize_head=False, connect=False, head_node_args=None, shutdown_at_exit=True):
        # Short: Unix socket paths inside must stay under 108 bytes.
        self._temp_dir = tempfile.mkdtemp(prefix="rtdc-", dir="/tmp")
        self._port = None
        self.head_node = None
        self.worker_nodes = []
        self._nodes_started = 0
        if initialize_head:
            try:
                self.add_node(**(head_node_args or {}))
            except BaseException:
                shutil.rmtree(self._temp_dir, ignore_errors=True)
                raise
            if connect:
                import rtd

                rtd.init(address=self.address)
        if shutdown_at_exit:
            import atexit

            atexit.register(self.shutdown)

    @property
    def webui_url(self):
        """The head's dashboard and state API as ``host:port`` (None when it has none)."""
        return self.head_node.webui_url if self.head_node else None

    @property
    def address(self):
        if self._port is None:
            raise RuntimeError("The cluster has no head node yet.")
        return f"127.0.0.1:{self._port}"

    def list_all_nodes(self):
        return ([self.head_node] if self.head_node else []) + list(self.worker_nodes)

    def add_node(self, wait=True, num_cpus=1, num_gpus=None, resources=None, object_store_memory=None, **kwargs):
        """Starts a node daemon: the head first, then nodes that join it."""
        dashboard_options = {"include_dashboard", "dashboard_host", "dashboard_port"}
        unknown = set(kwargs) - {"env_vars", "node_name", "_system_config"} - dashboard_options
        if unknown:
            raise TypeError(f"add_node() got unexpected keyword argument(s): {sorted(unknown)}")
        is_head = self.head_node is None
        # Unique across clusters and node instances: the session name also names the
        # node's /dev/shm file, and a removed node's name is never reused.
        cluster_tag = os.path.basename(self._temp_dir).removeprefix("rtdc-")
        session_dir = os.path.join(self._temp_dir, f"session_{cluster_tag}_{self._nodes_started}")
        self._nodes_started += 1
        args = ["--node-ip-address", "127.0.0.1"]
        if is_head:
            self._port = _free_port()
            args += ["--head", "--port", str(self._port)]
            args += dashboard_args(**{k: v for k, v in kwargs.items() if k in dashboard_options})
        else:
            args += ["--address", self.address]
        args += node_args(num_cpus, num_gpus, resources, object_store_memory)
        process = spawn_node(session_dir, args)
        node = Node(process, session_dir, is_head)
        if is_head:
            self.head_node = node
        else:
            self.worker_nodes.append(node)
        if wait:
            self.wait_for_nodes()
        return node

    def remove_node(self, node, allow_graceful=True):
        """Stops a node: gracefully (its daemon cleans up) or by SIGKILL, as a crash."""
        if allow_graceful:
            try:
                node.process.stdin.close()
            except OSError:
                pass
            try:
                node.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
        else:
            node.process.kill()
            node.process.wait()
            # A killed daemon cannot remove its files, and its workers exit on their own.
            if os.path.exists(node.shm_path):
                os.unlink(node.shm_path)
            shutil.rmtree(node.session_dir, ignore_errors=True)
        if node is self.head_node:
            self.head_node = None
        elif node in self.worker_nodes:
            self.worker_nodes.remove(node)

    def wait_for_nodes(self, timeout=30):
        """Waits until the head lists exactly this cluster's live nodes as alive."""
        expected = {n.node_id for n in self.list_all_nodes()}
        deadline = time.monotonic() + timeout
        while True:
            alive = {n["NodeID"] for n in _core.query_nodes(self.address) if n["Alive"]}
            if alive == expected:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"Timed out waiting for nodes: {len(alive)} alive, {len(expected)} expected.")
            time.sleep(0.05)

    def shutdown(self):
        """Stops every node (and disconnects this process if it is a driver of this
        cluster)."""
        import rtd
        from rtd import api

        if rtd.is_initialized() and (api._state.session_dir or "").startswith(self._temp_dir):
            rtd.shutdown()
        for node in reversed(self.list_all_nodes()):
            self.remove_node(node)
        shutil.rmtree(self._temp_dir, ignore_errors=True)
