"""How both command-line programs (``dosediffusion``, ``dosediffusion-train``) run a sub-command.

A user's mistake (:class:`~dosediffusion.errors.InputError`) prints one line
``PROG: error: <file>: <problem>`` and exits with code 2; Ctrl-C exits with 130 and SIGTERM with 143,
both after the files being written are cleaned up as on any error; a reader that
closes the pipe early (``dosediffusion inspect CASE --json | head``) ends the output quietly.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from dosediffusion.errors import InputError

#: The exit code of a process ended by SIGPIPE (128 + 13), as a shell reports it.
EXIT_BROKEN_PIPE = 141
#: The exit code of a process ended by SIGTERM (128 + 15).
EXIT_TERMINATED = 143


class Terminated(BaseException):
    """SIGTERM arrived: raised where the program is, so that staging files and folders are removed on the
    way out (a BaseException, like KeyboardInterrupt, so that no ``except Exception`` swallows it)."""


def _terminate(signum, frame) -> None:
    raise Terminated


def run_command(prog: str, args: argparse.Namespace) -> int:
    """``args.run(args)`` with the program's error, interrupt, termination and closed-pipe handling."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return _run(prog, args)
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(prog: str, args: argparse.Namespace) -> int:
    try:
        code = int(args.run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        return code
    except InputError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{prog}: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except BrokenPipeError:
        # Python flushes stdout again at exit; point it at devnull so that no second error is printed.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
