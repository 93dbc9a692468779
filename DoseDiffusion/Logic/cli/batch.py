"""A batch of cases for ``dosediffusion predict``: every case checked before the model is loaded, and
one table of every case's outcome at the end."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from dosediffusion.case import Case
from dosediffusion.errors import InputError
from dosediffusion.prediction.checks import check_predictable
from dosediffusion.prediction.outputs import check_output_folder


def case_name(path: Path) -> str:
    """A case's name, its output sub-folder: the file's stem or the folder's name."""
    return path.stem if path.is_file() else path.name


def refused_cases(cases: list[Path], args: argparse.Namespace, out: Path,
                  read: Callable[[Path, argparse.Namespace], Case]) -> dict[Path, str]:
    """The cases of a batch that would be refused (unreadable, not predictable, an output folder that
    exists or cannot be written), each with its one-line reason; read with ``read`` and let go."""
    refused = {}
    for path in cases:
        try:
            check_predictable(read(path, args), path)
            check_output_folder(out / case_name(path), args.overwrite)
        except InputError as error:
            refused[path] = str(error)
    return refused


def outcome_table(outcomes: list[tuple[str, str, str]]) -> str:
    """The end-of-batch table: one line per case (name, ``done``/``refused``/``failed``, folder or
    reason) under a count of each outcome."""
    counts = {kind: sum(1 for _, k, _ in outcomes if k == kind) for kind in ("done", "refused", "failed")}
    head = f"batch: {len(outcomes)} cases: " + ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    width = max((len(name) for name, _, _ in outcomes), default=0)
    return "\n".join([head, *(f"  {name:<{width}}  {kind:<7}  {detail}" for name, kind, detail in outcomes)])
