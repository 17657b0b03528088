"""Assembling and serving, the same for every topology: the MCP port over TLS 1.3 and the
operations port. ``standalone.py``, ``hub.py`` or ``peer.py`` says what is served, and
``Part``s (``lifecycle.py``) what each feature adds.

Everything that can fail because of configuration (certificates, policy, binding the ports)
happens in ``assemble``, before serving, and raises a ``ConfigError``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp
from uvicorn.config import STARTUP_FAILURE

from .app import create_app
from .errors import ConfigError
from .lifecycle import Part
from .observability import Metrics, ops_app
from .security.audit import AuditLog
from .security.connections import ConnectionBounds
from .security.identity import TLSIdentityProtocol
from .security.policy import CERTIFICATE, Policy
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
    audit: AuditLog
    mcp_socket: socket.socket
    ops_socket: socket.socket
    parts: Sequence[Part]


def assemble(settings: Settings, files: TLSFiles, build: Build) -> Service:
    tls = ReloadingTLS(files)
    policy = Policy.load(settings.policy_file)
    metrics, audit = Metrics(), AuditLog()
    server, parts = build(policy, audit)
    certificates = {CERTIFICATE} if files.verify_files else set()
    policy.check_callers(certificates.union(*(part.caller_names for part in parts)))
    app = create_app(settings, server, policy, audit, metrics, parts)
    mcp_socket = bind(settings.host, settings.port, "HOST", "PORT")
    ops_socket = bind(settings.ops_host, settings.ops_port, "OPS_HOST", "OPS_PORT")
    return Service(settings, tls, policy, server, app, metrics, audit, mcp_socket, ops_socket, parts)


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

    bounds = ConnectionBounds(
        head_timeout=settings.request_head_timeout_seconds,
        max_head_bytes=settings.max_request_head_bytes,
        max_per_address=settings.max_connections_per_address,
        metrics=metrics,
        audit=service.audit,
    )
    # No limit_concurrency: uvicorn's counts idle and unauthenticated connections too, so they
    # could keep every caller out; app.create_app caps authenticated requests instead.
    mcp_server = BoundedServer(
        _config(
            service.app,
            settings.host,
            settings.port,
            # Without client certificates of its own (oauth), a server still checks a peer's.
            http=TLSIdentityProtocol.configured(
                require_client_auth_usage=getattr(settings, "tls_client_require_client_auth_eku", True),
                bounds=bounds,
            ),
            ssl_context_factory=lambda _config, _default: tls.listener,
        ),
        tls_handshake_timeout=settings.tls_handshake_timeout_seconds,
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


class BoundedServer(uvicorn.Server):
    """uvicorn's server on pre-bound sockets, with a bound on the TLS handshake and on the TLS
    shutdown: uvicorn passes neither to ``create_server``, and asyncio's defaults (60 s, 30 s)
    let a peer that sends nothing hold a connection that long."""

    def __init__(self, config: uvicorn.Config, *, tls_handshake_timeout: float) -> None:
        super().__init__(config)
        self.tls_handshake_timeout = tls_handshake_timeout

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if sockets is None:
            raise ValueError("BoundedServer serves pre-bound sockets only (service.bind)")
        # What uvicorn's Server.startup does for sockets, plus the two timeouts.
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=_loop
            )
            return protocol

        loop = asyncio.get_running_loop()
        self.servers = [
            await loop.create_server(
                create_protocol,
                sock=sock,
                ssl=config.ssl,
                backlog=config.backlog,
                ssl_handshake_timeout=self.tls_handshake_timeout if config.ssl else None,
                ssl_shutdown_timeout=self.tls_handshake_timeout if config.ssl else None,
            )
            for sock in sockets
        ]
        self.started = True


def _config(app: ASGIApp, host: str, port: int, **options: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # our JSON logging (observability.configure_logging) applies
        access_log=False,  # the audit log records every tool call and every refusal
        server_header=False,
        # uvicorn's default trusts X-Forwarded-For from 127.0.0.1, which is where a mesh sidecar
        # connects from: a caller could then choose the address its budget and audit lines see.
        proxy_headers=False,
        timeout_graceful_shutdown=10,
        **options,
    )
