"""Finding and installing the DoseDiffusion core and its dependencies from inside 3D Slicer.

- :func:`ensure_core_package`: ``import dosediffusion`` from the module's ``Logic/`` folder (the
  extension's install tree holds the core there, not as an installed distribution).
- :func:`ensure_torch`: PyTorch through SlicerPyTorch's ``PyTorchUtils`` (its version checked);
  :func:`missing_requirements` of ``Resources/requirements.txt`` (only what is not installed at all)
  and :func:`install_command`, which the module runs in the background after asking, constrained
  to every version already installed (:func:`write_installed_constraints`: a package Slicer ships is
  never upgraded by a dependency; Slicer 5.10's pip has no ``skip_packages``); on Slicer 5.12 and
  newer, ``slicer.packaging.pip_install`` with Slicer's own constraints (:func:`uses_slicer_packaging`).
  :func:`restart_needed` names the imported packages an install changed. torch is never left to
  pip's dependency resolution. :func:`python_executable`: Slicer's Python for child processes.

The background processes themselves (the install and the prediction) are :mod:`.process`'s. Nothing
here imports Qt at module level; ``slicer`` is imported only inside the functions that need the
application.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

#: ``DoseDiffusion/`` (the scripted module's folder: ``DoseDiffusion.py``, ``Logic/``, ``Resources/``).
MODULE_DIR = Path(__file__).resolve().parent.parent
LOGIC_DIR = MODULE_DIR / "Logic"
REQUIREMENTS = MODULE_DIR / "Resources" / "requirements.txt"
#: Lowest torch release the core supports (pyproject's ``torch>=2.4``).
TORCH_REQUIREMENT = ">=2.4"


class DependencyError(RuntimeError):
    """A dependency is missing and could not (or may not) be installed; the message says what to do."""


def ensure_core_package(logic_dir: str | Path | None = None) -> None:
    """Make ``import dosediffusion`` work.

    A pip install (the developer's editable install, a wheel) is used as it is. Otherwise the
    package ``dosediffusion`` is registered with its path set to ``logic_dir`` (default: the
    ``Logic`` folder beside this package), so that ``dosediffusion.case``,
    ``dosediffusion.io.load`` etc. load from there.
    """
    if "dosediffusion" in sys.modules:
        return
    if importlib.util.find_spec("dosediffusion") is not None:
        return
    folder = Path(logic_dir) if logic_dir else LOGIC_DIR
    init = folder / "__init__.py"
    if not init.is_file():
        raise DependencyError(f"the DoseDiffusion core package is missing: no {init}")
    spec = importlib.util.spec_from_file_location("dosediffusion", init, submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["dosediffusion"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["dosediffusion"]
        raise


def read_requirements(path: str | Path = REQUIREMENTS) -> list[str]:
    """Requirement lines of ``path`` without comments, blanks and any torch line."""
    lines = []
    for raw in Path(path).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower() not in ("torch", "torchvision"):
            lines.append(line)
    return lines


def ensure_torch() -> None:
    """PyTorch through SlicerPyTorch (asks the user first); :class:`DependencyError` when it cannot be had."""
    if importlib.util.find_spec("torch") is not None:
        if not _satisfied(f"torch{TORCH_REQUIREMENT}"):
            from importlib import metadata

            raise DependencyError(f"PyTorch {metadata.version('torch')} is older than DoseDiffusion supports "
                                  f"(torch{TORCH_REQUIREMENT}): update it in the 'PyTorch Util' module and restart.")
        return
    try:
        import PyTorchUtils  # the SlicerPyTorch extension's module (an EXTENSION_DEPENDS of ours)
    except ModuleNotFoundError:
        raise DependencyError("DoseDiffusion needs PyTorch: install the 'PyTorch' extension from the Extensions "
                              "Manager, restart Slicer and try again.") from None
    torch_logic = PyTorchUtils.PyTorchUtilsLogic()
    if not torch_logic.torchInstalled():
        torch = torch_logic.installTorch(askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT)
        if torch is None:
            raise DependencyError("PyTorch was not installed; DoseDiffusion cannot predict without it. Install it "
                                  "from the 'PyTorch Util' module and try again.")


def install_command(requirements: Sequence[str], constraints: str | Path | None = None) -> list[str]:
    """The pip command line that installs ``requirements`` into Slicer's Python, run by the module as a
    background process (the GUI stays responsive, its output goes to the log panel), with the
    constraints file ``constraints`` (:func:`write_installed_constraints`: what is installed stays as
    it is). torch is already there (:func:`ensure_torch`), so pip sees it satisfied and never pulls its
    own build."""
    pinned = ["-c", str(constraints)] if constraints else []
    return [python_executable(), "-m", "pip", "install", "--disable-pip-version-check", *pinned, *requirements]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_versions() -> dict[str, str]:
    """Canonical distribution name → installed version, of every distribution this Python sees."""
    from importlib import metadata

    versions = {}
    for distribution in metadata.distributions():
        name = distribution.metadata["Name"] if distribution.metadata else None
        if name and distribution.version:
            versions.setdefault(_canonical(name), distribution.version)
    return versions


def write_installed_constraints(path: str | Path) -> Path:
    """A pip constraints file at ``path`` pinning every installed distribution to its installed
    version (``name==version`` lines): an install that would change one fails with pip's message
    instead of upgrading a package Slicer ships."""
    lines = [f"{name}=={version}" for name, version in sorted(installed_versions().items())]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def uses_slicer_packaging(slicer_version: tuple[int, int], packaging_module=None) -> bool:
    """True when the install goes through Slicer's ``slicer.packaging.pip_install`` (Slicer 5.12 and
    newer, where it applies Slicer's own constraints): ``packaging_module`` is ``slicer.packaging`` or
    None where it cannot be imported."""
    return tuple(slicer_version) >= (5, 12) and callable(getattr(packaging_module, "pip_install", None))


def restart_needed(before: dict[str, str], after: dict[str, str], modules=None) -> list[str]:
    """The distributions whose version changed from ``before`` to ``after`` (:func:`installed_versions`)
    and that have a module imported in this process (``modules``: default ``sys.modules``): Slicer
    must restart to use their new version."""
    from importlib import metadata

    modules = sys.modules if modules is None else modules
    changed = {name for name, version in after.items() if name in before and before[name] != version}
    if not changed:
        return []
    owners = metadata.packages_distributions()
    imported = {_canonical(d) for m in modules if "." not in m for d in owners.get(m, ())}
    return sorted(changed & imported)


def missing_requirements(requirements: Sequence[str]) -> list[str]:
    """The requirements whose distribution is not installed at all (any installed version counts)."""
    from importlib import metadata

    missing = []
    for requirement in requirements:
        try:
            metadata.version(re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0])
        except metadata.PackageNotFoundError:
            missing.append(requirement)
    return missing


def _satisfied(requirement: str) -> bool:
    """True when ``requirement``'s distribution is installed in a version it allows."""
    from importlib import metadata

    try:
        from packaging.requirements import Requirement
    except ImportError:  # no 'packaging': a name-only check
        return not missing_requirements([requirement])
    req = Requirement(requirement)
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        return False
    return req.specifier.contains(version, prereleases=True)


def torch_status() -> str:
    """One line on PyTorch for the module panel: its version and whether CUDA (and which GPU) is there."""
    if importlib.util.find_spec("torch") is None:
        return "PyTorch: not installed (it is installed on the first prediction)"
    import torch

    if torch.cuda.is_available():
        return f"PyTorch {torch.__version__}, CUDA {torch.version.cuda}: {torch.cuda.get_device_name(0)}"
    return f"PyTorch {torch.__version__}, no CUDA GPU: predictions run on the CPU (or use a remote worker)"


def python_executable() -> str:
    """Slicer's Python interpreter (``PythonSlicer``) for child processes, else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable
