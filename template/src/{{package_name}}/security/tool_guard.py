"""MCP middleware that enforces the tool policy and audits every tool call.

It runs inside the SDK for every JSON-RPC message, after the transport checks and before
the tool: ``tools/call`` of a tool the caller may not use is refused with the same error as
an unknown tool (no probing for names), and ``tools/list`` shows only permitted tools.
"""

from __future__ import annotations

import time
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult, ListToolsResult

from ..observability import Metrics
from .audit import AuditLog
from .identity import Principal, client_ip, principal_from_scope
from .policy import Policy


def request_principal(ctx: ServerRequestContext[Any, Any]) -> Principal | None:
    """The caller of this JSON-RPC message, as verified by the transport."""
    request = ctx.request
    scope = getattr(request, "scope", None)
    return principal_from_scope(scope) if scope is not None else None


class ToolGuard:
    def __init__(self, server: MCPServer, policy: Policy, audit: AuditLog, metrics: Metrics) -> None:
        self.server = server
        self.policy = policy
        self.audit = audit
        self.metrics = metrics
        self._known_tools: frozenset[str] | None = None

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method == "tools/call":
            return await self._call_tool(ctx, call_next)
        if ctx.method == "tools/list":
            return self._visible_tools(request_principal(ctx), await call_next(ctx))
        return await call_next(ctx)

    async def _call_tool(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        principal = request_principal(ctx)
        tool = str((ctx.params or {}).get("name", ""))
        _mark_audited(ctx)
        event: dict[str, object] = {
            "principal": principal.id if principal else None,
            "authenticated_by": principal.authenticated_by if principal else None,
            "tool": tool,
            "request_id": ctx.request_id,
            "http_request_id": _http_request_id(ctx),
            "client_ip": _client_ip(ctx),
        }
        if not self.policy.allows(principal, tool):
            self.audit.record("tool_call", decision="deny", **event)
            label = await self._metric_label(tool, refresh=False)
            self.metrics.record_tool_call(label, "deny", "denied")
            raise MCPError(INVALID_PARAMS, f"Unknown tool or not permitted: {tool}")
        label = await self._metric_label(tool, refresh=True)
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await call_next(ctx)
            outcome = "error" if _is_error(result) else "ok"
            return result
        finally:
            latency = time.perf_counter() - started
            self.audit.record(
                "tool_call", decision="allow", outcome=outcome, latency_ms=round(latency * 1000, 3), **event
            )
            self.metrics.record_tool_call(label, "allow", outcome, latency)

    def _visible_tools(self, principal: Principal | None, result: HandlerResult) -> HandlerResult:
        if isinstance(result, ListToolsResult):
            allowed = [tool for tool in result.tools if self.policy.allows(principal, tool.name)]
            return result.model_copy(update={"tools": allowed})
        if isinstance(result, dict) and isinstance(result.get("tools"), list):
            allowed = [tool for tool in result["tools"] if self.policy.allows(principal, str(tool.get("name")))]
            return {**result, "tools": allowed}
        return result

    async def _metric_label(self, tool: str, *, refresh: bool) -> str:
        """The tool name for metrics, or ``unknown``: callers cannot mint label values.
        Only permitted callers may make the guard look for newly registered tools."""
        if self._known_tools is None or (refresh and tool not in self._known_tools):
            self._known_tools = frozenset(t.name for t in await self.server.list_tools())
        return tool if tool in self._known_tools else "unknown"


def _is_error(result: HandlerResult) -> bool:
    if isinstance(result, CallToolResult):
        return result.is_error
    return isinstance(result, dict) and bool(result.get("isError"))


def _mark_audited(ctx: ServerRequestContext[Any, Any]) -> None:
    """Tell the HTTP edge that this request already has its audit event."""
    scope = getattr(ctx.request, "scope", None)
    if scope is not None:
        scope.setdefault("state", {})["audited"] = True


def _client_ip(ctx: ServerRequestContext[Any, Any]) -> str | None:
    scope = getattr(ctx.request, "scope", None)
    return client_ip(scope) if scope is not None else None


def _http_request_id(ctx: ServerRequestContext[Any, Any]) -> str | None:
    scope = getattr(ctx.request, "scope", None)
    return scope.get("state", {}).get("request_id") if scope is not None else None
