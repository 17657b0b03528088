"""``python -m <package>``: serve MCP over TLS 1.3 + mTLS, and the operations port.

Everything that can fail because of configuration (settings, certificates, policy, rate-limit
storage, binding the ports) happens before serving, and stops start-up with one line that
names the setting and the fix, and exit code 2.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from dataclasses import dataclass
from types import FrameType
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp

from .app import create_app
from .observability import Metrics, configure_logging, ops_app
from .security.audit import AuditLog
from .security.identity import TLSIdentityProtocol
from .security.policy import Policy, PolicyError
from .security.tls import ReloadingTLS, TLSConfigError, TLSFiles
from .server import build_server
from .settings import ENV_PREFIX, ConfigError, Settings, load_settings

log = logging.getLogger(__name__)


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


def assemble() -> Service:
    settings = load_settings()
    configure_logging(settings.log_level)
    tls = ReloadingTLS(TLSFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file))
    policy = Policy.load(settings.policy_file)
    server, metrics = build_server(), Metrics()
    app = create_app(settings, server, policy, AuditLog(), metrics)
    mcp_socket = bind(settings.host, settings.port, "HOST", "PORT")
    ops_socket = bind(settings.ops_host, settings.ops_port, "OPS_HOST", "OPS_PORT")
    return Service(settings, tls, policy, server, app, metrics, mcp_socket, ops_socket)


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
    settings, tls, metrics = service.settings, service.tls, service.metrics
    unmatched = service.policy.unmatched_patterns(tool.name for tool in await service.server.list_tools())
    if unmatched:
        log.warning("policy names tools this server does not have", extra={"patterns": unmatched})
    metrics.tls_certificate_expiry.set_function(lambda: tls.expires_at.timestamp())

    mcp_server = uvicorn.Server(
        _config(
            service.app,
            settings.host,
            settings.port,
            http=TLSIdentityProtocol,
            ssl_context_factory=lambda _config, _default: tls.listener,
            limit_concurrency=settings.max_concurrent_requests,
        )
    )
    is_ready = lambda: mcp_server.started and not mcp_server.should_exit  # noqa: E731
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
        with watcher:
            while True:
                await anyio.sleep(settings.tls_reload_interval_seconds)
                if tls.reload_if_changed():
                    metrics.tls_reloads.inc()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(watch_certificates)
        tasks.start_soon(lambda: ops_server.serve(sockets=[service.ops_socket]))
        await mcp_server.serve(sockets=[service.mcp_socket])
        ops_server.should_exit = True
        watcher.cancel()


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


def main() -> None:
    try:
        service = assemble()
    except (ConfigError, TLSConfigError, PolicyError) as exc:
        print(f"{__package__}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    anyio.run(serve, service, backend_options={"use_uvloop": True})


if __name__ == "__main__":
    main()
