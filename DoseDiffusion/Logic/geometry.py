"""The voxel grid shared by every array of a case, and resampling between grids.

Arrays are indexed ``(z, y, x)``; spacing, origin and direction follow SimpleITK, so they are in
``(x, y, z)`` order and in mm, with ``direction`` the 3×3 matrix (row-major, 9 numbers) whose
columns are the patient-space directions of the x, y and z index axes (DICOM LPS patient space).

:func:`resample` uses SimpleITK; where SimpleITK is not installed (a bare GPU training image, say) it
uses :func:`resample_scipy`, which gives the same values (tested against SimpleITK).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

try:
    import SimpleITK as sitk
except ImportError:  # resample() then uses resample_scipy(); Grid.from_image/to_image need SimpleITK
    sitk = None

from dosediffusion.errors import GeometryError

#: How :func:`resample` interpolates.
INTERPOLATIONS = ("linear", "nearest", "bspline")

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid in patient coordinates (mm).

    Attributes:
        shape: number of voxels ``(nz, ny, nx)``, the shape of every array on this grid.
        spacing: voxel size ``(sx, sy, sz)`` in mm.
        origin: patient position ``(x, y, z)`` in mm of the centre of voxel ``[0, 0, 0]``.
        direction: 3×3 direction cosines, row-major; column ``k`` is index axis ``k`` (x, y, z).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = _IDENTITY

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))
        object.__setattr__(self, "direction", tuple(float(v) for v in np.ravel(self.direction)))
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise GeometryError(f"grid shape must be three positive sizes (z, y, x), got {self.shape}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise GeometryError(f"grid spacing must be three positive sizes in mm, got {self.spacing}")
        if len(self.origin) != 3 or len(self.direction) != 9:
            raise GeometryError("grid origin needs 3 numbers and direction 9 (a 3x3 matrix)")
        if not np.allclose(self.matrix @ self.matrix.T, np.eye(3), atol=1e-4):
            raise GeometryError(f"grid direction is not orthonormal: {self.direction}")

    @property
    def matrix(self) -> np.ndarray:
        """Direction cosines as a (3, 3) array; column k is index axis k (x, y, z)."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def voxel_volume_cc(self) -> float:
        """Volume of one voxel in cc (cm³)."""
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        """Number of voxels in SimpleITK order ``(nx, ny, nz)``."""
        return self.shape[2], self.shape[1], self.shape[0]

    def index_to_physical(self, index_zyx: np.ndarray) -> np.ndarray:
        """Continuous voxel indices ``(..., 3)`` in (z, y, x) order → patient points ``(..., 3)`` (x, y, z) mm."""
        ijk = np.asarray(index_zyx, dtype=float)[..., ::-1]
        return ijk * np.asarray(self.spacing) @ self.matrix.T + np.asarray(self.origin)

    def physical_to_index(self, points_xyz: np.ndarray) -> np.ndarray:
        """Patient points ``(..., 3)`` (x, y, z) mm → continuous voxel indices ``(..., 3)`` in (z, y, x) order."""
        rel = np.asarray(points_xyz, dtype=float) - np.asarray(self.origin)
        ijk = rel @ self.matrix / np.asarray(self.spacing)
        return ijk[..., ::-1]

    def same_as(self, other: Grid, tol_mm: float = 1e-3) -> bool:
        """True when both grids have the same shape and, within ``tol_mm``, the same voxel positions."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol_mm)
            and np.allclose(self.origin, other.origin, atol=tol_mm)
            and np.allclose(self.direction, other.direction, atol=1e-5)
        )

    @classmethod
    def from_image(cls, image: sitk.Image) -> Grid:
        """The grid of a 3-D SimpleITK image."""
        if image.GetDimension() != 3:
            raise GeometryError(f"expected a 3-D image, got {image.GetDimension()}-D")
        nx, ny, nz = image.GetSize()
        return cls((nz, ny, nx), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def to_image(self, array: np.ndarray) -> sitk.Image:
        """A SimpleITK image of ``array`` (shape ``self.shape``, (z, y, x)) on this grid."""
        array = np.asarray(array)
        if array.shape != self.shape:
            raise GeometryError(f"array shape {array.shape} does not match grid shape {self.shape}")
        if array.dtype == bool:
            array = array.astype(np.uint8)
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def resample(
    array: np.ndarray,
    source: Grid,
    target: Grid,
    interpolation: str = "linear",
    default: float = 0.0,
) -> np.ndarray:
    """Resample ``array`` from ``source`` to ``target`` with SimpleITK.

    Args:
        array: values on ``source``, shape ``source.shape`` (z, y, x).
        interpolation: ``"linear"`` for doses and CT, ``"nearest"`` for labels, ``"bspline"`` the cubic
            B-spline (prefiltered, so it interpolates the source's values; smoother than linear between
            them, and may overshoot beside a step); boolean masks are resampled as fractions (linearly
            when the B-spline is asked for) and thresholded at 0.5.
        default: value for target voxels outside the source grid.

    Returns:
        An array of shape ``target.shape``: float32 for linear and bspline, the input dtype for
        nearest, bool for boolean input.
    """
    if source.same_as(target):
        return np.array(array, copy=True)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {list(INTERPOLATIONS)}, got {interpolation!r}")
    if sitk is None:
        return resample_scipy(array, source, target, interpolation, default)
    is_mask = np.asarray(array).dtype == bool
    if is_mask and interpolation == "bspline":  # a mask's fractions, not a spline's overshoot
        interpolation = "linear"
    kinds = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}
    values = np.asarray(array, dtype=np.float32) if (is_mask or interpolation != "nearest") else array
    reference = sitk.Image(target.size_xyz, sitk.sitkUInt8)
    reference.SetSpacing(target.spacing)
    reference.SetOrigin(target.origin)
    reference.SetDirection(target.direction)
    out = sitk.Resample(source.to_image(values), reference, sitk.Transform(), kinds[interpolation], float(default))
    result = sitk.GetArrayFromImage(out)
    return result >= 0.5 if is_mask else result


def resample_scipy(array: np.ndarray, source: Grid, target: Grid, interpolation: str = "linear",
                   default: float = 0.0) -> np.ndarray:
    """:func:`resample` with scipy, to SimpleITK's rules: a target voxel takes ``default`` unless its
    continuous index ``c`` in ``source`` has −0.5 ≤ c < n − 0.5 on every axis; inside, linear
    interpolation clamps at the border voxels, nearest rounds halves up, the B-spline mirrors the source
    about its border voxels. Same arguments and result."""
    from scipy import ndimage  # here: scipy is a training dependency, not the core's

    is_mask = np.asarray(array).dtype == bool
    if is_mask and interpolation == "bspline":
        interpolation = "linear"
    values = np.asarray(array, dtype=np.float32) if (is_mask or interpolation != "nearest") else np.asarray(array)
    # the continuous source index (x, y, z) of target index i (x, y, z): (Ds Ss)⁻¹ (ot + Dt St i − os)
    to_source = np.linalg.inv(source.matrix @ np.diag(source.spacing))
    matrix = to_source @ target.matrix @ np.diag(target.spacing)
    offset = to_source @ (np.asarray(target.origin) - np.asarray(source.origin))
    nz, ny, nx = target.shape
    index = (np.arange(nx, dtype=np.float64)[None, None, :], np.arange(ny, dtype=np.float64)[None, :, None],
             np.arange(nz, dtype=np.float64)[:, None, None])
    xyz = [np.broadcast_to(offset[k] + sum(matrix[k, j] * index[j] for j in range(3)), target.shape)
           for k in range(3)]
    inside = np.ones(target.shape, dtype=bool)
    for c, n in zip(xyz, source.shape[::-1], strict=True):
        inside &= (c >= -0.5) & (c < n - 0.5)
    zyx = np.stack(xyz[::-1])
    if interpolation == "nearest":
        zyx = np.floor(zyx + 0.5)
    if interpolation == "bspline":
        out = ndimage.map_coordinates(values, zyx, order=3, mode="mirror")
    else:
        out = ndimage.map_coordinates(values, zyx, order=1 if interpolation == "linear" else 0, mode="nearest")
    out = np.where(inside, out, default).astype(values.dtype)
    return out >= 0.5 if is_mask else out
