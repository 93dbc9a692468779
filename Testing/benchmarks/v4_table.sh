#!/usr/bin/env bash
# The model card's table of model v4 in one command: OpenKBP validation (33 patients) and the synthetic test
# split + TG-119, each benchmark a process on its own core, then the table (model_card_table.py).
#   bash Testing/benchmarks/v4_table.sh [DIT_FOLDER] [MEDNEXT_FOLDER] [NAME]
# Defaults: the bundled demo model, runs/v4-mednext/pipeline (v4-mednext-cpu.yaml) and the name v4. Writes
# Testing/benchmarks/results/openkbp_TAG.json and demo_accuracy_TAG.json, TAG the name without its dots (v4.3: v43;
# logs in $TMPDIR or /tmp); prints the table.
set -euo pipefail
cd "$(dirname "$0")/../.."
dit="${1:-demo}"
mednext="${2:-runs/v4-mednext/pipeline}"
name="${3:-v4}"
tag="${name//./}"
results=Testing/benchmarks/results
if [ ! -f "$mednext/model_index.json" ]; then
    echo "no MedNeXt comparator at $mednext: train it first (75 minutes on one core):" >&2
    echo "  OMP_NUM_THREADS=1 dosediffusion-train fit --config DoseDiffusionTraining/configs/v4-mednext-cpu.yaml --out runs/v4-mednext" >&2
    exit 2
fi
export OMP_NUM_THREADS=1
python Testing/benchmarks/openkbp.py --model "$name=$dit" --regression "MedNeXt=$mednext" --steps 1 10 \
    --out "$results/openkbp_$tag.json" > "${TMPDIR:-/tmp}/openkbp_$tag.log" 2>&1 &
openkbp=$!
python Testing/benchmarks/demo_accuracy.py --data DoseDiffusionTraining/datasets/synth-v2/compact \
    --split DoseDiffusionTraining/datasets/synth-v2/split.json --tg119 DoseDiffusionTraining/datasets/tg119 \
    --model "$name=$dit" --regression "MedNeXt=$mednext" --steps 1 10 --candidates 1 \
    --out "$results/demo_accuracy_$tag.json" > "${TMPDIR:-/tmp}/demo_accuracy_$tag.log" 2>&1
wait "$openkbp"
python Testing/benchmarks/model_card_table.py --openkbp "$results/openkbp_$tag.json" --synthetic "$results/demo_accuracy_$tag.json"
