"""The one prediction path: case → checked case → model → predicted dose → output folder.

Every caller (``dosediffusion predict``/``demo``, the remote client, training evaluation, the
Slicer module's logic and background process, the Slicer batch script) goes through this layer,
so one rule decides each step:

- :mod:`.model_folder`: which pipeline folder (``demo`` or a folder) and what it is;
- :mod:`.checks`: whether the case can be predicted at all (structures, target, prescription,
  body), before the model or torch is touched;
- :mod:`.scorecard`: which scorecard applies, and why;
- :mod:`.predictors`: the model here (loaded once, on first use) or on a remote worker;
- :mod:`.outputs`: the files of one prediction, written together into one folder.

Structure roles are the readers' (:mod:`dosediffusion.roles`). Below this layer, and never importing
it, the model layer keeps the pipeline folder format (:mod:`dosediffusion.model.folder_format`), the
sampling limits (:mod:`dosediffusion.model.limits`) and one case through a sampler
(:mod:`dosediffusion.model.case_prediction`).
"""
