"""Jobs end to end: Ray's Jobs REST API on a head started with ``rtd start --head``,
driven through ``rtd.job_submission.JobSubmissionClient``, raw HTTP (urllib, and a
websocket for the log tail) and the ``rtd job`` commands."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import urllib.error
import urllib.request
import uuid

import pytest
from conftest import pid_alive, rtd_cli, run_script, wait_for_condition
from rtd.cluster_utils import _free_port
from rtd.job_submission import JobDetails, JobStatus, JobSubmissionClient, JobType
from rtd.util.state import list_jobs

pytestmark = pytest.mark.timeout(120)

# An entrypoint that connects with a plain rtd.init() (RTD_ADDRESS is set for it) and
# runs a task that prints.
DRIVER = textwrap.dedent(
    """
    import rtd
    rtd.init()

    @rtd.remote
    def shout(x):
        print("task says", x)
        return x * 2

    print("driver got", rtd.get(shout.remote(21)))
    """
)

JOB_DETAILS_FIELDS = {
    "type", "job_id", "submission_id", "driver_info", "status", "entrypoint", "message", "error_type",
    "start_time", "end_time", "metadata", "runtime_env", "driver_agent_http_address", "driver_node_id",
    "driver_exit_code",
}


def python_entrypoint(source: str) -> str:
    """A shell command running ``source`` with the tests' Python."""
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(source)}"


def dashboard_of(temp_dir: str) -> str:
    with open(os.path.join(temp_dir, "session_latest", "node.json")) as f:
        return "http://" + json.load(f)["dashboard_url"]


def start_head(temp_dir: str, port: int, env=None) -> None:
    started = rtd_cli(
        "start", "--head", "--port", str(port), "--num-cpus", "2", "--temp-dir", temp_dir, env=env
    )
    assert started.returncode == 0, started.stderr


@pytest.fixture(scope="module")
def head():
    """A head node with its dashboard: (its temp dir, the dashboard's URL)."""
    path = tempfile.mkdtemp(prefix="rtd-jobs-", dir="/tmp")
    try:
        start_head(path, _free_port())
        yield path, dashboard_of(path)
    finally:
        rtd_cli("stop", "--force", "--temp-dir", path)
        subprocess.run(["rm", "-rf", path], check=False)


@pytest.fixture(scope="module")
def client(head):
    return JobSubmissionClient(head[1])


def wait_status(client, job_id, wanted, timeout=60):
    wait_for_condition(lambda: client.get_job_status(job_id) == wanted, timeout=timeout)
    return client.get_job_info(job_id)


def http(method, url, body=None, headers=None):
    """(status, body text) of one request."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_a_submitted_job_runs_a_driver_that_connects_and_its_output_is_the_log(client, head):
    job = client.submit_job(entrypoint=python_entrypoint(DRIVER), metadata={"team": "core"})
    assert job.startswith("raysubmit_")
    info = wait_status(client, job, JobStatus.SUCCEEDED)
    assert info.type == JobType.SUBMISSION and info.submission_id == job
    assert info.driver_exit_code == 0 and info.message == "Job finished successfully."
    assert info.metadata == {"team": "core"}
    assert info.end_time >= info.start_time > 0
    logs = client.get_job_logs(job)
    assert "driver got 42" in logs
    assert "task says 21" in logs, logs
    # The driver the entrypoint started is linked to the submission.
    assert info.job_id and info.driver_info is not None and info.driver_info.id == info.job_id
    assert client.get_job_info(info.job_id).submission_id == job
    # The state API lists it as a submission with its driver's job id.
    rows = [row for row in list_jobs(address=head[1]) if row["submission_id"] == job]
    assert len(rows) == 1 and rows[0]["type"] == "SUBMISSION" and rows[0]["job_id"] == info.job_id
    listed = rtd_cli("list", "jobs", "--address", head[1], "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert any(row["submission_id"] == job for row in json.loads(listed.stdout))


def test_a_failing_entrypoint_is_failed_with_its_exit_code(client):
    job = client.submit_job(entrypoint=python_entrypoint("import sys; print('about to fail'); sys.exit(3)"))
    info = wait_status(client, job, JobStatus.FAILED)
    assert info.driver_exit_code == 3
    assert info.error_type == "JOB_ENTRYPOINT_COMMAND_ERROR"
    assert "exit code 3" in info.message and "about to fail" in info.message
    assert client.get_job_status(job).is_terminal()


def test_stop_ends_a_running_job_and_only_finished_jobs_are_deleted(client):
    job = client.submit_job(entrypoint="echo started; sleep 120", submission_id=f"stop-{uuid.uuid4().hex[:8]}")
    wait_status(client, job, JobStatus.RUNNING)
    wait_for_condition(lambda: "started" in client.get_job_logs(job), timeout=20)
    with pytest.raises(RuntimeError, match="400.*non-terminal"):
        client.delete_job(job)
    assert client.stop_job(job) is True
    info = wait_status(client, job, JobStatus.STOPPED, timeout=20)
    assert info.message == "Job was intentionally stopped."
    assert client.stop_job(job) is False
    assert client.delete_job(job) is True
    with pytest.raises(RuntimeError, match="404.*does not exist"):
        client.get_job_info(job)
    assert job not in [j.submission_id for j in client.list_jobs()]


def test_a_submission_id_is_used_once_and_jobs_are_listed(client):
    job = f"once-{uuid.uuid4().hex[:8]}"
    assert client.submit_job(entrypoint="true", submission_id=job) == job
    with pytest.raises(RuntimeError, match="400.*already exists"):
        client.submit_job(entrypoint="true", submission_id=job)
    wait_status(client, job, JobStatus.SUCCEEDED)
    listed = {j.submission_id: j for j in client.list_jobs()}
    assert isinstance(listed[job], JobDetails) and listed[job].status == JobStatus.SUCCEEDED


def test_the_rest_api_has_rays_shapes_and_codes(head):
    base = head[1]
    status, body = http("GET", f"{base}/api/version")
    version = json.loads(body)
    assert status == 200 and version["version"] == "4" and set(version) == {
        "version", "ray_version", "ray_commit", "session_name"}
    assert version["session_name"].startswith("session_")
    status, body = http("POST", f"{base}/api/jobs/", {"entrypoint": "echo rest", "runtime_env": None})
    assert status == 200
    reply = json.loads(body)
    assert set(reply) == {"job_id", "submission_id"} and reply["job_id"] == reply["submission_id"]
    job = reply["submission_id"]
    status, body = http("GET", f"{base}/api/jobs/{job}")
    assert status == 200 and set(json.loads(body)) == JOB_DETAILS_FIELDS
    status, body = http("GET", f"{base}/api/jobs/")
    assert status == 200 and all(set(j) == JOB_DETAILS_FIELDS for j in json.loads(body))
    status, body = http("GET", f"{base}/api/jobs/{job}/logs")
    assert status == 200 and set(json.loads(body)) == {"logs"}
    for method, path in [("GET", "/api/jobs/nope"), ("GET", "/api/jobs/nope/logs"),
                         ("POST", "/api/jobs/nope/stop"), ("DELETE", "/api/jobs/nope")]:
        status, body = http(method, f"{base}{path}")
        assert (status, body) == (404, "Job nope does not exist"), (method, path)
    for bad in [{}, {"entrypoint": 3}, {"entrypoint": "x", "metadata": {"k": 1}},
                {"entrypoint": "x", "entrypoint_num_cpus": "two"}]:
        status, body = http("POST", f"{base}/api/jobs/", bad)
        assert status == 400, (bad, body)
    status, _ = http("GET", f"{base}/api/packages/gcs/_ray_pkg_0123456789abcdef.zip")
    assert status == 404
    status, _ = http("GET", f"{base}/api/packages/s3/x.zip")
    assert status == 400


def read_websocket(url: str, timeout: float = 60) -> list:
    """The text messages a websocket at ``url`` sends until it closes (a minimal
    client: Ray's own uses aiohttp)."""
    host, _, rest = url.removeprefix("http://").partition("/")
    hostname, port = host.split(":")
    with socket.create_connection((hostname, int(port)), timeout=timeout) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET /{rest} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        stream = sock.makefile("rb")
        status_line = stream.readline()
        assert b" 101 " in status_line, status_line
        while stream.readline() not in (b"\r\n", b""):
            pass
        messages = []
        while True:
            head = stream.read(2)
            if len(head) < 2:
                return messages
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = int.from_bytes(stream.read(2), "big")
            elif length == 127:
                length = int.from_bytes(stream.read(8), "big")
            payload = stream.read(length)
            if opcode == 0x8:
                return messages
            if opcode == 0x1:
                messages.append(payload.decode())


def test_the_log_is_followed_while_the_job_runs(client, head):
    script = "import time\nfor i in range(5):\n    print('line', i, flush=True)\n    time.sleep(0.3)\n"
    job = client.submit_job(entrypoint=python_entrypoint(script))

    async def follow():
        return [chunk async for chunk in client.tail_job_logs(job)]

    chunks = asyncio.run(asyncio.wait_for(follow(), timeout=60))
    text = "".join(chunks)
    assert all(f"line {i}" in text for i in range(5)), text
    assert len(chunks) > 1, "the output arrived as it was written"
    assert client.get_job_status(job) == JobStatus.SUCCEEDED
    # Ray's websocket tail carries the same text, and closes at the job's end.
    messages = read_websocket(f"{head[1]}/api/jobs/{job}/logs/tail")
    assert "".join(messages) == client.get_job_logs(job)


def test_working_dir_is_uploaded_and_env_vars_are_set(client, tmp_path):
    (tmp_path / "data.txt").write_text("from the working dir")
    (tmp_path / "helper.py").write_text("VALUE = 'imported helper'\n")
    source = (
        "import os, helper\n"
        "print(open('data.txt').read(), os.environ['GREETING'], helper.VALUE)\n"
    )
    job = client.submit_job(
        entrypoint=python_entrypoint(source),
        runtime_env={"working_dir": str(tmp_path), "env_vars": {"GREETING": "hello-env"}},
    )
    info = wait_status(client, job, JobStatus.SUCCEEDED)
    assert info.runtime_env["working_dir"].startswith("gcs://_ray_pkg_")
    assert "from the working dir hello-env imported helper" in client.get_job_logs(job)
    # A runtime_env that cannot be set up fails the job before it starts.
    bad = client.submit_job(entrypoint="true", runtime_env={"working_dir": "gcs://_ray_pkg_ffffffffffffffff.zip"})
    failed = wait_status(client, bad, JobStatus.FAILED)
    assert failed.error_type == "RUNTIME_ENV_SETUP_FAILURE"


def test_the_job_cli(head):
    address = ["--address", head[1]]
    job = f"cli-{uuid.uuid4().hex[:8]}"
    submitted = rtd_cli(
        "job", "submit", *address, "--submission-id", job, "--", sys.executable, "-c", "print('from cli')"
    )
    assert submitted.returncode == 0, submitted.stderr
    assert f"Job '{job}' submitted successfully" in submitted.stdout
    assert "from cli" in submitted.stdout and f"Job '{job}' succeeded" in submitted.stdout
    status = rtd_cli("job", "status", *address, job)
    assert status.returncode == 0 and f"Status for job '{job}': SUCCEEDED" in status.stdout
    logs = rtd_cli("job", "logs", *address, job)
    assert logs.returncode == 0 and "from cli" in logs.stdout
    listed = rtd_cli("job", "list", *address)
    assert listed.returncode == 0 and job in listed.stdout
    failing = rtd_cli("job", "submit", *address, "--", "sh", "-c", "echo nope; exit 4")
    assert failing.returncode == 1 and "failed" in failing.stdout and "exit code 4" in failing.stdout
    sleeper = f"cli-sleep-{uuid.uuid4().hex[:8]}"
    started = rtd_cli("job", "submit", *address, "--submission-id", sleeper, "--no-wait", "--", "sleep", "120")
    assert started.returncode == 0, started.stderr
    follow = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "rtd"), "job", "logs", *address, "--follow", sleeper],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        refused = rtd_cli("job", "delete", *address, sleeper)
        assert refused.returncode == 1 and "non-terminal" in refused.stderr
        stopped = rtd_cli("job", "stop", *address, sleeper)
        assert stopped.returncode == 0 and f"Job '{sleeper}' was stopped" in stopped.stdout
        out, _ = follow.communicate(timeout=30)
        assert follow.returncode == 0 and "Running entrypoint" in out
    finally:
        follow.kill()
    deleted = rtd_cli("job", "delete", *address, sleeper)
    assert deleted.returncode == 0 and "deleted successfully" in deleted.stdout
    missing = rtd_cli("job", "status", *address, sleeper)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    down = rtd_cli("job", "list", "--address", f"http://127.0.0.1:{_free_port()}")
    assert down.returncode == 1 and "cannot reach" in down.stderr


def test_the_job_cli_uploads_a_working_dir_and_takes_a_runtime_env(head, tmp_path):
    (tmp_path / "note.txt").write_text("from the cli working dir")
    address = ["--address", head[1]]
    source = "import os; print(open('note.txt').read(), os.environ['FROM_JSON'])"
    submitted = rtd_cli(
        "job", "submit", *address, "--working-dir", str(tmp_path),
        "--runtime-env-json", json.dumps({"env_vars": {"FROM_JSON": "json-env"}}),
        "--", sys.executable, "-c", source,
    )
    assert submitted.returncode == 0, submitted.stderr
    assert "from the cli working dir json-env" in submitted.stdout
    bad = rtd_cli("job", "submit", *address, "--runtime-env-json", "{not json", "--", "true")
    assert bad.returncode != 0 and "--runtime-env-json" in bad.stderr
    missing = rtd_cli("job", "submit", *address, "--working-dir", str(tmp_path / "absent"), "--", "true")
    assert missing.returncode != 0 and "absent" in missing.stderr


def test_with_token_auth_the_jobs_api_needs_the_token(tmp_path):
    token = uuid.uuid4().hex * 2
    env = {"RTD_AUTH_MODE": "token", "RTD_AUTH_TOKEN": token}
    path = tempfile.mkdtemp(prefix="rtd-jobs-", dir="/tmp")
    try:
        start_head(path, _free_port(), env=env)
        base = dashboard_of(path)
        assert http("GET", f"{base}/api/jobs/")[0] == 401
        assert http("POST", f"{base}/api/jobs/", {"entrypoint": "true"})[0] == 401
        assert http("GET", f"{base}/api/version", headers={"Authorization": f"Bearer {token}"})[0] == 200
        # The client and the CLI send the token they are given.
        result = run_script(
            f"""
            from rtd.job_submission import JobSubmissionClient, JobStatus
            import time
            client = JobSubmissionClient({base!r})
            job = client.submit_job(entrypoint="echo authed")
            deadline = time.time() + 30
            while not client.get_job_status(job).is_terminal() and time.time() < deadline:
                time.sleep(0.1)
            print(client.get_job_status(job), client.get_job_logs(job).strip().splitlines()[-1])
            """,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert "SUCCEEDED authed" in result.stdout
        assert rtd_cli("job", "list", "--address", base, env=env).returncode == 0
        refused = rtd_cli("job", "list", "--address", base, env={"RTD_AUTH_MODE": "disabled", "RTD_AUTH_TOKEN": ""})
        assert refused.returncode == 1 and "authentication" in refused.stderr
    finally:
        rtd_cli("stop", "--force", "--temp-dir", path, env=env)
        subprocess.run(["rm", "-rf", path], check=False)


def entrypoint_processes(marker: str) -> list:
    """Pids of processes whose command line holds ``marker``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(pid))
    return found


def test_job_records_survive_a_head_restart():
    path = tempfile.mkdtemp(prefix="rtd-jobs-", dir="/tmp")
    port = _free_port()
    try:
        start_head(path, port)
        client = JobSubmissionClient(dashboard_of(path))
        done = client.submit_job(entrypoint="echo done", submission_id="before-restart")
        wait_status(client, done, JobStatus.SUCCEEDED)
        marker = f"{uuid.uuid4().int % 1000}.5"
        running = client.submit_job(entrypoint=f"sleep {marker}")
        wait_status(client, running, JobStatus.RUNNING)
        with open(os.path.join(path, "session_latest", "node.json")) as f:
            daemon = json.load(f)["pid"]
        os.kill(daemon, signal.SIGKILL)
        wait_for_condition(lambda: not pid_alive(daemon), timeout=10)
        assert entrypoint_processes(marker), "the entrypoint outlived its head"
        start_head(path, port)
        client = JobSubmissionClient(dashboard_of(path))
        assert client.get_job_info(done).status == JobStatus.SUCCEEDED
        lost = client.get_job_info(running)
        assert lost.status == JobStatus.FAILED and lost.error_type == "JOB_SUPERVISOR_ACTOR_DIED"
        # The entrypoint the dead head left is killed by the new one.
        wait_for_condition(lambda: not entrypoint_processes(marker), timeout=10)
    finally:
        rtd_cli("stop", "--force", "--temp-dir", path)
        subprocess.run(["rm", "-rf", path], check=False)
