"""Batch dose prediction inside 3D Slicer, without the main window::

    Slicer --no-main-window --python-script DoseDiffusion/Resources/batch_predict.py -- \\
        --dicom DICOM_DIR --out OUT_DIR [--model DIR] [--steps N] [--candidates K] [--device auto|cpu|cuda]
        [--scorecard auto|none|NAME|FILE] [--role NAME=ROLE ...] [--aliases FILE] [--overwrite]

Every patient found in ``DICOM_DIR`` (imported into a temporary DICOM database) is loaded through
Slicer's DICOM plugins (SlicerRT for RTSTRUCT/RTPLAN/RTDOSE), turned into a case from the scene
(the module's logic; roles from ``--role`` as ``dosediffusion predict`` takes them, else the alias
table), checked, predicted in this process (the model loaded once) and written to
``OUT_DIR/<PatientID>/`` by the core's one prediction path, as ``dosediffusion predict`` writes it:
``RTDOSE.dcm``, ``dose.nrrd``, ``dvh.csv``, ``scorecard.json`` (when a template applies) and
``summary.json``. The options and the dependencies (PyTorch and the core's packages; nothing is
installed in batch mode) are checked before any patient is loaded. A patient that fails is reported
and skipped; a table of every patient's outcome ends the run. Slicer exits with 2 for a bad option,
a missing dependency or any other error outside the patients, 1 when a patient failed, else 0.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from pathlib import Path

try:
    import slicer
except ImportError:
    if __name__ != "__main__":
        raise
    print("batch_predict: error: this script runs inside 3D Slicer (Slicer --no-main-window --python-script "
          "batch_predict.py -- --dicom DIR --out DIR); outside Slicer use: dosediffusion predict DIR --out DIR",
          file=sys.stderr)
    sys.exit(2)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="batch_predict.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dicom", required=True, help="folder of DICOM files (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder, one sub-folder per patient")
    parser.add_argument("--model", default="", help="pipeline folder (default: the bundled demo model)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--scorecard", default="auto", help="auto, none, a shipped template name or a file")
    parser.add_argument("--role", action="append", metavar="NAME=ROLE",
                        help="a structure's role: NAME=ptv[:DOSE_GY], NAME=oar, NAME=body or NAME=ignore (repeatable)")
    parser.add_argument("--aliases", metavar="FILE", help="your own alias table (the shipped one's layout)")
    parser.add_argument("--overwrite", action="store_true", help="replace a patient's existing output folder")
    return parser.parse_args([a for a in argv if a != "--"])


def patient_label(patient_uid: str) -> str:
    """The patient's DICOM PatientID (ctkDICOMDatabase.fieldForPatient), else its database UID."""
    try:
        return str(slicer.dicomDatabase.fieldForPatient("PatientID", patient_uid) or patient_uid)
    except (AttributeError, TypeError):
        return str(patient_uid)


def predict_patient(logic, patient_uid: str, args: argparse.Namespace, roles: dict, aliases) -> Path:
    """Load one patient into a cleared scene, predict, write its files; returns its output folder."""
    from DICOMLib import DICOMUtils
    from DoseDiffusionLib.scene import find_scene_inputs

    slicer.mrmlScene.Clear(0)
    DICOMUtils.loadPatientByUID(patient_uid)
    found = find_scene_inputs(slicer.mrmlScene, slicer.dicomDatabase)  # the temporary database of main()
    if found.ct is None or found.segmentation is None:
        raise RuntimeError("the patient has no CT or no RT structure set")
    case = logic.caseFromScene(found.ct, found.segmentation, found.plan, roles, referenceDose=found.reference_dose,
                               aliases=aliases)
    case.case_id = patient_label(patient_uid) or case.case_id
    out = Path(args.out) / "".join(c if c.isalnum() or c in "-_." else "_" for c in case.case_id)
    logic.predict(case, out, args.model, args.steps, args.candidates, args.device, args.seed, args.scorecard,
                  overwrite=args.overwrite)
    return out


def check_dependencies() -> None:
    """PyTorch and every package the core needs must be there already: batch mode installs nothing."""
    import importlib.util

    from DoseDiffusionLib import dependencies

    missing = dependencies.missing_requirements(dependencies.read_requirements())
    if importlib.util.find_spec("torch") is None:
        missing.insert(0, "torch (install the PyTorch extension)")
    if missing:
        raise RuntimeError("missing Python packages: " + ", ".join(missing) + "; open the DoseDiffusion module once "
                           "in Slicer to install them")


def main(argv: list[str]) -> int:
    args = parse_arguments(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # DoseDiffusionLib, beside Resources/
    from DoseDiffusionLib import dependencies

    dependencies.ensure_core_package()
    from dosediffusion.aliases import AliasTable
    from dosediffusion.model.limits import check_sampling_options
    from dosediffusion.prediction.model_folder import resolve_model_folder
    from dosediffusion.prediction.scorecard import check_scorecard_option
    from dosediffusion.roles import parse_roles

    check_sampling_options(args.steps, args.candidates)  # the options' mistakes before any patient is loaded
    check_scorecard_option(args.scorecard)
    roles, aliases = parse_roles(args.role), AliasTable.load(args.aliases) if args.aliases else None
    resolve_model_folder(args.model)
    check_dependencies()
    from DICOMLib import DICOMUtils

    import DoseDiffusion  # the module's logic runs without its widget

    logic = DoseDiffusion.DoseDiffusionLogic()
    failures, outcomes = 0, []
    with DICOMUtils.TemporaryDICOMDatabase() as database:
        DICOMUtils.importDicom(args.dicom, database)
        patients = list(database.patients())
        if not patients:
            print(f"batch_predict: no DICOM patients in {args.dicom}", file=sys.stderr)
            return 2
        for patient_uid in patients:
            start = time.perf_counter()
            try:
                out = predict_patient(logic, patient_uid, args, roles, aliases)
                outcomes.append((patient_label(patient_uid), "done", str(out), time.perf_counter() - start))
            except Exception as error:  # one bad patient does not stop the batch
                failures += 1
                logging.debug(traceback.format_exc())
                print(f"batch_predict: error: patient {patient_uid}: {error}", file=sys.stderr)
                outcomes.append((patient_label(patient_uid), "failed", str(error), time.perf_counter() - start))
    print(summary_table(outcomes))
    return 1 if failures else 0


def summary_table(outcomes: list[tuple[str, str, str, float]]) -> str:
    """One line per patient: label, done/failed, output folder or reason, seconds."""
    width = max([len(o[0]) for o in outcomes] + [7])
    lines = [f"{'patient':<{width}}  {'outcome':<7}  {'seconds':>7}  folder or reason"]
    lines += [f"{label:<{width}}  {outcome:<7}  {seconds:>7.1f}  {detail}" for label, outcome, detail, seconds in outcomes]
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        code = main(sys.argv[1:])
    except SystemExit as stop:  # argparse's own exit on a bad option
        code = stop.code if isinstance(stop.code, int) else 2
    except Exception as error:  # noqa: BLE001 - uncaught, it would leave headless Slicer running forever
        print(f"batch_predict: error: {error}", file=sys.stderr)
        code = 2
    if getattr(slicer, "app", None) is not None:  # headless Slicer ends only on an explicit exit
        slicer.util.exit(code)
    else:  # plain Python with the slicer-core wheel (tests)
        sys.exit(code)
