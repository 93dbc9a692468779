"""DoseDiffusionPipeline: a Case to a dose in Gy on the CT grid, save/load, best-of-N, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from model_builders import tiny_pipeline
from phantoms import make_phantom_case

from dosediffusion.errors import Cancelled, InputError
from dosediffusion.model.case_prediction import predict_case
from dosediffusion.model.codecs import PatchCodec
from dosediffusion.model.pipeline import DoseDiffusionPipeline


@pytest.fixture(scope="module")
def case():
    return make_phantom_case(spacing=(5.0, 5.0, 5.0))[0]


def test_predicts_a_dose_on_the_ct_grid(case):
    pipe = tiny_pipeline()
    fractions = []
    prediction = pipe(case, steps=3, seed=0, progress=lambda f, m: fractions.append(f))
    dose = prediction.dose_gy
    assert dose.shape == case.grid.shape and dose.dtype == np.float32
    assert (dose >= 0).all() and (dose[~case.body.mask] == 0).all()
    assert dose[case.body.mask].max() > 0
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert set(prediction.timing_s) >= {"prepare", "encode", "sample", "decode", "total"}
    assert prediction.peak_memory_mib > 0 and prediction.device == "cpu" and prediction.dtype == "float32"


def test_conditions_reach_the_prediction(case):
    pipe = tiny_pipeline()
    base = pipe(case, steps=2, seed=0).dose_gy
    no_beams = pipe(type(case)(**{**case.__dict__, "beams": []}), steps=2, seed=0).dose_gy
    assert np.abs(base - no_beams).mean() > 1e-3 * np.abs(base).mean()  # a real effect, not rounding


def test_save_load_round_trip_is_exact(case, tmp_path):
    pipe = tiny_pipeline(seed=3)
    folder = pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["codec"] == "PatchCodec" and index["model"] == "Any2AnyDiT" and index["target"] == "dose"
    loaded = DoseDiffusionPipeline.from_pretrained(folder)
    for key, value in pipe.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    assert loaded.preprocessing == pipe.preprocessing and loaded.scheduler.config.shift == 3.0
    assert np.array_equal(loaded(case, steps=2, seed=4).dose_gy, pipe(case, steps=2, seed=4).dose_gy)


def test_saving_over_a_folder_replaces_it_whole(tmp_path):
    folder = tmp_path / "pipe"
    tiny_pipeline(seed=1).save_pretrained(folder)
    (folder / "stale.txt").write_text("old")
    tiny_pipeline(seed=2).save_pretrained(folder)
    assert not (folder / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no staging or backup left behind


def test_best_of_n_picks_by_mae_or_scorecard(case):
    pipe = tiny_pipeline()
    prediction = pipe(case, steps=2, seed=0, num_candidates=3)
    assert len(prediction.candidates_gy) == 3
    body = case.body.mask
    maes = [np.abs(c[body] - case.dose[body]).mean() for c in prediction.candidates_gy]
    assert prediction.selected == int(np.argmin(maes))
    assert np.allclose(prediction.selection_scores, maes, rtol=1e-5)
    assert np.array_equal(prediction.dose_gy, prediction.candidates_gy[prediction.selected])
    first = pipe(case, steps=2, seed=0, num_candidates=1).dose_gy
    assert np.allclose(first, prediction.candidates_gy[0], atol=1e-3)  # candidate 0 has the single run's noise
    scored = pipe(case, steps=2, seed=0, num_candidates=3, scorecard="lung_60")
    assert scored.selected == int(np.argmax(scored.selection_scores))
    chosen = pipe(case, steps=2, seed=0, num_candidates=3, selection=lambda c, k: (2, [0.0, 0.0, 1.0]))
    assert chosen.selected == 2


def test_bad_requests_are_clear(case, tmp_path):
    pipe = tiny_pipeline()
    no_dose = type(case)(**{**case.__dict__, "dose": None})
    with pytest.raises(InputError, match="scorecard or a reference dose"):
        pipe(no_dose, steps=1, num_candidates=2)
    with pytest.raises(InputError, match="between 1 and 50"):
        pipe(case, steps=80)
    with pytest.raises(InputError, match="not a DoseDiffusion pipeline"):
        DoseDiffusionPipeline.from_pretrained(tmp_path)
    folder = pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "codec": "os.system"}))
    with pytest.raises(InputError, match="codec class 'os.system'"):
        DoseDiffusionPipeline.from_pretrained(folder)
    with pytest.raises(InputError, match="latent channels"):
        DoseDiffusionPipeline(PatchCodec((1, 1, 1)), pipe.model, pipe.scheduler, pipe.preprocessing)
    with pytest.raises(InputError, match="not divisible"):
        DoseDiffusionPipeline(PatchCodec((4, 1, 1)), pipe.model, pipe.scheduler, pipe.preprocessing)


def test_cancel_stops_the_run(case):
    with pytest.raises(Cancelled):
        tiny_pipeline()(case, steps=5, cancel=lambda: True)


def test_patch_codec_is_exact_and_saves(tmp_path):
    codec = PatchCodec((1, 2, 4))
    volume = torch.randn(2, 1, 3, 4, 8)
    latents = codec.encode(volume)
    assert latents.shape == (2, 8, 3, 2, 2)
    assert torch.equal(codec.decode(latents), volume)
    assert torch.equal(latents[0, :, 1, 0, 0], volume[0, 0, 1, :2, :4].reshape(-1))  # space-to-depth layout
    codec.save_pretrained(tmp_path)
    assert PatchCodec.from_pretrained(tmp_path).factors == (1, 2, 4)


def test_channels_are_checked_before_sampling(case):
    pipe = tiny_pipeline()
    crop = pipe.preprocessing.crop_shape
    good = np.zeros(crop, np.float32)
    assert pipe.sample_channels({"ct": good}, steps=1).shape == (1, *crop)
    for channels, message in (({"dose": good}, "not conditions"), ({"mri": good}, "not conditions"),
                              ({"ct": good[:-1]}, "crop is"), ({"ct": np.full(crop, np.nan, np.float32)}, r"in \[-1, 1\]"),
                              ({"ct": np.full(crop, 1.5, np.float32)}, r"in \[-1, 1\]"),
                              ({"ct": good.astype(np.int16)}, "floating")):
        with pytest.raises(InputError, match=message):
            pipe.sample_channels(channels, steps=1)


def test_a_sampler_stands_in_for_the_model(case):
    """The remote path: the same prepare/restore/select around another sampler gives the same dose."""
    pipe = tiny_pipeline()
    local = pipe(case, steps=2, seed=3)
    calls = []

    def sampler(channels, steps, seed, num_candidates, progress=None, cancel=None):
        calls.append(sorted(channels))
        return pipe.sample_channels(channels, steps, seed, num_candidates, device="cpu")

    remote = predict_case(sampler, case, pipe.preprocessing, steps=2, seed=3)
    assert np.array_equal(remote.dose_gy, local.dose_gy) and calls and "model" in remote.timing_s
