"""Ray's job submission SDK (``ray.job_submission``): a client of the Jobs REST API the
head serves on its dashboard port (``crates/dashboard/src/jobs``).

    from rtd.job_submission import JobSubmissionClient, JobStatus

    client = JobSubmissionClient("http://127.0.0.1:8265")
    job = client.submit_job(entrypoint="python script.py", runtime_env={"working_dir": "./"})
    print(client.get_job_status(job), client.get_job_logs(job))

``address`` is the dashboard's ``http://HOST:PORT``, or anything the state API takes (the
cluster's ``HOST:PORT``, ``"auto"``, nothing: the cluster of this machine); without one,
``RTD_API_SERVER_ADDRESS`` or ``RTD_ADDRESS`` (as Ray's ``RAY_API_SERVER_ADDRESS`` and
``RAY_ADDRESS``). A local ``working_dir`` or ``py_modules`` path is packed and uploaded
first, as Ray's client does. HTTP goes through the standard library.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import enum
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple, Union

from rtd import _core
from rtd._private import dashboard
from rtd.exceptions import AuthenticationError

__all__ = ["DriverInfo", "JobDetails", "JobInfo", "JobStatus", "JobSubmissionClient", "JobType"]

# How often ``tail_job_logs`` asks for more output.
_TAIL_INTERVAL_S = 0.2
_DEFAULT_TIMEOUT_S = 30.0


class JobStatus(str, enum.Enum):
    """Ray's ``JobStatus``."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    def __str__(self) -> str:
        return self.value

    def is_terminal(self) -> bool:
        """STOPPED, SUCCEEDED and FAILED: a job never leaves them."""
        return self in (JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED)


class JobType(str, enum.Enum):
    """Ray's ``JobType``: submitted through the jobs API, or a driver's own."""

    SUBMISSION = "SUBMISSION"
    DRIVER = "DRIVER"


@dataclasses.dataclass
class DriverInfo:
    """The driver a job's entrypoint started (Ray's ``DriverInfo``)."""

    id: str
    node_ip_address: str
    pid: str


@dataclasses.dataclass
class JobDetails:
    """A job as the jobs API shows it (Ray's ``JobDetails``)."""

    type: JobType
    status: JobStatus
    entrypoint: str
    job_id: Optional[str] = None
    submission_id: Optional[str] = None
    driver_info: Optional[DriverInfo] = None
    message: Optional[str] = None
    error_type: Optional[str] = None
    start_time: Optional[int] = None
    end_time: Optional[int] = None
    metadata: Optional[Dict[str, str]] = None
    runtime_env: Optional[Dict[str, Any]] = None
    driver_agent_http_address: Optional[str] = None
    driver_node_id: Optional[str] = None
    driver_exit_code: Optional[int] = None

    @classmethod
    def _from_json(cls, data: Dict[str, Any]) -> "JobDetails":
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in known}
        fields["type"] = JobType(fields["type"])
        fields["status"] = JobStatus(fields["status"])
        driver = fields.get("driver_info")
        if isinstance(driver, dict):
            fields["driver_info"] = DriverInfo(
                id=str(driver.get("id", "")),
                node_ip_address=str(driver.get("node_ip_address", "")),
                pid=str(driver.get("pid", "")),
            )
        return cls(**fields)


# Ray's ``JobInfo`` carries the same fields for a submitted job.
JobInfo = JobDetails


class JobSubmissionClient:
    """Submits and manages jobs over the head's Jobs REST API (Ray's client)."""

    def __init__(
        self,
        address: Optional[str] = None,
        create_cluster_if_needed: bool = False,
        cookies: Optional[Dict[str, Any]] = None,
        metadata: Optional[Dict[str, Any]] = None,
        headers: Optional[Dict[str, Any]] = None,
        verify: Optional[Union[str, bool]] = True,
    ):
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a string, got {type(address)}")
        if create_cluster_if_needed:
            raise NotImplementedError("JobSubmissionClient(create_cluster_if_needed=True): rtd starts no cluster here")
        for name, value in (("cookies", cookies), ("metadata", metadata), ("headers", headers)):
            if value is not None and not isinstance(value, dict):
                raise TypeError(f"{name} must be a dict, got {type(value)}")
        if address is None:
            address = os.environ.get("RTD_API_SERVER_ADDRESS") or os.environ.get("RTD_ADDRESS") or None
        self._address = dashboard.base_url(address, ConnectionError)
        self._default_metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self._headers = {str(k): str(v) for k, v in (headers or {}).items()}
        if cookies:
            self._headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        if not any(k.lower() == "authorization" for k in self._headers):
            token = _core.auth_token()
            if token is not None:
                self._headers["Authorization"] = f"Bearer {token}"
        self._verify = verify
        # As Ray's client: a cluster that does not answer is an error here.
        self._version = self._json("GET", "/api/version")

    def get_address(self) -> str:
        return self._address

    def get_version(self) -> str:
        return str(self._version.get("version"))

    # ------------------------------------------------------------------ requests

    def _request(
        self, method: str, path: str, *, body: Optional[bytes] = None, content_type: Optional[str] = None
    ) -> Tuple[int, bytes, Any]:
        """Sends one request; (status, body, headers) for any HTTP answer but 401."""
        url = self._address + path
        request = urllib.request.Request(url, data=body, method=method, headers=dict(self._headers))
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=_DEFAULT_TIMEOUT_S) as response:
                return response.status, response.read(), response.headers
        except urllib.error.HTTPError as e:
            text = e.read()
            if e.code == 401:
                raise AuthenticationError(text.decode(errors="replace").strip()) from None
            return e.code, text, e.headers
        except (urllib.error.URLError, OSError) as e:
            raise ConnectionError(f"Failed to connect to the rtd jobs API at {self._address}: {e}") from None

    def _json(self, method: str, path: str, payload: Optional[Dict[str, Any]] = None) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        status, text, _ = self._request(method, path, body=body, content_type="application/json" if body else None)
        if status != 200:
            raise RuntimeError(f"Request failed with status code {status}: {text.decode(errors='replace')}.")
        return json.loads(text) if text else None

    @staticmethod
    def _path_id(job_id: str) -> str:
        if not isinstance(job_id, str) or not job_id:
            raise TypeError(f"job_id must be a non-empty string, got {job_id!r}")
        return urllib.parse.quote(job_id, safe="")

    # ------------------------------------------------------------------ packages

    def _upload_package_if_needed(self, path: str, excludes: List[str], include_parent_dir: bool) -> str:
        """Packs a local directory (or takes a .zip/.whl as is), uploads it unless the
        cluster has it, and returns its ``gcs://`` URI."""
        uri, data = _core.pack_package(path, excludes, include_parent_dir)
        protocol, name = uri.split("://", 1)
        url = f"/api/packages/{protocol}/{urllib.parse.quote(name, safe='')}"
        status, text, _ = self._request("GET", url)
        if status == 404:
            status, text, _ = self._request("PUT", url, body=data, content_type="application/octet-stream")
        if status != 200:
            raise RuntimeError(f"Request failed with status code {status}: {text.decode(errors='replace')}.")
        return uri

    def _upload_local_paths(self, runtime_env: Dict[str, Any]) -> None:
        excludes = list(runtime_env.get("excludes") or [])
        working_dir = runtime_env.get("working_dir")
        if isinstance(working_dir, str) and "://" not in working_dir:
            runtime_env["working_dir"] = self._upload_package_if_needed(working_dir, excludes, False)
        modules = runtime_env.get("py_modules")
        if isinstance(modules, list):
            runtime_env["py_modules"] = [
                self._upload_package_if_needed(m, excludes, True) if isinstance(m, str) and "://" not in m else m
                for m in modules
            ]

    # ------------------------------------------------------------------ the API

    def submit_job(
        self,
        *,
        entrypoint: str,
        job_id: Optional[str] = None,
        runtime_env: Optional[Dict[str, Any]] = None,
        metadata: Optional[Dict[str, str]] = None,
        submission_id: Optional[str] = None,
        entrypoint_num_cpus: Optional[Union[int, float]] = None,
        entrypoint_num_gpus: Optional[Union[int, float]] = None,
        entrypoint_memory: Optional[int] = None,
        entrypoint_resources: Optional[Dict[str, float]] = None,
    ) -> str:
        """Runs ``entrypoint`` (a shell command) on the head; its submission id."""
        if not isinstance(entrypoint, str):
            raise TypeError(f"entrypoint must be a string, got {type(entrypoint)}")
        if runtime_env is not None and not isinstance(runtime_env, dict):
            raise TypeError(f"runtime_env must be a dict, got {type(runtime_env)}")
        runtime_env = copy.deepcopy(runtime_env or {})
        self._upload_local_paths(runtime_env)
        merged = dict(metadata or {})
        merged.update(self._default_metadata)
        request = {
            "entrypoint": entrypoint,
            "submission_id": submission_id or job_id,
            "runtime_env": runtime_env,
            "metadata": merged,
            "entrypoint_num_cpus": entrypoint_num_cpus,
            "entrypoint_num_gpus": entrypoint_num_gpus,
            "entrypoint_memory": entrypoint_memory,
            "entrypoint_resources": entrypoint_resources,
        }
        reply = self._json("POST", "/api/jobs/", {k: v for k, v in request.items() if v is not None})
        return str(reply["submission_id"])

    def stop_job(self, job_id: str) -> bool:
        """Stops the job (SIGTERM, then SIGKILL); whether it was running."""
        return bool(self._json("POST", f"/api/jobs/{self._path_id(job_id)}/stop")["stopped"])

    def delete_job(self, job_id: str) -> bool:
        """Forgets a finished job (its log stays on disk); an error for a running one."""
        return bool(self._json("DELETE", f"/api/jobs/{self._path_id(job_id)}")["deleted"])

    def get_job_info(self, job_id: str) -> JobDetails:
        return JobDetails._from_json(self._json("GET", f"/api/jobs/{self._path_id(job_id)}"))

    def list_jobs(self) -> List[JobDetails]:
        return [JobDetails._from_json(job) for job in self._json("GET", "/api/jobs/")]

    def get_job_status(self, job_id: str) -> JobStatus:
        return self.get_job_info(job_id).status

    def get_job_logs(self, job_id: str) -> str:
        """Everything the job's entrypoint printed so far (stdout and stderr)."""
        return str(self._json("GET", f"/api/jobs/{self._path_id(job_id)}/logs")["logs"])

    def _read_logs_from(self, job_id: str, offset: int) -> Tuple[str, int]:
        status, text, headers = self._request("GET", f"/api/jobs/{self._path_id(job_id)}/logs?offset={offset}")
        if status != 200:
            raise RuntimeError(f"Request failed with status code {status}: {text.decode(errors='replace')}.")
        end = int(headers.get("x-rtd-end-offset") or offset)
        return str(json.loads(text)["logs"]), end

    async def tail_job_logs(self, job_id: str) -> AsyncIterator[str]:
        """Yields the job's output as it is written, until the job has ended and all
        of it was yielded (Ray's async generator; polls the log by offset)."""
        offset = 0
        while True:
            # The status first: a job that ended before this read has all its log in.
            ended = (await asyncio.to_thread(self.get_job_status, job_id)).is_terminal()
            text, end = await asyncio.to_thread(self._read_logs_from, job_id, offset)
            more = end > offset
            offset = end
            if text:
                yield text
            if ended and not more:
                return
            if not more:
                await asyncio.sleep(_TAIL_INTERVAL_S)
