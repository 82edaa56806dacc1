"""Progress of long loops: a bar on a terminal; off a terminal (CI, logs, a service manager), a log line at most
every LOG_INTERVAL_S seconds and one at the end, so a long unattended run is not silent in its log.

In the runtime (no torch) so that pyimgano-infer and the workbench report progress the same way.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

from pyimgano.runtime.logs import bars_allowed

T = TypeVar("T")
_WIDTH = 30
LOG_INTERVAL_S = 30.0
log = logging.getLogger("pyimgano.progress")


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO | None = None, log_interval_s: float = LOG_INTERVAL_S):
        self.stream = stream if stream is not None else sys.stderr
        on_terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = on_terminal and bars_allowed() and total > 0
        self.log_lines = not on_terminal and total > 0
        self.label = label
        self.total = total
        self.done = 0
        self.started = self.logged = time.perf_counter()
        self.log_interval_s = log_interval_s

    def update(self, count: int = 1) -> None:
        self.done = min(self.total, self.done + count)
        now = time.perf_counter()
        elapsed = now - self.started
        if self.bar:
            filled = int(_WIDTH * self.done / self.total)
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (_WIDTH - filled)}] {self.done}/{self.total} {elapsed:.0f}s")
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif self.log_lines and (self.done == self.total or now - self.logged >= self.log_interval_s):
            self.logged = now
            rate = self.done / elapsed if elapsed > 0 else 0.0
            remaining = (self.total - self.done) / rate if rate > 0 else None
            # A loop that ended within one interval gets its line at debug level: short loops stay out of the log.
            level = logging.INFO if self.done < self.total or elapsed >= self.log_interval_s else logging.DEBUG
            log.log(level, "%s: %d/%d (%.0f%%), %.1f/s, %s", self.label, self.done, self.total, 100.0 * self.done / self.total,
                     rate, f"about {remaining:.0f} s left" if remaining is not None and self.done < self.total else
                     f"done in {elapsed:.1f} s",
                     extra={"task": self.label, "done": self.done, "total": self.total, "per_second": round(rate, 3)})


def track(items: Iterable[T], label: str, total: int) -> Iterator[T]:
    """Yields the items, advancing the progress of `total` steps (one per item)."""
    progress = Progress(label, total)
    for item in items:
        yield item
        progress.update()
