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
_REFUSAL_SOURCES = 10_000  # windows kept open at most; the oldest is written out beyond


class AuditLog:
    def __init__(self, stream: TextIO | None = None, refusal_window_seconds: float = REFUSAL_WINDOW_SECONDS) -> None:
        self._stream = stream or sys.stdout
        self.refusals = RefusalAudit(self, refusal_window_seconds)

    def record(self, event: str, **fields: object) -> str:
        """Write the event; returns its timestamp."""
        ts = datetime.now(UTC).isoformat()
        line = {"ts": ts, "log_type": "audit", "event": event, **fields}
        self._stream.write(json.dumps(line, default=str, separators=(",", ":")) + "\n")
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


class RefusalAudit:
    """One audit line per refusal source per window, plus a summary of the rest with its ``count``.
    A window of 0 writes every refusal on a line of its own."""

    def __init__(
        self,
        audit: AuditLog,
        window_seconds: float = REFUSAL_WINDOW_SECONDS,
        *,
        max_sources: int = _REFUSAL_SOURCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.audit, self.window_seconds, self.max_sources, self.clock = audit, window_seconds, max_sources, clock
        # Oldest window first: a new window is a new entry, so flushing stops at the first open one.
        self._windows: OrderedDict[tuple[object, ...], _Window] = OrderedDict()

    def record(self, event: str, refusal: str, fields: dict[str, Any]) -> None:
        source = (event, refusal, fields.get("client_ip"), fields.get("principal"), fields.get("reason"))
        now = self.clock()
        window = self._windows.get(source)
        if window is not None and now - window.opened >= self.window_seconds:
            self._write(self._windows.pop(source))
            window = None
        if window is not None:
            window.count += 1
            window.fields = fields
            return
        written = self.audit.record(event, **fields, count=1)
        if self.window_seconds > 0:
            self._windows[source] = _Window(event, written, now)
            if len(self._windows) > self.max_sources:
                self._write(self._windows.popitem(last=False)[1])
        self.flush()

    def flush(self, *, everything: bool = False) -> None:
        """Write the summaries of the windows that have closed (all of them at shutdown)."""
        now = self.clock()
        while self._windows:
            source, window = next(iter(self._windows.items()))
            if not everything and now - window.opened < self.window_seconds:
                break
            del self._windows[source]
            self._write(window)

    async def keep_flushing(self) -> None:
        """So a source that stopped still gets its count written within about one window."""
        while True:
            await anyio.sleep(max(self.window_seconds, 1.0))
            self.flush()

    def _write(self, window: _Window) -> None:
        if window.count and window.fields is not None:
            # The latest refusal's fields stand for all; its request id would name only one.
            latest = {key: value for key, value in window.fields.items() if key != "http_request_id"}
            self.audit.record(window.event, **latest, count=window.count, since=window.since)


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
