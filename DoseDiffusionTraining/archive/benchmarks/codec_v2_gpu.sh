#!/usr/bin/env bash
# The learned codec v2 on a GPU (issue 16), one call of the device tool (about 5 minutes on one H200):
# `dosediffusion-train fit-codec` with DoseDiffusionTraining/configs/codec/demo-gpu.yaml (whole crops, a
# fixed wall time), then its held-out reconstruction error. Written to $OUT (else runs/codec-v2-gpu):
# codec_vae.tar (the diffusers VAE folder), loss.jsonl, reconstruction.json, the log.
#   device run:  bash Testing/benchmarks/codec_v2_gpu.sh        (carry .whl)
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-runs/codec-v2-gpu}"
work=runs/codec-v2-gpu-work
rm -rf "$work" && mkdir -p "$out"
source Testing/benchmarks/gpu_image_env.sh
SECONDS=0
dosediffusion-train fit-codec --config DoseDiffusionTraining/configs/codec/demo-gpu.yaml --out "$work" > "$out/fit_codec.log" 2>&1
tar -C "$work" -cf "$out/codec_vae.tar" vae
cp "$work/loss.jsonl" "$work/reconstruction.json" "$out/"
echo "steps: $(tail -n 1 "$work/loss.jsonl")"
cat "$work/reconstruction.json"
echo "codec_v2_gpu: done in ${SECONDS} s"
