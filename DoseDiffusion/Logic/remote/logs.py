"""The worker's log hygiene: no message floods the log, and no query string (where a careless client
may have put its token) is written to the access log."""

from __future__ import annotations

import logging
import threading
import time

#: ``log.warning(..., extra={FLOOD: True})`` marks a line that a client can make the worker repeat without bound.
FLOOD = "flood"


def is_flood(record: logging.LogRecord) -> bool:
    """True for the lines a client can make the worker repeat without bound, the only ones rate-limited: ours
    marked :data:`FLOOD` (the connection guard's closures, disconnects mid-upload), uvicorn's warnings about
    invalid requests, and asyncio's accept errors (a descriptor shortage repeats them in a tight loop). Job
    lines and errors (tracebacks included) are never flood."""
    if getattr(record, FLOOD, False):
        return True
    if record.name == "uvicorn.error":
        return record.levelno == logging.WARNING
    return record.name == "asyncio" and str(record.msg).startswith("socket.accept()")


class RateLimitFilter(logging.Filter):
    """Lets a flood line (:func:`is_flood`, by its logger and the first line of its format string) through at
    most once per ``window_s`` seconds; every other record passes. Once a window has passed, the next record
    that meets the filter is preceded by a summary: a WARNING of ``dosediffusion.remote`` naming the line and
    how many of it were dropped."""

    def __init__(self, window_s: float = 10.0):
        super().__init__()
        self.window_s = window_s
        self.last: dict[tuple[str, str], tuple[float, int]] = {}  # key → (let through at, dropped since)
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        now, let = time.monotonic(), True
        with self.lock:
            expired = [(key, dropped) for key, (seen, dropped) in self.last.items() if now - seen >= self.window_s]
            for key, _ in expired:
                del self.last[key]
            if is_flood(record):
                key = (record.name, str(record.msg).split("\n", 1)[0])
                seen, dropped = self.last.get(key, (now, -1))
                self.last[key], let = (seen, dropped + 1), dropped < 0
        for (name, message), dropped in expired:  # outside the lock: the summary meets this filter too
            if dropped:
                logging.getLogger("dosediffusion.remote").warning(
                    "dropped %d more of %r (%s) in %g s", dropped, message, name, self.window_s)
        return let


class QueryRedactFilter(logging.Filter):
    """Drops the query string from uvicorn's access log lines (``"GET /jobs?token=... HTTP/1.1"``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?[query not logged]", *args[3:])
        return True


def configure_worker_logs(window_s: float = 10.0) -> None:
    """Rate-limit the flood lines of the worker's, uvicorn's and asyncio's loggers (the access log's lines
    meet the limiter too, so that a summary comes soon after a flood ends) and keep query strings out of the
    access log; once per process."""
    access = logging.getLogger("uvicorn.access")
    if any(isinstance(f, QueryRedactFilter) for f in access.filters):
        return
    limiter = RateLimitFilter(window_s)
    for name in ("dosediffusion.remote", "uvicorn.error", "asyncio", "uvicorn.access"):
        logging.getLogger(name).addFilter(limiter)
    access.addFilter(QueryRedactFilter())
