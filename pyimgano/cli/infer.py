"""pyimgano-infer: score images with a bundle on ONNX Runtime. Exit codes: pyimgano.cli.errors."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import click

from pyimgano.cli.errors import UsageError, run_program
from pyimgano.cli.log_flags import logging_options
from pyimgano.cli.signals import RecordSignals
from pyimgano.runtime import strict
from pyimgano.runtime.bundle import open_bundle
from pyimgano.runtime.context import ContextError
from pyimgano.runtime.defects import MASK_FORMATS, REGION_SORT_KEYS, THRESHOLD_STRATEGIES, DefectsConfig
from pyimgano.runtime.engine import DEVICES, Engine
from pyimgano.runtime.exit_codes import ExitCode
from pyimgano.runtime.images import DEFAULT_LIMITS, ImageLimits, expand_inputs
from pyimgano.runtime.inference import InferOptions, run_inference
from pyimgano.runtime.outputs import OutputError, RecordFile, check_file, check_folder
from pyimgano.runtime.signing import TRUSTED_KEYS_ENV
from pyimgano.runtime.tiling import MAP_REDUCE, TilingConfig

log = logging.getLogger("pyimgano.infer")


# Flags that override one key of the defects block: (flag, DefectsConfig field, click type, help).
DEFECT_FLAGS = (
    ("--pixel-threshold", "pixel_threshold", float, "A fixed pixel threshold in map units (implies strategy fixed)."),
    ("--pixel-threshold-strategy", "pixel_threshold_strategy", click.Choice(THRESHOLD_STRATEGIES),
     "calibrated (the run's), fixed (--pixel-threshold), normal_pixel_quantile (--pixel-normal-quantile of the "
     "normal-pixel table stored in the bundle)."),
    ("--pixel-normal-quantile", "pixel_normal_quantile", float, "Quantile for strategy normal_pixel_quantile."),
    ("--mask-format", "mask_format", click.Choice(MASK_FORMATS), "Masks as PNG (0/255) or .npy (bool)."),
    ("--roi-xyxy-norm", "roi_xyxy_norm", click.Tuple([float, float, float, float]),
     "Region of interest X0 Y0 X1 Y1 as fractions of width/height; no defect outside it."),
    ("--defect-border-ignore-px", "border_ignore_px", click.IntRange(min=0), "Ignore this many pixels at each edge."),
    ("--defect-smooth", "smooth", click.Choice(["none", "gaussian", "median"]), "Smooth the map before thresholding."),
    ("--defect-smooth-ksize", "smooth_ksize", click.IntRange(min=0), "Kernel size for --defect-smooth (odd)."),
    ("--defect-hysteresis-low", "hysteresis_low", float,
     "Keep pixels above this low threshold when connected to a pixel above the pixel threshold."),
    ("--defect-open-ksize", "open_ksize", click.IntRange(min=0), "Morphological opening of the mask (0 = off)."),
    ("--defect-close-ksize", "close_ksize", click.IntRange(min=0), "Morphological closing of the mask (0 = off)."),
    ("--defect-region-peak-fraction", "region_peak_fraction", click.FloatRange(0.0, 1.0, max_open=True),
     "Keep of each region the pixels at least this share of the way from the pixel threshold to its peak "
     "(0 = off; the recipes ship 0.5)."),
    ("--defect-fill-holes/--no-defect-fill-holes", "fill_holes", None, "Fill holes inside regions."),
    ("--defect-merge-gap-px", "merge_gap_px", click.IntRange(min=0), "Report regions closer than this as one."),
    ("--defect-min-area", "min_area", click.IntRange(min=0), "Drop regions smaller than this (original pixels)."),
    ("--defect-min-score-max", "min_score_max", float, "Drop regions whose peak is below this."),
    ("--defect-min-score-mean", "min_score_mean", float, "Drop regions whose mean is below this."),
    ("--defect-min-fill-ratio", "min_fill_ratio", float, "Drop regions filling less of their box than this."),
    ("--defect-max-aspect-ratio", "max_aspect_ratio", float, "Drop regions whose box is longer than this ratio."),
    ("--defect-min-solidity", "min_solidity", float, "Drop regions with area / convex hull area below this."),
    ("--defect-max-regions", "max_regions", click.IntRange(min=1), "Keep at most this many regions per image."),
    ("--defect-region-sort", "region_sort", click.Choice(REGION_SORT_KEYS), "Sort key for --defect-max-regions."),
)


def defect_options(command):
    for flag, field, kind, help_text in reversed(DEFECT_FLAGS):
        help_text = help_text[0].lower() + help_text[1:]
        if kind is None:
            command = click.option(flag, field, default=None, help=f"With --defects: {help_text}")(command)
        else:
            command = click.option(flag, field, type=kind, default=None, help=f"With --defects: {help_text}")(command)
    return command


def defects_from_flags(defaults: DefectsConfig, flags: dict) -> DefectsConfig:
    """The defects block (bundle's, run's or --infer-config's) as defaults; each explicit flag overrides its key."""
    overrides = {field: value for field, value in flags.items() if value is not None}
    if "pixel_threshold" in overrides and "pixel_threshold_strategy" not in overrides:
        overrides["pixel_threshold_strategy"] = "fixed"
    try:
        return dataclasses.replace(defaults, enabled=True, **overrides)
    except ValueError as exc:  # DefectsConfig validates its values on construction
        raise UsageError(f"--defect flags: {exc}") from exc


def infer_config_defects(path: Path) -> DefectsConfig:
    """The `defects` block of an infer_config.json, parsed as strictly as a bundle's."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"--infer-config {path}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("defects"), dict):
        raise UsageError(f"--infer-config {path}: has no `defects` object")
    try:
        return strict.parse(DefectsConfig, data["defects"], "defects")
    except strict.SchemaError as exc:
        raise UsageError(f"--infer-config {path}: {exc}") from exc


def tiling_from_flags(current: TilingConfig | None, size: int | None, stride: int | None, reduce: str | None):
    """--tile-size/--tile-stride/--tile-map-reduce over the source's tiling (stride defaults to the size)."""
    if size is None and stride is None and reduce is None:
        return current
    base = current.to_json() if current else {}
    tile_size = size if size is not None else base.get("tile_size")
    if tile_size is None:
        raise UsageError("--tile-stride/--tile-map-reduce need --tile-size on a bundle without tiling")
    try:
        return TilingConfig.from_json({**base, "tile_size": tile_size,
                                       "stride": stride if stride is not None else base.get("stride", tile_size),
                                       **({"map_reduce": reduce} if reduce else {})})
    except ValueError as exc:
        raise UsageError(f"--tile-*: {exc}") from exc


def open_source(bundle_path, run_dir, run_category, device, threads, trusted_keys=None):
    """(batch scorer, scoring context, the bundle's origin): the ONNX engine over a bundle, or (server side,
    needs torch) the model of a workbench run, whose origin is None."""
    if (bundle_path is None) == (run_dir is None):
        raise click.UsageError("give exactly one of --bundle and --from-run")
    if bundle_path is not None:
        bundle = open_bundle(bundle_path, trusted_keys=trusted_keys)
        if not bundle.origin.verified:
            log.warning("bundle %s: origin %s; give --trusted-keys (or %s) to open only bundles signed by a trusted "
                        "key", bundle_path.name, bundle.origin.describe(), TRUSTED_KEYS_ENV,
                        extra={"bundle": bundle_path.name, **bundle.origin.to_json()})
        engine = Engine(bundle, device=device, intra_op_threads=threads)
        return engine, engine.context, bundle.origin
    if trusted_keys is not None:
        raise UsageError(f"--trusted-keys (or {TRUSTED_KEYS_ENV}) applies to --bundle only, not --from-run")
    # Imported only here: the edge install has no torch, and --bundle never needs it.
    from pyimgano.workbench.run_loader import open_run

    return (*open_run(run_dir, run_category, device=device), None)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@logging_options
@click.option("--bundle", "bundle_path", type=click.Path(path_type=Path),
              help="Bundle directory NAME-VERSION/ or its .zip archive (ONNX Runtime, no torch).")
@click.option("--from-run", "run_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Instead of a bundle: a workbench run directory, scored with its torch model (needs pyimgano[train]).")
@click.option("--from-run-category", "run_category", help="With --from-run: the category, when the run has several.")
@click.option("--trusted-keys", type=click.Path(exists=True, path_type=Path), envvar=TRUSTED_KEYS_ENV, show_envvar=True,
              help="Open the bundle only if one of these Ed25519 public keys signed it: a file of keys (ssh-ed25519 "
                   "lines or PEM) or a folder of *.pub files (docs/BUNDLE.md, pyimgano-sign). Without it the bundle's "
                   "origin is unverified, and said so.")
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
@click.option("--defects-regions-jsonl", type=click.Path(dir_okay=False, path_type=Path),
              help="With --defects: also write one JSON line per region (input, region) to this file.")
@defect_options
@click.option("--save-overlays", type=click.Path(file_okay=False, path_type=Path),
              help="Write a picture per image into this folder (PNG): map values above the pixel threshold coloured "
                   "on the image, region boxes, the verdict and score in a banner, the colour scale below "
                   "(docs/REPORT.md).")
@click.option("--tile-size", type=click.IntRange(min=32), default=None,
              help="Tile each image (original pixels) for high-resolution inputs; must match the tiling the bundle "
                   "was calibrated with (see --uncalibrated-tiling).")
@click.option("--tile-stride", type=click.IntRange(min=1), default=None, help="Tile stride (default: tile size).")
@click.option("--tile-map-reduce", type=click.Choice(MAP_REDUCE), default=None, help="How overlapping tile maps blend.")
@click.option("--uncalibrated-tiling", is_flag=True,
              help="Allow --tile-* settings other than the bundle's own: its thresholds were calibrated for its "
                   "own tiling only, so without this flag other tiling is refused (exit 2).")
@click.option("--continue-on-error/--stop-on-error", default=True, show_default=True,
              help="Keep going after an unreadable input (its record has `error`), or stop at the first.")
@click.option("--max-errors", type=click.IntRange(min=1), default=None,
              help="Stop reading new inputs after this many have failed.")
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the closing summary (images, errors, anomalous, images/s) to this file.")
@click.option("--max-image-bytes", type=click.IntRange(min=1), default=DEFAULT_LIMITS.max_bytes, show_default=True,
              help="An input file larger than this is an error record, not read.")
@click.option("--max-image-pixels", type=click.IntRange(min=1), default=DEFAULT_LIMITS.max_pixels, show_default=True,
              help="An input whose header states more pixels than this is an error record, not decoded.")
@click.option("--overwrite", is_flag=True,
              help="Replace existing output files and write into non-empty mask/overlay folders (refused without it).")
@click.option("--resume", is_flag=True,
              help="Continue a run cut short: keep the complete records of --save-jsonl and score only the inputs "
                   "that have none.")
def main(**flags):
    """Score images with a pyimgano bundle (or a workbench run); one JSONL record per image."""
    run_program(lambda: program(**flags))


def program(bundle_path, run_dir, run_category, trusted_keys, inputs, save_jsonl, device, batch_size, threads, defects,
            infer_config, save_masks, defects_regions_jsonl, save_overlays, tile_size, tile_stride, tile_map_reduce,
            uncalibrated_tiling, continue_on_error, max_errors, summary_json, max_image_bytes, max_image_pixels,
            overwrite, resume, **defect_flags) -> ExitCode:
    given = [flag.split("/")[0] for flag, field, _, _ in DEFECT_FLAGS if defect_flags[field] is not None]
    given += [name for name, value in (("--save-masks", save_masks), ("--infer-config", infer_config),
                                       ("--defects-regions-jsonl", defects_regions_jsonl)) if value]
    if given and not defects:
        raise UsageError(f"{', '.join(given)} need --defects")
    check_outputs(save_jsonl, defects_regions_jsonl, summary_json, save_masks, save_overlays, overwrite, resume)
    scorer, context, origin = open_source(bundle_path, run_dir, run_category, device, threads, trusted_keys)
    paths = [path for spec in inputs for path in expand_inputs(spec)]
    if not paths:
        raise UsageError(f"no images found for --input {' '.join(inputs)}")
    defaults = infer_config_defects(infer_config) if infer_config else context.defects
    defects_config = defects_from_flags(defaults, defect_flags) if defects else None
    original_tiling = context.steps.tiling
    tiling = tiling_from_flags(original_tiling, tile_size, tile_stride, tile_map_reduce)
    try:
        context = context.with_tiling(tiling, calibrated_only=not uncalibrated_tiling)
    except ContextError as exc:
        flags = " ".join(f"{name} {value}" for name, value in (("--tile-size", tile_size), ("--tile-stride", tile_stride),
                                                                ("--tile-map-reduce", tile_map_reduce)) if value)
        raise UsageError(f"{flags}: {exc}; export a run trained with that tiling, or pass --uncalibrated-tiling "
                         "to score anyway (records then say calibrated: false)") from exc
    calibrated = tiling == original_tiling
    if not calibrated:
        log.warning("%s scores with tiling it was not calibrated for: its labels and regions are not decisions its "
                    "thresholds back (records say calibrated: false)", context.name)
    # Resolved before the first image, so a strategy this context cannot serve fails before any output.
    if defects_config:
        context.pixel_threshold_for(defects_config)
    records_file, regions_file, kept = open_outputs(save_jsonl, defects_regions_jsonl, summary_json, save_masks,
                                                    save_overlays, overwrite, resume)
    done = {record["input"] for record in kept}
    remaining = [path for path in paths if str(path) not in done]
    if resume:
        log.info("resuming: %d inputs already have records in %s, %d to go", len(done), save_jsonl, len(remaining),
                 extra={"done": len(done), "remaining": len(remaining)})
    log.info("scoring %d images with %s on %s", len(remaining), context.name, scorer.device,
             extra={"images": len(remaining), "source": context.name, "device": str(scorer.device)})
    # SIGINT and SIGTERM stop the run after the chunk in hand: its records and the summary are still written,
    # and the exit code says which signal (130, 143).
    stop = RecordSignals()
    options = InferOptions(batch_size=batch_size, defects=defects_config, save_masks=save_masks,
                           save_overlays=save_overlays, max_errors=max_errors if continue_on_error else 1,
                           calibrated=calibrated, stop_requested=stop.requested,
                           limits=ImageLimits(max_bytes=max_image_bytes, max_pixels=max_image_pixels))

    def emit(record: dict) -> None:
        if regions_file and "defects" in record:
            for region in record["defects"]["regions"]:
                regions_file.write({"input": record["input"], **region})
        # The record last: a resumed run rescores an input whose record is missing.
        if records_file:
            records_file.write(record)
        else:
            click.echo(json.dumps(record, allow_nan=False))

    try:
        with stop:
            summary = run_inference(scorer, context, remaining, options, emit)
    finally:
        for handle in (records_file, regions_file):
            if handle:
                handle.close()
    summary.interrupted = stop.signal_name
    report = {"source": context.name, "device": str(scorer.device), **summary.to_json()}
    if origin is not None:
        report["origin"] = origin.to_json()
    if resume:
        report["resumed_after"] = len(done)
    click.echo(json.dumps(report), err=True)
    if summary_json:
        try:
            summary_json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"--summary-json {summary_json}: write failed ({exc.strerror or exc})") from exc
    if stop.signal_name:
        return ExitCode.INTERRUPTED if stop.signal_name == "SIGINT" else ExitCode.TERMINATED
    return ExitCode.INPUT_ERRORS if summary.errors else ExitCode.OK


def check_outputs(save_jsonl, regions_jsonl, summary_json, save_masks, save_overlays, overwrite, resume) -> None:
    """Every output location, before any work and before any output is touched."""
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if resume and not save_jsonl:
        raise UsageError("--resume needs --save-jsonl (the records to continue after)")
    for flag, path in (("--save-jsonl", save_jsonl), ("--defects-regions-jsonl", regions_jsonl),
                       ("--summary-json", summary_json)):
        if path:
            check_file(flag, path, overwrite, resume)
    for flag, path in (("--save-masks", save_masks), ("--save-overlays", save_overlays)):
        if path:
            check_folder(flag, path, overwrite, resume)


def open_outputs(save_jsonl, regions_jsonl, summary_json, save_masks, save_overlays, overwrite, resume):
    """Checks the output locations again (they may have changed while the bundle opened), then opens and
    locks the record files: (records file or None for stdout, regions file or None, the records a resume
    keeps)."""
    check_outputs(save_jsonl, regions_jsonl, summary_json, save_masks, save_overlays, overwrite, resume)
    records_file = RecordFile("--save-jsonl", save_jsonl) if save_jsonl else None
    regions_file = RecordFile("--defects-regions-jsonl", regions_jsonl) if regions_jsonl else None
    kept = records_file.open(resume) if records_file else []
    if regions_file:
        try:
            regions = regions_file.open(resume)
        except OutputError:
            records_file.close()
            raise
        if resume:
            # Regions of inputs whose record was not written are written again with it.
            done = {record["input"] for record in kept}
            regions_file.handle.truncate(0)
            for region in regions:
                if region["input"] in done:
                    regions_file.write(region)
    return records_file, regions_file, kept


if __name__ == "__main__":
    main()
