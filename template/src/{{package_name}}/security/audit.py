"""Structured JSON audit events: one line for every tool call, denial and rejected request.

Audit lines bypass the log level (an operator can silence debug chatter, not the audit
trail) and carry ``"log_type": "audit"`` so a log pipeline can route them apart.
"""

from __future__ import annotations

import sys
from typing import TextIO

import structlog


class AuditLog:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._logger = structlog.wrap_logger(
            structlog.WriteLogger(stream or sys.stdout),
            processors=[
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
                structlog.processors.JSONRenderer(),
            ],
            context_class=dict,
            cache_logger_on_first_use=True,
        )

    def record(self, event: str, **fields: object) -> None:
        self._logger.info(event, log_type="audit", **fields)
