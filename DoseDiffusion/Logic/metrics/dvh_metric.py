"""DVH metric names, the one parser: ``D95%``, ``D0.03cc``, ``D2cc``, ``V20Gy``, ``V95%``, ``Dmean``, ``Dmax``.

- ``D<x>%`` / ``D<x>cc``: the dose (Gy) that the hottest x % of the structure / x cc receive at least
  (``D95`` without a unit is ``D95%``);
- ``V<x>Gy`` / ``V<x>cGy`` / ``V<x>%Rx``: the volume receiving at least x Gy / x cGy / x % of the
  prescription (``V95%`` is ``V95%Rx``: in a ``V`` the percentage is of the dose), in % of the structure
  (``…[cc]`` for cc: ``V20Gy[cc]``);
- ``Dmean``, ``Dmin``, ``Dmax`` (the hottest sample: the point maximum; the near-maximum is ``D0.03cc``).

Case, spaces and ``,`` as the decimal mark are accepted (``d 95 %``, ``v20 gy``, ``D0,03cc``). The
canonical :attr:`DvhMetric.label` parses back to the same metric. Every metric is evaluated on a
:class:`~dosediffusion.metrics.dvh.DVH` by :meth:`DvhMetric.value`; the scorecards, the ``dvh`` report
and the plots name their metrics with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dosediffusion.errors import InputError
from dosediffusion.metrics.dvh import DVH

ACCEPTED_FORMS = "D<x>% or D<x>cc (dose at volume), V<x>Gy, V<x>cGy or V<x>%Rx (volume at dose; append [cc] for cc), " \
                 "Dmean, Dmin, Dmax"
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_DOSE_AT_VOLUME = re.compile(rf"d{_NUMBER}(%|cc)?")
_VOLUME_AT_DOSE = re.compile(rf"v{_NUMBER}(gy|cgy|%rx|%)(\[(?:cc|%)\])?")
_STATISTICS = {"dmean": "mean", "dmin": "min", "dmax": "max"}


@dataclass(frozen=True)
class DvhMetric:
    """One DVH metric. ``kind``: ``D`` (dose at volume), ``V`` (volume at dose), ``mean``, ``min``, ``max``.
    ``at``: the volume of a ``D`` (``at_unit`` ``%`` or ``cc``) or the dose of a ``V`` (``Gy`` or ``%Rx``);
    ``volume_unit``: what a ``V`` reports, ``%`` of the structure or ``cc``."""

    kind: str
    at: float | None = None
    at_unit: str = ""
    volume_unit: str = "%"

    @property
    def is_dose(self) -> bool:
        """Whether the metric is a dose (Gy, or %Rx), not a volume."""
        return self.kind != "V"

    @property
    def label(self) -> str:
        """The canonical name: ``D95%``, ``D0.03cc``, ``V20Gy``, ``V95%Rx``, ``V20Gy[cc]``, ``Dmean``."""
        if self.kind == "D":
            return f"D{self.at:g}{self.at_unit}"
        if self.kind == "V":
            return f"V{self.at:g}{self.at_unit}" + ("[cc]" if self.volume_unit == "cc" else "")
        return "D" + self.kind

    def value(self, dvh: DVH, prescription_gy: float | None = None, dose_unit: str = "Gy") -> float:
        """The metric of ``dvh``: a dose in ``dose_unit`` (``Gy``, or ``%Rx`` of ``prescription_gy``), a
        volume in :attr:`volume_unit`. A ``%Rx`` needs ``prescription_gy``."""
        if (dose_unit == "%Rx" or self.at_unit == "%Rx") and not prescription_gy:
            raise InputError(f"{self.label} in %Rx needs a prescription, and the structure has none")
        if self.kind == "V":
            dose = self.at * prescription_gy / 100.0 if self.at_unit == "%Rx" else self.at
            return dvh.volume_at_dose_percent(dose) if self.volume_unit == "%" else dvh.volume_at_dose_cc(dose)
        if self.kind == "D":
            gy = dvh.dose_at_volume_percent(self.at) if self.at_unit == "%" else dvh.dose_at_volume_cc(self.at)
        else:
            gy = {"mean": dvh.mean_gy, "min": dvh.min_gy, "max": dvh.max_gy}[self.kind]
        return 100.0 * gy / prescription_gy if dose_unit == "%Rx" else gy


def parse_dvh_metric(text: str) -> DvhMetric:
    """The :class:`DvhMetric` that ``text`` names (see the module docstring); an :class:`InputError`
    naming ``text`` and the accepted forms otherwise."""
    key = re.sub(r"\s+", "", str(text)).lower().replace(",", ".")
    if key in _STATISTICS:
        return DvhMetric(_STATISTICS[key])
    if found := _DOSE_AT_VOLUME.fullmatch(key):
        at, unit = float(found[1]), found[2] or "%"
        if unit == "%" and at > 100:
            raise InputError(f"DVH metric {text!r}: a volume of {at:g} % is more than the whole structure; "
                             f"accepted: {ACCEPTED_FORMS}")
        return DvhMetric("D", at, unit)
    if found := _VOLUME_AT_DOSE.fullmatch(key):
        at, unit = float(found[1]), found[2]
        if unit == "cgy":
            at, unit = at / 100.0, "gy"
        return DvhMetric("V", at, {"gy": "Gy", "%rx": "%Rx", "%": "%Rx"}[unit],
                         "cc" if found[3] == "[cc]" else "%")
    raise InputError(f"unknown DVH metric {text!r}; accepted: {ACCEPTED_FORMS} (e.g. D95%, D0.03cc, V20Gy, Dmean)")
