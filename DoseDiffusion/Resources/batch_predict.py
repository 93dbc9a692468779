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
``summary.json``. A patient that fails is reported and skipped; Slicer exits with 1 then, else 0.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path

import slicer


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
    found = find_scene_inputs(slicer.mrmlScene)
    if found.ct is None or found.segmentation is None:
        raise RuntimeError("the patient has no CT or no RT structure set")
    case = logic.caseFromScene(found.ct, found.segmentation, found.plan, roles, referenceDose=found.reference_dose,
                               aliases=aliases)
    case.case_id = patient_label(patient_uid) or case.case_id
    out = Path(args.out) / "".join(c if c.isalnum() or c in "-_." else "_" for c in case.case_id)
    logic.predict(case, out, args.model, args.steps, args.candidates, args.device, args.seed, args.scorecard,
                  overwrite=args.overwrite)
    return out


def main(argv: list[str]) -> int:
    args = parse_arguments(argv)
    from DICOMLib import DICOMUtils
    from DoseDiffusionLib import dependencies

    dependencies.ensure_core_package()
    import DoseDiffusion  # the module's logic runs without its widget
    from dosediffusion.aliases import AliasTable
    from dosediffusion.prediction.options import check_sampling_options
    from dosediffusion.prediction.scorecard import check_scorecard_option
    from dosediffusion.roles import parse_roles

    check_sampling_options(args.steps, args.candidates)  # the options' mistakes before any patient is loaded
    check_scorecard_option(args.scorecard)
    roles, aliases = parse_roles(args.role), AliasTable.load(args.aliases) if args.aliases else None
    logic = DoseDiffusion.DoseDiffusionLogic()
    logic.modelFolder(args.model)
    failures = 0
    with DICOMUtils.TemporaryDICOMDatabase() as database:
        DICOMUtils.importDicom(args.dicom, database)
        patients = list(database.patients())
        if not patients:
            print(f"batch_predict: no DICOM patients in {args.dicom}", file=sys.stderr)
            return 2
        for patient_uid in patients:
            try:
                out = predict_patient(logic, patient_uid, args, roles, aliases)
                print(f"batch_predict: {patient_uid} → {out}")
            except Exception as error:  # one bad patient does not stop the batch
                failures += 1
                logging.debug(traceback.format_exc())
                print(f"batch_predict: error: patient {patient_uid}: {error}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        code = main(sys.argv[1:])
    except Exception as error:  # noqa: BLE001 - uncaught, it would leave headless Slicer running forever
        print(f"batch_predict: error: {error}", file=sys.stderr)
        code = 2
    slicer.util.exit(code) if hasattr(slicer.util, "exit") else sys.exit(code)
