"""Synthetic phantoms (anatomy, PTV levels, beams) and the compact training format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dosediffusion.errors import InputError
from dosediffusion.io.compact import read_compact, write_compact
from dosediffusion.io.dicom_case import read_dicom_case
from dosediffusion.io.dicom_write import write_case_dicom
from dosediffusion_training.synth.generate import engine_beams
from dosediffusion_training.synth.phantom import make_phantom

SEEDS = range(12)


@pytest.fixture(scope="module")
def phantoms():
    return [make_phantom(s) for s in SEEDS]


def test_same_seed_same_phantom():
    a, b = make_phantom(7), make_phantom(7)
    assert np.array_equal(a.ct, b.ct) and list(a.structures) == list(b.structures) and a.beams == b.beams
    assert not np.array_equal(a.ct, make_phantom(8).ct)


def test_anatomy_is_plausible(phantoms):
    for case in phantoms:
        body = case.body.mask
        assert case.ct[~body].max() == -1000
        for lung in ("Lung_L", "Lung_R"):
            assert np.median(case.ct[case.structures[lung].mask]) < -650
        cord = case.structures["SpinalCord"].mask
        assert cord.any() and (cord <= body).all()
        for structure in case.structures.values():
            assert (structure.mask <= body).all(), structure.name


def test_ptv_levels_and_prescriptions(phantoms):
    counts = set()
    for case in phantoms:
        ptvs = sorted(case.with_role("ptv"), key=lambda s: -s.prescription_gy)
        counts.add(len(ptvs))
        levels = [s.prescription_gy for s in ptvs]
        assert levels == case.prescription.levels_gy and 50 <= levels[0] <= 70
        assert all(f"PTV_{rx:g}" == s.name for rx, s in zip(levels, ptvs, strict=True))
        for higher, lower in zip(ptvs, ptvs[1:], strict=False):
            assert (higher.mask <= lower.mask).all()  # each lower level contains the one above
        organ = next(s for n, s in case.structures.items() if n in ("Liver", "Stomach"))
        grown = np.argwhere(organ.mask)
        distance = np.abs(grown[:, None, :] - np.argwhere(ptvs[0].mask)[None, ::7, :]).max(axis=2).min()
        assert distance <= 2  # the organ-like OAR touches or overlaps the high PTV
    assert counts == {1, 2, 3}


def test_beam_sets(phantoms):
    kinds = set()
    for case in phantoms:
        iso = np.asarray(case.beams[0].isocenter_mm)
        centroid = case.grid.index_to_physical(np.argwhere(case.with_role("ptv")[0].mask).mean(axis=0))
        assert np.allclose(iso, centroid, atol=0.1)
        if any(b.is_arc for b in case.beams):
            kinds.add("arc")
            sampled = engine_beams(case)
            assert 5 <= len(sampled) <= sum(len(b.control_point_gantry_deg) for b in case.beams)
            gaps = np.abs((np.diff([g for g, _ in sampled]) + 180) % 360 - 180)
            assert np.median(gaps) >= 19.9
        else:
            assert 5 <= len(case.beams) <= 9
            gaps = np.diff(sorted(b.gantry_deg for b in case.beams))
            assert np.allclose(gaps, 360 / len(case.beams))
            kinds.add("couch" if any(b.couch_deg for b in case.beams) else "coplanar")
    assert kinds == {"arc", "couch", "coplanar"}


def test_dicom_round_trip_keeps_every_mask(tmp_path):
    case = make_phantom(3)
    case.dose = np.linspace(0, 60, case.ct.size, dtype=np.float32).reshape(case.grid.shape)
    write_case_dicom(case, tmp_path / "dicom")
    back = read_dicom_case(tmp_path / "dicom")
    assert set(back.structures) == set(case.structures)
    for name, structure in case.structures.items():
        assert np.array_equal(back.structures[name].mask, structure.mask), name
        assert back.structures[name].role == structure.role
    assert np.abs(back.dose - case.dose).max() < 0.01
    assert [b.gantry_deg for b in back.beams] == pytest.approx([b.gantry_deg for b in case.beams], abs=0.01)


def test_compact_round_trip_and_bad_files(tmp_path):
    case = make_phantom(4)
    case.dose = np.random.default_rng(0).random(case.grid.shape, dtype=np.float32) * 60
    path = write_compact(case, tmp_path / "c.case.npz")
    back = read_compact(path)
    assert np.array_equal(back.dose, case.dose) and np.array_equal(back.ct, np.round(case.ct))
    assert back.grid.same_as(case.grid) and back.beams == case.beams and back.prescription == case.prescription
    for name, structure in case.structures.items():
        assert np.array_equal(back.structures[name].mask, structure.mask)
        assert (back.structures[name].role, back.structures[name].prescription_gy) == (structure.role, structure.prescription_gy)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["meta"]))
    np.savez(tmp_path / "v2.case.npz", **{**arrays, "meta": np.array(json.dumps({**meta, "version": 2}))})
    with pytest.raises(InputError, match="version 2"):
        read_compact(tmp_path / "v2.case.npz")
    (tmp_path / "bad.case.npz").write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a readable compact case"):
        read_compact(tmp_path / "bad.case.npz")


def test_every_command_reads_the_compact_format(tmp_path, capsys):
    from dosediffusion.cli.main import main

    case = make_phantom(4)
    case.dose = np.full(case.grid.shape, 2.0, np.float32)
    path = write_compact(case, tmp_path / "c.case.npz")
    assert main(["inspect", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {n: s["role"] for n, s in summary["structures"].items()} == {n: s.role for n, s in case.structures.items()}
    assert summary["grid"]["shape"] == list(case.grid.shape)
    oar = next(n for n, s in case.structures.items() if s.role == "oar")
    assert main(["inspect", str(path), "--json", "--role", f"{oar}=ignore"]) == 0
    assert json.loads(capsys.readouterr().out)["structures"][oar]["role"] == "other"
    assert main(["dvh", str(path)]) == 0
    assert oar in capsys.readouterr().out
    (tmp_path / "bad.case.npz").write_bytes(b"garbage")
    assert main(["inspect", str(tmp_path / "bad.case.npz")]) == 2
    assert "not a readable compact case" in capsys.readouterr().err
