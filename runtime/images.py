"""Decoding images and the input contract shared by training and the edge engine.

The workbench calls these same functions before its torch model, so the ONNX graph at the edge sees
exactly the pixels the model was fitted and calibrated on (the export parity check proves it).
"""

from __future__ import annotations

import glob
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})

_INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "nearest": cv2.INTER_NEAREST}


class ImageReadError(Exception):
    """An input that is not a readable image. Its message becomes the `error` of the record."""


@dataclass(frozen=True)
class InputContract:
    """What the scoring graph takes: a uint8 RGB batch, NHWC, already resized on the host.

    Normalisation (mean/std on [0, 1] values) happens inside the graph; it is recorded here so that
    an engineer reading the manifest knows the full transform.
    """

    height: int
    width: int
    resize_interpolation: str = "linear"
    channel_order: str = "RGB"
    layout: str = "NHWC"
    dtype: str = "uint8"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.resize_interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"resize_interpolation {self.resize_interpolation!r} is not one of {sorted(_INTERPOLATIONS)}"
            )

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "InputContract":
        fields = dict(data)
        fields["mean"] = tuple(fields["mean"])
        fields["std"] = tuple(fields["std"])
        return cls(**fields)


@dataclass(frozen=True)
class ImageLimits:
    """Bounds checked before an image is decoded, so that one hostile or broken file cannot take a run's
    memory: its size on disk, and its pixel count as its header states (PNG, JPEG, BMP; other formats are
    checked as decoded, under OpenCV's own bound of 2^30 pixels)."""

    max_bytes: int = 256 * 2**20
    # 100 megapixels: a 10k x 10k image, 300 MB decoded; line cameras of 2K-8K sides stay well inside.
    max_pixels: int = 100_000_000

    def check_pixels(self, height: int, width: int) -> None:
        if height * width > self.max_pixels:
            raise ImageReadError(f"{width}x{height} pixels exceeds the limit of {self.max_pixels:,} "
                                 "(--max-image-pixels)")


DEFAULT_LIMITS = ImageLimits()


def header_size(head: bytes) -> tuple[int, int] | None:
    """(height, width) as a PNG, BMP or JPEG header states it; None for other formats or a header cut short."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
    if head[:2] == b"BM" and len(head) >= 26:
        return abs(int.from_bytes(head[22:26], "little", signed=True)), int.from_bytes(head[18:22], "little", signed=True)
    if head[:2] == b"\xff\xd8":
        offset = 2
        while offset + 9 <= len(head):
            if head[offset] != 0xFF:
                return None
            marker = head[offset + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                offset += 2
                continue
            length = int.from_bytes(head[offset + 2 : offset + 4], "big")
            # Start-of-frame markers (baseline, progressive, ...), not DHT (C4), JPG (C8) or DAC (CC).
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                return int.from_bytes(head[offset + 5 : offset + 7], "big"), int.from_bytes(head[offset + 7 : offset + 9], "big")
            offset += 2 + length
    return None


def read_rgb(path: str | os.PathLike, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Reads any 8- or 16-bit grayscale, RGB or RGBA image file as uint8 HxWx3 RGB, within `limits`."""
    try:
        size = os.stat(path).st_size
        if size > limits.max_bytes:
            raise ImageReadError(f"file of {size:,} bytes exceeds the limit of {limits.max_bytes:,} (--max-image-bytes)")
        data = np.fromfile(os.fspath(path), dtype=np.uint8)
    except OSError as exc:  # missing file, a directory, no permission
        raise ImageReadError(f"cannot read file: {exc.strerror or exc}") from exc
    if data.size == 0:
        raise ImageReadError("file is empty")
    return decode_rgb(data, limits)


def decode_rgb(data: np.ndarray | bytes, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decodes an encoded image (a file's bytes: PNG, JPEG, BMP, ...) as uint8 HxWx3 RGB, within `limits`:
    what `read_rgb` does after reading the file, for images that arrive as bytes (pyimgano-serve).

    Grayscale is replicated to three channels because the backbones are ImageNet RGB networks.
    """
    data = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if data.size > limits.max_bytes:
        raise ImageReadError(f"image of {data.size:,} bytes exceeds the limit of {limits.max_bytes:,} (--max-image-bytes)")
    if data.size == 0:
        raise ImageReadError("image is empty (0 bytes)")
    # The header is in the data already; the JPEG frame header can follow a large EXIF block.
    stated = header_size(data[: 2**20].tobytes())
    if stated is not None:
        limits.check_pixels(*stated)
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # e.g. OpenCV's own pixel bound
        raise ImageReadError(f"not decodable: {str(exc).strip().splitlines()[-1]}") from exc
    if image is None:
        raise ImageReadError("not a decodable image (OpenCV could not decode it)")
    limits.check_pixels(*image.shape[:2])
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageReadError(f"unsupported pixel type {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    raise ImageReadError(f"unsupported channel count {image.shape[2]}")


def to_contract(image: np.ndarray, contract: InputContract) -> np.ndarray:
    """Resizes an RGB uint8 image to the contract's size (a no-op when it already fits)."""
    if image.shape[:2] == (contract.height, contract.width):
        return np.ascontiguousarray(image)
    return cv2.resize(
        image, (contract.width, contract.height), interpolation=_INTERPOLATIONS[contract.resize_interpolation]
    )


def read_mask(path: str | os.PathLike, height: int, width: int) -> np.ndarray:
    """Reads a ground-truth mask (any non-zero value in any channel = defect) as bool HxW at the given size."""
    try:
        data = np.fromfile(os.fspath(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"cannot read mask {path}: {exc.strerror or exc}") from exc
    # IMREAD_UNCHANGED keeps 16-bit labels and colour values exact; a grayscale conversion could round them to 0.
    mask = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if mask is None:
        raise ImageReadError(f"mask {path} is empty or not a decodable image")
    defect = (mask > 0) if mask.ndim == 2 else (mask > 0).any(axis=2)
    if defect.shape != (height, width):
        defect = cv2.resize(defect.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
    return defect


def expand_inputs(spec: str) -> list[Path]:
    """A file, a folder (its images, recursively, sorted) or a glob pattern, as a sorted list of paths.

    A single named file is kept whatever its suffix, so that a non-image gets an error record rather
    than vanishing silently; folders and globs keep only image suffixes.
    """
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    matches = [Path(p) for p in glob.glob(spec, recursive=True)]
    return sorted(p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
