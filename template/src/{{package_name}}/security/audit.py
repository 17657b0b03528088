"""Structured JSON audit events: one line for every tool call, denial and rejected request.

Audit lines bypass the log level (an operator can silence debug chatter, not the audit
trail), carry ``"log_type": "audit"`` so a log pipeline can route them apart, and are
written whole, one ``write`` per event, so concurrent events never interleave.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TextIO


class AuditLog:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout

    def record(self, event: str, **fields: object) -> None:
        line = {"ts": datetime.now(UTC).isoformat(), "log_type": "audit", "event": event, **fields}
        self._stream.write(json.dumps(line, default=str, separators=(",", ":")) + "\n")
        self._stream.flush()
