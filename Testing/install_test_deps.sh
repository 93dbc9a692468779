#!/usr/bin/env bash
# Installs the real peers and tools that the test suite runs against (idempotent):
#   - Debian: dicom3tools (dciodvfy validates our DICOM), plastimatch (writes DICOM RT sets we read)
#   - pymedphys (gamma peer), and the peers' own environments where a script for them exists
#     (Testing/peers/setup_peers.sh).
# Python packages go through the committed constraints file (constraints.txt), the set the suite passed
# with; Testing/refresh_constraints.sh sets DOSEDIFFUSION_UNCONSTRAINED=1 to take the newest instead.
set -euo pipefail
cd "$(dirname "$0")/.."
constrain=(-c constraints.txt)
[ -z "${DOSEDIFFUSION_UNCONSTRAINED:-}" ] || constrain=()
need=()
command -v dciodvfy >/dev/null || need+=(dicom3tools)
command -v plastimatch >/dev/null || need+=(plastimatch)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# pymedphys' gamma (compared against ours) needs numba; both are test-only and leave torch alone
python -c "import pymedphys, numba" 2>/dev/null || pip install -q "${constrain[@]}" "pymedphys==0.41.0" "numba>=0.60"
if [ -f Testing/peers/setup_peers.sh ]; then
  bash Testing/peers/setup_peers.sh
fi
# the core on the packages 3D Slicer 5.10 bundles (Python 3.12, numpy 2.0.2, pydicom 2.4.4, scipy 1.13.1), in its own virtual environment
bash Testing/peers/setup_slicer_bundled.sh
# slicer-core: a real MRML scene (volumes, segmentations, tables, plots) for the Slicer module's scene logic
python -c "import slicer" 2>/dev/null || pip install -q "${constrain[@]}" slicer-core
# pyRadPlan (the dose engine behind dosediffusion-train synth) in its own virtual environment
bash DoseDiffusionTraining/synth/setup_engine_env.sh
