"""pyimgano-export: a workbench run -> a verified bundle. Exit codes: pyimgano.cli.errors."""

from __future__ import annotations

from pathlib import Path

import click

from pyimgano.cli.errors import run_program
from pyimgano.runtime.exit_codes import ExitCode


def export_one(
    run_dir: Path, out_dir: Path, category: str | None, version: str, precision: str = "fp32",
    bank_rows: int | None = None, false_reject_rate: float | None = None,
) -> None:
    """Exports one bundle and prints where it went; raises what the export raised."""
    from pyimgano.export.bundle_writer import export_bundle
    from pyimgano.export.variants import Variant

    result = export_bundle(run_dir, out_dir, category=category, version=version,
                           variant=Variant(precision=precision, bank_rows=bank_rows,
                                                   false_reject_rate=false_reject_rate))
    parity = result.parity
    click.echo(
        f"bundle: {result.bundle_dir}\narchive: {result.archive}\n"
        f"parity on {parity['images']} images: max relative score difference {parity['max_rel_score_diff']:.2e}, "
        f"labels identical: {parity['labels_identical']}"
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--from-run", "run_dir", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="A workbench run directory (holds report.json and config.json).")
@click.option("--category", default=None, help="Which category to export (needed when the run has several).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write NAME-VERSION/ and NAME-VERSION.zip into.")
@click.option("--bundle-version", default="1", show_default=True, help="The bundle's version string.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="PatchCore. fp16 (for CUDA): backbone, projection and the ranking of bank rows in half "
                   "precision; the distance to the picked row, image score and map stay fp32; parity against the "
                   "fp32 model within 5e-2 relative. int8 (for CPUs with VNNI/dotprod): convolutions and the bank "
                   "search in 8-bit integers, thresholds recalibrated with the int8 graph; parity within 0.25 relative.")
@click.option("--bank-rows", type=click.IntRange(min=1), default=None,
              help="PatchCore: keep a greedy k-center coreset of this many rows of the fitted bank (faster on CPU, "
                   "less exact); thresholds are recalibrated on the run's held-out images (a run trained with "
                   "calibration.strategy holdout; int8 likewise).")
@click.option("--target-false-reject-rate", "false_reject_rate", type=click.FloatRange(0.0, 0.5, min_open=True),
              default=None, help="Another operating point: the image threshold re-derived from the normal scores the "
                                 "run stored (the share of good parts it may reject), without refitting; the bundle's "
                                 "name gets -frrRATE.")
def main(run_dir, category, out_dir, bundle_version, precision, bank_rows, false_reject_rate):
    """Export a run's model as a bundle for pyimgano-infer."""

    def program() -> ExitCode:
        export_one(run_dir, out_dir, category, bundle_version, precision, bank_rows, false_reject_rate)
        return ExitCode.OK

    run_program(program)
