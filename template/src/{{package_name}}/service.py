"""Assembling and serving, the same for every topology: the MCP port over TLS 1.3 and the
operations port. ``standalone.py``, ``hub.py`` or ``peer.py`` says what is served, and
``Part``s (``lifecycle.py``) what each feature adds.

Everything that can fail because of configuration (certificates, policy, binding the ports)
happens in ``assemble``, before serving, and raises a ``ConfigError``.
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp

from .app import create_app
from .errors import ConfigError
from .lifecycle import Part
from .observability import Metrics, ops_app
from .security.audit import AuditLog, RefusalSummaries
from .security.identity import TLSIdentityProtocol
from .security.policy import Policy
from .security.tls import ReloadingTLS, TLSFiles
from .settings import ENV_PREFIX, Settings

log = logging.getLogger(__name__)

# What a topology serves, given the policy and the audit log: its MCP server and its parts.
Build = Callable[[Policy, AuditLog], tuple[MCPServer, Sequence[Part]]]


@dataclass
class Service:
    """What start-up assembled and checked, ready to serve."""

    settings: Settings
    tls: ReloadingTLS
    policy: Policy
    server: MCPServer
    app: ASGIApp
    metrics: Metrics
    mcp_socket: socket.socket
    ops_socket: socket.socket
    parts: Sequence[Part]


def assemble(settings: Settings, files: TLSFiles, build: Build) -> Service:
    tls = ReloadingTLS(files)
    policy = Policy.load(settings.policy_file)
    metrics, audit = Metrics(), AuditLog(refusal_window_seconds=settings.audit_refusal_window_seconds)
    server, built = build(policy, audit)
    parts = [*built, RefusalSummaries(audit.refusals)]
    app = create_app(settings, server, policy, audit, metrics, parts)
    mcp_socket = bind(settings.host, settings.port, "HOST", "PORT")
    ops_socket = bind(settings.ops_host, settings.ops_port, "OPS_HOST", "OPS_PORT")
    return Service(settings, tls, policy, server, app, metrics, mcp_socket, ops_socket, parts)


def bind(host: str, port: int, host_setting: str, port_setting: str) -> socket.socket:
    """Bind here, so that a busy port or a wrong address is a configuration error, not a traceback."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise ConfigError(
            f"{ENV_PREFIX}{host_setting}/{ENV_PREFIX}{port_setting}: cannot listen on {host}:{port}: {exc.strerror} "
            "(use an address of this host and a free port)"
        ) from None
    sock.set_inheritable(True)
    return sock


async def serve(service: Service) -> None:
    settings, tls, metrics, parts = service.settings, service.tls, service.metrics, service.parts
    for part in parts:
        await part.prepare()
    unmatched = service.policy.unmatched_patterns(tool.name for tool in await service.server.list_tools())
    if unmatched:
        log.warning("policy names tools this server does not have", extra={"patterns": unmatched})
    metrics.tls_certificate_expiry.set_function(lambda: tls.expires_at.timestamp())

    mcp_server = uvicorn.Server(
        _config(
            service.app,
            settings.host,
            settings.port,
            # Without client certificates of its own (oauth), a server still checks a peer's.
            http=TLSIdentityProtocol.configured(
                require_client_auth_usage=getattr(settings, "tls_client_require_client_auth_eku", True)
            ),
            ssl_context_factory=lambda _config, _default: tls.listener,
            limit_concurrency=settings.max_concurrent_requests,
        )
    )

    def is_ready() -> bool:
        """Serving, and ready as far as every part is concerned (with OAuth: holding the issuer's keys)."""
        return mcp_server.started and not mcp_server.should_exit and all(part.ready() for part in parts)

    ops_server = uvicorn.Server(
        _config(ops_app(metrics, is_ready), settings.ops_host, settings.ops_port, lifespan="off")
    )

    def stop(_signum: int, _frame: FrameType | None) -> None:
        mcp_server.should_exit = ops_server.should_exit = True

    # uvicorn drains on SIGTERM and then re-raises it to the handler it found; with this one
    # that is a no-op, so a drained server exits 0 (and a SIGTERM during start-up still stops it).
    signal.signal(signal.SIGTERM, stop)

    watcher = anyio.CancelScope()

    async def watch_certificates() -> None:
        while True:
            await anyio.sleep(settings.tls_reload_interval_seconds)
            if tls.reload_if_changed():
                metrics.tls_reloads.inc()
                for part in parts:
                    part.certificates_reloaded()

    async def housekeeping() -> None:
        """The background loops, stopped together when serving ends."""
        with watcher:
            async with anyio.create_task_group() as loops:
                loops.start_soon(watch_certificates)
                for part in parts:
                    loops.start_soon(part.keep)

    async with anyio.create_task_group() as tasks:
        for part in parts:
            tasks.start_soon(part.start)
        tasks.start_soon(housekeeping)
        tasks.start_soon(lambda: ops_server.serve(sockets=[service.ops_socket]))
        await mcp_server.serve(sockets=[service.mcp_socket])
        ops_server.should_exit = True
        watcher.cancel()
    for part in parts:
        await part.aclose()


def _config(app: ASGIApp, host: str, port: int, **options: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # our JSON logging (observability.configure_logging) applies
        access_log=False,  # the audit log records every tool call and every refusal
        server_header=False,
        timeout_graceful_shutdown=10,
        **options,
    )
