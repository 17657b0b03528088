"""The HTTP edge: a request id and security headers on every response, a count
(``mcp_requests_refused_total{reason}``) of every request refused with a 4xx status, and an
audit event for every request refused before it reached a tool (bad Host/Origin, oversize
body, malformed JSON-RPC, rate limit) that no inner layer audited itself.

Before anything else it answers 429 to an address that has spent its budget of refused
requests (``security.floods``), so a flood of forged tokens or malformed messages costs one
lookup per request. The answers every MCP client gets in normal operation
(``floods.PROTOCOL_ANSWERS``) spend none; 405 for ``GET /mcp`` and 404 under ``/.well-known/``
are counted but not audited, as they refuse nothing.

It refuses first, with 400, a request that repeats a header whose meaning depends on which
copy a reader takes (``Authorization``, ``Host``, ...): a proxy reading the last copy and this
server the first would disagree about who is calling or where. With mutual TLS it refuses,
with 403, a client certificate without the clientAuth extended key usage (``security.identity``
marks it at the handshake).

A refusal that ends the exchange (400, 401, 403, 413, 429) carries ``Connection: close``: the
client sends no more requests on that connection (one answered before its whole body is closed
then, and a client that was not told would reuse it and fail), and ``security.connections``
drops it if the client keeps sending."""

from __future__ import annotations

import math
import re
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..observability import Metrics
from .audit import AuditLog
from .floods import NO_METADATA, PROTOCOL_ANSWERS, STREAM_NOT_OFFERED, WELL_KNOWN, RefusalBudget
from .identity import certificate_refusal, client_ip, principal_from_scope
from .ratelimit import too_many_requests

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
TOO_MANY_REFUSALS = "too_many_refusals"
# Refusals that spend no budget of the address: the budget's own 429, and the protocol's answers.
_FREE = PROTOCOL_ANSWERS | {TOO_MANY_REFUSALS}
# Protocol answers that refuse nothing a client wanted: counted, not audited.
_UNAUDITED = frozenset({STREAM_NOT_OFFERED, NO_METADATA})
# Refusals that end the exchange: the connection closes after the answer (security.connections
# drops it if the client keeps sending), so a refused client cannot keep it for more requests
# or for the rest of a body it was not asked for.
ENDS_EXCHANGE = frozenset({400, 401, 403, 413, 429})
CONNECTION_CLOSE = (b"connection", b"close")
# A caller-chosen id is kept for correlation only when it cannot smuggle anything into logs.
_SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, *, audit: AuditLog, metrics: Metrics, refusal_budget: RefusalBudget) -> None:
        self.app = app
        self.audit = audit
        self.metrics = metrics
        self.budget = refusal_budget

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
                message["headers"] = headers = [*message.get("headers", ()), *extra]
                status = message["status"]
                if status >= 400:
                    self._refused(scope, state, status)
                    if status in ENDS_EXCHANGE:
                        headers.append(CONNECTION_CLOSE)
            await send(message)

        wait = self.budget.retry_after(client_ip(scope))
        if wait:
            retry_after = max(1, math.ceil(wait))
            self.audit.refused(
                scope,
                "rate_limited",
                TOO_MANY_REFUSALS,
                reason=TOO_MANY_REFUSALS,
                principal=None,
                client_ip=client_ip(scope),
                http_request_id=request_id,
                retry_after_seconds=retry_after,
            )
            text = f"Too many refused requests from this address; retry after {retry_after} s"
            await too_many_requests(send_with_headers, retry_after, text)
            return
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

    def _refused(self, scope: Scope, state: dict[str, object], status: int) -> None:
        """Count, audit unless an inner layer did, and charge the address's budget."""
        self.metrics.requests_rejected.labels(status=str(status)).inc()
        if status >= 500:  # our failure, not a refusal: a line each, as always
            if not state.get("audited"):
                self.audit.record("request_rejected", status=status, **_request_fields(scope, state))
            return
        rejection = state.get("rejection")
        if rejection is None and status == 404 and scope["path"].startswith(WELL_KNOWN):
            rejection = state["rejection"] = NO_METADATA
        if not state.get("audited") and rejection not in _UNAUDITED:
            self.audit.refused(
                scope,
                "request_rejected",
                rejection if isinstance(rejection, str) else f"http_{status}",
                status=status,
                **_request_fields(scope, state),
            )
            rejection = state["rejection"]
        self.metrics.record_refusal(rejection if isinstance(rejection, str) else f"http_{status}")
        if rejection not in _FREE:
            self.budget.spend(client_ip(scope))


def _request_fields(scope: Scope, state: dict[str, object]) -> dict[str, object]:
    principal = principal_from_scope(scope)
    rejection = state.get("rejection")
    return {
        "method": scope["method"],
        "path": scope["path"],
        "principal": principal.id if principal else None,
        "client_ip": client_ip(scope),
        "http_request_id": state.get("request_id"),
        **({"reason": rejection} if rejection else {}),
    }


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
