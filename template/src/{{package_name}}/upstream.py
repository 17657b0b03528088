"""Relaying to other MCP servers: the hub's link to its spokes, a federated peer's to the others.

An ``Upstream`` is the link to one upstream server. It calls as this server itself: over TLS
1.3 with its own certificate (its SPIFFE identity), never with the caller's credentials, and
passes on only ``_meta`` it builds (a W3C ``traceparent`` whose trace id joins both servers'
audit events, and whatever the relay adds). Each upstream has its own timeout, concurrency
limit and circuit breaker, so a slow or dead upstream fails its own tools with a clear error
while the others keep working. An upstream's 429 is its rate limit speaking, not a failure:
it is passed on and never opens the circuit.

``RelayServer`` shows each upstream's tools as ``<name>.<tool>`` beside its own.

Upstreams are spoken to in stateless Streamable HTTP directly (one POST per request, JSON
answers, checked with the SDK's types) instead of holding an SDK ``Client`` session each: a
client session lives in a task group that a transport error cancels, and a relay needs one
failed call to stay one failed call.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, CallToolResult, InputRequiredResult, ListToolsResult, TextContent, Tool
from pydantic import ValidationError

from .lifecycle import Part
from .security.audit import TRACEPARENT, trace_id_of
from .security.jsonrpc import RefusedError

log = logging.getLogger(__name__)

SEPARATOR = "."
# Upstreams serve this protocol version statelessly: no initialize round trip per call.
REQUEST_HEADERS = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-11-25"}
# How soon the relay asks again for the tools of an upstream that is down or has not answered yet.
DOWN_SPOKE_PROBE_SECONDS = 2.0
# An upstream's tools/list is read page by page up to this many pages.
MAX_TOOL_PAGES = 20


class UpstreamUnavailableError(Exception):
    """The upstream did not answer in time, refused the connection, or its circuit is open."""


class UpstreamBusyError(UpstreamUnavailableError):
    """The upstream answered 429: it is up, this server has spent its budget there."""


@dataclass
class CircuitBreaker:
    """Closed while calls succeed; open for ``cooldown`` seconds after ``threshold`` failures
    in a row (calls fail at once, sparing the upstream and the caller); then half-open: one
    trial call closes it again or reopens it."""

    threshold: int
    cooldown: float
    failures: int = 0
    opened_at: float | None = None
    trial_running: bool = False

    def allow(self, now: float) -> bool:
        if self.opened_at is None:
            return True
        if now - self.opened_at >= self.cooldown and not self.trial_running:
            self.trial_running = True
            return True
        return False

    def retry_in(self, now: float) -> float:
        return 0.0 if self.opened_at is None else max(0.0, self.opened_at + self.cooldown - now)

    def succeeded(self) -> None:
        self.failures, self.opened_at, self.trial_running = 0, None, False

    def failed(self, now: float) -> None:
        self.failures += 1
        if self.trial_running or self.failures >= self.threshold:
            self.opened_at = now
        self.trial_running = False

    def released(self) -> None:
        """A trial call that proved nothing either way (a 429): let the next one try."""
        self.trial_running = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.trial_running else "open"


@dataclass
class Upstream:
    """The link to one upstream server; ``label`` names it in errors ("zone public", "peer beta")."""

    name: str
    label: str
    url: str
    http: httpx2.AsyncClient
    tls: ssl.SSLContext
    timeout: float
    breaker: CircuitBreaker
    slots: anyio.CapacityLimiter
    tools: dict[str, Tool] = field(default_factory=dict)
    # Whether its last request was answered: False from the first failure, not only once the
    # circuit opens, so the relay probes it every DOWN_SPOKE_PROBE_SECONDS at once.
    answered: bool = False
    on_unanswered: Callable[[], None] | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def request(self, method: str, params: Mapping[str, Any], *, probe: bool = False) -> dict[str, Any]:
        """One JSON-RPC request; the upstream's JSON-RPC error comes back as ``MCPError``.
        A ``probe`` (the relay's own tool-list refresh) goes out even while the circuit is open,
        so an upstream that is back closes its circuit within seconds, not after the cooldown."""
        now = time.monotonic()
        if not probe and not self.breaker.allow(now):
            retry = self.breaker.retry_in(now)
            raise UpstreamUnavailableError(f"{self.label} is unavailable; tried again in {retry:.0f} s")
        try:
            message = await self._post(method, params)
        except UpstreamBusyError:
            self.breaker.released()
            raise
        except UpstreamUnavailableError:
            self.breaker.failed(time.monotonic())
            self.answered = False
            if self.on_unanswered is not None:
                self.on_unanswered()
            raise
        self.breaker.succeeded()
        self.answered = True
        error, result = message.get("error"), message.get("result")
        if isinstance(error, dict):
            # The upstream is a server of this project: its errors are already in our words.
            raise RefusedError(code=int(error.get("code", INTERNAL_ERROR)), message=str(error.get("message", "")))
        if not isinstance(result, dict):
            raise UpstreamUnavailableError(f"{self.label} sent a malformed answer")
        return result

    async def _post(self, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """The upstream's JSON-RPC answer; waiting for a free slot counts against the timeout."""
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": dict(params)}
        try:
            with anyio.fail_after(self.timeout):
                async with self.slots:
                    response = await self.http.post(self.url, json=body, headers=REQUEST_HEADERS)
            if response.status_code == 429:
                retry = response.headers.get("retry-after", "?")
                raise UpstreamBusyError(f"{self.label} is rate limiting this server; retry after {retry} s")
            message = response.json() if response.status_code == 200 else None
        except TimeoutError:
            raise UpstreamUnavailableError(f"{self.label} did not answer within {self.timeout:g} s") from None
        except (httpx2.HTTPError, ValueError):
            raise UpstreamUnavailableError(f"{self.label} is unreachable") from None
        if not isinstance(message, dict):
            raise UpstreamUnavailableError(f"{self.label} answered HTTP {response.status_code}, not JSON-RPC")
        return message

    async def refresh_tools(self) -> None:
        """Read the upstream's tool list (all pages). Keeps the last list if it is down."""
        tools: dict[str, Tool] = {}
        cursor: str | None = None
        for _ in range(MAX_TOOL_PAGES):
            answer = await self.request("tools/list", {"cursor": cursor} if cursor else {}, probe=True)
            page = ListToolsResult.model_validate(answer)
            tools.update((tool.name, tool) for tool in page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        self.tools = tools

    async def call_tool(self, name: str, arguments: Mapping[str, Any], meta: Mapping[str, Any]) -> CallToolResult:
        result = await self.request("tools/call", {"name": name, "arguments": dict(arguments), "_meta": dict(meta)})
        try:
            return CallToolResult.model_validate(result)
        except ValidationError:
            raise UpstreamUnavailableError(f"{self.label} sent a malformed tool result") from None


def upstream_tls(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """The relay's client side: TLS 1.3, upstreams verified against ``ca``, this server's own
    certificate presented. ``load_cert_chain`` again on rotation: new connections use it."""
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    return context


def link(
    urls: Mapping[str, str],
    kind: str,
    *,
    timeout: float,
    concurrency: int,
    failures: int,
    retry: float,
    tls: Mapping[str, ssl.SSLContext],
) -> list[Upstream]:
    """One ``Upstream`` per name of ``urls``, each with its own connection pool verified by its
    own ``tls[name]``: a federated peer's server is checked against that peer's CA only, so no
    other peer's CA can stand in for it."""
    return [
        Upstream(
            name,
            f"{kind} {name}",
            url,
            httpx2.AsyncClient(
                verify=tls[name],
                timeout=timeout,
                limits=httpx2.Limits(max_connections=concurrency),
                follow_redirects=False,
            ),
            tls[name],
            timeout=timeout,
            breaker=CircuitBreaker(failures, retry),
            slots=anyio.CapacityLimiter(concurrency),
        )
        for name, url in urls.items()
    ]


class RelayServer(MCPServer):
    """An MCP server whose tools are its own (server.py) plus every upstream's, by name."""

    def __init__(self, upstreams: Sequence[Upstream], **options: Any) -> None:
        super().__init__(**options)
        self.upstreams = {upstream.name: upstream for upstream in upstreams}
        self._woken: anyio.Event | None = None
        for upstream in upstreams:
            upstream.on_unanswered = self._upstream_unanswered

    def _upstream_unanswered(self) -> None:
        """An upstream just failed a request: end ``keep_fresh``'s long wait now."""
        if self._woken is not None:
            self._woken.set()

    def reload_client_certificate(self, cert: Path, key: Path) -> None:
        """After cert-manager rotated this server's certificate: new connections present the new one."""
        for tls in {id(upstream.tls): upstream.tls for upstream in self.upstreams.values()}.values():
            tls.load_cert_chain(cert, key)

    async def keep_fresh(self, interval: float) -> None:
        """Re-read the upstreams' tool lists every ``interval`` seconds (stateless servers cannot
        notify us of a change); every two seconds while one is down or has never answered, from
        the moment one fails a request (a tool call or a refresh), not from the next refresh."""
        while True:
            down = any(not up.answered or up.breaker.state != "closed" for up in self.upstreams.values())
            if down:
                await anyio.sleep(min(interval, DOWN_SPOKE_PROBE_SECONDS))
            else:
                self._woken = anyio.Event()
                with anyio.move_on_after(interval):
                    await self._woken.wait()
                self._woken = None
                if any(not up.answered for up in self.upstreams.values()):
                    await anyio.sleep(min(interval, DOWN_SPOKE_PROBE_SECONDS))
            await self.refresh()

    async def aclose(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.http.aclose()

    def route(self, name: str) -> tuple[Upstream, str] | None:
        """The upstream and its tool name for a relayed ``<name>.<tool>``; None for our own tools."""
        prefix, separator, tool = name.partition(SEPARATOR)
        upstream = self.upstreams.get(prefix) if separator else None
        return (upstream, tool) if upstream is not None and tool else None

    async def list_tools(self) -> list[Tool]:
        tools = await super().list_tools()
        for name, upstream in self.upstreams.items():
            tools += [_renamed(tool, name + SEPARATOR + tool.name) for tool in upstream.tools.values()]
        return tools

    def _tool_input_schema(self, name: str) -> dict[str, Any] | None:
        routed = self.route(name)
        if routed is None:
            return super()._tool_input_schema(name)
        upstream, tool = routed
        known = upstream.tools.get(tool)
        return None if known is None else known.input_schema

    def outgoing_meta(self, context: Context[Any, Any] | None) -> dict[str, Any]:
        """The ``_meta`` of a relayed call: a new span of the caller's trace. Subclasses add to it."""
        return {TRACEPARENT: _traceparent(context)}

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        routed = self.route(name)
        if routed is None:
            return await super().call_tool(name, arguments, context)
        upstream, tool = routed
        try:
            return await upstream.call_tool(tool, arguments, self.outgoing_meta(context))
        except UpstreamUnavailableError as exc:
            return CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)

    async def refresh(self) -> None:
        """Every upstream's tool list, concurrently; one that is down keeps its last list."""

        async def one(upstream: Upstream) -> None:
            try:
                await upstream.refresh_tools()
            except (UpstreamUnavailableError, MCPError, ValidationError) as exc:
                log.warning("upstream tool list not refreshed", extra={"upstream": upstream.label, "reason": str(exc)})

        async with anyio.create_task_group() as tasks:
            for upstream in self.upstreams.values():
                tasks.start_soon(one, upstream)


class Relaying(Part):
    """Serving as a relay: the upstreams' tools read before the first client asks and every
    ``refresh_seconds``, this server's rotated certificate presented to them, their
    connections closed at the end."""

    def __init__(self, relay: RelayServer, refresh_seconds: float, cert: Path, key: Path) -> None:
        self.relay, self.refresh_seconds, self.cert, self.key = relay, refresh_seconds, cert, key

    async def prepare(self) -> None:
        await self.relay.refresh()  # the upstreams' tools, before the first client asks

    async def keep(self) -> None:
        await self.relay.keep_fresh(self.refresh_seconds)

    def certificates_reloaded(self) -> None:
        self.relay.reload_client_certificate(self.cert, self.key)

    async def aclose(self) -> None:
        await self.relay.aclose()


def _renamed(tool: Tool, name: str) -> Tool:
    return tool.model_copy(update={"name": name})


def request_state(context: Context[Any, Any] | None) -> Mapping[str, Any]:
    """The HTTP request state of the call being handled ({} for in-process calls)."""
    if context is None or context.request_context.request is None:
        return {}
    state: Mapping[str, Any] = context.request_context.request.scope.get("state", {})
    return state


def _traceparent(context: Context[Any, Any] | None) -> str:
    """A new span of the caller's trace (ToolGuard put its id in the request state)."""
    trace_id = trace_id_of(request_state(context))
    return f"00-{trace_id or secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
