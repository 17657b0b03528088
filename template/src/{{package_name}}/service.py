"""Assembling and serving, the same for every topology: the MCP port over TLS 1.3 and the
operations port. ``standalone.py``, ``hub.py`` or ``peer.py`` says what is served, and
``Part``s (``lifecycle.py``) what each feature adds.

Everything that can fail because of configuration (certificates, policy, binding the ports)
happens in ``assemble``, before serving, and raises a ``ConfigError``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskGroup
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp
from uvicorn.config import STARTUP_FAILURE

from .app import create_app
from .descriptors import connection_capacity
from .errors import ConfigError
from .lifecycle import Part
from .observability import Metrics, ops_app
from .security.audit import AuditLog, RefusalSummaries
from .security.connections import BoundedHttpProtocol, ConnectionBounds
from .security.identity import TLSIdentityProtocol
from .security.listener import Listener, Network
from .security.policy import CERTIFICATE, Policy
from .security.tls import ReloadingTLS, TLSFiles
from .settings import ENV_PREFIX, Settings
from .shutdown import Shutdown

log = logging.getLogger(__name__)

# What a topology serves, given the policy and the audit log: its MCP server and its parts.
Build = Callable[[Policy, AuditLog], tuple[MCPServer, Sequence[Part]]]
# After the listener closed, how long connections accepted just before have to send their request.
LAST_REQUEST_SECONDS = 0.5


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
    max_connections: int  # on the MCP port: the open-file limit less RESERVED_FILE_DESCRIPTORS


def assemble(settings: Settings, files: TLSFiles, build: Build) -> Service:
    tls = ReloadingTLS(files)
    policy = Policy.load(settings.policy_file)
    metrics = Metrics()
    audit = AuditLog(
        refusal_window_seconds=settings.audit_refusal_window_seconds,
        refusal_lines_per_window=settings.audit_refusal_lines_per_window,
    )
    server, built = build(policy, audit)
    parts = [*built, RefusalSummaries(audit.refusals)]
    certificates = {CERTIFICATE} if files.verify_files else set()
    policy.check_callers(certificates.union(*(part.caller_names for part in parts)))
    app = create_app(settings, server, policy, audit, metrics, parts)
    max_connections = connection_capacity(settings.reserved_file_descriptors)
    mcp_socket = bind(settings.host, settings.port, "HOST", "PORT")
    ops_socket = bind(settings.ops_host, settings.ops_port, "OPS_HOST", "OPS_PORT")
    return Service(settings, tls, policy, server, app, metrics, audit, mcp_socket, ops_socket, parts, max_connections)


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
    """Serve until SIGTERM or SIGINT, then drain and stop: exit code 0."""
    await prepare(service)
    await Serving(service).run()
    # Stopping already: a late signal must not turn exit code 0 into death by signal.
    for late in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(late, signal.SIG_IGN)
    log.info("stopped")


async def prepare(service: Service) -> None:
    """What serving needs once: the parts prepared, the policy checked against the tools, and
    start-up's objects out of the collector's reach."""
    for part in service.parts:
        await part.prepare()
    unmatched = service.policy.unmatched_patterns(tool.name for tool in await service.server.list_tools())
    if unmatched:
        log.warning("policy names tools this server does not have", extra={"patterns": unmatched})
    # What start-up built (modules, schemas, the app) lives as long as the process: out of the
    # collector's reach, a full collection under load walks only what requests made, not the
    # ~100,000 objects of start-up (at 32 clients p99 latency halved: the template's benchmarks).
    gc.collect()
    gc.freeze()
    service.metrics.tls_certificate_expiry.set_function(lambda: service.tls.expires_at.timestamp())


def connection_bounds(service: Service) -> ConnectionBounds:
    """The bounds of every connection to the MCP port, with their gauges."""
    settings, metrics = service.settings, service.metrics
    bounds = ConnectionBounds(
        head_timeout=settings.request_head_timeout_seconds,
        body_timeout=settings.request_body_timeout_seconds,
        request_timeout=settings.request_timeout_seconds,
        max_head_bytes=settings.max_request_head_bytes,
        max_per_address=settings.max_connections_per_address,
        max_open=service.max_connections,
        metrics=metrics,
        audit=service.audit,
    )
    metrics.connections_open.set_function(lambda: bounds.open_total)
    metrics.tls_handshakes_in_progress.set_function(lambda: bounds.handshakes)
    return bounds


def mcp_server(service: Service, app: ASGIApp, bounds: ConnectionBounds) -> BoundedServer:
    """The MCP port's server: TLS from ``service.tls``, every connection within ``bounds``."""
    settings = service.settings
    # No limit_concurrency: uvicorn's counts idle and unauthenticated connections too, so they
    # could keep every caller out; app.create_app caps authenticated requests instead.
    config = _config(
        app,
        settings.host,
        settings.port,
        http=TLSIdentityProtocol.configured(
            require_client_auth_usage=settings.client_auth_usage_required(), bounds=bounds
        ),
        ssl_context_factory=lambda _config, _default: service.tls.listener,
        timeout_keep_alive=settings.keep_alive_timeout_seconds,
    )
    server = BoundedServer(
        config,
        bounds=bounds,
        tls_handshake_timeout=settings.tls_handshake_timeout_seconds,
        trusted_proxies=settings.trusted_proxies,
        warning_window=settings.audit_refusal_window_seconds,
    )
    server.config.timeout_graceful_shutdown = settings.shutdown_grace_seconds
    return server


class Serving:
    """One run of the two servers. The shutdown owns the drain, the MCP server its listener,
    the ops server readiness; the signals decide when each stops (uvicorn answers none: it
    would close the listener at once)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.shutdown = Shutdown()
        self.mcp = mcp_server(service, self.shutdown.wrap(service.app), connection_bounds(service))
        settings = service.settings
        self.ops = uvicorn.Server(
            _config(ops_app(service.metrics, self.is_ready), settings.ops_host, settings.ops_port, lifespan="off")
        )
        for server in (self.mcp, self.ops):
            server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]

    def is_ready(self) -> bool:
        """Serving, and ready as far as every part is concerned (with OAuth: holding the issuer's keys)."""
        serving = self.mcp.started and not self.shutdown.draining and not self.mcp.should_exit
        return serving and all(part.ready() for part in self.service.parts)

    async def run(self) -> None:
        parts = self.service.parts
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with anyio.create_task_group() as servers:
                servers.start_soon(lambda: self.ops.serve(sockets=[self.service.ops_socket]))
                async with anyio.create_task_group() as loops:
                    loops.start_soon(self.answer, signals, loops)
                    loops.start_soon(self.watch_certificates)
                    for part in parts:
                        loops.start_soon(part.start)
                        loops.start_soon(part.keep)
                    await self.mcp.serve(sockets=[self.service.mcp_socket])
                    # Every loop ends with serving, a part still starting too (an issuer that
                    # never answers must not keep the process alive).
                    loops.cancel_scope.cancel()
                self.ops.should_exit = True
            for part in parts:
                await part.aclose()

    def reload_certificates(self) -> bool:
        if not self.service.tls.reload_if_changed():
            return False
        self.service.metrics.tls_reloads.inc()
        for part in self.service.parts:
            part.certificates_reloaded()
        return True

    async def watch_certificates(self) -> None:
        while True:
            await anyio.sleep(self.service.settings.tls_reload_interval_seconds)
            self.reload_certificates()

    async def answer(self, signals: AsyncIterator[int], loops: TaskGroup) -> None:
        """SIGHUP: reload now. SIGTERM or SIGINT: drain; a second one cuts the drain short, a
        third stops without waiting for requests in flight."""
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                log.info("SIGHUP: certificate files checked now", extra={"reloaded": self.reload_certificates()})
            elif not self.shutdown.draining:
                self.shutdown.begin()
                loops.start_soon(self.drain, name)
            elif not self.mcp.should_exit:
                self.shutdown.cut_short()
            else:
                log.warning("stopping now, without waiting for requests in flight", extra={"signal": name})
                self.mcp.force_exit = True

    async def drain(self, name: str) -> None:
        settings = self.service.settings
        log.info(
            "stopping: not ready any more, still serving for the drain",
            extra={"signal": name, "drain_seconds": settings.shutdown_drain_seconds},
        )
        if not await self.shutdown.drain(settings.shutdown_drain_seconds):
            log.info("drain cut short by a second signal")
        # Stop accepting first: a connection accepted a moment ago then gets its first request
        # in, which uvicorn answers, where it would close the connection as idle.
        for listener in self.mcp.servers:
            listener.close()
        log.info(
            "listener closed: requests in flight may finish",
            extra={"grace_seconds": settings.shutdown_grace_seconds},
        )
        await anyio.sleep(LAST_REQUEST_SECONDS)
        self.mcp.should_exit = True


class BoundedServer(uvicorn.Server):
    """uvicorn's server on pre-bound sockets, accepting through ``security.listener``: every
    connection counted from accept (per address and in all), the TLS handshake and the TLS
    shutdown bounded (uvicorn passes neither timeout to ``create_server``, and asyncio's
    defaults, 60 s and 30 s, let a peer that sends nothing hold a connection that long), and
    the PROXY protocol read from trusted proxies."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        bounds: ConnectionBounds,
        tls_handshake_timeout: float,
        trusted_proxies: Sequence[Network] = (),
        warning_window: float = 10.0,
    ) -> None:
        super().__init__(config)
        self.bounds, self.tls_handshake_timeout = bounds, tls_handshake_timeout
        self.trusted_proxies, self.warning_window = trusted_proxies, warning_window

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if sockets is None:
            raise ValueError("BoundedServer serves pre-bound sockets only (service.bind)")
        # What uvicorn's Server.startup does for sockets, with our listener for create_server.
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        config = self.config

        def create_protocol() -> BoundedHttpProtocol:
            protocol: BoundedHttpProtocol = config.http_protocol_class(  # type: ignore[call-arg,assignment]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )
            return protocol

        listeners = [
            Listener(
                sock,
                create_protocol,
                self.bounds,
                tls=config.ssl,
                handshake_timeout=self.tls_handshake_timeout,
                trusted_proxies=self.trusted_proxies,
                backlog=config.backlog,
                warning_window=self.warning_window,
            )
            for sock in sockets
        ]
        # uvicorn closes and awaits these as asyncio.Server objects: close() and wait_closed().
        self.servers = listeners  # type: ignore[assignment]
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
