"""The model layer below the prediction layer: one pipeline base for the diffusion pipeline and the
regression comparator (folder, loading, device and dtype, what each can do), and a one-way import graph."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from model_builders import tiny_pipeline, tiny_regression

import dosediffusion
from dosediffusion.cli.main import main
from dosediffusion.errors import InputError
from dosediffusion.model.loading import load_pipeline
from dosediffusion.model.pipeline import DoseDiffusionPipeline
from dosediffusion.model.regression import RegressionPipeline

LOGIC = Path(dosediffusion.__file__).parent


@pytest.fixture(scope="module")
def regression_dir(tmp_path_factory) -> Path:
    return tiny_regression(seed=3).save_pretrained(tmp_path_factory.mktemp("model") / "mednext")


def test_both_pipelines_round_trip_through_one_loader(regression_dir, tmp_path):
    diffusion_dir = tiny_pipeline(seed=2).save_pretrained(tmp_path / "dit")
    assert isinstance(load_pipeline(diffusion_dir), DoseDiffusionPipeline)
    loaded = load_pipeline(regression_dir)
    assert isinstance(loaded, RegressionPipeline)
    again = tiny_regression(seed=3)
    for (name, a), (_, b) in zip(loaded.model.state_dict().items(), again.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    index = json.loads((regression_dir / "model_index.json").read_text())
    assert (index["_class_name"], index["model"], index["target"]) == ("RegressionPipeline", "MedNeXtRegressor", "dose")


def test_a_folder_is_loaded_only_by_its_own_class_and_components(regression_dir, tmp_path):
    with pytest.raises(InputError, match="holds a RegressionPipeline, not a DoseDiffusionPipeline"):
        DoseDiffusionPipeline.from_pretrained(regression_dir)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model_index.json").write_text(json.dumps({"_class_name": "os.system"}))
    with pytest.raises(InputError, match="pipeline class 'os.system' is not one of"):
        load_pipeline(bad)
    (bad / "model_index.json").write_text(json.dumps({"_class_name": "RegressionPipeline", "model": "Evil"}))
    with pytest.raises(InputError, match="model class 'Evil' is not one of"):
        load_pipeline(bad)


def test_a_regression_refuses_several_candidates_and_reports_what_it_did(regression_dir, phantom_dicom):
    from dosediffusion.io.load import load_case

    pipeline = load_pipeline(regression_dir)
    case = load_case(phantom_dicom[0])
    with pytest.raises(InputError, match="computes one deterministic dose"):
        pipeline(case, num_candidates=4)
    prediction = pipeline(case, steps=3, seed=9, device="cpu")
    assert (prediction.steps, prediction.seed, prediction.device, prediction.dtype) == (None, None, "cpu", "float32")
    assert prediction.dose_gy.shape == case.grid.shape and np.isfinite(prediction.dose_gy).all()


def test_predict_with_a_regression_folder_refuses_candidates_before_loading(regression_dir, phantom_dicom, tmp_path,
                                                                            capsys, monkeypatch):
    import dosediffusion.model.loading as loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "o"
    assert main(["predict", str(phantom_dicom[0]), "--model", str(regression_dir), "--candidates", "4",
                 "--out", str(out), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "a RegressionPipeline computes one deterministic dose: 4 candidates need a diffusion pipeline" in err
    assert not out.exists()


def test_predict_with_a_regression_folder_writes_what_it_ran(regression_dir, phantom_dicom, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["predict", str(phantom_dicom[0]), "--model", str(regression_dir), "--out", str(out),
                 "--no-report", "--scorecard", "none"]) == 0
    summary = json.loads(next(out.glob("*/summary.json")).read_text())
    assert (summary["steps"], summary["seed"], summary["device"], summary["dtype"]) == (None, None, "cpu", "float32")
    assert "one deterministic pass on cpu" in capsys.readouterr().out


def _module_files() -> dict[str, Path]:
    """Every module of both packages (``dosediffusion``, ``dosediffusion_training``) by dotted name."""
    import dosediffusion_training

    files = {}
    for package, root in (("dosediffusion", LOGIC), ("dosediffusion_training", Path(dosediffusion_training.__file__).parent)):
        for path in root.rglob("*.py"):
            parts = [p for p in path.relative_to(root).with_suffix("").parts if p != "__init__"]
            files[".".join([package, *parts])] = path
    return files


def _import_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports (at any depth of the file, lazily too)."""
    files = _module_files()
    graph = {}
    for name, path in files.items():
        imports = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dosediffusion"):
                imports |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                imports |= {a.name for a in node.names}
        graph[name] = {i for i in imports if i in files and i != name}
    return graph


def test_the_model_layer_never_imports_the_prediction_layer():
    graph = _import_graph()
    upward = {m: sorted(i for i in imports if i.startswith("dosediffusion.prediction"))
              for m, imports in graph.items() if m.startswith("dosediffusion.model")}
    assert not any(upward.values()), upward


def test_no_module_of_either_package_imports_itself_through_others():
    graph = _import_graph()
    done: set[str] = set()

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        for nxt in graph[module]:
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done:
                found = cycle_from(nxt, [*path, nxt])
                if found:
                    return found
        done.add(module)
        return None

    cycles = [c for m in sorted(graph) if m not in done and (c := cycle_from(m, [m]))]
    assert not cycles, cycles


def test_the_crop_rule_is_each_models_own(phantom_dicom):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler
    from model_builders import tiny_model

    from dosediffusion.conditioning.prepare import PrepareConfig
    from dosediffusion.io.load import load_case
    from dosediffusion.model.codecs import PatchCodec, WanVAECodec

    odd = PrepareConfig(crop_shape=(10, 20, 30), spacing_mm=(5.0, 5.0, 5.0))  # any crop is a crop
    case = load_case(phantom_dicom[0])
    regression = tiny_regression()
    regression.preprocessing = odd
    assert regression(case).dose_gy.shape == case.grid.shape  # MedNeXt pads any crop itself
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, latents_mean=[0.0] * 4,
                           latents_std=[1.0] * 4)
    with pytest.raises(InputError, match="does not fit the Wan VAE: depth must be 1 \\+ 4k"):
        DoseDiffusionPipeline(WanVAECodec(vae), tiny_model(), FlowMatchEulerDiscreteScheduler(), odd)
    with pytest.raises(InputError, match="not divisible by the patch codec factors \\(1, 4, 4\\)"):
        DoseDiffusionPipeline(PatchCodec((1, 4, 4)), tiny_model(in_channels=16), FlowMatchEulerDiscreteScheduler(), odd)
    fits_codec = PrepareConfig(crop_shape=(9, 34, 32), spacing_mm=(5.0, 5.0, 5.0))  # latent 9 × 17 × 16
    with pytest.raises(InputError, match="that the DiT's patch \\(1, 2, 2\\) does not divide"):
        DoseDiffusionPipeline(PatchCodec((1, 2, 2)), tiny_model(), FlowMatchEulerDiscreteScheduler(), fits_codec)
    with pytest.raises(InputError, match="three positive voxel counts"):
        PrepareConfig(crop_shape=(0, 16, 16))
