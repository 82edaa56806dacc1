"""Progress bars on a terminal only: nothing is written when stderr is a file or a pipe (CI, logs).

In the runtime (no torch) so that pyimgano-infer and the workbench draw the same bars.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")
_WIDTH = 30


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)()) and total > 0
        self.label = label
        self.total = total
        self.done = 0
        self.started = time.perf_counter()

    def update(self, count: int = 1) -> None:
        self.done = min(self.total, self.done + count)
        if self.enabled:
            filled = int(_WIDTH * self.done / self.total)
            elapsed = time.perf_counter() - self.started
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (_WIDTH - filled)}] {self.done}/{self.total} {elapsed:.0f}s")
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()


def track(items: Iterable[T], label: str, total: int) -> Iterator[T]:
    """Yields the items, advancing a bar of `total` steps (one per item) on a terminal."""
    bar = Progress(label, total)
    for item in items:
        yield item
        bar.update()
