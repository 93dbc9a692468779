"""The remote GPU worker: a FastAPI app around one loaded pipeline and its :class:`~.jobs.JobQueue`.

Endpoints (every one but ``/health`` needs ``Authorization: Bearer <token>`` unless the app was
made with ``token=None``, which ``dosediffusion serve`` allows only on loopback with ``--no-auth``)::

    GET    /health             200 {"status": "ok"} (liveness only, no token needed)
    GET    /model              200 name-free model facts, the channels and crop it accepts
    POST   /jobs               202 {"id", ...}; 401, 413 (body too large), 422 (bad body), 503 (queue full)
    GET    /jobs/{id}          200 status: state, step i of N, progress (?wait_s=S: long poll); 404
    GET    /jobs/{id}/result   200 safetensors (see :mod:`.wire`), then the job is gone; 409 not done; 404
    DELETE /jobs/{id}          200 cancelled or removed, 202 running job asked to stop; 404

Logs name jobs by their random id only (never a patient, a structure name or a file).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
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

from dosediffusion.errors import InputError
from dosediffusion.model.pipeline import DoseDiffusionPipeline
from dosediffusion.remote.jobs import FINISHED, Job, JobQueue, QueueFull
from dosediffusion.remote.wire import MAX_CANDIDATES, decode_request, encode_result

log = logging.getLogger("dosediffusion.remote")
SAFETENSORS = "application/octet-stream"
NAME = "DoseDiffusion worker"
MAX_WAIT_S = 30.0  # longest long poll of GET /jobs/{id}?wait_s=
POLL_S = 0.02  # how often a long poll looks at its job
NO_SUCH_JOB = "no such job (unknown, expired or already fetched)"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1); other names are not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(pipeline: DoseDiffusionPipeline, token: str | None, max_request_bytes: int = 512 * 2**20,
               device: str = "cuda", max_queued: int = 8, ttl_s: float = 3600.0) -> FastAPI:
    """The worker app around ``pipeline`` (a :class:`DoseDiffusionPipeline` or anything with its
    ``describe``/``check_channels``/``sample_channels``/``preprocessing``, such as the regression
    comparator). ``token`` None turns authentication off (the caller checks it is allowed);
    ``max_request_bytes`` bounds a request body; ``device`` runs the model; at most ``max_queued``
    jobs wait besides the running one; finished jobs are kept ``ttl_s`` seconds unless fetched."""
    crop = tuple(pipeline.preprocessing.crop_shape)

    def run(job: Job) -> np.ndarray:
        o = job.options
        return pipeline.sample_channels(job.channels, o["steps"], o["seed"], o["num_candidates"], device=device,
                                        progress=job.report, cancel=job.cancelled)

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
    guarded = [Depends(authorize)]
    info = pipeline.describe()
    facts = {"name": NAME, "version": info["version"], "device": str(device),
             "dtype": "bfloat16" if str(device).startswith("cuda") else "float32",
             "target": info["target"], "modalities": [m for m in info["modalities"] if m != info["target"]],
             "crop_shape": list(crop), "pipeline": type(pipeline).__name__, "parameters": info["parameters"],
             "preprocessing": info["preprocessing"], "max_request_bytes": max_request_bytes,
             "max_candidates": MAX_CANDIDATES, "request_dtypes": ["float16", "float32"]}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/model", dependencies=guarded)
    def model() -> dict[str, Any]:
        return facts

    @app.post("/jobs", status_code=202, dependencies=guarded)
    async def submit(request: Request) -> JSONResponse:
        body = await read_body(request, max_request_bytes)
        try:
            channels, options = await run_in_threadpool(decode_and_check, body)
        except InputError as error:
            raise HTTPException(422, str(error)) from None
        try:
            job = request.app.state.jobs.submit(channels, options)
        except QueueFull as error:
            raise HTTPException(503, str(error), headers={"Retry-After": "5"}) from None
        status = request.app.state.jobs.status(job.id)
        return JSONResponse(status, status_code=202, headers={"Location": f"/jobs/{job.id}"})

    def decode_and_check(body: bytes) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        channels, options = decode_request(body, crop)
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


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 when its Content-Length, or what arrives, exceeds ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPException(413, f"request body larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", log_level: str = "warning") -> Iterator[str]:
    """Run ``app`` with uvicorn on a free port of ``host`` in a thread; yields its URL (tests, benchmarks)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
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
