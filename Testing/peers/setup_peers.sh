#!/usr/bin/env bash
# Peer programs that the tests compare against, each in its own virtual environment because their
# dependencies clash with ours (idempotent: a working environment is left as it is).
#   - dicompyler-core 0.5.6 (DVH peer): needs pydicom < 3, we need pydicom 3.
# Location: ${DOSEDIFFUSION_PEERS:-$HOME/.cache/dosediffusion-peers}/<peer> (Testing/python/peers.py uses the same rule).
# Installs go through dicompyler-constraints.txt beside this script (the tested set; see
# Testing/refresh_constraints.sh, which sets DOSEDIFFUSION_UNCONSTRAINED=1 to take the newest instead).
set -euo pipefail
constrain=(-c "$(cd "$(dirname "$0")" && pwd)/dicompyler-constraints.txt")
[ -z "${DOSEDIFFUSION_UNCONSTRAINED:-}" ] || constrain=()
root="${DOSEDIFFUSION_PEERS:-$HOME/.cache/dosediffusion-peers}"
venv="$root/dicompyler"
python="${PEERS_PYTHON:-python3}"
# numpy 1.26 (dicompyler-core predates numpy 2), pydicom 2.4 (< 3), matplotlib (dvhcalc's point-in-polygon),
# scikit-image (dvhcalc's in-plane interpolation_resolution)
packages=("dicompyler-core==0.5.6" "pydicom==2.4.4" "numpy==1.26.4" "matplotlib==3.9.4" "scikit-image==0.24.0")
check='import dicompylercore, dicompylercore.dvhcalc, pydicom, skimage, matplotlib
assert dicompylercore.__version__ == "0.5.6", dicompylercore.__version__
assert pydicom.__version__.startswith("2."), pydicom.__version__'
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" 2>/dev/null; then
  echo "dicompyler-core peer ready: $venv"
  exit 0
fi
rm -rf "$venv"
mkdir -p "$root"
"$python" -m venv "$venv" || { rm -rf "$venv"; "$python" -m venv "$venv"; }  # retry once: ensurepip can fail transiently
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "${constrain[@]}" "${packages[@]}"
"$venv/bin/python" -c "$check"
echo "dicompyler-core peer installed: $venv"
