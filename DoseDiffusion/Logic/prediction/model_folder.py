"""Which pipeline folder a prediction uses, and what it is (read without torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dosediffusion.errors import InputError
from dosediffusion.model.folder_format import MODEL_INDEX, read_model_index
from dosediffusion.resources import resource_path

#: The name that means the bundled demo model.
DEMO = "demo"


def demo_model_folder() -> Path:
    return resource_path("Models", DEMO)


def resolve_model_folder(name: str | Path | None) -> Path:
    """``demo`` (or nothing) → the bundled demo model; anything else is a pipeline folder, which must
    hold a ``model_index.json``."""
    folder = demo_model_folder() if not name or str(name) == DEMO else Path(name)
    if not (folder / MODEL_INDEX).is_file():
        what = "the bundled demo model is missing" if folder == demo_model_folder() else \
            "not a DoseDiffusion pipeline folder"
        raise InputError(f"{what} (no {MODEL_INDEX})", folder)
    return folder


@dataclass(frozen=True)
class ModelDescription:
    """What a pipeline folder holds, for the user: its class (one of
    :data:`~dosediffusion.model.folder_format.PIPELINE_CLASSES`), the package version that wrote it, and
    whether it is the bundled demo model."""

    folder: Path
    kind: str
    version: str
    demo: bool

    def __str__(self) -> str:
        what = "the bundled demo model (trained on OpenKBP and synthetic cases for 75 CPU minutes; not for clinical use)" if self.demo else self.kind
        return f"{what}, written by dosediffusion {self.version}, at {self.folder}"


def describe_model_folder(folder: Path) -> ModelDescription:
    """The :class:`ModelDescription` of a folder that :func:`resolve_model_folder` accepted."""
    index = read_model_index(folder)
    demo = folder.resolve() == demo_model_folder().resolve()
    return ModelDescription(folder, index["_class_name"], str(index.get("_dosediffusion_version", "unknown")), demo)
