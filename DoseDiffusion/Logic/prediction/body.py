"""A body outline from the CT, for a case whose structure set has none."""

from __future__ import annotations

import numpy as np

#: Tissue is above this (HU): below soft tissue and fat, above lung and air.
BODY_THRESHOLD_HU = -350.0
#: A region smaller than this (cc) is not a patient.
MINIMUM_BODY_CC = 10.0


def body_from_ct(ct_hu: np.ndarray, voxel_volume_cc: float) -> np.ndarray | None:
    """The body (z, y, x) of a CT in HU: the largest connected region above :data:`BODY_THRESHOLD_HU`
    with its holes filled axial slice by axial slice (lungs and airways open at the scan's ends);
    None when there is no region of at least :data:`MINIMUM_BODY_CC`."""
    import SimpleITK as sitk  # here, not above: cases with a body outline need no SimpleITK

    tissue = sitk.GetImageFromArray((np.asarray(ct_hu) > BODY_THRESHOLD_HU).astype(np.uint8))
    regions = sitk.RelabelComponent(sitk.ConnectedComponent(tissue), sortByObjectSize=True)
    largest = sitk.GetArrayFromImage(regions) == 1
    if np.count_nonzero(largest) * voxel_volume_cc < MINIMUM_BODY_CC:
        return None
    slices = [sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(s.astype(np.uint8)))) for s in largest]
    return np.stack(slices).astype(bool)
