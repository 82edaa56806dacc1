"""GPU time per kernel of a bundle graph on ORT CUDA (CUPTI through torch.profiler sees ORT's kernels
too), and the same model in torch eager on the GPU, split into embedder and bank search.

    python benchmarks/cuda_kernels.py RUN_DIR BUNDLE_MODEL.onnx
"""
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from pyimgano.runtime.engine import select_providers, session_options
from pyimgano.workbench.run_loader import load_detector, load_run


def cuda_median_ms(fn, repeats=10):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> int:
    run_dir, model = Path(sys.argv[1]), sys.argv[2]
    ort.preload_dlls()
    session = ort.InferenceSession(model, sess_options=session_options(), providers=select_providers("cuda"))
    data = np.random.default_rng(0).integers(0, 256, (32, 256, 256, 3), dtype=np.uint8)
    binding = session.io_binding()
    binding.bind_ortvalue_input(session.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(data, "cuda", 0))
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda")

    def ort_run():
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    print(f"ORT graph b32: {cuda_median_ms(ort_run):.2f} ms")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            ort_run()
    torch.cuda.synchronize()
    averages = prof.key_averages()
    try:
        print(averages.table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=100))
    except (KeyError, AttributeError, ValueError):
        print(averages.table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=100))

    config, category, report = load_run(run_dir, None)
    detector = load_detector(run_dir, config, report, torch.device("cpu"))
    for precision in ("fp16", "fp32"):
        graph = detector.graph(precision).cuda().eval()
        images = torch.from_numpy(data).cuda()
        with torch.inference_mode():
            full = cuda_median_ms(lambda: graph(images))
            embed = cuda_median_ms(lambda: graph.embedder(images))
            features = graph.bank.centre(graph.embedder(images)[0]).reshape(-1, graph.bank.mean.shape[0])
            search = cuda_median_ms(lambda: graph.bank.nearest(features))
            patch = cuda_median_ms(lambda: graph.patch_scores(images))
        print(f"torch eager {precision} b32: full {full:.2f} ms, embedder {embed:.2f}, nearest {search:.2f}, patch_scores {patch:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
