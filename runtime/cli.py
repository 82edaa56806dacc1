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


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle", "bundle_path", required=True, type=click.Path(path_type=Path),
              help="Bundle directory NAME-VERSION/ or its .zip archive.")
@click.option("--input", "inputs", required=True, multiple=True,
              help="An image file, a folder (searched recursively) or a glob pattern; repeatable.")
@click.option("--save-jsonl", type=click.Path(dir_okay=False, path_type=Path),
              help="Write one JSON record per input here (default: standard output).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="auto uses CUDA when ONNX Runtime has it, else the CPU.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--defects", is_flag=True, help="Extract defect regions with the bundle's pixel threshold.")
@click.option("--save-masks", type=click.Path(file_okay=False, path_type=Path),
              help="With --defects: write a PNG mask per image (255 = defect) into this folder.")
@click.option("--pixel-threshold", type=float, default=None,
              help="With --defects: override the bundle's calibrated pixel threshold (raw map units).")
@click.option("--defect-min-area", type=click.IntRange(min=0), default=None,
              help="With --defects: drop regions smaller than this many original-image pixels.")
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the closing summary (images, errors, anomalous, images/s) to this file.")
def main(bundle_path, inputs, save_jsonl, device, batch_size, threads, defects, save_masks, pixel_threshold,
         defect_min_area, summary_json):
    """Score images with a pyimgano bundle; one JSONL record per image."""
    try:
        bundle = open_bundle(bundle_path)
    except BundleError as exc:
        click.echo(f"bundle refused: {exc}", err=True)
        sys.exit(ExitCode.BUNDLE_REFUSED)
    try:
        engine = Engine(bundle, device=device, intra_op_threads=threads)
    except EngineError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(ExitCode.USAGE)
    paths = [path for spec in inputs for path in expand_inputs(spec)]
    if not paths:
        click.echo(f"error: no images found for --input {' '.join(inputs)}", err=True)
        sys.exit(ExitCode.USAGE)
    if (save_masks or pixel_threshold is not None or defect_min_area is not None) and not defects:
        click.echo("error: --save-masks, --pixel-threshold and --defect-min-area need --defects", err=True)
        sys.exit(ExitCode.USAGE)
    try:
        defects_config = defects_from_flags(bundle.manifest["defects"], pixel_threshold, defect_min_area) if defects else None
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(ExitCode.USAGE)
    options = InferOptions(batch_size=batch_size, defects=defects_config, save_masks=save_masks)
    out = open(save_jsonl, "w", encoding="utf-8") if save_jsonl else sys.stdout
    try:
        summary = run_inference(engine, paths, options, lambda record: out.write(json.dumps(record) + "\n"))
    finally:
        if save_jsonl:
            out.close()
    report = {"bundle": f"{bundle.manifest['name']}-{bundle.manifest['version']}", "device": engine.device, **summary.to_json()}
    click.echo(json.dumps(report), err=True)
    if summary_json:
        summary_json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    sys.exit(ExitCode.INPUT_ERRORS if summary.errors else ExitCode.OK)


if __name__ == "__main__":
    main()
