"""A command ended by SIGTERM removes what it was writing, as on Ctrl-C; staging folders that a killed
run left behind are removed by the next write of the same folder."""

import os
import subprocess
import sys
import time

from dosediffusion.io.atomic import STAGING_SUFFIX, atomic_folder

#: Writes into a staging folder through the command runner, then receives SIGTERM mid-write.
WRITER = """
import argparse, os, signal, sys, time
from pathlib import Path
from dosediffusion.io.atomic import atomic_folder
from dosediffusion.program import run_command

def work(args):
    with atomic_folder(args.out) as staging:
        (staging / "RTDOSE.part.dcm").write_text("half")
        print(staging, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)

sys.exit(run_command("dosediffusion", argparse.Namespace(run=work, out=Path(sys.argv[1]))))
"""


def test_sigterm_while_writing_removes_the_staging_folder(tmp_path):
    done = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path / "DemoCase")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 143 and "dosediffusion: terminated" in done.stderr, done.stderr
    assert done.stdout.strip()  # it was inside the staging folder when the signal came
    assert list(tmp_path.iterdir()) == []


def test_stale_staging_folders_of_our_naming_are_removed(tmp_path):
    dead = tmp_path / f".DemoCase.abcd1234.{2**22 + 7}{STAGING_SUFFIX}"  # above any Linux pid_max
    alive = tmp_path / f".DemoCase.efgh5678.{os.getpid()}{STAGING_SUFFIX}"
    legacy = tmp_path / ".DemoCase.k3j4h5g6"
    other = tmp_path / ".DemoCase.notours"
    for folder in (dead, alive, legacy, other):
        folder.mkdir()
        (folder / "RTDOSE.part.dcm").write_text("half")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(legacy, (day_ago, day_ago))
    with atomic_folder(tmp_path / "DemoCase") as staging:
        (staging / "done.txt").write_text("ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["DemoCase", alive.name, other.name])
