"""Where a run's cases come from: the ``data`` section's training and held-out sources.

A source is a folder of cases (anything :func:`dosediffusion.io.load.load_case` reads: compact
``*.case.npz``, OpenKBP ``pt_N.npz`` or ``pt_N/`` CSV folders, DICOM RT folders, …), all of them, or
with ``split_file`` the part ``split`` of that split JSON (``dosediffusion-train split``). In YAML::

    data:
      sources:                 # the training cases
        - folder: ../shared/data/openkbp/train          # OpenKBP's own split is its folders
        - {folder: DoseDiffusionTraining/datasets/synth-v2/compact,
           split_file: DoseDiffusionTraining/datasets/synth-v2/split.json}   # split: train (default)
      held_out:                # what evaluate --config and the codec's reconstruction report use
        - folder: ../shared/data/openkbp/validation
        - {folder: ..., split_file: ..., split: test}   # split: test (default here)

A source may say ``dose: d97_rx``: its reference doses are trained on scaled so that D97 of the high PTV
is its prescription, the way the GDP-HMM MAE scores a dose (the default, ``as_given``, trains on the doses
as the source gives them, the way OpenKBP's scores take them); :func:`dose_rules` says which cases.

The older form ``data.folder`` (with an optional ``split_file``) is the one training source
``{folder, split_file, split: train}``; its held-out cases are the ``val`` and ``test`` parts of the
split file (those it has; none without a split file) unless ``held_out`` names others. Relative
folders are relative to the working directory, as every path of a run configuration. A case is known
by its name (:func:`~dosediffusion_training.data.dataset.case_name`: ``pt_1`` for ``pt_1.npz`` and
for ``pt_1/``), by which the compact and latent caches store it, so names must be unique across a
run's sources, and no held-out case may also be a training case. :func:`run_cases` checks all of this
(and that every folder and split file exists and every listed source has cases); the training
commands call it before any model is built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dosediffusion.errors import InputError
from dosediffusion_training.data.dataset import case_name, list_cases

#: The keys of one source.
SOURCE_KEYS = {"folder", "split_file", "split", "dose"}
#: How a source's reference doses are trained on (``dose``): as given, or scaled to D97(high PTV) = Rx.
DOSE_RULES = ("as_given", "d97_rx")
#: The split of a source with a split file but no ``split``, by the list it is in.
DEFAULT_SPLIT = {"sources": "train", "held_out": "test"}


def split_parts(split_file: Path, where: str) -> dict:
    """The split file's ``{part: [case names]}``; raises on a missing or malformed file."""
    if not split_file.is_file():
        raise InputError(f"{where}: no such split file (write one with 'dosediffusion-train split')", split_file)
    try:
        parts = json.loads(split_file.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{where}: cannot read the split file ({error})", split_file) from None
    if not isinstance(parts, dict) or not all(isinstance(v, list) for v in parts.values()):
        raise InputError(f"{where}: a split file is a JSON mapping of parts to lists of case names", split_file)
    return parts


@dataclass(frozen=True)
class Source:
    """A folder of cases, restricted to ``split`` of ``split_file`` when one is given; ``where`` names
    it in the configuration (``data.sources[1]``) and ``listed`` says whether the configuration lists it
    (a listed source must hold cases; the older form's implicit ``val`` / ``test`` parts may be empty or
    absent from its split file)."""

    where: str
    folder: Path
    split_file: Path | None = None
    split: str | None = None
    listed: bool = True
    dose: str = "as_given"

    def cases(self) -> list[Path]:
        """The source's case paths, sorted by name (or in the split file's order)."""
        if not self.folder.is_dir():
            raise InputError(f"{self.where}: no such data folder (relative folders are relative to the working "
                             "directory)", self.folder)
        if self.split_file is not None and self.split not in split_parts(self.split_file, self.where):
            if not self.listed:
                return []
            raise InputError(f"{self.where}: split {self.split!r} not in the split file", self.split_file)
        paths = list_cases(self.folder, self.split_file, self.split)
        if not paths and self.listed:
            raise InputError(f"{self.where}: no cases in {self.describe()}", self.folder)
        return paths

    def describe(self) -> str:
        return f"{self.folder}" + (f" ({self.split} of {self.split_file})" if self.split_file else "")


def _read_list(data: dict, key: str, where) -> list[Source]:
    """The sources of ``data[key]`` (a list of mappings with :data:`SOURCE_KEYS`)."""
    entries = data[key]
    if not isinstance(entries, list) or not entries:
        raise InputError(f"data.{key} must be a non-empty list of {{folder, split_file, split}} mappings", where)
    found = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "folder" not in entry or set(entry) - SOURCE_KEYS:
            unknown = sorted(set(entry) - SOURCE_KEYS) if isinstance(entry, dict) else []
            raise InputError(f"data.{key}[{i}] needs a folder; its keys are {sorted(SOURCE_KEYS)}, unknown: {unknown}",
                             where)
        if "split" in entry and "split_file" not in entry:
            raise InputError(f"data.{key}[{i}] has a split but no split_file: give the split JSON, or leave out "
                             "split to take the whole folder", where)
        if not all(isinstance(entry.get(k, ""), str) for k in SOURCE_KEYS):
            raise InputError(f"data.{key}[{i}]: folder, split_file, split and dose are strings", where)
        if entry.get("dose", "as_given") not in DOSE_RULES:
            raise InputError(f"data.{key}[{i}]: dose must be one of {', '.join(DOSE_RULES)}, got {entry['dose']!r}",
                             where)
        split_file = entry.get("split_file")
        found.append(Source(f"data.{key}[{i}]", Path(entry["folder"]), None if split_file is None else Path(split_file),
                            entry.get("split", DEFAULT_SPLIT[key]) if split_file is not None else None,
                            dose=entry.get("dose", "as_given")))
    return found


def read_sources(data: dict, where=None) -> tuple[list[Source], list[Source]]:
    """(training sources, held-out sources) of a ``data`` section (see the module docstring); raises on
    a section with both or neither of ``folder`` and ``sources``, or a malformed source. Reads no folder."""
    if ("folder" in data) == ("sources" in data):
        raise InputError("data needs either a folder (with an optional split_file) or sources, not both", where)
    if "sources" in data:
        if "split_file" in data:
            raise InputError("data.split_file belongs to data.folder; with data.sources give each source its own "
                             "split_file", where)
        train = _read_list(data, "sources", where)
    else:
        split_file = None if data.get("split_file") is None else Path(data["split_file"])
        train = [Source("data.folder", Path(data["folder"]), split_file, "train" if split_file is not None else None)]
    if "held_out" in data:
        return train, _read_list(data, "held_out", where)
    source = train[0]
    if "sources" in data or source.split_file is None:
        return train, []
    return train, [Source("data.split_file", source.folder, source.split_file, part, listed=False)
                   for part in ("val", "test")]


def cases_of(sources: list[Source], what: str) -> list[Path]:
    """The case paths of ``sources`` in order; raises on a case name that two sources (or one twice) share."""
    paths, seen = [], {}
    for source in sources:
        for path in source.cases():
            name = case_name(path)
            if name in seen:
                raise InputError(f"{what} case {name!r} is in {seen[name]} and in {source.describe()}: case names "
                                 "must be unique across the data sources (drop one, or rename it)", path)
            seen[name] = source.describe()
            paths.append(path)
    return paths


def run_cases(data: dict) -> tuple[list[Path], list[Path]]:
    """(training case paths, held-out case paths) of a ``data`` section; raises on a missing folder or
    split file, a listed source without cases, a case name twice within either list, no training cases,
    or a held-out case that is also a training case."""
    train_sources, held_out_sources = read_sources(data)
    train, held_out = cases_of(train_sources, "training"), cases_of(held_out_sources, "held-out")
    if not train:
        raise InputError("no training cases in " + ", ".join(s.describe() for s in train_sources))
    trained = {case_name(p) for p in train}
    leaked = [case_name(p) for p in held_out if case_name(p) in trained]
    if leaked:
        raise InputError(f"held-out cases that are also training cases: {', '.join(leaked[:5])}"
                         + (f" and {len(leaked) - 5} more" if len(leaked) > 5 else "")
                         + "; take them out of data.sources or data.held_out")
    return train, held_out


def training_cases(data: dict) -> list[Path]:
    """The run's training case paths (``data.sources``, or ``data.folder`` / the ``train`` part of its
    ``split_file``), after every check of :func:`run_cases` (the held-out sources included)."""
    return run_cases(data)[0]


def held_out_cases(data: dict) -> list[Path]:
    """The run's held-out case paths (``data.held_out``, or the ``val`` and ``test`` parts of
    ``data.split_file``; empty when neither is given), after every check of :func:`run_cases`."""
    return run_cases(data)[1]


def dose_rules(data: dict) -> dict[str, str]:
    """``{case name: rule}`` of the training and held-out cases whose source trains on a rule other than
    ``as_given`` (see :data:`DOSE_RULES`)."""
    train, held_out = read_sources(data)
    return {case_name(p): source.dose for source in (*train, *held_out) if source.dose != "as_given"
            for p in source.cases()}
