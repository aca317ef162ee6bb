"""What tasks and actors print reaches the driver's terminal, prefixed as in Ray."""

import re

from conftest import run_script


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
