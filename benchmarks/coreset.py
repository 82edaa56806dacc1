"""Coreset selection time: greedy k-center on clustered rows shaped like PatchCore patch features, or on
the real patch features of a folder of images (mobilenet_v2 with its ImageNet weights, 256x256: a fit).

    .venv/bin/python benchmarks/coreset.py [--rows 585000] [--dim 128] [--ratio 0.1] [--out benchmarks/results/coreset.json]
    .venv/bin/python benchmarks/coreset.py --images ../shared/data/defects/magnetic_tile/train/good --out benchmarks/results/coreset_magnetic_tile.json

585k rows is magnetic_tile's 571 bank images x 1,024 patches (mobilenet_v2 at 256x256); its 714 train
images give 731k rows. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pyimgano.models.coreset import greedy_coreset, rows_for_ratio


def embed_folder(folder: Path) -> tuple[torch.Tensor, dict]:
    import numpy as np

    from pyimgano.models.patchcore import VisionPatchCore
    from pyimgano.models.patchcore_spec import PatchCoreParams
    from pyimgano.runtime.images import InputContract, expand_inputs, read_rgb, to_contract

    contract = InputContract(256, 256)
    images = np.stack([to_contract(read_rgb(path), contract) for path in expand_inputs(str(folder))])
    params = PatchCoreParams(backbone="mobilenet_v2", layers=("features.6", "features.13"), coreset_ratio=0.1,
                             num_neighbors=9, embed_dim=1024, pretrained=True, weights_path=None,
                             input_hw=(256, 256), mean=contract.mean, std=contract.std, seed=0, batch_size=16)
    started = time.perf_counter()
    features = VisionPatchCore(params, torch.device("cpu")).embed(images)
    return features, {"images": len(images), "source": str(folder), "embed_seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=585_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--images", type=Path, help="embed these images instead of drawing clustered rows")
    parser.add_argument("--device", default="cpu", help="where the rows live and the selection runs (cpu, cuda)")
    parser.add_argument("--screen", choices=["auto", "on", "off"], default="auto",
                        help="the bfloat16 screen: auto = where bfloat16 measures faster")
    parser.add_argument("--out", default="benchmarks/results/coreset.json")
    args = parser.parse_args()
    extra = {}
    if args.images:
        rows, extra = embed_folder(args.images)
    else:
        generator = torch.Generator().manual_seed(0)
        centres = torch.randn(1000, args.dim, generator=generator) * 3
        rows = centres[torch.randint(1000, (args.rows,), generator=generator)] + torch.randn(args.rows, args.dim, generator=generator)
    rows = rows.to(args.device)
    screen = {"auto": None, "on": True, "off": False}[args.screen]
    started = time.perf_counter()
    selected = greedy_coreset(rows, rows_for_ratio(len(rows), args.ratio), 0, screen=screen)  # returns host indices: synchronised
    seconds = time.perf_counter() - started
    result = {"rows": int(rows.shape[0]), "dim": int(rows.shape[1]), "ratio": args.ratio, **extra,
              "device": args.device, "screen": args.screen,
              "selected": int(selected.numel()), "seconds": round(seconds, 1), "threads": torch.get_num_threads()}
    print("rows     dim  ratio  selected  seconds")
    print(f"{result['rows']:<8} {result['dim']:<4} {args.ratio:<6} {result['selected']:<9} {result['seconds']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
