"""Shared fixtures: DICOM RT sets written by the tests themselves."""

import pytest
from phantoms import write_phantom_dicom


@pytest.fixture(scope="session")
def phantom_dicom(tmp_path_factory):
    """The analytic phantom (HFS, 2.5 mm) as a DICOM RT folder: (folder, case, expected, paths)."""
    folder = tmp_path_factory.mktemp("phantom") / "dicom"
    case, expected, paths = write_phantom_dicom(folder)
    return folder, case, expected, paths
