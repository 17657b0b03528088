"""Structured JSON audit events: one line for every tool call, denial and rejected request.

Audit lines bypass the log level (an operator can silence debug chatter, not the audit
trail), carry ``"log_type": "audit"`` so a log pipeline can route them apart, and are
written whole, one ``write`` per event, so concurrent events never interleave.

Tool-call events carry a ``trace_id``: the caller's W3C trace context when its request
carries one in ``params._meta.traceparent``, else a new one. Servers that call other MCP
servers pass it on, so one id finds a call in every audit trail it crossed.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TextIO


class AuditLog:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout

    def record(self, event: str, **fields: object) -> None:
        line = {"ts": datetime.now(UTC).isoformat(), "log_type": "audit", "event": event, **fields}
        self._stream.write(json.dumps(line, default=str, separators=(",", ":")) + "\n")
        self._stream.flush()


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
