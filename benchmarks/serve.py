"""pyimgano-serve against the in-process engine, on the same JPEG images and bundle.

    nice -n 10 .venv/bin/python benchmarks/serve.py --bundle build/edge-fixture/bundles/<NAME-VERSION> \
        --data build/edge-fixture/data [--seconds 5] [--rounds 3] [--out benchmarks/results/serve.json]

In process (what pyimgano-infer does, with the runtime's own functions): decode each JPEG (decode_rgb) and
score it (MapSteps.score over the Engine), one image at a time (its latency) and in batches of 8
(pyimgano-infer's default --batch-size: its throughput). Served: a pyimgano-serve process over a repository
holding the bundle twice (two models loaded), driven by tritonclient (HTTP, binary data, one JPEG per
request as a camera trigger sends it) from 1, 8 and 32 client threads, each with its own client, for a fixed
time. Every configuration runs once per round, the rounds alternating them; the figures are medians
over the rounds. For the latency at concurrency 1, each round also times one image in process and the
same image through the server in turn ("paired"), so both see the same load on the machine. The server's peak RSS is read from the kernel (VmHWM) at the end. Clients, server and session share
this machine's cores, as they would on a line PC. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def jpeg_images(data: Path, count: int) -> list[bytes]:
    files = sorted(data.rglob("test/*/*.png"))[:count]
    encoded = []
    for file in files:
        ok, buffer = cv2.imencode(".jpg", cv2.imread(str(file)), [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok, file
        encoded.append(buffer.tobytes())
    return encoded


class InProcess:
    """The runtime's own functions on one Engine: decode_rgb, then MapSteps.score."""

    def __init__(self, bundle_dir: Path, jpegs: list[bytes]):
        from pyimgano.runtime import Engine, open_bundle
        from pyimgano.runtime.images import decode_rgb

        self.decode = decode_rgb
        self.engine = Engine(open_bundle(bundle_dir), device="cpu")
        self.steps = self.engine.context.steps
        self.jpegs = jpegs
        self.steps.score(self.engine, [decode_rgb(jpegs[0])], 1)  # ONNX Runtime's first run plans and allocates

    def one_at_a_time(self, seconds: float) -> dict:
        latencies, started, index = [], time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            t0 = time.perf_counter()
            self.steps.score(self.engine, [self.decode(self.jpegs[index % len(self.jpegs)])], 1)
            latencies.append(time.perf_counter() - t0)
            index += 1
        return {"images_per_s": len(latencies) / (time.perf_counter() - started),
                "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99), "images": len(latencies)}

    def batches_of_8(self, seconds: float) -> dict:
        images, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            chunk = [self.decode(self.jpegs[(images + k) % len(self.jpegs)]) for k in range(8)]
            self.steps.score(self.engine, chunk, 8)
            images += 8
        return {"images_per_s": images / (time.perf_counter() - started), "images": images}


def start_server(repository: Path, log: Path, flags: list[str]) -> tuple[subprocess.Popen, int]:
    handle = open(log, "w")
    process = subprocess.Popen([sys.executable, "-m", "pyimgano.cli.serve", "--model-repository", str(repository),
                                "--port", "0", "--device", "cpu", *flags], stderr=handle)
    handle.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if '"serving"' in line:
                return process, json.loads(line)["port"]
        if process.poll() is not None:
            raise SystemExit(f"pyimgano-serve exited {process.returncode}: {log.read_text()}")
        time.sleep(0.05)
    process.kill()
    raise SystemExit("pyimgano-serve did not start")


def drive(port: int, model: str, jpegs: list[bytes], concurrency: int, seconds: float) -> dict:
    import tritonclient.http as triton

    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    gate = threading.Barrier(concurrency)

    def worker(offset: int) -> None:
        own, errors = [], []
        with triton.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120) as client:
            gate.wait()
            index = offset
            while time.perf_counter() < stop_at:
                tensor = triton.InferInput("image_bytes", [1], "BYTES")
                tensor.set_data_from_numpy(np.array([jpegs[index % len(jpegs)]], dtype=object))
                t0 = time.perf_counter()
                try:
                    result = client.infer(model, [tensor])
                    result.as_numpy("score")
                    own.append(time.perf_counter() - t0)
                except triton.InferenceServerException as exc:
                    errors.append(str(exc))
                index += concurrency
        with lock:
            latencies.extend(own)
            failures.extend(errors)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"concurrency": concurrency, "requests": len(latencies), "failures": len(failures),
            "failure_sample": failures[:3], "images_per_s": len(latencies) / wall,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99)}


def paired(engine: InProcess, port: int, model: str, jpegs: list[bytes], seconds: float) -> dict:
    """One image in process, then the same image through the server, in turn: both latencies measured
    under the same conditions, for the p99 comparison at concurrency 1."""
    import tritonclient.http as triton

    local, served = [], []
    with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
        started, index = time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            jpeg = jpegs[index % len(jpegs)]
            t0 = time.perf_counter()
            engine.steps.score(engine.engine, [engine.decode(jpeg)], 1)
            local.append(time.perf_counter() - t0)
            tensor = triton.InferInput("image_bytes", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([jpeg], dtype=object))
            t0 = time.perf_counter()
            client.infer(model, [tensor]).as_numpy("score")
            served.append(time.perf_counter() - t0)
            index += 1
    return {"pairs": len(local), "in_process_p50_ms": percentile(local, 50), "in_process_p99_ms": percentile(local, 99),
            "served_p50_ms": percentile(served, 50), "served_p99_ms": percentile(served, 99)}


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--server-flags", default="", help="Extra pyimgano-serve flags, e.g. '--max-batch-size 16'.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve.json"))
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    jpegs = jpeg_images(args.data, args.images)
    engine = InProcess(args.bundle, jpegs)
    # Rounds alternate every configuration, and each figure is the median over the rounds: other work on the
    # machine then weighs on all of them alike.
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        repository = Path(scratch) / "repository"
        for model in ("line_a", "line_b"):
            shutil.copytree(args.bundle, repository / model / "1")
        process, port = start_server(repository, Path(scratch) / "serve.log", args.server_flags.split())
        try:
            rss_loaded = peak_rss_mib(process.pid)
            drive(port, "line_a", jpegs, 4, 2.0)  # warm-up: connections, first batches
            for _ in range(args.rounds):
                runs.setdefault("in_process_batch_1", []).append(engine.one_at_a_time(args.seconds))
                runs.setdefault("in_process_batch_8", []).append(engine.batches_of_8(args.seconds))
                for concurrency in args.concurrency:
                    runs.setdefault(f"served_c{concurrency}", []).append(
                        drive(port, "line_a", jpegs, concurrency, args.seconds))
                runs.setdefault("paired_c1", []).append(paired(engine, port, "line_a", jpegs, args.seconds))
            rss_peak = peak_rss_mib(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=120)

    def median(name: str) -> dict:
        rows = runs[name]
        keys = [k for k in rows[0] if k.endswith(("_per_s", "_ms"))]
        return {**{k: round(float(np.median([row[k] for row in rows])), 3) for k in keys},
                "failures": sum(row.get("failures", 0) for row in rows), "rounds": rows}

    single, batched = median("in_process_batch_1"), median("in_process_batch_8")
    served = {c: median(f"served_c{c}") for c in args.concurrency}
    targets = {}
    if 8 in served:
        c8 = served[8]["images_per_s"]
        targets["throughput_c8_over_in_process_batch_1"] = round(c8 / single["images_per_s"], 3)
        targets["throughput_c8_over_in_process_batch_8"] = round(c8 / batched["images_per_s"], 3)
        targets["throughput_c8_target_met"] = c8 >= 0.9 * single["images_per_s"]
    pairs = median("paired_c1")
    targets["paired_c1_p50_over_engine_ms"] = round(pairs["served_p50_ms"] - pairs["in_process_p50_ms"], 3)
    targets["paired_c1_p99_over_engine_ms"] = round(pairs["served_p99_ms"] - pairs["in_process_p99_ms"], 3)
    targets["p99_c1_target_met"] = targets["paired_c1_p99_over_engine_ms"] <= 3.0
    report = {
        "bundle": args.bundle.name, "images": len(jpegs), "seconds_per_run": args.seconds, "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_1m_at_start": load_at_start, "load_average_1m_at_end": os.getloadavg()[0]},
        "server_flags": args.server_flags,
        "in_process": {"batch_1": single, "batch_8": batched},
        "served": {f"concurrency_{c}": row for c, row in served.items()},
        "paired_concurrency_1": pairs,
        "server_peak_rss_mib": {"two_models_loaded": round(rss_loaded, 1), "after_the_runs": round(rss_peak, 1)},
        "server_exit_code": code, "targets": targets,
    }
    print(f"{'':<24}{'images/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}")
    print(f"{'in-process batch 1':<24}{single['images_per_s']:>10.1f}{single['p50_ms']:>9.2f}{single['p99_ms']:>9.2f}"
          f"{0:>8}")
    print(f"{'in-process batch 8':<24}{batched['images_per_s']:>10.1f}{'':>9}{'':>9}{0:>8}")
    for concurrency, row in served.items():
        print(f"{'served, concurrency ' + str(concurrency):<24}{row['images_per_s']:>10.1f}"
              f"{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}{row['failures']:>8}")
    print(f"{'paired, in process':<24}{'':>10}{pairs['in_process_p50_ms']:>9.2f}{pairs['in_process_p99_ms']:>9.2f}")
    print(f"{'paired, served':<24}{'':>10}{pairs['served_p50_ms']:>9.2f}{pairs['served_p99_ms']:>9.2f}")
    print(f"server peak RSS, two models loaded: {rss_loaded:.0f} MiB; after the runs: {rss_peak:.0f} MiB")
    print(json.dumps(targets))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
