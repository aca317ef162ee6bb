"""``import rtd as ray``: Ray programs run unchanged."""

import os
import subprocess
import sys

import rtd as ray
from conftest import last_json_line


def test_ray_style_program_runs_unchanged():
    ray.init(num_cpus=2)
    try:

        @ray.remote
        def f(x):
            return x * x

        @ray.remote(num_returns=2)
        def split(pair):
            return pair[0], pair[1]

        futures = [f.remote(i) for i in range(4)]
        assert ray.get(futures) == [0, 1, 4, 9]
        a, b = split.remote(("x", "y"))
        assert ray.get([a, b]) == ["x", "y"]
        ready, not_ready = ray.wait(futures, num_returns=4, timeout=10)
        assert len(ready) == 4 and not not_ready
        assert ray.is_initialized()
        assert ray.cluster_resources()["CPU"] == 2
        try:
            ray.get(f.remote("not a number"))
        except ray.exceptions.RayTaskError as e:
            assert isinstance(e, TypeError)
        else:
            raise AssertionError("expected a RayTaskError")
    finally:
        ray.shutdown()
    assert not ray.is_initialized()


def test_ray_exception_names_are_exported():
    for name in (
        "RayError", "RayTaskError", "RayActorError", "ActorDiedError", "GetTimeoutError",
        "WorkerCrashedError", "TaskCancelledError", "ObjectLostError", "ObjectStoreFullError",
        "TaskUnschedulableError", "ActorUnschedulableError",
    ):
        assert issubclass(getattr(ray.exceptions, name), Exception), name
    assert issubclass(ray.exceptions.GetTimeoutError, TimeoutError)


def test_module_next_to_the_driver_script_is_importable_in_tasks(tmp_path):
    # Ray puts the driver script's directory on the workers' sys.path, so tasks can use
    # helper modules that live next to the script.
    (tmp_path / "helper_mod.py").write_text("def double(x):\n    return 2 * x\n")
    script = tmp_path / "driver.py"
    script.write_text(
        "import json\n"
        "import helper_mod\n"
        "import rtd as ray\n"
        "ray.init(num_cpus=1)\n"
        "@ray.remote\n"
        "def f(x):\n"
        "    return helper_mod.double(x)\n"
        "print(json.dumps({'value': ray.get(f.remote(21))}))\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RTD_ADDRESS"}
    # Run from another directory, so only the script's directory can make it importable.
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd="/", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert last_json_line(proc.stdout) == {"value": 42}
