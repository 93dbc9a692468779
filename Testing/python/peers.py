"""The peer programs the tests compare against, each run in its own virtual environment.

The environments are made by ``Testing/peers/setup_peers.sh`` and ``setup_slicer_bundled.sh`` (called by
``bash Testing/install_test_deps.sh``) under ``$DOSEDIFFUSION_PEERS`` (default
``~/.cache/dosediffusion-peers``). A missing peer is an error, not a skip: CI installs it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

PEERS_DIR = Path(__file__).resolve().parents[1] / "peers"


class PeerMissingError(RuntimeError):
    """A peer's environment is not installed."""


def peers_root() -> Path:
    """Folder holding the peers' virtual environments (same rule as ``setup_peers.sh``)."""
    return Path(os.environ.get("DOSEDIFFUSION_PEERS") or Path.home() / ".cache" / "dosediffusion-peers")


def peer_python(name: str, setup: str) -> Path:
    """The python of the environment ``name`` that ``Testing/peers/<setup>`` makes; :class:`PeerMissingError`
    when it is not there."""
    python = peers_root() / name / "bin" / "python"
    if not python.is_file():
        raise PeerMissingError(f"the {name} environment is not installed ({python} missing): run "
                               f"`bash Testing/install_test_deps.sh` (or `bash Testing/peers/{setup}`)")
    return python


def dicompyler_python() -> Path:
    """The python of the dicompyler-core peer."""
    return peer_python("dicompyler", "setup_peers.sh")


def slicer_bundled_python() -> Path:
    """The python of the environment with 3D Slicer's bundled packages."""
    return peer_python("slicer-bundled", "setup_slicer_bundled.sh")


def dicompyler_dvh(rtstruct: str | os.PathLike, rtdose: str | os.PathLike, *, rois: list[str] | None = None,
                   resolution_divisor: int = 1, segments: int = 0, timeout_s: float = 600.0) -> dict[str, dict]:
    """dicompyler-core's DVH statistics per ROI name of an RTSTRUCT/RTDOSE pair.

    Runs ``Testing/peers/dicompyler_dvh.py`` in the peer environment (see its docstring for the
    ``get_dvh`` settings). Returns ``{name: {volume_cc, mean_gy, max_gy, min_gy, d95_gy, d98_gy,
    d2_gy, seconds}}``: doses in Gy, volume in cc, ``seconds`` the peer's own time for that ROI.
    """
    command = [str(dicompyler_python()), str(PEERS_DIR / "dicompyler_dvh.py"), str(rtstruct), str(rtdose),
               "--resolution-divisor", str(resolution_divisor), "--segments", str(segments)]
    for name in rois or []:
        command += ["--roi", name]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"dicompyler-core peer took longer than {timeout_s:.0f} s") from None
    if done.returncode != 0:
        raise RuntimeError(f"dicompyler-core peer failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)
