"""ASGI assembly: the security layers around the SDK's Streamable HTTP app.

Request path, outermost first (the layers in brackets are those of some answers only):
  TLS 1.3 handshake, with client certificate for mtls (security.tls, before any byte of HTTP),
                                within TLS_HANDSHAKE_TIMEOUT_SECONDS (service.BoundedServer)
  -> BoundedHttpProtocol        head, body and whole-request timeouts (408), head size (431),
                                connections per address (503), the close after every refusal,
                                pipelined requests in order (security.connections)
  -> SecurityHeadersMiddleware  request id, security headers; 429 for an address that spent
                                its budget of refused requests (security.floods; protocol-normal
                                answers spend none), before any
                                check; 400 for a repeated Authorization/Host/... header, 403 for
                                a client certificate without the clientAuth EKU; every 4xx
                                counted and audited (aggregated per source, security.audit);
                                Connection: close on 400, 401, 403, 413, 429
  [-> PeerGate                  federated: a peer's certificate checked against its own CA and
                                the allow-list; peers take their own path (no token, own budget)]
  [-> BearerAuth                oauth: bearer JWT, 401/403 + WWW-Authenticate, RFC 9728 metadata]
  -> RateLimitMiddleware        per-principal budget, 429 + Retry-After
  -> InFlightLimit              authenticated requests in progress, 503 + Retry-After beyond
                                MAX_CONCURRENT_REQUESTS (a peer's own path passes it too)
  -> StatelessStreamGate        GET /mcp answered 405 instead of an idle event stream (counted,
                                neither audited nor charged to the address: every TS SDK connect)
  -> JsonRpcGate                JSON-RPC checked before the SDK: parse error, batch, invalid id,
                                missing method, request without id, params not an object (400)
  -> SDK Streamable HTTP app    Host/Origin allow-lists, body size limit (413), JSON-RPC
  [-> FederationGuard           federated: hop limit and visited peers of relayed calls (federation.py)]
  -> JsonRpcErrors (SDK mw.)    the SDK's errors in our words and codes; unknown methods audited
  -> ToolGuard (SDK middleware) per-tool policy, tools/list filtering, tool-call audit
  -> your tool (server.py)

The bracketed layers come from the parts (``lifecycle.Part``) a topology passes to ``create_app``.
"""

from __future__ import annotations

from collections.abc import Sequence

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .lifecycle import Part
from .observability import Metrics
from .security.audit import AuditLog
from .security.floods import STREAM_NOT_OFFERED, RefusalBudget
from .security.headers import SecurityHeadersMiddleware
from .security.inflight import InFlightLimit
from .security.jsonrpc import JsonRpcErrors, JsonRpcGate
from .security.policy import Policy
from .security.ratelimit import RateLimitMiddleware
from .security.tool_guard import ToolGuard
from .settings import Settings

MCP_PATH = "/mcp"


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """The SDK's Host and Origin allow-lists."""
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=settings.allowed_hosts,
        allowed_origins=settings.allowed_origins,
    )


def mcp_http_app(server: MCPServer, settings: Settings) -> ASGIApp:
    """The SDK app: stateless Streamable HTTP with JSON responses, so replicas scale out."""
    return server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=True,
        json_response=True,
        max_request_body_size=settings.max_request_body_bytes,
        transport_security=transport_security(settings),
        host=settings.host,
    )


class StatelessStreamGate:
    """A stateless server never pushes messages, so ``GET /mcp`` would only hold an idle
    event stream (and a connection) open: answer 405, as Streamable HTTP allows."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == MCP_PATH:
            scope.setdefault("state", {})["rejection"] = STREAM_NOT_OFFERED  # spends no refusal budget
            response = PlainTextResponse("Method Not Allowed", status_code=405, headers={"allow": "POST"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(
    settings: Settings,
    server: MCPServer,
    policy: Policy,
    audit: AuditLog,
    metrics: Metrics,
    parts: Sequence[Part] = (),
) -> ASGIApp:
    """The app; each of ``parts`` wraps the rate-limited app in turn (the first innermost)."""
    server.middleware.append(JsonRpcErrors(server, audit, metrics))
    server.middleware.append(ToolGuard(server, policy, audit, metrics))
    checked = JsonRpcGate(
        mcp_http_app(server, settings),
        path=MCP_PATH,
        max_body=settings.max_request_body_bytes,
        security=transport_security(settings),
        metrics=metrics,
    )
    # Inside the rate limits and every authentication layer: only verified callers take a slot.
    inner: ASGIApp = InFlightLimit(
        StatelessStreamGate(checked), limit=settings.max_concurrent_requests, audit=audit, metrics=metrics
    )
    app: ASGIApp = RateLimitMiddleware(
        inner,
        per_minute=settings.rate_limit_per_minute,
        storage_uri=settings.rate_limit_storage_uri,
        audit=audit,
    )
    for part in parts:
        app = part.wrap(app, inner)
    budget = RefusalBudget(settings.address_refusals_per_minute)
    return SecurityHeadersMiddleware(app, audit=audit, metrics=metrics, refusal_budget=budget)
