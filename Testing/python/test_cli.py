"""The command lines on the analytic phantom: inspect's documented JSON, and conversions."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dosediffusion.cli.main import main
from dosediffusion.io.load import load_case
from dosediffusion_training.cli import main as train_main


def test_inspect_json_on_the_phantom(phantom_dicom, capsys):
    assert main(["inspect", str(phantom_dicom[0]), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["grid"]["shape"] == [48, 64, 80]
    assert summary["grid"]["spacing_mm"] == [2.5, 2.5, 2.5]
    assert summary["grid"]["origin_mm"] == [-98.75, -78.75, -58.75]
    ptv = summary["structures"]["PTV_60"]
    assert ptv["role"] == "ptv" and ptv["prescription_gy"] == 60.0
    assert ptv["volume_cc"] == pytest.approx(4 / 3 * np.pi * 20**3 / 1000, rel=0.03)  # sphere r = 20 mm
    assert {s["role"] for s in summary["structures"].values()} == {"ptv", "oar", "body"}
    beam = summary["beams"][2]
    assert (beam["gantry_deg"], beam["couch_deg"], beam["isocenter_mm"]) == (270.0, 30.0, [0.0, 0.0, 0.0])
    assert set(beam) >= {"gantry_deg", "collimator_deg", "couch_deg", "isocenter_mm"}
    assert summary["prescription"] == {"levels_gy": [60.0], "fractions": 30}
    assert summary["warnings"] == []


def test_inspect_text(phantom_dicom, capsys):
    assert main(["inspect", str(phantom_dicom[0])]) == 0
    out = capsys.readouterr().out
    assert "PTV_60" in out and "arc 181->161 CW" in out and "60 Gy in 30 fractions" in out


def test_missing_path_is_exit_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nothing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


@pytest.mark.parametrize("program", ["dosediffusion.cli.main", "dosediffusion_training.cli"])
def test_a_closed_pipe_ends_quietly(phantom_dicom, program, tmp_path):
    """``dosediffusion inspect CASE | head``: the reader has gone before the first line is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    command = (["inspect", str(phantom_dicom[0])] if program == "dosediffusion.cli.main"
               else ["convert", str(phantom_dicom[0]), "--out", str(tmp_path / "case.npz")])
    with os.fdopen(write_end, "wb") as stdout:
        done = subprocess.run([sys.executable, "-m", program, *command], stdout=stdout, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == 141  # as a shell reports a process ended by SIGPIPE


@pytest.mark.parametrize("out_name", ["demo.npz", "demo_nrrd"])
def test_convert_keeps_the_case(phantom_dicom, tmp_path, out_name):
    assert train_main(["convert", str(phantom_dicom[0]), "--out", str(tmp_path / out_name)]) == 0
    original, converted = load_case(phantom_dicom[0]), load_case(tmp_path / out_name)
    assert converted.grid.same_as(original.grid)
    np.testing.assert_array_equal(converted.dose, original.dose)
    for name, structure in original.structures.items():
        np.testing.assert_array_equal(converted.structures[name].mask, structure.mask)
