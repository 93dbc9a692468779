"""What every DICOM object this package writes shares: file meta, patient, study, series,
equipment, frame of reference and SOP common modules, filled from ``Case.meta`` (DICOM keywords)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from dosediffusion import __version__
from dosediffusion.io.atomic import atomic_write

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_STRUCTURE_SET = "1.2.840.10008.5.1.4.1.1.481.3"
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"

_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                  "ReferringPhysicianName", "StudyID", "AccessionNumber")


def ensure_identifiers(meta: dict[str, str]) -> dict[str, str]:
    """``meta`` with the UIDs a consistent set of objects needs (study, frame of reference) added."""
    meta = dict(meta)
    meta.setdefault("StudyInstanceUID", generate_uid())
    meta.setdefault("FrameOfReferenceUID", generate_uid())
    meta.setdefault("PatientID", "DoseDiffusion")
    meta.setdefault("PatientName", "Anonymous^Patient")
    today = datetime.datetime.now()
    meta.setdefault("StudyDate", today.strftime("%Y%m%d"))
    meta.setdefault("StudyTime", today.strftime("%H%M%S"))
    meta.setdefault("StudyID", "1")
    return meta


def new_dataset(sop_class_uid: str, modality: str, meta: dict[str, str], series_uid: str, *,
                series_number: int = 1, description: str = "", sop_instance_uid: str | None = None) -> FileDataset:
    """A dataset with the modules common to our objects; the caller adds the IOD's own modules."""
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = sop_class_uid
    file_meta.MediaStorageSOPInstanceUID = sop_instance_uid or generate_uid()
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=file_meta, preamble=b"\0" * 128)
    now = datetime.datetime.now()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = file_meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    for keyword in _PATIENT_STUDY:
        setattr(ds, keyword, meta.get(keyword, ""))
    ds.StudyInstanceUID = meta["StudyInstanceUID"]
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.OperatorsName = ""
    ds.Manufacturer = "DoseDiffusion"
    ds.ManufacturerModelName = "DoseDiffusion"
    ds.SoftwareVersions = __version__
    ds.FrameOfReferenceUID = meta["FrameOfReferenceUID"]
    ds.PositionReferenceIndicator = meta.get("PositionReferenceIndicator", "")
    return ds


#: pydicom 3 names "write a conformant Part 10 file" ``enforce_file_format``; pydicom 2.4 (which 3D Slicer
#: 5.10 bundles) ``write_like_original=False`` and reads the encoding from the dataset's flags.
_PYDICOM_3 = int(pydicom.__version__.split(".")[0]) >= 3


def save(ds: pydicom.Dataset, path: str | Path) -> Path:
    """Write ``ds`` as a DICOM Part 10 file, atomically, with pydicom 2.4 or 3."""
    if _PYDICOM_3:
        return atomic_write(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))
    ds.is_little_endian, ds.is_implicit_VR = True, False  # Explicit VR Little Endian, as the file meta says
    return atomic_write(path, lambda tmp: ds.save_as(tmp, write_like_original=False))
