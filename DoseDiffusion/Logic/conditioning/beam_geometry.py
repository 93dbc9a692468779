"""Beam geometry in patient coordinates: where a beam's source is for given gantry and couch angles.

IEC 61217 angles as DICOM RTPLAN stores them. For a head-first-supine (HFS) patient, DICOM LPS
patient axes are x → patient left, y → posterior, z → head. The source of a beam at gantry angle
g (couch 0) sits on the circle of radius SAD around the isocenter in the axial plane:
gantry 0° above the patient (anterior, −y), 90° on the patient's left (+x), 180° posterior, 270°
right: ``source = iso + SAD · (sin g, −cos g, 0)``. This is the GDP-HMM challenge's convention
(its ``toolkit.get_source_from_angle`` puts the source at ``angle − 90°`` in the (x, y) index plane,
which is the same point for an HFS image with identity direction). A couch rotation φ turns the
patient about the vertical axis (LPS y for a supine patient); seen from the patient, the source
turns by −φ about that axis: ``source = iso + SAD · (sin g cos φ, −cos g, −sin g sin φ)``.
Other patient positions map IEC to LPS with :data:`PATIENT_POSITION_AXES`.
"""

from __future__ import annotations

import numpy as np

from dosediffusion.errors import InputError

#: LPS components of the (patient-left, posterior, head) directions for each DICOM PatientPosition:
#: the matrix turns a direction written for HFS into the same direction for that position.
PATIENT_POSITION_AXES: dict[str, np.ndarray] = {
    "HFS": np.diag([1.0, 1.0, 1.0]),
    "HFP": np.diag([-1.0, -1.0, 1.0]),
    "FFS": np.diag([-1.0, 1.0, -1.0]),
    "FFP": np.diag([1.0, -1.0, -1.0]),
}


def source_direction(gantry_deg: float, couch_deg: float = 0.0, patient_position: str = "HFS") -> np.ndarray:
    """Unit vector (x, y, z) LPS from the isocenter towards the source."""
    if patient_position not in PATIENT_POSITION_AXES:
        raise InputError(f"unsupported patient position {patient_position!r}; known: {', '.join(PATIENT_POSITION_AXES)}")
    g, c = np.deg2rad(gantry_deg), np.deg2rad(couch_deg)
    hfs = np.array([np.sin(g) * np.cos(c), -np.cos(g), -np.sin(g) * np.sin(c)])
    return PATIENT_POSITION_AXES[patient_position] @ hfs


def source_position(isocenter_mm, gantry_deg: float, couch_deg: float = 0.0, sad_mm: float = 1000.0,
                    patient_position: str = "HFS") -> np.ndarray:
    """Source position (x, y, z) mm in patient coordinates."""
    return np.asarray(isocenter_mm, dtype=float) + sad_mm * source_direction(gantry_deg, couch_deg, patient_position)
