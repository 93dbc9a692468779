"""Synthetic anatomy of three sites (thorax, head and neck, pelvis), concave targets, and the thorax unchanged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import ConvexHull, Delaunay

from dosediffusion.errors import InputError
from dosediffusion.io.compact import read_compact
from dosediffusion.io.dicom_write import write_case_dicom
from dosediffusion.io.load import load_case
from dosediffusion.metrics.scorecard import PAIRED_ORGANS, load_template
from dosediffusion.prediction.scorecard import choose_scorecard
from dosediffusion_training import cli
from dosediffusion_training.synth import generate as generate_module
from dosediffusion_training.synth.phantom import SITES, make_phantom

COMMITTED = Path(__file__).resolve().parents[1] / "data" / "synth" / "compact"
SCORECARDS = {"head_neck": "head_neck_sib_70_63_56", "pelvis": "prostate_78"}
SEEDS = range(5)
CONCAVE_SEEDS = range(3)
#: digests of make_phantom(seed, shape=shape) computed with the thorax-only phantom.py of the commit
#: before the sites (git show HEAD:DoseDiffusionTraining/synth/phantom.py, loaded as a module)
THORAX_DIGESTS = {(0, (36, 56, 72)): "d7ddf3c616e50882", (2, (36, 56, 72)): "6287fb3cc2b3a23a",
                  (5, (20, 40, 48)): "9798b5e17dbef3a0"}
_CORNERS = np.array([[a, b, c] for a in (-0.5, 0.5) for b in (-0.5, 0.5) for c in (-0.5, 0.5)])


def digest(case) -> str:
    """A hash of the arrays, structures, beams, prescription and grid of a case (not its meta)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(case.ct).tobytes())
    for name, s in case.structures.items():
        h.update(f"{name}|{s.role}|{s.prescription_gy}".encode())
        h.update(np.packbits(s.mask).tobytes())
    h.update(repr([(b.name, b.gantry_deg, b.collimator_deg, b.couch_deg, b.isocenter_mm, b.control_point_gantry_deg,
                    b.arc_direction) for b in case.beams]).encode())
    h.update(repr((case.prescription.levels_gy, case.prescription.fractions, case.grid)).encode())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def cases():
    return {site: [make_phantom(s, site=site) for s in SEEDS] for site in ("head_neck", "pelvis")}


@pytest.fixture(scope="module")
def concave_cases():
    return {site: [make_phantom(s, site=site, concave_share=1.0) for s in CONCAVE_SEEDS] for site in SITES}


def high_ptv(case):
    return max(case.with_role("ptv"), key=lambda s: s.prescription_gy)


def test_thorax_default_is_unchanged():
    for (seed, shape), expected in THORAX_DIGESTS.items():
        assert digest(make_phantom(seed, shape=shape)) == expected, seed
    for path in sorted(COMMITTED.glob("synth_*.case.npz")):  # the committed demo cases
        committed, case = read_compact(path), make_phantom(int(path.name[6:11]))
        assert np.array_equal(committed.ct, np.round(case.ct)) and committed.beams == case.beams
        assert list(committed.structures) == list(case.structures)
        assert all(np.array_equal(committed.structures[n].mask, s.mask) for n, s in case.structures.items())
        assert committed.prescription == case.prescription and case.meta["BodyPartExamined"] == "CHEST"


def test_same_seed_same_phantom_and_concave_share_only_turns_some_concave(cases):
    for site in ("head_neck", "pelvis"):
        again = make_phantom(SEEDS[0], site=site, concave_share=0.3)  # seed 0 draws "not concave" at 0.3
        assert "SynthWrappedOAR" not in again.meta and digest(again) == digest(cases[site][0])
        assert digest(cases[site][0]) != digest(cases[site][1])
    assert make_phantom(9, site="pelvis", concave_share=0.3).meta["SynthWrappedOAR"] == "Rectum"  # seed 9 draws "concave"
    with pytest.raises(InputError, match="unknown synthetic site"):
        make_phantom(0, site="abdomen")


@pytest.mark.parametrize("site", ["head_neck", "pelvis"])
def test_organ_names_and_scorecard(cases, concave_cases, site):
    template = load_template(SCORECARDS[site])
    names = {e["structure"]["name"] for e in template["entries"] if "name" in e["structure"]}
    names |= {side for n in names for side in PAIRED_ORGANS.get(n, ())}
    for case in cases[site] + concave_cases[site]:
        organs = {s.name for s in case.with_role("oar")}
        assert organs <= names and len(organs) >= 5, organs - names
        assert choose_scorecard("auto", case).name == template["name"]
        assert case.meta["BodyPartExamined"] == {"head_neck": "HEADNECK", "pelvis": "PELVIS"}[site]


@pytest.mark.parametrize("site", ["head_neck", "pelvis"])
def test_ptv_levels_nest_and_prescriptions(cases, concave_cases, site):
    counts = set()
    for case in cases[site] + concave_cases[site]:
        ptvs = sorted(case.with_role("ptv"), key=lambda s: -s.prescription_gy)
        levels = [s.prescription_gy for s in ptvs]
        counts.add(len(levels))
        assert levels == case.prescription.levels_gy and [s.name for s in ptvs] == [f"PTV_{v:g}" for v in levels]
        for higher, lower in zip(ptvs, ptvs[1:], strict=False):
            assert (higher.mask <= lower.mask).all() and lower.mask.sum() > higher.mask.sum()
        fractions = case.prescription.fractions
        if site == "head_neck":
            assert levels in ([70, 63, 56], [70, 56], [66, 60, 54], [66, 54]) and 30 <= fractions <= 35
        else:
            assert 70 <= levels[0] <= 80 and fractions == levels[0] / 2 and all(50 <= v <= 56 for v in levels[1:])
    assert counts == ({2, 3} if site == "head_neck" else {1, 2})


@pytest.mark.parametrize("site", ["head_neck", "pelvis"])
def test_anatomy_is_plausible(cases, site):
    for case in cases[site]:
        body, s = case.body.mask, case.structures
        assert case.ct[~body].max() == -1000 and -150 < np.median(case.ct[body]) < 60
        for structure in s.values():
            assert (structure.mask <= body).all(), structure.name
        centre = {n: case.grid.index_to_physical(np.argwhere(m.mask).mean(axis=0)) for n, m in s.items()}
        if site == "head_neck":
            assert np.percentile(case.ct[s["Mandible"].mask], 5) > 300  # bone
            assert centre["Parotid_L"][0] > 20 > -20 > centre["Parotid_R"][0]  # LPS: patient left is +x
            assert centre["Brainstem"][2] > centre["Cavity_Oral"][2] > centre["Larynx"][2] > centre["Esophagus"][2]
            assert centre["Larynx"][1] < centre["SpinalCord"][1]  # the larynx in front of the cord
            assert (case.ct[s["Larynx"].mask] < -900).any()  # the airway
            assert np.median(case.ct[s["Parotid_L"].mask]) < np.median(case.ct[s["Larynx"].mask])
        else:
            for side in ("Femur_Head_L", "Femur_Head_R"):
                assert np.percentile(case.ct[s[side].mask], 5) > 300
            assert centre["Femur_Head_L"][0] > 50 > -50 > centre["Femur_Head_R"][0]
            assert centre["Bladder"][1] < centre["Rectum"][1]  # bladder anterior, rectum posterior
            assert centre["Bladder"][2] > centre["PenileBulb"][2]
            assert -20 < np.median(case.ct[s["Bladder"].mask]) < 25
            ptv = high_ptv(case).mask
            assert (ptv & s["Rectum"].mask).any() or (ptv & s["Bladder"].mask).any()  # the PTV overlaps their walls


def test_plans_mix_coplanar_couch_and_arcs(cases):
    kinds = set()
    for case in cases["head_neck"] + cases["pelvis"]:
        iso = np.asarray(case.beams[0].isocenter_mm)
        assert np.allclose(iso, case.grid.index_to_physical(np.argwhere(high_ptv(case).mask).mean(axis=0)), atol=0.1)
        arcs, kicked = any(b.is_arc for b in case.beams), any(b.couch_deg for b in case.beams)
        assert arcs or 5 <= len(case.beams) <= 9
        kinds.add("arc" if arcs else "couch" if kicked else "coplanar")
    assert kinds == {"arc", "couch", "coplanar"}


def _per_slice_hull_share(target: np.ndarray, organ: np.ndarray) -> float:
    """Share of the organ's voxels, in the target's slices, inside the target's per-slice convex hull."""
    inside = total = 0
    for k in np.flatnonzero(target.any(axis=(1, 2)) & organ.any(axis=(1, 2))):
        corners = (np.argwhere(target[k])[:, None, :] + _CORNERS[None, :4, 1:]).reshape(-1, 2)
        points = np.argwhere(organ[k])
        inside += int((Delaunay(corners).find_simplex(points) >= 0).sum())
        total += len(points)
    return inside / max(total, 1)


def test_concave_targets_wrap_an_organ(concave_cases):
    for site, site_cases in concave_cases.items():
        ratios = []
        for case in site_cases:
            wrapped = case.meta["SynthWrappedOAR"]
            assert wrapped in {"thorax": ("SpinalCord", "Esophagus"), "head_neck": ("SpinalCord", "Brainstem"),
                               "pelvis": ("Rectum",)}[site]
            target, organ = high_ptv(case).mask, case.structures[wrapped].mask
            assert (target & organ).sum() <= 2
            assert _per_slice_hull_share(target, organ) >= 0.95, (site, case.case_id)
            corners = (np.argwhere(target)[:, None, :] + _CORNERS[None]).reshape(-1, 3) * case.grid.spacing[::-1]
            ratios.append(target.sum() * np.prod(case.grid.spacing) / ConvexHull(corners).volume)
            slices = target.any(axis=(1, 2))
            for ptv in case.with_role("ptv"):
                assert (ptv.mask & organ)[slices].sum() <= 2  # every level keeps out of the wrapped part
        assert max(ratios) < 0.75 and np.mean(ratios) < 0.7, (site, ratios)


@pytest.mark.parametrize("site", list(SITES))
def test_dicom_round_trip(tmp_path, site):
    case = make_phantom(1, site=site, concave_share=0.5)
    write_case_dicom(case, tmp_path / site)
    back = load_case(tmp_path / site)
    assert set(back.structures) == set(case.structures)
    for name, structure in case.structures.items():
        assert np.array_equal(back.structures[name].mask, structure.mask), name
        assert (back.structures[name].role, back.structures[name].prescription_gy) == (structure.role, structure.prescription_gy)


def _fake_dose(ct, spacing, origin, structures, fractions, beams, iso, max_iterations):
    dose = np.zeros(ct.shape, np.float32)
    for _, mask, role, rx in structures:
        if role == "ptv":
            dose = np.maximum(dose, mask * np.float32(rx))
    return dose, {"seconds_total": 0.0}


def test_generate_takes_sites_in_turn_and_records_them(tmp_path, monkeypatch):
    monkeypatch.setattr(generate_module, "compute_dose", _fake_dose)
    written, failed = generate_module.generate(tmp_path, 3, 30, (5.0, 5.0, 5.0), (36, 56, 72), 10,
                                               ("pelvis", "head_neck"), 0.5)
    assert (written, failed) == (3, 0)
    settings = json.loads((tmp_path / "synth.json").read_text())
    assert settings["sites"] == ["pelvis", "head_neck"] and settings["concave_share"] == 0.5
    parts = [read_compact(tmp_path / "compact" / f"synth_{s:05d}.case.npz").meta["BodyPartExamined"] for s in (30, 31, 32)]
    assert parts == ["PELVIS", "HEADNECK", "PELVIS"]
    with pytest.raises(InputError, match="unknown or no synthetic sites"):
        generate_module.generate(tmp_path, 1, 0, (5.0, 5.0, 5.0), (36, 56, 72), sites=("abdomen",))


def test_cli_passes_sites_and_concave_share(tmp_path, monkeypatch):
    calls = []

    def fake_generate(*args):
        calls.append(args)
        return 2, 0

    monkeypatch.setattr(generate_module, "generate", fake_generate)
    assert cli.main(["synth", "--out", str(tmp_path), "--n", "2", "--sites", "pelvis, thorax", "--concave-share", "0.5"]) == 0
    assert calls[-1][-2:] == (("pelvis", "thorax"), 0.5)
    assert cli.main(["synth", "--out", str(tmp_path), "--n", "2"]) == 0
    assert calls[-1][-2:] == (("thorax", "head_neck", "pelvis"), 0.3)
