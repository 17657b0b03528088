"""Metrics, JSON logs, and the plain-HTTP operations port (``/healthz``, ``/readyz``, ``/metrics``).

The operations port is separate from the mTLS port so that kubelet probes and Prometheus
need no client certificate; keep it unreachable from outside the cluster (NetworkPolicy).
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Every metric in this server's own registry (the process's default one stays empty).
        counter = functools.partial(Counter, registry=self.registry)
        gauge = functools.partial(Gauge, registry=self.registry)
        histogram = functools.partial(Histogram, registry=self.registry)
        self.tool_calls = counter(
            "mcp_tool_calls", "Tool calls by tool, authorization decision and outcome.", ["tool", "decision", "outcome"]
        )
        self.tool_latency = histogram(
            "mcp_tool_call_duration_seconds",
            "Time spent in permitted tool calls.",
            ["tool"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.tls_certificate_expiry = gauge(
            "mcp_tls_certificate_expiry_timestamp_seconds", "When the server certificate in use expires (Unix time)."
        )
        self.requests_rejected = counter(
            "mcp_http_requests_rejected",
            "Requests answered with an HTTP error status (4xx, 5xx), by status.",
            ["status"],
        )
        self.requests_refused = counter(
            "mcp_requests_refused",
            "Requests refused with a 4xx status, by reason (each one, also when its audit line is aggregated).",
            ["reason"],
        )
        self.jsonrpc_refused = counter(
            "mcp_jsonrpc_refused", "JSON-RPC messages and requests refused before a handler ran, by reason.", ["reason"]
        )
        self.connections_refused = counter(
            "mcp_connections_refused",
            "Connections on the MCP port closed before a request was complete, by reason.",
            ["reason"],
        )
        self.accept_failures = counter(
            "mcp_accept_failures",
            "Failed accepts on the MCP port, by error (EMFILE: out of descriptors); accepting resumes shortly.",
            ["error"],
        )
        self.connections_open = gauge(
            "mcp_connections_open",
            "Connections on the MCP port, counted from accept (TLS handshakes in progress included).",
        )
        self.tls_handshakes_in_progress = gauge(
            "mcp_tls_handshakes_in_progress",
            "Connections on the MCP port accepted but not through TLS yet (or their PROXY header).",
        )
        self.requests_shed = counter(
            "mcp_requests_shed", "Authenticated requests answered 503 because MAX_CONCURRENT_REQUESTS were in progress."
        )
        self.requests_in_progress = gauge(
            "mcp_requests_in_progress", "Authenticated requests in progress (those MAX_CONCURRENT_REQUESTS caps)."
        )
        self.tls_reloads = counter("mcp_tls_reloads", "Certificate reloads after rotation on disk.")
        # labels() costs more than the update itself: keep each child (labels are bounded).
        self._call_counters: dict[tuple[str, str, str], Counter] = {}
        self._call_timers: dict[str, Histogram] = {}
        self._refusal_counters: dict[str, Counter] = {}

    def record_refusal(self, reason: str) -> None:
        """Count a refused request; ``reason`` is one of a fixed set this server names (or ``http_<status>``)."""
        counter = self._refusal_counters.get(reason)
        if counter is None:
            counter = self._refusal_counters[reason] = self.requests_refused.labels(reason=reason)
        counter.inc()

    def record_jsonrpc_refusal(self, reason: str) -> None:
        """Count a refused message; ``reason`` is one of a fixed set this server names."""
        self.jsonrpc_refused.labels(reason=reason).inc()

    def record_connection_refusal(self, reason: str) -> None:
        """Count a refused connection; ``reason`` is one of a fixed set (``security.connections``)."""
        self.connections_refused.labels(reason=reason).inc()

    def record_tool_call(self, tool: str, decision: str, outcome: str, seconds: float | None = None) -> None:
        """Count a tool call, and time it when it ran."""
        key = (tool, decision, outcome)
        counter = self._call_counters.get(key)
        if counter is None:
            counter = self._call_counters[key] = self.tool_calls.labels(tool=tool, decision=decision, outcome=outcome)
        counter.inc()
        if seconds is not None:
            timer = self._call_timers.get(tool)
            if timer is None:
                timer = self._call_timers[tool] = self.tool_latency.labels(tool=tool)
            timer.observe(seconds)


def ops_app(metrics: Metrics, is_ready: Callable[[], bool]) -> Starlette:
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        ready = is_ready()
        return JSONResponse({"status": "ready" if ready else "not ready"}, status_code=200 if ready else 503)

    async def prometheus(_: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ]
    )


def configure_logging(level: str) -> None:
    """JSON lines on stdout for our logs and for those of uvicorn and the SDK."""
    shared: list[structlog.types.Processor] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    ]
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _drop_color_message,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "mcp"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # The SDK's stateless transport logs every request at INFO, and httpx2 every outgoing one
    # (key fetches, calls to other servers); the audit log already has one line per tool call,
    # and callers log failures themselves, so keep that chatter for DEBUG.
    if logging.getLevelName(level) > logging.DEBUG:
        logging.getLogger("mcp.server.streamable_http").setLevel(logging.WARNING)
        logging.getLogger("httpx2").setLevel(logging.WARNING)


def _drop_color_message(_: object, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    """uvicorn adds an ANSI-coloured copy of each message; JSON logs need only one."""
    event.pop("color_message", None)
    return event
