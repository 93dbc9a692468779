"""Export pyRadPlan's bundled TG119 phantom (AAPM TG-119 C-shape test) as plain arrays.

Run with the python of the engine environment: ``python tg119_export.py OUT.npz``. OUT.npz:
``ct_hu`` (z, y, x) float32, ``spacing_mm`` and ``origin_mm`` (x, y, z; SimpleITK convention, LPS
mm), ``mask_names`` (n,) str and ``masks`` (n, z, y, x) bool, as pyRadPlan's structure set has
them (``Core``, ``OuterTarget``, ``BODY``). Imports only numpy, SimpleITK and pyRadPlan.
"""

from __future__ import annotations

import contextlib
import io
import sys

import numpy as np


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tg119_export.py OUT.npz", file=sys.stderr)
        return 1
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import SimpleITK as sitk
        from pyRadPlan.io import load_tg119

        ct, cst = load_tg119()
    image = ct.cube_hu
    np.savez(argv[0], ct_hu=sitk.GetArrayFromImage(image).astype(np.float32),
             spacing_mm=np.asarray(image.GetSpacing()), origin_mm=np.asarray(image.GetOrigin()),
             mask_names=np.asarray([v.name for v in cst.vois]),
             masks=np.stack([sitk.GetArrayFromImage(v.mask).astype(bool) for v in cst.vois]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
