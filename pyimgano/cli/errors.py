"""The one place where library errors become exit codes (docs/EXIT_CODES.md), for every console script.

Each command is split as httpie splits `main` and `program`: `program` does the work and raises; the
click command calls `run_program`, which prints one line naming what failed and returns its code. No
traceback reaches a user for an error this table knows; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import signal
import sys
from typing import Callable

import click

from pyimgano.runtime.exit_codes import ExitCode


class UsageError(Exception):
    """Flags that do not fit together, or an input pattern that matched nothing."""


class RecipePlaceholderError(Exception):
    """The recipe is a placeholder; the message says what to do instead."""


# (module, class, exit code, message prefix), most specific first. Classes are looked up in sys.modules:
# an error of a module that was never imported cannot have been raised, and the edge install, which has
# no torch, must not import the workbench to find out.
ERRORS: tuple[tuple[str, str, ExitCode, str], ...] = (
    ("pyimgano.cli.errors", "UsageError", ExitCode.USAGE, "error"),
    ("pyimgano.cli.errors", "RecipePlaceholderError", ExitCode.RECIPE_PLACEHOLDER, "error"),
    ("pyimgano.config", "ConfigError", ExitCode.USAGE, "config error"),
    ("pyimgano.runtime.engine", "EngineError", ExitCode.USAGE, "error"),
    ("pyimgano.runtime.context", "ContextError", ExitCode.USAGE, "error"),
    ("pyimgano.runtime.bundle", "BundleError", ExitCode.BUNDLE_REFUSED, "bundle refused"),
    ("pyimgano.runtime.signing", "SigningError", ExitCode.USAGE, "error"),
    ("pyimgano.workbench.report_plots", "ReportExtraMissing", ExitCode.USAGE, "error"),
    ("pyimgano.runtime.outputs", "OutputExists", ExitCode.USAGE, "error"),
    ("pyimgano.runtime.outputs", "OutputError", ExitCode.OUTPUT_ERROR, "error"),
    ("pyimgano.export.triton", "TritonRepositoryError", ExitCode.USAGE, "error"),
    ("pyimgano.export.bundle_writer", "ParityError", ExitCode.PARITY_REFUSED, "export refused"),
    ("pyimgano.export.bundle_writer", "ExportError", ExitCode.DATA_ERROR, "error"),
    ("pyimgano.data.types", "DatasetError", ExitCode.DATA_ERROR, "error"),
    ("pyimgano.models.features", "WeightsNotFoundError", ExitCode.DATA_ERROR, "error"),
    ("pyimgano.models.anomalib_format", "AnomalibCheckpointError", ExitCode.DATA_ERROR, "checkpoint refused"),
    ("pyimgano.workbench.checkpoint", "CheckpointError", ExitCode.DATA_ERROR, "error"),
    ("pyimgano.workbench.run_loader", "RunError", ExitCode.DATA_ERROR, "error"),
    ("pyimgano.workbench.run_directory", "RunIntegrityError", ExitCode.DATA_ERROR, "run refused"),
    ("pyimgano.workbench.run_directory", "RunDirectoryBusy", ExitCode.OUTPUT_ERROR, "error"),
)


def classify(exc: BaseException) -> tuple[ExitCode, str] | None:
    """The exit code and message prefix of a known error; None for anything else."""
    for module, name, code, prefix in ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            return code, prefix
    return None


def report(exc: Exception, about: str = "") -> ExitCode:
    """Prints a known error as one line (`PREFIX: [about: ]message`) and returns its exit code; an
    error the table does not know is re-raised with its traceback."""
    known = classify(exc)
    if known is None:
        raise exc
    code, prefix = known
    click.echo(f"{prefix}: {about + ': ' if about else ''}{exc}", err=True)
    return code


def _terminate(signum, frame) -> None:
    raise SystemExit(int(ExitCode.TERMINATED))


def run_program(program: Callable[[], ExitCode]) -> None:
    """Runs `program` and exits with its code, or with the code of the known error it raised."""
    # SIGTERM before a command installs its own handling unwinds like Ctrl-C, so temporary folders (an
    # extracted bundle) are removed on the way out.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = program()
    except click.ClickException:
        raise  # click's own usage errors print and exit (2) as click does
    except Exception as exc:  # noqa: BLE001 - report() re-raises what ERRORS does not know
        code = report(exc)
    sys.exit(int(code))
