"""Slicer-side helpers of the DoseDiffusion module, beside ``DoseDiffusion.py``.

- :mod:`.dependencies`: makes the core package ``dosediffusion`` importable from the module's
  ``Logic/`` folder and installs the Python requirements inside Slicer. No Qt at module level.
- :mod:`.process`: the Logic's background processes (the prediction of the scene's case, with its
  DICOM identifiers, and the install of missing packages): command line, start, progress and log
  lines, cancel (the whole process tree), the folder it wrote; run as a script, it is the child.
- :mod:`.scene`: MRML scene ↔ :class:`dosediffusion.case.Case` (geometry, segments, dose volume,
  uncertainty volume, DVH chart, scorecard table). Uses the MRML classes of ``slicer`` only, never Qt or ctk.
- :mod:`.plan_adapter`: beams of a SlicerRT RT plan node (or its RTPLAN file).
- :mod:`.prediction_folder`: a prediction's output folder (read by the core's ``read_prediction``) →
  dose volume (and its uncertainty), DVH chart, scorecard table, referencing the CT and plan it was
  predicted from.
- :mod:`.export`: the predicted dose → RTDOSE on the patient it was predicted for.
- :mod:`.slicerrt_dvh`: SlicerRT's DVHs for the segments inside each dose (never aborting).
- :mod:`.widget_rules`: the panel's decisions (prescription boxes, plan prescription, scorecard file).
- :mod:`.process_tree`: ending the background process with everything it started (psutil or not).
- :mod:`.process_output`: reading the background process's output as UTF-8.

Importing this package makes ``import dosediffusion`` work (see
:func:`.dependencies.ensure_core_package`).
"""

from .dependencies import ensure_core_package

ensure_core_package()

__all__ = ["ensure_core_package"]
