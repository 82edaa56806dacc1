"""Tiled inference arithmetic for high-resolution images (2K/4K): where tiles go, and how their
maps and scores recombine. Model-agnostic: the caller runs whatever model on the tiles.

Downscaling a 4K image to a 256-pixel model input would shrink a 10-pixel scratch below one model
pixel; tiling keeps the native resolution at the cost of more forward passes.
Pure numpy/OpenCV so the workbench and the edge compute the same thing with the same code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

SCORE_REDUCE = ("max", "mean", "topk_mean")
MAP_REDUCE = ("max", "mean", "hann")

_MIN_TILE = 32


@dataclass(frozen=True)
class TilingConfig:
    """The seed's `tiling` block. Sizes in original image pixels; stride < tile_size means overlap."""

    tile_size: int
    stride: int
    score_reduce: str = "max"
    score_topk: float = 0.1
    map_reduce: str = "hann"

    def __post_init__(self) -> None:
        for name in ("tile_size", "stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if self.tile_size < _MIN_TILE:
            raise ValueError(f"tile_size must be >= {_MIN_TILE}, got {self.tile_size}")
        if not 0 < self.stride <= self.tile_size:
            # A stride above the tile size would leave strips of the image that no tile sees.
            raise ValueError(f"stride must satisfy 0 < stride <= tile_size ({self.tile_size}), got {self.stride}")
        if self.score_reduce not in SCORE_REDUCE:
            raise ValueError(f"score_reduce {self.score_reduce!r} is not one of {list(SCORE_REDUCE)}")
        if not 0.0 < self.score_topk <= 1.0:
            raise ValueError(f"score_topk must satisfy 0 < score_topk <= 1, got {self.score_topk}")
        if self.map_reduce not in MAP_REDUCE:
            raise ValueError(f"map_reduce {self.map_reduce!r} is not one of {list(MAP_REDUCE)}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "TilingConfig":
        return cls(**data)


def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets 0, stride, 2*stride, ... covering [0, length), the last one flush with the end.

    Flush rather than overhanging, so every tile except on an image smaller than the tile holds only
    real pixels; the last step is then shorter than `stride` (more overlap), never longer.
    """
    if length < 1 or tile < 1:
        raise ValueError(f"length and tile must be >= 1, got length={length}, tile={tile}")
    if not 0 < stride <= tile:
        raise ValueError(f"stride must satisfy 0 < stride <= tile ({tile}), got {stride}")
    if length <= tile:
        return [0]
    last = length - tile
    return list(range(0, last, stride)) + [last]


@dataclass(frozen=True)
class TileGrid:
    """Tile boxes (y0, x0, y1, x1), y1/x1 exclusive, in image pixels and clipped to the image, row-major."""

    image_hw: tuple[int, int]
    tile_size: int
    boxes: list[tuple[int, int, int, int]]


# Model inputs one image may be cut into: a 4K image at 512/384 is 70, so this leaves room; tile 32 /
# stride 1 on a 512x512 image (231,361 tiles, 3.6 GB) is far outside it.
MAX_TILES_PER_IMAGE = 4096


def tile_count(image_hw: tuple[int, int], config: TilingConfig) -> int:
    height, width = (int(v) for v in image_hw)
    return len(tile_origins(height, config.tile_size, config.stride)) * len(tile_origins(width, config.tile_size, config.stride))


def too_many_tiles(image_hw: tuple[int, int], config: TilingConfig | None) -> str | None:
    """Why `config` cannot score an image of this size (more than MAX_TILES_PER_IMAGE tiles), or None."""
    if config is None:
        return None
    tiles = tile_count(image_hw, config)
    if tiles <= MAX_TILES_PER_IMAGE:
        return None
    return (f"tiling {config.tile_size}/{config.stride} cuts this {int(image_hw[1])}x{int(image_hw[0])} image into "
            f"{tiles:,} tiles, more than {MAX_TILES_PER_IMAGE:,}")


def make_grid(image_hw: tuple[int, int], config: TilingConfig) -> TileGrid:
    height, width = (int(v) for v in image_hw)
    if height < 1 or width < 1:
        raise ValueError(f"image_hw must be positive, got {image_hw!r}")
    tile = config.tile_size
    ys = tile_origins(height, tile, config.stride)
    xs = tile_origins(width, tile, config.stride)
    boxes = [(y0, x0, min(y0 + tile, height), min(x0 + tile, width)) for y0 in ys for x0 in xs]
    return TileGrid(image_hw=(height, width), tile_size=tile, boxes=boxes)


def cut_tiles(image: np.ndarray, grid: TileGrid) -> np.ndarray:
    """The tiles of an (H, W, C) image as [T, tile, tile, C], exact pixels, no resizing.

    Where the image is smaller than the tile, it is padded at the bottom/right (BORDER_REFLECT_101,
    which repeats no edge pixel and so adds no artificial flat band) so the model always gets its
    full tile; blend_maps crops that padding back off, so it never reaches the output map.
    """
    if image.ndim != 3 or tuple(image.shape[:2]) != tuple(grid.image_hw):
        raise ValueError(f"image must be (H, W, C) with (H, W) = {grid.image_hw}, got shape {image.shape}")
    height, width = grid.image_hw
    tile = grid.tile_size
    pad_bottom, pad_right = max(0, tile - height), max(0, tile - width)
    if pad_bottom or pad_right:
        image = cv2.copyMakeBorder(image, 0, pad_bottom, 0, pad_right, cv2.BORDER_REFLECT_101)
        if image.ndim == 2:  # OpenCV drops a trailing axis of length 1
            image = image[:, :, None]
    tiles = np.empty((len(grid.boxes), tile, tile, image.shape[2]), dtype=image.dtype)
    for index, (y0, x0, _, _) in enumerate(grid.boxes):
        tiles[index] = image[y0 : y0 + tile, x0 : x0 + tile]
    return tiles


def hann_window(size: int) -> np.ndarray:
    """2-D separable Hann window, float64 (size, size).

    np.hanning(size + 2)[1:-1] drops the two zero end points: edge weights are small but non-zero,
    so an image corner seen by a single tile still has a weight to divide by.
    """
    window = np.hanning(size + 2)[1:-1]
    return np.outer(window, window)


def blend_maps(tile_maps: np.ndarray, grid: TileGrid, config: TilingConfig) -> np.ndarray:
    """Per-tile maps [T, h, w] at model resolution -> one (H, W) float32 map in image pixels.

    Each map is resized (bilinear) to tile_size x tile_size, cropped to its box (dropping any
    padding cut_tiles added), then overlapping pixels are combined by max, mean or a Hann-weighted
    mean. The Hann weights fade each tile out towards its border, where a CNN's maps are least
    reliable (padding effects), so seams between tiles do not show.
    """
    tile_maps = np.asarray(tile_maps)
    if tile_maps.ndim != 3 or tile_maps.shape[0] != len(grid.boxes):
        raise ValueError(f"tile_maps must be [{len(grid.boxes)}, h, w] for this grid, got shape {tile_maps.shape}")
    height, width = grid.image_hw
    tile = grid.tile_size
    reduce = config.map_reduce
    # float64 accumulators: summing many float32 tiles would otherwise lose low bits at the seams.
    if reduce == "max":
        total = np.full((height, width), -np.inf, dtype=np.float64)
    else:
        total = np.zeros((height, width), dtype=np.float64)
        weight_sum = np.zeros((height, width), dtype=np.float64)
    full_weight = hann_window(tile) if reduce == "hann" else None
    for tile_map, (y0, x0, y1, x1) in zip(tile_maps, grid.boxes):
        tile_map = np.asarray(tile_map, dtype=np.float32)
        if tile_map.shape != (tile, tile):
            tile_map = cv2.resize(tile_map, (tile, tile), interpolation=cv2.INTER_LINEAR)
        values = tile_map[: y1 - y0, : x1 - x0]
        region = (slice(y0, y1), slice(x0, x1))
        if reduce == "max":
            np.maximum(total[region], values, out=total[region])
        elif reduce == "mean":
            total[region] += values
            weight_sum[region] += 1.0
        else:
            weight = full_weight[: y1 - y0, : x1 - x0]
            total[region] += weight * values
            weight_sum[region] += weight
    if reduce != "max":
        total /= weight_sum
    return total.astype(np.float32)


def reduce_scores(tile_scores: np.ndarray, config: TilingConfig) -> float:
    """One image score from the tile scores: max, mean, or mean of the top ceil(score_topk * T)."""
    scores = np.asarray(tile_scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("tile_scores is empty")
    if config.score_reduce == "max":
        return float(scores.max())
    if config.score_reduce == "mean":
        return float(scores.mean())
    # Rounded first so that 0.07 * 100 = 7.000000000000001 takes the top 7, not 8.
    count = min(scores.size, max(1, math.ceil(round(config.score_topk * scores.size, 9))))
    return float(np.sort(scores)[-count:].mean())
