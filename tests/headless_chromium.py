"""Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`): a page is
loaded, its console errors, network requests and images are read, and a screenshot is taken.

The pipe needs no port and no client package: Chromium reads JSON messages ending in a NUL byte from fd 3 and
writes its replies and events to fd 4. Debian's `chromium` package (the Makefile installs it).
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
from dataclasses import dataclass
from pathlib import Path

BINARY_NAMES = ("chromium", "chromium-browser")


def find_chromium() -> str | None:
    return next((found for name in BINARY_NAMES if (found := shutil.which(name))), None)


@dataclass(frozen=True)
class PageVisit:
    screenshot_png: bytes
    console_errors: list[str]  # console.error calls, uncaught exceptions and browser log errors
    requests: list[str]  # every URL the page asked for, itself included
    images: list[dict]  # per <img>: complete, naturalWidth, naturalHeight, alt
    content_size: tuple[int, int]  # the page's full width and height in CSS pixels


class Chromium:
    """One headless browser; use as a context manager."""

    def __init__(self, binary: str, width: int = 1280, height: int = 900, timeout: float = 60.0):
        self.width, self.height, self.timeout = width, height, timeout
        self.profile = tempfile.mkdtemp(prefix="pyimgano-chromium-")
        to_child_read, self._to_child = os.pipe()
        self._from_child, from_child_write = os.pipe()

        def wire_pipes() -> None:
            # Moved above the low descriptors first, so placing one on 3 cannot overwrite the other.
            high_read = fcntl.fcntl(to_child_read, fcntl.F_DUPFD, 10)
            high_write = fcntl.fcntl(from_child_write, fcntl.F_DUPFD, 10)
            os.dup2(high_read, 3)
            os.dup2(high_write, 4)

        self.log = open(Path(self.profile) / "chromium.log", "wb")
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        self.process = subprocess.Popen(
            [binary, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--mute-audio",
             f"--user-data-dir={self.profile}", "about:blank"],
            preexec_fn=wire_pipes, close_fds=False, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        os.close(to_child_read)
        os.close(from_child_write)
        self.events: list[dict] = []
        self._replies: dict[int, dict] = {}
        self._next_id = 0
        self._condition = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                break
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            with self._condition:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self._replies[message["id"]] = message
                    else:
                        self.events.append(message)
                self._condition.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        with self._condition:
            self._next_id += 1
            ident = self._next_id
        message = {"id": ident, "method": method, "params": params or {}, **({"sessionId": session} if session else {})}
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        with self._condition:
            if not self._condition.wait_for(lambda: ident in self._replies, self.timeout):
                raise TimeoutError(f"chromium did not answer {method} within {self.timeout} s")
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise RuntimeError(f"chromium refused {method}: {reply['error']}")
        return reply["result"]

    def _wait_for_event(self, method: str, session: str) -> None:
        with self._condition:
            if not self._condition.wait_for(
                    lambda: any(e["method"] == method and e.get("sessionId") == session for e in self.events),
                    self.timeout):
                raise TimeoutError(f"no {method} within {self.timeout} s")

    def visit(self, url: str) -> PageVisit:
        """Loads `url` in a new tab at the window size and reads it back once its load event fired."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False}, session)
        self.send("Page.navigate", {"url": url}, session)
        self._wait_for_event("Page.loadEventFired", session)
        images = json.loads(self.send("Runtime.evaluate", {
            "expression": "JSON.stringify(Array.from(document.images).map(i => ({complete: i.complete, "
                          "naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight, alt: i.alt})))",
            "returnByValue": True}, session)["result"]["value"])
        size = self.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session)
        time.sleep(0.2)  # log entries of the last paint arrive after the reply
        with self._condition:
            events = [e for e in self.events if e.get("sessionId") == session]
        return PageVisit(base64.b64decode(shot["data"]), _errors(events),
                         [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"],
                         images, (int(size["width"]), int(size["height"])))

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, TimeoutError, RuntimeError):
            pass  # already gone: terminated below either way
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(10)  # it ends at the pipe's end of file, once the browser is gone
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _errors(events: list[dict]) -> list[str]:
    found = []
    for event in events:
        params = event["params"]
        if event["method"] == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            found.append("console." + params["type"] + ": " + " ".join(str(a.get("value")) for a in params["args"]))
        elif event["method"] == "Runtime.exceptionThrown":
            found.append("exception: " + params["exceptionDetails"].get("text", ""))
        elif event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
            found.append("log: " + params["entry"]["text"])
    return found
