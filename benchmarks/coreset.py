"""Coreset selection time: greedy k-center on clustered rows shaped like PatchCore patch features.

    .venv/bin/python benchmarks/coreset.py [--rows 585000] [--dim 128] [--ratio 0.1] [--out benchmarks/results/coreset.json]

585k rows is magnetic_tile's 571 bank images x 1,024 patches (mobilenet_v2 at 256x256). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pyimgano.models.patchcore import greedy_coreset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=585_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--out", default="benchmarks/results/coreset.json")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(1000, args.dim, generator=generator) * 3
    rows = centres[torch.randint(1000, (args.rows,), generator=generator)] + torch.randn(args.rows, args.dim, generator=generator)
    started = time.perf_counter()
    selected = greedy_coreset(rows, args.ratio, 0)
    seconds = time.perf_counter() - started
    result = {"rows": args.rows, "dim": args.dim, "ratio": args.ratio, "selected": int(selected.numel()),
              "seconds": round(seconds, 1), "threads": torch.get_num_threads()}
    print("rows     dim  ratio  selected  seconds")
    print(f"{args.rows:<8} {args.dim:<4} {args.ratio:<6} {result['selected']:<9} {result['seconds']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
