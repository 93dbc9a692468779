"""Index a folder (or a list of files) of DICOM RT objects and pick the ones that belong together.

Headers only are read here (``stop_before_pixels``). Files are classified by Modality: CT images,
RTSTRUCT, RTPLAN (and RTIONPLAN), RTDOSE; other DICOM objects are ignored. A file that is not
DICOM, or whose header is cut short, is an error naming it; a few obviously non-DICOM names
(hidden files, text, images, DICOMDIR) are skipped.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from dosediffusion.errors import AmbiguousInputError, DicomError, GeometryError, InputError

_SKIP_SUFFIXES = {".txt", ".md", ".json", ".xml", ".csv", ".png", ".jpg", ".jpeg", ".pdf", ".nrrd", ".py", ".log"}


@dataclass
class DicomIndex:
    """DICOM headers found under a path, by kind."""

    ct_series: dict[str, list[tuple[Path, pydicom.Dataset]]] = field(default_factory=lambda: defaultdict(list))
    structs: list[tuple[Path, pydicom.Dataset]] = field(default_factory=list)
    plans: list[tuple[Path, pydicom.Dataset]] = field(default_factory=list)
    doses: list[tuple[Path, pydicom.Dataset]] = field(default_factory=list)
    ignored: int = 0


def _files(paths: str | PathLike | list) -> list[Path]:
    items = [Path(p) for p in paths] if isinstance(paths, (list, tuple)) else [Path(paths)]
    files = []
    for item in items:
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file())
        elif item.is_file():
            files.append(item)
        else:
            raise InputError("no such file or folder", item)
    return [f for f in files if not f.name.startswith(".") and f.suffix.lower() not in _SKIP_SUFFIXES
            and f.name.upper() != "DICOMDIR"]


def read_dataset(path: Path, *, header_only: bool = False) -> pydicom.Dataset:
    """One DICOM file (its header only with ``header_only``); a one-line :class:`DicomError` if it
    is not readable DICOM. Files without the 128-byte preamble are accepted."""
    try:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=header_only)
        except InvalidDicomError:
            ds = pydicom.dcmread(path, stop_before_pixels=header_only, force=True)
            if "SOPClassUID" not in ds:
                raise DicomError("not a DICOM file", path) from None
    except DicomError:
        raise
    except Exception as error:  # noqa: BLE001 - any parse failure is the file's fault
        raise DicomError(f"truncated or corrupt DICOM file ({error.__class__.__name__}: {error})", path) from None
    problem = _cut_short(ds, path, header_only)
    if problem:
        raise DicomError(f"truncated DICOM file ({problem})", path)
    if "Modality" not in ds:
        raise DicomError("DICOM file without a Modality (cut short, or not an image, structure set, plan or dose)", path)
    return ds


_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_UNDEFINED = 0xFFFFFFFF


def _cut_short(ds: pydicom.Dataset, path: Path, header_only: bool) -> str | None:
    """How the file ends early, or None. pydicom reads a file cut at an element boundary silently, and
    one cut inside its last element without complaint; an image must still hold its pixel data."""
    tags = list(ds.keys())
    if not tags:
        return "it holds no data element"
    last = ds.get_item(tags[-1])
    length, start = getattr(last, "length", None), getattr(last, "value_tell", None)
    if length is None or start is None:
        return None  # already converted: nothing recorded to check against
    size = Path(path).stat().st_size
    if length == _UNDEFINED:  # a sequence or encapsulated data: read whole, it must end with its delimiter
        if header_only and _is_image(ds):
            return None  # stopped before the pixel data: what follows is not read here
        with open(path, "rb") as fh:
            fh.seek(max(size - 8, 0))
            return None if fh.read(8) == _SEQUENCE_DELIMITER else "it ends inside its last element"
    end = start + length
    if end > size:
        return "it ends inside its last element"
    if end < size:  # pydicom stops early only before the pixel data (header_only) or at a cut element header
        with open(path, "rb") as fh:
            fh.seek(end)
            group = fh.read(2)
        return None if header_only and group in _PIXEL_GROUP else "it ends inside an element's header"
    return "it ends before its pixel data" if _is_image(ds) and "PixelData" not in ds else None


def _is_image(ds: pydicom.Dataset) -> bool:
    return "Rows" in ds or str(ds.get("Modality", "")).upper() in _IMAGES


#: Modalities whose objects carry pixel data; the group of (7FE0,0010) Pixel Data, little and big endian.
_IMAGES = {"CT", "RTDOSE"}
_PIXEL_GROUP = (b"\xe0\x7f", b"\x7f\xe0")


def scan(paths: str | PathLike | list) -> DicomIndex:
    """Read the headers of every DICOM file under ``paths`` and group them."""
    index = DicomIndex()
    for path in _files(paths):
        ds = read_dataset(path, header_only=True)
        modality = str(ds.Modality).upper()
        if modality == "CT":
            index.ct_series[str(ds.get("SeriesInstanceUID", ""))].append((path, ds))
        elif modality == "RTSTRUCT":
            index.structs.append((path, ds))
        elif modality in ("RTPLAN", "RTIONPLAN"):
            index.plans.append((path, ds))
        elif modality == "RTDOSE":
            index.doses.append((path, ds))
        else:
            index.ignored += 1
    return index


def _describe(ds: pydicom.Dataset, uid: str, extra: str = "") -> str:
    label = ds.get("SeriesDescription") or ds.get("StructureSetLabel") or ds.get("RTPlanLabel") or ""
    return f"{uid} ({label}{extra})" if label or extra else uid


def choose_series(index: DicomIndex, series_uid: str | None, source) -> list[tuple[Path, pydicom.Dataset]]:
    """The CT series to use: the one given, or the only one."""
    if not index.ct_series:
        raise InputError("no CT images found", source)
    if series_uid:
        if series_uid not in index.ct_series:
            raise InputError(f"no CT series with SeriesInstanceUID {series_uid}", source)
        return index.ct_series[series_uid]
    if len(index.ct_series) > 1:
        choices = [_describe(items[0][1], uid, f", {len(items)} slices") for uid, items in index.ct_series.items()]
        raise AmbiguousInputError("several CT series; pass --series-uid", choices, source)
    return next(iter(index.ct_series.values()))


def choose_object(
    items: list[tuple[Path, pydicom.Dataset]], uid: str | None, frame_of_reference: str, kind: str, option: str, source
) -> tuple[Path, pydicom.Dataset] | None:
    """The RTSTRUCT/RTPLAN/RTDOSE to use: the one with SOPInstanceUID ``uid``, or the only one on
    the CT's frame of reference (None when there is none)."""
    if uid:
        found = [item for item in items if str(item[1].SOPInstanceUID) == uid]
        if not found:
            raise InputError(f"no {kind} with SOPInstanceUID {uid}", source)
        return found[0]
    if not items:
        return None
    same = [item for item in items if frame_of_reference_of(item[1]) in (frame_of_reference, None)]
    if not same:
        path = items[0][0]
        raise GeometryError(f"{kind} is on frame of reference {frame_of_reference_of(items[0][1])}, "
                            f"the CT on {frame_of_reference}", path)
    if len(same) > 1:
        raise AmbiguousInputError(f"several {kind} objects; pass {option}",
                                  [_describe(ds, str(ds.SOPInstanceUID)) for _, ds in same], source)
    return same[0]


def frame_of_reference_of(ds: pydicom.Dataset) -> str | None:
    """FrameOfReferenceUID of an image, dose or plan; for an RTSTRUCT the referenced one."""
    if "FrameOfReferenceUID" in ds:
        return str(ds.FrameOfReferenceUID)
    refs = ds.get("ReferencedFrameOfReferenceSequence")
    if refs and "FrameOfReferenceUID" in refs[0]:
        return str(refs[0].FrameOfReferenceUID)
    return None
