"""The sampling limits every caller is held to (the remote worker's wire format uses the same), checked
before any work starts (no torch here)."""

from __future__ import annotations

from dosediffusion.errors import InputError

MAX_STEPS, MAX_CANDIDATES = 50, 16


def check_sampling_options(steps: int, num_candidates: int) -> None:
    """Raise :class:`InputError` unless 1 ≤ ``steps`` ≤ :data:`MAX_STEPS` and 1 ≤ ``num_candidates`` ≤
    :data:`MAX_CANDIDATES`."""
    if not 1 <= steps <= MAX_STEPS:
        raise InputError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
    if not 1 <= num_candidates <= MAX_CANDIDATES:
        raise InputError(f"candidates must be between 1 and {MAX_CANDIDATES}, got {num_candidates}")
