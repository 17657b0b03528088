"""MCP middleware that enforces the tool policy and audits every tool call.

It runs inside the SDK for every JSON-RPC message, after the transport checks and before
the tool: ``tools/call`` of a tool the caller may not use is refused with the same error as
an unknown tool (no probing for names), and ``tools/list`` shows only permitted tools.
A refused call leaves scopes in the request state, where the OAuth layer (if any) turns the
answer into 403 ``insufficient_scope`` (step-up). The challenge names the scopes the caller
lacks for any rule that matches its names (``Policy.grantable_scopes``), whatever the tool:
naming only the scopes of the tool asked for would tell a real tool (its own scopes) from an
unknown name (no scopes of its own), so every refused name, real or not, gets the very same
answer, and nothing of the name is echoed. A client that steps up asks for more scopes than
the one tool needs; the authorization server still grants only what the user may have. Only a
caller that lacks no scope gets the JSON-RPC error, the same for every name. The audit event
of a denial keeps the scopes that tool needs (``missing_scopes``), for the operator.
A tool's argument validation error reaches the caller as a tool error in our words, not the
SDK's pydantic text.
"""

from __future__ import annotations

import time
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp_types import INVALID_PARAMS, CallToolResult, ListToolsResult, TextContent

from ..observability import Metrics
from .audit import AuditLog, trace_id
from .identity import Principal, client_ip, principal_from_scope, request_scope
from .jsonrpc import RefusedError
from .policy import Policy

# MCP limits tool names to 128 characters; a longer name is logged cut to that.
_TOOL_NAME_LIMIT = 128


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
            return self._visible_tools(principal_from_scope(request_scope(ctx.request)), await call_next(ctx))
        return await call_next(ctx)

    async def _call_tool(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        scope = request_scope(ctx.request)
        principal = principal_from_scope(scope)
        tool = str((ctx.params or {}).get("name", ""))
        state = scope.setdefault("state", {})
        state["audited"] = True  # the HTTP edge need not audit this request again
        state["trace_id"] = trace = trace_id(ctx.params)
        event: dict[str, object] = {
            **(principal.audit_fields() if principal else {"principal": None}),
            "tool": tool[:_TOOL_NAME_LIMIT],
            "request_id": ctx.request_id,
            "http_request_id": state.get("request_id"),
            "trace_id": trace,
            "client_ip": client_ip(scope),
        }
        decision = self.policy.decide(principal, tool)
        if not decision.allowed:
            # Step-up for whatever the caller could be granted: the same for every refused name.
            challenge = self.policy.grantable_scopes(principal)
            if challenge:
                state["insufficient_scope"] = challenge
            if decision.missing_scopes:
                event["missing_scopes"] = list(decision.missing_scopes)
            self.audit.record("tool_call", decision="deny", **event)
            label = await self._metric_label(tool, refresh=False)
            self.metrics.record_tool_call(label, "deny", "denied")
            raise RefusedError(INVALID_PARAMS, "Unknown tool or not permitted")
        label = await self._metric_label(tool, refresh=True)
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await call_next(ctx)
            if _is_error(result):
                return _in_our_words(tool, result)
            outcome = "ok"
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


def _in_our_words(tool: str, result: HandlerResult) -> HandlerResult:
    """A tool error in our words. The SDK reports bad arguments as ``Error executing tool
    <name>: <pydantic's validation text>`` (class names, pydantic version, the input echoed),
    and a crash as ``Error executing tool <name>``: replace both. A tool's own ``ToolError``
    text stays."""
    content = result.content if isinstance(result, CallToolResult) else result.get("content")  # type: ignore[union-attr]
    first = content[0] if isinstance(content, list) and content else None
    text = first.text if isinstance(first, TextContent) else first.get("text") if isinstance(first, dict) else None
    prefix = f"Error executing tool {tool}"
    if not isinstance(text, str) or not text.startswith(prefix):
        return result
    ours = (
        "Invalid arguments: they do not match the tool's input schema"
        if text.startswith(prefix + ":")
        else "The tool failed; the server log has the details"
    )
    return CallToolResult(content=[TextContent(type="text", text=ours)], is_error=True)


def _is_error(result: HandlerResult) -> bool:
    if isinstance(result, CallToolResult):
        return result.is_error
    return isinstance(result, dict) and bool(result.get("isError"))
