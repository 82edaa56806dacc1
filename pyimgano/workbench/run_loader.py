"""A fitted model and its scoring context loaded back from a run directory: for the exporter, and for
server-side inference (`pyimgano-infer --from-run`), where it scores exactly as the edge engine does
from a bundle."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pyimgano.config import WorkbenchConfig, input_contract, parse_config
from pyimgano.models.registry import get_model
from pyimgano.runtime import strict
from pyimgano.runtime.context import ScoringContext
from pyimgano.runtime.manifest import MapPostprocess, ModelDescription, Thresholds
from pyimgano.runtime.scoring import MapSteps
from pyimgano.runtime.tiling import TilingConfig
from pyimgano.workbench import artifacts, checkpoint
from pyimgano.workbench.devices import resolve_device
from pyimgano.workbench.run_directory import TOP_REPORT, verify


class RunError(Exception):
    """The run directory is missing what is needed, or the category is ambiguous."""


def read_json(path: Path) -> dict:
    """A run file's JSON, or a RunError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RunError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: not valid JSON ({exc})") from exc


def load_run(run_dir: Path, category: str | None) -> tuple[WorkbenchConfig, str, dict]:
    """The run's config, the category to use and its report, once the files a reader of that category uses
    (config, report, checkpoint, per-image records) are shown to be the ones this run wrote."""
    top = read_json(run_dir / TOP_REPORT)
    categories = sorted(top.get("categories") or {})
    if category is None:
        if len(categories) != 1:
            raise RunError(
                f"run {run_dir} holds categories {categories}: pass --category (pyimgano-export) "
                "or --from-run-category (pyimgano-infer)"
            )
        category = categories[0]
    if category not in categories:
        raise RunError(f"category {category!r} is not in run {run_dir} (it holds {categories})")
    report_name = f"categories/{category}/report.json"
    verify(run_dir, top.get("files"), ["config.json", report_name])
    report = read_json(run_dir / report_name)
    checkpoint_name = report.get("checkpoint")
    if not isinstance(checkpoint_name, str):
        raise RunError(f"{run_dir / report_name}: no checkpoint recorded")
    used = [checkpoint_name, str(Path(checkpoint_name).with_suffix(".json"))]
    if report.get("per_image_jsonl"):
        used.append(f"categories/{category}/{report['per_image_jsonl']}")
    verify(run_dir, top["files"], used)
    return parse_config(read_json(run_dir / "config.json")), category, report


def load_detector(run_dir: Path, config: WorkbenchConfig, report: dict, device: torch.device):
    detector = get_model(config.model.name).build(config.model, input_contract(config), config.seed, device)
    return checkpoint.load_into(detector, run_dir / report["checkpoint"])


def model_block(config: WorkbenchConfig, report: dict) -> dict:
    """A category's model description as the manifest's `model` block carries it (ModelDescription)."""
    return {"family": config.model.name.removeprefix("vision_"), "category": report["category"],
            "trained_utc": report["timestamp_utc"], **report["model"]}


def infer_config(config: WorkbenchConfig, reports: dict[str, dict]) -> dict:
    """infer_config.json, one schema whoever writes it: `pyimgano-train --export-infer-config` for every
    category of a run (artifacts/), the exporter for its bundle's one category. `pyimgano-infer
    --infer-config` reads its `defects` block as defaults."""
    return {
        **artifacts.report_header(),
        "input": input_contract(config).to_json(),
        "defects": config.defects.to_json(),
        "categories": {
            category: {
                "model": model_block(config, report),
                "threshold": report["thresholds"]["image"]["value"],
                "pixel_threshold": report["thresholds"]["pixel"]["value"],
                "tiling": report.get("tiling"),
                "map_postprocess": report["map_postprocess"],
                # run-relative; the bundle's graph holds the model instead
                "checkpoint": report["checkpoint"],
            }
            for category, report in reports.items()
        },
    }


def run_context(name: str, config: WorkbenchConfig, report: dict) -> ScoringContext:
    """The scoring context of one category of a run, parsed with the manifest's own records."""
    report_path = f"categories/{report.get('category')}/report.json"
    try:
        thresholds = strict.parse(Thresholds, report["thresholds"], "thresholds")
        post = strict.parse(MapPostprocess, report["map_postprocess"] or {"config": None, "stats": None},
                            "map_postprocess")
        tiling = strict.parse(TilingConfig, report["tiling"], "tiling") if report.get("tiling") else None
        model = ModelDescription.parse_json(model_block(config, report))
    except strict.SchemaError as exc:
        raise RunError(f"{report_path}: {exc}") from exc
    except KeyError as exc:
        raise RunError(f"{report_path}: missing key {exc}") from exc
    return ScoringContext(
        name=name,
        steps=MapSteps(input_contract(config), tiling, post.config, post.stats),
        thresholds=thresholds,
        defects=config.defects,
        model=model,
    )


def open_run(run_dir: Path, category: str | None = None, device: str = "auto"):
    """(the run's torch detector, its scoring context): what `pyimgano-infer --from-run` scores with."""
    run_dir = Path(run_dir)
    config, category, report = load_run(run_dir, category)
    detector = load_detector(run_dir, config, report, resolve_device(device))
    return detector, run_context(f"run:{run_dir}:{category}", config, report)
