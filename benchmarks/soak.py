"""A soak of the edge engine: one `pyimgano-infer` run over 10,000 images, its memory watched throughout.

    python benchmarks/soak.py                                  # the demo's bundle, the real data set's images
    python benchmarks/soak.py --bundle B.zip --source DIR --images 3000

The real console script runs as a subprocess with `--defects`, masks, region records and a summary saved, so
the whole per-image path soaks (decode, score, post-process, extract, write). Its /proc/PID/status is polled:
VmHWM (the peak resident set so far) and VmRSS (resident now) are recorded when the records file reaches
1,000, 3,000 and 10,000 records, with the images/s of each stretch, plus the last values before it exits.
The issue's bar: peak RSS flat (about 180 MB) from 1k to 10k; the verdict says whether it grew by more than
--tolerance. The run must exit 0 having written exactly one record per image, none with an error.

Defaults: the bundle of `python -m pyimgano.demo --out build/soak --quiet --device cpu` (made first when it is
not there; needs the workbench install), and the test images of ../shared/data/defects (PIPED PNGs and the
varied-size magnetic_tile JPEGs; where absent, the demo's synthetic images) hard-linked under distinct names
until there are --images of them. Prints a table and writes JSON (default benchmarks/results/soak.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
DATA = PROJECT.parent / "shared" / "data" / "defects"
WORK = PROJECT / "build" / "soak"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def script(name: str) -> str:
    """A console script of this environment, as a user runs it."""
    return str(Path(sys.executable).parent / name)


def demo_bundle(work: Path) -> Path:
    """The demo's bundle archive under `work`, trained first when it is not there yet."""
    found = sorted((work / "bundles").glob("*.zip")) if (work / "bundles").is_dir() else []
    if not found:
        print(f"no bundle under {work / 'bundles'}: training the demo's (python -m pyimgano.demo)", flush=True)
        subprocess.run([sys.executable, "-m", "pyimgano.demo", "--out", str(work), "--quiet", "--device", "cpu"],
                       check=True)
        found = sorted((work / "bundles").glob("*.zip"))
    if len(found) != 1:
        raise SystemExit(f"expected one bundle archive under {work / 'bundles'}, found {len(found)}")
    return found[0]


def source_images(source: Path | None, work: Path) -> tuple[Path, list[Path]]:
    """(where they came from, the image files): --source, else the real data set's test images, else the
    demo's synthetic test images."""
    # Both data sets are MVTec-layout roots: <category>/test/<good or defect type>/<image>.
    pattern = "**/*" if source is not None else "*/test/*/*"
    if source is None:
        source = DATA if DATA.is_dir() else work / "data"
    files = sorted(p for p in source.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no images under {source}")
    return source, files


def fill_folder(files: list[Path], folder: Path, count: int) -> dict:
    """`count` images in `folder`, named NNNNN_<source stem>, cycling through `files` in order.

    Each source is copied once beside the folder and the rest are hard links to that copy (the data set may
    be read-only and owned by someone else, which the kernel's protected_hardlinks refuses to link to)."""
    if folder.exists():
        shutil.rmtree(folder)
    originals = folder.with_name(folder.name + "-sources")
    if originals.exists():
        shutil.rmtree(originals)
    folder.mkdir(parents=True)
    originals.mkdir()
    local = []
    for index, path in enumerate(files):
        copy = originals / f"{index:05d}_{path.name}"
        shutil.copyfile(path, copy)
        local.append(copy)
    linked = 0
    for index in range(count):
        original = local[index % len(local)]
        target = folder / f"{index:05d}_{original.name.split('_', 1)[1]}"
        try:
            os.link(original, target)
            linked += 1
        except OSError:  # a file system without hard links
            shutil.copyfile(original, target)
    return {"images": count, "distinct_files": len(local), "hard_links": linked,
            "bytes_distinct": sum(p.stat().st_size for p in local)}


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a live process in KiB; {} once it has exited (a zombie has no memory lines)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines()
            if line.startswith(("VmRSS:", "VmHWM:"))}


class LineCounter:
    """Counts the complete lines of a file as it grows, reading only what was added."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = None
        self.lines = 0

    def count(self) -> int:
        if self.handle is None:
            if not self.path.exists():
                return 0
            self.handle = open(self.path, "rb")
        while block := self.handle.read(1 << 20):
            self.lines += block.count(b"\n")
        return self.lines

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def soak(command: list[str], records_path: Path, checkpoints: list[int], poll: float, stderr_path: Path) -> dict:
    """Runs `command`, polling its memory and its records file; the measurements at each checkpoint."""
    counter = LineCounter(records_path)
    reached: list[dict] = []
    pending = sorted(checkpoints)
    last: dict[str, int] = {}
    sampled_peak_rss = 0
    started = time.perf_counter()
    first_record_at = None
    stretch_start = None  # (records, time) where the current stretch between checkpoints began
    before: tuple[int, dict] = (0, {})  # the previous poll's (records, memory)
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        while True:
            # Reaped here with its resource usage; Popen.wait would give only the status.
            pid, wait_status, usage = os.wait4(process.pid, os.WNOHANG)
            now = time.perf_counter()
            memory = status_kib(process.pid) if pid == 0 else {}
            if memory:
                last = memory
                sampled_peak_rss = max(sampled_peak_rss, memory["VmRSS"])
            records = counter.count()
            if records and first_record_at is None:
                first_record_at, stretch_start = now, (records, now)
            while pending and records >= pending[0]:
                done, since = stretch_start
                # At the last record the run is already closing (the session freed, RSS falling): the last
                # checkpoint reads the memory of the poll before, with the last chunk still being scored.
                seen, reading = (before if len(pending) == 1 and before[0] < pending[0] and before[1] else
                                 (records, memory or last))
                reached.append({
                    "records": pending.pop(0), "records_seen": seen, "seconds": round(now - started, 2),
                    "vm_hwm_mib": mib(reading.get("VmHWM")), "vm_rss_mib": mib(reading.get("VmRSS")),
                    # The values are the last ones read alive where the process exited between two polls.
                    "read_after_exit": not memory and reading is last,
                    "stretch_images_per_second": round((records - done) / (now - since), 2) if now > since else None,
                })
                stretch_start = (records, now)
            before = (records, memory)
            if pid != 0:
                break
            time.sleep(poll)
    process.returncode = os.waitstatus_to_exitcode(wait_status)
    counter.close()
    return {
        "rc": process.returncode,
        "wall_seconds": round(now - started, 2),
        "first_record_seconds": round(first_record_at - started, 2) if first_record_at else None,
        "checkpoints": reached,
        "final": {"vm_hwm_mib": mib(last.get("VmHWM")), "vm_rss_mib": mib(last.get("VmRSS")),
                  "sampled_peak_vm_rss_mib": mib(sampled_peak_rss),
                  # Linux counts the peak of the address space exec replaced as well (here this script's).
                  "ru_maxrss_mib": mib(usage.ru_maxrss)},
    }


def check_records(path: Path, expected: int) -> dict:
    inputs, errors = set(), []
    lines = 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            lines += 1
            inputs.add(record["input"])
            if "error" in record:
                errors.append({"input": record["input"], "error": record["error"]})
    return {"records": lines, "distinct_inputs": len(inputs), "errors": len(errors), "error_examples": errors[:5],
            "one_record_per_image": lines == expected == len(inputs)}


def growth(checkpoints: list[dict], key: str) -> float | None:
    values = [c[key] for c in checkpoints if c[key] is not None]
    return round(values[-1] / values[0] - 1.0, 4) if len(values) >= 2 and values[0] > 0 else None


def table(result: dict) -> str:
    header = ("records", "read at", "elapsed s", "img/s (stretch)", "VmRSS MiB", "VmHWM MiB")
    rows = [header] + [(f"{c['records']:,}", f"{c['records_seen']:,}", f"{c['seconds']:.1f}",
                        str(c["stretch_images_per_second"] or "-"), f"{c['vm_rss_mib']}", f"{c['vm_hwm_mib']}")
                       for c in result["checkpoints"]]
    final = result["final"]
    rows.append(("exit", "-", f"{result['wall_seconds']:.1f}", "-", f"{final['vm_rss_mib']}", f"{final['vm_hwm_mib']}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="bundle directory or .zip (default: the demo's, under --work)")
    parser.add_argument("--source", type=Path, help="folder of images to repeat (default: ../shared/data/defects "
                                                    "test images, else the demo's synthetic ones)")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--checkpoints", default="1000,3000,10000", help="record counts to measure at")
    parser.add_argument("--tolerance", type=float, default=0.10, help="allowed relative RSS growth, first to last")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between two reads of /proc/PID/status")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--out", type=Path, default=PROJECT / "benchmarks" / "results" / "soak.json")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or demo_bundle(args.work)
    source, files = source_images(args.source, args.work)
    images = args.work / "images"
    made = fill_folder(files, images, args.images)
    out = args.work / "out"
    # A fresh folder: the records of an earlier soak would be counted before the run truncates them.
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    records, summary = out / "records.jsonl", out / "summary.json"
    checkpoints = sorted({int(c) for c in args.checkpoints.split(",") if 0 < int(c) <= args.images} | {args.images})
    command = [script("pyimgano-infer"), "--bundle", str(bundle), "--input", str(images), "--save-jsonl", str(records),
               "--defects", "--save-masks", str(out / "masks"), "--defects-regions-jsonl", str(out / "regions.jsonl"),
               "--summary-json", str(summary), "--device", "cpu", "--batch-size", str(args.batch_size)]
    print(f"soaking {bundle.name}: {args.images:,} images ({made['distinct_files']} distinct from {source}), "
          f"checkpoints {checkpoints}", flush=True)
    run = soak(command, records, checkpoints, args.poll, out / "stderr.log")
    written = check_records(records, args.images) if records.exists() else {"records": 0, "one_record_per_image": False}
    infer_summary = json.loads(summary.read_text()) if summary.exists() else None
    hwm_growth, rss_growth = growth(run["checkpoints"], "vm_hwm_mib"), growth(run["checkpoints"], "vm_rss_mib")
    completed = run["rc"] == 0 and written["one_record_per_image"] and written.get("errors") == 0
    flat = hwm_growth is not None and hwm_growth <= args.tolerance
    result = {
        "machine": {"cpu_count": os.cpu_count(), "niceness": os.nice(0)},
        "bundle": str(bundle), "source": str(source), "inputs": made, "command": command, **run,
        "written": written, "infer_summary": infer_summary,
        "verdict": {
            "tolerance": args.tolerance,
            "peak_rss_growth_first_to_last_checkpoint": hwm_growth,
            "rss_growth_first_to_last_checkpoint": rss_growth,
            "peak_rss_flat": flat,
            "run_completed": completed,
        },
    }
    print(table(result))
    if infer_summary:
        print(f"pyimgano-infer: {infer_summary['images_per_second']} images/s over {infer_summary['images']:,} images "
              f"(stage ms/image {infer_summary['stage_ms_per_image']}), {infer_summary['anomalous']} anomalous")
    print(f"rc {run['rc']}, {written['records']:,} records for {args.images:,} images, {written.get('errors')} errors; "
          f"peak RSS {'+' if (hwm_growth or 0) >= 0 else ''}{100 * (hwm_growth or 0):.1f}% and RSS "
          f"{100 * (rss_growth or 0):+.1f}% from {checkpoints[0]:,} to {checkpoints[-1]:,} records: "
          f"{'flat' if flat else 'GREW'} (tolerance {100 * args.tolerance:.0f}%)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if completed and flat else 1


if __name__ == "__main__":
    sys.exit(main())
