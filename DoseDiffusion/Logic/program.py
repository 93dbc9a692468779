"""How both command-line programs (``dosediffusion``, ``dosediffusion-train``) run a sub-command.

A user's mistake (:class:`~dosediffusion.errors.InputError`) prints one line
``PROG: error: <file>: <problem>`` and exits with code 2; Ctrl-C exits with 130; a reader that
closes the pipe early (``dosediffusion inspect CASE --json | head``) ends the output quietly.
"""

from __future__ import annotations

import argparse
import os
import sys

from dosediffusion.errors import InputError

#: The exit code of a process ended by SIGPIPE (128 + 13), as a shell reports it.
EXIT_BROKEN_PIPE = 141


def run_command(prog: str, args: argparse.Namespace) -> int:
    """``args.run(args)`` with the program's error, interrupt and closed-pipe handling."""
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
    except BrokenPipeError:
        # Python flushes stdout again at exit; point it at devnull so that no second error is printed.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
