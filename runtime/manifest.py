"""The bundle manifest as typed records, parsed whole and strictly when a bundle opens.

Every key is checked where it stands: an unknown or misspelt key anywhere is refused, naming its path and
the nearest valid key. Fields without a default are required; fields with one are optional, so a minor
format version may add an optional key and every older bundle of the same major version still opens.
The one free-form part is the model's own self-description (`model` beyond the keys typed here): the
runtime never acts on it, it is what the workbench's `describe()` said, kept for people.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from pyimgano.runtime import strict
from pyimgano.runtime.defects import DefectsConfig
from pyimgano.runtime.images import InputContract
from pyimgano.runtime.postprocess import NormalizationStats, PostprocessConfig
from pyimgano.runtime.tiling import TilingConfig

FORMAT_NAME = "pyimgano-bundle"
# A minor version adds optional keys only; a runtime reads every bundle of its major version up to its own
# minor, and refuses a newer minor (whose keys it could not check) by name.
# 1.0: the first format. 1.1: an image threshold's operating point (target_false_reject_rate,
# false_reject_rate, false_reject_rate_ci95, tail, warning).
FORMAT_VERSION = "1.1"
MANIFEST_NAME = "manifest.json"


class ManifestError(ValueError):
    """The manifest does not parse; the message names the key path."""


@dataclass(frozen=True)
class ScoreSummary:
    min: float
    max: float
    mean: float
    std: float
    p50: float
    p99: float


@dataclass(frozen=True)
class TailFit:
    """A generalized Pareto fit to the excesses of the highest normal scores over `threshold_u`."""

    distribution: str
    estimator: str
    threshold_u: float
    exceedances: int
    of: int
    shape: float
    scale: float


@dataclass(frozen=True)
class Threshold:
    """A calibrated threshold and where it came from (the run report carries the same record). An image
    threshold set at an operating point (1.1) says the target share of good parts it may reject, the share
    its normal scores show at it with the 95% interval, the tail fit it extrapolates (if any) and why."""

    value: float
    method: str
    quantile: float | None
    count: int
    score_summary: ScoreSummary
    source: str
    target_false_reject_rate: float | None = None
    false_reject_rate: float | None = None
    false_reject_rate_ci95: tuple[float, float] | None = None
    tail: TailFit | None = None
    warning: str | None = None

    def __post_init__(self) -> None:
        # NaN compares false with every score (every part passes); infinity passes or rejects all of them.
        if not math.isfinite(self.value):
            raise ValueError(f"value must be a finite number, got {self.value}")


@dataclass(frozen=True)
class NormalPixelQuantiles:
    """Quantiles of the calibration images' (post-processed) pixels, so deployment may choose another pixel
    quantile without refitting (defects strategy `normal_pixel_quantile`)."""

    q: tuple[float, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.q) != len(self.values) or not self.q:
            raise ValueError(f"normal_pixel_quantiles: q and values must be equal, non-empty lists "
                             f"(got {len(self.q)} and {len(self.values)})")
        if not all(math.isfinite(v) for v in (*self.q, *self.values)):
            raise ValueError("normal_pixel_quantiles: q and values must be finite numbers")
        # The table is read by interpolation between its levels (threshold_from_normal_quantiles).
        if not (0.0 <= self.q[0] and self.q[-1] <= 1.0 and all(a < b for a, b in zip(self.q, self.q[1:]))):
            raise ValueError(f"normal_pixel_quantiles: q must be strictly increasing levels in [0, 1], "
                             f"got {list(self.q)}")

    def to_json(self) -> dict:
        return {"q": list(self.q), "values": list(self.values)}


@dataclass(frozen=True)
class Thresholds:
    image: Threshold
    pixel: Threshold
    normal_pixel_quantiles: NormalPixelQuantiles | None = None


@dataclass(frozen=True)
class Outputs:
    score: str
    map: str
    map_shape: tuple[int, int]
    units: str


@dataclass(frozen=True)
class MapPostprocess:
    """Map post-processing: what the graph already did (`in_graph`, for people), and what the host does
    after the graph and after tiling, with statistics calibrated at training time."""

    config: PostprocessConfig | None
    stats: NormalizationStats | None
    in_graph: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Checked at open: post-processing would otherwise refuse every map, from the first image on.
        if self.config is not None and self.config.normalizes:
            if self.stats is None:
                raise ValueError(f"config normalizes maps ({self.config.normalize_method}) but stats is null")
            if self.stats.method != self.config.normalize_method:
                raise ValueError(f"stats.method {self.stats.method!r} does not match config.normalize_method "
                                 f"{self.config.normalize_method!r}")


@dataclass(frozen=True)
class OnnxInfo:
    file: str
    opset: int
    input: str
    dynamic_batch: bool


@dataclass(frozen=True)
class Parity:
    """torch-vs-ONNX agreement measured at export on held-out images."""

    images: int
    max_abs_score_diff: float
    max_rel_score_diff: float
    max_abs_map_diff: float
    max_map_diff_rel_to_map_max: float
    labels_identical: bool
    onnxruntime: str
    torch: str
    rtol: float | None = None
    reference: str | None = None
    enforced: bool = True


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class ModelDescription:
    """`family`, `category`, `name` and `trained_utc` are typed; `details` holds the rest of the model's
    self-description (backbone, bank size, quantization...), written flat beside them in the file."""

    family: str
    category: str
    name: str
    trained_utc: str
    details: dict = field(default_factory=dict)

    @property
    def backbone(self) -> str | None:
        return self.details.get("backbone")

    @classmethod
    def parse_json(cls, data: Any, path: str = "model") -> "ModelDescription":
        return strict.parse(cls, data, path, rest="details")

    def to_json(self) -> dict:
        return {"family": self.family, "category": self.category, "name": self.name,
                "trained_utc": self.trained_utc, **self.details}


@dataclass(frozen=True)
class Manifest:
    format: str
    format_version: str
    name: str
    version: str
    created_utc: str
    pyimgano_version: str
    model: ModelDescription
    input: InputContract
    outputs: Outputs
    thresholds: Thresholds
    map_postprocess: MapPostprocess
    defects: DefectsConfig
    tiling: TilingConfig | None
    precision: str
    onnx: OnnxInfo
    parity: Parity
    files: dict[str, FileEntry]


def _version(text: str, path: str) -> tuple[int, int]:
    try:
        major, minor = (int(part) for part in str(text).split("."))
    except ValueError:
        raise ManifestError(f"{path}: {text!r} is not MAJOR.MINOR") from None
    return major, minor


def check_format(data: dict) -> None:
    """The format name and version, before anything else: a newer format's keys cannot be judged."""
    if data.get("format") != FORMAT_NAME:
        raise ManifestError(f"format {data.get('format')!r} is not {FORMAT_NAME!r}")
    if "format_version" not in data:
        raise ManifestError("missing required key 'format_version'")
    theirs = _version(data["format_version"], "format_version")
    ours = _version(FORMAT_VERSION, "FORMAT_VERSION")
    if theirs[0] != ours[0] or theirs[1] > ours[1]:
        raise ManifestError(
            f"format_version {data['format_version']!r} is not supported by this runtime "
            f"(it reads {ours[0]}.0 to {FORMAT_VERSION})"
        )


def parse_manifest(data: Any) -> Manifest:
    """The whole manifest as typed records. Raises ManifestError naming the key path."""
    if not isinstance(data, dict):
        raise ManifestError("top level must be an object")
    check_format(data)
    try:
        manifest = strict.parse(Manifest, data)
    except strict.SchemaError as exc:
        raise ManifestError(str(exc)) from exc
    if not manifest.files:
        raise ManifestError("files: must list the bundle's files with sha256 and size")
    if manifest.onnx.file not in manifest.files:
        raise ManifestError(f"onnx.file {manifest.onnx.file!r} is not listed in 'files'")
    return manifest


def required_keys(cls: type) -> frozenset[str]:
    """The keys of a record that a file must have (fields without a default)."""
    return frozenset(f.name for f in dataclasses.fields(cls)
                     if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


def permitted_keys(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def manifest_to_json(manifest: Manifest) -> dict:
    """The manifest as the file holds it (tuples as lists, the model's description flat)."""
    data = {f.name: getattr(manifest, f.name) for f in dataclasses.fields(manifest)}
    data["model"] = manifest.model.to_json()
    return json.loads(json.dumps(data, default=_plain))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    raise TypeError(f"{type(value).__name__} is not JSON")
