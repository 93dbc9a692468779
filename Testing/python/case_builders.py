"""Small in-memory cases with known contents for tests (no files involved)."""

import numpy as np

from dosediffusion.case import Beam, Case, Prescription, Structure
from dosediffusion.geometry import Grid


def box_case(shape=(12, 16, 20), spacing=(2.5, 2.5, 2.0), origin=(-20.0, -15.0, 5.0)) -> Case:
    """A water box in air with a cube PTV (70 Gy), a cord and a body; dose = 70 Gy in the PTV
    falling linearly with index distance; two static beams and one arc."""
    grid = Grid(shape, spacing, origin)
    z, y, x = np.indices(shape)
    body = (y >= 2) & (y < shape[1] - 2) & (x >= 2) & (x < shape[2] - 2)
    ct = np.where(body, 0.0, -1000.0).astype(np.float32)
    ptv = (abs(z - shape[0] // 2) <= 2) & (abs(y - shape[1] // 2) <= 3) & (abs(x - shape[2] // 2) <= 3)
    cord = body & (y == 3) & (x == shape[2] // 2)
    dist = np.sqrt((z - shape[0] // 2) ** 2 + (y - shape[1] // 2) ** 2 + (x - shape[2] // 2) ** 2)
    dose = np.where(body, np.clip(70.0 - 5.0 * dist, 0, None), 0).astype(np.float32)
    iso = tuple(grid.index_to_physical(np.array([shape[0] // 2, shape[1] // 2, shape[2] // 2])))
    return Case(
        case_id="box",
        grid=grid,
        ct=ct,
        structures={
            "PTV70": Structure("PTV70", ptv, "ptv", 70.0),
            "SpinalCord": Structure("SpinalCord", cord, "oar", canonical="SpinalCord"),
            "BODY": Structure("BODY", body, "body", canonical="Body"),
        },
        beams=[
            Beam("B1", 0.0, 0.0, 0.0, iso, meterset_weight=100.0),
            Beam("B2", 90.0, 10.0, 350.0, iso, meterset_weight=80.0),
            Beam("Arc", 181.0, 30.0, 0.0, iso, (181.0, 270.0, 0.0, 90.0, 179.0), arc_direction="CW"),
        ],
        prescription=Prescription([70.0], 35),
        dose=dose,
    )
