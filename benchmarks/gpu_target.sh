#!/usr/bin/env bash
# Issue 5's GPU target on the lent machine, in one call (after onnxruntime-gpu is on PYTHONPATH and the
# project is installed): the wide_resnet50_2, 16,384-row fp16 bundle at batch 32 through the engine
# (with alternatives to its CUDA settings), then GPU time per kernel of its graph and torch eager on the
# same model. JSON and logs to $OUT.
set -u
out="${OUT:-.}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
timeout 200 python3 benchmarks/cuda_check.py --backbone wide_resnet50_2 --bank-rows 16384 --precision fp16 \
  --no-cpu-speed --explore --out "$out/target.json" > "$out/target.log" 2>&1
echo "check rc=$?"; grep -v cudnn_fe "$out/target.log" | tail -30
work=$(ls -dt /tmp/cuda-check-* | head -1)
timeout 200 python3 benchmarks/cuda_kernels.py "$work/run" "$(ls "$work"/bundles/*/model.onnx)" > "$out/kernels.log" 2>&1
echo "kernels rc=$?"; grep -v cudnn_fe "$out/kernels.log" | cut -c1-100,200-230 | tail -40
# fp32 bundles keep their contract on CUDA with these settings: CPU-vs-CUDA scores within 1e-3, same labels.
timeout 150 python3 benchmarks/cuda_check.py --backbone wide_resnet50_2 --bank-rows 16384 --precision fp32 \
  --no-cpu-speed --repeats 10 --out "$out/fp32.json" > "$out/fp32.log" 2>&1
echo "fp32 check rc=$?"; grep -v cudnn_fe "$out/fp32.log" | tail -22
