"""Load whichever pipeline a folder holds, by its ``model_index.json``."""

from __future__ import annotations

from pathlib import Path

import torch

from dosediffusion.model.folder_format import read_model_index
from dosediffusion.model.pipeline import DoseDiffusionPipeline
from dosediffusion.model.pipeline_base import PipelineBase
from dosediffusion.model.regression import RegressionPipeline

#: The class of each name :data:`~dosediffusion.model.folder_format.PIPELINE_CLASSES` allows.
PIPELINES: dict[str, type[PipelineBase]] = {cls.__name__: cls for cls in (DoseDiffusionPipeline, RegressionPipeline)}


def load_pipeline(folder: str | Path, torch_dtype: torch.dtype | None = None) -> PipelineBase:
    """The pipeline in ``folder``: a :class:`DoseDiffusionPipeline` or the regression comparator's
    :class:`RegressionPipeline`."""
    return PIPELINES[read_model_index(folder)["_class_name"]].from_pretrained(folder, torch_dtype)
