#!/usr/bin/env bash
# Installs the real peers and tools that the test suite runs against (idempotent):
#   - Debian: dicom3tools (dciodvfy validates our DICOM), plastimatch (writes DICOM RT sets we read)
#   - the peers' own environments, where a script for them exists (Testing/peers/setup_peers.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v dciodvfy >/dev/null || need+=(dicom3tools)
command -v plastimatch >/dev/null || need+=(plastimatch)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ -f Testing/peers/setup_peers.sh ]; then
  bash Testing/peers/setup_peers.sh
fi
