"""Recording SIGINT/SIGTERM instead of dying on them: a command that has work in hand finishes it (pyimgano-infer
its chunk, pyimgano-serve its in-flight requests) and then exits with the code that says what stopped it."""

from __future__ import annotations

import signal


class RecordSignals:
    """While in use, SIGINT and SIGTERM only record their name (`signal_name`); the previous handlers come back
    on exit."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict = {}

    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "RecordSignals":
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
