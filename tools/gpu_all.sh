#!/usr/bin/env bash
# Every GPU measurement the performance page asks for, in one go, on a machine with an NVIDIA GPU and
# onnxruntime-gpu (pip install "onnxruntime-gpu[cuda,cudnn]"; torch and zennit for Zennit's side).
#     bash tools/gpu_all.sh [OUT_DIR]        (default gpu-results/)
# Writes gpu_check.txt (exit status 1 of a check = a CPU fallback), bench_gpu.txt (tools/bench.py
# --device gpu), parity.txt (CPU vs CUDA relevance) and cli_bench.txt; goes on past a failing step.
set -u
out=${1:-gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
cache=${TMPDIR:-/tmp}/onnxlrp-bench
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())" | tee -a "$out/gpu.txt"
python tools/bench.py --device gpu --threads 2 --warmup 3 --repeats 30 --rounds 3 2>&1 | tee "$out/bench_gpu.txt"
for composite in epsilon_plus_flat epsilon_gamma_box; do
  python tools/gpu_check.py models/small_vgg.onnx models/tiny_resnet.onnx "$cache/vgg16.onnx" "$cache/resnet50.onnx" \
    --composite "$composite" 2>&1 | tee -a "$out/gpu_check.txt"
  echo "exit status $composite: ${PIPESTATUS[0]}" | tee -a "$out/gpu_check.txt"
done
python tools/gpu_parity.py models/small_vgg.onnx "$cache/resnet50.onnx" 2>&1 | tee "$out/parity.txt"
onnxlrp bench "$cache/resnet50.onnx" --device gpu --repeats 10 2>&1 | tee "$out/cli_bench.txt"
