"""The worker's log hygiene: no message floods the log, and no query string (where a careless client
may have put its token) is written to the access log."""

from __future__ import annotations

import logging
import time


class RateLimitFilter(logging.Filter):
    """Lets a message (by its format string) through at most once per ``window_s`` seconds; the next one
    let through says how many were suppressed."""

    def __init__(self, window_s: float = 10.0):
        super().__init__()
        self.window_s = window_s
        self.last: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key, now = (record.name, str(record.msg)), time.monotonic()
        seen, suppressed = self.last.get(key, (-float("inf"), 0))
        if now - seen < self.window_s:
            self.last[key] = (seen, suppressed + 1)
            return False
        self.last[key] = (now, 0)
        if suppressed:
            record.msg = f"{record.msg} ({suppressed} more like this in the last {self.window_s:g} s)"
        return True


class QueryRedactFilter(logging.Filter):
    """Drops the query string from uvicorn's access log lines (``"GET /jobs?token=... HTTP/1.1"``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?[query not logged]", *args[3:])
        return True


def configure_worker_logs(window_s: float = 10.0) -> None:
    """Rate-limit the worker's, uvicorn's and asyncio's loggers (accept errors repeat in a tight loop) and
    keep query strings out of the access log; once per process."""
    access = logging.getLogger("uvicorn.access")
    if any(isinstance(f, QueryRedactFilter) for f in access.filters):
        return
    limiter = RateLimitFilter(window_s)
    for name in ("dosediffusion.remote", "uvicorn.error", "asyncio"):
        logging.getLogger(name).addFilter(limiter)
    access.addFilter(QueryRedactFilter())
