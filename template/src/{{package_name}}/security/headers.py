"""The HTTP edge: a request id and security headers on every response, and an audit
event for every request refused before it reached a tool (bad Host/Origin, oversize body,
malformed JSON-RPC, rate limit)."""

from __future__ import annotations

import re
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..observability import Metrics
from .audit import AuditLog
from .identity import client_ip, principal_from_scope

SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"strict-transport-security", b"max-age=63072000; includeSubDomains"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
# A caller-chosen id is kept for correlation only when it cannot smuggle anything into logs.
_SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, *, audit: AuditLog, metrics: Metrics) -> None:
        self.app = app
        self.audit = audit
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        extra = [*SECURITY_HEADERS, (b"x-request-id", request_id.encode())]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
                if message["status"] >= 400 and not state.get("audited"):
                    principal = principal_from_scope(scope)
                    self.audit.record(
                        "request_rejected",
                        status=message["status"],
                        method=scope["method"],
                        path=scope["path"],
                        principal=principal.id if principal else None,
                        client_ip=client_ip(scope),
                        http_request_id=request_id,
                    )
                if message["status"] >= 400:
                    self.metrics.requests_rejected.labels(status=str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _request_id(scope: Scope) -> str:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"x-request-id" and _SAFE_REQUEST_ID.fullmatch(value):
            return value.decode()
    return secrets.token_hex(8)
