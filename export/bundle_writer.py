"""Builds a bundle from a workbench run: rebuild the fitted model, export, check parity, write files."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from pyimgano import __version__
from pyimgano.config import WorkbenchConfig, input_contract
from pyimgano.data.types import Sample, load_images
from pyimgano.export.quantize import CALIBRATION_IMAGES, QuantizeError, quantize_int8
from pyimgano.export.variants import (
    OnnxScorer,
    Variant,
    VariantError,
    at_operating_point,
    check_variant,
    recalibrate,
    reduce_bank,
)
from pyimgano.export.onnx_graph import INPUT_NAME, MAP_NAME, OPSET, SCORE_NAME, export_graph, measure_parity
from pyimgano.runtime.bundle import BundleError, file_entry, move_into_place, read_manifest, sign_bundle, write_archive
from pyimgano.runtime.manifest import FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME
from pyimgano.runtime.signing import load_private_key
from pyimgano.workbench.artifacts import utc_now, write_json
from pyimgano.workbench.run_loader import RunError, infer_config, load_detector, load_run, model_block

# The bundle's image scores may differ from the fp32 torch model's by at most this, relative, on the
# parity images. fp32: the rounding of another kernel order. fp16 and int8 are approximations (measured
# on magnetic_tile: fp16 up to 2.8e-2 and 4.0e-2 on two fits; int8 1.1e-2 median, up to 7e-2 and more
# with a reduced bank), so their bounds catch a broken graph, not precision, and a label may differ;
# what each costs in AUROC is measured by benchmarks/variants.py.
PARITY_RTOL = 1e-3
FP16_PARITY_RTOL = 5e-2
INT8_PARITY_RTOL = 0.25
PARITY_RTOLS = {"fp32": PARITY_RTOL, "fp16": FP16_PARITY_RTOL, "int8": INT8_PARITY_RTOL}
# Calibration images in the parity check (the first of them also calibrate int8 activations), and test
# images beside them, so that anomalous ones are covered.
PARITY_NORMAL_IMAGES = 64
PARITY_TEST_IMAGES = 8


class ExportError(Exception):
    """The run cannot be exported (missing files, ambiguous category)."""


class ParityError(ExportError):
    """ONNX and torch disagree beyond tolerance; no bundle was written."""


@dataclass(frozen=True)
class ExportResult:
    bundle_dir: Path
    archive: Path
    parity: dict
    # The key that signed the bundle (`sign_key`), None when unsigned.
    key_id: str | None = None


def parity_samples(run_dir: Path, category: str, report: dict) -> list[Sample]:
    """Held-out calibration images plus a few test images (anomalous first) recorded in the run."""
    samples = [Sample(Path(path), 0, "good", None) for path in report["calibration_images"][:PARITY_NORMAL_IMAGES]]
    per_image = run_dir / "categories" / category / "per_image.jsonl"
    if per_image.is_file():
        records = [json.loads(line) for line in per_image.read_text(encoding="utf-8").splitlines() if line]
        records.sort(key=lambda record: -record["truth"])
        samples += [Sample(Path(r["path"]), r["truth"], r["defect_type"], None) for r in records[:PARITY_TEST_IMAGES]]
    return samples


def build_manifest(
    name: str, version: str, config: WorkbenchConfig, report: dict, parity: dict, files: dict,
    precision: str = "fp32",
) -> dict:
    contract = input_contract(config)
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "created_utc": utc_now(),
        "pyimgano_version": __version__,
        "model": model_block(config, report),
        "input": contract.to_json(),
        "outputs": {
            "score": SCORE_NAME,
            "map": MAP_NAME,
            "map_shape": [contract.height, contract.width],
            "units": report["model"].get("score_units", "raw nearest-neighbour patch distance; higher = more anomalous"),
        },
        "thresholds": report["thresholds"],
        "map_postprocess": {
            "in_graph": ["bilinear upsampling to the input size", "gaussian blur sigma 4 px"],
            # On the host after the graph (and after tiling), with statistics calibrated at training time.
            **(report["map_postprocess"] or {"config": None, "stats": None}),
        },
        "defects": config.defects.to_json(),
        "tiling": report["tiling"],
        "precision": precision,
        "onnx": {"file": "model.onnx", "opset": OPSET, "input": INPUT_NAME, "dynamic_batch": True},
        "parity": parity,
        "files": files,
    }


def export_bundle(
    run_dir: Path,
    out_dir: Path,
    category: str | None = None,
    version: str = "1",
    name: str | None = None,
    variant: Variant = Variant(),
    enforce_parity: bool = True,
    sign_key: Path | None = None,
) -> ExportResult:
    """`enforce_parity=False` records parity without refusing: for speed benchmarks on random weights,
    where an int8 graph's ranges mean nothing; the manifest says so (`parity.enforced`). `sign_key` (an
    Ed25519 private key, PKCS8 PEM) signs the bundle once written, before the archive is made."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir)
    if variant.precision not in PARITY_RTOLS:
        raise ExportError(f"precision {variant.precision!r} is not one of {list(PARITY_RTOLS)}")
    # Read before the export's minutes of work, so that a bad key fails first.
    signer = load_private_key(sign_key) if sign_key is not None else None
    try:
        config, category, report = load_run(run_dir, category)
    except RunError as exc:
        raise ExportError(str(exc)) from exc
    try:
        check_variant(variant, config)
    except VariantError as exc:
        raise ExportError(str(exc)) from exc
    family = config.model.name.removeprefix("vision_")
    parts = (family, report["model"].get("backbone"), category, variant.suffix())
    name = name or "-".join(part for part in parts if part)
    contract = input_contract(config)
    detector = load_detector(run_dir, config, report, torch.device("cpu"))
    if variant.bank_rows:
        try:
            report = reduce_bank(detector, report, variant.bank_rows)
        except VariantError as exc:
            raise ExportError(str(exc)) from exc
    reference = detector.graph()
    # int8 is a rewrite of the exported fp32 graph; fp16 is built in torch.
    exported = detector.graph("fp16") if variant.precision == "fp16" else reference

    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{name}-{version}"
    staging = out_dir / f".{final.name}.staging"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        onnx_path = staging / "model.onnx"
        export_graph(exported, contract.height, contract.width, onnx_path)
        # The run's held-out images come first among the parity images: int8 calibrates on them too.
        images = load_images(parity_samples(run_dir, category, report), contract)
        quantization = None
        if variant.precision == "int8":
            holdout_count = min(CALIBRATION_IMAGES, len(report["calibration_images"]))
            try:
                quantization = quantize_int8(onnx_path, INPUT_NAME, images[:holdout_count])
            except QuantizeError as exc:
                raise ExportError(f"int8: {exc}") from exc
            report["model"] = {**report["model"], "quantization": quantization}
        # A variant whose scores move gets thresholds of its own, calibrated once, on what the bundle ships.
        how = [f"with the {variant.bank_rows}-row bank"] if variant.bank_rows else []
        if quantization:
            report = recalibrate(OnnxScorer(onnx_path), config, report, ", ".join(how + ["with the int8 graph"]))
        elif variant.bank_rows:
            report = recalibrate(detector, config, report, ", ".join(how))
        if variant.false_reject_rate is not None:
            try:
                report = at_operating_point(report, variant.false_reject_rate)
            except ValueError as exc:
                raise ExportError(f"--target-false-reject-rate {variant.false_reject_rate}: {exc}") from exc
        # Against the fp32 torch model, at the bundle's image threshold.
        parity = measure_parity(reference, onnx_path, images, report["thresholds"]["image"]["value"])
        rtol = PARITY_RTOLS[variant.precision]
        parity.update(rtol=rtol, reference="torch fp32", enforced=enforce_parity)
        labels_required = variant.precision == "fp32"
        disagree = parity["max_rel_score_diff"] > rtol or (labels_required and not parity["labels_identical"])
        if disagree and enforce_parity:
            raise ParityError(
                f"ONNX ({variant.precision}) and torch disagree: max relative score difference "
                f"{parity['max_rel_score_diff']:.3g} (limit {rtol}), labels identical: {parity['labels_identical']}; "
                "no bundle written"
            )
        # infer_config.json repeats manifest fields; write it first so the manifest can checksum it.
        manifest = build_manifest(name, version, config, report, parity, files={}, precision=variant.precision)
        write_json(staging / "infer_config.json", infer_config(config, {category: report}))
        manifest["files"] = {
            path.name: file_entry(path) for path in sorted(staging.iterdir()) if path.name != MANIFEST_NAME
        }
        try:
            read_manifest(json.loads(json.dumps(manifest)))  # what the runtime checks at open, before anything ships
        except BundleError as exc:
            raise ExportError(f"the manifest this export wrote does not parse: {exc}") from exc
        write_json(staging / MANIFEST_NAME, manifest)
        if signer is not None:
            sign_bundle(staging, signer)
        move_into_place(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    archive = out_dir / f"{final.name}.zip"
    write_archive(final, archive)
    return ExportResult(bundle_dir=final, archive=archive, parity=parity, key_id=signer.key_id if signer else None)
