"""Peak memory and time of pyimgano-infer on one 4096x4096 image, tiled (512 / stride 384, hann).

    .venv/bin/python benchmarks/tiled_4k.py --bundle build/edge-fixture/bundles/<NAME-VERSION> [--out bench.json]

Runs pyimgano-infer in a child process and reads the child's peak RSS from the kernel (getrusage), so the
figure includes ONNX Runtime's arenas. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--out", default="benchmarks/tiled_4k.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        image = Path(scratch) / "big.png"
        rng = np.random.default_rng(0)
        cv2.imwrite(str(image), rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "pyimgano.cli.infer", "--bundle", args.bundle, "--input", str(image),
             "--tile-size", "512", "--tile-stride", "384", "--tile-map-reduce", "hann", "--defects",
             "--save-jsonl", str(Path(scratch) / "r.jsonl"), "--batch-size", "8"],
            capture_output=True, text=True,
        )
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
            return result.returncode
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    tiles = 11 * 11 if args.size == 4096 else None
    row = {"image": f"{args.size}x{args.size}", "tiles": tiles, "seconds": round(seconds, 2),
           "peak_rss_mib": round(peak_mib, 1), "map_mib": round(args.size * args.size * 4 / 2**20, 1)}
    print("image        tiles  seconds  peak RSS (MiB)  one float32 map (MiB)")
    print(f"{row['image']:<12} {tiles!s:<6} {row['seconds']:<8} {row['peak_rss_mib']:<15} {row['map_mib']}")
    Path(args.out).write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
