"""One case through a sampler: prepare the inputs, sample the dose channels (a local pipeline's or a
remote worker's), restore them onto the CT grid and choose among the candidates."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dosediffusion.case import Case
from dosediffusion.conditioning.prepare import PrepareConfig, prepare
from dosediffusion.conditioning.restore import restore
from dosediffusion.errors import InputError
from dosediffusion.metrics.uncertainty import candidate_std
from dosediffusion.model.limits import check_sampling_options
from dosediffusion.model.selection import Selector, resolve_selector

Progress = Callable[[float, str], None]
#: ``sample(channels, steps, seed, num_candidates, progress=, cancel=)`` → candidate dose channels
#: (N, D, H, W) on the crop: a pipeline's ``sample_channels`` or a remote worker's.
Sampler = Callable[..., np.ndarray]


@dataclass
class DosePrediction:
    """A prediction: ``dose_gy`` (z, y, x) on the case's CT grid, the candidates it was chosen from
    (with their selection scores), what it cost (seconds per stage, peak memory in MiB), where it ran
    (``device``, ``dtype``) and how (``steps`` and ``seed``; None for a model that does not sample)."""

    dose_gy: np.ndarray
    candidates_gy: list[np.ndarray]
    selected: int
    selection_scores: list[float] | None
    timing_s: dict[str, float]
    peak_memory_mib: float
    memory_kind: str
    device: str
    dtype: str
    steps: int | None
    seed: int | None
    warnings: list[str] = field(default_factory=list)

    @property
    def dose_std_gy(self) -> np.ndarray | None:
        """The per-voxel uncertainty: the sample standard deviation (Gy, float32, (z, y, x) on the CT grid)
        over the candidates (:func:`~dosediffusion.metrics.uncertainty.candidate_std`), computed on each
        access; None for a single candidate."""
        return candidate_std(self.candidates_gy)


def check_finite_result(volumes: np.ndarray) -> None:
    """Raise :class:`InputError` when the model's output holds NaN or infinity: such a result is never
    turned into a dose."""
    if not np.isfinite(volumes).all():
        raise InputError("the model's result is not finite (NaN or infinity); no dose is returned. Check the "
                         "inputs, and report the case if they are right")


class Clock:
    """Seconds per stage and the peak memory of the run (the process's maximum RSS); a device
    pipeline subclasses it to synchronise and to report the device's memory."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self._start = self._last = time.perf_counter()

    def synchronize(self) -> None:
        """Wait for the device's queued work before a lap is read (nothing to wait for on the CPU)."""

    def lap(self, name: str) -> None:
        self.synchronize()
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self.laps["total"] = now - self._start
        self._last = now

    def peak_memory_mib(self) -> tuple[float, str]:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


def predict_case(
    sample: Sampler,
    case: Case,
    preprocessing: PrepareConfig,
    steps: int = 10,
    seed: int = 0,
    num_candidates: int = 1,
    selection: str | Selector | None = None,
    scorecard: str | dict | None = None,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
    clock: Clock | None = None,
) -> DosePrediction:
    """Prepare ``case`` with ``preprocessing``, let ``sample`` make the candidate dose channels,
    restore each onto the CT grid and choose among them by ``selection`` (see
    :mod:`dosediffusion.model.selection`; needed only for several candidates)."""
    check_sampling_options(steps, num_candidates)
    selector = resolve_selector(selection, case, scorecard) if num_candidates > 1 else None
    report = progress or (lambda fraction, message: None)
    clock = clock or Clock()
    report(0.0, "preparing inputs")
    inputs = prepare(case, preprocessing, include_dose=False)
    clock.lap("prepare")
    volumes = sample(inputs.channels, steps, seed, num_candidates, progress=report, cancel=cancel)
    check_finite_result(volumes)
    if "decode" not in clock.laps:  # a sampler that keeps its own time (a remote worker)
        clock.lap("model")
    report(0.95, "restoring the dose onto the CT grid")
    candidates = [restore(v, case, inputs) for v in volumes]
    selected, scores = selector(candidates, case) if selector else (0, None)
    clock.lap("restore_select")
    report(1.0, "done")
    peak, kind = clock.peak_memory_mib()
    return DosePrediction(candidates[selected], candidates, selected, scores, clock.laps, peak, kind, "cpu",
                          "float32", steps, seed)
