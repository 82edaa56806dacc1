"""The server's log: one JSON object per line on standard error, in the project's JSON log format
(runtime/logs.py: time, level, logger, message, and the fields given), for the server's own events and
uvicorn's messages alike. A server event's message is its name, repeated as `event` for filtering."""

from __future__ import annotations

import logging
import sys

from pyimgano.runtime.logs import JsonLines

LOGGER_NAME = "pyimgano.serve"


def _drop_colours(record: logging.LogRecord) -> bool:
    # uvicorn adds an ANSI-coloured copy of some messages for terminals; JSON lines carry the plain one.
    record.__dict__.pop("color_message", None)
    return True


def configure(level: int = logging.INFO) -> None:
    """The server's logger and uvicorn's write JSON lines to stderr; uvicorn's access log stays off."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    handler.addFilter(_drop_colours)
    for name in (LOGGER_NAME, "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def event(name: str, level: int = logging.INFO, exc_info: bool = False, **fields) -> None:
    logging.getLogger(LOGGER_NAME).log(level, name, extra={"event": name, **fields}, exc_info=exc_info)
