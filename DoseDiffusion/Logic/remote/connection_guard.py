"""Keeping the worker reachable when connections are opened and never finished (slowloris), with
uvicorn's own HTTP protocol and no reverse proxy in front.

A connection is *pending* from its accept until its request headers are complete (and again after
each response, while a keep-alive connection waits for its next request). A pending connection is
closed after ``header_timeout_s``; at most ``max_pending_per_ip`` connections of one client address
and ``max_pending`` in all may be pending: a new connection beyond either cap closes the oldest
pending one (of that address first), so a flood of half-open connections cannot use up the
process's file descriptors and a real client's new connection is still served. Headers are
unauthenticated by nature: what a pending connection costs is bounded before a token is seen.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from dosediffusion.remote.logs import FLOOD
from dosediffusion.remote.wire import INSTANCE_HEADER

log = logging.getLogger("dosediffusion.remote")


class ConnectionGuard:
    """The pending connections of one server, oldest first, and the caps on them."""

    def __init__(self, header_timeout_s: float = 10.0, max_pending: int = 256, max_pending_per_ip: int = 32):
        self.header_timeout_s, self.max_pending, self.max_pending_per_ip = header_timeout_s, max_pending, max_pending_per_ip
        self.pending: OrderedDict[GuardedProtocol, str] = OrderedDict()
        self.closed = 0  # pending connections closed by a cap or the timeout

    def admit(self, protocol: GuardedProtocol, address: str) -> None:
        """``protocol`` of client ``address`` is pending; make room under both caps."""
        same = [p for p, a in self.pending.items() if a == address]
        while len(same) >= self.max_pending_per_ip:
            self.drop(same.pop(0), "too many pending connections from one address")
        while len(self.pending) >= self.max_pending:
            self.drop(next(iter(self.pending)), "too many pending connections")
        self.pending[protocol] = address

    def settle(self, protocol: GuardedProtocol) -> None:
        """``protocol`` has sent its request headers (or is gone): no longer pending."""
        self.pending.pop(protocol, None)

    def drop(self, protocol: GuardedProtocol, why: str) -> None:
        self.settle(protocol)
        self.closed += 1
        log.warning("closed a connection whose request headers did not arrive (%s)", why, extra={FLOOD: True})
        protocol.transport.close()


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol under a :class:`ConnectionGuard` (``guard`` is set by :func:`guarded_protocol`)."""

    guard: ConnectionGuard
    instance = ""  # the worker's instance id, named in uvicorn's own 400 responses too
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._pend()

    def _pend(self) -> None:
        self.guard.admit(self, self.client[0] if self.client else "")
        if self._deadline is not None:  # one header deadline at a time
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.guard.header_timeout_s, self._headers_late)

    def _headers_late(self) -> None:
        if self in self.guard.pending:
            self.guard.drop(self, f"no request headers within {self.guard.header_timeout_s:g} s")

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's headers are complete
            self._deadline.cancel()
            self.guard.settle(self)

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()  # may start a pipelined request already received whole
        if not self.transport.is_closing() and self.cycle is cycle:  # it waits for its next request's headers
            self._pend()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's 400 (a malformed or over-long request head), with the ``X-DoseDiffusion-Instance`` header
        that the app's responses carry."""
        send = self.conn.send

        def named(event):
            if isinstance(event, h11.Response):
                event = h11.Response(status_code=event.status_code, reason=event.reason,
                                     headers=[*event.headers, (INSTANCE_HEADER.encode(), self.instance.encode())])
            return send(event)

        self.conn.send = named
        try:
            super().send_400_response(msg)
        finally:
            del self.conn.send

    def connection_lost(self, exc) -> None:
        self._deadline.cancel()
        self.guard.settle(self)
        super().connection_lost(exc)


def guarded_protocol(guard: ConnectionGuard, instance: str = "") -> type[GuardedProtocol]:
    """The protocol class to give uvicorn (``Config(http=...)``) for a server under ``guard`` whose app is the
    worker ``instance``."""
    return type("GuardedH11Protocol", (GuardedProtocol,), {"guard": guard, "instance": instance})
