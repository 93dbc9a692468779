"""The remote GPU worker on loopback: wire format, job queue, auth, limits, validation, cancel,
concurrent and reconnecting clients, and remote == local for a fixed seed."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from model_builders import tiny_pipeline  # noqa: E402
from phantoms import make_phantom_case  # noqa: E402
from safetensors.numpy import save  # noqa: E402

from dosediffusion.cli.main import main  # noqa: E402
from dosediffusion.conditioning.prepare import prepare  # noqa: E402
from dosediffusion.errors import Cancelled, InputError  # noqa: E402
from dosediffusion.io.volume_sidecar import read_volume  # noqa: E402
from dosediffusion.remote import wire  # noqa: E402
from dosediffusion.remote.client import (  # noqa: E402
    RemoteAuthError,
    RemoteBusy,
    RemoteClient,
    RemoteConnectionError,
    RemoteError,
    RemoteJobNotFound,
    RemoteRejected,
    RemoteRequestTooLarge,
    RemoteServerError,
    predict_remote,
)
from dosediffusion.remote.jobs import JobQueue, QueueFull  # noqa: E402
from dosediffusion.remote.server import create_app, serve_in_thread  # noqa: E402

TOKEN = "a-test-token-of-some-length"
LIMIT = 2**20  # bytes; a request for the tiny model is about 0.22 MiB


def assert_same_sample(remote, local):
    """The worker's sample equals the local one for the same seed, to float rounding: the worker runs the model in
    its own thread, whose thread pool may sum in another order (1e-7 seen with OMP_NUM_THREADS=1 under load); another
    seed or model differs by far more."""
    np.testing.assert_allclose(remote, local, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def case():
    return make_phantom_case(spacing=(5.0, 5.0, 5.0))[0]


@pytest.fixture(scope="module")
def reference():
    """The worker's model, run locally."""
    return tiny_pipeline()


@pytest.fixture(scope="module")
def channels(case, reference):
    return prepare(case, reference.preprocessing, include_dose=False).channels


@pytest.fixture(scope="module")
def worker():
    """(url, runs): a worker on loopback with the tiny model; ``runs`` records (start, end) of each model call."""
    pipe, runs, lock = tiny_pipeline(), [], threading.Lock()
    sample = pipe.sample_channels

    def recorded(*args, **kwargs):
        start = time.perf_counter()
        try:
            return sample(*args, **kwargs)
        finally:
            with lock:
                runs.append((start, time.perf_counter()))

    pipe.sample_channels = recorded
    with serve_in_thread(create_app(pipe, TOKEN, LIMIT, device="cpu", max_queued=4)) as url:
        yield url, runs


def client(url, **kwargs):
    return RemoteClient(url, TOKEN, **{"poll_s": 0.2, **kwargs})


# ---- wire format and queue, without a server ------------------------------------------------------
def test_wire_round_trip_and_checks(channels):
    crop = next(iter(channels.values())).shape
    body = wire.encode_request(channels, steps=3, seed=-7, num_candidates=2)
    decoded, options = wire.decode_request(body, crop, set(channels))
    assert options == {"steps": 3, "seed": -7, "num_candidates": 2}
    assert all(np.array_equal(decoded[m], channels[m]) and decoded[m].dtype == np.float32 for m in channels)
    half = save({"ct": channels["ct"].astype(np.float16)}, metadata={"options": json.dumps(options)})
    assert wire.decode_request(half, crop, {"ct"})[0]["ct"].dtype == np.float32
    candidates = np.random.default_rng(0).random((2, *crop), dtype=np.float32)
    back, timing = wire.decode_result(wire.encode_result(candidates, {"run_s": 1.5}), crop)
    assert np.array_equal(back, candidates) and timing == {"run_s": 1.5}
    for options, message in (({"steps": 0, "seed": 0, "num_candidates": 1}, "between 1 and 50"),
                             ({"steps": 2, "seed": 0, "num_candidates": 17}, "between 1 and 16"),
                             ({"steps": True, "seed": 0, "num_candidates": 1}, "integer"),
                             ({"steps": 2, "seed": 2**64, "num_candidates": 1}, "seed must be between"),
                             ({"steps": 2, "seed": 0}, "missing"), ([], "JSON object")):
        with pytest.raises(InputError, match=message):
            wire.check_options(options)


def test_queue_runs_one_job_at_a_time_and_forgets_results():
    clock, active, peak, order = [0.0], [0], [0], []
    release = threading.Event()

    def runner(job):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        release.wait(5)
        order.append(job.options["seed"])
        active[0] -= 1
        if job.options["seed"] == 3:
            raise InputError("bad case")
        if job.options["seed"] == 4:
            raise RuntimeError("patient name must not leak")
        return np.full((1, 2, 2, 2), job.options["seed"], np.float32)

    queue = JobQueue(runner, max_queued=3, ttl_s=10.0, clock=lambda: clock[0])
    try:
        jobs = [queue.submit({}, {"steps": 1, "seed": 0, "num_candidates": 1})]
        deadline = time.monotonic() + 5
        while queue.status(jobs[0].id)["state"] != "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        jobs += [queue.submit({}, {"steps": 1, "seed": s, "num_candidates": 1}) for s in range(1, 4)]
        assert [queue.status(j.id)["queue_position"] for j in jobs] == [0, 1, 2, 3]
        with pytest.raises(QueueFull):
            queue.submit({}, {"steps": 1, "seed": 9, "num_candidates": 1})
        clock[0] = 3.5  # the running job is 3.5 s into the mean run time of 5 s: room in 1.5 s, said as 2
        assert queue.retry_after_s() == 2
        clock[0] = 9.0  # it runs longer than the mean: ask again soon
        assert queue.retry_after_s() == 1
        clock[0] = 0.0
        assert queue.cancel(jobs[1].id).state == "cancelled"
        queue.submit({}, {"steps": 1, "seed": 4, "num_candidates": 1})
        release.set()
        deadline = time.monotonic() + 5
        while any(j.state not in ("done", "failed", "cancelled") for j in queue.jobs.values()) \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        assert peak[0] == 1 and order == [0, 2, 3, 4]
        states = {queue.jobs[j].options["seed"]: (queue.jobs[j].state, queue.jobs[j].error) for j in queue.jobs}
        assert states[3] == ("failed", "bad case") and states[4][1] == "internal error on the worker (RuntimeError)"
        done = queue.take_result(jobs[0].id)
        assert done.result[0, 0, 0, 0] == 0 and done.channels is None and queue.status(jobs[0].id) is None
        clock[0] = 11.0  # past the TTL: every finished job is gone
        assert queue.status(jobs[2].id) is None and not queue.jobs
    finally:
        queue.close()


# ---- the worker over HTTP ---------------------------------------------------------------------------
def test_health_needs_no_token_and_tells_nothing_else(worker):
    url, _ = worker
    response = httpx.get(f"{url}/health")
    assert response.status_code == 200 and response.json() == {"status": "ok", "instance": response.headers[
        "X-DoseDiffusion-Instance"]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        assert httpx.get(f"{url}/model", headers=headers).status_code == 401
        assert httpx.post(f"{url}/jobs", content=b"x", headers=headers).status_code == 401
        assert httpx.get(f"{url}/jobs/abc", headers=headers).status_code == 401
        assert httpx.delete(f"{url}/jobs/abc", headers=headers).status_code == 401
    with pytest.raises(RemoteAuthError, match="401"):
        RemoteClient(url, "wrong-token").model_info()
    info = client(url).model_info()
    assert info["device"] == "cpu" and info["crop_shape"] == [9, 32, 32] and "dose" not in info["modalities"]
    assert set(info["modalities"]) == {"ct", "ptv", "oar", "body", "beam_plate", "angle_plate"}
    assert httpx.get(f"{url}/docs").status_code == 404 and httpx.get(f"{url}/openapi.json").status_code == 404


def test_oversized_bodies_are_refused(worker, channels):
    url, _ = worker
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:  # refused from the header alone
        raw.sendall(f"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                    f"Content-Length: {50 * 2**30}\r\n\r\n".encode())
        assert raw.recv(200).startswith(b"HTTP/1.1 413")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(f"{url}/jobs", content=b"x" * (LIMIT + 1), headers=headers).status_code == 413
    header_length = wire.MAX_HEADER_BYTES.to_bytes(8, "little")  # a header that never ends, no Content-Length:
    chunks = (header_length + b"x" * 2**16 for _ in range(LIMIT // 2**16 + 2))  # counted while streaming
    assert httpx.post(f"{url}/jobs", content=chunks, headers=headers).status_code == 413
    big = {m: np.zeros((9, 32, 32), np.float32) for m in ("ct", "ptv", "oar", "body", "beam_plate")}
    with pytest.raises(RemoteRequestTooLarge):  # the client checks the limit before sending
        client(url).submit({**big, **{f"x{i}": big["ct"] for i in range(25)}}, steps=1, seed=0)


def test_malformed_requests_get_422_with_the_reason(worker, channels):
    url, _ = worker
    headers = {"Authorization": f"Bearer {TOKEN}"}
    options = {"options": json.dumps({"steps": 2, "seed": 0, "num_candidates": 1})}
    ct = channels["ct"]
    bad = {
        "not safetensors": (b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!", "not a safetensors"),
        "empty": (b"", "too short"),
        "wrong shape": (save({"ct": ct[:-1]}, options), "crop is"),
        "int16": (save({"ct": ct.astype(np.int16)}, options), "dtype 'I16'"),
        "float64": (save({"ct": ct.astype(np.float64)}, options), "dtype 'F64'"),
        "unknown channel": (save({"mri": ct}, options), "not conditions"),
        "the target": (save({"dose": ct}, options), "not conditions"),
        "nan": (save({"ct": np.full_like(ct, np.nan)}, options), "values in \\[-1, 1\\]"),
        "3e38": (save({"ct": np.full_like(ct, 3e38)}, options), "values in \\[-1, 1\\]"),
        "no options": (save({"ct": ct}), "exactly 'options'"),
        "extra metadata": (save({"ct": ct}, {**options, "path": "/etc/passwd"}), "exactly 'options'"),
        "options not JSON": (save({"ct": ct}, {"options": "{"}), "not JSON"),
        "unknown option": (save({"ct": ct}, {"options": json.dumps({"steps": 2, "seed": 0, "num_candidates": 1,
                                                                    "device": "cuda"})}), "unknown \\['device'\\]"),
        "too many steps": (save({"ct": ct}, {"options": json.dumps({"steps": 51, "seed": 0, "num_candidates": 1})}),
                           "between 1 and 50"),
        "no channel": (save({}, options), "no condition channel"),
    }
    for name, (body, reason) in bad.items():
        response = httpx.post(f"{url}/jobs", content=body, headers=headers)
        assert response.status_code == 422, name
        assert re.search(reason, response.json()["detail"]), (name, response.json())
    truncated = wire.encode_request({"ct": ct}, 1, 0)[:-100]
    assert httpx.post(f"{url}/jobs", content=truncated, headers=headers).status_code == 422
    with pytest.raises(RemoteRejected, match="not conditions"):
        client(url).submit({"mri": ct}, steps=1, seed=0)
    with pytest.raises(RemoteJobNotFound):
        client(url).status("no-such-job")


def test_remote_prediction_equals_local(worker, case, reference):
    url, _ = worker
    fractions = []
    remote = predict_remote(case, url, TOKEN, steps=2, seed=3, num_candidates=2,
                            progress=lambda f, m: fractions.append(f))
    local = reference(case, steps=2, seed=3, num_candidates=2, device="cpu")
    assert_same_sample(remote.dose_gy, local.dose_gy)
    assert len(remote.candidates_gy) == len(local.candidates_gy) == 2
    for r, v in zip(remote.candidates_gy, local.candidates_gy, strict=True):
        assert_same_sample(r, v)
    assert_same_sample(remote.dose_std_gy, local.dose_std_gy)
    assert remote.dose_std_gy.max() > 0  # every candidate comes back
    assert remote.selected == local.selected and remote.selection_scores == pytest.approx(local.selection_scores)
    assert remote.device == "cpu (remote)" and {"remote_queued", "remote_run", "model"} <= set(remote.timing_s)
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)


def test_cancel_a_running_job(worker, channels):
    url, _ = worker
    with client(url) as remote:
        job = remote.submit(channels, steps=50, seed=0)
        deadline = time.monotonic() + 30
        while (state := remote.status(job, 0.5))["step"] < 1 and time.monotonic() < deadline:
            pass
        assert state["state"] == "running" and state["steps"] == 50
        assert remote.cancel(job)["state"] == "cancelling"
        while (state := remote.status(job, 0.5))["state"] == "running" and time.monotonic() < deadline:
            pass
        assert state["state"] == "cancelled" and state["step"] < 50 and state["error"] is None
        with pytest.raises(RemoteError, match="409 job is cancelled"):
            remote.result(job)
        messages = []

        def cancel_after_first_step():
            return any(m.startswith("step") for m in messages)

        with pytest.raises(Cancelled):
            remote.sample(channels, steps=50, seed=0, progress=lambda f, m: messages.append(m),
                          cancel=cancel_after_first_step)


def test_two_clients_at_once_are_served_in_turn(worker, channels, reference):
    url, runs = worker
    results, errors, start = {}, [], time.perf_counter()

    def one(seed):
        try:
            with client(url) as remote:
                results[seed] = remote.sample(channels, steps=2, seed=seed)
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=one, args=(seed,)) for seed in (11, 12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and sorted(results) == [11, 12]
    for seed, candidates in results.items():
        assert_same_sample(candidates, reference.sample_channels(channels, 2, seed, device="cpu"))
    spans = sorted(runs)
    assert sum(begin >= start for begin, _ in spans) == 2
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))  # one model call at a time


def test_a_job_outlives_its_client(worker, channels, reference):
    url, _ = worker
    first = client(url)
    job = first.submit(channels, steps=2, seed=5)
    first.close()  # the client goes away (its connections with it)
    with client(url) as second:
        second.wait(job)
        candidates, timing = second.result(job)
        assert_same_sample(candidates, reference.sample_channels(channels, 2, 5, device="cpu"))
        assert timing["run_s"] > 0
        deadline = time.monotonic() + 5  # the result is removed once it has been sent
        while time.monotonic() < deadline:
            try:
                second.status(job)
            except RemoteJobNotFound:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the fetched job is still there")


# ---- client behaviour against a fake transport ------------------------------------------------------
def test_client_retries_connection_errors_then_explains():
    calls = []

    def flaky(request):
        calls.append(request.url.path)
        if len(calls) <= 2:
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json={"status": "ok"})

    said = []
    assert RemoteClient("http://worker", transport=httpx.MockTransport(flaky), backoff_s=0.01, notice=said.append).health()
    assert len(calls) == 3 and said[0].startswith("the worker does not answer (ConnectError: refused); trying again "
                                                  "for up to 120 s") and said[1].startswith("the worker answers again")
    calls.clear()
    down = RemoteClient("http://worker", reconnect_s=0.3, backoff_s=0.01,  # a time budget, not a count
                        transport=httpx.MockTransport(lambda r: calls.append(time.monotonic()) or (_ for _ in ()).throw(
                            httpx.ConnectError("no"))))
    with pytest.raises(RemoteConnectionError, match="cannot reach the worker .*; tried for 0.3 s"):
        down.health()
    assert calls[-1] - calls[0] >= 0.25 and len(calls) >= 4  # tried until the budget was spent, backing off
    for status, kind in ((500, RemoteServerError), (503, RemoteBusy), (413, RemoteRequestTooLarge)):
        answer = RemoteClient("http://worker", transport=httpx.MockTransport(
            lambda r, s=status: httpx.Response(s, json={"detail": "why"})))
        with pytest.raises(kind, match=f"{status} why") as caught:
            answer.health()
        assert isinstance(caught.value, InputError)


# ---- the serve command --------------------------------------------------------------------------------
def test_serve_refuses_unsafe_settings(tmp_path, capsys):
    short, shared = tmp_path / "short", tmp_path / "shared"
    short.write_text("abc\n")
    short.chmod(0o600)
    shared.write_text(TOKEN)
    shared.chmod(0o644)
    for argv, message in ((["--host", "0.0.0.0"], "non-loopback host '0.0.0.0' without --token-file"),
                          (["--host", "0.0.0.0", "--no-auth"], "non-loopback"),
                          ([], "give --token-file"),
                          (["--token-file", str(short)], "shorter than 16"),
                          (["--token-file", str(shared)], "readable by every user of this machine: chmod 600"),
                          (["--token-file", str(tmp_path / "missing")], "cannot read the token file")):
        assert main(["serve", "--model", str(tmp_path), *argv]) == 2
        assert message in capsys.readouterr().err


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_token(folder: Path) -> Path:
    """A token file of :data:`TOKEN`, readable by its owner only."""
    token = folder / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    return token


def start_worker(model: Path, port: int, token: Path, log: Path) -> subprocess.Popen:
    """``dosediffusion serve`` of ``model`` on 127.0.0.1:``port`` in a process of its own (its output in
    ``log``), returned once its ``/health`` answers; a worker that has not answered within 60 s is killed."""
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "dosediffusion.cli.main", "serve", "--model", str(model),
                                    "--port", str(port), "--token-file", str(token), "--device", "cpu"],
                                   stdout=out, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    process.wait()
    pytest.fail(f"the worker did not start: {log.read_text()[-2000:]}")


def test_serve_command_runs_a_worker(tmp_path):
    model = tiny_pipeline().save_pretrained(tmp_path / "tiny")
    port = free_port()
    process = start_worker(model, port, write_token(tmp_path), tmp_path / "worker.log")
    try:
        url = f"http://127.0.0.1:{port}"
        assert client(url).model_info()["device"] == "cpu"
        assert httpx.get(f"{url}/model").status_code == 401
    finally:
        process.terminate()
        process.wait(30)
    log = (tmp_path / "worker.log").read_text()
    assert "serving on http://127.0.0.1" in log and TOKEN not in log


def test_predict_remote_outlives_a_worker_restart(phantom_dicom, tmp_path):
    """``predict --remote`` waits while its worker is stopped mid-job (SIGTERM) and started again, submits the
    lost job again, says so, and writes the dose it writes without the restart."""
    folder, port = phantom_dicom[0], free_port()
    model, token = tiny_pipeline().save_pretrained(tmp_path / "tiny"), write_token(tmp_path)
    common = [str(folder), "--steps", "50", "--seed", "4", "--no-report", "--scorecard", "none"]
    assert main(["predict", *common, "--out", str(tmp_path / "local"), "--model", str(model), "--device", "cpu"]) == 0
    workers = [start_worker(model, port, token, tmp_path / "first.log")]
    predict = subprocess.Popen([sys.executable, "-m", "dosediffusion.cli.main", "predict", *common, "--out",
                                str(tmp_path / "remote"), "--remote", f"http://127.0.0.1:{port}", "--token-file",
                                str(token), "--reconnect-s", "90", "--progress-json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(300, predict.kill)  # the client stops by itself; this bounds a hung one too
    watchdog.start()
    try:
        step = next((line for line in predict.stdout if '"message": "step ' in line), None)  # EOF ends it too
        assert step, "the client never reported a model step"
        workers[0].terminate()  # the restart: SIGTERM, then the same command again on the same port
        workers[0].wait(30)
        workers.append(start_worker(model, port, token, tmp_path / "second.log"))
        err = predict.communicate(timeout=240)[1]
    finally:
        watchdog.cancel()
        for process in (predict, *workers):
            if process.poll() is None:
                process.kill()
            process.wait()
    assert predict.returncode == 0, err
    assert "trying again for up to 90 s" in err and "the worker answers again after" in err
    assert "the worker restarted and lost the job; it was submitted again" in err
    local, remote = (read_volume(tmp_path / side / folder.name / "dose.nrrd")[0] for side in ("local", "remote"))
    assert_same_sample(remote, local)
    summary = json.loads((tmp_path / "remote" / folder.name / "summary.json").read_text())
    assert "the worker restarted and lost the job; it was submitted again" in summary["warnings"]


def test_predict_remote_writes_the_local_files(worker, phantom_dicom, tmp_path, capsys):
    url, _ = worker
    folder = phantom_dicom[0]
    model = tiny_pipeline().save_pretrained(tmp_path / "tiny")
    token = tmp_path / "token"
    token.write_text(TOKEN)
    common = [str(folder), "--steps", "2", "--seed", "4", "--no-report", "--scorecard", "none"]
    assert main(["predict", *common, "--out", str(tmp_path / "local"), "--model", str(model), "--device", "cpu"]) == 0
    assert main(["predict", *common, "--out", str(tmp_path / "remote"), "--remote", url,
                 "--token-file", str(token)]) == 0
    local, remote = (read_volume(tmp_path / side / folder.name / "dose.nrrd")[0] for side in ("local", "remote"))
    assert_same_sample(remote, local)
    summary = json.loads((tmp_path / "remote" / folder.name / "summary.json").read_text())
    assert summary["device"] == "cpu (remote)"
    assert main(["predict", *common, "--out", str(tmp_path / "x"), "--remote", url]) == 2  # no token: 401, reported
    for wrong in (["--reconnect-s", "5"], ["--remote", url, "--reconnect-s", "-1"], ["--remote", url, "--reconnect-s",
                                                                                      "nan"]):
        assert main(["predict", *common, "--out", str(tmp_path / "y"), *wrong]) == 2
        assert "--reconnect-s goes with --remote and is seconds, 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
