"""Bounds on every connection and on every request until the app has it whole.

uvicorn starts no timer on a fresh connection, reads a request head of any size (its check
is per read) and waits for a request body as long as it trickles, so a peer holds a
connection, and with a valid credential a request slot, as long as it likes.
``BoundedHttpProtocol`` extends uvicorn's httptools protocol with:

- a head timeout: from the connection's start (after TLS), and from the first byte of each
  later request, the head must be complete within ``head_timeout`` seconds;
- a body timeout: from the end of the head, the body must be complete within
  ``body_timeout``; and a request timeout: from its first byte (for a connection's first
  request, from the connection's start) the request must be whole within
  ``request_timeout``, whichever ends first. A request that started gets 408; a connection
  that sent nothing is closed without an answer;
- a head size limit, counted on each chunk up to the end of the head (``CRLF CRLF``), so the
  same whatever the write pattern: beyond ``max_head_bytes`` the answer is 431 before the
  rest is parsed;
- a per-address cap, counted from accept (``security.listener``, which also caps connections
  in all): beyond ``max_per_address`` connections from one address, a new one is answered 503
  with ``Retry-After`` once through TLS and its request head is in (it gets
  ``CLOSE_GRACE_SECONDS`` to send it, and no request of it runs); beyond twice the cap the
  listener closes it before TLS;
- an end to every exchange: after a refusal of its own, or an answer the app sent before it
  had the whole body (401 without a token, 413, ...), the connection is closed, and dropped
  ``CLOSE_GRACE_SECONDS`` later whatever the client still sends; an answer sent before the
  body is whole says ``Connection: close``, whatever its status, so no client sends another
  request on a connection about to close;
- pipelined requests answered in order: a refusal decided while an earlier request is in
  progress is sent after that request's answer, and requests read but not started are
  dropped, never run. No request runs whose answer the client cannot see.

Each refusal is counted (``mcp_connections_refused_total``) and audited (aggregated per
address and reason, ``security.audit.RefusalAudit``), as are the 400s for unparseable HTTP.
The TLS handshake and the TLS close are bounded in ``security.listener``.

The checks run on each chunk (a ``find`` for the end of a head, a few attribute reads) and
allocate nothing for a request whose head arrives in one chunk; timers are armed only when a
head or a body spans chunks.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..observability import Metrics
from .audit import AuditLog

# A connection being closed gets this long to take its answer before it is dropped: a peer
# that reads nothing, or keeps sending, must not keep it open through the TLS shutdown. An
# address over its cap gets this long to send the request head its 503 answers.
CLOSE_GRACE_SECONDS = 1.0
RETRY_AFTER_SECONDS = 1
END_OF_HEAD = b"\r\n\r\n"

# Where a connection is: in a request head (or between requests: the next bytes are a head's),
# in a request body, or ended (refused or answered for the last time: nothing more is read).
_HEAD, _BODY, _ENDED = 0, 1, 2


def http_answer(
    status: bytes, body: bytes, content_type: bytes = b"text/plain; charset=utf-8", extra: bytes = b""
) -> bytes:
    """A whole HTTP/1.1 answer that ends the connection."""
    return b"".join(
        [
            b"HTTP/1.1 ",
            status,
            b"\r\ncontent-type: ",
            content_type,
            b"\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\n",
            extra,
            b"connection: close\r\n\r\n",
            body,
        ]
    )


HEAD_TOO_LARGE = http_answer(b"431 Request Header Fields Too Large", b"Request line and headers are too large.\n")
HEAD_TOO_SLOW = http_answer(b"408 Request Timeout", b"Request line and headers not received in time.\n")
BODY_TOO_SLOW = http_answer(b"408 Request Timeout", b"Request body not received in time.\n")
BAD_REQUEST = http_answer(b"400 Bad Request", b"Invalid HTTP request received.\n")
TOO_MANY_CONNECTIONS = http_answer(
    b"503 Service Unavailable",
    json.dumps(
        {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": -32000, "message": "Server busy: too many connections from this address; retry shortly"},
        }
    ).encode(),
    b"application/json",
    b"retry-after: %d\r\n" % RETRY_AFTER_SECONDS,
)


class _StopParsingError(Exception):
    """Raised in a parser callback to stop parsing the rest of a chunk (httptools has no pause)."""


@dataclass(eq=False)
class ConnectionBounds:
    """The limits, with where refusals are counted and audited. One per listening port: the
    connection counts live here, kept by ``security.listener`` from accept on."""

    head_timeout: float
    body_timeout: float
    request_timeout: float
    max_head_bytes: int
    max_per_address: int
    max_open: int  # connections in all (the open-file limit less RESERVED_FILE_DESCRIPTORS)
    metrics: Metrics
    audit: AuditLog
    open_by_address: Counter[str] = field(default_factory=Counter)
    open_total: int = 0
    handshakes: int = 0  # connections accepted whose TLS handshake (or PROXY header) is not done

    def admit(self, address: str) -> bool | None:
        """Count a connection from ``address``: False within its cap, True beyond it (answered
        503 once through TLS), None beyond twice the cap (refused: not counted)."""
        open_now = self.open_by_address[address]
        if open_now >= 2 * self.max_per_address:
            return None
        self.open_by_address[address] = open_now + 1
        return open_now >= self.max_per_address

    def closed(self, address: str | None) -> None:
        """A connection counted from accept (and against ``address``, if given) is gone."""
        self.open_total -= 1
        if address is not None:
            remaining = self.open_by_address[address] - 1
            if remaining > 0:
                self.open_by_address[address] = remaining
            else:
                del self.open_by_address[address]  # no entry per address ever seen

    def refused(self, reason: str, client_ip: str | None) -> None:
        self.metrics.record_connection_refusal(reason)
        # Aggregated per address and reason, as the HTTP refusals are: a flood writes few lines.
        self.audit.refusals.record("connection_refused", reason, {"reason": reason, "client_ip": client_ip})


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of ``ConnectionBounds``."""

    bounds: ClassVar[ConnectionBounds]
    # Per connection; class attributes until first set, so a connection allocates none of them.
    _client: tuple[str, int] | None = None  # from accept: the peer, or the client a trusted proxy named
    _address: str | None = None  # counted in bounds (open_total, open_by_address) while set
    _over_cap = False  # beyond the per-address cap: its request head gets 503
    _phase = _HEAD
    _head_bytes = 0  # of the head being read (leading empty lines included)
    _head_begun = False  # its request line has begun (the end of the head is searched from there)
    _head_tail = b""  # the last bytes of a head's previous chunk, when they may start its end
    _unmeasured = False  # a pipelined head that began inside a chunk, after the previous request
    _timer: asyncio.TimerHandle | None = None
    _timer_reason = ""
    _request_started = 0.0  # loop time of the request's first byte; 0: none armed a timer yet
    _deferred: bytes | None = None  # a refusal's answer, sent once the request in progress is answered
    _keep_alive = True  # whether the request being read may keep the connection, once its body is whole
    _draining = False  # uvicorn's shutdown began

    # asyncio protocol

    def accepted(self, client: tuple[str, int], *, over_cap: bool) -> None:
        """At accept (``security.listener``): the connection is from ``client`` (the peer, or
        the client a trusted proxy named), counted in ``bounds`` until ``release``."""
        self._client, self._address, self._over_cap = client, client[0], over_cap

    def release(self) -> None:
        """Uncount the connection: when it is lost, or its handshake failed (once only)."""
        if self._address is not None:
            self.bounds.closed(self._address)
            self._address = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self._client is not None:
            self.client = self._client  # what the scope, the refusal budget and the audit see
        if self._over_cap:
            self._timer_reason = "per_address_limit"
            self._timer = self.loop.call_later(CLOSE_GRACE_SECONDS, self._timed_out)
            return
        self._arm(self.bounds.head_timeout, "head_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = _ENDED
        self._stop_timer()
        self.release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, with the bounds around the parser.
        if self._phase == _ENDED or self.transport.is_closing():
            # Refused, or closing after an answer that ended the connection: what still arrives
            # is not read (a request parsed now would run with its answer dropped).
            return
        self._unset_keepalive_if_required()
        if self._phase == _HEAD and not self._count_head(data):
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._phase != _ENDED:  # else a bound stopped the parser (_StopParsingError)
                self._refuse("bad_request", BAD_REQUEST)
            return
        if self._unmeasured and self._phase == _HEAD:
            # A pipelined head began after the previous request ended inside this chunk and is
            # not complete: it is at most what follows the last end of a head.
            self._unmeasured, self._head_begun = False, True
            end = data.rfind(END_OF_HEAD)
            self._head_bytes = len(data) - (end + 4 if end >= 0 else 0) or 1
            self._head_tail = data[-3:] if data[-1] in b"\r\n" else b""
            if self._head_bytes > self.bounds.max_head_bytes:
                self._refuse("head_too_large", HEAD_TOO_LARGE)
                return
        if self._timer is None:
            if self._phase == _BODY:
                self._arm(self.bounds.body_timeout, "body_timeout")
            elif self._head_bytes:
                self._arm(self.bounds.head_timeout, "head_timeout")

    # httptools parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._head_begun:  # began inside a chunk, after the previous request's end
            self._unmeasured = True

    def on_headers_complete(self) -> None:
        if self._unmeasured:
            # Measured as the parser saw it (whitespace around values is not counted).
            self._unmeasured = False
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) + 16
            if size > self.bounds.max_head_bytes:
                self._refuse("head_too_large", HEAD_TOO_LARGE)
                raise _StopParsingError
        self._phase = _BODY
        self._head_bytes, self._head_begun, self._head_tail = 0, False, b""
        self._stop_timer()
        if self._over_cap:
            self._refuse("per_address_limit", TOO_MANY_CONNECTIONS)
            raise _StopParsingError
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before:
            # An answer sent before the body is whole ends the connection (on_response_complete),
            # so it must say so: else the client sends its next request on it and gets nothing.
            self._keep_alive, self.cycle.keep_alive = self.cycle.keep_alive, False

    def on_message_complete(self) -> None:
        self._phase = _HEAD
        self._stop_timer()
        self._request_started = 0.0
        cycle = self.cycle
        if cycle is not None and not cycle.response_started and not self._draining:
            cycle.keep_alive = self._keep_alive  # the body is whole: the answer may keep the connection
        super().on_message_complete()

    def shutdown(self) -> None:
        self._draining = True  # uvicorn's shutdown ends keep-alive: on_message_complete must not undo it
        super().shutdown()

    # uvicorn's hooks

    def on_response_complete(self) -> None:
        if self._deferred is not None or (self._phase == _BODY and not self.pipeline):
            # A refusal waited for this answer, or the app answered before it had the whole
            # body (401, 413, ...): this exchange ends the connection, whatever comes next.
            self.server_state.total_requests += 1
            deferred, self._deferred = self._deferred, None
            self._phase = _ENDED
            self._stop_timer()
            self._close(deferred or b"")
            return
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        self._refuse("bad_request", BAD_REQUEST)

    # the bounds

    def _count_head(self, data: bytes) -> bool:
        """Count the chunk's bytes up to the end of the head (all of them if it does not end
        here); refuse with 431 beyond the limit. False when refused."""
        start = 0
        if not self._head_begun:
            if data[0] in b"\r\n":
                # Empty lines before a request line (the parser skips them) count, but cannot end it.
                start = len(data) - len(data.lstrip(b"\r\n"))
                if start == len(data):
                    self._head_bytes += start
                    return self._head_bytes <= self.bounds.max_head_bytes or self._too_large()
            self._head_begun = True
        counted = 0  # bytes of this chunk up to the end of the head, if it ends here
        if self._head_tail:  # the end may straddle the previous chunk and this one
            at = (self._head_tail + data[:3]).find(END_OF_HEAD)
            if at >= 0:
                counted = at + 4 - len(self._head_tail)
        if not counted:
            end = data.find(END_OF_HEAD, start)
            counted = end + 4 if end >= 0 else 0
        if counted:
            self._head_bytes += counted
            self._head_tail = b""
        else:
            self._head_bytes += len(data)
            self._head_tail = (self._head_tail + data[-3:])[-3:] if data[-1] in b"\r\n" else b""
        return self._head_bytes <= self.bounds.max_head_bytes or self._too_large()

    def _too_large(self) -> bool:
        self._refuse("head_too_large", HEAD_TOO_LARGE)
        return False

    def _arm(self, timeout: float, reason: str) -> None:
        """Start the timer of the current phase, or the request's if that ends first."""
        now = self.loop.time()
        if not self._request_started:
            self._request_started = now
        left = self._request_started + self.bounds.request_timeout - now
        if left < timeout:
            timeout, reason = max(left, 0.0), "request_timeout"
        self._timer_reason = reason
        self._timer = self.loop.call_later(timeout, self._timed_out)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._phase == _ENDED:
            return
        if self._over_cap:
            self._refuse("per_address_limit")
        elif self._phase == _BODY:
            self._refuse(self._timer_reason, BODY_TOO_SLOW)
        else:  # a request that began gets an answer; a connection that sent nothing, none
            self._refuse(self._timer_reason, HEAD_TOO_SLOW if self._head_bytes else b"")

    def _client_ip(self) -> str | None:
        return self.client[0] if self.client else None

    def _refuse(self, reason: str, answer: bytes = b"") -> None:
        """Read nothing more, count and audit, then answer and close: at once, or after the
        answer to the request in progress when there is one. Requests read but not started
        are dropped: none runs that the client would not see answered."""
        reading_body = self._phase == _BODY
        self._phase = _ENDED
        self._stop_timer()
        self.bounds.refused(reason, self._client_ip())
        queued = bool(self.pipeline)
        self.pipeline.clear()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if not (reading_body and not queued):
                self._deferred = answer  # an earlier request is being answered: this comes after it
                return
            # The request whose body is too slow is running: it ends here, as if its client left.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                answer = b""
        self._close(answer)

    def _close(self, answer: bytes) -> None:
        transport = self.transport
        if not transport.is_closing():
            if answer:
                transport.write(answer)
            transport.close()
        self.loop.call_later(CLOSE_GRACE_SECONDS, transport.abort)
