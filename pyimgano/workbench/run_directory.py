"""A run directory is written whole or not at all, by one writer at a time, and says which files belong to it.

`staged_run` gives the training a staging folder beside the run directory; only a run that finished is moved
into place, so a failed or killed re-train leaves the previous run as it was. A lock beside the run directory
refuses a second writer. `seal` records the sha256 of every file in the run's top-level report.json, and
`verify` lets a reader (the exporter, `pyimgano-infer --from-run`) refuse files that were changed or mixed in
from another training.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pyimgano.runtime.bundle import process_alive, sha256_file


class RunDirectoryBusy(Exception):
    """Another process is writing this run directory."""


class RunIntegrityError(Exception):
    """A run's files do not match the digests its report.json recorded."""


# The run's top report holds the digests; it is the one file they cannot cover.
TOP_REPORT = "report.json"


def _sibling(final: Path, kind: str, pid: int) -> Path:
    return final.with_name(f".{final.name}.{kind}-{pid}")


def _recover_leftovers(final: Path) -> None:
    """After a writer was killed: its staging folder is removed; a previous run it had moved aside to put the new
    one in place (killed between the two renames) is put back."""
    for kind in ("staging", "replaced"):
        for folder in final.parent.glob(f".{final.name}.{kind}-*"):
            pid = folder.name.rsplit("-", 1)[1]
            if not pid.isdigit() or process_alive(int(pid)):
                continue
            if kind == "replaced" and not final.exists():
                os.replace(folder, final)
            else:
                shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _locked(final: Path) -> Iterator[None]:
    # The lock file stays beside the run directory: removing it would let a third writer lock a new inode
    # while the second still holds the old one.
    lock_path = final.with_name(f".{final.name}.lock")
    handle = open(lock_path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunDirectoryBusy(f"{final}: another pyimgano-train (pid {holder}) is writing this run directory; "
                                   "wait for it to finish or choose another output_dir") from exc
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


@contextmanager
def staged_run(final: Path) -> Iterator[Path]:
    """Yields the folder to write the run into. When the block finishes, it replaces `final`; when it raises
    (or the process is killed), `final` is left untouched."""
    final = Path(os.path.abspath(final))
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final):
        _recover_leftovers(final)
        staging = _sibling(final, "staging", os.getpid())
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        previous = _sibling(final, "replaced", os.getpid())
        if final.exists():
            os.replace(final, previous)
        os.replace(staging, final)
        shutil.rmtree(previous, ignore_errors=True)


def seal(run_dir: Path) -> dict[str, dict]:
    """The `files` block of the top report: sha256 and size of every file written so far, by relative path."""
    return {
        path.relative_to(run_dir).as_posix(): {"sha256": sha256_file(path), "size": path.stat().st_size}
        for path in sorted(run_dir.rglob("*"))
        if path.is_file() and path.relative_to(run_dir).as_posix() != TOP_REPORT
    }


def verify(run_dir: Path, files: dict | None, names: list[str]) -> None:
    """Refuses unless each of `names` (run-relative) is recorded in `files` and matches its digest."""
    if not isinstance(files, dict):
        raise RunIntegrityError(f"{run_dir / TOP_REPORT} records no file digests (`files`): the run was written by an "
                                "older pyimgano or assembled by hand; train it again")
    for name in names:
        entry = files.get(name)
        path = run_dir / name
        if not isinstance(entry, dict) or "sha256" not in entry:
            raise RunIntegrityError(f"{path}: not among the files {TOP_REPORT} records for this run")
        if not path.is_file():
            raise RunIntegrityError(f"{path}: recorded in {TOP_REPORT} but missing")
        if path.stat().st_size != entry.get("size") or sha256_file(path) != entry["sha256"]:
            raise RunIntegrityError(f"{path}: changed since the run was written (its sha256 differs from the one "
                                    f"{TOP_REPORT} records); it does not belong to this run")
