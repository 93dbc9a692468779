"""Fit the prior's correction on a run's training cases, once, before anything is prepared.

With ``train.prior_correction_cases`` N > 0, :func:`with_prior_correction` fits a
:class:`~dosediffusion.conditioning.prior_correction.PriorCorrection` on N of the training cases (evenly
spaced over the training list, so every source is represented; each dose as its source's rule says),
writes it to ``OUT/prior_correction.json`` and returns the run's configuration with the correction in
its preprocessing: the prepared inputs, the residual target and the saved pipeline folder all carry it.
A resumed run reads the file instead of fitting again.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from dosediffusion.conditioning.prior_correction import PriorCorrection
from dosediffusion.conditioning.prior_dose import prior_dose
from dosediffusion.io.atomic import atomic_write
from dosediffusion_training.data import sources
from dosediffusion_training.data.dataset import PreparedCases
from dosediffusion_training.training.config import RunConfig

FILE_NAME = "prior_correction.json"


def fitting_indices(n_cases: int, wanted: int) -> list[int]:
    """``wanted`` indices spread evenly over ``range(n_cases)`` (all of them when there are fewer)."""
    return sorted({int(i) for i in np.linspace(0, n_cases - 1, min(wanted, n_cases)).round()})


def with_prior_correction(config: RunConfig, paths: list[Path], out: str | Path) -> RunConfig:
    """``config`` with its preprocessing's prior correction fitted (or read back), or as it is when the run
    fits none."""
    wanted = config.train.prior_correction_cases
    if not wanted:
        return config
    saved = Path(out) / FILE_NAME
    if saved.exists():
        correction = json.loads(saved.read_text())
    else:
        cases = PreparedCases(paths, config.preprocessing, config.data.get("cache_dir"), 0, sources.dose_rules(config.data))
        chosen = (cases.case(i) for i in fitting_indices(len(paths), wanted))
        correction = PriorCorrection.fit((case, prior_dose(case)) for case in chosen).to_dict()
        atomic_write(saved, lambda tmp: tmp.write_text(json.dumps(correction)))
    preprocessing = dataclasses.replace(config.preprocessing, prior_correction=correction)
    return dataclasses.replace(config, preprocessing=preprocessing)
