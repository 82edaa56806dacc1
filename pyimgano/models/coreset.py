"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling), with a bfloat16 screen that
makes the per-round distance update cheap on CPUs with fast bfloat16 GEMMs.

`greedy_coreset(features, rows, seed)` returns the indices of `rows` rows; callers that think in a
ratio of the rows (PatchCore's `coreset_ratio`) convert with `rows_for_ratio`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from pyimgano.runtime.progress import Progress

# Coreset selection works on a random projection of this width (the paper's Johnson-Lindenstrauss step).
CORESET_PROJECTION_DIM = 128
# Batched greedy: at most this many centres per pass over all rows, about CORESET_ROUNDS_HINT passes in
# all, each chosen among CORESET_POOL_FACTOR x as many farthest candidates.
CORESET_MAX_PER_ROUND = 256
CORESET_ROUNDS_HINT = 100
CORESET_POOL_FACTOR = 4
CORESET_UPDATE_ROWS = 16384
# The bfloat16 screen (greedy_coreset): rows per GEMM (4,096 ran 16% faster per row than 16,384 here:
# the block stays in cache for the minimum), bfloat16's unit roundoff, the factor on its error bound
# (5% to spare), and how much faster than float32 its GEMM must measure to be used (1.7x on this
# machine's AVX512-BF16; a 1.5x bar was missed under load, and emulated bfloat16 is slower than float32).
CORESET_SCREEN_ROWS = 4096
BFLOAT16_UNIT_ROUNDOFF = 2.0**-8
CORESET_SCREEN_SAFETY = 1.05
CORESET_SCREEN_MIN_SPEEDUP = 1.2


def _sq_dist_to(points: torch.Tensor, points_sq: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Squared distances [N, C] from every point to each centre, one GEMM."""
    return points_sq.unsqueeze(1) - 2.0 * (points @ centres.t()) + (centres * centres).sum(dim=1).unsqueeze(0)


def screen_pays_off(device: torch.device) -> bool:
    """Whether to screen with bfloat16: on CPUs where its GEMM measures CORESET_SCREEN_MIN_SPEEDUP x
    faster than float32 at the screen's block shape (AVX512-BF16 or AMX; emulated bfloat16 is slower),
    never on GPUs, where the screen's small blocks are launch-bound (an H200: 731k rows in 2.1 s
    unscreened, 8.6 s screened). The measurement takes a few ms, once per call."""
    if device.type != "cpu":
        return False
    generator = torch.Generator(device="cpu").manual_seed(0)
    rows = torch.randn(CORESET_SCREEN_ROWS, CORESET_PROJECTION_DIM + 8, generator=generator)
    centres = torch.randn(CORESET_PROJECTION_DIM + 8, CORESET_MAX_PER_ROUND, generator=generator)
    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = rows.to(dtype), centres.to(dtype)
        best = math.inf
        for _ in range(8):
            started = time.perf_counter()
            torch.mm(a, b).amin(dim=1)
            best = min(best, time.perf_counter() - started)
        timings[dtype] = best
    return timings[torch.bfloat16] * CORESET_SCREEN_MIN_SPEEDUP < timings[torch.float32]


def rows_for_ratio(total: int, ratio: float) -> int:
    """The coreset size PatchCore's `coreset_ratio` asks of `total` rows: ceil(total * ratio), at least 1."""
    return min(total, max(1, int(math.ceil(total * ratio))))


def greedy_coreset(features: torch.Tensor, rows: int, seed: int, screen: bool | None = None) -> torch.Tensor:
    """Indices of `rows` rows forming a greedy k-center coreset (the paper's minimax facility location),
    chosen on a random projection.

    Keeps the rows that cover the feature space, so rare normal patterns survive. Exact greedy reads
    the whole feature matrix once per selected row, which is memory-bound and far too slow for 10^5
    rows; so each round takes the `pool` farthest rows as candidates, runs exact greedy among them to
    pick `per_round` centres (which keeps near-duplicates apart), then updates every row's distance to
    its nearest centre. With per_round=1 this is exactly the paper's greedy.

    The update is the cost (rows x centres x dims, twice over). With `screen` (default: where bfloat16
    GEMMs are measured faster) a bfloat16 GEMM first bounds each row's distance to the new centres;
    only rows the bound cannot rule out (6% on magnetic_tile features, 9% on random-weight ones) are
    recomputed in float32, so the result is the same as updating every row in float32. (A
    triangle-inequality skip did not pay: on real features 73% of rows passed it.)
    """
    total = features.shape[0]
    if rows < 1:
        raise ValueError(f"a coreset needs at least one row, got {rows}")
    target = rows
    if target >= total:
        return torch.arange(total)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    dim = features.shape[1]
    if dim > CORESET_PROJECTION_DIM:
        projection = torch.randn(dim, CORESET_PROJECTION_DIM, generator=generator) / math.sqrt(CORESET_PROJECTION_DIM)
        reduced = features @ projection.to(features.device)
    else:
        reduced = features
    # Centring changes no distance but shrinks the norms, against which both the float32 expansion's
    # cancellation and the bfloat16 screen's error bound are measured.
    reduced = reduced - reduced.mean(dim=0)
    reduced_sq = (reduced * reduced).sum(dim=1)
    if screen is None:
        screen = screen_pays_off(reduced.device)
    layout = _screen_layout(reduced, reduced_sq) if screen else None
    per_round = max(1, min(CORESET_MAX_PER_ROUND, target // CORESET_ROUNDS_HINT))
    first = int(torch.randint(total, (1,), generator=generator))
    selected = [first]
    min_d2 = _sq_dist_to(reduced, reduced_sq, reduced[first : first + 1])[:, 0].clamp_min(0.0)
    progress = Progress("coreset", target)
    progress.update()
    while len(selected) < target:
        take = min(per_round, target - len(selected))
        pool = torch.topk(min_d2, min(total, take * CORESET_POOL_FACTOR)).indices
        pool_points = reduced[pool]
        # Exact greedy within the pool on a precomputed pairwise matrix: the per-pick step is then one
        # small numpy minimum, not several torch launches (which dominated at 10^4+ picks).
        pool_pairwise = _sq_dist_to(pool_points, reduced_sq[pool], pool_points).cpu().numpy()
        pool_d2 = min_d2[pool].cpu().numpy().copy()
        chosen = []
        for _ in range(take):
            best = int(pool_d2.argmax())
            chosen.append(best)
            np.minimum(pool_d2, pool_pairwise[best], out=pool_d2)
        chosen_rows = pool[torch.tensor(chosen, device=pool.device)]
        selected.extend(int(row) for row in chosen_rows)
        progress.update(len(chosen))
        centres, centres_sq = reduced[chosen_rows], reduced_sq[chosen_rows]
        # None: every row, in contiguous chunks; else only the rows the screen could not rule out.
        recompute = None if layout is None else _screen(layout, reduced_sq, min_d2, centres, centres_sq)
        _update_min_d2(reduced, reduced_sq, min_d2, centres, centres_sq, recompute)
    return torch.tensor(selected, dtype=torch.long)


@dataclass(frozen=True)
class _ScreenLayout:
    """What the bfloat16 screen reads of the rows, prepared once per selection."""

    rows: torch.Tensor  # bfloat16 [x, 1, 1, 0...], width padded to a multiple of 8
    rounding: torch.Tensor  # ||x - bf16(x)|| per row, for the error bound
    norms: torch.Tensor  # ||x|| per row


def _screen_layout(reduced: torch.Tensor, reduced_sq: torch.Tensor) -> _ScreenLayout:
    """Rows as bfloat16 [x, 1, 1, 0...], so that one plain GEMM against [-2c, hi, lo, 0...] (||c||^2 = hi + lo,
    two bfloat16 parts) gives ||c||^2 - 2 x.c: plain mm ran faster than addmm with the bias."""
    dim = reduced.shape[1]
    padded = torch.zeros(reduced.shape[0], -(-(dim + 2) // 8) * 8, dtype=torch.bfloat16, device=reduced.device)
    padded[:, :dim] = reduced
    padded[:, dim : dim + 2] = 1.0
    rounding = (reduced - padded[:, :dim].float()).norm(dim=1)
    return _ScreenLayout(padded, rounding, reduced_sq.sqrt())


def _screen(layout: _ScreenLayout, reduced_sq, min_d2, centres, centres_sq) -> torch.Tensor:
    """Indices of the rows a new centre may come closer to than their current nearest, by a bfloat16 GEMM.

    With x~, c~ the bfloat16 rows, e_x = ||x - x~||, e_c = max ||c - c~||, C >= every ||c||, ||c~|| and
    u = 2^-8, the computed key for ||c||^2 - 2 x.c errs by at most 2(e_x C + ||x|| e_c) (the inputs'
    rounding, by Cauchy-Schwarz on the measured residuals) + u(C^2 + 2(||x|| + e_x) C) (the output's
    rounding) + 2^-14 (C^2 + 2 ||x|| C) (float32 accumulation, the lo part). A row whose key minus that
    bound is not below its current distance cannot improve; the rest are recomputed exactly.
    """
    screen_rows = layout.rows
    dim = centres.shape[1]
    low = centres.to(torch.bfloat16)
    centre_rounding = float((centres - low.float()).norm(dim=1).max())
    reach = float(centres_sq.max().sqrt()) + centre_rounding
    hi = centres_sq.to(torch.bfloat16)
    augmented = torch.zeros(screen_rows.shape[1], centres.shape[0], dtype=torch.bfloat16, device=centres.device)
    augmented[:dim] = (-2.0 * low).t()  # exact: a power-of-two scale
    augmented[dim] = hi
    augmented[dim + 1] = (centres_sq - hi.float()).to(torch.bfloat16)
    unit, tiny = BFLOAT16_UNIT_ROUNDOFF, 2.0**-14
    error = (
        (2 * centre_rounding + 2 * unit * reach + 2 * tiny * reach) * layout.norms
        + (2 * reach + 2 * unit * reach) * layout.rounding
        + (unit + tiny) * reach**2
    )
    # A row may improve only if some key falls below this (its current distance less its own norm).
    bound = min_d2 - reduced_sq + CORESET_SCREEN_SAFETY * error
    flagged = []
    for start in range(0, screen_rows.shape[0], CORESET_SCREEN_ROWS):
        stop = min(screen_rows.shape[0], start + CORESET_SCREEN_ROWS)
        key = torch.mm(screen_rows[start:stop], augmented).amin(dim=1)
        flagged.append((key.float() < bound[start:stop]).nonzero().squeeze(1) + start)
    return torch.cat(flagged)


def _update_min_d2(reduced, reduced_sq, min_d2, centres, centres_sq, rows: torch.Tensor | None) -> None:
    """min_d2 = min(min_d2, distance to the nearest new centre), in float32, for `rows` (None: all).
    One fused GEMM + broadcast add and one pass for the minimum per chunk; each row's own norm does not
    change which centre is nearest, so it is added to the [rows] minimum, not to the block."""
    count = reduced.shape[0] if rows is None else rows.numel()
    for start in range(0, count, CORESET_UPDATE_ROWS):
        stop = min(count, start + CORESET_UPDATE_ROWS)
        part = slice(start, stop) if rows is None else rows[start:stop]
        partial = torch.addmm(centres_sq.unsqueeze(0), reduced[part], centres.t(), beta=1.0, alpha=-2.0)
        nearest = (partial.amin(dim=1) + reduced_sq[part]).clamp_min(0.0)
        min_d2[part] = torch.minimum(min_d2[part], nearest)
