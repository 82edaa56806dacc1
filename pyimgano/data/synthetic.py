"""Synthetic defect dataset in MVTec AD folder layout.

`make demo` has to run end to end on a fresh machine with no external data, so
this module generates a small, deterministic stand-in for an MVTec AD category:
a woven-fabric texture whose normal images vary (thread phase, a few degrees
of orientation jitter, illumination gradient, fibre and sensor noise) and two
defect types drawn on top of it, ``scratch`` and ``spot``, with pixel masks.

The texture is statistically stationary on purpose: a patch-level
nearest-neighbour detector (PatchCore on ImageNet features) then finds every
normal test patch close to some training patch, while defect patches are not.

Layout written under ``root/<category>/``::

    train/good/000.png ...
    test/good/000.png ...
    test/scratch/000.png ...
    test/spot/000.png ...
    ground_truth/scratch/000_mask.png   (uint8, 255 = defect, 0 = normal)
    ground_truth/spot/000_mask.png

Usage::

    python -m pyimgano.data.synthetic --out DIR [--category NAME] [--size N]
        [--n-train N] [--seed N] [--overwrite]
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["SyntheticSpec", "generate_dataset", "main", "DEFECT_TYPES"]

DEFECT_TYPES: tuple[str, ...] = ("scratch", "spot")

# Sizes below are specified for a 256 px image and scaled linearly otherwise.
_REFERENCE_SIZE = 256
_MIN_IMAGE_SIZE = 32
# Defects are drawn on a finer grid and area-averaged down, which yields a
# coverage alpha: anti-aliased edges and a well-defined mask threshold.
_SUPERSAMPLE = 4
_MASK_ALPHA_THRESHOLD = 0.25
# Fabric colour (RGB gains on luminance); fixed so the tint is consistent.
_TINT_RGB = np.array([1.0, 0.88, 0.68], dtype=np.float32)
_WHITE_LEVEL = 235.0
# Independent RNG streams, so e.g. adding train images never changes test images.
_STREAM_IDS = {"train": 0, "test_good": 1, "scratch": 2, "spot": 3}
_GENERATED_SUBDIRS = ("train", "test", "ground_truth")


@dataclass(frozen=True)
class SyntheticSpec:
    category: str = "synthetic_texture"
    image_size: int = 256
    n_train: int = 60
    n_test_good: int = 15
    n_test_per_defect: int = 15
    seed: int = 0


def _validate(spec: SyntheticSpec) -> None:
    name = spec.category
    if not name or name in (".", "..") or "/" in name or "\\" in name or os.sep in name:
        # The category becomes a single folder name; anything else could write outside root.
        raise ValueError(f"category must be a plain folder name, got {name!r}")
    if spec.image_size < _MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {_MIN_IMAGE_SIZE}, got {spec.image_size}")
    for field in ("n_train", "n_test_good", "n_test_per_defect"):
        if getattr(spec, field) < 0:
            raise ValueError(f"{field} must be >= 0, got {getattr(spec, field)}")
    if spec.seed < 0:
        raise ValueError(f"seed must be >= 0, got {spec.seed}")


def _scale(size: int) -> float:
    return size / _REFERENCE_SIZE


def _margin(size: int) -> float:
    """Distance every defect keeps from the image border, in pixels."""
    return max(3.0, 0.06 * size)


def _image_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _STREAM_IDS[stream], index]))


# --------------------------------------------------------------------------- texture


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """One normal woven-fabric image, float32 RGB in [0, 255]."""
    s = _scale(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    theta = math.radians(rng.uniform(-3.0, 3.0))
    u = xx * math.cos(theta) + yy * math.sin(theta)
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    warp_pitch = 9.0 * s * rng.uniform(0.97, 1.03)
    weft_pitch = 7.0 * s * rng.uniform(0.97, 1.03)
    phase_u, phase_v = rng.uniform(0.0, 2.0 * math.pi, size=2)
    warp = np.cos(2.0 * math.pi * u / warp_pitch + phase_u)
    weft = np.cos(2.0 * math.pi * v / weft_pitch + phase_v)
    # The product term makes the crossings bulge like interlaced threads
    # rather than two independent stripe sets.
    lum = 0.62 + 0.07 * warp + 0.045 * weft + 0.03 * warp * weft

    # Fibres: noise smeared along the weft so threads look hairy, not synthetic.
    fibres = cv2.GaussianBlur(
        rng.standard_normal((size, size)).astype(np.float32),
        ksize=(0, 0),
        sigmaX=5.0 * s,
        sigmaY=0.6 * s,
    )
    fibres /= float(fibres.std()) + 1e-6
    lum += 0.03 * fibres

    # Uneven lighting is the main image-level nuisance the detector must ignore.
    ramp_angle = rng.uniform(0.0, 2.0 * math.pi)
    ramp = ((xx - size / 2) * math.cos(ramp_angle) + (yy - size / 2) * math.sin(ramp_angle)) / size
    lum *= (1.0 + rng.uniform(0.04, 0.10) * ramp) * rng.uniform(0.97, 1.03)

    rgb = lum[..., None] * (_TINT_RGB * _WHITE_LEVEL)
    rgb += rng.normal(0.0, 2.5, size=rgb.shape).astype(np.float32)
    return rgb.astype(np.float32)


# --------------------------------------------------------------------------- defects


def _coverage(size: int, draw: Callable[[np.ndarray], None]) -> np.ndarray:
    """Anti-aliased alpha in [0, 1] of whatever `draw` paints on a supersampled canvas."""
    canvas = np.zeros((size * _SUPERSAMPLE, size * _SUPERSAMPLE), dtype=np.uint8)
    draw(canvas)
    alpha = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    return alpha.astype(np.float32) / 255.0


def _to_canvas(points: np.ndarray) -> np.ndarray:
    """Image-pixel coordinates -> int32 supersampled canvas coordinates (pixel centres aligned)."""
    return np.rint((points + 0.5) * _SUPERSAMPLE - 0.5).astype(np.int32)


def _place(rng: np.random.Generator, points: np.ndarray, reach: float, size: int) -> np.ndarray:
    """Translate a centred shape to a random spot where it stays `margin` inside the image."""
    lo_bound = _margin(size) + reach
    hi_bound = size - 1 - _margin(size) - reach
    lo = lo_bound - points.min(axis=0)
    hi = hi_bound - points.max(axis=0)
    if np.any(hi < lo):
        raise ValueError(f"defect does not fit in a {size} px image")
    return points + rng.uniform(lo, hi)


def _scratch_alpha(rng: np.random.Generator, size: int) -> np.ndarray:
    s = _scale(size)
    length = rng.uniform(0.20, 0.45) * size
    thickness = max(1.5, rng.uniform(2.0, 4.0) * s)
    angle = rng.uniform(0.0, math.pi)
    direction = np.array([math.cos(angle), math.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    # Quadratic Bezier: a zero bend is a straight scratch, larger bends a curved one.
    bend = 0.0 if rng.random() < 0.35 else rng.uniform(-0.25, 0.25) * length
    p0, p2 = -0.5 * length * direction, 0.5 * length * direction
    p1 = bend * normal
    t = np.linspace(0.0, 1.0, max(16, int(length)))[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    curve = _place(rng, curve, reach=thickness / 2 + 1.0, size=size)
    pts = _to_canvas(curve)
    width = max(1, int(round(thickness * _SUPERSAMPLE)))

    def draw(canvas: np.ndarray) -> None:
        cv2.polylines(canvas, [pts.reshape(-1, 1, 2)], False, 255, thickness=width, lineType=cv2.LINE_AA)

    return _coverage(size, draw) * rng.uniform(0.9, 1.0)


def _spot_alpha(rng: np.random.Generator, size: int) -> np.ndarray:
    s = _scale(size)
    radius = max(3.0, rng.uniform(5.0, 15.0) * s)
    semi_minor = radius * rng.uniform(0.6, 1.0)
    angle = rng.uniform(0.0, math.pi)
    phi = np.linspace(0.0, 2.0 * math.pi, 72, endpoint=False)
    # Low harmonics on the radius make the ellipse irregular, like a real stain.
    wobble = np.ones_like(phi)
    for k in (2, 3, 5):
        wobble += rng.uniform(-0.10, 0.10) * np.cos(k * phi + rng.uniform(0.0, 2.0 * math.pi))
    local = np.stack([radius * wobble * np.cos(phi), semi_minor * wobble * np.sin(phi)], axis=1)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    outline = _place(rng, local @ rot.T, reach=2.0, size=size)
    pts = _to_canvas(outline)

    def draw(canvas: np.ndarray) -> None:
        cv2.fillPoly(canvas, [pts.reshape(-1, 1, 2)], 255, lineType=cv2.LINE_AA)

    alpha = _coverage(size, draw)
    # A slightly soft rim reads as a stain soaked into the fabric rather than a sticker.
    alpha = cv2.GaussianBlur(alpha, ksize=(0, 0), sigmaX=0.8 * max(s, 0.5))
    return alpha * rng.uniform(0.9, 1.0)


def _scratch_colour(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    if rng.random() < 0.5:
        return image * rng.uniform(0.30, 0.45)  # groove in shadow
    bright = np.array([240.0, 237.0, 228.0], dtype=np.float32)
    return 0.3 * image + 0.7 * bright  # frayed, light-catching fibres


def _spot_colour(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    palettes = np.array(
        [[70.0, 55.0, 42.0], [165.0, 58.0, 22.0], [238.0, 234.0, 222.0]],  # oil, rust, bleach
        dtype=np.float32,
    )
    stain = palettes[rng.integers(len(palettes))] * rng.uniform(0.92, 1.08, size=3).astype(np.float32)
    # Keep a little of the weave visible through the stain.
    return 0.2 * image + 0.8 * stain


_AlphaFn = Callable[[np.random.Generator, int], np.ndarray]
_ColourFn = Callable[[np.random.Generator, np.ndarray], np.ndarray]
_DEFECTS: dict[str, tuple[_AlphaFn, _ColourFn]] = {
    "scratch": (_scratch_alpha, _scratch_colour),
    "spot": (_spot_alpha, _spot_colour),
}


def _defect_image(rng: np.random.Generator, size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A normal texture with one or two defects of `kind`; returns (RGB float image, uint8 mask)."""
    alpha_fn, colour_fn = _DEFECTS[kind]
    image = _texture(rng, size)
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(1, 3))):
        alpha = alpha_fn(rng, size)
        target = colour_fn(rng, image)
        image = image * (1.0 - alpha[..., None]) + target * alpha[..., None]
        mask |= alpha > _MASK_ALPHA_THRESHOLD
    if not mask.any():
        raise RuntimeError(f"{kind} defect produced an empty mask at image_size={size}")
    return image, mask.astype(np.uint8) * 255


# --------------------------------------------------------------------------- writing


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _write_png(path: pathlib.Path, array: np.ndarray) -> None:
    # imencode + write_bytes instead of imwrite: works for non-ASCII paths and fails loudly.
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    path.write_bytes(buf.tobytes())


def _write_rgb(path: pathlib.Path, rgb: np.ndarray) -> None:
    _write_png(path, cv2.cvtColor(_to_uint8(rgb), cv2.COLOR_RGB2BGR))


def _stem(index: int, count: int) -> str:
    return f"{index:0{max(3, len(str(max(count - 1, 0))))}d}"


def _prepare_category_dir(category_dir: pathlib.Path, overwrite: bool) -> None:
    if category_dir.exists() and not category_dir.is_dir():
        raise FileExistsError(f"{category_dir} exists and is not a directory")
    if category_dir.is_dir() and any(category_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{category_dir} is not empty; pass overwrite=True to replace it")
        # Only our own subtrees go, so stale images from a larger previous run
        # cannot leak into the new dataset, while unrelated files are left alone.
        for name in _GENERATED_SUBDIRS:
            target = category_dir / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    category_dir.mkdir(parents=True, exist_ok=True)


def generate_dataset(
    root: str | os.PathLike[str],
    spec: SyntheticSpec = SyntheticSpec(),
    *,
    overwrite: bool = False,
) -> pathlib.Path:
    """Writes the dataset, returns root/<category>.

    Deterministic for a given spec (byte-identical PNGs). Refuses
    (FileExistsError naming the path) to write into a non-empty category
    folder unless overwrite=True, in which case the train/, test/ and
    ground_truth/ subfolders are replaced.
    """
    _validate(spec)
    size = spec.image_size
    category_dir = pathlib.Path(root) / spec.category
    _prepare_category_dir(category_dir, overwrite)

    good_dirs = {"train": category_dir / "train" / "good", "test_good": category_dir / "test" / "good"}
    good_counts = {"train": spec.n_train, "test_good": spec.n_test_good}
    for stream, out_dir in good_dirs.items():
        out_dir.mkdir(parents=True, exist_ok=True)
        count = good_counts[stream]
        for i in range(count):
            image = _texture(_image_rng(spec.seed, stream, i), size)
            _write_rgb(out_dir / f"{_stem(i, count)}.png", image)

    count = spec.n_test_per_defect
    for kind in DEFECT_TYPES:
        image_dir = category_dir / "test" / kind
        mask_dir = category_dir / "ground_truth" / kind
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = _defect_image(_image_rng(spec.seed, kind, i), size, kind)
            _write_rgb(image_dir / f"{_stem(i, count)}.png", image)
            _write_png(mask_dir / f"{_stem(i, count)}_mask.png", mask)

    return category_dir


# --------------------------------------------------------------------------- CLI


def _build_parser() -> argparse.ArgumentParser:
    defaults = SyntheticSpec()
    parser = argparse.ArgumentParser(
        prog="python -m pyimgano.data.synthetic",
        description="Write a synthetic texture-defect dataset in MVTec AD layout.",
    )
    parser.add_argument("--out", required=True, help="root folder; the dataset goes to OUT/<category>")
    parser.add_argument("--category", default=defaults.category)
    parser.add_argument("--size", type=int, default=defaults.image_size, help="image side in pixels")
    parser.add_argument("--n-train", type=int, default=defaults.n_train)
    parser.add_argument("--n-test-good", type=int, default=defaults.n_test_good)
    parser.add_argument("--n-test-per-defect", type=int, default=defaults.n_test_per_defect)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty category folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    spec = SyntheticSpec(
        category=args.category,
        image_size=args.size,
        n_train=args.n_train,
        n_test_good=args.n_test_good,
        n_test_per_defect=args.n_test_per_defect,
        seed=args.seed,
    )
    print(generate_dataset(args.out, spec, overwrite=args.overwrite))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
