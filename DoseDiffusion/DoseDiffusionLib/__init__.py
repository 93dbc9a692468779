"""Slicer-side helpers of the DoseDiffusion module, beside ``DoseDiffusion.py``.

- :mod:`.dependencies`: makes the core package ``dosediffusion`` importable from the module's
  ``Logic/`` folder, installs the Python requirements inside Slicer, and builds/parses the command
  line of the background prediction process. No Qt at module level.
- :mod:`.scene`: MRML scene ↔ :class:`dosediffusion.case.Case` (geometry, segments, dose volume,
  uncertainty volume, DVH chart, scorecard table). Uses the MRML classes of ``slicer`` only, never Qt or ctk.
- :mod:`.plan_adapter`: beams of a SlicerRT RT plan node (or its RTPLAN file).
- :mod:`.prediction_folder`: a prediction's output folder → dose volume (and its uncertainty), DVH
  chart, scorecard table.
- :mod:`.process_tree`: ending the background process with everything it started (psutil).

Importing this package makes ``import dosediffusion`` work (see
:func:`.dependencies.ensure_core_package`).
"""

from .dependencies import ensure_core_package

ensure_core_package()

__all__ = ["ensure_core_package"]
