"""pyimgano-report: (re)build a run's report.html (docs/REPORT.md). Exit codes: pyimgano.cli.errors."""

from __future__ import annotations

from pathlib import Path

import click

from pyimgano.cli.errors import run_program
from pyimgano.runtime.exit_codes import ExitCode
from pyimgano.runtime.outputs import OutputError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the report (default: RUN/report.html).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where a run without saved gallery maps has them recomputed by its model.")
def main(run_dir, out, device):
    """Draw RUN's report.html: curves, histograms, thresholds with their provenance, per-defect-type rates and
    galleries of the worst false rejects and misses. One self-contained file; every run file it reads is
    checked against the digests the run recorded."""
    run_program(lambda: program(run_dir, out, device))


def program(run_dir: Path, out: Path | None, device: str) -> ExitCode:
    from pyimgano.workbench.report_plots import require_matplotlib

    require_matplotlib()
    # torch (the run's model, for maps a run did not save) is imported only once the flags are known good.
    from pyimgano.workbench.html_report import REPORT_NAME, finished_view, write_report

    out = out or run_dir / REPORT_NAME
    if not out.parent.is_dir():
        raise OutputError(f"--out {out}: the folder {out.parent} does not exist")
    view = finished_view(run_dir)
    write_report(view, out, device)
    click.echo(f"report: {out} ({len(view.categories)} categor{'y' if len(view.categories) == 1 else 'ies'}, "
               f"{out.stat().st_size / 1e6:.1f} MB)")
    return ExitCode.OK


if __name__ == "__main__":
    main()
