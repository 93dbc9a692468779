"""How the dose channels go to a model grid off the CT lattice and back (``dose_interpolation``): linear,
or a cubic B-spline both ways, which keeps more of a smooth dose on a coarse grid; saved with a model, and a
folder saved before the setting reads linear."""

from __future__ import annotations

import numpy as np
import pytest
from case_builders import box_case

from dosediffusion.conditioning.prepare import PrepareConfig, from_crop, prepare
from dosediffusion.conditioning.restore import restore
from dosediffusion.errors import InputError


def _smooth_dose_case():
    """The box phantom on a finer grid with a smooth dose: a Gaussian of 70 Gy (sigma 12 mm) at the isocentre."""
    case = box_case(shape=(24, 32, 40), spacing=(1.25, 1.25, 1.0), origin=(-20.0, -15.0, 5.0))
    centre = np.asarray(case.beams[0].isocenter_mm)
    points = case.grid.index_to_physical(np.moveaxis(np.indices(case.grid.shape), 0, -1))
    r2 = np.sum((points - centre) ** 2, axis=-1)
    case.dose = (70.0 * np.exp(-r2 / (2 * 12.0**2))).astype(np.float32)
    return case


def _round_trip_error(case, interpolation: str) -> float:
    """Mean |dose − restore(prepare(dose))| (Gy) over the body voxels between the model grid's voxel centres
    (its outermost voxels left out: beyond their centres either kernel extrapolates)."""
    config = PrepareConfig(crop_shape=(6, 8, 10), spacing_mm=(3.1, 3.1, 2.9), modalities=("dose",),
                           dose_interpolation=interpolation)
    inputs = prepare(case, config)
    assert inputs.dose_interpolation == interpolation and not inputs.aligned
    restored = restore(inputs.channels["dose"], case, inputs)
    inner = np.zeros(inputs.crop_grid.shape, np.float32)
    inner[1:-1, 1:-1, 1:-1] = 1.0
    counted = (from_crop(inner, case, inputs) > 0.999) & case.body.mask
    assert counted.sum() > 1000
    return float(np.abs(restored - case.dose)[counted].mean())


def test_a_bspline_round_trip_keeps_more_of_a_smooth_dose_than_a_linear_one():
    case = _smooth_dose_case()
    linear, bspline = _round_trip_error(case, "linear"), _round_trip_error(case, "bspline")
    assert bspline < 0.5 * linear and linear > 0.05


def test_the_setting_is_saved_and_a_folder_saved_before_it_reads_linear():
    config = PrepareConfig(dose_interpolation="bspline")
    assert PrepareConfig.from_dict(config.to_dict()).dose_interpolation == "bspline"
    older = {k: v for k, v in PrepareConfig().to_dict().items() if k != "dose_interpolation"}
    assert PrepareConfig.from_dict(older).dose_interpolation == "linear"
    with pytest.raises(InputError, match="dose_interpolation must be one of linear, bspline, got 'cubic'"):
        PrepareConfig(dose_interpolation="cubic")
