"""The worker's job queue: one thread runs the jobs one at a time (one GPU job at a time).

A job is ``queued`` → ``running`` → ``done`` | ``failed`` | ``cancelled`` (a queued job can be
cancelled straight away). The queue is bounded (:class:`QueueFull` when it is full). A job lives
on after its client disconnects, until its result is taken (:meth:`JobQueue.take_result`) or it
expires ``ttl_s`` seconds after finishing; a job's inputs are dropped once it has run.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dosediffusion.errors import Cancelled, InputError

log = logging.getLogger("dosediffusion.remote")
FINISHED = ("done", "failed", "cancelled")
STEP_MESSAGE = re.compile(r"step (\d+) of (\d+)")


class QueueFull(Exception):
    """The bounded queue holds as many waiting jobs as it may."""


@dataclass
class Job:
    """One request: its inputs (dropped after the run), state, progress and result.

    ``progress`` is the fraction 0–1 the sampler reported; ``step`` of ``steps`` the Euler step
    reached; ``result`` the candidates (N, D, H, W) float32; ``timing`` seconds (queued, run).
    """

    id: str
    channels: dict[str, np.ndarray] | None
    options: dict[str, int]
    state: str = "queued"
    progress: float = 0.0
    message: str = "queued"
    step: int = 0
    error: str | None = None
    result: np.ndarray | None = None
    timing: dict[str, float] = field(default_factory=dict)
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    cancel_requested: bool = False

    @property
    def steps(self) -> int:
        return self.options["steps"]

    def cancelled(self) -> bool:
        """Polled by the sampler between steps."""
        return self.cancel_requested

    def report(self, fraction: float, message: str) -> None:
        """The sampler's progress callback: keep the fraction and ``step i of N``."""
        self.progress, self.message = float(fraction), message
        match = STEP_MESSAGE.fullmatch(message)
        if match:
            self.step = int(match.group(1))


Runner = Callable[[Job], np.ndarray]


class JobQueue:
    """Runs ``runner(job)`` → candidates for each submitted job, in order, on one thread.

    Args:
        runner: the model call; it reads ``job.channels`` and ``job.options`` and may call
            ``job.report`` and poll ``job.cancelled`` (raising :class:`Cancelled`).
        max_queued: jobs that may wait besides the running one.
        ttl_s: seconds a finished job (and its result) is kept when nobody takes it.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(self, runner: Runner, max_queued: int = 8, ttl_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic):
        self.runner, self.max_queued, self.ttl_s, self.clock = runner, max_queued, ttl_s, clock
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.waiting: deque[str] = deque()
        self.lock = threading.Condition()
        self.closed = False
        self.mean_run_s = 5.0  # a running mean of the jobs' run time, for Retry-After
        self.running: Job | None = None
        self.thread = threading.Thread(target=self._work, name="dosediffusion-worker", daemon=True)
        self.thread.start()

    # ---- requests -------------------------------------------------------------------------------
    def full(self) -> bool:
        """True when a job submitted now would be refused: ``max_queued`` jobs wait besides a running one."""
        with self.lock:
            return self._full()

    def _full(self) -> bool:
        return self.closed or len(self.waiting) + (self.running is not None) > self.max_queued

    def full_message(self) -> str:
        return "the worker is shutting down" if self.closed else \
            f"the queue is full ({self.max_queued} jobs waiting); try again after Retry-After seconds"

    def retry_after_s(self) -> int:
        """Seconds after which a refused client may try again: when the queue has room, which is when the
        running job ends (its expected rest, from the recent jobs' mean run time), rounded up, at least 1 and
        at most 60."""
        with self.lock:
            started = self.running.started if self.running is not None else None
            rest = self.mean_run_s - (self.clock() - started) if started is not None else 0.0
            return int(min(60.0, max(1.0, math.ceil(rest))))

    def submit(self, channels: dict[str, np.ndarray], options: dict[str, int]) -> Job:
        """Queue a job; raise :class:`QueueFull` when ``max_queued`` jobs already wait."""
        with self.lock:
            self._expire()
            if self._full():
                raise QueueFull(self.full_message())
            job = Job(secrets.token_urlsafe(16), channels, dict(options), created=self.clock())
            self.jobs[job.id] = job
            self.waiting.append(job.id)
            self.lock.notify_all()
        log.info("job %s queued (%d steps, %d candidates)", job.id, job.steps, job.options["num_candidates"])
        return job

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            self._expire()
            return self.jobs.get(job_id)

    def status(self, job_id: str) -> dict[str, Any] | None:
        """The job's state as JSON-ready data, or None for an unknown (or expired, or fetched) job."""
        with self.lock:
            self._expire()
            job = self.jobs.get(job_id)
            if job is None:
                return None
            position = self.waiting.index(job_id) + 1 if job.state == "queued" else 0
            return {"id": job.id, "state": job.state, "step": job.step, "steps": job.steps,
                    "progress": round(job.progress, 4), "message": job.message, "queue_position": position,
                    "cancel_requested": job.cancel_requested, "error": job.error}

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job now, ask a running one to stop at its next step, or drop a finished
        job's result. Returns the job (None when unknown)."""
        with self.lock:
            self._expire()
            job = self.jobs.get(job_id)
            if job is None:
                return None
            if job.state == "queued":
                self.waiting.remove(job_id)
                self._finish(job, "cancelled", "cancelled while queued")
            elif job.state == "running":
                job.cancel_requested = True
            else:
                del self.jobs[job_id]
        return job

    def take_result(self, job_id: str) -> Job | None:
        """Remove a finished job and return it (with its result), or None when unknown."""
        with self.lock:
            self._expire()
            job = self.jobs.get(job_id)
            if job is not None and job.state in FINISHED:
                del self.jobs[job_id]
            return job

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking jobs, cancel the running one and wait for the worker thread."""
        with self.lock:
            self.closed = True
            for job in self.jobs.values():
                job.cancel_requested = True
            self.lock.notify_all()
        self.thread.join(timeout)

    # ---- the worker thread -----------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self.lock:
                while not self.waiting and not self.closed:
                    self.lock.wait(timeout=min(self.ttl_s, 60.0))
                    self._expire()
                if self.closed:
                    return
                job = self.jobs[self.waiting.popleft()]
                job.state, job.started, job.message = "running", self.clock(), "starting"
                self.running = job
            self._run(job)

    def _run(self, job: Job) -> None:
        try:
            result = self.runner(job)
        except Cancelled:
            outcome, detail = "cancelled", f"cancelled at step {job.step + 1} of {job.steps}"
        except InputError as error:
            outcome, detail = "failed", str(error)
        except Exception as error:  # the worker must outlive any one job
            log.exception("job %s failed", job.id)
            outcome, detail = "failed", f"internal error on the worker ({type(error).__name__})"
        else:
            outcome, detail = "done", None
        with self.lock:
            if outcome == "done":
                job.result = result
            self._finish(job, outcome, detail)
            self.running = None

    def _finish(self, job: Job, state: str, detail: str | None) -> None:
        job.state, job.finished, job.channels = state, self.clock(), None
        if state == "done":
            job.progress, job.message = 1.0, "done"
        else:
            job.message, job.error = detail or state, detail if state == "failed" else None
        job.timing = {"queued_s": (job.started or job.finished) - job.created,
                      "run_s": job.finished - job.started if job.started is not None else 0.0}
        if state == "done":
            self.mean_run_s = 0.8 * self.mean_run_s + 0.2 * job.timing["run_s"]
        log.info("job %s %s after %.2f s", job.id, state, job.timing["queued_s"] + job.timing["run_s"])

    def _expire(self) -> None:
        """Drop finished jobs older than ``ttl_s`` (call with the lock held)."""
        now = self.clock()
        for job_id in [j.id for j in self.jobs.values() if j.finished is not None and now - j.finished > self.ttl_s]:
            log.info("job %s expired unfetched", job_id)
            del self.jobs[job_id]
