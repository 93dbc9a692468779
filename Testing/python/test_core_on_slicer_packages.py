"""The core runs on what 3D Slicer 5.10 bundles (Python 3.12, numpy 2.0.2, pydicom 2.4.4, scipy 1.13.1):
its tests that need no torch run again in that environment (``Testing/peers/setup_slicer_bundled.sh``),
and no core module uses syntax newer than the oldest Python it supports."""

from __future__ import annotations

import ast
import os
import subprocess
import warnings
from pathlib import Path

import pytest
from peers import slicer_bundled_python

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
#: The tests of the core's reading, writing, geometry, DVH, metrics, scorecards and uncertainty (no torch in them).
CORE_TESTS = ("test_case_model.py", "test_cli.py", "test_dicom_bad_input.py", "test_dicom_real_files.py",
              "test_dicom_roundtrip.py", "test_dose_metrics.py", "test_dvh.py", "test_gdp_hmm.py", "test_geometry.py",
              "test_mask_contours.py", "test_rasterize.py", "test_safe_pickle.py", "test_scorecard.py",
              "test_uncertainty.py", "test_volume_sidecar.py")
#: The oldest Python the core supports (pyproject's requires-python; 3D Slicer 5.10 has 3.12).
OLDEST_PYTHON = (3, 10)


#: What 3D Slicer 5.10 bundles: Python (major, minor) and the versions of the packages the core uses.
SLICER_5_10 = {"python": "3.12", "pydicom": "2.4.4", "numpy": "2.0.2", "scipy": "1.13.1"}


@pytest.mark.peers
def test_the_core_tests_pass_with_slicers_python_and_packages():
    python = slicer_bundled_python()
    code = ("import sys, pydicom, numpy, scipy; print('%d.%d' % sys.version_info[:2], pydicom.__version__, "
            "numpy.__version__, scipy.__version__)")
    versions = dict(zip(SLICER_5_10, subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                                                    check=True, cwd="/").stdout.split(), strict=True))
    if (python.parent.parent / "python-3.12-missing").exists():  # the set-up script found no 3.12 and said so
        warnings.warn(f"the Slicer-bundled environment runs Python {versions['python']}, not Slicer 5.10's 3.12",
                      stacklevel=1)
        versions["python"] = SLICER_5_10["python"]
    assert versions == SLICER_5_10
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    done = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                           *(str(HERE / name) for name in CORE_TESTS)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_no_core_module_needs_a_newer_python():
    too_new = []
    for path in sorted((ROOT / "DoseDiffusion").rglob("*.py")):
        try:
            ast.parse(path.read_text(), filename=str(path), feature_version=OLDEST_PYTHON)
        except SyntaxError as error:
            too_new.append(f"{path.relative_to(ROOT)}:{error.lineno}: {error.msg}")
    assert not too_new
