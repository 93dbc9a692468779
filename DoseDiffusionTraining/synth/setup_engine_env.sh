#!/usr/bin/env bash
# The pyRadPlan dose engine's own virtual environment (idempotent: a working environment is left as it is).
# pyRadPlan 0.5.0 needs pydantic < 2.14 (2.14 breaks its dose engine) and numpy < 2.4, which clash with the
# main environment, so it is never installed there: dosediffusion_training.synth.engine runs
# pyradplan_worker.py with this environment's python and exchanges .npz files with it.
# Location: ${DOSEDIFFUSION_ENGINE_ENV:-$HOME/.cache/dosediffusion-engine} (engine.engine_python() uses the same rule).
# Installs go through engine-constraints.txt beside this script (the tested set; see
# Testing/refresh_constraints.sh, which sets DOSEDIFFUSION_UNCONSTRAINED=1 to take the newest instead).
set -euo pipefail
constrain=(-c "$(cd "$(dirname "$0")" && pwd)/engine-constraints.txt")
[ -z "${DOSEDIFFUSION_UNCONSTRAINED:-}" ] || constrain=()
venv="${DOSEDIFFUSION_ENGINE_ENV:-$HOME/.cache/dosediffusion-engine}"
python="${ENGINE_PYTHON:-python3}"
packages=("pyradplan==0.5.0" "pydantic<2.14" "numpy<2.4")
check='import numpy, pydantic, pyRadPlan
from importlib.metadata import version
from pyRadPlan import PhotonPlan, validate_ct, validate_cst, generate_stf, calc_dose_influence, fluence_optimization
assert version("pyradplan") == "0.5.0", version("pyradplan")
assert tuple(int(p) for p in pydantic.VERSION.split(".")[:2]) < (2, 14), pydantic.VERSION
assert tuple(int(p) for p in numpy.__version__.split(".")[:2]) < (2, 4), numpy.__version__'
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -I -c "$check" 2>/dev/null; then
  echo "pyRadPlan engine ready: $venv"
  exit 0
fi
if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ] && [ -n "$(ls -A "$venv" 2>/dev/null)" ]; then
  echo "error: $venv exists and is not a virtual environment; not touching it" >&2
  exit 1
fi
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv" || { rm -rf "$venv"; "$python" -m venv "$venv"; }  # retry once: ensurepip can fail transiently
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "${constrain[@]}" "${packages[@]}"
"$venv/bin/python" -I -c "$check"
echo "pyRadPlan engine installed: $venv"
