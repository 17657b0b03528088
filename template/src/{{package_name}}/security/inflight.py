"""A cap on authenticated requests in progress: 503 with ``Retry-After`` beyond it.

It sits inside the authentication layers (``app.create_app``), so only requests that a
verified caller sent take a slot: connections that never finish a request, and requests
refused with 401, cannot keep a valid caller out (``security.connections`` bounds those). An
authenticated request whose body trickles in holds its slot until the body timeout
(``REQUEST_BODY_TIMEOUT_SECONDS``) ends it.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

from ..observability import Metrics
from .audit import AuditLog
from .identity import client_ip, principal_from_scope

RETRY_AFTER_SECONDS = 1

_BUSY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32000, "message": "Server busy: too many requests in progress; retry shortly"},
    }
).encode()


class InFlightLimit:
    def __init__(self, app: ASGIApp, *, limit: int, audit: AuditLog, metrics: Metrics) -> None:
        self.app = app
        self.limit = limit
        self.audit = audit
        self.metrics = metrics
        self.in_flight = 0
        # Read when Prometheus scrapes: nothing to update per request.
        metrics.requests_in_progress.set_function(lambda: self.in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            await self._shed(scope, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _shed(self, scope: Scope, send: Send) -> None:
        self.metrics.requests_shed.inc()
        state = scope.setdefault("state", {})
        state["audited"] = True
        principal = principal_from_scope(scope)
        self.audit.record(
            "request_shed",
            principal=principal.id if principal else None,
            client_ip=client_ip(scope),
            http_request_id=state.get("request_id"),
            in_flight=self.in_flight,
        )
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(_BUSY)).encode()),
                    (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _BUSY})
