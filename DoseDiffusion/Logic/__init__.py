"""DoseDiffusion core: radiotherapy dose prediction without Slicer.

The package holds the clinical core (the :class:`~dosediffusion.case.Case` model, DICOM RT and
other formats in and out), the dose metrics and scorecards, the conditioning, the model and the
prediction layer, the reports, the command line and the remote worker. It never imports
``slicer``, ``qt`` or ``ctk``.
"""

from dosediffusion.case import Beam, Case, Prescription, Structure
from dosediffusion.errors import DoseDiffusionError, InputError
from dosediffusion.geometry import Grid

__version__ = "0.1.0"

__all__ = [
    "Beam",
    "Case",
    "DoseDiffusionError",
    "Grid",
    "InputError",
    "Prescription",
    "Structure",
    "__version__",
]
