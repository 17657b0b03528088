"""ASGI assembly: the security layers around the SDK's Streamable HTTP app.

Request path, outermost first:
  TLS 1.3 handshake with client certificate (security.tls, before any byte of HTTP)
  -> SecurityHeadersMiddleware  request id, security headers, audit of refused requests
  -> RateLimitMiddleware        per-principal budget, 429 + Retry-After
  -> StatelessStreamGate        GET /mcp answered 405 instead of an idle event stream
  -> SDK Streamable HTTP app    Host/Origin allow-lists, body size limit (413), JSON-RPC
  -> ToolGuard (SDK middleware) per-tool policy, tools/list filtering, tool-call audit
  -> your tool (server.py)
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .observability import Metrics
from .security.audit import AuditLog
from .security.headers import SecurityHeadersMiddleware
from .security.policy import Policy
from .security.ratelimit import RateLimitMiddleware
from .security.tool_guard import ToolGuard
from .settings import Settings

MCP_PATH = "/mcp"


def mcp_http_app(server: MCPServer, settings: Settings) -> ASGIApp:
    """The SDK app: stateless Streamable HTTP with JSON responses, so replicas scale out."""
    return server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=True,
        json_response=True,
        max_request_body_size=settings.max_request_body_bytes,
        transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=settings.allowed_hosts,
            allowed_origins=settings.allowed_origins,
        ),
        host=settings.host,
    )


class StatelessStreamGate:
    """A stateless server never pushes messages, so ``GET /mcp`` would only hold an idle
    event stream (and a connection) open: answer 405, as Streamable HTTP allows."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == MCP_PATH:
            response = PlainTextResponse("Method Not Allowed", status_code=405, headers={"allow": "POST"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(settings: Settings, server: MCPServer, policy: Policy, audit: AuditLog, metrics: Metrics) -> ASGIApp:
    server.middleware.append(ToolGuard(server, policy, audit, metrics))
    app: ASGIApp = StatelessStreamGate(mcp_http_app(server, settings))
    app = RateLimitMiddleware(
        app,
        per_minute=settings.rate_limit_per_minute,
        storage_uri=settings.rate_limit_storage_uri,
        audit=audit,
    )
    return SecurityHeadersMiddleware(app, audit=audit, metrics=metrics)
