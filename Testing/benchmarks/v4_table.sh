#!/usr/bin/env bash
# The model card's table of model v4 in one command: OpenKBP validation (33 patients) and the synthetic test
# split + TG-119, each benchmark a process on its own core, then the table (model_card_table.py).
#   bash Testing/benchmarks/v4_table.sh [DIT_FOLDER] [MEDNEXT_FOLDER]
# Defaults: the bundled demo model (v4) and runs/v4-mednext/pipeline (v4-mednext-cpu.yaml). Writes
# Testing/benchmarks/results/openkbp_v4.json and demo_accuracy_v4.json (logs in $TMPDIR or /tmp); prints the table.
set -euo pipefail
cd "$(dirname "$0")/../.."
dit="${1:-demo}"
mednext="${2:-runs/v4-mednext/pipeline}"
results=Testing/benchmarks/results
if [ ! -f "$mednext/model_index.json" ]; then
    echo "no MedNeXt comparator at $mednext: train it first (75 minutes on one core):" >&2
    echo "  OMP_NUM_THREADS=1 dosediffusion-train fit --config DoseDiffusionTraining/configs/v4-mednext-cpu.yaml --out runs/v4-mednext" >&2
    exit 2
fi
export OMP_NUM_THREADS=1
python Testing/benchmarks/openkbp.py --model "v4=$dit" --regression "MedNeXt=$mednext" --steps 1 10 \
    --out "$results/openkbp_v4.json" > "${TMPDIR:-/tmp}/openkbp_v4.log" 2>&1 &
openkbp=$!
python Testing/benchmarks/demo_accuracy.py --data DoseDiffusionTraining/datasets/synth-v2/compact \
    --split DoseDiffusionTraining/datasets/synth-v2/split.json --tg119 DoseDiffusionTraining/datasets/tg119 \
    --model "v4=$dit" --regression "MedNeXt=$mednext" --steps 1 10 --candidates 1 \
    --out "$results/demo_accuracy_v4.json" > "${TMPDIR:-/tmp}/demo_accuracy_v4.log" 2>&1
wait "$openkbp"
python Testing/benchmarks/model_card_table.py --openkbp "$results/openkbp_v4.json" --synthetic "$results/demo_accuracy_v4.json"
