"""Where the model runs: in this process (the pipeline loaded once, when first needed, so that a bad
case is refused before the model is loaded) or on a remote worker (``dosediffusion serve``).

A predictor is called as ``predictor(case, steps=, seed=, num_candidates=, scorecard=, progress=,
cancel=)`` and returns a :class:`~dosediffusion.model.case_prediction.DosePrediction`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dosediffusion.case import Case
from dosediffusion.errors import InputError
from dosediffusion.model.folder_format import check_pipeline_options
from dosediffusion.prediction.model_folder import ModelDescription, describe_model_folder, resolve_model_folder
from dosediffusion.prediction.options import check_device

if TYPE_CHECKING:  # torch comes with it: imported when a prediction runs, not before
    from dosediffusion.model.case_prediction import DosePrediction


class LocalPredictor:
    """The pipeline folder ``model`` (``demo``, or a folder) on ``device`` (``auto``: CUDA when present)."""

    def __init__(self, model: str | Path | None = None, device: str = "auto"):
        check_device(device)
        self.folder = resolve_model_folder(model)
        self.description: ModelDescription = describe_model_folder(self.folder)
        self.device = device
        self._pipeline = None

    @property
    def loaded(self) -> bool:
        return self._pipeline is not None

    def load(self):
        """The loaded pipeline (loaded on the first call: torch and diffusers are imported then)."""
        if self._pipeline is None:
            from dosediffusion.model.loading import load_pipeline

            self._pipeline = load_pipeline(self.folder)
        return self._pipeline

    def check_options(self, num_candidates: int) -> None:
        """Refuse, before the model is loaded, what its pipeline cannot do
        (:func:`~dosediffusion.model.folder_format.check_pipeline_options`)."""
        check_pipeline_options(self.description.kind, num_candidates)

    def __call__(self, case: Case, **options) -> DosePrediction:
        from dosediffusion.model.pipeline_base import default_device

        device = default_device() if self.device == "auto" else self.device
        return self.load()(case, device=device, **options)

    def __str__(self) -> str:
        return str(self.description)


class RemotePredictor:
    """The model of the worker at ``url``; the token is read from ``token_file`` now, before any work. A worker
    that does not answer is waited for ``reconnect_s`` seconds (None: the client's default); ``notice`` hears
    that wait and any resubmission as status lines."""

    def __init__(self, url: str, token_file: str | Path | None = None, reconnect_s: float | None = None,
                 notice: Callable[[str], None] | None = None):
        try:
            from dosediffusion.remote.client import read_token
        except ModuleNotFoundError as error:
            if error.name != "httpx":
                raise
            raise InputError("--remote needs the HTTP client httpx, which the base install leaves out: "
                             "pip install 'dosediffusion[serve]'") from None

        self.url, self.reconnect_s, self.notice = url, reconnect_s, notice
        self.token = read_token(token_file) if token_file else None
        self.description = None
        self.loaded = True  # nothing to load here

    def load(self) -> None:
        """Nothing to load: the worker holds the model."""

    def check_options(self, num_candidates: int) -> None:
        """Nothing to check here: the worker refuses what its model cannot do."""

    def __call__(self, case: Case, **options) -> DosePrediction:
        from dosediffusion.remote.client import predict_remote

        return predict_remote(case, self.url, self.token, reconnect_s=self.reconnect_s, notice=self.notice, **options)

    def __str__(self) -> str:
        return f"the model of the remote worker at {self.url}"
