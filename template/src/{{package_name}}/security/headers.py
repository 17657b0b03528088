"""The HTTP edge: a request id and security headers on every response, and an audit
event for every request refused before it reached a tool (bad Host/Origin, oversize body,
malformed JSON-RPC, rate limit).

It refuses first, with 400, a request that repeats a header whose meaning depends on which
copy a reader takes (``Authorization``, ``Host``, ...): a proxy reading the last copy and this
server the first would disagree about who is calling or where. With mutual TLS it refuses,
with 403, a client certificate without the clientAuth extended key usage (``security.identity``
marks it at the handshake)."""

from __future__ import annotations

import re
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..observability import Metrics
from .audit import AuditLog
from .identity import certificate_refusal, client_ip, principal_from_scope

SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"strict-transport-security", b"max-age=63072000; includeSubDomains"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
# Headers that must appear at most once: each copy could be read differently up or down the path.
SINGLE_HEADERS = frozenset(
    {
        b"authorization",
        b"host",
        b"origin",
        b"content-type",
        b"content-length",
        b"transfer-encoding",
        b"mcp-session-id",
        b"mcp-protocol-version",
        b"x-request-id",
    }
)
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
                        **({"reason": state["rejection"]} if state.get("rejection") else {}),
                    )
                if message["status"] >= 400:
                    self.metrics.requests_rejected.labels(status=str(message["status"])).inc()
            await send(message)

        duplicated = _duplicated(scope)
        if duplicated is not None:
            state["rejection"] = f"duplicate_{duplicated.replace('-', '_')}"
            await _plain(send_with_headers, 400, f"Bad Request: more than one {duplicated} header")
            return
        refusal = certificate_refusal(scope)
        if refusal is not None:
            state["rejection"] = refusal
            await _plain(send_with_headers, 403, "Forbidden: the client certificate is not for client authentication")
            return
        await self.app(scope, receive, send_with_headers)


def _duplicated(scope: Scope) -> str | None:
    """The first security-relevant header the request carries more than once, if any."""
    seen: set[bytes] = set()
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, _ in headers:
        if name in SINGLE_HEADERS:
            if name in seen:
                return name.decode()
            seen.add(name)
    return None


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _request_id(scope: Scope) -> str:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"x-request-id" and _SAFE_REQUEST_ID.fullmatch(value):
            return value.decode()
    return secrets.token_hex(8)
