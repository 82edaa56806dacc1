"""A fitted model loaded back from a run directory: for the exporter, and for server-side inference
(`pyimgano-infer --from-run`), where it scores exactly as the edge engine does from a bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pyimgano.config import WorkbenchConfig, parse_config
from pyimgano.models.registry import get_model
from pyimgano.runtime.postprocess import NormalizationStats, PostprocessConfig
from pyimgano.runtime.tiling import TilingConfig
from pyimgano.workbench import checkpoint
from pyimgano.workbench.run import input_contract, resolve_device


class RunError(Exception):
    """The run directory is missing what is needed, or the category is ambiguous."""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RunError(f"cannot read {path}: {exc.strerror or exc}") from exc


def load_run(run_dir: Path, category: str | None) -> tuple[WorkbenchConfig, str, dict]:
    """The run's config, the category to use and its report."""
    config = parse_config(_read_json(run_dir / "config.json"))
    categories = sorted(_read_json(run_dir / "report.json")["categories"])
    if category is None:
        if len(categories) != 1:
            raise RunError(
                f"run {run_dir} holds categories {categories}: pass --category (pyimgano-export) "
                "or --from-run-category (pyimgano-infer)"
            )
        category = categories[0]
    if category not in categories:
        raise RunError(f"category {category!r} is not in run {run_dir} (it holds {categories})")
    return config, category, _read_json(run_dir / "categories" / category / "report.json")


def load_detector(run_dir: Path, config: WorkbenchConfig, report: dict, device: torch.device):
    detector = get_model(config.model.name).build(config.model, input_contract(config), config.seed, device)
    return checkpoint.load_into(detector, run_dir / report["checkpoint"])


class RunSource:
    """The ScoringSource (runtime.inference) of a run's torch model, thresholds and map post-processing."""

    def __init__(self, run_dir: Path, category: str | None = None, device: str = "auto"):
        run_dir = Path(run_dir)
        config, category, report = load_run(run_dir, category)
        torch_device = resolve_device(device)
        self.detector = load_detector(run_dir, config, report, torch_device)
        self.name = f"run:{run_dir}:{category}"
        self.device = torch_device.type
        self.contract = input_contract(config)
        self.tiling = TilingConfig.from_json(report["tiling"]) if report.get("tiling") else None
        post = report.get("map_postprocess") or {}
        self.postprocess = PostprocessConfig.from_json(post["config"]) if post.get("config") else None
        self.normalization = NormalizationStats.from_json(post["stats"]) if post.get("stats") else None
        self.image_threshold = report["thresholds"]["image"]["value"]
        self.pixel_threshold = report["thresholds"]["pixel"]["value"]
        self.normal_pixel_quantiles = report["thresholds"].get("normal_pixel_quantiles")
        self.defects_defaults = config.defects.to_json()

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.detector.predict_maps(batch)
