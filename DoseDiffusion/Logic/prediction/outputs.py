"""The files of one prediction, written together into one folder.

``RTDOSE.dcm`` (on the CT's study and frame of reference, referencing its plan when it has one),
``dose.nrrd`` (Gy, CT grid), ``dose_std.nrrd`` (with two or more candidates: the per-voxel
uncertainty, the sample standard deviation over the candidates, Gy, CT grid; see
:mod:`dosediffusion.metrics.uncertainty`), ``dvh.csv`` (cumulative DVHs: structure, source,
dose_gy, volume_percent at 0.1 Gy steps; source ``predicted`` and, when the case has its own dose,
``case``), ``scorecard.json`` (when a scorecard applies), ``summary.json`` (DVH metrics, MAE
against the case's own dose, model, scorecard and why, warnings, timing, and with two or more
candidates ``uncertainty``: the std map's summary over the body, PTVs, OARs and the high-dose
region and, with the case's own dose, its correlation with the error) and ``report.png`` (needs
matplotlib; with the uncertainty drawn when there is a map); for a case read from an OpenKBP patient
also ``<case id>.csv``, the dose in the challenge's submission format
(:func:`~dosediffusion.io.openkbp.write_openkbp_dose_csv`). Everything is written into a staging
folder first and moved into place only when complete, with ordinary permissions; an existing folder
is replaced only when asked to. :func:`read_prediction` reads a folder back (the Slicer module shows
what it holds); the file names are the ``*_FILE`` constants below, for writer and reader alike.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dosediffusion.case import Case
from dosediffusion.errors import InputError
from dosediffusion.geometry import Grid
from dosediffusion.io.atomic import atomic_folder
from dosediffusion.io.openkbp import is_openkbp_case, write_openkbp_dose_csv
from dosediffusion.io.output_place import check_output_place
from dosediffusion.io.rtdose_write import write_rtdose
from dosediffusion.io.volume_sidecar import read_volume, write_volume
from dosediffusion.metrics.dose_metrics import case_dvhs, standard_metrics
from dosediffusion.metrics.dvh import DVH
from dosediffusion.metrics.evaluation import masked_mae
from dosediffusion.metrics.scorecard import ScoreReport, score_case
from dosediffusion.metrics.uncertainty import uncertainty_summary
from dosediffusion.prediction.model_folder import ModelDescription
from dosediffusion.prediction.scorecard import ScorecardChoice

if TYPE_CHECKING:
    from dosediffusion.model.case_prediction import DosePrediction

DVH_STEP_GY = 0.1
#: The files of a prediction folder (see the module's text for what each holds).
RTDOSE_FILE = "RTDOSE.dcm"
DOSE_FILE = "dose.nrrd"
#: The per-voxel uncertainty (Gy, CT grid), written with two or more candidates.
DOSE_STD_FILE = "dose_std.nrrd"
DVH_FILE = "dvh.csv"
SCORECARD_FILE = "scorecard.json"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.png"


def write_dvh_csv(path: Path, curves: dict[str, dict[str, DVH]]) -> None:
    """Long-format cumulative DVHs: one row per (structure, source, dose step)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["structure", "source", "dose_gy", "volume_percent"])
        for source, dvhs in curves.items():
            for name, dvh in dvhs.items():
                dose, volume = dvh.cumulative(DVH_STEP_GY)
                writer.writerows([name, source, f"{d:.2f}", f"{v:.3f}"] for d, v in zip(dose, volume, strict=True))


def read_dvh_csv(path: str | Path) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """What :func:`write_dvh_csv` wrote: source → structure → (dose in Gy, volume in %)."""
    rows: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    try:
        with Path(path).open(newline="") as handle:
            for row in csv.DictReader(handle):
                dose, volume = rows.setdefault(row["source"], {}).setdefault(row["structure"], ([], []))
                dose.append(float(row["dose_gy"]))
                volume.append(float(row["volume_percent"]))
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise InputError(f"unreadable DVH table ({error!r})", path) from None
    return {source: {name: (np.array(d), np.array(v)) for name, (d, v) in curves.items()}
            for source, curves in rows.items()}


def _summary(case: Case, prediction: DosePrediction, dvhs: dict[str, DVH], score, scorecard: ScorecardChoice | None,
             model: ModelDescription | None, std_gy: np.ndarray | None) -> dict:
    summary = {"case_id": case.case_id, "steps": prediction.steps, "seed": prediction.seed,
               "candidates": len(prediction.candidates_gy), "selected": prediction.selected,
               "device": prediction.device, "dtype": prediction.dtype,
               "timing_s": {k: round(v, 3) for k, v in prediction.timing_s.items()},
               "peak_memory_mib": round(prediction.peak_memory_mib, 1), "warnings": case.warnings + prediction.warnings,
               "prescription": {"levels_gy": case.prescription.levels_gy, "fractions": case.prescription.fractions},
               "structures": {n: {k: round(v, 3) for k, v in standard_metrics(d).items()} for n, d in dvhs.items()}}
    if model is not None:
        summary["model"] = {"folder": str(model.folder), "kind": model.kind, "version": model.version, "demo": model.demo}
    if case.dose is not None and case.body is not None:
        body = case.body.mask
        summary["mae_body_gy"] = round(masked_mae(prediction.dose_gy, case.dose, body), 4)
    if std_gy is not None:
        summary["uncertainty"] = uncertainty_summary(std_gy, case, prediction.dose_gy, len(prediction.candidates_gy))
    if scorecard is not None:
        summary["scorecard_choice"] = {"template": scorecard.name, "reason": scorecard.reason}
    if score is not None:
        summary["scorecard"] = {"template": score.template, "total": round(score.total, 3),
                                "max_total": score.max_total, "not_evaluable": score.not_evaluable}
    return summary


def check_output_folder(out_dir: str | Path, overwrite: bool) -> None:
    """Refuse, before any work, to replace an existing prediction folder unless asked to, and a folder
    that cannot be written."""
    check_output_place(out_dir, folder=True)
    if Path(out_dir).exists() and not overwrite:
        raise InputError("the output folder exists already; choose another --out or pass --overwrite", out_dir)


def write_prediction(case: Case, prediction: DosePrediction, out_dir: str | Path,
                     scorecard: ScorecardChoice | None = None, report: bool = True, overwrite: bool = False,
                     model: ModelDescription | None = None) -> dict:
    """Write the prediction's files into ``out_dir`` (an existing one is replaced whole only with
    ``overwrite``); returns the summary."""
    check_output_folder(out_dir, overwrite)
    template = scorecard.template if scorecard is not None else None
    with atomic_folder(out_dir, replace=overwrite) as staging:
        dose = prediction.dose_gy
        write_rtdose(dose, case.grid, staging / RTDOSE_FILE, case.meta)
        write_volume(dose, case.grid, staging / DOSE_FILE, units="Gy")
        if is_openkbp_case(case):
            write_openkbp_dose_csv(dose, case, staging / f"{case.case_id}.csv")
        std = prediction.dose_std_gy
        if std is not None:
            write_volume(std, case.grid, staging / DOSE_STD_FILE, units="Gy")
        dvhs = case_dvhs(case, dose)
        dvhs_ref = case_dvhs(case) if case.dose is not None else None
        write_dvh_csv(staging / DVH_FILE, {"predicted": dvhs, **({"case": dvhs_ref} if dvhs_ref else {})})
        score = score_case(case, template, dose) if template else None
        score_ref = score_case(case, template) if template and case.dose is not None else None
        if score is not None:
            document = {"predicted": score.to_dict(), **({"case": score_ref.to_dict()} if score_ref else {})}
            (staging / SCORECARD_FILE).write_text(json.dumps(document, indent=2))
        summary = _summary(case, prediction, dvhs, score, scorecard, model, std)
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        if report:
            from dosediffusion.report.case_report import plot_case_report

            plot_case_report(staging / REPORT_FILE, case, dose, dvhs, dvhs_ref, score, score_ref, template, std_gy=std,
                             model=model)
    return summary


@dataclass
class PredictionFolder:
    """What :func:`write_prediction` wrote, read back.

    Attributes:
        folder: the prediction folder.
        dose_gy: the predicted dose, Gy, (z, y, x) on ``grid`` (the CT's).
        grid: the dose's grid.
        dose_std_gy: the per-voxel uncertainty, Gy, on ``grid``; None when the folder has none (one candidate).
        dvhs: source (``predicted``, and ``case`` with the case's own dose) → structure → cumulative DVH
            (dose in Gy, volume in %), as :func:`read_dvh_csv` reads them.
        summary: ``summary.json`` as written (see :func:`write_prediction`).
        score: the predicted dose's scorecard, None when no scorecard applied.
        score_case: the case's own dose's scorecard, None without one.
    """

    folder: Path
    dose_gy: np.ndarray
    grid: Grid
    dose_std_gy: np.ndarray | None
    dvhs: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
    summary: dict
    score: ScoreReport | None = None
    score_case: ScoreReport | None = None


def _read_json(path: Path) -> dict:
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"unreadable {path.name} ({error}); predict into this folder again", path) from None
    if not isinstance(document, dict):
        raise InputError(f"{path.name} is not a JSON object; predict into this folder again", path)
    return document


def read_prediction(folder: str | Path) -> PredictionFolder:
    """The prediction folder ``folder`` (what :func:`write_prediction` wrote) as a :class:`PredictionFolder`.

    Raises:
        InputError: naming the file that is missing or unreadable (``summary.json``, ``dose.nrrd`` and
            ``dvh.csv`` are required; ``dose_std.nrrd`` and ``scorecard.json`` are read when present), or
            an uncertainty volume that is not on the dose's grid.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("no such prediction folder", folder)
    for name in (SUMMARY_FILE, DOSE_FILE, DVH_FILE):
        if not (folder / name).is_file():
            raise InputError(f"not a complete prediction folder: {name} is missing; predict into it again", folder)
    summary = _read_json(folder / SUMMARY_FILE)
    dose, grid = read_volume(folder / DOSE_FILE)
    std = None
    if (folder / DOSE_STD_FILE).is_file():
        std, std_grid = read_volume(folder / DOSE_STD_FILE)
        if not std_grid.same_as(grid):
            raise InputError(f"the uncertainty is not on the dose's grid ({std_grid.shape} vs {grid.shape})",
                             folder / DOSE_STD_FILE)
    score = score_ref = None
    if (folder / SCORECARD_FILE).is_file():
        document = _read_json(folder / SCORECARD_FILE)
        try:
            score = ScoreReport.from_dict(document["predicted"])
            score_ref = ScoreReport.from_dict(document["case"]) if "case" in document else None
        except (KeyError, TypeError, InputError) as error:
            raise InputError(f"unreadable {SCORECARD_FILE} ({error})", folder / SCORECARD_FILE) from None
    return PredictionFolder(folder, dose.astype(np.float32, copy=False), grid, std, read_dvh_csv(folder / DVH_FILE),
                            summary, score, score_ref)
