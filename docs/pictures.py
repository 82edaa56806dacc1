"""Makes the pictures of docs/INDUSTRIAL_INFERENCE.md from real data: trains the seed's defects-ROI template on a
PIPED category of ../shared/data/defects, runs `pyimgano-infer --from-run --defects --save-overlays` on a few
test images with two `defects` settings, and writes the overlays as JPEG into docs/images/.

    .venv/bin/python docs/pictures.py [--data ../shared/data/defects] [--category piped_flr01]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
TEMPLATE = ROOT / "examples" / "configs" / "industrial_adapt_defects_roi.json"
# (file stem, test subfolder, index among its sorted images)
CHOSEN = (("defect_a", "impurity", 0), ("defect_b", "impurity", 7), ("good", "good", 0))
# The template's filters (ROI, morphology, min area, peak refinement from the recipe), against none of them.
SETTINGS = {"filtered": [], "raw": ["--defect-min-area", "0", "--defect-open-ksize", "0", "--defect-close-ksize", "0",
                                    "--defect-region-peak-fraction", "0", "--roi-xyxy-norm", "0", "0", "1", "1"]}


def run(command: list[str]) -> None:
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.exit(f"{' '.join(command[:3])} failed ({completed.returncode}):\n{completed.stderr}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "defects")
    parser.add_argument("--category", default="piped_flr01")
    args = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="pyimgano-pictures-") as scratch:
        scratch = Path(scratch)
        run_dir = scratch / "run"
        run([python, "-m", "pyimgano.cli.train", "--config", str(TEMPLATE), "--root", str(args.data), "--category",
             args.category, "--device", "cpu", "--output-dir", str(run_dir), "--export-infer-config", "--quiet"])
        inputs = scratch / "inputs"
        inputs.mkdir()
        for stem, folder, index in CHOSEN:
            source = sorted((args.data / args.category / "test" / folder).glob("*.png"))[index]
            shutil.copy(source, inputs / f"{stem}.png")
        IMAGES.mkdir(exist_ok=True)
        for name, flags in SETTINGS.items():
            overlays = scratch / f"overlays-{name}"
            run([python, "-m", "pyimgano.cli.infer", "--from-run", str(run_dir), "--infer-config",
                 str(run_dir / "artifacts" / "infer_config.json"), "--defects", *flags, "--input", str(inputs),
                 "--save-jsonl", str(scratch / f"{name}.jsonl"), "--save-overlays", str(overlays), "--quiet"])
            for record in map(json.loads, (scratch / f"{name}.jsonl").read_text().splitlines()):
                picture = cv2.imread(record["overlay_path"])
                target = IMAGES / f"inference_{Path(record['input']).stem}_{name}.jpg"
                cv2.imwrite(str(target), picture, [cv2.IMWRITE_JPEG_QUALITY, 85])
                print(f"{target.relative_to(ROOT)}: label {record['label']}, score {record['score']:.3f}, "
                      f"{len(record['defects']['regions'])} regions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
