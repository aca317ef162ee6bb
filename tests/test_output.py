"""What tasks and actors print reaches the driver's terminal, prefixed as in Ray."""

import re
import shutil
import tempfile

from conftest import rtd_cli, run_script
from rtd.cluster_utils import _free_port


def test_actor_and_task_output_is_prefixed_with_name_and_pid():
    result = run_script(
        """
        import os, rtd
        rtd.init(num_cpus=1)

        @rtd.remote
        class Counter:
            def __init__(self):
                print("started")

            def pid(self):
                print("two\\nlines")
                return os.getpid()

        @rtd.remote
        def shout():
            print("from a task")
            return os.getpid()

        c = Counter.remote()
        print("actor pid", rtd.get(c.pid.remote()))
        print("task pid", rtd.get(shout.remote()))
        rtd.shutdown()
        """
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    actor_pid = re.search(r"^actor pid (\d+)$", out, re.M).group(1)
    task_pid = re.search(r"^task pid (\d+)$", out, re.M).group(1)
    assert f"(Counter pid={actor_pid}) started" in out
    assert f"(Counter pid={actor_pid}) two\n(Counter pid={actor_pid}) lines" in out
    assert f"(shout pid={task_pid}) from a task" in out


def test_output_of_workers_on_cli_started_nodes_reaches_a_connected_driver():
    head_dir = tempfile.mkdtemp(prefix="rtd-o-", dir="/tmp")
    worker_dir = tempfile.mkdtemp(prefix="rtd-o-", dir="/tmp")
    port = _free_port()
    try:
        head = rtd_cli("start", "--head", "--port", str(port), "--num-cpus", "1", "--temp-dir", head_dir)
        assert head.returncode == 0, head.stderr
        worker = rtd_cli(
            "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--resources", '{"far": 1}',
            "--temp-dir", worker_dir,
        )
        assert worker.returncode == 0, worker.stderr
        script = f"""
            import os, sys, rtd
            rtd.init(address="127.0.0.1:{port}", log_to_driver={{log_to_driver}})

            @rtd.remote
            class Greeter:
                def hello(self):
                    print("hello from the head node")
                    print("a warning", file=sys.stderr)
                    return os.getpid()

            @rtd.remote(resources={{{{"far": 1}}}})
            def far_away():
                print("hello from the worker node")
                return os.getpid()

            print("actor pid", rtd.get(Greeter.remote().hello.remote(), timeout=30))
            print("task pid", rtd.get(far_away.remote(), timeout=30))
            rtd.shutdown()
            """
        result = run_script(script.format(log_to_driver=True), timeout=60)
        assert result.returncode == 0, result.stderr
        actor_pid = re.search(r"^actor pid (\d+)$", result.stdout, re.M).group(1)
        task_pid = re.search(r"^task pid (\d+)$", result.stdout, re.M).group(1)
        assert f"(Greeter pid={actor_pid}) hello from the head node" in result.stdout
        assert f"(Greeter pid={actor_pid}) a warning" in result.stderr
        assert f"(far_away pid={task_pid}) hello from the worker node" in result.stdout
        # Each line arrived before the result of the call that printed it.
        assert result.stdout.index("hello from the head node") < result.stdout.index("actor pid")
        assert result.stdout.index("hello from the worker node") < result.stdout.index("task pid")

        quiet = run_script(script.format(log_to_driver=False), timeout=60)
        assert quiet.returncode == 0, quiet.stderr
        assert "hello from" not in quiet.stdout and "a warning" not in quiet.stderr
    finally:
        rtd_cli("stop", "--temp-dir", worker_dir)
        rtd_cli("stop", "--temp-dir", head_dir)
        shutil.rmtree(head_dir, ignore_errors=True)
        shutil.rmtree(worker_dir, ignore_errors=True)
