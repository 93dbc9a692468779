"""Where the module's ``Resources/`` folder is: beside ``Logic/`` in the source tree and in a
Slicer install tree, inside the package in a wheel."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def resources_dir() -> Path:
    """The ``Resources`` folder (UI, scorecards, alias table, models)."""
    for candidate in (_HERE.parent / "Resources", _HERE / "Resources"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"DoseDiffusion Resources folder not found beside {_HERE}")


def resource_path(*parts: str) -> Path:
    """A path inside ``Resources`` (it may not exist)."""
    return resources_dir().joinpath(*parts)
