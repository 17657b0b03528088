"""Structured JSON audit events: one line for every tool call and denial, and for refused requests
one line per source and reason per window (``RefusalAudit``).

Audit lines bypass the log level (an operator can silence debug chatter, not the audit
trail), carry ``"log_type": "audit"`` so a log pipeline can route them apart, and are
written whole, one ``write`` per event, so concurrent events never interleave.

A refused request (no token, a forged one, a budget spent, a malformed message) costs its
sender nothing, so one line per refusal would let any client fill the disk: ``RefusalAudit``
writes the first refusal of a (source address, event, reason, principal) at once, so an
operator sees an attack start, and counts the others into one summary line with ``count``,
written when the window closes (at the next refusal after it, on the periodic flush, at shutdown).
An attacker with many addresses would still get a line or two per address, so the lines are
bounded in total too: at most ``max_lines`` per period of one window, after which the period's
further refusals are only counted, and written as one ``refusal_overflow`` line when it ends
(the number of ``sources``, the ``count`` of refusals and that count by refusal name).

Tool-call events carry a ``trace_id``: the caller's W3C trace context when its request
carries one in ``params._meta.traceparent``, else a new one. Servers that call other MCP
servers pass it on, so one id finds a call in every audit trail it crossed.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import anyio
from starlette.types import Scope

from ..lifecycle import Part

REFUSAL_WINDOW_SECONDS = 10.0
REFUSAL_LINES_PER_WINDOW = 100
_REFUSAL_SOURCES = 10_000  # windows kept open at most; the oldest is written out beyond
OVERFLOW = "refusal_overflow"
# One encoder for every line (json.dumps with options builds a new one each call).
_encode = json.JSONEncoder(default=str, separators=(",", ":")).encode


class AuditLog:
    def __init__(
        self,
        stream: TextIO | None = None,
        refusal_window_seconds: float = REFUSAL_WINDOW_SECONDS,
        refusal_lines_per_window: int = REFUSAL_LINES_PER_WINDOW,
    ) -> None:
        self._stream = stream or sys.stdout
        self.refusals = RefusalAudit(self, refusal_window_seconds, max_lines=refusal_lines_per_window)

    def record(self, event: str, **fields: object) -> str:
        """Write the event; returns its timestamp."""
        ts = datetime.now(UTC).isoformat()
        line = {"ts": ts, "log_type": "audit", "event": event, **fields}
        self._stream.write(_encode(line) + "\n")
        self._stream.flush()
        return ts

    def refused(self, scope: Scope, event: str, refusal: str, **fields: object) -> None:
        """Audit a refused request (aggregated per window, see ``RefusalAudit``). ``refusal`` names
        it in ``mcp_requests_refused_total`` and in the request state (the HTTP edge counts it)."""
        state = scope.setdefault("state", {})
        state["audited"] = True
        state["rejection"] = refusal
        self.refusals.record(event, refusal, fields)


@dataclass(slots=True)
class _Window:
    event: str
    since: str  # when its first refusal was written
    opened: float  # the clock's time then
    count: int = 0  # refusals since, not written yet
    fields: dict[str, object] | None = None  # those of the latest
    refusal: str = ""  # its name in mcp_requests_refused_total


class _Overflow:
    """The refusals of one period that got no line of their own."""

    __slots__ = ("count", "reasons", "since", "sources")

    def __init__(self) -> None:
        self.count = 0
        self.reasons: dict[str, int] = {}  # by refusal name: a fixed set this server names
        self.sources: set[object] = set()  # client addresses, at most _REFUSAL_SOURCES
        self.since: str | None = None


class RefusalAudit:
    """One audit line per refusal source per window, plus a summary of the rest with its ``count``;
    at most ``max_lines`` such lines per period of one window in all, then one ``refusal_overflow``
    line for the period. A window of 0 writes every refusal on a line of its own (no bound)."""

    def __init__(
        self,
        audit: AuditLog,
        window_seconds: float = REFUSAL_WINDOW_SECONDS,
        *,
        max_lines: int = REFUSAL_LINES_PER_WINDOW,
        max_sources: int = _REFUSAL_SOURCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.audit, self.window_seconds, self.max_sources, self.clock = audit, window_seconds, max_sources, clock
        self.max_lines = max_lines
        # Oldest window first: a new window is a new entry, so flushing stops at the first open one.
        self._windows: OrderedDict[tuple[object, ...], _Window] = OrderedDict()
        self._period_started: float | None = None  # the clock's time when the period began
        self._lines = 0  # lines written in this period
        self._overflow = _Overflow()

    def record(self, event: str, refusal: str, fields: dict[str, Any]) -> None:
        source = (event, refusal, fields.get("client_ip"), fields.get("principal"), fields.get("reason"))
        now = self.clock()
        if self.window_seconds <= 0:
            self.audit.record(event, **fields, count=1)
            return
        self._next_period(now)
        window = self._windows.get(source)
        if window is not None and now - window.opened >= self.window_seconds:
            self._write(self._windows.pop(source))
            window = None
        if window is not None:
            window.count += 1
            window.fields = fields
            return
        if self._lines >= self.max_lines:
            self._overflowed(refusal, fields.get("client_ip"), 1)
            return
        self._lines += 1
        written = self.audit.record(event, **fields, count=1)
        self._windows[source] = _Window(event, written, now, refusal=refusal)
        if len(self._windows) > self.max_sources:
            self._write(self._windows.popitem(last=False)[1])
        self.flush()

    def flush(self, *, everything: bool = False) -> None:
        """Write the summaries of the windows that have closed (all of them at shutdown), and
        the overflow line of a period that has ended (at shutdown, of the current one too)."""
        now = self.clock()
        self._next_period(now)
        while self._windows:
            source, window = next(iter(self._windows.items()))
            if not everything and now - window.opened < self.window_seconds:
                break
            del self._windows[source]
            self._write(window)
        if everything:
            self._write_overflow()

    async def keep_flushing(self) -> None:
        """So a source that stopped still gets its count written within about one window."""
        while True:
            await anyio.sleep(max(self.window_seconds, 1.0))
            self.flush()

    def _next_period(self, now: float) -> None:
        """Begin a new period, with a new line budget, once the current one is a window old."""
        if self._period_started is None or now - self._period_started >= self.window_seconds:
            self._write_overflow()
            self._period_started, self._lines = now, 0

    def _write(self, window: _Window) -> None:
        if window.count and window.fields is not None:
            if self._lines >= self.max_lines:
                self._overflowed(window.refusal, window.fields.get("client_ip"), window.count)
                return
            self._lines += 1
            # The latest refusal's fields stand for all; its request id would name only one.
            latest = {key: value for key, value in window.fields.items() if key != "http_request_id"}
            self.audit.record(window.event, **latest, count=window.count, since=window.since)

    def _overflowed(self, refusal: str, client_ip: object, count: int) -> None:
        overflow = self._overflow
        if overflow.since is None:
            overflow.since = datetime.now(UTC).isoformat()
        overflow.count += count
        overflow.reasons[refusal] = overflow.reasons.get(refusal, 0) + count
        if len(overflow.sources) < self.max_sources:
            overflow.sources.add(client_ip)

    def _write_overflow(self) -> None:
        overflow = self._overflow
        if overflow.count:
            self._overflow = _Overflow()
            capped = len(overflow.sources) >= self.max_sources
            self.audit.record(
                OVERFLOW,
                count=overflow.count,
                sources=len(overflow.sources),
                **({"sources_capped": True} if capped else {}),
                reasons=overflow.reasons,
                since=overflow.since,
                lines_per_window=self.max_lines,
            )


class RefusalSummaries(Part):
    """The refusal audit's periodic flush while serving, and the last one after."""

    def __init__(self, refusals: RefusalAudit) -> None:
        self.refusals = refusals

    async def keep(self) -> None:
        await self.refusals.keep_flushing()

    async def aclose(self) -> None:
        self.refusals.flush(everything=True)


TRACEPARENT = "traceparent"
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_NO_TRACE = "0" * 32


def trace_id(params: Mapping[str, object] | None) -> str:
    """The trace id of a request's ``_meta.traceparent`` (W3C trace context), or a new one."""
    meta = params.get("_meta") if params else None
    value = meta.get(TRACEPARENT) if isinstance(meta, Mapping) else None
    match = _TRACEPARENT.fullmatch(value) if isinstance(value, str) else None
    if match and match.group(1) != _NO_TRACE:
        return match.group(1)
    return secrets.token_hex(16)


def trace_id_of(state: Mapping[str, object]) -> str | None:
    """The trace id the tool guard recorded for this request, if any."""
    value = state.get("trace_id")
    return value if isinstance(value, str) else None
