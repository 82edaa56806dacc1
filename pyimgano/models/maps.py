"""Patch-score grid -> anomaly map, as every model's graph ends: bilinear upsampling to the input size
and a Gaussian blur, written in ops that export to ONNX (a separable blur as two convolutions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The PatchCore paper smooths the upsampled map with a Gaussian of sigma 4 pixels; every model here does.
MAP_SIGMA = 4.0


def gaussian_kernel_1d(sigma: float) -> torch.Tensor:
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


def upsample_and_smooth(grid: torch.Tensor, input_hw: tuple[int, int], blur: torch.Tensor) -> torch.Tensor:
    """[B, 1, h, w] -> [B, H, W]: bilinear upsampling (half-pixel centres) then a separable Gaussian,
    mirrored borders."""
    maps = grid
    if tuple(grid.shape[2:]) != tuple(input_hw):
        maps = F.interpolate(grid, size=input_hw, mode="bilinear", align_corners=False)
    radius = (blur.shape[0] - 1) // 2
    maps = F.pad(maps, (radius, radius, radius, radius), mode="reflect")
    maps = F.conv2d(maps, blur.view(1, 1, -1, 1))
    maps = F.conv2d(maps, blur.view(1, 1, 1, -1))
    return maps[:, 0]
