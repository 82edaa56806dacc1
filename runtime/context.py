"""The scoring context: everything scoring and deciding need, typed, built once per bundle (from its
manifest) or once per workbench run (from its report). Every consumer reads this record; none re-derives
thresholds, the input contract or post-processing from raw JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pyimgano.runtime.defects import DefectsConfig, threshold_from_normal_quantiles
from pyimgano.runtime.manifest import Manifest, ModelDescription, Thresholds
from pyimgano.runtime.scoring import MapSteps


class ContextError(ValueError):
    """The context cannot serve what was asked of it (e.g. a pixel strategy whose table it lacks)."""


def describe_tiling(tiling) -> str:
    if tiling is None:
        return "without tiling (whole images resized to the model input)"
    return f"with tiling tile_size {tiling.tile_size}, stride {tiling.stride}, map_reduce {tiling.map_reduce}"


@dataclass(frozen=True)
class ScoringContext:
    # Names the source in summaries: "NAME-VERSION" for a bundle, "run:DIR:CATEGORY" for a run.
    name: str
    steps: MapSteps
    thresholds: Thresholds
    # Defect-extraction defaults; `--defects` flags override single keys.
    defects: DefectsConfig
    model: ModelDescription

    @property
    def image_threshold(self) -> float:
        return self.thresholds.image.value

    @property
    def pixel_threshold(self) -> float:
        return self.thresholds.pixel.value

    def with_tiling(self, tiling, calibrated_only: bool = True) -> "ScoringContext":
        """The same context scoring with other tiling. Tiling changes every score and map, and the thresholds
        hold only for the tiling they were calibrated with: another one is refused unless `calibrated_only`
        is False (the caller then says the decisions are uncalibrated)."""
        if calibrated_only and tiling != self.steps.tiling:
            raise ContextError(f"{self.name}'s thresholds were calibrated {describe_tiling(self.steps.tiling)}; "
                               f"scoring {describe_tiling(tiling)} would judge every image against thresholds "
                               "that do not hold for it")
        return dataclasses.replace(self, steps=self.steps.with_tiling(tiling))

    def pixel_threshold_for(self, defects: DefectsConfig) -> float:
        """`fixed` uses the configured value; `calibrated` the threshold calibrated at training time;
        `normal_pixel_quantile` reads the normal-pixel table calibrated at training time."""
        if defects.pixel_threshold_strategy == "fixed":
            return float(defects.pixel_threshold)
        if defects.pixel_threshold_strategy == "calibrated":
            return self.pixel_threshold
        table = self.thresholds.normal_pixel_quantiles
        if table is None:
            raise ContextError("pixel_threshold_strategy normal_pixel_quantile needs the normal-pixel quantiles that "
                               "newer exports store; re-export the bundle")
        try:
            return threshold_from_normal_quantiles(table.to_json(), defects.pixel_normal_quantile)
        except ValueError as exc:  # a level outside the stored ones: nothing to interpolate between
            raise ContextError(f"pixel_normal_quantile {defects.pixel_normal_quantile}: {exc}") from exc

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> "ScoringContext":
        post = manifest.map_postprocess
        return cls(
            name=f"{manifest.name}-{manifest.version}",
            steps=MapSteps(manifest.input, manifest.tiling, post.config, post.stats),
            thresholds=manifest.thresholds,
            defects=manifest.defects,
            model=manifest.model,
        )
