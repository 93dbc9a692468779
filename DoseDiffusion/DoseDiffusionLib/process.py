"""The module's background processes: the prediction (``dosediffusion predict`` in a child process) and
the install of missing packages, as the Logic runs them (MONAIAuto3DSeg keeps its own in
``MONAIAuto3DSegLib/process.py`` likewise).

- :func:`start_install`: pip in a child process, constrained to every installed version.
- :func:`start_prediction`: the scene's case is checked (what cannot be predicted is refused before a
  process starts), written into a work folder as the project's compact case file
  (:mod:`dosediffusion.io.compact`: CT, masks and roles, beams, prescription, warnings and the DICOM
  identifiers of ``Case.meta``: patient, study, frame of reference, plan, PatientPosition, so that the
  child's RTDOSE is on the CT's study and frame of reference and its plates follow the patient's
  position), and the child is started with :func:`predict_command`.
- :class:`BackgroundProcess`: a started command whose output a thread reads as UTF-8
  (:mod:`.process_output`); each :meth:`~BackgroundProcess.poll` returns what it said since the last
  (:class:`ProcessUpdate`: progress events, log lines, and once it has ended its exit code, the last
  lines of its log and, for a prediction, the folder it wrote); :meth:`~BackgroundProcess.cancel` ends
  the whole process tree (:mod:`.process_tree`: the launcher and the Python it started);
  :meth:`~BackgroundProcess.close` removes the work folder.
- :func:`parse_progress_line`: the child's ``--progress-json`` lines.

Running this file as a script is the child: the core's command line (``PythonSlicer process.py predict
CASE --out DIR ...``, the same as the ``dosediffusion`` entry point of a pip install), with the core found
in the module's ``Logic/`` folder. Nothing here imports Qt; ``slicer`` only in :func:`launch_console_process`.
"""

from __future__ import annotations

import json
import queue
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROGRESS_PREFIX = "{"
#: Lines of the log that come with a failed process's exit code.
TAIL_LINES = 30
#: The child's environment: UTF-8 output on every platform (Windows' console code page cannot print "→").
CHILD_ENVIRONMENT = {"PYTHONUTF8": "1"}


@dataclass(frozen=True)
class ProgressEvent:
    """One ``--progress-json`` line: ``fraction`` in [0, 1] of the case ``case``."""

    case: str
    fraction: float
    message: str


def parse_progress_line(line: str) -> ProgressEvent | None:
    """The progress event that ends one output line of the prediction process, None for any other line.

    The child's stderr comes in the same pipe (``launchConsoleProcess``), and its progress bar is
    written without a line end: a JSON line may follow a bar's text on the same line."""
    line = line.strip()
    decoder = json.JSONDecoder()
    start = line.find(PROGRESS_PREFIX)
    while start >= 0:
        try:
            doc, end = decoder.raw_decode(line, start)
        except ValueError:
            doc, end = None, -1
        if end == len(line) and isinstance(doc, dict) and doc.get("event") == "progress":
            try:
                return ProgressEvent(str(doc.get("case", "")), min(max(float(doc["fraction"]), 0.0), 1.0),
                                     str(doc.get("message", "")))
            except (KeyError, TypeError, ValueError):
                return None
        start = line.find(PROGRESS_PREFIX, start + 1)
    return None


def predict_command(case_path: str | Path, out_dir: str | Path, model: str | Path = "demo", steps: int = 10,
                    candidates: int = 1, device: str = "auto", scorecard: str | None = None, seed: int = 0,
                    remote: str | None = None, token_file: str | Path | None = None,
                    python: str | None = None) -> list[str]:
    """The argument list of the background prediction: ``<python> process.py predict CASE --out DIR ...``
    with machine-readable progress (``--progress-json``) and no report image; on the worker at ``remote``
    (its token in ``token_file``) when given. ``python``: default Slicer's (``PythonSlicer``)."""
    if python is None:
        from .dependencies import python_executable

        python = python_executable()
    args = [python, str(Path(__file__).resolve()), "predict", str(case_path), "--model", str(model), "--out",
            str(out_dir), "--steps", str(int(steps)), "--candidates", str(int(candidates)), "--seed", str(int(seed)),
            "--device", device, "--no-report", "--progress-json"]
    if scorecard:
        args += ["--scorecard", str(scorecard)]
    if remote:
        args += ["--remote", remote] + (["--token-file", str(token_file)] if token_file else [])
    return args


def launch_console_process(command: Sequence[str], environment: dict[str, str]):
    """Start ``command`` as Slicer starts a console process (``slicer.util.launchConsoleProcess``: the
    startup environment plus ``environment``, a hidden console on Windows, stdout and stderr in one text
    pipe); returns the ``subprocess.Popen``."""
    import slicer

    return slicer.util.launchConsoleProcess(list(command), updateEnvironment=environment)


@dataclass
class ProcessUpdate:
    """What a background process said since the last poll.

    Attributes:
        events: its progress events, in order.
        lines: its other non-empty output lines (without line ends).
        returncode: its exit code once it has ended and all its output is read; None while it runs.
        tail: once it has ended, the last :data:`TAIL_LINES` lines of its log (for an error message).
        result: once a prediction has ended with 0, the folder it wrote; else None.
    """

    events: list[ProgressEvent] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    returncode: int | None = None
    tail: str = ""
    result: Path | None = None


class BackgroundProcess:
    """One started command: ``launch(command, environment)`` starts it (default
    :func:`launch_console_process`); a daemon thread reads its output as UTF-8 into a queue, which
    :meth:`poll` empties. ``work`` is the folder it works in (removed by :meth:`close` and
    :meth:`cancel`); ``result`` the folder a prediction writes."""

    def __init__(self, command: Sequence[str], work: Path | None = None, result: Path | None = None,
                 launch: Callable[[Sequence[str], dict[str, str]], Any] | None = None):
        from .process_output import start_reader

        self.command, self.work, self.result = list(command), work, result
        self.log: list[str] = []
        self._lines: queue.Queue = queue.Queue()
        self.process = (launch or launch_console_process)(self.command, dict(CHILD_ENVIRONMENT))
        self._reader = start_reader(self.process.stdout, self._lines.put)

    def poll(self) -> ProcessUpdate:
        """What the process said since the last call; with its exit code once it has ended."""
        ended = self.process.poll() is not None and not self._reader.is_alive()  # then every line is queued
        update = ProcessUpdate()
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            event = parse_progress_line(line)
            if event is not None:
                update.events.append(event)
            elif line.strip():
                update.lines.append(line.rstrip())
        self.log += update.lines
        if ended:
            update.returncode = self.process.returncode
            update.tail = "\n".join(self.log[-TAIL_LINES:])
            if update.returncode == 0 and self.result is not None and self.result.is_dir():
                update.result = self.result
        return update

    def wait(self, timeout_s: float | None = None) -> ProcessUpdate:
        """Block until the process has ended (batch use, tests); everything it said since the last poll."""
        self.process.wait(timeout_s)
        self._reader.join(timeout_s)
        return self.poll()

    def cancel(self) -> None:
        """End the process with everything it started (so that nothing keeps the GPU or writes afterwards),
        then remove the work folder."""
        from .process_tree import terminate_process_tree

        terminate_process_tree(self.process.pid)
        self.process.wait()
        self.close()

    def close(self) -> None:
        """Remove the work folder (after the results were taken)."""
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)


def start_prediction(case, model: str | Path, steps: int = 10, candidates: int = 1, device: str = "auto",
                     scorecard: str | None = None, seed: int = 0, remote: str | None = None,
                     token_file: str | Path | None = None, python: str | None = None,
                     launch: Callable[[Sequence[str], dict[str, str]], Any] | None = None) -> BackgroundProcess:
    """Predict the :class:`dosediffusion.case.Case` ``case`` in a child process (see the module's text);
    ``model`` is a pipeline folder (or ``demo``). Refuses a case that cannot be predicted
    (``InputError``) before anything is written or started."""
    from dosediffusion.cli.batch import case_name
    from dosediffusion.io.compact import SUFFIX, write_compact
    from dosediffusion.prediction.checks import check_predictable

    check_predictable(case)
    work = Path(tempfile.mkdtemp(prefix="DoseDiffusion-"))
    try:
        case_path = write_compact(case, work / f"case{SUFFIX}")
        command = predict_command(case_path, work / "out", model, steps, candidates, device, scorecard, seed, remote,
                                  token_file, python)
        return BackgroundProcess(command, work, work / "out" / case_name(case_path), launch)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def start_install(requirements: Sequence[str],
                  launch: Callable[[Sequence[str], dict[str, str]], Any] | None = None) -> BackgroundProcess:
    """pip-install ``requirements`` into Slicer's Python in a child process, constrained to every version
    already installed (``dependencies.write_installed_constraints``, in the work folder)."""
    from .dependencies import install_command, write_installed_constraints

    work = Path(tempfile.mkdtemp(prefix="DoseDiffusion-pip-"))
    try:
        constraints = write_installed_constraints(work / "installed-constraints.txt")
        return BackgroundProcess(install_command(requirements, constraints), work, launch=launch)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """The child: the core's command line, with the core found as ``dependencies.ensure_core_package``
    finds it (importing ``DoseDiffusionLib`` does)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import DoseDiffusionLib  # noqa: F401  (makes ``import dosediffusion`` work)
    from dosediffusion.cli.main import main as core_main

    return core_main(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
