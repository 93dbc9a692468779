"""The remote GPU worker: a FastAPI app around one loaded pipeline and its :class:`~.jobs.JobQueue`.

Endpoints (every one but ``/health`` needs ``Authorization: Bearer <token>`` unless the app was
made with ``token=None``, which ``dosediffusion serve`` allows only on loopback with ``--no-auth``)::

    GET    /health             200 {"status": "ok"} (liveness only, no token needed)
    GET    /model              200 name-free model facts, the channels and crop it accepts
    POST   /jobs               202 {"id", ...}; 401, 413 (body too large), 422 (bad body), 503 (queue full)
    GET    /jobs/{id}          200 status: state, step i of N, progress (?wait_s=S: long poll); 404
    GET    /jobs/{id}/result   200 safetensors (see :mod:`.wire`), then the job is gone; 409 not done; 404
    DELETE /jobs/{id}          200 cancelled or removed, 202 running job asked to stop; 404

Every response (uvicorn's own 400s included) carries the worker's instance id (header
``X-DoseDiffusion-Instance``, also in ``/health`` and ``/model``): a new id means the worker restarted
and forgot its jobs. A request body
is checked header first (:func:`~.wire.request_layout`: channel names, dtypes, shapes, options) before
any tensor byte is read, must arrive within ``body_timeout_s``, and may be no larger than the
model's own input needs (with headroom) unless the operator says otherwise. A result that is not
finite fails its job with the reason. Logs name jobs by their random id only (never a patient, a
structure name or a file); a client that disconnects mid-upload costs one log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import math
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from dosediffusion.errors import InputError
from dosediffusion.model.case_prediction import check_finite_result
from dosediffusion.model.folder_format import check_pipeline_options
from dosediffusion.model.pipeline_base import PipelineBase
from dosediffusion.remote.connection_guard import ConnectionGuard, guarded_protocol
from dosediffusion.remote.jobs import FINISHED, Job, JobQueue, QueueFull
from dosediffusion.remote.logs import FLOOD, configure_worker_logs
from dosediffusion.remote.wire import (
    INSTANCE_HEADER,
    MAX_CANDIDATES,
    decode_request,
    encode_result,
    header_size,
    request_layout,
)

log = logging.getLogger("dosediffusion.remote")
SAFETENSORS = "application/octet-stream"
NAME = "DoseDiffusion worker"
MAX_WAIT_S = 30.0  # longest long poll of GET /jobs/{id}?wait_s=
POLL_S = 0.02  # how often a long poll looks at its job
NO_SUCH_JOB = "no such job (unknown, expired or already fetched)"
#: Room for the safetensors header of a request, on top of its tensors.
HEADER_HEADROOM_BYTES = 64 * 2**10
BODY_TIMEOUT_S = 60.0  # a request body must have arrived whole by then


def request_limit(crop_shape: tuple[int, ...], conditions: int) -> int:
    """The largest legal request body for a model: every condition channel as float32 on the crop, plus
    header room."""
    return conditions * math.prod(int(n) for n in crop_shape) * 4 + HEADER_HEADROOM_BYTES


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1); other names are not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(pipeline: PipelineBase, token: str | None, max_request_bytes: int | None = None,
               device: str = "cuda", max_queued: int = 8, ttl_s: float = 3600.0,
               body_timeout_s: float = BODY_TIMEOUT_S) -> FastAPI:
    """The worker app around ``pipeline`` (a diffusion pipeline or the regression comparator; several
    candidates from a regression are refused). ``token`` None turns authentication off (the caller checks it is allowed);
    ``max_request_bytes`` bounds a request body (default :func:`request_limit` of the model);
    ``device`` runs the model; at most ``max_queued`` jobs wait besides the running one; finished jobs
    are kept ``ttl_s`` seconds unless fetched."""
    crop = tuple(pipeline.preprocessing.crop_shape)
    info = pipeline.describe()
    conditions = {m for m in info["modalities"] if m != info["target"]}
    max_request_bytes = max_request_bytes or request_limit(crop, len(conditions))
    instance = secrets.token_hex(8)

    def run(job: Job) -> np.ndarray:
        o = job.options
        result = pipeline.sample_channels(job.channels, o["steps"], o["seed"], o["num_candidates"], device=device,
                                          progress=job.report, cancel=job.cancelled)
        check_finite_result(result)
        return result

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.jobs = JobQueue(run, max_queued, ttl_s)
        try:
            yield
        finally:
            app.state.jobs.close()

    def authorize(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title=NAME, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.instance = instance
    guarded = [Depends(authorize)]

    @app.middleware("http")
    async def name_the_instance(request: Request, call_next):
        response = await call_next(request)
        response.headers[INSTANCE_HEADER] = instance
        return response

    facts = {"name": NAME, "instance": instance, "version": info["version"], "device": str(device),
             "dtype": "bfloat16" if str(device).startswith("cuda") else "float32",
             "target": info["target"], "modalities": [m for m in info["modalities"] if m != info["target"]],
             "crop_shape": list(crop), "pipeline": type(pipeline).__name__, "parameters": info["parameters"],
             "preprocessing": info["preprocessing"], "max_request_bytes": max_request_bytes,
             "max_candidates": MAX_CANDIDATES if pipeline.samples() else 1, "request_dtypes": ["float16", "float32"]}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "instance": instance}

    @app.get("/model", dependencies=guarded)
    def model() -> dict[str, Any]:
        return facts

    @app.post("/jobs", status_code=202, dependencies=guarded)
    async def submit(request: Request) -> JSONResponse:
        jobs: JobQueue = request.app.state.jobs
        if jobs.full():  # said before the body is read
            raise HTTPException(503, jobs.full_message(), headers={"Retry-After": str(jobs.retry_after_s())})
        try:
            body = await asyncio.wait_for(read_body(request, max_request_bytes, crop, conditions), body_timeout_s)
            channels, options = await run_in_threadpool(decode_and_check, body)
        except InputError as error:
            raise HTTPException(422, str(error)) from None
        except asyncio.TimeoutError:
            raise HTTPException(408, f"the request body did not arrive within {body_timeout_s:g} s") from None
        except ClientDisconnect:
            log.info("a client disconnected during its upload", extra={FLOOD: True})
            raise HTTPException(400, "the client disconnected") from None
        try:
            job = jobs.submit(channels, options)
        except QueueFull as error:
            raise HTTPException(503, str(error), headers={"Retry-After": str(jobs.retry_after_s())}) from None
        status = jobs.status(job.id)
        return JSONResponse(status, status_code=202, headers={"Location": f"/jobs/{job.id}"})

    def decode_and_check(body: bytes) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        channels, options = decode_request(body, crop, conditions)
        check_pipeline_options(pipeline.kind(), options["num_candidates"])
        pipeline.check_channels(channels)
        return channels, options

    @app.get("/jobs/{job_id}", dependencies=guarded)
    async def status(job_id: str, request: Request, wait_s: float = Query(0.0, ge=0.0, le=MAX_WAIT_S)) -> dict:
        """The job's status; with ``wait_s`` > 0, answered once its state, step or message changes
        (or it finishes, or ``wait_s`` seconds pass): a long poll."""
        jobs: JobQueue = request.app.state.jobs
        found = jobs.status(job_id)
        deadline, first = time.monotonic() + wait_s, found
        while found is not None and found["state"] not in FINISHED and time.monotonic() < deadline \
                and _same(found, first):
            await asyncio.sleep(POLL_S)
            found = jobs.status(job_id)
        if found is None:
            raise HTTPException(404, NO_SUCH_JOB)
        return found

    @app.get("/jobs/{job_id}/result", dependencies=guarded)
    def result(job_id: str, request: Request) -> Response:
        jobs: JobQueue = request.app.state.jobs
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, NO_SUCH_JOB)
        if job.state != "done":
            raise HTTPException(409, f"job is {job.state}" + (f": {job.error}" if job.error else ""))
        body = encode_result(job.result, job.timing)
        # The job is removed once the body has been sent (a broken download leaves it to the TTL).
        return Response(body, media_type=SAFETENSORS, background=BackgroundTask(jobs.take_result, job_id))

    @app.delete("/jobs/{job_id}", dependencies=guarded)
    def cancel(job_id: str, request: Request) -> JSONResponse:
        jobs: JobQueue = request.app.state.jobs
        job = jobs.cancel(job_id)
        if job is None:
            raise HTTPException(404, NO_SUCH_JOB)
        running = job.state == "running"
        state = "cancelling" if running else ("cancelled" if job.state == "cancelled" else "removed")
        return JSONResponse({"id": job_id, "state": state}, status_code=202 if running else 200)

    return app


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a[k] == b[k] for k in ("state", "step", "message", "queue_position"))


async def read_body(request: Request, limit: int, crop: tuple[int, ...], allowed: set[str]) -> bytes:
    """The request body, refused with 413 when its Content-Length, or what arrives, exceeds ``limit``,
    and with an :class:`InputError` as soon as its header arrives and is wrong (names, dtypes, shapes,
    options, a length other than the header describes): no tensor byte of a bad request is kept."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or len(declared) > 19 or int(declared) > limit):
        raise HTTPException(413, f"request body larger than {limit} bytes")
    body, expected = bytearray(), None
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"request body larger than {limit} bytes")
        if expected is None and (end := header_size(body)) is not None and len(body) >= end:
            expected = request_layout(bytes(body[:end]), crop, allowed)[1]
            if declared is not None and int(declared) != expected:
                raise InputError(f"Content-Length {declared} differs from the {expected} bytes the header describes")
        if expected is not None and len(body) > expected:
            raise InputError(f"the body is longer than the {expected} bytes its header describes")
    return bytes(body)


def server_config(app: FastAPI, guard: ConnectionGuard | None = None, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration of the worker: the h11 protocol under ``guard`` (default caps; uvicorn's own 400s
    name the app's instance too), keep-alive connections closed after 5 s idle, no ``Server`` header;
    ``options`` go to uvicorn as they are."""
    configure_worker_logs()
    protocol = guarded_protocol(guard or ConnectionGuard(), app.state.instance)
    return uvicorn.Config(app, http=protocol, timeout_keep_alive=5, server_header=False, **options)


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", log_level: str = "warning",
                    guard: ConnectionGuard | None = None, port: int = 0) -> Iterator[str]:
    """Run ``app`` with uvicorn on ``port`` of ``host`` (a free one by default) in a thread; yields its URL
    (tests, benchmarks)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(server_config(app, guard, log_level=log_level))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the worker did not start")
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
