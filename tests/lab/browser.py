"""
Headless Chromium driven over the DevTools protocol on a pipe
(C{--remote-debugging-pipe}: JSON messages ending in NUL on fds 3 and 4), with
the standard library only.  C{--dump-dom} alone cannot show a phone: headless
Chromium will not make a window narrower than 500 px, so L{render} emulates
the device's viewport (C{Emulation.setDeviceMetricsOverride}) instead.

Blocking: call it in a thread (C{deferToThread}) when the page is served by the
test's own reactor.
"""

import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time

from tests.lab.require import missing

__all__ = ["chromium", "render", "BrowserError"]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-proxy-server", "--hide-scrollbars"]


class BrowserError(Exception):
    pass


def chromium():
    """The browser's path; skip the test without one (fail under S2SGATE_REQUIRE_SERVERS=1)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    missing("chromium is not installed", "apt-get install chromium")


class _Pipe:
    def __init__(self, write, read, deadline):
        self.write, self.read, self.deadline = write, read, deadline
        self.buffer = b""
        self.next = 0

    def call(self, method, params=None, session=None):
        self.next += 1
        message = {"id": self.next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                left = self.deadline - time.monotonic()
                if left <= 0 or not select.select([self.read], [], [], left)[0]:
                    raise BrowserError(f"no answer to {method} in time")
                chunk = os.read(self.read, 1 << 16)
                if not chunk:
                    raise BrowserError(f"the browser closed the pipe during {method}")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self.next:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return answer["result"]


def _high(fd):
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 20)
    os.close(fd)
    return high


def render(url, width, height, *, mobile=False, ready="data-rendered", timeout=60,
           screenshot=None):
    """
    Load C{url} in a C{width} x C{height} viewport; once C{<body>} has the
    attribute C{ready}, return the DOM as HTML (and write a PNG to
    C{screenshot} if given).
    """
    browser = chromium()
    toBrowser, fromUs = os.pipe()
    toUs, fromBrowser = os.pipe()
    # Above 3 and 4, so that the shell's redirections cannot overwrite them.
    toBrowser, fromBrowser = (_high(fd) for fd in (toBrowser, fromBrowser))
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="s2sgate-chromium-") as profile:
        # bash (dash knows only fds 0-9) puts our pipe ends on fds 3 and 4, where Chromium looks.
        argv = ["bash", "-c", f'exec "$@" 3<&{toBrowser} 4>&{fromBrowser} '
                            f'{toBrowser}<&- {fromBrowser}>&-',
                "bash", browser, *FLAGS, f"--user-data-dir={profile}",
                "--remote-debugging-pipe", "about:blank"]
        process = subprocess.Popen(argv, pass_fds=(toBrowser, fromBrowser),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env={"HOME": profile, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                                   start_new_session=True)
        os.close(toBrowser)
        os.close(fromBrowser)
        pipe = _Pipe(fromUs, toUs, deadline)
        try:
            page = next(t for t in pipe.call("Target.getTargets")["targetInfos"]
                        if t["type"] == "page")
            session = pipe.call("Target.attachToTarget",
                                {"targetId": page["targetId"], "flatten": True})["sessionId"]
            pipe.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1,
                       "mobile": mobile}, session)
            pipe.call("Page.navigate", {"url": url}, session)
            expression = (f"[document.body !== null && document.body.hasAttribute({ready!r}), "
                          "document.documentElement.outerHTML]")
            while True:
                result = pipe.call("Runtime.evaluate",
                                   {"expression": expression, "returnByValue": True},
                                   session)["result"]
                # No value while the page is still being replaced by the navigation.
                done, dom = result.get("value") or (False, "")
                if done:
                    break
                if time.monotonic() > deadline:
                    raise BrowserError(f"the page never set <body {ready}>")
                time.sleep(0.05)
            if screenshot:
                import base64
                data = pipe.call("Page.captureScreenshot", {"format": "png",
                                                            "captureBeyondViewport": True},
                                 session)["data"]
                with open(screenshot, "wb") as f:
                    f.write(base64.b64decode(data))
            return dom
        finally:
            try:
                pipe.call("Browser.close")
            except BrowserError:
                pass
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            os.close(fromUs)
            os.close(toUs)
