"""The sampling limits every caller is held to (the remote worker's wire format uses the same), checked
before any work starts."""

from __future__ import annotations

from dosediffusion.errors import InputError

MAX_STEPS, MAX_CANDIDATES = 50, 16


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


def check_sampling_options(steps: int, num_candidates: int) -> None:
    """Raise :class:`InputError` unless 1 ≤ ``steps`` ≤ :data:`MAX_STEPS` and 1 ≤ ``num_candidates`` ≤
    :data:`MAX_CANDIDATES`."""
    if not 1 <= steps <= MAX_STEPS:
        raise InputError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
    if not 1 <= num_candidates <= MAX_CANDIDATES:
        raise InputError(f"candidates must be between 1 and {MAX_CANDIDATES}, got {num_candidates}")
