"""Datasets of prepared model inputs: a case → its channels on the model's crop, as tensors.

Cases come from compact files (``*.case.npz``), DICOM RT folders, case sidecars or GDP-HMM npz
(anything :func:`dosediffusion.io.load.load_case` reads); with a ``cache_dir`` every other format is
written there as a compact file on first read and read from it afterwards. Prepared channels
(:func:`dosediffusion.conditioning.prepare.prepare`) are kept in a least-recently-used cache of a
fixed size in bytes (``ram_cache_gib``; about 50 MB a case at the paper's 97 × 128 × 144 crop), so
a small data set is prepared once and a large one costs no more memory than the budget. A split
file (JSON ``{"train": [...], "val": [...], "test": [...]}`` of case names) selects the cases.
For training without preparing or encoding at all, see :mod:`dosediffusion_training.data.latent_cache`.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dosediffusion.case import Case
from dosediffusion.conditioning.prepare import PrepareConfig, prepare
from dosediffusion.errors import InputError
from dosediffusion.io.compact import SUFFIX, read_compact, write_compact
from dosediffusion.io.load import load_case
from dosediffusion.metrics.evaluation import normalise_to_d97
from dosediffusion.roles import high_ptv

#: Default RAM budget of :class:`PreparedCases` (GiB, per process).
RAM_CACHE_GIB = 4.0


def case_name(path: Path) -> str:
    return path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.stem if path.is_file() else path.name


def load_any(path: Path, cache_dir: Path | None = None):
    """The case at ``path``; non-compact cases go through the compact cache in ``cache_dir`` if given."""
    if path.name.endswith(SUFFIX):
        return read_compact(path)
    if cache_dir is None:
        return load_case(path)
    cached = Path(cache_dir) / f"{case_name(path)}{SUFFIX}"
    if cached.is_file():
        return read_compact(cached)
    case = load_case(path)
    write_compact(case, cached)
    return case


def list_cases(folder: str | Path, split_file: str | Path | None = None, split: str | None = None) -> list[Path]:
    """Case paths in ``folder`` (compact files, or sub-folders / files of other formats), sorted by
    name, restricted to ``split`` of ``split_file`` when given."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("no such data folder", folder)
    paths = sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=case_name)
    if split_file is None:
        return paths
    try:
        parts = json.loads(Path(split_file).read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read the split file ({error})", split_file) from None
    names = parts.get(split) if isinstance(parts, dict) else None
    if names is None:
        raise InputError(f"split {split!r} not in the split file", split_file)
    by_name = {case_name(p): p for p in paths}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InputError(f"cases of split {split!r} missing from {folder}: {', '.join(missing[:5])}", split_file)
    return [by_name[n] for n in names]


def make_split(paths: Sequence[Path], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0) -> dict:
    """A random train/val/test split of case names (sorted within each part)."""
    names = [case_name(p) for p in paths]
    order = np.random.default_rng(seed).permutation(len(names))
    n_train, n_val = int(round(fractions[0] * len(names))), int(round(fractions[1] * len(names)))
    parts = np.split(order, [n_train, n_train + n_val])
    return {k: sorted(names[i] for i in part) for k, part in zip(("train", "val", "test"), parts, strict=True)}


class ChannelCache:
    """Least-recently-used ``{index: {modality: array}}`` holding at most ``budget`` bytes of arrays
    (an entry larger than the budget is not kept)."""

    def __init__(self, budget: int):
        if budget < 0:
            raise InputError(f"the RAM cache budget must not be negative, got {budget} bytes")
        self.budget, self.nbytes = budget, 0
        self._entries: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, index: int) -> bool:
        return index in self._entries

    def get(self, index: int) -> dict[str, np.ndarray] | None:
        """The entry (now the most recently used), or None."""
        if index not in self._entries:
            return None
        self._entries.move_to_end(index)
        return self._entries[index]

    def __setitem__(self, index: int, channels: dict[str, np.ndarray]) -> None:
        size = sum(c.nbytes for c in channels.values())
        if index in self._entries:
            self.nbytes -= sum(c.nbytes for c in self._entries.pop(index).values())
        if size > self.budget:
            return
        while self.nbytes + size > self.budget:
            self.nbytes -= sum(c.nbytes for c in self._entries.popitem(last=False)[1].values())
        self._entries[index] = channels
        self.nbytes += size


def with_dose_rule(case: Case, rule: str) -> Case:
    """``case`` with its reference dose as a data source's ``dose`` rule says (``as_given``, or ``d97_rx``:
    scaled so that D97 of the high PTV is its prescription, :func:`~dosediffusion.metrics.evaluation.normalise_to_d97`)."""
    if rule == "as_given":
        return case
    if rule != "d97_rx":
        raise InputError(f"unknown dose rule {rule!r}", case.case_id)
    high = high_ptv(case)
    if high is None:
        raise InputError(f"dose rule {rule!r} needs a prescribed high PTV", case.case_id)
    return replace(case, dose=normalise_to_d97(case.dose, high.mask, high.prescription_gy).astype(np.float32))


class PreparedCases(Dataset):
    """Item ``i``: ``{modality: tensor (1, D, H, W) float32}`` of case ``paths[i]`` (dose included, as
    ``dose_rules`` — case name → rule, :func:`with_dose_rule` — say); the prepared channels of the most
    recently used cases are kept, up to ``ram_cache_gib`` GiB (0: none)."""

    def __init__(self, paths: Sequence[Path], config: PrepareConfig, cache_dir: str | Path | None = None,
                 ram_cache_gib: float = RAM_CACHE_GIB, dose_rules: Mapping[str, str] | None = None):
        self.paths, self.config = list(paths), config
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.dose_rules = dict(dose_rules or {})
        self._cache = ChannelCache(int(float(ram_cache_gib) * 2**30))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        channels = self._cache.get(index)
        if channels is None:
            channels = self._cache[index] = self._prepare(index)
        return {m: torch.from_numpy(c)[None] for m, c in channels.items()}

    def case(self, index: int) -> Case:
        """Case ``index`` read from disk, its dose as its source's rule says."""
        path = self.paths[index]
        case = load_any(path, self.cache_dir)
        if case.dose is None:
            raise InputError("training case without a dose", path)
        return with_dose_rule(case, self.dose_rules.get(case_name(path), "as_given"))

    def _prepare(self, index: int) -> dict[str, np.ndarray]:
        """The prepared channels of case ``index``."""
        return prepare(self.case(index), self.config).channels


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack the modalities every item of the batch has (others are dropped for this batch)."""
    common = [m for m in items[0] if all(m in item for item in items)]
    return {m: torch.stack([item[m] for item in items]) for m in common}
