"""Ctrl-C reaches a driver wherever it blocks: every blocking call of the core worker
polls for signals while it waits, so SIGINT raises ``KeyboardInterrupt`` in the driver
promptly instead of after the wait (which here would never end).

Each driver runs as a subprocess: it prints ``BLOCKING`` just before the call, the test
waits until the driver sleeps in it and sends SIGINT, and the driver prints
``INTERRUPTED`` with the seconds since the signal reached it and the file of the frame
``KeyboardInterrupt`` came out of (rtd's, not the driver's own line).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import rtd
from conftest import process_sleeping, wait_for_condition

# Seconds within which an interrupted call must have raised.
PROMPTLY = 3.0

DRIVER = """
import signal, sys, time
import rtd
from rtd.util.placement_group import placement_group

received = []
default = signal.getsignal(signal.SIGINT)

def note_and_raise(signum, frame):
    received.append(time.monotonic())
    default(signum, frame)

signal.signal(signal.SIGINT, note_and_raise)
rtd.init(num_cpus=1)
{setup}
print("BLOCKING", flush=True)
try:
    {blocking_call}
    print("RETURNED", flush=True)
except KeyboardInterrupt as e:
    # The innermost frame below our handler: where the signal was taken.
    frames = []
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name != "note_and_raise":
            frames.append(tb.tb_frame)
        tb = tb.tb_next
    raised_in = frames[-1].f_code.co_filename
    print(f"INTERRUPTED {{time.monotonic() - received[0]:.3f}} {{raised_in}}", flush=True)
rtd.shutdown()
"""


def _interrupt_driver(setup: str, blocking_call: str) -> float:
    """Runs a driver blocked in ``blocking_call``, sends it SIGINT, and returns how
    long after the signal ``KeyboardInterrupt`` came out of the call."""
    source = textwrap.dedent(DRIVER).format(setup=setup, blocking_call=blocking_call)
    env = dict(os.environ)
    env.pop("RTD_ADDRESS", None)
    driver = subprocess.Popen(
        [sys.executable, "-c", source], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        line = driver.stdout.readline()
        assert line.strip() == "BLOCKING", line + driver.stderr.read()
        # A signal before the call would be raised by the interpreter, not by the call:
        # wait until the driver sleeps in the call, seen twice in a row (a running
        # interpreter does not sleep).
        samples = []

        def asleep_in_call():
            samples.append(process_sleeping(driver.pid))
            return samples[-2:] == [True, True]

        wait_for_condition(asleep_in_call, timeout=20)
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    lines = out.split()
    assert "INTERRUPTED" in lines, f"stdout: {out!r}\nstderr: {err}"
    assert driver.returncode == 0, err
    waited, raised_in = lines[lines.index("INTERRUPTED") + 1 : lines.index("INTERRUPTED") + 3]
    assert os.path.dirname(rtd.__file__) in raised_in, raised_in
    return float(waited)


@pytest.mark.timeout(60)
def test_ctrl_c_interrupts_a_placement_group_wait_that_can_never_succeed():
    waited = _interrupt_driver(
        setup='pg = placement_group([{"CPU": 64}])',
        blocking_call='pg.wait(float("inf"))',
    )
    assert waited < PROMPTLY


@pytest.mark.timeout(60)
def test_ctrl_c_interrupts_a_get_on_a_task_that_never_finishes():
    waited = _interrupt_driver(
        setup="@rtd.remote\ndef forever():\n    time.sleep(3600)\nref = forever.remote()",
        blocking_call="rtd.get(ref)",
    )
    assert waited < PROMPTLY
