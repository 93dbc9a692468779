"""Robust training runs: several processes log and learn as one batch, a non-finite step stops before
the weights change, a stalled step ends the run; each leaves the last good checkpoint to resume."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import yaml
from training_data import write_training_cases

from dosediffusion.model.pipeline import DoseDiffusionPipeline
from dosediffusion_training.cli import main
from dosediffusion_training.training.guards import EXIT_STALLED, StallWatchdog


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_training_cases(tmp_path_factory.mktemp("compact"), range(3), (12, 32, 40))


def _config(tmp_path, data, name="run.yaml", **train):
    raw = {"data": {"folder": str(data)}, "preprocessing": {"crop_shape": [9, 32, 32], "spacing_mm": [5.0, 5.0, 5.0]},
           "codec": {"type": "patch", "factors": [1, 4, 4]}, "model": {"size": "tiny", "patch_size": [1, 2, 2]},
           "train": {"steps": 3, "batch_size": 1, "learning_rate": 1e-3, "warmup_steps": 1, "checkpoint_every": 3,
                     "tensorboard": False, **train}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _logged(run):
    return [json.loads(line) for line in (run / "loss.jsonl").read_text().splitlines()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_and_log_as_one_batch_of_two(tmp_path, data):
    """DDP on two CPU processes (gloo), one case each, against one process with a batch of two: the
    same weights, and the logged loss is the mean over both processes, not process 0's own."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(_free_port()), "-m", "dosediffusion_training.cli", "fit", "--config",
                          str(_config(tmp_path, data, "two.yaml")), "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert main(["fit", "--config", str(_config(tmp_path, data, "one.yaml", batch_size=2)),
                 "--out", str(tmp_path / "one")]) == 0
    a = DoseDiffusionPipeline.from_pretrained(tmp_path / "two" / "pipeline").model.state_dict()
    b = DoseDiffusionPipeline.from_pretrained(tmp_path / "one" / "pipeline").model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    for mine, theirs in zip(_logged(tmp_path / "two"), _logged(tmp_path / "one"), strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-5)


def test_a_non_finite_step_stops_before_the_update_and_resume_continues(tmp_path, data, capsys, monkeypatch):
    import dosediffusion_training.training.loop as loop

    real, calls = loop.collate, []

    def poisoned(items):  # step 2's batch holds a NaN (a corrupt case, a bad augmentation, ...)
        batch = real(items)
        calls.append(1)
        if len(calls) == 2:
            batch["ct"][..., 0, 0, 0] = float("nan")
        return batch

    monkeypatch.setattr(loop, "collate", poisoned)
    run, config = tmp_path / "run", _config(tmp_path, data, steps=4, checkpoint_every=1)
    assert main(["fit", "--config", str(config), "--out", str(run)]) == 2
    message = capsys.readouterr().err
    assert "step 2: the loss or the gradient became infinite or NaN on 1 of 1 processes" in message
    assert f"the last good checkpoint is {run / 'checkpoints' / 'step_1'}" in message
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_1"]
    assert not (run / "pipeline").exists()
    assert [x["step"] for x in _logged(run)] == [1]
    monkeypatch.setattr(loop, "collate", real)
    assert main(["fit", "--config", str(config), "--out", str(run)]) == 0
    assert main(["fit", "--config", str(config), "--out", str(tmp_path / "straight")]) == 0
    assert [x["step"] for x in _logged(run)] == [1, 2, 3, 4]
    a = DoseDiffusionPipeline.from_pretrained(run / "pipeline").model.state_dict()
    b = DoseDiffusionPipeline.from_pretrained(tmp_path / "straight" / "pipeline").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the NaN step left no trace


def test_the_watchdog_fires_only_without_beats():
    fired = []
    with StallWatchdog(0.4, lambda: "here", fired.append) as watchdog:
        for _ in range(8):
            time.sleep(0.1)
            watchdog.beat()
        assert fired == []
        time.sleep(1.2)
    assert fired and "no training step completed" in fired[0] and fired[0].endswith("here")
    fired.clear()
    with StallWatchdog(0.0, on_stall=fired.append):  # 0 turns it off
        time.sleep(0.5)
    assert fired == []


def test_a_stalled_step_ends_the_run_with_the_last_checkpoint(tmp_path, data):
    """Step 3 never finishes (its batch never arrives): the run ends with exit 3 naming step_2."""
    config = _config(tmp_path, data, steps=5, checkpoint_every=1, stall_timeout_s=2.0)
    script = textwrap.dedent(f"""
        import time
        import dosediffusion_training.training.loop as loop
        real, calls = loop.collate, []
        def collate(items):
            calls.append(1)
            if len(calls) == 3:
                time.sleep(600)
            return real(items)
        loop.collate = collate
        from dosediffusion_training.cli import main
        main(["fit", "--config", {str(config)!r}, "--out", {str(tmp_path / "run")!r}])
    """)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_STALLED, done.stderr[-2000:]
    assert time.monotonic() - started < 60
    assert "no training step completed for" in done.stderr
    assert f"the last good checkpoint is {tmp_path / 'run' / 'checkpoints' / 'step_2'}" in done.stderr
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_1", "step_2"]
