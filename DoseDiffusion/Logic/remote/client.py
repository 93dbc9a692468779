"""Client of the remote GPU worker (``dosediffusion serve``), for ``predict --remote`` and Slicer.

The case is prepared here, only its condition channels travel (see :mod:`.wire`), and the
candidates come back to be restored and selected here, through the same
:func:`~dosediffusion.model.case_prediction.predict_case` as a local prediction: the same model and seed
give the same numbers. A worker that does not answer (restarting, say) is tried again for ``reconnect_s``
seconds (a time budget: a restart takes as long as loading the model), backoff doubling from ``backoff_s``
up to :data:`MAX_BACKOFF_S`, and the wait is said through ``notice``; idempotent requests are retried on any
connection error, a submission only when the connection could not be made.
"""

from __future__ import annotations

import contextlib
import random
import ssl
import time
from collections.abc import Callable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from dosediffusion.case import Case
from dosediffusion.conditioning.prepare import PrepareConfig
from dosediffusion.errors import Cancelled, InputError
from dosediffusion.model.case_prediction import DosePrediction, Progress, predict_case
from dosediffusion.model.selection import Selector
from dosediffusion.remote.wire import INSTANCE_HEADER, decode_result, encode_request


class RemoteError(InputError):
    """The worker could not be used; ``str(error)`` says why in one line."""


class RemoteConnectionError(RemoteError):
    """The worker could not be reached (after the retries)."""


class RemoteAuthError(RemoteError):
    """401: the token is missing or wrong."""


class RemoteRequestTooLarge(RemoteError):
    """413: the case's channels exceed the worker's request limit."""


class RemoteRejected(RemoteError):
    """422: the worker refused the request (the reason is in the message)."""


class RemoteBusy(RemoteError):
    """503: the worker's queue is full; ``retry_after_s`` is when it said to ask again."""

    retry_after_s: float = 5.0


class RemoteJobNotFound(RemoteError):
    """404: the job is unknown, expired or already fetched."""


class RemoteJobFailed(RemoteError):
    """The job ran and failed on the worker."""


class RemoteServerError(RemoteError):
    """5xx or an unreadable answer: a problem on the worker's side."""


#: Seconds to keep trying to reach a worker that does not answer, by default (a GPU worker's restart
#: loads its model; the demo worker answers again about 9 s after SIGTERM).
RECONNECT_S = 120.0
#: The longest pause between two attempts to reach the worker, in seconds.
MAX_BACKOFF_S = 2.0
RESUBMITTED = "the worker restarted and lost the job; it was submitted again"

STATUS_ERRORS = {401: RemoteAuthError, 404: RemoteJobNotFound, 413: RemoteRequestTooLarge, 422: RemoteRejected,
                 503: RemoteBusy}


def read_token(path: str | PathLike) -> str:
    """The bearer token in ``path`` (its first line, stripped); an empty or missing file is an error."""
    try:
        token = Path(path).read_text().strip().splitlines()
    except OSError as error:
        raise InputError(f"cannot read the token file ({error.strerror})", path) from None
    if not token or not token[0].strip():
        raise InputError("the token file is empty", path)
    return token[0].strip()


class RemoteClient:
    """Talks to one worker at ``url`` (``http://host:port`` or ``https://``).

    A busy worker (503) is asked again after the ``Retry-After`` seconds it names, with random jitter
    so that waiting clients do not come back together, for at most ``busy_wait_s`` seconds. A worker
    that restarted (a new instance id, see :mod:`.server`) has forgotten its jobs: :meth:`sample`
    submits a lost job again, at most ``resubmits`` times, and says so in :attr:`warnings`.

    Args:
        token: the bearer token (None for a ``--no-auth`` loopback worker).
        reconnect_s: seconds to keep trying after a connection error (0: one attempt). timeout: seconds
            per request. backoff_s: first wait between attempts (doubled each time, at most
            :data:`MAX_BACKOFF_S`). poll_s: longest wait of one status long poll (so also how soon
            ``cancel`` is noticed). notice: hears status lines (waiting for the worker, resubmissions).
        verify: TLS verification: True (system/certifi CAs, or ``SSL_CERT_FILE``), a CA bundle path
            (e.g. the worker's self-signed certificate), an ``ssl.SSLContext``, or False (never in a clinic).
    """

    def __init__(self, url: str, token: str | None = None, reconnect_s: float = RECONNECT_S, timeout: float = 60.0,
                 backoff_s: float = 0.5, poll_s: float = 1.0, verify: bool | str | ssl.SSLContext = True,
                 transport: httpx.BaseTransport | None = None, busy_wait_s: float = 600.0, resubmits: int = 2,
                 notice: Callable[[str], None] | None = None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if isinstance(verify, str):  # a CA bundle (e.g. the worker's self-signed certificate)
            verify = ssl.create_default_context(cafile=verify)
        self.url, self.reconnect_s, self.backoff_s, self.poll_s = url.rstrip("/"), reconnect_s, backoff_s, poll_s
        self.notice = notice or (lambda message: None)
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, verify=verify,
                                 transport=transport)
        self._info: dict[str, Any] | None = None
        self.last_timing: dict[str, float] = {}
        self.busy_wait_s, self.resubmits = busy_wait_s, resubmits
        self.instance: str | None = None  # the worker instance of the last response
        self.warnings: list[str] = []
        self._random = random.Random()

    def __enter__(self) -> RemoteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # ---- one endpoint each ---------------------------------------------------------------------
    def health(self) -> bool:
        return self._request("GET", "/health").json().get("status") == "ok"

    def model_info(self) -> dict[str, Any]:
        """``GET /model``: version, device, accepted ``modalities``, ``crop_shape``, ``preprocessing``…"""
        if self._info is None:
            self._info = self._request("GET", "/model").json()
        return self._info

    def submit(self, channels: Mapping[str, np.ndarray], steps: int, seed: int, num_candidates: int = 1) -> str:
        """Send condition channels (D, H, W) → the job id."""
        body = encode_request(channels, steps, seed, num_candidates)
        limit = self.model_info().get("max_request_bytes")
        if limit is not None and len(body) > limit:
            raise RemoteRequestTooLarge(f"the request is {len(body)} bytes, the worker accepts at most {limit}",
                                        self.url)
        waited = 0.0
        while True:
            try:
                return self._request("POST", "/jobs", idempotent=False, content=body).json()["id"]
            except RemoteBusy as error:
                pause = error.retry_after_s * self._random.uniform(0.5, 1.5)
                if waited + pause > self.busy_wait_s:
                    raise
                time.sleep(pause)
                waited += pause

    def status(self, job_id: str, wait_s: float = 0.0) -> dict[str, Any]:
        """``GET /jobs/{id}``: state (queued/running/done/failed/cancelled), step, steps, progress…;
        with ``wait_s`` > 0 the worker answers when something changes (at most ``wait_s`` seconds)."""
        return self._request("GET", f"/jobs/{job_id}", params={"wait_s": wait_s} if wait_s else None).json()

    def result(self, job_id: str) -> tuple[np.ndarray, dict[str, float]]:
        """The finished job's candidates (N, D, H, W) float32 and timing; the worker then forgets it."""
        response = self._request("GET", f"/jobs/{job_id}/result")
        try:
            return decode_result(response.content)
        except InputError as error:
            raise RemoteServerError(f"unreadable result ({error.problem})", self.url) from None

    def cancel(self, job_id: str) -> dict[str, Any]:
        """``DELETE /jobs/{id}``: cancel (or drop the result of) a job."""
        return self._request("DELETE", f"/jobs/{job_id}").json()

    # ---- whole runs ----------------------------------------------------------------------------
    def wait(self, job_id: str, progress: Progress | None = None, cancel: Callable[[], bool] | None = None) -> None:
        """Poll until the job is done; report (fraction, message); cancel it on the worker and raise
        :class:`Cancelled` when ``cancel()`` turns true; raise :class:`RemoteJobFailed` if it fails."""
        report, last = progress or (lambda fraction, message: None), 0.0
        while True:
            if cancel is not None and cancel():
                self.cancel(job_id)
                raise Cancelled("cancelled; the worker was told to stop")
            state = self.status(job_id, self.poll_s)
            if state["state"] == "done":  # the fraction after the model is the caller's (restore, select)
                return
            if state["state"] == "queued":
                message = f"waiting in the worker's queue (position {state['queue_position']})"
            else:
                message = state["message"]
            last = max(last, float(state["progress"]))
            report(last, message)
            if state["state"] == "cancelled":
                raise Cancelled(f"the job was cancelled on the worker ({state['message']})")
            if state["state"] == "failed":
                raise RemoteJobFailed(f"the job failed on the worker: {state['error']}", self.url)

    def sample(self, channels: Mapping[str, np.ndarray], steps: int, seed: int, num_candidates: int = 1,
               progress: Progress | None = None, cancel: Callable[[], bool] | None = None) -> np.ndarray:
        """A sampler for :func:`predict_case`: channels (D, H, W) → candidates (N, D, H, W) float32. A job
        that a restarted worker lost is submitted again (the same seed gives the same result)."""
        resubmitted = 0
        while True:
            job_id = self.submit(channels, steps, seed, num_candidates)
            submitted_to = self.instance
            try:
                self.wait(job_id, progress, cancel)
                candidates, self.last_timing = self.result(job_id)
                return candidates
            except RemoteJobNotFound:
                if self.instance == submitted_to or resubmitted == self.resubmits:
                    raise
                resubmitted += 1
                self.warnings.append(RESUBMITTED)
                self.notice(RESUBMITTED)
                if progress is not None:
                    progress(0.05, RESUBMITTED)
            except BaseException:  # interrupted, failed or cancelled: the worker need not keep the job
                self._forget(job_id)
                raise

    # ---- transport -----------------------------------------------------------------------------
    def _request(self, method: str, path: str, idempotent: bool = True, **kwargs: Any) -> httpx.Response:
        safe = httpx.TransportError if idempotent else (httpx.ConnectError, httpx.ConnectTimeout)
        first_failure, pause = None, self.backoff_s
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
                break
            except safe as error:
                now, why = time.monotonic(), f"{type(error).__name__}: {error}"
                left = self.reconnect_s - (now - (now if first_failure is None else first_failure))
                if left <= 0:
                    raise RemoteConnectionError(f"cannot reach the worker ({why}); tried for {self.reconnect_s:g} s",
                                                self.url) from None
                if first_failure is None:
                    first_failure = now
                    self.notice(f"the worker does not answer ({why}); trying again for up to {self.reconnect_s:g} s")
                time.sleep(min(pause, left))
                pause = min(2 * pause, MAX_BACKOFF_S)
            except httpx.TransportError as error:
                raise RemoteConnectionError(f"the connection failed during {method} {path} "
                                            f"({type(error).__name__}); not retried", self.url) from None
        if first_failure is not None:
            self.notice(f"the worker answers again after {time.monotonic() - first_failure:.1f} s")
        self.instance = response.headers.get(INSTANCE_HEADER, self.instance)
        if response.status_code < 400:
            return response
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text[:200]
        kind = STATUS_ERRORS.get(response.status_code, RemoteServerError if response.status_code >= 500 else RemoteError)
        error = kind(f"{method} {path}: {response.status_code} {detail}", self.url)
        if isinstance(error, RemoteBusy):
            retry_after = response.headers.get("retry-after", "")
            error.retry_after_s = float(retry_after) if retry_after.isdigit() else 5.0
        raise error

    def _forget(self, job_id: str) -> None:
        with contextlib.suppress(RemoteError):
            self.cancel(job_id)


def predict_remote(
    case: Case,
    url: str,
    token: str | None = None,
    steps: int = 10,
    seed: int = 0,
    num_candidates: int = 1,
    selection: str | Selector | None = None,
    scorecard: str | dict | None = None,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
    reconnect_s: float | None = None,
    timeout: float = 60.0,
    verify: bool | str = True,
    notice: Callable[[str], None] | None = None,
) -> DosePrediction:
    """Predict the dose of ``case`` on the worker at ``url``: the same result as the worker's
    pipeline run locally (``pipeline(case, ...)``) for the same arguments. The timing adds the
    worker's ``remote_queued`` and ``remote_run`` seconds. ``reconnect_s`` (None: :data:`RECONNECT_S`)
    and ``notice`` are :class:`RemoteClient`'s."""
    reconnect_s = RECONNECT_S if reconnect_s is None else reconnect_s
    with RemoteClient(url, token, reconnect_s, timeout, verify=verify, notice=notice) as client:
        info = client.model_info()
        preprocessing = PrepareConfig.from_dict(info["preprocessing"])
        prediction = predict_case(client.sample, case, preprocessing, steps, seed, num_candidates, selection,
                                  scorecard, progress, cancel)
        prediction.device, prediction.dtype = f"{info['device']} (remote)", info["dtype"]
        prediction.warnings += client.warnings
        prediction.timing_s.update({f"remote_{k.removesuffix('_s')}": v for k, v in client.last_timing.items()})
        return prediction
