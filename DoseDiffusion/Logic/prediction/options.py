"""The device a prediction asks for, checked before any model is loaded."""

from __future__ import annotations

from dosediffusion.errors import InputError


def check_device(device: str) -> None:
    """Raise :class:`InputError`, before any model is loaded, when ``device`` (``auto``, ``cpu``, ``cuda``)
    names a device this machine does not have, saying which devices exist (torch is imported for
    ``cuda`` only)."""
    if device != "cuda":
        return
    import torch

    if torch.cuda.is_available():
        return
    present = ["cpu"] + (["mps (not used by DoseDiffusion)"] if torch.backends.mps.is_available() else [])
    why = "is built without CUDA" if torch.version.cuda is None else f"(CUDA {torch.version.cuda}) sees no GPU"
    raise InputError(f"--device cuda: no CUDA GPU here (torch {torch.__version__} {why}); devices here: "
                     f"{', '.join(present)}; use --device cpu or auto")
