"""``python -m <package>``: serve MCP over TLS 1.3 + mTLS, and the operations port.

A bad setting stops start-up with one line that names it and the fix, and exit code 2.
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType
from typing import Any

import anyio
import uvicorn
from starlette.types import ASGIApp

from .app import create_app
from .observability import Metrics, configure_logging, ops_app
from .security.audit import AuditLog
from .security.identity import TLSIdentityProtocol
from .security.policy import Policy, PolicyError
from .security.tls import ReloadingTLS, TLSConfigError, TLSFiles
from .server import build_server
from .settings import ConfigError, Settings, load_settings

log = logging.getLogger(__name__)


async def serve(settings: Settings, tls: ReloadingTLS, policy: Policy) -> None:
    metrics = Metrics()
    server = build_server()
    unmatched = policy.unmatched_patterns(tool.name for tool in await server.list_tools())
    if unmatched:
        log.warning("policy names tools this server does not have", extra={"patterns": unmatched})
    app = create_app(settings, server, policy, AuditLog(), metrics)
    metrics.tls_certificate_expiry.set_function(lambda: tls.expires_at.timestamp())

    mcp_server = uvicorn.Server(
        _config(
            app,
            settings.host,
            settings.port,
            http=TLSIdentityProtocol,
            ssl_context_factory=lambda _config, _default: tls.listener,
        )
    )
    is_ready = lambda: mcp_server.started and not mcp_server.should_exit  # noqa: E731
    ops_server = uvicorn.Server(
        _config(ops_app(metrics, is_ready), settings.ops_host, settings.ops_port, lifespan="off")
    )

    watcher = anyio.CancelScope()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        mcp_server.should_exit = ops_server.should_exit = True

    # uvicorn drains on SIGTERM and then re-raises it to the handler it found; with this one
    # that is a no-op, so a drained server exits 0 (and a SIGTERM during start-up still stops it).
    signal.signal(signal.SIGTERM, stop)

    async def watch_certificates() -> None:
        with watcher:
            while True:
                await anyio.sleep(settings.tls_reload_interval_seconds)
                if tls.reload_if_changed():
                    metrics.tls_reloads.inc()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(watch_certificates)
        tasks.start_soon(ops_server.serve)
        await mcp_server.serve()
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
        settings = load_settings()
        configure_logging(settings.log_level)
        tls = ReloadingTLS(TLSFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file))
        policy = Policy.load(settings.policy_file)
    except (ConfigError, TLSConfigError, PolicyError) as exc:
        print(f"{__package__}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    anyio.run(serve, settings, tls, policy, backend_options={"use_uvloop": True})


if __name__ == "__main__":
    main()
