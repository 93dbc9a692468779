"""Ending a background process with everything it started.

Slicer starts Python children through its launcher (``PythonSlicer`` is a launcher that starts the
real interpreter), so killing the launcher alone orphans the process that holds the GPU and keeps
writing. :func:`terminate_process_tree` ends the whole tree, children first (as MONAIAuto3DSeg
does), with psutil when it is there. Slicer 5.10 does not bundle psutil, and the first background
process is the pip that installs it: without psutil the tree is found with the system's own tools
(``ps`` on Linux and macOS; ``taskkill /T`` ends a tree on Windows). No Qt and no ``slicer`` here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def terminate_process_tree(pid: int, timeout_s: float = 5.0) -> None:
    """Terminate process ``pid`` and all its descendants; kill those still alive after ``timeout_s``;
    return when all are gone (a process that has ended already is fine)."""
    try:
        import psutil
    except ImportError:
        _terminate_without_psutil(pid, timeout_s)
        return
    try:
        root = psutil.Process(pid)
        tree = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for process in tree:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=timeout_s)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout_s)


def _terminate_without_psutil(pid: int, timeout_s: float) -> None:
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/PID", str(pid), "/T", "/F"], capture_output=True, check=False)
        return
    tree = [*descendants(pid), pid]
    _signal_all(tree, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_running(p) for p in tree):
        time.sleep(0.05)
    _signal_all([p for p in tree if _running(p)], signal.SIGKILL)


def _process_table() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, state letter) of every process, from ``ps`` (POSIX)."""
    done = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid=", "-o", "stat="], capture_output=True, text=True,
                          check=False)
    table = {}
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0].isdigit() and fields[1].isdigit():
            table[int(fields[0])] = (int(fields[1]), fields[2])
    return table


def descendants(pid: int) -> list[int]:
    """The pids of ``pid``'s children, grandchildren, …, deepest first (POSIX, through ``ps``)."""
    children: dict[int, list[int]] = {}
    for child, (parent, _) in _process_table().items():
        children.setdefault(parent, []).append(child)
    found, stack = [], list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack += children.get(child, [])
    return found[::-1]


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an ended child its parent has not waited for)."""
    entry = _process_table().get(pid)
    return entry is not None and not entry[1].startswith("Z")


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
