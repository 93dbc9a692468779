"""Options that cannot be honoured are refused before any slow work, in one line with exit code 2:
an output place that cannot be written, a CUDA device on a machine without one, ``--remote`` without
its HTTP client, the Slicer batch script outside Slicer."""

import subprocess
import sys

import pytest
import torch

from dosediffusion.cli.main import main
from dosediffusion.resources import resource_path

DEMO = resource_path("DemoCase")
#: A folder nobody can write in, root included (the tests run as root in CI).
UNWRITABLE = "/sys/dosediffusion-test"


@pytest.fixture
def no_model_loading(monkeypatch):
    """Loading the model fails the test: every refusal here must come before it."""
    import dosediffusion.model.loading as loading

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(loading, "load_pipeline", refuse)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("dosediffusion: error: ")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


@pytest.mark.parametrize("where, message", [
    ("file", "is a file, not a folder"),
    ("under_file", "is a file, so no folder can be made there"),
    ("unwritable", "cannot write in /sys"),
])
def test_predict_refuses_an_output_place_it_cannot_write_before_loading_the_model(where, message, tmp_path, capsys,
                                                                                  no_model_loading):
    (tmp_path / "file").write_text("not a folder")
    out = {"file": tmp_path / "file", "under_file": tmp_path / "file" / "out", "unwritable": UNWRITABLE}[where]
    assert main(["predict", str(DEMO), "--out", str(out), "--no-report"]) == 2
    assert message in _one_line_error(capsys)
    assert (tmp_path / "file").read_text() == "not a folder"


@pytest.mark.parametrize("command", [["dvh", str(DEMO)], ["score", str(DEMO), "--scorecard", "lung_60"]])
def test_a_plot_place_that_cannot_be_written_is_refused_before_the_work(command, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    (tmp_path / "d.png").mkdir()
    for place, message in ((tmp_path / "file" / "dvh.png", "is a file, so no folder"),
                           (f"{UNWRITABLE}/dvh.png", "cannot write in /sys"), (tmp_path / "d.png", "is a folder")):
        assert main([*command, "--plot", str(place)]) == 2
        assert message in _one_line_error(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_device_cuda_without_a_gpu_is_refused_naming_the_devices(tmp_path, capsys, no_model_loading):
    assert main(["predict", str(DEMO), "--out", str(tmp_path / "o"), "--device", "cuda", "--no-report"]) == 2
    line = _one_line_error(capsys)
    assert "no CUDA GPU here" in line and "devices here: cpu" in line
    assert not (tmp_path / "o").exists()


def test_remote_without_httpx_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "httpx", None)  # import httpx now raises ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "dosediffusion.remote.client", raising=False)
    assert main(["predict", str(DEMO), "--out", str(tmp_path / "o"), "--remote", "http://127.0.0.1:9"]) == 2
    assert "pip install 'dosediffusion[serve]'" in _one_line_error(capsys)


def test_the_batch_script_outside_slicer_says_where_it_runs():
    script = resource_path("batch_predict.py")
    code = (f"import runpy, sys; sys.modules['slicer'] = None; sys.argv = ['batch_predict.py', '--help']; "
            f"runpy.run_path({str(script)!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "runs inside 3D Slicer" in done.stderr and "dosediffusion predict" in done.stderr
