"""The learned codec: a small AutoencoderKLWan trained on the modalities, frozen, saved in the pipeline
folder like the Wan VAE, and used by a diffusion run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from training_data import write_training_cases

from dosediffusion.errors import InputError
from dosediffusion.model.codecs import WanVAECodec
from dosediffusion.model.pipeline import DoseDiffusionPipeline
from dosediffusion_training.cli import main
from dosediffusion_training.data.dataset import PreparedCases, list_cases, make_split
from dosediffusion_training.synth.phantom import make_phantom
from dosediffusion_training.training.codec_training import (
    CodecConfig,
    fit_codec,
    new_vae,
    reconstruction_mae,
    training_patches,
    unclamped_decode,
)

VAE = {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 2], "num_res_blocks": 1, "temperal_downsample": [False],
       "scale_factor_temporal": 1, "scale_factor_spatial": 2}
PREPROCESSING = {"crop_shape": [9, 32, 32], "spacing_mm": [5.0, 5.0, 5.0]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = write_training_cases(tmp_path_factory.mktemp("compact"), range(4), (12, 32, 40))
    (folder.parent / "split.json").write_text(json.dumps(make_split(list_cases(folder), (0.5, 0.25, 0.25), seed=0)))
    return folder


def _config(tmp_path, data, **train) -> CodecConfig:
    raw = {"data": {"folder": str(data), "split_file": str(data.parent / "split.json")}, "preprocessing": PREPROCESSING,
           "vae": VAE, "train": {"steps": 30, "batch_size": 2, "learning_rate": 1e-3, "patch_shape": [5, 16, 16],
                                 "log_every": 10, **train}}
    path = tmp_path / "codec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return CodecConfig.from_yaml(path)


def test_the_codec_learns_and_normalises_its_latents(tmp_path, data):
    config = _config(tmp_path, data)
    folder = fit_codec(config, tmp_path / "codec")
    losses = [json.loads(line)["l1"] for line in (tmp_path / "codec" / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 30 and all(np.isfinite(losses))
    codec = WanVAECodec.from_pretrained(folder)
    assert (codec.latent_channels, codec.in_channels) == (4, 1)
    assert codec.latent_shape((9, 32, 32)) == (9, 16, 16)
    split = json.loads((data.parent / "split.json").read_text())
    cases = PreparedCases(list_cases(data, data.parent / "split.json", "train"), config.preprocessing)
    latents = torch.cat([codec.encode(v[None]) for i in range(len(cases)) for v in cases[i].values()])
    per_channel = latents.transpose(0, 1).reshape(4, -1)
    np.testing.assert_allclose(per_channel.mean(1), 0.0, atol=1e-3)  # the stats the codec was given
    np.testing.assert_allclose(per_channel.std(1), 1.0, atol=1e-2)
    report = json.loads((tmp_path / "codec" / "reconstruction.json").read_text())
    assert report["cases"] == len(split["val"]) + len(split["test"]) and report["held_out"]
    assert set(report["mae"]) == {*cases[0], "dose_gy", "dose_ptv_gy"}
    volume = cases[0]["dose"][None]
    direct = float((codec.decode(codec.encode(volume)) - volume).abs().mean())
    assert 0 < direct < 0.5 and all(0 < v < 1 for k, v in report["mae"].items() if not k.endswith("_gy"))
    torch.manual_seed(0)  # the same start, untrained: the training lowered the held-out error
    held_out = [p for part in ("val", "test") for p in list_cases(data, data.parent / "split.json", part)]
    untrained = reconstruction_mae(WanVAECodec(new_vae(VAE)), held_out, config.preprocessing)
    trained = np.mean([v for k, v in report["mae"].items() if not k.endswith("_gy")])
    assert trained < 0.7 * np.mean([v for k, v in untrained.items() if not k.endswith("_gy")]), (report["mae"], untrained)
    assert report["mae"]["dose_ptv_gy"] < untrained["dose_ptv_gy"]


def test_a_run_trains_on_the_learned_codec_and_its_pipeline_predicts(tmp_path, data):
    fit_codec(_config(tmp_path, data, steps=50, max_minutes=1e-9), tmp_path / "codec")  # the budget ends it
    assert len((tmp_path / "codec" / "loss.jsonl").read_text().splitlines()) == 1
    raw = {"data": {"folder": str(data)}, "preprocessing": PREPROCESSING,
           "codec": {"type": "wan_vae", "path": str(tmp_path / "codec" / "vae")},
           "model": {"size": "tiny", "patch_size": [1, 2, 2]},
           "train": {"steps": 2, "batch_size": 1, "warmup_steps": 1, "checkpoint_every": 2, "tensorboard": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    assert main(["fit", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run")]) == 0
    pipe = DoseDiffusionPipeline.from_pretrained(tmp_path / "run" / "pipeline")  # the codec travels with it
    assert isinstance(pipe.codec, WanVAECodec) and pipe.codec.latent_channels == 4
    case = make_phantom(7, shape=(12, 32, 40))
    assert pipe(case, steps=1).dose_gy.shape == case.grid.shape


def test_bad_codec_configurations_are_refused_before_training(tmp_path, data, capsys):
    with pytest.raises(InputError, match="patch_shape .* does not fit the VAE"):
        _config(tmp_path, data, patch_shape=[6, 16, 16])
    with pytest.raises(InputError, match="larger than the crop"):
        _config(tmp_path, data, patch_shape=[13, 16, 16])
    with pytest.raises(InputError, match=r"unknown: \['lr'\]"):
        _config(tmp_path, data, lr=1)
    (tmp_path / "taken").mkdir()
    _config(tmp_path, data)
    assert main(["fit-codec", "--config", str(tmp_path / "codec.yaml"), "--out", str(tmp_path / "taken")]) == 2
    assert "exists already" in capsys.readouterr().err


SHIPPED_CODECS = sorted((Path(__file__).resolve().parents[2] / "DoseDiffusionTraining" / "configs" / "codec").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_CODECS, ids=lambda p: p.name)
def test_the_shipped_codec_configurations_read_and_fit_their_crop(path):
    config = CodecConfig.from_yaml(path)
    codec = WanVAECodec(new_vae(config.vae))
    assert codec.latent_shape(tuple(config.preprocessing.crop_shape)) == (33, 12, 16)
    assert codec.latent_channels == 8 and codec.in_channels == 1


def test_training_sees_the_decoder_before_its_clamp():
    torch.manual_seed(0)
    vae = new_vae(VAE)
    latents = 5 * torch.randn(2, 4, 5, 8, 8)  # large: the decoder overshoots [-1, 1] somewhere
    raw = unclamped_decode(vae, latents)
    with torch.no_grad():
        clamped = vae.decode(latents).sample
    assert raw.shape == clamped.shape == (2, 1, 5, 16, 16)
    assert torch.allclose(raw.clamp(-1, 1), clamped, atol=1e-6) and raw.abs().max() > 1


def test_dose_share_draws_that_share_of_patches_from_the_dose(tmp_path, data):
    config = _config(tmp_path, data, batch_size=64)
    dataset = PreparedCases(list_cases(data), config.preprocessing)
    doses = [dataset[i]["dose"] for i in range(len(dataset))]

    def dose_patches(share: float) -> int:
        config.train.dose_share = share
        patches = training_patches(dataset, 0, config.train)
        return sum(any(_is_sub_volume(p, d) for d in doses) for p in patches)

    assert dose_patches(1.0) == 64
    assert dose_patches(0.0) < 32  # one modality of seven, by chance (or a patch alike in two)
    assert 32 <= dose_patches(0.5) < 64


def _is_sub_volume(patch: torch.Tensor, volume: torch.Tensor) -> bool:
    windows = volume.unfold(1, patch.shape[1], 1).unfold(2, patch.shape[2], 1).unfold(3, patch.shape[3], 1)
    return bool((windows == patch[:, None, None, None]).all(dim=(-3, -2, -1)).any())


def test_a_stopped_codec_run_resumes_where_its_checkpoint_stands(tmp_path, data):
    straight = fit_codec(_config(tmp_path, data, steps=4, checkpoint_every=2, tensorboard=False), tmp_path / "a")
    fit_codec(_config(tmp_path, data, steps=4, checkpoint_every=2, tensorboard=False), tmp_path / "b")
    run = tmp_path / "b"  # as if it had been killed after step 2's checkpoint
    shutil.rmtree(run / "vae")
    shutil.rmtree(run / "checkpoints" / "step_4")
    (run / "reconstruction.json").unlink()
    (run / "loss.jsonl").write_text("".join((run / "loss.jsonl").read_text().splitlines(keepends=True)[:2]))
    resumed = fit_codec(_config(tmp_path, data, steps=4, checkpoint_every=2, tensorboard=False), run)
    a, b = (WanVAECodec.from_pretrained(f).vae.state_dict() for f in (straight, resumed))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(line)["step"] for line in (run / "loss.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    with pytest.raises(InputError, match="exists already"):  # a finished codec is never overwritten
        fit_codec(_config(tmp_path, data, steps=4), run)
