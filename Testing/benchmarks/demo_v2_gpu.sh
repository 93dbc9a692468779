#!/usr/bin/env bash
# Issue 16's GPU run, one call of the device tool (373 s on one H200, measured): the demo model v2 with
# finer tokens (DoseDiffusionTraining/configs/demo-v2-gpu.yaml) and its MedNeXt comparator
# (demo-v2-mednext-gpu.yaml) trained side by side on the GPU for the same MINUTES (default 4), then the
# comparison table (demo_accuracy.py: held-out cases per site and TG-119, 1 and 10 steps, best of 4).
# On the bare GPU image it first installs the wheels carried in .whl/ and this package into /tmp/site.
# Written to $OUT (the device tool brings it back; else runs/demo-v2-gpu): the DiT's pipeline folder without
# the codec (committed) as dit_pipeline.tar, both loss logs, both tables as JSON, the training logs.
#   device run:  bash Testing/benchmarks/demo_v2_gpu.sh          (carry .whl)
#   a CPU check: MINUTES=0.2 MAX_CASES=1 bash Testing/benchmarks/demo_v2_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-runs/demo-v2-gpu}"
work=runs/demo-v2-gpu-work
minutes="${MINUTES:-4}"
cases="${MAX_CASES:-100}"
device=$(python3 -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
rm -rf "$work" && mkdir -p "$out" "$work"
source Testing/benchmarks/gpu_image_env.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-6}"
[ "$device" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for name in demo-v2-gpu demo-v2-mednext-gpu; do
  sed "s/^  max_minutes: .*/  max_minutes: $minutes/" "DoseDiffusionTraining/configs/$name.yaml" > "$work/$name.yaml"
done
SECONDS=0
dosediffusion-train cache-latents --config "$work/demo-v2-gpu.yaml" --out data/latents-v2-gpu --device "$device" 2>&1 | tail -n 1
echo "latents: ${SECONDS} s"
dosediffusion-train fit --config "$work/demo-v2-gpu.yaml" --out "$work/dit" > "$out/fit_dit.log" 2>&1 &
dit=$!
dosediffusion-train fit --config "$work/demo-v2-mednext-gpu.yaml" --out "$work/mednext" > "$out/fit_mednext.log" 2>&1 &
mednext=$!
wait "$dit" && wait "$mednext"
echo "training: ${SECONDS} s; steps: DiT $(tail -n 1 "$work/dit/loss.jsonl"), MedNeXt $(tail -n 1 "$work/mednext/loss.jsonl")"
tar -C "$work/dit/pipeline" -cf "$out/dit_pipeline.tar" --exclude=./codec .
cp "$work/dit/loss.jsonl" "$out/dit_loss.jsonl"
cp "$work/mednext/loss.jsonl" "$out/mednext_loss.jsonl"
table=(python3 Testing/benchmarks/demo_accuracy.py --data DoseDiffusionTraining/datasets/synth-v2/compact
       --split DoseDiffusionTraining/datasets/synth-v2/split.json --tg119 DoseDiffusionTraining/datasets/tg119
       --device "$device" --max-cases "$cases")
"${table[@]}" --model "v2 GPU=$work/dit/pipeline" --steps 1 10 --candidates 4 --out "$out/accuracy_dit.json" \
  > "$work/accuracy_dit.txt" 2>&1 &
dit=$!
"${table[@]}" --regression "MedNeXt GPU=$work/mednext/pipeline" --out "$out/accuracy_mednext.json" \
  > "$work/accuracy_mednext.txt" 2>&1 &
mednext=$!
wait "$dit" && wait "$mednext"
cat "$work/accuracy_dit.txt" "$work/accuracy_mednext.txt"
echo "demo_v2_gpu: done in ${SECONDS} s; results in $out"
