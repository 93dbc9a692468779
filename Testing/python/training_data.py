"""Small training sets for tests: synthetic phantoms with a stand-in dose, as compact files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from dosediffusion.io.compact import write_compact
from dosediffusion_training.synth.phantom import make_phantom


def stand_in_dose(case) -> np.ndarray:
    """A dose (Gy) that depends on the anatomy: each PTV's prescription inside it, blurred, zero
    outside the body (no dose engine needed)."""
    dose = np.zeros(case.grid.shape, np.float32)
    for ptv in case.with_role("ptv"):
        dose = np.maximum(dose, ptv.mask * np.float32(ptv.prescription_gy))
    return (ndimage.gaussian_filter(dose, 2.0) * case.body.mask).astype(np.float32)


def write_training_cases(folder: Path, seeds, shape: tuple[int, int, int]) -> Path:
    """Compact files of phantoms ``seeds`` on a ``shape`` grid with :func:`stand_in_dose`."""
    for seed in seeds:
        case = make_phantom(seed, shape=shape)
        case.dose = stand_in_dose(case)
        write_compact(case, Path(folder) / f"{case.case_id}.case.npz")
    return Path(folder)
