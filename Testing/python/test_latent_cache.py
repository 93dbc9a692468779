"""The latent cache (cache-latents, LatentCases) and the bounded RAM of PreparedCases."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import yaml
from model_builders import save_tiny_wan
from training_data import write_training_cases

from dosediffusion.errors import InputError
from dosediffusion.model.pipeline import DoseDiffusionPipeline
from dosediffusion_training.cli import main
from dosediffusion_training.data import latent_cache
from dosediffusion_training.data.dataset import PreparedCases, list_cases, load_any
from dosediffusion_training.data.latent_cache import INDEX, build_latent_cache, open_latent_cache
from dosediffusion_training.training.config import RunConfig
from dosediffusion_training.training.loop import build_codec, flips, train, training_cases

TINY_SHARD_GIB = 6e-4  # ~640 kB: one case of seven patch-codec latents (16, 9, 8, 8) in both orientations (~520 kB)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_training_cases(tmp_path_factory.mktemp("compact"), range(6), (20, 40, 48))


def _config(tmp_path, data, name="run.yaml", codec=None, preprocessing=None, data_keys=None, **train) -> RunConfig:
    raw = {"data": {"folder": str(data), **(data_keys or {})},
           "preprocessing": {"crop_shape": [9, 32, 32], "spacing_mm": [5.0, 5.0, 5.0], **(preprocessing or {})},
           "codec": codec or {"type": "patch", "factors": [1, 4, 4]}, "model": {"size": "tiny", "patch_size": [1, 2, 2]},
           "train": {"steps": 4, "batch_size": 2, "learning_rate": 2e-3, "warmup_steps": 1, "checkpoint_every": 4,
                     "tensorboard": False, **train}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return RunConfig.from_yaml(path)


def _build(config, out, **options):
    return build_latent_cache(config, build_codec(config), training_cases(config), out, **options)


# a shard size that holds two cases (seven modalities, both orientations): patch latents (16, 9, 8, 8),
# the tiny VAE's (4, 3, 4, 4)
@pytest.mark.parametrize(("codec", "shard_gib"), [({"type": "patch", "factors": [1, 4, 4]}, 1.1e-3),
                                                  ("wan_vae", 2.5e-5)])
def test_cached_latents_are_the_encodings_of_the_volumes_and_their_mirror_images(tmp_path, data, codec, shard_gib):
    if codec == "wan_vae":  # a tiny random Wan VAE: not flip-equivariant
        save_tiny_wan(tmp_path / "wan")
        codec = {"type": "wan_vae", "path": str(tmp_path / "wan" / "vae")}
    config = _config(tmp_path, data, codec=codec, data_keys={"latent_cache": str(tmp_path / "cache")},
                     flip_lr_probability=0.5)
    done = _build(config, tmp_path / "cache", shard_gib=shard_gib)
    assert done["cases"] == done["encoded"] == 6 and done["shards"] == 3
    cases = open_latent_cache(config, build_codec(config), training_cases(config))
    prepared = PreparedCases(training_cases(config), config.preprocessing)
    codec = build_codec(config)
    tolerance = 0 if config.codec["type"] == "patch" else 1e-5  # VAE: batched convolutions round differently
    for i in (0, 3, 5):  # in each of the three shards
        volumes = prepared[i]
        plain, mirrored = cases.item(i), cases.item(i, flipped=True)
        assert list(plain) == list(mirrored) == list(volumes)  # the prepared modalities, in their order
        for m, volume in volumes.items():
            torch.testing.assert_close(plain[m], codec.encode(volume[None])[0], rtol=0, atol=tolerance)
            torch.testing.assert_close(mirrored[m], codec.encode(volume.flip(-1)[None])[0], rtol=0, atol=tolerance)
            assert list(plain[m].shape) == cases.entries[i]["shape"]
    if config.codec["type"] == "wan_vae":
        assert not torch.allclose(mirrored["ct"], plain["ct"].flip(-1), atol=1e-3)  # why mirror images are cached


@pytest.mark.parametrize("stage", ["A", "B"])
def test_training_from_the_cache_is_training_without_it(tmp_path, data, stage):
    settings = {"stage": stage, "curriculum_steps": 2, "flip_lr_probability": 0.5, "seed": 4}
    plain = _config(tmp_path, data, **settings)
    assert len({flips(step, plain.train) for step in range(4)}) == 2  # mirrored and plain steps both
    _build(plain, tmp_path / "cache")
    cached = _config(tmp_path, data, "cached.yaml", data_keys={"latent_cache": str(tmp_path / "cache")}, **settings)
    a = DoseDiffusionPipeline.from_pretrained(train(plain, tmp_path / "plain")).model.state_dict()
    b = DoseDiffusionPipeline.from_pretrained(train(cached, tmp_path / "cached")).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_cache_made_for_another_run_is_refused(tmp_path, data):
    config = _config(tmp_path, data)
    _build(config, tmp_path / "cache")
    keys = {"latent_cache": str(tmp_path / "cache")}

    def refusal(**changes) -> str:
        other = _config(tmp_path, data, "other.yaml", data_keys=keys, **changes)
        with pytest.raises(InputError) as error:
            open_latent_cache(other, build_codec(other), training_cases(other))
        assert "dosediffusion-train cache-latents" in str(error.value)
        return str(error.value)

    assert "preprocessing.hu_clip: cache [-1000.0, 1000.0], run [-500.0, 500.0]" in refusal(
        preprocessing={"hu_clip": [-500.0, 500.0]})
    assert "codec.factors: cache [1, 4, 4], run [1, 2, 2]" in refusal(codec={"type": "patch", "factors": [1, 2, 2]})
    assert "no mirrored latents" in refusal(flip_lr_probability=0.5)
    split = tmp_path / "split.json"
    split.write_text('{"train": ["synth_00000", "synth_00002"]}')
    other = _config(tmp_path, data, "split.yaml", data_keys={**keys, "split_file": str(split)})
    with pytest.raises(InputError, match=r"cases: 0 only in the run \[\], 4 only in the cache"):
        open_latent_cache(other, build_codec(other), training_cases(other))
    mednext = _config(tmp_path, data, "mednext.yaml", data_keys=keys)
    mednext.model = {"type": "mednext"}
    with pytest.raises(InputError, match="mednext trains on volumes"):
        train(mednext, tmp_path / "mednext")


def test_an_interrupted_build_is_not_a_cache_and_a_rerun_completes_it(tmp_path, data, monkeypatch):
    config = _config(tmp_path, data, flip_lr_probability=0.5)
    out = tmp_path / "cache"
    encode, calls = latent_cache._encode_case, []

    def dies_on_the_fourth_case(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return encode(*args)

    monkeypatch.setattr(latent_cache, "_encode_case", dies_on_the_fourth_case)
    with pytest.raises(KeyboardInterrupt):
        _build(config, out, shard_gib=TINY_SHARD_GIB)
    monkeypatch.undo()
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    assert len(written) == 2 and not (out / INDEX).exists()  # the first two cases' shards; the third's was open
    (out / ".shard-00002.abcd.part.safetensors").write_bytes(b"half a shard")  # as a kill would leave it
    run = _config(tmp_path, data, "cached.yaml", data_keys={"latent_cache": str(out)}, flip_lr_probability=0.5)
    with pytest.raises(InputError, match="build was interrupted"):
        open_latent_cache(run, build_codec(run), training_cases(run))
    assert _build(config, out, shard_gib=TINY_SHARD_GIB)["encoded"] == 4
    assert written == {p.name: p.stat().st_mtime_ns for p in out.glob("shard-0000[01]*")}  # kept, not rewritten
    assert sorted(p.name for p in out.iterdir()) == [INDEX] + [f"shard-0000{i}.safetensors" for i in range(6)]
    cases = open_latent_cache(run, build_codec(run), training_cases(run))
    fresh = _build(config, tmp_path / "fresh")
    again = open_latent_cache(run, build_codec(run), training_cases(run))
    assert fresh["encoded"] == 6 and all(torch.equal(cases[i]["dose"], again[i]["dose"]) for i in range(6))


def test_latent_cases_hold_nothing_between_items(tmp_path, data):
    config = _config(tmp_path, data)
    _build(config, tmp_path / "cache", shard_gib=TINY_SHARD_GIB)
    run = _config(tmp_path, data, "cached.yaml", data_keys={"latent_cache": str(tmp_path / "cache")})
    cases = open_latent_cache(run, build_codec(run), training_cases(run))
    state = dict(vars(cases))
    item = cases[3]
    alive = [weakref.ref(t) for t in item.values()]
    del item
    gc.collect()
    assert not any(ref() is not None for ref in alive)
    assert vars(cases) == state  # only the folder, the names and the index entries (plain JSON data)
    assert {type(v).__name__ for e in cases.entries for v in e.values()} <= {"str", "list"}


def test_prepared_cases_keep_at_most_their_ram_budget(tmp_path, data, monkeypatch):
    from dosediffusion_training.data import dataset

    paths = list_cases(data)
    config = _config(tmp_path, data).preprocessing
    one_case = sum(t.nbytes for t in PreparedCases(paths, config, ram_cache_gib=0)[0].values())
    budget_gib = 2.5 * one_case / 2**30
    cases = PreparedCases(paths, config, ram_cache_gib=budget_gib)
    loads = []
    monkeypatch.setattr(dataset, "load_any", lambda *args: loads.append(1) or load_any(*args))
    for _ in range(2):
        for i in range(len(cases)):
            cases[i]
            assert cases._cache.nbytes <= budget_gib * 2**30
    assert len(cases._cache) == 2 and len(loads) == 12
    cases[5], cases[4]  # the two most recently used: kept
    assert len(loads) == 12
    uncached = PreparedCases(paths, config, ram_cache_gib=0)
    uncached[0], uncached[0]
    assert len(uncached._cache) == 0 and len(loads) == 14
    with pytest.raises(InputError, match="must not be negative"):
        PreparedCases(paths, config, ram_cache_gib=-1)


def test_scored_cases_work_on_the_bounded_cache(tmp_path, data):
    from dosediffusion_training.training.scardnft import ScoredCases

    config = _config(tmp_path, data).preprocessing
    paths = list_cases(data)
    one_case = sum(c.nbytes for c in PreparedCases(paths, config, ram_cache_gib=0)._prepare(0).values())
    cases = ScoredCases(paths, config, ram_cache_gib=1.5 * one_case / 2**30)  # room for one case
    expected = PreparedCases(paths, config, ram_cache_gib=0)
    for i in range(len(paths)):
        assert all(torch.equal(cases[i][m], expected[i][m]) for m in expected[i])
        assert len(cases._cache) == 1
    assert all(cases.inputs(i).channels == {} for i in range(len(paths)))  # what restore needs, not the channels
    assert cases.inputs(2).crop_grid.shape == tuple(config.crop_shape)
    unkept = ScoredCases(paths, config, ram_cache_gib=0)
    assert unkept.inputs(3).dose_reference_gy == cases.inputs(3).dose_reference_gy and len(unkept._cache) == 0


def test_cache_latents_command(tmp_path, data, capsys):
    _config(tmp_path, data, flip_lr_probability=0.5)
    out = tmp_path / "cache"
    assert main(["cache-latents", "--config", str(tmp_path / "run.yaml"), "--out", str(out),
                 "--shard-gib", str(TINY_SHARD_GIB), "--batch-size", "3"]) == 0
    assert f"{out}: 6 cases (6 encoded now) in 6 shards" in capsys.readouterr().out
    _config(tmp_path, data, "cached.yaml", data_keys={"latent_cache": str(out)}, flip_lr_probability=0.5, steps=2)
    assert main(["fit", "--config", str(tmp_path / "cached.yaml"), "--out", str(tmp_path / "run")]) == 0
    _config(tmp_path, data, "bad.yaml", codec={"type": "patch", "factors": [1, 5, 5]})
    assert main(["cache-latents", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "bad")]) == 2
    assert "not divisible by the patch codec factors" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_misspelt_data_key_is_an_error_not_a_silent_default(tmp_path, data):
    with pytest.raises(InputError, match=r"unknown: \['latent_cahe'\]"):
        _config(tmp_path, data, data_keys={"latent_cahe": str(tmp_path)})
