"""Each test worker's share of the cores; shared fixtures: DICOM RT sets written by the tests themselves."""

import os

import pytest
from phantoms import write_phantom_dicom

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def pytest_configure(config):
    """Under pytest-xdist every worker would otherwise start thread pools as wide as the machine (torch,
    OpenMP, BLAS, numba): 2 workers × 2 spinning threads on 2 cores made a training test that takes 3 s
    alone take 40 s. The controller runs this before it starts the workers, which (and whose
    subprocesses) inherit the share; a value the user set is kept."""
    workers = getattr(config.option, "numprocesses", None)
    if isinstance(workers, int) and workers > 1:
        share = str(max(1, (os.cpu_count() or 1) // workers))
        for variable in THREAD_VARIABLES:
            os.environ.setdefault(variable, share)


@pytest.fixture(scope="session")
def phantom_dicom(tmp_path_factory):
    """The analytic phantom (HFS, 2.5 mm) as a DICOM RT folder: (folder, case, expected, paths)."""
    folder = tmp_path_factory.mktemp("phantom") / "dicom"
    case, expected, paths = write_phantom_dicom(folder)
    return folder, case, expected, paths
