"""Builtin recipes: named workbench loops, each with config defaults applied under the user's config.

A recipe's defaults fill only what the config leaves out (a deep merge where the user's keys win), so
`industrial-adapt-highres` tiles unless the config sets its own tiling.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from pyimgano.config import ConfigError
from pyimgano.runtime.strict import nearest_key


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    defaults: dict = field(default_factory=dict)
    # "placeholder" recipes validate nothing and exit with ExitCode.RECIPE_PLACEHOLDER, saying what to do instead.
    placeholder: bool = False


FP40_DEFECTS = {
    "enabled": True,
    "pixel_threshold_strategy": "calibrated",
    "roi_xyxy_norm": [0.02, 0.02, 0.98, 0.98],
    "border_ignore_px": 4,
    "open_ksize": 3,
    "close_ksize": 5,
    "fill_holes": True,
    "min_area": 32,
    "max_regions": 10,
    "region_sort": "score_max",
}

# Every recipe's defect defaults: each region refined to the pixels at least halfway from the pixel
# threshold to its own peak (benchmarks/decisions.py: on PIPED, median mask area 1.6x the true one, mean
# IoU 0.39, against 5.0x and 0.19 unrefined).
DEFECTS = {"region_peak_fraction": 0.5}
FP40_DEFECTS = {**FP40_DEFECTS, **DEFECTS}

RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            "industrial-adapt",
            "Adaptation-first loop: load split, build detector, (tile), fit on normal images, calibrate "
            "image and pixel thresholds on out-of-fold scores of every normal image, evaluate, write artifacts.",
            {"model": {"name": "vision_patchcore"}, "defects": DEFECTS},
        ),
        Recipe(
            "industrial-adapt-highres",
            "industrial-adapt for 2K/4K images: 512-pixel tiles at stride 384 blended with a Hann window, "
            "percentile normalisation and a light blur of the maps, maps saved.",
            {
                "model": {"name": "vision_patchcore"},
                "defects": DEFECTS,
                "adaptation": {
                    "save_maps": True,
                    "tiling": {"tile_size": 512, "stride": 384, "map_reduce": "hann", "score_reduce": "max"},
                    "postprocess": {"normalize": True, "normalize_method": "percentile",
                                    "percentile_range": [1.0, 99.0], "gaussian_sigma": 1.0},
                },
            },
        ),
        Recipe(
            "industrial-adapt-fp40",
            "industrial-adapt with defect extraction enabled and false-positive-reduction defaults "
            "(ROI, border, morphology, hole filling, min area, max regions); maps saved.",
            {"model": {"name": "vision_patchcore"}, "adaptation": {"save_maps": True}, "defects": FP40_DEFECTS},
        ),
        Recipe(
            "micro-finetune-autoencoder",
            "Trains a small convolutional autoencoder (training.epochs, training.lr), writes "
            "checkpoints/<category>/<checkpoint_name> and a workbench report.",
            {"model": {"name": "vision_autoencoder"}, "training": {"enabled": True, "epochs": 5, "lr": 0.001},
             "defects": DEFECTS},
        ),
        Recipe(
            "anomalib-train",
            "Placeholder: anomalib's Engine is not driven from here. Train in anomalib, then import its "
            "PatchCore or PaDiM checkpoint with recipe industrial-adapt, model.name vision_anomalib_checkpoint "
            "and model.checkpoint_path (docs/MODELS.md), or fit through anomalib's torch models with "
            "vision_patchcore_anomalib / vision_padim_anomalib.",
            placeholder=True,
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"recipe: {name!r} is not a builtin recipe; did you mean {nearest_key(name, RECIPES)!r}? (--list-recipes)")
    return RECIPES[name]


def merge_under(defaults: dict, user: dict) -> dict:
    """Deep merge: every key of `user` wins; `defaults` fills only what `user` leaves out."""
    merged = copy.deepcopy(defaults)
    for key, value in user.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_under(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
