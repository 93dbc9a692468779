"""The pipeline folder format every pipeline shares (read without torch): ``model_index.json`` (the
pipeline class, its components' classes, the target modality, the package version) and
``preprocessing.json`` (the :class:`~dosediffusion.conditioning.prepare.PrepareConfig`) beside one
sub-folder per component, as diffusers keeps ``model_index.json`` beside its pipelines' parts.
"""

from __future__ import annotations

import json
from pathlib import Path

from dosediffusion.errors import InputError
from dosediffusion.io.atomic import atomic_folder

MODEL_INDEX = "model_index.json"
PREPROCESSING = "preprocessing.json"
#: The pipeline classes a folder may name, and whether each samples (steps, seed and candidates
#: matter) or computes one deterministic dose (a regression).
PIPELINE_CLASSES: dict[str, bool] = {"DoseDiffusionPipeline": True, "RegressionPipeline": False}


def read_model_index(folder: str | Path) -> dict:
    """``folder``'s ``model_index.json``; :class:`InputError` when it is missing, unreadable or names a
    pipeline class outside :data:`PIPELINE_CLASSES`."""
    path = Path(folder) / MODEL_INDEX
    if not path.is_file():
        raise InputError(f"no {MODEL_INDEX}: not a DoseDiffusion pipeline folder", folder)
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"unreadable pipeline description ({error})", folder) from None
    if not isinstance(index, dict) or index.get("_class_name") not in PIPELINE_CLASSES:
        kind = index.get("_class_name") if isinstance(index, dict) else None
        raise InputError(f"pipeline class {kind!r} is not one of {', '.join(PIPELINE_CLASSES)}", path)
    return index


def check_pipeline_options(kind: str, num_candidates: int) -> None:
    """Refuse what a pipeline of class ``kind`` cannot do: several candidates from a regression, which
    computes one deterministic dose."""
    if num_candidates > 1 and not PIPELINE_CLASSES[kind]:
        raise InputError(f"a {kind} computes one deterministic dose: {num_candidates} candidates need a "
                         "diffusion pipeline (DoseDiffusionPipeline); leave --candidates at 1")


def write_pipeline_folder(folder: str | Path, index: dict, preprocessing: dict, components: dict) -> Path:
    """Write ``model_index.json``, ``preprocessing.json`` (``preprocessing``: the config's dict) and each
    component's ``save_pretrained`` sub-folder into a staging folder, then put it in place of
    ``folder`` (replaced whole)."""
    with atomic_folder(folder, replace=True) as staging:
        for name, component in components.items():
            component.save_pretrained(staging / name)
        (staging / PREPROCESSING).write_text(json.dumps(preprocessing, indent=2))
        (staging / MODEL_INDEX).write_text(json.dumps(index, indent=2))
    return Path(folder)
