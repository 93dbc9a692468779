"""Reading a background process's output as UTF-8, whatever the locale's code page.

``slicer.util.launchConsoleProcess`` opens the pipe in text mode with the locale's encoding (cp1252
on most Windows machines). The module's child writes UTF-8 (it is started with ``PYTHONUTF8=1``):
tqdm's partial blocks ("▏") and "→" do not decode as cp1252, and a reader thread that raises
``UnicodeDecodeError`` dies, the pipe fills and the progress bar freezes. Slicer's own
``logProcessOutput`` and MONAIAuto3DSeg's reader catch ``UnicodeDecodeError`` and drop the line; here
the stream is switched to UTF-8 with replacement before anything is read, so no line is lost and
no character can stop the reader. No Qt and no ``slicer`` here.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable


def read_lines_utf8(stream: io.TextIOWrapper, put: Callable[[str], None]) -> None:
    """Call ``put`` with every line of ``stream`` (a process's text-mode stdout, nothing read from it
    yet), decoded as UTF-8 with undecodable bytes replaced (U+FFFD), until the stream ends."""
    stream.reconfigure(encoding="utf-8", errors="replace")
    for line in iter(stream.readline, ""):
        put(line)


def start_reader(stream: io.TextIOWrapper, put: Callable[[str], None]) -> threading.Thread:
    """A daemon thread running :func:`read_lines_utf8` on ``stream`` (started)."""
    reader = threading.Thread(target=read_lines_utf8, args=(stream, put), daemon=True)
    reader.start()
    return reader
