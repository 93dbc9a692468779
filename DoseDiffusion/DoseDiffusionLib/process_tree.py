"""Ending a background process with everything it started.

Slicer starts Python children through its launcher (``PythonSlicer`` is a launcher that starts the
real interpreter), so killing the launcher alone orphans the process that holds the GPU and keeps
writing. :func:`terminate_process_tree` ends the whole tree, children first (as MONAIAuto3DSeg
does, with psutil). No Qt and no ``slicer`` here.
"""

from __future__ import annotations


def terminate_process_tree(pid: int, timeout_s: float = 5.0) -> None:
    """Terminate process ``pid`` and all its descendants; kill those still alive after ``timeout_s``;
    return when all are gone (a process that has ended already is fine)."""
    import psutil

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
