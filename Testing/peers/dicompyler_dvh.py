"""DVH statistics by dicompyler-core, for comparison with ours; run with the peer venv's python.

Usage: ``python dicompyler_dvh.py RTSTRUCT RTDOSE [--roi NAME ...] [--resolution-divisor N]
[--segments N]``; prints JSON ``{roi name: {volume_cc, mean_gy, max_gy, min_gy, d95_gy, d98_gy,
d2_gy, seconds}}`` (doses in Gy, volume in cc, wall time of ``get_dvh`` in s).

Settings passed to ``dicompylercore.dvhcalc.get_dvh`` (see ``--help``):

- ``interpolation_resolution``: the dose grid's pixel spacing / ``--resolution-divisor``
  (default 1 = off). dicompyler only accepts spacing / 2**n. Off is the default because its
  in-plane interpolation places the resampled dose about half a dose voxel away from where the
  mask is sampled (its look-up table spans ``linspace(first, last, (n - 1) * f)`` while
  ``skimage.transform.rescale`` keeps pixel edges aligned), which biases every dose statistic in a
  gradient; without it, the mask and the dose are both sampled at the dose voxel centres.
- ``interpolation_segments_between_planes``: ``--segments`` (default 0). dicompyler copies the
  nearest contour into the new planes (no shape interpolation) and shortens the end slabs, so it
  changes the volume model (each drawn plane stands for one slab) rather than refining it.
- ``use_structure_extents=True`` (same result, only faster) and ``calculate_full_volume=True``.

This script only calls dicompyler-core; it runs in its own environment (pydicom < 3).
"""

from __future__ import annotations

import argparse
import json
import time

import pydicom
from dicompylercore import dicomparser, dvhcalc


def roi_statistics(rtss: pydicom.Dataset, rtdose: pydicom.Dataset, roi: int, resolution: tuple | None,
                   segments: int) -> dict:
    """dicompyler-core's DVH numbers of ROI number ``roi`` (Gy, cc, s)."""
    start = time.perf_counter()
    dvh = dvhcalc.get_dvh(rtss, rtdose, roi, use_structure_extents=True, interpolation_resolution=resolution,
                          interpolation_segments_between_planes=segments)
    seconds = time.perf_counter() - start
    return {
        "volume_cc": float(dvh.volume),
        "mean_gy": float(dvh.mean),
        "max_gy": float(dvh.max),
        "min_gy": float(dvh.min),
        "d95_gy": float(dvh.statistic("D95").value),
        "d98_gy": float(dvh.statistic("D98").value),
        "d2_gy": float(dvh.statistic("D2").value),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rtstruct")
    parser.add_argument("rtdose")
    parser.add_argument("--roi", action="append", help="ROI name to compute (repeatable; default: all)")
    parser.add_argument("--resolution-divisor", type=int, default=1,
                        help="interpolation_resolution = dose pixel spacing / N (N a power of 2; 1 = off)")
    parser.add_argument("--segments", type=int, default=0, help="interpolation_segments_between_planes")
    args = parser.parse_args()
    rtss = pydicom.dcmread(args.rtstruct, force=True)
    rtdose = pydicom.dcmread(args.rtdose, force=True)
    resolution = None
    if args.resolution_divisor > 1:
        row, col = (float(v) for v in rtdose.PixelSpacing)
        resolution = (row / args.resolution_divisor, col / args.resolution_divisor)
    structures = dicomparser.DicomParser(rtss).GetStructures()
    wanted = set(args.roi) if args.roi else None
    out = {}
    for number, structure in structures.items():
        if wanted is not None and structure["name"] not in wanted:
            continue
        out[structure["name"]] = roi_statistics(rtss, rtdose, number, resolution, args.segments)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
