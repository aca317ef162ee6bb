"""Headless Chromium driven over the DevTools protocol, for the dashboard's browser test and
``scripts/dashboard_screenshots.py``.

The protocol travels over a pipe (``--remote-debugging-pipe``: the browser reads commands
on fd 3 and writes replies and events on fd 4, each message JSON ended by a NUL byte), so
no websocket client and no new dependency is needed. Every wait is bounded.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

BINARIES = ("chromium", "chromium-browser")


class BrowserError(RuntimeError):
    pass


def find_chromium():
    """The path of Debian's ``chromium`` (or ``chromium-browser``), or None."""
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _high_fd(fd):
    """``fd`` moved to a number >= 10 (close-on-exec), so moving it to 3 or 4 in the
    child cannot clobber the other pipe end."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Browser:
    """One headless Chromium with one page (tab). ``close()`` ends the browser."""

    def __init__(self, binary, width=1280, height=800, timeout=30):
        self._timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="rtd-chromium-")
        to_browser_r, self._to_browser = (_high_fd(fd) for fd in os.pipe())
        self._from_browser, from_browser_w = (_high_fd(fd) for fd in os.pipe())
        args = [
            binary,
            "--headless",
            "--remote-debugging-pipe",
            f"--user-data-dir={self._profile}",
            f"--window-size={width},{height}",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-extensions",
            "--disable-background-networking",
            # The sandbox needs user namespaces, which containers (and root) often lack.
            "--no-sandbox",
            "about:blank",
        ]
        # bash puts the pipe ends on fds 3 and 4, where the browser expects them; the
        # child runs no Python between fork and exec (this process has Rust threads).
        script = f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        self._process = subprocess.Popen(
            ["bash", "-c", script, "chromium", *args],
            pass_fds=(to_browser_r, from_browser_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._replies = {}
        self._events = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="chromium-cdp", daemon=True)
        self._reader.start()
        try:
            target = self.send("Target.createTarget", url="about:blank")["targetId"]
            self._session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            self.send("Page.enable", session=True)
            self.send("Runtime.enable", session=True)
            self.send(
                "Emulation.setDeviceMetricsOverride",
                session=True,
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
        except BaseException:
            self.close()
            raise

    def _read(self):
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._replies[None] = "the browser closed the DevTools pipe"
                    self._cond.notify_all()
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            with self._cond:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self._replies[message["id"]] = message
                    else:
                        self._events.append(message)
                self._cond.notify_all()

    def send(self, method, session=False, **params):
        """Sends one DevTools command (to the page when ``session``); returns its result."""
        with self._cond:
            self._next_id += 1
            ident = self._next_id
        message = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self._timeout
        with self._cond:
            while ident not in self._replies:
                if None in self._replies:
                    raise BrowserError(f"{method}: {self._replies[None]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError(f"{method}: no reply within {self._timeout} s")
                self._cond.wait(left)
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply["result"]

    def navigate(self, url):
        self.send("Page.navigate", session=True, url=url)

    def evaluate(self, expression):
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = self.send(
            "Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression, timeout=15, what=None):
        """Polls a JavaScript expression until it is truthy (in JavaScript's sense). Raises
        after ``timeout`` s, naming ``what`` (or the expression) and the page's errors."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.evaluate(f"Boolean({expression})"):
                    return
            except BrowserError:
                pass  # the page is between documents: not yet
            if time.monotonic() > deadline:
                errors = "; ".join(self.page_errors()) or "none"
                raise AssertionError(f"not within {timeout} s: {what or expression} (page errors: {errors})")
            time.sleep(0.1)

    def clear_events(self):
        """Forgets the events so far (the page errors of a previous test)."""
        with self._cond:
            self._events.clear()

    def page_errors(self):
        """Uncaught exceptions and ``console.error`` messages the page has produced."""
        with self._cond:
            events = list(self._events)
        errors = []
        for event in events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                errors.append(details.get("exception", {}).get("description") or details.get("text", ""))
            elif event.get("method") == "Runtime.consoleAPICalled" and params.get("type") == "error":
                errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        return errors

    def screenshot(self, path):
        """Saves what the page shows (the viewport) as a PNG."""
        data = self.send("Page.captureScreenshot", session=True, format="png")["data"]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        try:
            os.write(self._to_browser, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self._process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            # The browser's helpers (renderer, zygote) share its process group.
            os.killpg(self._process.pid, 9)
            self._process.wait()
        os.close(self._to_browser)
        self._reader.join(timeout=5)
        os.close(self._from_browser)
        shutil.rmtree(self._profile, ignore_errors=True)
