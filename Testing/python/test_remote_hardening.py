"""The remote worker against attackers and careless clients on loopback: half-open connections,
malformed headers, oversized and unknown tensors, restarts, non-finite results, disconnects, token
hygiene, and busy workers."""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from model_builders import tiny_pipeline, tiny_regression  # noqa: E402
from phantoms import make_phantom_case  # noqa: E402
from safetensors.numpy import save  # noqa: E402

from dosediffusion.cli.main import main  # noqa: E402
from dosediffusion.cli.serve import resolve_token  # noqa: E402
from dosediffusion.conditioning.prepare import prepare  # noqa: E402
from dosediffusion.model.pipeline import DoseDiffusionPipeline  # noqa: E402
from dosediffusion.remote import wire  # noqa: E402
from dosediffusion.remote.client import RemoteClient, RemoteJobFailed, RemoteRejected  # noqa: E402
from dosediffusion.remote.connection_guard import ConnectionGuard  # noqa: E402
from dosediffusion.remote.logs import QueryRedactFilter, RateLimitFilter  # noqa: E402
from dosediffusion.remote.server import create_app, request_limit, serve_in_thread, server_config  # noqa: E402

TOKEN = "a-test-token-of-some-length"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OPTIONS = {"options": json.dumps({"steps": 2, "seed": 0, "num_candidates": 1})}


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def channels(pipe):
    case = make_phantom_case(spacing=(5.0, 5.0, 5.0))[0]
    return prepare(case, pipe.preprocessing, include_dose=False).channels


@pytest.fixture(scope="module")
def worker(pipe):
    with serve_in_thread(create_app(pipe, TOKEN, device="cpu", max_queued=4)) as url:
        yield url


def _raw(header: bytes | dict, data: bytes = b"") -> bytes:
    """A safetensors-like body with exactly this header."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


# ---- malformed input: 422 with the reason, never 500 ------------------------------------------------


def test_malformed_headers_are_422(worker, channels):
    ct = {"dtype": "F32", "shape": [9, 32, 32], "data_offsets": [0, 9 * 32 * 32 * 4]}
    bad = {
        "5,000-digit integer": (_raw(b'{"__metadata__": {"options": "{}"}, "ct": {"dtype": "F32", "shape": [' +
                                     b"9" * 5000 + b"]}}"), "not JSON of a usable size"),
        "50,000-deep nesting": (_raw(b"[" * 50000 + b"]" * 50000), "not JSON of a usable size"),
        "deep options": (_raw({"__metadata__": {"options": "[" * 50000 + "]" * 50000}, "ct": ct}), "not JSON"),
        "shape of the wrong type": (_raw({"__metadata__": OPTIONS, "ct": {**ct, "shape": "abc"}}), "has shape 'abc'"),
        "shape a number": (_raw({"__metadata__": OPTIONS, "ct": {**ct, "shape": 5}}), "has shape 5"),
        "dtype a list": (_raw({"__metadata__": OPTIONS, "ct": {**ct, "dtype": ["F32"]}}), "has dtype \\['F32'\\]"),
        "offsets a string": (_raw({"__metadata__": OPTIONS, "ct": {**ct, "data_offsets": "0"}}), "data offsets"),
        "offsets overlapping": (_raw({"__metadata__": OPTIONS, "ct": ct, "ptv": ct}), "data offsets"),
        "metadata not strings": (_raw({"__metadata__": {"options": 5}, "ct": ct}), "map strings to strings"),
    }
    for name, (body, reason) in bad.items():
        response = httpx.post(f"{worker}/jobs", content=body, headers=AUTH)
        assert response.status_code == 422, (name, response.status_code, response.text[:200])
        assert pytest.importorskip("re").search(reason, response.json()["detail"]), (name, response.json())


def test_unknown_tensors_are_refused_before_their_bytes_arrive(worker, channels):
    body = wire.encode_request({"mri": channels["ct"]}, 1, 0)
    header_end = wire.header_size(body)
    with socket.create_connection(_address(worker), timeout=10) as raw:
        raw.sendall(f"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:header_end])
        answer = b""
        while b"not conditions" not in answer and (chunk := raw.recv(4096)):  # the tensor bytes never sent
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 422") and b"not conditions of this model" in answer


def test_the_default_body_limit_is_the_models_input(pipe, channels):
    with serve_in_thread(create_app(pipe, TOKEN, device="cpu")) as url:
        info = RemoteClient(url, TOKEN).model_info()
        limit = request_limit((9, 32, 32), 6)
        assert info["max_request_bytes"] == limit < 2**20  # not 512 MiB
        assert httpx.post(f"{url}/jobs", content=b"\0" * (limit + 1), headers=AUTH).status_code == 413
        with RemoteClient(url, TOKEN, poll_s=0.2) as client:
            assert client.sample(channels, 1, 0).shape == (1, 9, 32, 32)  # a whole legal request fits


def test_inputs_outside_the_physical_range_are_422(worker, channels):
    for value in (3e38, np.inf, -1.5, 1.0005, -1.0005):
        body = save({"ct": np.full_like(channels["ct"], value)}, OPTIONS)
        response = httpx.post(f"{worker}/jobs", content=body, headers=AUTH)
        assert response.status_code == 422 and "values in [-1, 1]" in response.json()["detail"]
    for value in (1.0, -1.0):  # the bounds themselves, also as float16
        for dtype in (np.float32, np.float16):
            body = save({"ct": np.full_like(channels["ct"], value, dtype=dtype)}, OPTIONS)
            assert httpx.post(f"{worker}/jobs", content=body, headers=AUTH).status_code == 202


# ---- results and restarts ------------------------------------------------------------------------


def test_a_non_finite_result_fails_the_job_with_the_reason(channels):
    class Broken(DoseDiffusionPipeline):
        def sample_channels(self, channels, steps, seed, num_candidates, **kwargs):
            return np.full((num_candidates, 9, 32, 32), np.nan, np.float32)

    parts = tiny_pipeline()
    broken = Broken(parts.codec, parts.model, parts.scheduler, parts.preprocessing)
    with serve_in_thread(create_app(broken, TOKEN, device="cpu")) as url, RemoteClient(url, TOKEN, poll_s=0.2) as c:
        with pytest.raises(RemoteJobFailed, match="not finite"):
            c.sample(channels, 1, 0)


def test_a_regression_worker_refuses_several_candidates_and_says_it_gives_one(channels):
    with serve_in_thread(create_app(tiny_regression(), TOKEN, device="cpu")) as url, \
            RemoteClient(url, TOKEN, poll_s=0.2) as client:
        assert client.model_info()["max_candidates"] == 1
        with pytest.raises(RemoteRejected, match="computes one deterministic dose: 3 candidates"):
            client.sample(channels, 1, 0, num_candidates=3)
        assert client.sample(channels, 1, 0).shape == (1, 9, 32, 32)


def test_every_response_names_the_worker_instance(worker, pipe):
    answers = [httpx.get(f"{worker}/health"), httpx.get(f"{worker}/model"), httpx.get(f"{worker}/jobs/x", headers=AUTH),
               httpx.post(f"{worker}/jobs", content=b"", headers=AUTH)]
    assert [a.status_code for a in answers] == [200, 401, 404, 422]
    instances = {a.headers["X-DoseDiffusion-Instance"] for a in answers}
    assert len(instances) == 1 and answers[0].json()["instance"] in instances
    with serve_in_thread(create_app(pipe, TOKEN, device="cpu")) as other:
        assert httpx.get(f"{other}/health").headers["X-DoseDiffusion-Instance"] not in instances
    for head in (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 2**17 + b"\r\n\r\n",  # uvicorn's own 400s
                 b"NOT AN HTTP REQUEST\r\n\r\n"):
        with socket.create_connection(_address(worker), timeout=10) as raw:
            raw.sendall(head)
            answer = b""
            while b"\r\n\r\n" not in answer and (chunk := raw.recv(4096)):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
        assert f"x-dosediffusion-instance: {answers[0].json()['instance']}\r\n".encode() in answer.lower()


def test_a_restarted_worker_gets_the_lost_job_again(pipe, channels):
    expected = pipe.sample_channels(channels, 30, 4, device="cpu")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client, outcome = RemoteClient(f"http://127.0.0.1:{port}", TOKEN, poll_s=0.1, backoff_s=0.2), {}
    messages = []

    def run():
        outcome["result"] = client.sample(channels, 30, 4, progress=lambda f, m: messages.append(m))

    with serve_in_thread(create_app(tiny_pipeline(), TOKEN, device="cpu"), port=port):
        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 30
        while not any(m.startswith("step") for m in messages) and time.monotonic() < deadline:
            time.sleep(0.02)
        first = client.instance
    with serve_in_thread(create_app(tiny_pipeline(), TOKEN, device="cpu"), port=port):  # the restart
        thread.join(60)
    assert client.instance != first
    assert client.warnings == ["the worker restarted and lost the job; it was submitted again"]
    np.testing.assert_array_equal(outcome["result"], expected)


# ---- connections ---------------------------------------------------------------------------------


def test_half_open_connections_cannot_take_the_worker_down(pipe):
    guard = ConnectionGuard(header_timeout_s=1.0, max_pending=64, max_pending_per_ip=32)
    with serve_in_thread(create_app(pipe, TOKEN, device="cpu"), guard=guard) as url:
        sockets = []
        try:
            for _ in range(1100):  # never finish their headers
                raw = socket.create_connection(_address(url), timeout=10)
                raw.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                sockets.append(raw)
            start = time.perf_counter()
            assert httpx.get(f"{url}/health", timeout=5).status_code == 200
            assert time.perf_counter() - start < 2
            assert len(guard.pending) <= 32 and guard.closed >= 1100 - 32
        finally:
            for raw in sockets:
                raw.close()
        slow = socket.create_connection(_address(url), timeout=10)
        slow.sendall(b"GET /health HTTP/1.1\r\n")
        time.sleep(1.5)
        assert slow.recv(100) == b""  # closed by the header timeout
        slow.close()


def test_a_pipelined_upload_slower_than_the_header_timeout_is_served(pipe, channels):
    """A request pipelined behind another has its headers on time and its body slower than the header
    timeout (but within the body timeout): it is served, not closed as half-open."""
    guard = ConnectionGuard(header_timeout_s=1.0)
    body = wire.encode_request(channels, 1, 0)
    head = (f"GET /health HTTP/1.1\r\nHost: x\r\n\r\nPOST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}"
            f"\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with serve_in_thread(create_app(pipe, TOKEN, device="cpu"), guard=guard) as url, \
            socket.create_connection(_address(url), timeout=10) as raw:
        raw.sendall(head)
        for part in range(4):  # 2 s in all, twice the header timeout
            time.sleep(0.5)
            raw.sendall(body[part * len(body) // 4:(part + 1) * len(body) // 4])
        answer = b""
        while answer.count(b"HTTP/1.1 ") < 2 and (chunk := raw.recv(4096)):
            answer += chunk
        assert guard.closed == 0
    assert answer.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 202" in answer, answer[:400]


def test_a_disconnect_mid_upload_is_one_log_line(worker, channels, caplog):
    body = wire.encode_request(channels, 1, 0)
    with caplog.at_level(logging.INFO):
        with socket.create_connection(_address(worker), timeout=10) as raw:
            raw.sendall(f"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:len(body) // 2])
            time.sleep(0.3)
        time.sleep(0.5)
    said = [r for r in caplog.records if "disconnected during its upload" in r.getMessage()]
    assert len(said) == 1 and not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_only_flood_lines_are_rate_limited_and_a_summary_names_them(caplog):
    limiter = RateLimitFilter(window_s=0.3)
    accept = [logging.LogRecord("asyncio", logging.ERROR, "x", 1, "socket.accept() out of system resource\nsocket: s",
                                (), None) for _ in range(100)]
    closed = [logging.LogRecord("dosediffusion.remote", logging.WARNING, "x", 1, "closed a connection (%s)", (i,), None)
              for i in range(5)]
    for record in closed:
        record.flood = True
    jobs = [logging.LogRecord("dosediffusion.remote", level, "x", 1, message, (f"job{i}",), None)
            for i in range(5) for level, message in ((logging.INFO, "job %s queued"), (logging.ERROR, "job %s failed"))]
    invalid = logging.LogRecord("uvicorn.error", logging.WARNING, "x", 1, "Invalid HTTP request received.", (), None)
    assert [limiter.filter(r) for r in accept].count(True) == 1 and [limiter.filter(r) for r in closed].count(True) == 1
    assert all(limiter.filter(r) for r in jobs)  # different jobs' lines and errors are never repeats
    assert limiter.filter(invalid) and not limiter.filter(invalid)
    time.sleep(0.35)
    with caplog.at_level(logging.WARNING, logger="dosediffusion.remote"):
        assert limiter.filter(jobs[0])  # the next record after the window brings the summaries
    said = sorted(r.getMessage() for r in caplog.records)
    assert said == ["dropped 1 more of 'Invalid HTTP request received.' (uvicorn.error) in 0.3 s",
                    "dropped 4 more of 'closed a connection (%s)' (dosediffusion.remote) in 0.3 s",
                    "dropped 99 more of 'socket.accept() out of system resource' (asyncio) in 0.3 s"]


def test_every_job_is_logged_queued_and_finished_and_every_failure_is_an_error(channels, caplog):
    """Nine concurrent jobs, three of them failing inside the model: each job id is logged once queued and
    once finished, and each failure is an ERROR record with its traceback."""
    failing = tiny_pipeline()
    sample = failing.sample_channels

    def sample_or_fail(channels, steps, seed, *args, **kwargs):
        if seed % 3 == 0:
            raise RuntimeError(f"the model broke on seed {seed}")
        return sample(channels, steps, seed, *args, **kwargs)

    failing.sample_channels = sample_or_fail
    errors = []

    def run(seed):
        with RemoteClient(url, TOKEN, poll_s=0.1) as client:
            try:
                client.sample(channels, 1, seed)
            except RemoteJobFailed as error:
                errors.append(error)

    with caplog.at_level(logging.INFO, logger="dosediffusion.remote"), \
            serve_in_thread(create_app(failing, TOKEN, device="cpu", max_queued=8)) as url:
        threads = [threading.Thread(target=run, args=(seed,)) for seed in range(9)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    lines = [r for r in caplog.records if r.name == "dosediffusion.remote" and r.msg.startswith("job %s")]
    queued = [r.args[0] for r in lines if r.msg.startswith("job %s queued")]
    finished = [(r.args[0], r.args[1]) for r in lines if r.msg == "job %s %s after %.2f s"]
    failures = [r for r in lines if r.levelno == logging.ERROR]
    assert len(set(queued)) == len(queued) == 9 and sorted(job for job, _ in finished) == sorted(queued)
    assert sorted(state for _, state in finished) == ["done"] * 6 + ["failed"] * 3 and len(errors) == 3
    assert len(failures) == 3 and all(r.exc_info for r in failures)
    assert {r.args[0] for r in failures} == {job for job, state in finished if state == "failed"}


def test_query_strings_stay_out_of_the_access_log(pipe):
    server_config(create_app(pipe, TOKEN, device="cpu"))  # the worker's uvicorn configuration
    assert any(isinstance(f, QueryRedactFilter) for f in logging.getLogger("uvicorn.access").filters)
    record = logging.LogRecord("uvicorn.access", logging.INFO, "x", 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", f"/model?token={TOKEN}", "1.1", 401), None)
    assert QueryRedactFilter().filter(record)
    assert TOKEN not in record.getMessage() and "/model?[query not logged]" in record.getMessage()


# ---- token and TLS -------------------------------------------------------------------------------


def test_a_weak_token_is_warned_about_and_tls_is_asked_for(tmp_path, caplog):
    weak = tmp_path / "weak"
    weak.write_text("a" * 16)
    weak.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="dosediffusion.remote"):
        assert resolve_token("127.0.0.1", str(weak), False) == "a" * 16
        assert main(["serve", "--model", str(tmp_path), "--host", "0.0.0.0", "--token-file", str(weak)]) == 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("only 1 distinct characters" in m for m in messages)
    assert any("without TLS" in m for m in messages)
    assert not any("by its group" in m for m in messages)
    for mode in (0o640, 0o660):
        weak.chmod(mode)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dosediffusion.remote"):
            resolve_token("127.0.0.1", str(weak), False)
        assert any(f"readable or writable by its group (mode {mode:o}): chmod 600" in r.getMessage()
                   for r in caplog.records)


# ---- a busy worker -------------------------------------------------------------------------------


def test_busy_clients_wait_their_turn_instead_of_failing(pipe, channels):
    """One job runs, none may wait: the others get 503 with Retry-After and come back with jitter."""
    with serve_in_thread(create_app(pipe, TOKEN, device="cpu", max_queued=0)) as url:
        results, errors = {}, []

        def run(seed):
            try:
                with RemoteClient(url, TOKEN, poll_s=0.1) as client:
                    results[seed] = client.sample(channels, 10, seed)
            except Exception as error:  # noqa: BLE001 - collected for the assertion
                errors.append(error)

        threads = [threading.Thread(target=run, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert not errors and sorted(results) == [0, 1, 2, 3]
    response = None
    with serve_in_thread(create_app(pipe, TOKEN, device="cpu", max_queued=0)) as url:
        with RemoteClient(url, TOKEN) as client:
            client.submit(channels, 50, 0)
            response = httpx.post(f"{url}/jobs", content=wire.encode_request(channels, 1, 0), headers=AUTH)
    assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
