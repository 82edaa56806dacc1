"""`make demo`: the whole product end to end on a built-in default (or on real MVTec-layout data).

Generates a synthetic defect dataset (unless --data is given), trains PatchCore (mobilenet_v2, ImageNet
weights), exports a bundle, runs pyimgano-infer with defect extraction on the test images, and closes
with a short summary table. Each step runs the installed console script, exactly as a user would.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from pyimgano.data.synthetic import SyntheticSpec, generate_dataset


def _script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _run(command: list[str], quiet: bool) -> None:
    if not quiet:
        print("$ " + " ".join(command), flush=True)
    completed = subprocess.run(command, stdout=subprocess.DEVNULL if quiet else None)
    if completed.returncode != 0:
        raise SystemExit(f"demo step failed with exit code {completed.returncode}: {' '.join(command)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    parser.add_argument("--data", help="an MVTec-layout dataset root (default: generate a synthetic one)")
    parser.add_argument("--category", help="category under --data")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--quiet", action="store_true", help="print only the summary table")
    args = parser.parse_args(argv)
    if args.data and not args.category:
        parser.error("--data needs --category (e.g. CATEGORY=magnetic_tile)")

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.data:
        root, category = Path(args.data).resolve(), args.category
    else:
        spec = SyntheticSpec()
        root, category = out / "data", spec.category
        generate_dataset(root, spec, overwrite=True)

    config = {
        "recipe": "industrial-adapt",
        "seed": 0,
        "dataset": {"name": "mvtec", "root": str(root), "category": category, "resize": [256, 256]},
        "model": {"name": "vision_patchcore", "device": args.device, "preset": "industrial-fast",
                  "backbone": "mobilenet_v2", "pretrained": True},
        "output": {"output_dir": str(out / "run"), "save_run": True, "per_image_jsonl": True},
    }
    config_path = out / "config.json"
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    bundles = out / "bundles"
    _run([_script("pyimgano-train"), "--config", str(config_path), "--export-bundle", str(bundles)], args.quiet)
    archive = bundles / f"patchcore-mobilenet_v2-{category}-1.zip"
    summary_path = out / "infer_summary.json"
    # pyimgano-infer exits 1 when some input failed; the demo's inputs are all images, so any failure is real.
    # --overwrite: the demo's folder is its own, and a second `make demo` replaces the first one's outputs.
    _run(
        [
            _script("pyimgano-infer"), "--bundle", str(archive), "--input", str(root / category / "test"),
            "--save-jsonl", str(out / "infer.jsonl"), "--defects", "--save-masks", str(out / "masks"),
            "--summary-json", str(summary_path), "--device", args.device, "--overwrite",
        ],
        args.quiet,
    )

    report = json.loads((out / "run" / "categories" / category / "report.json").read_text(encoding="utf-8"))
    infer = json.loads(summary_path.read_text(encoding="utf-8"))
    pixel = report["metrics"]["pixel"] or {}
    rows = [
        ("dataset", f"{root / category}"),
        ("image AUROC (torch, test set)", f"{report['metrics']['image']['auroc']:.4f}"),
        ("pixel AUROC (torch, test set)", f"{pixel['auroc']:.4f}" if pixel else "n/a (no masks)"),
        ("edge engine images/s", f"{infer['images_per_second']} ({infer['device']}, {infer['images']} images)"),
        ("anomalous / errors", f"{infer['anomalous']} / {infer['errors']}"),
        ("run directory", str(out / "run")),
        ("bundle", str(archive)),
        ("records / masks", f"{out / 'infer.jsonl'} / {out / 'masks'}"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name.ljust(width)}  {value}" for name, value in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
