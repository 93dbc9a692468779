"""Dose metrics, target indices and ``dosediffusion dvh``."""

import json

import numpy as np
import pytest

from dosediffusion.cli.main import main
from dosediffusion.io.load import load_case
from dosediffusion.io.volume_sidecar import write_volume
from dosediffusion.metrics.dose_metrics import STANDARD_KEYS, homogeneity_index, paddick_conformity_index
from dosediffusion.metrics.dvh import compute_dvh


def test_a_dose_that_paints_the_target_is_conformal_and_homogeneous(phantom_dicom):
    case = load_case(phantom_dicom[0])
    ptv = case.structures["PTV_60"]
    dose = np.where(ptv.mask, 60.0, 10.0).astype(np.float32)
    assert paddick_conformity_index(dose, case.grid, ptv, 60.0, case.body) == pytest.approx(1.0)
    spill = np.where(case.body.mask, 60.0, 0.0).astype(np.float32)  # the whole body at 60 Gy
    ci = paddick_conformity_index(spill, case.grid, ptv, 60.0, case.body)
    assert ci == pytest.approx(ptv.mask.sum() / case.body.mask.sum())
    flat = compute_dvh(np.full(case.grid.shape, 60.0, np.float32), case.grid, ptv)
    assert homogeneity_index(flat) == pytest.approx(0.0, abs=1e-9)


def test_dvh_json_on_the_phantom(phantom_dicom, capsys):
    assert main(["dvh", str(phantom_dicom[0]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    ptv = report["structures"]["PTV_60"]
    assert set(STANDARD_KEYS) <= set(ptv)
    # the phantom's dose is x + 60 Gy and the PTV a sphere of r 20 mm centred at x = 0
    assert ptv["mean_gy"] == pytest.approx(60.0, abs=0.1) and ptv["d50_gy"] == pytest.approx(60.0, abs=0.3)
    assert ptv["max_gy"] == pytest.approx(80.0, abs=1.0) and ptv["min_gy"] == pytest.approx(40.0, abs=1.0)
    assert report["targets"]["PTV_60"]["prescription_gy"] == 60.0


def test_dvh_with_another_dose_file(phantom_dicom, tmp_path, capsys):
    case = load_case(phantom_dicom[0])
    write_volume(np.full(case.grid.shape, 12.5, np.float32), case.grid, tmp_path / "flat.nrrd")
    assert main(["dvh", str(phantom_dicom[0]), "--dose", str(tmp_path / "flat.nrrd"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert all(m["mean_gy"] == pytest.approx(12.5) for m in report["structures"].values())
