"""Bounds on every connection before any of its requests is authenticated.

uvicorn starts no timer on a fresh connection and reads a request head of any size, so a
peer that never finishes its head holds a connection (and its buffered bytes) for as long
as it likes. ``BoundedHttpProtocol`` extends uvicorn's httptools protocol with:

- a head timeout: from the connection's start (after TLS), and from the first byte of each
  later request, the head must be complete within ``head_timeout`` seconds, or the
  connection is closed;
- a head size limit: once more than ``max_head_bytes`` arrived and the head is still
  incomplete, the answer is 431 and the connection is closed, before the rest is read;
- a per-address cap: beyond ``max_per_address`` open connections from one peer address,
  a new one is closed as soon as it is made.

Each refusal is counted (``mcp_connections_refused_total``) and audited (aggregated per
address and reason, ``security.audit.RefusalAudit``), as are the 400s that uvicorn sends for
unparseable HTTP. The TLS handshake itself is bounded in
``service.BoundedServer``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..observability import Metrics
from .audit import AuditLog

# A refused connection gets this long to take its answer before it is dropped: a peer that
# reads nothing must not keep it open through the TLS shutdown.
CLOSE_GRACE_SECONDS = 1.0

HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 40\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b"Request line and headers are too large.\n"
)


@dataclass(eq=False)
class ConnectionBounds:
    """The limits, with where refusals are counted and audited. One per listening port: the
    per-address counts live here."""

    head_timeout: float
    max_head_bytes: int
    max_per_address: int
    metrics: Metrics
    audit: AuditLog
    open_by_address: Counter[str] = field(default_factory=Counter)

    def refused(self, reason: str, client_ip: str | None) -> None:
        self.metrics.record_connection_refusal(reason)
        # Aggregated per address and reason, as the HTTP refusals are: a flood writes few lines.
        self.audit.refusals.record("connection_refused", reason, {"reason": reason, "client_ip": client_ip})


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of ``ConnectionBounds``."""

    bounds: ClassVar[ConnectionBounds]
    _address: str | None = None  # counted in bounds.open_by_address while set
    _head_timer: asyncio.TimerHandle | None = None
    _head_open = False  # a request head has begun (or may begin) and is not complete
    _head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        address = self.client[0] if self.client else None
        if address is not None:
            if self.bounds.open_by_address[address] >= self.bounds.max_per_address:
                self._refuse("per_address_limit")
                return
            self.bounds.open_by_address[address] += 1
            self._address = address
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        if self._address is not None:
            remaining = self.bounds.open_by_address[self._address] - 1
            if remaining > 0:
                self.bounds.open_by_address[self._address] = remaining
            else:
                del self.bounds.open_by_address[self._address]  # no entry per address ever seen
            self._address = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused: what still arrives is not read
        super().data_received(data)
        # Checked after httptools took the chunk, as uvicorn feeds it: no parser of our own.
        # A chunk that also ends the previous request's body counts in full (errs on the safe side).
        if self._head_open and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.bounds.max_head_bytes:
                self._refuse("head_too_large", HEAD_TOO_LARGE)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._head_open:  # a later request on a kept-alive connection
            self._start_head()

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._stop_head_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        self._stop_head_timer()
        self.bounds.refused("bad_request", self._client_ip())
        super().send_400_response(msg)

    def _start_head(self) -> None:
        self._head_open, self._head_bytes = True, 0
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.bounds.head_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_open and not self.transport.is_closing():
            self._refuse("head_timeout")

    def _client_ip(self) -> str | None:
        return self.client[0] if self.client else None

    def _refuse(self, reason: str, answer: bytes = b"") -> None:
        self._head_open = False
        self._stop_head_timer()
        self.bounds.refused(reason, self._client_ip())
        if answer:
            self.transport.write(answer)
        self.transport.close()
        self.loop.call_later(CLOSE_GRACE_SECONDS, self.transport.abort)
