"""pyimgano-infer: score images with a bundle on ONNX Runtime. Exit codes: pyimgano.runtime.exit_codes."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from pyimgano.runtime.bundle import BundleError, open_bundle
from pyimgano.runtime.defects import DefectsConfig
from pyimgano.runtime.engine import DEVICES, Engine, EngineError
from pyimgano.runtime.exit_codes import ExitCode
from pyimgano.runtime.images import expand_inputs
from pyimgano.runtime.inference import InferOptions, run_inference


def defects_from_flags(defaults: dict, pixel_threshold: float | None, min_area: int | None) -> DefectsConfig:
    """The bundle's defects block as defaults; each explicit flag overrides its key."""
    config = DefectsConfig.from_json(defaults)
    overrides = {}
    if pixel_threshold is not None:
        overrides.update(pixel_threshold=pixel_threshold, pixel_threshold_strategy="fixed")
    if min_area is not None:
        overrides["min_area"] = min_area
    return dataclasses.replace(config, enabled=True, **overrides)


class SourceError(Exception):
    def __init__(self, code: ExitCode, message: str):
        super().__init__(message)
        self.code = code


def open_source(bundle_path, run_dir, run_category, device, threads):
    """The ONNX engine over a bundle, or (server side, needs torch) the model of a workbench run."""
    if (bundle_path is None) == (run_dir is None):
        raise click.UsageError("give exactly one of --bundle and --from-run")
    if bundle_path is not None:
        try:
            return Engine(open_bundle(bundle_path), device=device, intra_op_threads=threads)
        except BundleError as exc:
            raise SourceError(ExitCode.BUNDLE_REFUSED, f"bundle refused: {exc}") from exc
        except EngineError as exc:
            raise SourceError(ExitCode.USAGE, f"error: {exc}") from exc
    # Imported only here: the edge install has no torch, and --bundle never needs it.
    from pyimgano.config import ConfigError
    from pyimgano.models.backbones import WeightsNotFoundError
    from pyimgano.workbench.checkpoint import CheckpointError
    from pyimgano.workbench.serve import RunError, RunSource

    try:
        return RunSource(run_dir, run_category, device=device)
    except ConfigError as exc:
        raise SourceError(ExitCode.USAGE, f"error: {exc}") from exc
    except (RunError, CheckpointError, WeightsNotFoundError) as exc:
        raise SourceError(ExitCode.DATA_ERROR, f"error: {exc}") from exc


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle", "bundle_path", type=click.Path(path_type=Path),
              help="Bundle directory NAME-VERSION/ or its .zip archive (ONNX Runtime, no torch).")
@click.option("--from-run", "run_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Instead of a bundle: a workbench run directory, scored with its torch model (needs pyimgano[train]).")
@click.option("--from-run-category", "run_category", help="With --from-run: the category, when the run has several.")
@click.option("--input", "inputs", required=True, multiple=True,
              help="An image file, a folder (searched recursively) or a glob pattern; repeatable.")
@click.option("--save-jsonl", type=click.Path(dir_okay=False, path_type=Path),
              help="Write one JSON record per input here (default: standard output).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="auto uses CUDA when available, else the CPU.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--defects", is_flag=True, help="Extract defect regions (mask, boxes) with the pixel threshold.")
@click.option("--infer-config", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="With --defects: take the `defects` block of this infer_config.json as defaults "
                   "(instead of the bundle's or run's own).")
@click.option("--save-masks", type=click.Path(file_okay=False, path_type=Path),
              help="With --defects: write a mask per image (PNG 0/255, or .npy per mask_format) into this folder.")
@click.option("--pixel-threshold", type=float, default=None,
              help="With --defects: a fixed pixel threshold in map units, instead of the calibrated one.")
@click.option("--defect-min-area", type=click.IntRange(min=0), default=None,
              help="With --defects: drop regions smaller than this many original-image pixels.")
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the closing summary (images, errors, anomalous, images/s) to this file.")
def main(bundle_path, run_dir, run_category, inputs, save_jsonl, device, batch_size, threads, defects, infer_config,
         save_masks, pixel_threshold, defect_min_area, summary_json):
    """Score images with a pyimgano bundle (or a workbench run); one JSONL record per image."""
    try:
        source = open_source(bundle_path, run_dir, run_category, device, threads)
    except SourceError as exc:
        click.echo(str(exc), err=True)
        sys.exit(exc.code)
    paths = [path for spec in inputs for path in expand_inputs(spec)]
    if not paths:
        click.echo(f"error: no images found for --input {' '.join(inputs)}", err=True)
        sys.exit(ExitCode.USAGE)
    if (save_masks or infer_config or pixel_threshold is not None or defect_min_area is not None) and not defects:
        click.echo("error: --save-masks, --infer-config, --pixel-threshold and --defect-min-area need --defects", err=True)
        sys.exit(ExitCode.USAGE)
    try:
        defaults = json.loads(infer_config.read_text(encoding="utf-8"))["defects"] if infer_config else source.defects_defaults
        defects_config = defects_from_flags(defaults, pixel_threshold, defect_min_area) if defects else None
    except (ValueError, KeyError, TypeError) as exc:
        click.echo(f"error: defects settings: {exc}", err=True)
        sys.exit(ExitCode.USAGE)
    options = InferOptions(batch_size=batch_size, defects=defects_config, save_masks=save_masks)
    out = open(save_jsonl, "w", encoding="utf-8") if save_jsonl else sys.stdout
    try:
        summary = run_inference(source, paths, options, lambda record: out.write(json.dumps(record) + "\n"))
    finally:
        if save_jsonl:
            out.close()
    report = {"source": source.name, "device": source.device, **summary.to_json()}
    click.echo(json.dumps(report), err=True)
    if summary_json:
        summary_json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    sys.exit(ExitCode.INPUT_ERRORS if summary.errors else ExitCode.OK)


if __name__ == "__main__":
    main()
