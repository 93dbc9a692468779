"""prepare → model channels → restore: ranges, levels, crop placement and the exact round trip."""

import numpy as np
import pytest
from case_builders import box_case

from dosediffusion.case import Structure
from dosediffusion.conditioning.prepare import MODALITIES, PrepareConfig, prepare
from dosediffusion.conditioning.restore import restore
from dosediffusion.errors import InputError

SMALL = PrepareConfig(crop_shape=(9, 16, 32), spacing_mm=None)


def test_every_channel_is_in_range_on_the_crop_grid():
    inputs = prepare(box_case(), SMALL)
    assert tuple(inputs.channels) == MODALITIES
    for name, channel in inputs.channels.items():
        assert channel.shape == (9, 16, 32) and channel.dtype == np.float32, name
        assert channel.min() >= -1.0 and channel.max() <= 1.0, name
    assert inputs.dose_reference_gy == pytest.approx(84.0)  # 1.2 x 70 Gy


def test_crop_is_centred_on_the_isocenter_and_padded_with_background():
    case = box_case()  # 12 x 16 x 20 voxels, iso at index (6, 8, 10)
    inputs = prepare(case, SMALL)
    centre = np.array([4, 7, 15])  # (n - 1) // 2 of the crop
    np.testing.assert_allclose(inputs.crop_grid.index_to_physical(centre), case.beams[0].isocenter_mm)
    ct = inputs.channels["ct"]
    assert ct[:, :, 0].max() == -1.0 and ct[:, :, -1].max() == -1.0  # beyond the 20-voxel-wide CT: air
    assert ct[4, 7, 15] == pytest.approx(0.0)  # water (0 HU) at the centre of [-1000, 1000]


def test_ptv_levels_follow_the_prescription_ratio():
    case = box_case()
    z, y, x = np.indices(case.grid.shape)
    for name, rx, reach in (("PTV63", 63.0, 4), ("PTV56", 56.0, 5)):
        mask = (abs(z - 6) <= 2) & (abs(y - 8) <= reach) & (abs(x - 10) <= reach)
        case.structures[name] = Structure(name, mask, "ptv", rx)
    ptv = prepare(case, SMALL).channels["ptv"]
    values = sorted(set(np.round((ptv[4, 7, :] + 1) / 2, 5)))  # a row through the centre, back in [0, 1]
    assert values == [0.0, 0.8, 0.9, 1.0]


def test_round_trip_restores_the_dose_inside_the_crop_and_body():
    case = box_case()
    config = PrepareConfig(crop_shape=(13, 16, 32), spacing_mm=None)
    inputs = prepare(case, config)
    back = restore(inputs.channels["dose"], case, inputs)
    np.testing.assert_allclose(back, case.dose, rtol=1e-6, atol=1e-5)  # the crop holds the whole CT here


def test_restore_is_zero_outside_the_body_and_the_crop():
    case = box_case()
    inputs = prepare(case, PrepareConfig(crop_shape=(5, 16, 16), spacing_mm=None))
    back = restore(np.ones((5, 16, 16), np.float32), case, inputs)  # channel 1 = the reference dose
    body = case.body.mask
    assert np.all(back[~body] == 0)
    z, y, x = np.nonzero(back)
    assert (z.min(), z.max()) == (4, 8) and (x.min(), x.max()) == (3, 17)  # iso 6 - 2..+2; 10 - 7..+8, body 2..17
    assert back.max() == pytest.approx(84.0)


def test_a_ct_on_the_model_spacing_is_cropped_on_its_lattice_without_interpolation():
    case = box_case()  # 2.5 x 2.5 x 2.0 mm, iso at index (6, 8, 10)
    case.beams[0].isocenter_mm = tuple(np.asarray(case.beams[0].isocenter_mm) + [1.1, -0.6, 0.7])  # off the lattice
    inputs = prepare(case, PrepareConfig(crop_shape=(13, 16, 32), spacing_mm=(2.5, 2.5, 2.0)))
    assert inputs.aligned and inputs.crop_grid.spacing == case.grid.spacing
    np.testing.assert_allclose(inputs.crop_grid.index_to_physical(np.array([6, 7, 15])),
                               case.grid.index_to_physical(np.array([6, 8, 10])))  # the voxel nearest the iso
    np.testing.assert_allclose(restore(inputs.channels["dose"], case, inputs), case.dose, rtol=1e-6, atol=1e-5)


def test_resampled_round_trip_is_close():
    case = box_case()  # 2.5 x 2.5 x 2.0 mm
    config = PrepareConfig(crop_shape=(17, 32, 48), spacing_mm=(1.25, 1.25, 1.0))
    inputs = prepare(case, config, include_dose=True)
    back = restore(inputs.channels["dose"], case, inputs)
    inner = (slice(4, 9), slice(5, 11), slice(5, 15))  # away from the crop's edges
    np.testing.assert_allclose(back[inner], case.dose[inner], atol=2.5)  # linear interpolation twice


def test_bad_configs_and_cases_are_refused():
    with pytest.raises(InputError, match="three positive voxel counts"):
        PrepareConfig(crop_shape=(96, -128, 144))  # the codecs' own shape rules: test_model_layer.py
    with pytest.raises(InputError, match="unknown modalities"):
        PrepareConfig(modalities=("ct", "mri"))
    case = box_case()
    case.beams = []
    del case.structures["PTV70"]
    with pytest.raises(InputError, match="neither beams nor a PTV"):
        prepare(case, SMALL)


def test_config_survives_json():
    import json

    config = PrepareConfig(crop_shape=(9, 16, 32), spacing_mm=(2.0, 2.0, 2.5))
    assert PrepareConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
