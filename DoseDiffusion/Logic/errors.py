"""Typed exceptions. A user's mistake raises an :class:`InputError`; the CLI prints its one-line
message and exits with code 2, never a traceback."""

from __future__ import annotations

from os import PathLike


class DoseDiffusionError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(DoseDiffusionError):
    """Bad input from the user: a file, a folder or a value that cannot be used.

    ``str(error)`` is one line: ``"<source>: <problem>"`` where a source is known.
    """

    def __init__(self, problem: str, source: str | PathLike | None = None):
        self.problem = problem
        self.source = None if source is None else str(source)
        super().__init__(problem if self.source is None else f"{self.source}: {problem}")


class DicomError(InputError):
    """A DICOM file that is unreadable, incomplete or of the wrong kind."""


class GeometryError(InputError):
    """Volumes, structures or beams that do not share a consistent geometry or frame of reference."""


class AmbiguousInputError(InputError):
    """Several candidates (series, plans, doses) where one is needed; ``choices`` lists them."""

    def __init__(self, problem: str, choices: list[str], source: str | PathLike | None = None):
        self.choices = list(choices)
        super().__init__(f"{problem}; choose one of: {', '.join(self.choices)}", source)


class UnsafeFileError(InputError):
    """A file that would need code execution to load (e.g. a pickle naming a foreign global)."""


class Cancelled(DoseDiffusionError):
    """The user cancelled a running prediction or job; nothing was written."""
