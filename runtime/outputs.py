"""Where `pyimgano-infer` writes, checked before any work starts and written so that nothing is lost.

Every output location is checked first (its folder exists; an existing file or a non-empty folder is
replaced only with `--overwrite` and continued only with `--resume`), so a bad location fails before a
single image is scored and before another output is touched. Record files are locked against a second
writer and opened without truncation until the lock is held. A write that fails (disk full, permission)
is an OutputError naming the file, never a silently short output.
"""

from __future__ import annotations

import fcntl
import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO


class OutputError(Exception):
    """An output cannot be written where asked; the message names it."""


class OutputExists(Exception):
    """An output already exists and neither --overwrite nor --resume was given."""


def check_file(flag: str, path: Path, overwrite: bool, resume: bool) -> None:
    if not path.parent.is_dir():
        raise OutputError(f"{flag} {path}: the folder {path.parent} does not exist")
    if path.is_dir():
        raise OutputError(f"{flag} {path}: is a folder")
    if path.exists() and not (overwrite or resume):
        raise OutputExists(f"{flag} {path} exists: pass --overwrite to replace it or --resume to continue it")


def check_folder(flag: str, path: Path, overwrite: bool, resume: bool) -> None:
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path}: is not a folder")
    if not path.parent.is_dir():
        raise OutputError(f"{flag} {path}: the folder {path.parent} does not exist")
    if path.is_dir() and any(path.iterdir()) and not (overwrite or resume):
        raise OutputExists(f"{flag} {path} is not empty: pass --overwrite to write into it or --resume to continue")


def complete_records(path: Path) -> tuple[list[dict], int]:
    """The records of an existing JSONL file up to its last complete line, and that line's end offset (a
    line cut short by a killed run, and anything after it, is dropped)."""
    records, end = [], 0
    with open(path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            if not isinstance(record, dict) or "input" not in record:
                break
            records.append(record)
            end += len(line)
    return records, end


@dataclass
class RecordFile:
    """A JSONL file this run alone writes: locked, truncated (overwrite) or cut to its last complete record
    (resume) only once the lock is held, flushed after every record."""

    flag: str
    path: Path
    handle: IO[str] | None = None

    def open(self, resume: bool) -> list[dict]:
        """Opens and locks the file; returns the records a resumed run keeps."""
        try:
            self.handle = open(self.path, "a+", encoding="utf-8")
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise OutputError(f"{self.flag} {self.path}: another pyimgano-infer is writing it") from None
        except OSError as exc:
            self.close()
            raise OutputError(f"{self.flag} {self.path}: {exc.strerror or exc}") from exc
        kept: list[dict] = []
        end = 0
        if resume:
            kept, end = complete_records(self.path)
        if self.path.is_file():  # a device or a pipe has nothing to cut
            try:
                self.handle.truncate(end)
                self.handle.seek(end)
            except OSError as exc:
                self.close()
                raise OutputError(f"{self.flag} {self.path}: {exc.strerror or exc}") from exc
        return kept

    def write(self, record: dict) -> None:
        # allow_nan=False: a bare NaN is not JSON, and strict parsers on the line would reject the file.
        line = json.dumps(record, allow_nan=False) + "\n"
        try:
            self.handle.write(line)
            self.handle.flush()
        except OSError as exc:
            raise OutputError(f"{self.flag} {self.path}: write failed ({exc.strerror or exc}); the records before "
                              "it are complete (--resume continues after them)") from exc

    def close(self) -> None:
        """Closes the file; the last buffered bytes failing to reach it is a failed write like any other."""
        if self.handle is None:
            return
        handle, self.handle = self.handle, None
        try:
            handle.close()
        except OSError as exc:
            raise OutputError(f"{self.flag} {self.path}: write failed ({exc.strerror or exc})") from exc
