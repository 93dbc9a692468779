#!/usr/bin/env bash
# The core's own environment as 3D Slicer 5.10 bundles it: pydicom 2.4.4 and numpy 1.26 (no torch), so
# that Testing/python/test_core_on_slicer_packages.py runs the core's tests on them (idempotent: a
# working environment is left as it is). The core package itself is installed editable, without its
# dependencies, from this checkout.
# Location: ${DOSEDIFFUSION_PEERS:-$HOME/.cache/dosediffusion-peers}/slicer-bundled (Testing/python/peers.py
# uses the same rule). Installs go through slicer-bundled-constraints.txt beside this script (see
# Testing/refresh_constraints.sh, which sets DOSEDIFFUSION_UNCONSTRAINED=1 to take the newest instead).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
constrain=(-c "$here/slicer-bundled-constraints.txt")
[ -z "${DOSEDIFFUSION_UNCONSTRAINED:-}" ] || constrain=()
venv="${DOSEDIFFUSION_PEERS:-$HOME/.cache/dosediffusion-peers}/slicer-bundled"
python="${PEERS_PYTHON:-python3}"
# Slicer's own: pydicom 2.4.4, numpy 1.26; the core's other requirements; the test tools
packages=("pydicom==2.4.4" "numpy==1.26.4" "SimpleITK" "pynrrd" "jsonschema" "tqdm" "scipy" "pytest" "pytest-xdist")
check='import pydicom, numpy, SimpleITK, nrrd, jsonschema, scipy, pytest, dosediffusion
assert pydicom.__version__ == "2.4.4", pydicom.__version__
assert numpy.__version__.startswith("1.26"), numpy.__version__'
if [ -x "$venv/bin/python" ] && (cd / && "$venv/bin/python" -c "$check") 2>/dev/null; then
  echo "Slicer-bundled environment ready: $venv"
  exit 0
fi
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv" || { rm -rf "$venv"; "$python" -m venv "$venv"; }  # retry once: ensurepip can fail transiently
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "${constrain[@]}" "${packages[@]}"
"$venv/bin/python" -m pip install -q --no-deps -e "$here/../.."
(cd / && "$venv/bin/python" -c "$check")
echo "Slicer-bundled environment installed: $venv"
