"""The predicted dose channel back onto the CT grid: the inverse of
:func:`~dosediffusion.conditioning.prepare.prepare`'s ``dose`` channel."""

from __future__ import annotations

import numpy as np

from dosediffusion.case import Case
from dosediffusion.conditioning.prepare import ModelInputs, from_crop
from dosediffusion.errors import InputError


def restore(dose_channel: np.ndarray, case: Case, inputs: ModelInputs) -> np.ndarray:
    """A dose channel on the crop grid → dose in Gy on the CT grid, zero outside the case's dose support
    (the possible-dose mask where the source gives one, else the body; see
    :meth:`~dosediffusion.case.Case.dose_support`); negative doses are set to zero. A residual channel
    (``inputs.prior_gy`` set) is added to the prior on the CT grid, so outside the field of view the dose
    is the prior's; a dose channel is zero there. Off the CT lattice the channel is resampled as the model's
    preprocessing says (:attr:`ModelInputs.dose_interpolation`)."""
    dose_channel = np.asarray(dose_channel, dtype=np.float32)
    if dose_channel.shape != inputs.crop_grid.shape:
        raise InputError(f"dose channel shape {dose_channel.shape} does not match the crop {inputs.crop_grid.shape}")
    if inputs.prior_gy is None:
        gy = from_crop((dose_channel + 1.0) * np.float32(inputs.dose_reference_gy / 2.0), case, inputs,
                       inputs.dose_interpolation)
    else:
        gy = inputs.prior_gy + from_crop(dose_channel * np.float32(inputs.dose_reference_gy / 2.0), case, inputs,
                                         inputs.dose_interpolation)
    dose = np.clip(gy, 0.0, None)
    support = case.dose_support()
    if support is not None:
        dose[~support] = 0.0
    return dose
