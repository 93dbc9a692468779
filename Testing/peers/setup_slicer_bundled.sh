#!/usr/bin/env bash
# The core's own environment as 3D Slicer 5.10 bundles it: Python 3.12, numpy 2.0.2, pydicom 2.4.4 and
# scipy 1.13.1 (Slicer 5.10 has Python 3.12.10; no torch, no psutil), so that
# Testing/python/test_core_on_slicer_packages.py runs the core's tests on them (idempotent: a working
# environment is left as it is). The core package itself is installed editable, without its
# dependencies, from this checkout.
# Python: $PEERS_PYTHON, else the first python3.12 found on PATH or in pyenv's versions (the package
# registries have no CPython build to download: without a 3.12 the script stops and says so).
# Location: ${DOSEDIFFUSION_PEERS:-$HOME/.cache/dosediffusion-peers}/slicer-bundled (Testing/python/peers.py
# uses the same rule). Installs go through slicer-bundled-constraints.txt beside this script (see
# Testing/refresh_constraints.sh, which sets DOSEDIFFUSION_UNCONSTRAINED=1 to take the newest instead).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
constrain=(-c "$here/slicer-bundled-constraints.txt")
[ -z "${DOSEDIFFUSION_UNCONSTRAINED:-}" ] || constrain=()
venv="${DOSEDIFFUSION_PEERS:-$HOME/.cache/dosediffusion-peers}/slicer-bundled"
python="${PEERS_PYTHON:-}"
if [ -z "$python" ]; then
  pyenv_root="$( (pyenv root 2>/dev/null) || echo "$HOME/.pyenv")"
  for candidate in "$(command -v python3.12 2>/dev/null || true)" "$pyenv_root"/versions/3.12*/bin/python3.12; do
    if [ -x "$candidate" ] && "$candidate" -c 'import sys, venv; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      python="$candidate"
      break
    fi
  done
fi
if [ -z "$python" ]; then
  echo "setup_slicer_bundled.sh: no Python 3.12 found (3D Slicer 5.10 bundles 3.12): install one (e.g. pyenv install 3.12) or set PEERS_PYTHON" >&2
  exit 2
fi
# Slicer's own: numpy 2.0.2, pydicom 2.4.4, scipy 1.13.1; the core's other requirements; the test tools
packages=("pydicom==2.4.4" "numpy==2.0.2" "scipy==1.13.1" "SimpleITK" "pynrrd" "jsonschema" "tqdm" "pytest" "pytest-xdist")
check='import sys, pydicom, numpy, scipy, SimpleITK, nrrd, jsonschema, pytest, dosediffusion
assert sys.version_info[:2] == (3, 12), sys.version
assert pydicom.__version__ == "2.4.4", pydicom.__version__
assert numpy.__version__ == "2.0.2", numpy.__version__
assert scipy.__version__ == "1.13.1", scipy.__version__'
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
echo "Slicer-bundled environment installed: $venv ($("$venv/bin/python" -V))"
