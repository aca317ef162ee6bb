"""Token authentication (Ray's ``RAY_AUTH_MODE=token``): a two-node cluster started with
the `rtd` command line in token mode lets in nodes, drivers and HTTP clients that present
its token and refuses those that do not, with ``rtd.exceptions.AuthenticationError``
saying how to set it. Also: ``rtd get-auth-token``, the permissions of Unix sockets, and
the warning about listening beyond this machine without a token.

Every process here is a subprocess: a process reads its auth configuration once.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
import urllib.error
import urllib.request

import pytest
from conftest import RTD, last_json_line, run_script, wait_for_condition
from rtd.cluster_utils import _free_port

pytestmark = pytest.mark.timeout(180)

TOKEN = secrets.token_hex(32)
AUTH = {"RTD_AUTH_MODE": "token", "RTD_AUTH_TOKEN": TOKEN}
WRONG = {"RTD_AUTH_MODE": "token", "RTD_AUTH_TOKEN": secrets.token_hex(32)}


def _env(extra):
    """This process's environment without any auth settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTD_AUTH") and k != "RTD_ADDRESS"}
    # A token in the home directory of whoever runs the suite must not leak in.
    env["RTD_AUTH_TOKEN_PATH"] = "/nonexistent/rtd-auth-token"
    env.update(extra)
    return env


def cli(*args, env=None, timeout=60):
    return subprocess.run([RTD, *args], capture_output=True, text=True, timeout=timeout, env=_env(env or {}))


def _node_file(temp_dir):
    with open(os.path.join(temp_dir, "session_latest", "node.json")) as f:
        return json.load(f)


class TokenCluster:
    def __init__(self, port, head_dir, worker_dir):
        self.address = f"127.0.0.1:{port}"
        self.head_dir = head_dir
        self.worker_dir = worker_dir
        self.head = _node_file(head_dir)
        self.dashboard_port = int(self.head["dashboard_url"].rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def cluster():
    head_dir = tempfile.mkdtemp(prefix="rtd-a-", dir="/tmp")
    worker_dir = tempfile.mkdtemp(prefix="rtd-a-", dir="/tmp")
    port = _free_port()
    try:
        # The dashboard listens beyond this machine: with a token that is no warning.
        head = cli("start", "--head", "--port", str(port), "--num-cpus", "1", "--dashboard-host", "0.0.0.0",
                   "--temp-dir", head_dir, env=AUTH)
        assert head.returncode == 0, head.stderr
        worker = cli("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--resources", '{"dave": 1}',
                     "--temp-dir", worker_dir, env=AUTH)
        assert worker.returncode == 0, worker.stderr
        yield TokenCluster(port, head_dir, worker_dir)
    finally:
        for d in (worker_dir, head_dir):
            cli("stop", "--force", "--temp-dir", d)
            shutil.rmtree(d, ignore_errors=True)


def test_the_right_token_runs_work_across_nodes(cluster):
    result = run_script(
        f"""
        import json, rtd
        rtd.init(address="{cluster.address}")

        @rtd.remote(resources={{"dave": 1}})
        def where(x):
            return rtd.get_runtime_context().get_node_id(), len(x)

        big = rtd.put(b"x" * (4 << 20))  # crosses nodes through the object manager
        node, size = rtd.get(where.remote(big), timeout=60)
        print(json.dumps({{"node": node, "size": size, "driver": rtd.get_runtime_context().get_node_id(),
                          "nodes": len([n for n in rtd.nodes() if n["Alive"]])}}))
        rtd.shutdown()
        """,
        env=_env(AUTH),
    )
    assert result.returncode == 0, result.stderr
    out = last_json_line(result.stdout)
    assert out["nodes"] == 2 and out["node"] != out["driver"] and out["size"] == 4 << 20
    status = cli("status", "--temp-dir", cluster.worker_dir, env=AUTH)
    assert status.returncode == 0 and len(re.findall(r"^Node [0-9a-f]{56} \(alive", status.stdout, re.M)) == 2
    listed = cli("list", "nodes", "--address", f"127.0.0.1:{cluster.dashboard_port}", "--format", "json", env=AUTH)
    assert listed.returncode == 0, listed.stderr


@pytest.mark.parametrize("env", [{}, WRONG], ids=["no-token", "wrong-token"])
def test_a_node_without_the_token_cannot_join(cluster, env):
    temp_dir = tempfile.mkdtemp(prefix="rtd-a-", dir="/tmp")
    try:
        joined = cli("start", "--address", cluster.address, "--num-cpus", "1", "--temp-dir", temp_dir, env=env)
        assert joined.returncode != 0, joined.stdout
        assert "refused the connection" in joined.stderr and "RTD_AUTH_TOKEN" in joined.stderr, joined.stderr
    finally:
        cli("stop", "--force", "--temp-dir", temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.parametrize("env", [{}, WRONG], ids=["no-token", "wrong-token"])
def test_a_driver_without_the_token_gets_authentication_error(cluster, env):
    result = run_script(
        f"""
        import json, rtd
        from rtd.exceptions import AuthenticationError, RayError
        try:
            rtd.init(address="{cluster.address}")
        except AuthenticationError as e:
            print(json.dumps({{"error": str(e), "ray_error": isinstance(e, RayError)}}))
        """,
        env=_env(env),
    )
    assert result.returncode == 0, result.stderr
    out = last_json_line(result.stdout)
    assert out["ray_error"] and "RTD_AUTH_TOKEN" in out["error"], out


def test_token_mode_without_a_token_is_an_error_up_front():
    result = run_script(
        """
        import rtd
        from rtd.exceptions import AuthenticationError
        try:
            rtd.init(num_cpus=1)
        except AuthenticationError as e:
            print("refused:", e)
        """,
        env=_env({"RTD_AUTH_MODE": "token"}),
    )
    assert "refused:" in result.stdout and "rtd get-auth-token --generate" in result.stdout, result
    started = cli("start", "--head", "--temp-dir", "/tmp/rtd-a-never", env={"RTD_AUTH_MODE": "token"})
    assert started.returncode != 0 and "no token was found" in started.stderr, started.stderr


def _get(url, headers=None):
    """``(status, body)`` of a GET."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_the_dashboard_and_metrics_answer_401_without_the_token(cluster):
    for url in (f"http://127.0.0.1:{cluster.dashboard_port}/api/v0/nodes",
                f"http://127.0.0.1:{cluster.head['metrics_export_port']}/metrics"):
        status, body = _get(url)
        assert status == 401 and "RTD_AUTH_TOKEN" in body, (url, status, body)
        status, _ = _get(url, {"Authorization": f"Bearer {WRONG['RTD_AUTH_TOKEN']}"})
        assert status == 401, url
        status, _ = _get(url, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200, url
    # A browser gets the login page, which stores the token in a cookie.
    dashboard = f"http://127.0.0.1:{cluster.dashboard_port}/"
    status, page = _get(dashboard, {"Accept": "text/html"})
    assert status == 401 and "rtd_auth_token" in page
    status, page = _get(dashboard, {"Cookie": f"rtd_auth_token={TOKEN}"})
    assert status == 200 and "rtd_auth_token" not in page
    # The Python state API presents the token too.
    result = run_script(
        f"""
        from rtd.util.state import list_nodes
        print(len(list_nodes(address="127.0.0.1:{cluster.dashboard_port}")))
        """,
        env=_env(AUTH),
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("2"), result.stderr


def test_refusals_are_logged_with_the_peers_address_and_no_warning_about_exposure(cluster):
    log = os.path.join(cluster.head_dir, "session_latest", "logs", "node.out")
    _get(f"http://127.0.0.1:{cluster.dashboard_port}/api/v0/nodes")

    def refused_logged():
        with open(log) as f:
            return re.search(r"refused a connection from 127\.0\.0\.1:\d+", f.read())

    wait_for_condition(refused_logged)
    with open(log) as f:
        assert "SECURITY WARNING" not in f.read()


def test_unix_sockets_are_the_owners_alone(cluster):
    sockets = os.path.join(cluster.head["session_dir"], "sockets")
    assert stat.S_IMODE(os.stat(sockets).st_mode) == 0o700
    for name in ("raylet.sock", "plasma.sock"):
        assert stat.S_IMODE(os.stat(os.path.join(sockets, name)).st_mode) == 0o600


def test_listening_beyond_this_machine_without_a_token_warns_loudly(tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="rtd-a-", dir="/tmp")
    try:
        started = cli("start", "--head", "--num-cpus", "0", "--dashboard-host", "0.0.0.0", "--temp-dir", temp_dir)
        assert started.returncode == 0, started.stderr
        assert re.search(r"^rtd: SECURITY WARNING: the dashboard listens on 0\.0\.0\.0", started.stderr, re.M)
        with open(os.path.join(temp_dir, "session_latest", "logs", "node.out")) as f:
            assert re.search(r"SECURITY WARNING: the dashboard listens on 0\.0\.0\.0:\d+", f.read())
    finally:
        cli("stop", "--force", "--temp-dir", temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_get_auth_token_generates_a_private_token_once(tmp_path):
    path = tmp_path / "dir" / "auth_token"
    env = {"RTD_AUTH_TOKEN_PATH": str(path)}
    missing = cli("get-auth-token", env=env)
    assert missing.returncode != 0 and "--generate" in missing.stderr
    generated = cli("get-auth-token", "--generate", env=env)
    assert generated.returncode == 0, generated.stderr
    token = generated.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert cli("get-auth-token", "--generate", env=env).stdout.strip() == token
    assert cli("get-auth-token", env=env).stdout.strip() == token
    assert cli("get-auth-token", env={**env, "RTD_AUTH_TOKEN": "from-env"}).stdout.strip() == "from-env"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A self-signed CA (the `openssl` command line) and two node certificates for
    127.0.0.1: one it signed, one from another CA."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command line")
    root = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ext = root / "node.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n")

    def run(*args):
        done = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30, cwd=root)
        assert done.returncode == 0, done.stderr

    for ca in ("ca", "other-ca"):
        run("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "1", "-subj", f"/CN={ca}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
        run("req", *ec, "-keyout", f"{ca}-node.key", "-out", f"{ca}-node.csr", "-subj", "/CN=rtd-node")
        run("x509", "-req", "-in", f"{ca}-node.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{ca}-node.crt", "-days", "1", "-extfile", str(ext))

    def tls(ca):
        return {"RTD_USE_TLS": "1", "RTD_TLS_SERVER_CERT": str(root / f"{ca}-node.crt"),
                "RTD_TLS_SERVER_KEY": str(root / f"{ca}-node.key"), "RTD_TLS_CA_CERT": str(root / "ca.crt")}

    return tls("ca"), tls("other-ca")


def test_nodes_talk_over_tls_and_refuse_peers_without_it(certificates):
    tls, foreign = certificates
    env = {**AUTH, **tls}
    dirs = [tempfile.mkdtemp(prefix="rtd-a-", dir="/tmp") for _ in range(4)]
    port = _free_port()
    try:
        head = cli("start", "--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard", "false",
                   "--temp-dir", dirs[0], env=env)
        assert head.returncode == 0, head.stderr
        worker = cli("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--resources", '{"dave": 1}',
                     "--temp-dir", dirs[1], env=env)
        assert worker.returncode == 0, worker.stderr
        result = run_script(
            f"""
            import rtd
            rtd.init(address="127.0.0.1:{port}")

            @rtd.remote(resources={{"dave": 1}})
            def twice(x):
                return 2 * len(x)

            print("answer", rtd.get(twice.remote(rtd.put(b"x" * (1 << 20))), timeout=60))
            """,
            env=_env(env),
        )
        assert result.returncode == 0 and f"answer {2 << 20}" in result.stdout, result.stderr
        # Plain HTTP/2 to a TLS port, and a certificate another CA signed, get nowhere.
        for i, other in ((2, AUTH), (3, {**AUTH, **foreign})):
            joined = cli("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--temp-dir", dirs[i],
                         env=other)
            assert joined.returncode != 0 and "cannot connect" in joined.stderr, joined.stderr
        broken = cli("start", "--head", "--temp-dir", dirs[2], env={**env, "RTD_TLS_CA_CERT": "/nonexistent.crt"})
        assert broken.returncode != 0 and "RTD_TLS_CA_CERT=/nonexistent.crt" in broken.stderr, broken.stderr
    finally:
        for d in reversed(dirs):
            cli("stop", "--force", "--temp-dir", d)
            shutil.rmtree(d, ignore_errors=True)
