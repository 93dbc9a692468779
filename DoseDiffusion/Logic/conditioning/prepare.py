"""From a Case to the model's inputs.

``prepare(case, config)`` and :func:`~dosediffusion.conditioning.restore.restore` (the predicted
dose back onto the CT grid) are the one pair used by training, prediction and evaluation alike.

Field of view: a ``crop_shape`` (z, y, x) box at ``spacing_mm`` (or the CT's own spacing) centred
on the plan isocenter (the first beam's; the PTV centroid without beams), in the CT's orientation.
Which crop shapes fit is the model's to say (the Wan VAE's depth 1 + 4k, a patch codec's factors, the
DiT's patches: checked when a pipeline is built). Where the patient is smaller than the box, CT is padded with air
(−1000 HU) and every other channel with its background. With the CT's spacing (``spacing_mm`` None,
or equal to the CT's) the box sits on the CT's voxel lattice, centred on the voxel nearest the
isocenter, so crop and paste-back are exact copies; with another spacing both resample
(linear for CT, fractions thresholded at 0.5 for masks, the dose channels as ``dose_interpolation`` says:
linear, or a cubic B-spline both ways).

Channels, each float32 (D, H, W) in [−1, 1] (background −1):

- ``ct``: HU clipped to ``hu_clip`` and mapped linearly;
- ``ptv``: each PTV voxel holds its prescription divided by the highest (70/63/56 → 1.0/0.9/0.8;
  the higher level wins where PTVs overlap), then mapped from [0, 1];
- ``oar``: the union of all OARs (0/1). A label encoding would impose an arbitrary order on organs
  in a single channel; the union tells the model where sparing matters, and which organ it is
  comes from the anatomy in the CT. (The challenge's baseline uses a label encoding.)
- ``body``: the body mask;
- ``beam_plate``: :func:`~dosediffusion.conditioning.plates.beam_plate` divided by its maximum;
- ``angle_plate``: :func:`~dosediffusion.conditioning.plates.angle_plate` (0/1);
- ``dose``: ``2 · dose / dose_reference_gy − 1``, not clipped, so ``restore`` inverts it exactly.
  ``dose_reference_gy`` defaults to 1.2 × the highest prescription (the challenge clips doses at
  1.2 × the high prescription), so clinical doses fall inside [−1, 1]. With ``dose_target``
  ``"residual"`` the channel is the dose's difference from the ray-traced prior instead,
  ``2 · (dose − prior) / dose_reference_gy`` (0 where they agree), and ``restore`` adds the prior back
  on the CT grid at full resolution (:attr:`ModelInputs.prior_gy`): what the model draws is a correction
  to a dose that covers the whole patient, inside its field of view or not;
- ``prior_dose`` (not among the paper's seven): the ray-traced prior dose of the case's beams
  (:func:`~dosediffusion.conditioning.prior_dose.prior_dose`) scaled as the dose, clipped to [−1, 1];
  with ``prior_correction`` (a fitted :class:`~dosediffusion.conditioning.prior_correction.PriorCorrection`,
  saved in the settings) the corrected prior, here and as the residual's reference.

Each modality is one entry of :data:`MODALITY_BUILDERS` (its slot and the function that builds it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np

from dosediffusion.case import Case
from dosediffusion.conditioning.plates import angle_plate, beam_plate
from dosediffusion.conditioning.prior_correction import PriorCorrection
from dosediffusion.errors import InputError
from dosediffusion.geometry import Grid, resample

#: The paper's seven modalities in their slot order: the default of a model and of its preprocessing
#: (:data:`MODALITY_BUILDERS` holds every modality there is).
MODALITIES: tuple[str, ...] = ("ct", "ptv", "oar", "body", "beam_plate", "angle_plate", "dose")


#: What the ``dose`` channel holds: the dose itself, or its difference from the prior dose.
DOSE_TARGETS = ("dose", "residual")
#: How the dose channels (``dose``, ``prior_dose``) are resampled to a crop off the CT lattice and the
#: dose back: ``"linear"``, or ``"bspline"`` (cubic B-spline both ways, :func:`~dosediffusion.geometry.resample`).
#: Measured on every held-out case (``Testing/benchmarks/resolution_floor.py --demo-only``), the true residual over
#: demo v4.3's corrected prior through its 6 × 6 × 5 mm grid and back: OpenKBP dose / DVH score 0.82 / 0.96 Gy
#: linear, 0.55 / 0.62 B-spline; synthetic GDP-HMM MAE (normalised) 1.72 / 0.85 Gy. Folders saved before the
#: setting read ``"linear"``.
DOSE_INTERPOLATIONS = ("linear", "bspline")

#: Settings older pipeline folders carry and that are no longer the model's: ``patient_position`` is
#: the case's own (:attr:`~dosediffusion.case.Case.patient_position`), read from its source.
RETIRED_SETTINGS = frozenset({"patient_position"})


@dataclass(frozen=True)
class PrepareConfig:
    """How a case becomes model inputs (saved with a model as ``preprocessing.json``)."""

    crop_shape: tuple[int, int, int] = (97, 128, 144)
    spacing_mm: tuple[float, float, float] | None = (2.5, 2.5, 2.0)
    hu_clip: tuple[float, float] = (-1000.0, 1000.0)
    dose_reference_gy: float | None = None
    reference_factor: float = 1.2
    arc_stride: int = 2
    arc_step_deg: float | None = None  # set: the beam plate thins arcs as the prior does (see plates.beam_angles)
    inverse_square: bool = True
    modalities: tuple[str, ...] = field(default=MODALITIES)
    dose_target: str = "dose"  # "dose", or "residual": the dose channel is the dose minus the prior dose
    prior_correction: dict | None = None  # a fitted PriorCorrection (to_dict) applied to the prior dose
    dose_interpolation: str = "linear"  # how dose channels go to the crop and back (DOSE_INTERPOLATIONS)

    def __post_init__(self):
        if len(self.crop_shape) != 3 or not all(isinstance(n, int) and n >= 1 for n in self.crop_shape):
            raise InputError(f"crop shape {self.crop_shape} must be three positive voxel counts (z, y, x)")
        unknown = set(self.modalities) - set(MODALITY_BUILDERS)
        if unknown:
            raise InputError(f"unknown modalities {sorted(unknown)}; known: {', '.join(MODALITY_BUILDERS)}")
        if self.dose_target not in DOSE_TARGETS:
            raise InputError(f"dose_target must be one of {', '.join(DOSE_TARGETS)}, got {self.dose_target!r}")
        if self.dose_interpolation not in DOSE_INTERPOLATIONS:
            raise InputError(f"dose_interpolation must be one of {', '.join(DOSE_INTERPOLATIONS)}, "
                             f"got {self.dose_interpolation!r}")
        if self.dose_target == "residual" and "prior_dose" not in self.modalities:
            raise InputError("dose_target 'residual' is a correction to the prior dose: add 'prior_dose' to the modalities")
        if self.prior_correction is not None:
            if "prior_dose" not in self.modalities:
                raise InputError("prior_correction corrects the prior dose: add 'prior_dose' to the modalities")
            _ = self.correction  # read once here: a malformed one is refused now, not at the first case

    @cached_property
    def correction(self) -> PriorCorrection | None:
        """:attr:`prior_correction` read once (None without one)."""
        return None if self.prior_correction is None else PriorCorrection.from_dict(self.prior_correction)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PrepareConfig:
        data = {k: v for k, v in data.items() if k not in RETIRED_SETTINGS}
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown preprocessing settings: {', '.join(sorted(unknown))}")
        tuples = {k: tuple(v) for k, v in data.items() if isinstance(v, list)}
        return cls(**{**data, **tuples})


@dataclass
class ModelInputs:
    """What :func:`prepare` makes: channels on the crop grid and what ``restore`` needs."""

    channels: dict[str, np.ndarray]
    crop_grid: Grid
    dose_reference_gy: float
    aligned: bool  # the crop grid lies on the CT lattice (exact copies both ways)
    offset: tuple[int, int, int] = (0, 0, 0)  # CT index of crop voxel [0, 0, 0] when aligned
    prior_gy: np.ndarray | None = None  # (z, y, x) CT grid: the prior the dose channel corrects (dose_target "residual")
    dose_interpolation: str = "linear"  # how the dose channel goes back to the CT grid (PrepareConfig's)


def _centre(case: Case) -> np.ndarray:
    if case.beams:
        return np.asarray(case.beams[0].isocenter_mm, dtype=float)
    ptvs = case.with_role("ptv")
    if not ptvs:
        raise InputError("cannot centre the field of view: the case has neither beams nor a PTV", case.case_id)
    union = np.any([s.mask for s in ptvs], axis=0)
    if not union.any():
        raise InputError("cannot centre the field of view: the PTVs are empty", case.case_id)
    return case.grid.index_to_physical(np.argwhere(union).mean(axis=0))


def crop_grid(case: Case, config: PrepareConfig) -> tuple[Grid, bool, tuple[int, int, int]]:
    """The field-of-view grid, whether it is on the CT lattice, and its index offset if so. It is on the
    lattice (centred on the CT voxel nearest the centre, so nothing is interpolated) when the model
    keeps the CT's spacing or the CT already has the model's."""
    shape = np.asarray(config.crop_shape)
    centre = _centre(case)
    if config.spacing_mm is None or np.allclose(config.spacing_mm, case.grid.spacing, rtol=0.0, atol=1e-3):
        centre_index = np.round(case.grid.physical_to_index(centre)).astype(int)
        offset = centre_index - (shape - 1) // 2
        origin = case.grid.index_to_physical(offset)
        return Grid(tuple(shape), case.grid.spacing, tuple(origin), case.grid.direction), True, tuple(int(v) for v in offset)
    spacing = np.asarray(config.spacing_mm, dtype=float)
    half = (shape[::-1] - 1) / 2.0 * spacing  # (x, y, z) mm from the first voxel to the centre
    origin = centre - case.grid.matrix @ half
    return Grid(tuple(shape), tuple(spacing), tuple(origin), case.grid.direction), False, (0, 0, 0)


def _window(offset, crop_shape, full_shape):
    """Matching slices of the CT array and of the crop for an aligned crop."""
    src, dst = [], []
    for o, n, full in zip(offset, crop_shape, full_shape, strict=True):
        lo, hi = max(o, 0), min(o + n, full)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - o, max(hi, lo) - o))
    return tuple(src), tuple(dst)


def to_crop(array: np.ndarray, case: Case, inputs: ModelInputs, fill: float = 0.0,
            interpolation: str = "linear") -> np.ndarray:
    """``array`` on the CT grid → the crop grid (booleans stay boolean; ``interpolation`` off the lattice)."""
    if inputs.aligned:
        out = np.full(inputs.crop_grid.shape, fill, dtype=array.dtype)
        src, dst = _window(inputs.offset, inputs.crop_grid.shape, case.grid.shape)
        out[dst] = array[src]
        return out
    return resample(array, case.grid, inputs.crop_grid, interpolation, default=fill)


def from_crop(array: np.ndarray, case: Case, inputs: ModelInputs, interpolation: str = "linear") -> np.ndarray:
    """``array`` on the crop grid → the CT grid, zero outside the crop (``interpolation`` off the lattice)."""
    if inputs.aligned:
        out = np.zeros(case.grid.shape, dtype=np.float32)
        src, dst = _window(inputs.offset, inputs.crop_grid.shape, case.grid.shape)
        out[src] = array[dst]
        return out
    return resample(array.astype(np.float32), inputs.crop_grid, case.grid, interpolation, default=0.0)


def _unit(values: np.ndarray) -> np.ndarray:
    """[0, 1] → [−1, 1] as float32."""
    return (np.asarray(values, dtype=np.float32) * 2.0 - 1.0).astype(np.float32)


def _reference_dose(case: Case, config: PrepareConfig) -> float:
    if config.dose_reference_gy is not None:
        return float(config.dose_reference_gy)
    high = case.prescription.high_gy or max((s.prescription_gy or 0.0 for s in case.with_role("ptv")), default=0.0)
    if not high:
        raise InputError("no prescription: set one, or a dose_reference_gy in the preprocessing config", case.case_id)
    return config.reference_factor * high


class _Channels:
    """What the modality builders share for one case: the case, the config, the crop, and the PTV levels on
    the crop (computed once, when first asked for)."""

    def __init__(self, case: Case, config: PrepareConfig, inputs: ModelInputs):
        self.case, self.config, self.inputs = case, config, inputs

    @cached_property
    def ptv_level(self) -> np.ndarray | None:
        """Each PTV voxel's prescription relative to the highest, on the crop (the higher wins); None
        without a prescribed PTV."""
        ptvs = [s for s in self.case.with_role("ptv") if s.prescription_gy]
        if not ptvs:
            return None
        high = max(s.prescription_gy for s in ptvs)
        level = np.zeros(self.inputs.crop_grid.shape, dtype=np.float32)
        for s in ptvs:
            level = np.maximum(level, to_crop(s.mask, self.case, self.inputs) * np.float32(s.prescription_gy / high))
        return level

    @cached_property
    def prior_gy(self) -> np.ndarray | None:
        """The ray-traced prior dose (Gy, CT grid), corrected when the settings hold a correction; None
        without beams or a prescribed PTV."""
        if not self.case.beams or self.ptv_level is None:
            return None
        from dosediffusion.conditioning.prior_dose import prior_dose  # torch

        prior = prior_dose(self.case)
        correction = self.config.correction
        return prior if correction is None else correction.apply(self.case, prior)

    def dose_channel(self, dose_gy: np.ndarray, offset: float = -1.0) -> np.ndarray:
        """A dose (Gy, CT grid) on the crop as ``2 · dose / dose_reference_gy + offset``."""
        dose = to_crop(np.asarray(dose_gy, dtype=np.float32), self.case, self.inputs,
                       interpolation=self.config.dose_interpolation)
        return (dose * np.float32(2.0 / self.inputs.dose_reference_gy) + np.float32(offset)).astype(np.float32)


def _ct(c: _Channels) -> np.ndarray:
    lo, hi = c.config.hu_clip
    ct = to_crop(np.asarray(c.case.ct, dtype=np.float32), c.case, c.inputs, fill=-1000.0)
    return _unit((np.clip(ct, lo, hi) - lo) / (hi - lo))


def _ptv(c: _Channels) -> np.ndarray | None:
    return None if c.ptv_level is None else _unit(c.ptv_level)


def _oar(c: _Channels) -> np.ndarray | None:
    oars = c.case.with_role("oar")
    return _unit(to_crop(np.any([s.mask for s in oars], axis=0), c.case, c.inputs)) if oars else None


def _body(c: _Channels) -> np.ndarray | None:
    return None if c.case.body is None else _unit(to_crop(c.case.body.mask, c.case, c.inputs))


def _beam_plate(c: _Channels) -> np.ndarray | None:
    if not c.case.beams or c.ptv_level is None or not c.ptv_level.any():
        return None
    plate = beam_plate(c.ptv_level > 0, c.inputs.crop_grid, c.case.beams, arc_stride=c.config.arc_stride,
                       arc_step_deg=c.config.arc_step_deg, inverse_square=c.config.inverse_square, patient_position=c.case.patient_position)
    return _unit(plate / max(float(plate.max()), 1e-6))


def _angle_plate(c: _Channels) -> np.ndarray | None:
    if not c.case.beams:
        return None
    return _unit(angle_plate(c.inputs.crop_grid, c.case.beams, patient_position=c.case.patient_position))


def _dose(c: _Channels) -> np.ndarray | None:
    if c.case.dose is None:
        return None
    if c.inputs.prior_gy is not None:  # dose_target "residual"
        return c.dose_channel(np.asarray(c.case.dose, np.float32) - c.inputs.prior_gy, offset=0.0)
    return c.dose_channel(c.case.dose)


def _prior_dose(c: _Channels) -> np.ndarray | None:
    return None if c.prior_gy is None else np.clip(c.dose_channel(c.prior_gy), -1.0, 1.0)


#: Every modality a model may be trained with, in slot order, each with the one function that builds its
#: channel (None when the case lacks it). New modalities are appended: a slot is never renumbered, so a
#: pipeline folder (which lists the modalities it was trained with) keeps its meaning.
MODALITY_BUILDERS: dict[str, Callable[[_Channels], np.ndarray | None]] = {
    "ct": _ct, "ptv": _ptv, "oar": _oar, "body": _body, "beam_plate": _beam_plate, "angle_plate": _angle_plate,
    "dose": _dose, "prior_dose": _prior_dose,
}


def prepare(case: Case, config: PrepareConfig, *, include_dose: bool = True) -> ModelInputs:
    """The model inputs of ``case``: every modality of ``config.modalities`` that the case has (the
    target ``dose`` only with ``include_dose``)."""
    grid, aligned, offset = crop_grid(case, config)
    inputs = ModelInputs({}, grid, _reference_dose(case, config), aligned, offset,
                         dose_interpolation=config.dose_interpolation)
    context = _Channels(case, config, inputs)
    if config.dose_target == "residual":
        if context.prior_gy is None:
            raise InputError("this model corrects the ray-traced prior dose, which needs the plan's beams and a PTV "
                             "with a prescription: load the RT plan and set the prescription", case.case_id)
        inputs.prior_gy = context.prior_gy
    for name in config.modalities:
        if name == "dose" and not include_dose:
            continue
        channel = MODALITY_BUILDERS[name](context)
        if channel is not None:
            inputs.channels[name] = channel
    return inputs
