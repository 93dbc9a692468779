#!/usr/bin/env bash
# The core's own environment as 3D Slicer 5.10 bundles it: Python 3.12, numpy 2.0.2, pydicom 2.4.4 and
# scipy 1.13.1 (Slicer 5.10 has Python 3.12.10; no torch, no psutil), so that
# Testing/python/test_core_on_slicer_packages.py runs the core's tests on them (idempotent: a working
# environment is left as it is). The core package itself is installed editable, without its
# dependencies, from this checkout.
# Python: $PEERS_PYTHON, else the first python3.12 found on PATH or in pyenv's versions. The package
# registries have no CPython build to download: without a 3.12 the environment is made with python3,
# the script says so, and the venv holds the file python-3.12-missing (the test then warns instead of
# checking the Python version).
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
python="${python:-python3}"
wanted_python='assert sys.version_info[:2] == (3, 12), sys.version'
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
  wanted_python='pass'
  echo "setup_slicer_bundled.sh: no Python 3.12 found (3D Slicer 5.10 bundles 3.12.10): using $("$python" -V); install a 3.12 (e.g. pyenv install 3.12) or set PEERS_PYTHON to test on it" >&2
fi
# Slicer's own: numpy 2.0.2, pydicom 2.4.4, scipy 1.13.1; the core's other requirements; the test tools
packages=("pydicom==2.4.4" "numpy==2.0.2" "scipy==1.13.1" "SimpleITK" "pynrrd" "jsonschema" "tqdm" "pytest" "pytest-xdist")
check="import sys, pydicom, numpy, scipy, SimpleITK, nrrd, jsonschema, pytest, dosediffusion
$wanted_python
assert pydicom.__version__ == '2.4.4', pydicom.__version__
assert numpy.__version__ == '2.0.2', numpy.__version__
assert scipy.__version__ == '1.13.1', scipy.__version__"
mark() {  # python-3.12-missing in the venv exactly when it is not on Python 3.12
  if [ "$wanted_python" = pass ]; then touch "$venv/python-3.12-missing"; else rm -f "$venv/python-3.12-missing"; fi
}
if [ -x "$venv/bin/python" ] && (cd / && "$venv/bin/python" -c "$check") 2>/dev/null; then
  mark
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
mark
echo "Slicer-bundled environment installed: $venv ($("$venv/bin/python" -V))"
