"""What a reader needs to place a plane of the report in the patient: orientation letters at its edges
(R/L, A/P, S/I from the grid's directions, DICOM LPS), a scale bar in mm and the plane's position in mm.

A plane is cut from the (z, y, x) arrays by fixing one index axis; its rows and columns are the other
two, drawn with ``origin="upper"`` (axial: row 0 at the top) or ``"lower"`` (coronal, sagittal).
"""

from __future__ import annotations

import numpy as np

from dosediffusion.geometry import Grid

#: The letter of the patient direction +x, +y, +z in LPS and of the opposite one.
_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))
SCALE_BAR_MM = 50.0


def direction_letter(grid: Grid, axis_xyz: int, positive: bool = True) -> str:
    """The patient direction (``L``, ``R``, ``P``, ``A``, ``S``, ``I``) in which index axis ``axis_xyz``
    (0 = x, 1 = y, 2 = z) increases (``positive``) or decreases: its direction's largest component."""
    column = grid.matrix[:, axis_xyz]
    k = int(np.argmax(np.abs(column)))
    plus = (column[k] > 0) == positive
    return _LETTERS[k][0 if plus else 1]


def plane_axes(fixed_zyx: int) -> tuple[int, int]:
    """The (row, column) index axes, as x/y/z numbers (0, 1, 2), of the plane that fixes array axis
    ``fixed_zyx`` (0 = z: axial, 1 = y: coronal, 2 = x: sagittal)."""
    free = [a for a in (0, 1, 2) if a != fixed_zyx]  # array axes (z, y, x) of rows then columns
    return 2 - free[0], 2 - free[1]


def plane_position(grid: Grid, centre_zyx: tuple[int, int, int], fixed_zyx: int) -> str:
    """The plane's position in words: the patient coordinate (mm) along the direction its fixed axis
    mostly runs, e.g. ``z = 12.5 mm``."""
    point = grid.index_to_physical(np.asarray(centre_zyx, dtype=float))
    k = int(np.argmax(np.abs(grid.matrix[:, 2 - fixed_zyx])))
    return f"{'xyz'[k]} = {point[k]:.1f} mm"


def mark_plane(axes, grid: Grid, fixed_zyx: int, shape: tuple[int, int], origin: str) -> None:
    """Orientation letters at the four edges and a :data:`SCALE_BAR_MM` bar on ``axes``, which shows a
    plane of ``shape`` (rows, columns) that fixes array axis ``fixed_zyx``, drawn with ``origin``."""
    row_axis, column_axis = plane_axes(fixed_zyx)
    style = {"color": "yellow", "fontsize": 8, "fontweight": "bold", "ha": "center", "va": "center",
             "transform": axes.transAxes}
    axes.text(0.03, 0.5, direction_letter(grid, column_axis, positive=False), **style)
    axes.text(0.97, 0.5, direction_letter(grid, column_axis, positive=True), **style)
    top_positive = origin == "lower"  # rows grow upwards with origin "lower"
    axes.text(0.5, 0.96, direction_letter(grid, row_axis, positive=top_positive), **style)
    axes.text(0.5, 0.04, direction_letter(grid, row_axis, positive=not top_positive), **style)
    rows, columns = shape
    length = SCALE_BAR_MM / grid.spacing[column_axis]  # in columns
    x0 = 0.05 * columns
    y = (0.93 if origin == "upper" else 0.07) * rows
    axes.plot([x0, x0 + length], [y, y], color="white", linewidth=2)
    axes.text(x0 + length / 2, y + (-0.04 if origin == "upper" else 0.04) * rows, f"{SCALE_BAR_MM / 10:g} cm",
              color="white", fontsize=7, ha="center", va="center")
