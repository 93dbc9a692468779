#!/usr/bin/env bash
# The full-size GPU check (issue 17), one command for a session that is lent a GPU (about 8 minutes on
# one H100/H200; run it early, in one call of the device tool, and commit what it writes):
#   1. model_speed.py --config full: one prediction at the 97×128×144 crop (12,600 tokens) with random
#      weights of the real Wan 2.1 1.3B DiT and VAE shapes, 1/4/10 steps, bf16; again with torch.compile;
#   2. train_speed.py --full: training steps of stages A and C (checkpointing on; C also with its candidates
#      one at a time), peak memory against the memory planner;
#   3. gamma_speed.py --device cuda: the gamma index on the GPU.
# `--tiny` runs the same steps with the tiny configurations (and a 17×64×64 crop) on the CPU (the test suite does, so that the
# script cannot rot). JSON results go to $OUT when it is set (the device tool brings them back), else to
# Testing/benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-Testing/benchmarks/results}"
mkdir -p "$out"
if [ "${1:-}" = "--tiny" ]; then
  python Testing/benchmarks/model_speed.py --config tiny --device cpu --steps 1 --crop 17 64 64 --out "$out/gpu_check_model_tiny_cpu.json"
  python Testing/benchmarks/train_speed.py --steps 1 --out "$out/gpu_check_train_tiny_cpu.json"
  python Testing/benchmarks/gamma_speed.py --quick --repeats 1 --out "$out/gpu_check_gamma_cpu.json"
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python Testing/benchmarks/model_speed.py --config full --device cuda --steps 1 4 10
  python Testing/benchmarks/model_speed.py --config full --device cuda --steps 1 10 --compile \
      --out Testing/benchmarks/results/model_speed_full_cuda_compiled.json
  python Testing/benchmarks/train_speed.py --full --steps 3
  python Testing/benchmarks/gamma_speed.py --device cuda --out Testing/benchmarks/results/gamma_speed_cuda.json
  if [ -n "${OUT:-}" ]; then
    cp Testing/benchmarks/results/{model_speed_full_cuda,model_speed_full_cuda_compiled,train_speed_cuda,gamma_speed_cuda}.json "$OUT/"
  fi
fi
echo "gpu_check: done; results in $out"
