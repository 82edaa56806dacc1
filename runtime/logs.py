"""Logging for unattended runs: standard `logging` under the `pyimgano` logger, as text or as one JSON object
per line, on stderr. Every console script takes --quiet / --verbose / --log-json (pyimgano/cli/log_flags.py).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import TextIO

ROOT = "pyimgano"
LEVELS = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}
# Attributes every LogRecord has; anything else was passed in `extra=` and goes into the JSON object.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonLines(logging.Formatter):
    """{"time", "level", "logger", "message", ...fields given as `extra`} on one line."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update({key: value for key, value in vars(record).items() if key not in _STANDARD})
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure(verbosity: str = "normal", json_lines: bool = False, stream: TextIO | None = None) -> None:
    """Sets the `pyimgano` logger's level and its one handler (replacing an earlier one)."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(LEVELS[verbosity])
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonLines() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    _state["json"] = json_lines
    _state["verbosity"] = verbosity


_state = {"json": False, "verbosity": "normal"}


def bars_allowed() -> bool:
    """Progress bars only in normal text mode; --quiet and --log-json get none."""
    return not _state["json"] and _state["verbosity"] != "quiet"


def reset() -> None:
    """Back to the state of a library import: no handler of ours, nothing configured."""
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
    _state.update(json=False, verbosity="normal")
