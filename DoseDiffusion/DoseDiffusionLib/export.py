"""A predicted dose node → RTDOSE file, on the patient it was predicted for.

The DICOM identifiers (patient, study, frame of reference, referenced RTPLAN) come from the CT and
plan the prediction references (:func:`.scene.prediction_sources`, set when the prediction was
added to the scene), never from what the module's selectors show at export time: after the user
selects another patient, the dose still goes to its own. Uses the MRML classes only (no Qt).
"""

from __future__ import annotations

import os
from pathlib import Path

from dosediffusion.errors import InputError
from dosediffusion.io.rtdose_write import write_rtdose

from .plan_adapter import dicom_meta
from .scene import array_from_volume_node, grid_from_volume_node, prediction_sources


def rtdose_meta(dose_node, dicom_database=None) -> dict[str, str]:
    """The DICOM identifiers of ``dose_node``'s RTDOSE: its source CT's patient, study and frame of
    reference and its source plan's SOP instance (:func:`.plan_adapter.dicom_meta`); empty (new
    UIDs are made) when the prediction references no CT (e.g. a CT that was not loaded from DICOM)."""
    ct, plan = prediction_sources(dose_node)
    return dicom_meta(ct, plan, dicom_database) if ct is not None else {}


def export_rtdose(dose_node, path: str | os.PathLike, dicom_database=None) -> Path:
    """Write ``dose_node`` (Gy) as an RTDOSE file at ``path`` with :func:`rtdose_meta`'s identifiers.

    Raises:
        InputError: no dose node.
    """
    if dose_node is None:
        raise InputError("no predicted dose to export: predict first")
    meta = rtdose_meta(dose_node, dicom_database)
    return write_rtdose(array_from_volume_node(dose_node), grid_from_volume_node(dose_node), path, meta)
