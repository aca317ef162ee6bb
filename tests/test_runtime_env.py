"""Runtime environments (Ray's ``runtime_env``) against real daemons: env_vars, working_dir
(directory and .zip, excludes, deduplicated packages), py_modules (a package directory and
a wheel), pip (a venv per spec, layered over the base environment, reused), job-level
envs merged with task- and actor-level ones, per-environment worker pools, setup failures
as ``RuntimeEnvSetupError`` with the node still working, the keys rtd does not implement,
the 500 MiB package limit, and a two-node cluster where the package travels through the
GCS.

pip tests install ``six`` (tiny, pure Python, not a dependency of rtd) from the package
index; pip's own download cache keeps the second and later runs off the network.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import pytest
import rtd
from conftest import wait_for_condition
from rtd._private import runtime_env as runtime_env_state
from rtd.exceptions import ActorDiedError, RayActorError, RuntimeEnvSetupError
from rtd.runtime_env import RuntimeEnv, RuntimeEnvConfig

PIP_PACKAGE = "six==1.17.0"


def _write(root, rel, content):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(content)
    return path


def _env_reader():
    @rtd.remote
    def read_env(*names):
        import os

        return [os.environ.get(n) for n in names]

    return read_env


@pytest.mark.timeout(60)
def test_env_vars_reach_the_task_and_stay_in_their_own_workers(shared_runtime):
    read_env = _env_reader()
    in_a = read_env.options(runtime_env={"env_vars": {"RTD_T_A": "a"}})
    in_b = read_env.options(runtime_env={"env_vars": {"RTD_T_B": "b"}})
    assert rtd.get(in_a.remote("RTD_T_A", "RTD_T_B"), timeout=30) == ["a", None]
    assert rtd.get(in_b.remote("RTD_T_A", "RTD_T_B"), timeout=30) == [None, "b"]
    # Interleaved many times: a worker of one environment never serves another's task.
    refs = [(in_a if i % 3 == 0 else in_b if i % 3 == 1 else read_env).remote("RTD_T_A", "RTD_T_B") for i in range(12)]
    results = rtd.get(refs, timeout=30)
    for i, got in enumerate(results):
        assert got == [["a", None], [None, "b"], [None, None]][i % 3], (i, got)


@pytest.mark.timeout(60)
def test_actor_env_vars_and_children_inherit_the_parent_env(shared_runtime):
    @rtd.remote(runtime_env={"env_vars": {"RTD_T_ACTOR": "yes"}})
    class Holder:
        def read(self):
            import os

            return os.environ.get("RTD_T_ACTOR")

    holder = Holder.remote()
    assert rtd.get(holder.read.remote(), timeout=30) == "yes"
    # The state API shows it, as Ray's does.
    from rtd.util.state import list_actors

    shown = [a for a in list_actors(detail=True) if a["class_name"] == "Holder"]
    assert json.loads(shown[0]["serialized_runtime_env"])["env_vars"] == {"RTD_T_ACTOR": "yes"}

    read_env = _env_reader()

    @rtd.remote(runtime_env={"env_vars": {"RTD_T_PARENT": "p", "RTD_T_OVER": "parent"}})
    def parent():
        import rtd as inner

        plain = read_env.remote("RTD_T_PARENT", "RTD_T_OVER")
        merged = read_env.options(runtime_env={"env_vars": {"RTD_T_OVER": "child"}}).remote(
            "RTD_T_PARENT", "RTD_T_OVER"
        )
        return inner.get([plain, merged], timeout=30)

    assert rtd.get(parent.remote(), timeout=40) == [["p", "parent"], ["p", "child"]]


@pytest.mark.timeout(60)
def test_job_level_env_merges_with_task_env(start_runtime):
    start_runtime(num_cpus=2, runtime_env={"env_vars": {"RTD_T_JOB": "job", "RTD_T_BOTH": "job"}})
    read_env = _env_reader()
    assert rtd.get(read_env.remote("RTD_T_JOB", "RTD_T_BOTH"), timeout=30) == ["job", "job"]
    task_env = {"env_vars": {"RTD_T_BOTH": "task"}}
    assert rtd.get(read_env.options(runtime_env=task_env).remote("RTD_T_JOB", "RTD_T_BOTH"), timeout=30) == [
        "job",
        "task",
    ]
    assert rtd.get_runtime_context().runtime_env["env_vars"]["RTD_T_JOB"] == "job"


@pytest.mark.timeout(90)
def test_a_new_cluster_gets_the_packages_again(start_runtime, tmp_path):
    code = str(tmp_path / "again")
    _write(code, "again_module.py", "N = 7\n")

    @rtd.remote(runtime_env={"working_dir": code})
    def use():
        import again_module

        return again_module.N

    for _ in range(2):
        start_runtime(num_cpus=1)
        assert rtd.get(use.remote(), timeout=30) == 7


@pytest.mark.timeout(90)
def test_a_submitted_jobs_env_var_is_the_job_level_env(tmp_path):
    """A job submission sets RTD_JOB_CONFIG_JSON_ENV_VAR for its entrypoint; rtd.init's
    own runtime_env merges over it (its keys win, env_vars merge), as Ray's does."""
    script = textwrap.dedent(
        """
        import json, rtd
        rtd.init(num_cpus=1, runtime_env={"env_vars": {"FROM_INIT": "init", "BOTH": "init"}})

        @rtd.remote
        def read():
            import os
            return [os.environ.get(n) for n in ("FROM_JOB", "FROM_INIT", "BOTH")]

        print(json.dumps(rtd.get(read.remote(), timeout=30)))
        rtd.shutdown()
        """
    )
    job_config = {"runtime_env": {"env_vars": {"FROM_JOB": "job", "BOTH": "job"}}}
    env = dict(os.environ, RTD_JOB_CONFIG_JSON_ENV_VAR=json.dumps(job_config))
    env.pop("RTD_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=80, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["job", "init", "init"]


@pytest.mark.timeout(60)
def test_working_dir_is_the_cwd_and_importable_with_excludes(shared_runtime, tmp_path):
    code = str(tmp_path / "project")
    _write(code, "wd_helper_module.py", "VALUE = 'imported from working_dir'\n")
    _write(code, "data/input.txt", "hello\n")
    _write(code, "logs/debug.log", "not shipped\n")
    _write(code, "big.bin", "not shipped either\n")

    @rtd.remote(runtime_env={"working_dir": code, "excludes": ["logs/", "*.bin"]})
    def look():
        import os

        import wd_helper_module

        return (
            wd_helper_module.VALUE,
            open("data/input.txt").read(),
            sorted(os.listdir(".")),
            os.getcwd(),
        )

    value, text, listing, cwd = rtd.get(look.remote(), timeout=30)
    assert value == "imported from working_dir"
    assert text == "hello\n"
    assert listing == ["data", "wd_helper_module.py"]
    assert "runtime_resources" in cwd and cwd != code


@pytest.mark.timeout(60)
def test_same_content_is_uploaded_once_and_a_zip_works_too(shared_runtime, tmp_path):
    first, second = str(tmp_path / "one"), str(tmp_path / "two")
    for root in (first, second):
        _write(root, "same.py", "X = 1\n")

    @rtd.remote
    def cwd():
        import os

        return os.getcwd()

    before = len(runtime_env_state.uploaded)
    dirs = rtd.get(
        [cwd.options(runtime_env={"working_dir": d}).remote() for d in (first, second, first)], timeout=30
    )
    assert len(set(dirs)) == 1, dirs
    assert len(runtime_env_state.uploaded) == before + 1

    archive = str(tmp_path / "code.zip")
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zipped_module.py", "Y = 'from the zip'\n")

    @rtd.remote(runtime_env={"working_dir": archive})
    def from_zip():
        import zipped_module

        return zipped_module.Y

    assert rtd.get(from_zip.remote(), timeout=30) == "from the zip"


@pytest.mark.timeout(60)
def test_py_modules_directories_and_wheels_are_importable(shared_runtime, tmp_path):
    package = str(tmp_path / "rtd_t_pkg")
    _write(package, "__init__.py", "from .inner import NAME\n")
    _write(package, "inner.py", "NAME = 'package dir'\n")
    wheel = str(tmp_path / "rtd_t_wheel-1.0-py3-none-any.whl")
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("rtd_t_wheel/__init__.py", "NAME = 'wheel'\n")
        z.writestr("rtd_t_wheel-1.0.dist-info/METADATA", "Name: rtd_t_wheel\nVersion: 1.0\n")

    @rtd.remote(runtime_env={"py_modules": [package, wheel]})
    def names():
        import rtd_t_pkg
        import rtd_t_wheel

        return rtd_t_pkg.NAME, rtd_t_wheel.NAME

    assert rtd.get(names.remote(), timeout=30) == ("package dir", "wheel")


@pytest.mark.timeout(240)
def test_pip_env_installs_over_the_base_env_and_is_reused(shared_runtime):
    assert importlib.util.find_spec("six") is None, "the base environment must not have six for this test"

    @rtd.remote(runtime_env={"pip": [PIP_PACKAGE]})
    def use_six():
        import sys

        import cloudpickle  # noqa: F401 - the base environment is still there
        import numpy  # noqa: F401
        import six

        return six.__version__, sys.prefix

    first = rtd.get(use_six.remote(), timeout=200)
    assert first[0] == "1.17.0"
    assert "runtime_resources" in first[1]

    @rtd.remote(runtime_env={"pip": {"packages": [PIP_PACKAGE], "pip_check": False}})
    class SixUser:
        def prefix(self):
            import sys

            import six  # noqa: F401

            return sys.prefix

    # The dict form names the same venv: the actor runs in it, nothing is rebuilt.
    user = SixUser.remote()
    assert rtd.get(user.prefix.remote(), timeout=60) == first[1]
    assert rtd.get(use_six.remote(), timeout=60) == first
    # The plain workers never see it.
    @rtd.remote
    def has_six():
        import importlib.util

        return importlib.util.find_spec("six") is not None

    assert rtd.get(has_six.remote(), timeout=30) is False


@pytest.mark.timeout(240)
def test_failed_setup_raises_runtime_env_setup_error_and_the_node_keeps_working(shared_runtime):
    @rtd.remote
    def ok():
        return "fine"

    bad_pip = ok.options(runtime_env={"pip": ["rtd-test-no-such-package-zz==0.0.1"]})
    with pytest.raises(RuntimeEnvSetupError, match="rtd-test-no-such-package-zz"):
        rtd.get(bad_pip.remote(), timeout=200)
    missing_package = ok.options(runtime_env={"working_dir": "gcs://_ray_pkg_0000000000000000.zip"})
    with pytest.raises(RuntimeEnvSetupError, match="not in the GCS"):
        rtd.get(missing_package.remote(), timeout=30)

    @rtd.remote(runtime_env={"working_dir": "gcs://_ray_pkg_0000000000000000.zip"})
    class Broken:
        def ping(self):
            return "pong"

    broken = Broken.remote()
    with pytest.raises((ActorDiedError, RayActorError), match="RuntimeEnvSetupError"):
        rtd.get(broken.ping.remote(), timeout=30)
    assert rtd.get([ok.remote() for _ in range(4)], timeout=30) == ["fine"] * 4


@pytest.mark.timeout(30)
def test_bad_specs_fail_where_they_are_given(shared_runtime, tmp_path):
    @rtd.remote
    def f():
        return 1

    for key, value in [("conda", "myenv"), ("container", {"image": "x"}), ("image_uri", "x:1")]:
        with pytest.raises(NotImplementedError, match=key):
            f.options(runtime_env={key: value})
    with pytest.raises(NotImplementedError, match="conda"):
        rtd.remote(runtime_env={"conda": {"dependencies": ["x"]}})(lambda: 1)
    with pytest.raises(ValueError, match="unknown runtime_env key 'bogus'"):
        f.options(runtime_env={"bogus": 1})
    with pytest.raises(ValueError, match="env_vars"):
        f.options(runtime_env={"env_vars": {"A": 1}})
    with pytest.raises(ValueError, match="does not exist"):
        f.options(runtime_env={"working_dir": str(tmp_path / "missing")}).remote()
    with pytest.raises(ValueError, match="setup_timeout_seconds"):
        RuntimeEnvConfig(setup_timeout_seconds=0)
    with pytest.raises(NotImplementedError, match="conda"):
        RuntimeEnv(conda="x")
    env = RuntimeEnv(env_vars={"K": "v"}, config=RuntimeEnvConfig(setup_timeout_seconds=30))
    assert isinstance(env, dict) and env["env_vars"] == {"K": "v"}
    assert rtd.get(f.options(runtime_env=env).remote(), timeout=30) == 1


@pytest.mark.timeout(60)
def test_a_working_dir_over_500_mib_is_refused_naming_size_and_limit(shared_runtime, tmp_path):
    code = str(tmp_path / "huge")
    os.makedirs(code)
    with open(os.path.join(code, "sparse.bin"), "wb") as f:
        f.truncate(501 << 20)  # sparse: no disk space, no time

    @rtd.remote
    def f():
        return 1

    with pytest.raises(ValueError, match=r"501\.0 MiB, over the 500 MiB limit"):
        f.options(runtime_env={"working_dir": code}).remote()


@pytest.fixture
def head_cluster():
    """A `Cluster` with a one-CPU head and no driver connected; tests add nodes."""
    from rtd.cluster_utils import Cluster

    if rtd.is_initialized():
        rtd.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1}, shutdown_at_exit=False)
    try:
        yield cluster
    finally:
        if rtd.is_initialized():
            rtd.shutdown()
        cluster.shutdown()


@pytest.mark.timeout(120)
def test_two_nodes_get_the_package_through_the_gcs(head_cluster, tmp_path):
    code = str(tmp_path / "shipped")
    _write(code, "shipped_module.py", "WHERE = 'shipped'\n")
    other = head_cluster.add_node(num_cpus=1, resources={"other": 1})
    rtd.init(address=head_cluster.address)

    @rtd.remote(resources={"other": 1}, runtime_env={"working_dir": code})
    def there():
        import os

        import shipped_module

        return shipped_module.WHERE, os.getcwd()

    where, cwd = rtd.get(there.remote(), timeout=60)
    assert where == "shipped"
    # Unpacked under the second node's own session directory.
    assert os.path.realpath(cwd).startswith(os.path.realpath(other.session_dir)), (cwd, other.session_dir)


@pytest.mark.timeout(60)
def test_eager_install_sets_the_job_env_up_on_every_node_at_init(head_cluster, tmp_path):
    """The job's working_dir is unpacked on each node when rtd.init returns, before any
    task asks for it (Ray's `eager_install`, on by default)."""
    import glob

    code = str(tmp_path / "eager")
    _write(code, "eager_marker.txt", "here\n")
    other = head_cluster.add_node(num_cpus=1)
    rtd.init(address=head_cluster.address, runtime_env={"working_dir": code})
    nodes = [head_cluster.head_node.session_dir, other.session_dir]

    def unpacked(session_dir):
        return glob.glob(os.path.join(session_dir, "runtime_resources", "**", "eager_marker.txt"), recursive=True)

    wait_for_condition(lambda: all(unpacked(s) for s in nodes), timeout=30)


@pytest.mark.timeout(90)
def test_a_second_driver_does_not_upload_a_package_the_cluster_has(head_cluster, tmp_path):
    """Packages are content-addressed: a driver asks the GCS whether it holds one
    before putting it (Ray's client does the same), so the second driver puts nothing."""
    code = str(tmp_path / "shared_code")
    _write(code, "shared_code_module.py", "N = 3\n")
    script = textwrap.dedent(
        """
        import json, sys, rtd
        from rtd._private import runtime_env
        rtd.init(address=sys.argv[1])

        @rtd.remote(runtime_env={"working_dir": sys.argv[2]})
        def use():
            import shared_code_module
            return shared_code_module.N

        print(json.dumps([rtd.get(use.remote(), timeout=30), runtime_env.uploaded]))
        rtd.shutdown()
        """
    )
    answers = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", script, head_cluster.address, code], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        answers.append(json.loads(done.stdout.strip().splitlines()[-1]))
    (n1, put1), (n2, put2) = answers
    assert n1 == n2 == 3
    assert len(put1) == 1 and put1[0].startswith("gcs://_ray_pkg_")
    assert put2 == []
