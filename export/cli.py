"""pyimgano-export: a workbench run -> a verified bundle. Exit codes: pyimgano.cli.errors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from pyimgano.cli.errors import UsageError, run_program
from pyimgano.cli.log_flags import logging_options
from pyimgano.runtime.exit_codes import ExitCode

if TYPE_CHECKING:
    from pyimgano.export.triton import TritonOptions


def export_one(
    run_dir: Path, out_dir: Path, category: str | None, version: str, precision: str = "fp32",
    bank_rows: int | None = None, false_reject_rate: float | None = None, sign_key: Path | None = None,
) -> None:
    """Exports one bundle and prints where it went; raises what the export raised."""
    from pyimgano.export.bundle_writer import export_bundle
    from pyimgano.export.variants import Variant

    result = export_bundle(run_dir, out_dir, category=category, version=version,
                           variant=Variant(precision=precision, bank_rows=bank_rows,
                                                   false_reject_rate=false_reject_rate),
                           sign_key=sign_key)
    parity = result.parity
    click.echo(
        f"bundle: {result.bundle_dir}\narchive: {result.archive}\n"
        f"parity on {parity['images']} images: max relative score difference {parity['max_rel_score_diff']:.2e}, "
        f"labels identical: {parity['labels_identical']}"
    )
    if result.key_id:
        click.echo(f"signed by key_id {result.key_id}")


def export_triton(
    run_dir: Path, repository: Path, category: str | None, version: str, precision: str = "fp32",
    bank_rows: int | None = None, false_reject_rate: float | None = None, sign_key: Path | None = None,
    options: TritonOptions | None = None,
) -> None:
    """Exports one bundle into a scratch folder, lays it out as a model of the Triton repository and prints
    where it went; raises what the export or the layout raised."""
    import tempfile

    from pyimgano.export.bundle_writer import export_bundle
    from pyimgano.export.triton import TritonOptions, triton_version, write_triton_model
    from pyimgano.export.variants import Variant

    triton_version(version)  # refused before the export's minutes of work
    # Outside the repository: Triton would try to load any folder there, hidden ones included.
    with tempfile.TemporaryDirectory(prefix="pyimgano-triton-") as scratch:
        result = export_bundle(run_dir, Path(scratch), category=category, version=version,
                               variant=Variant(precision=precision, bank_rows=bank_rows,
                                               false_reject_rate=false_reject_rate),
                               sign_key=sign_key)
        model = write_triton_model(result.bundle_dir, repository, options or TritonOptions())
    parity = result.parity
    click.echo(
        f"triton model: {model.model_dir} (version {model.version}; the config serves version {model.served_version})\n"
        f"config: {model.config}\nbundle: {model.version_dir}\n"
        f"parity on {parity['images']} images: max relative score difference {parity['max_rel_score_diff']:.2e}, "
        f"labels identical: {parity['labels_identical']}"
    )
    if result.key_id:
        click.echo(f"signed by key_id {result.key_id}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@logging_options
@click.option("--from-run", "run_dir", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="A workbench run directory (holds report.json and config.json).")
@click.option("--category", default=None, help="Which category to export (needed when the run has several).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write NAME-VERSION/ and NAME-VERSION.zip into; with --format triton, the Triton model "
                   "repository.")
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
@click.option("--sign-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Sign the bundle with this Ed25519 private key (pyimgano-sign keygen's NAME.key) before the .zip is "
                   "made, for pyimgano-infer --trusted-keys.")
@click.option("--format", "output_format", type=click.Choice(["bundle", "triton"]), default="bundle",
              show_default=True,
              help="bundle: NAME-VERSION/ and NAME-VERSION.zip in --out. triton: --out is a Triton Inference Server "
                   "model repository; writes OUT/NAME/config.pbtxt and OUT/NAME/VERSION/ holding the bundle's files "
                   "(--bundle-version must then be a positive integer; an existing version folder, or a model whose "
                   "config.pbtxt has other tensors, is refused). pyimgano-serve serves the same folder "
                   "(docs/TRITON.md).")
@click.option("--triton-max-batch-size", type=click.IntRange(min=1), default=None,
              help="--format triton: config.pbtxt max_batch_size [default: 32].")
@click.option("--triton-instance-kind", type=click.Choice(["auto", "cpu", "gpu"]), default=None,
              help="--format triton: instance_group kind [default: auto, GPU instances where the server has GPUs, "
                   "else CPU]; auto and gpu also write the CUDA settings pyimgano-infer uses (TF32 off, which needs "
                   "Triton 24.07 or newer).")
def main(run_dir, category, out_dir, bundle_version, precision, bank_rows, false_reject_rate, sign_key,
         output_format, triton_max_batch_size, triton_instance_kind):
    """Export a run's model as a bundle for pyimgano-infer, or as a model of a Triton repository."""

    def program() -> ExitCode:
        triton_flags = {"--triton-max-batch-size": triton_max_batch_size, "--triton-instance-kind": triton_instance_kind}
        if output_format == "triton":
            from pyimgano.export.triton import DEFAULT_MAX_BATCH_SIZE, TritonOptions

            options = TritonOptions(max_batch_size=triton_max_batch_size or DEFAULT_MAX_BATCH_SIZE,
                                    instance_kind=triton_instance_kind or "auto")
            export_triton(run_dir, out_dir, category, bundle_version, precision, bank_rows, false_reject_rate,
                          sign_key=sign_key, options=options)
            return ExitCode.OK
        given = [flag for flag, value in triton_flags.items() if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: only with --format triton")
        export_one(run_dir, out_dir, category, bundle_version, precision, bank_rows, false_reject_rate,
                   sign_key=sign_key)
        return ExitCode.OK

    run_program(program)


if __name__ == "__main__":
    main()
