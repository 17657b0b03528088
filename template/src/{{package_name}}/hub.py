"""The hub of the hub-and-spoke topology: the one MCP endpoint clients call, in front of one
spoke server per security zone (docs/hub-and-spoke.md).

Clients see each spoke's tools as ``<zone>.<tool>``; the hub's policy (``config/policy.toml``)
decides which caller may use which zone's tools, before anything is sent to a spoke. The hub
calls a spoke as itself, with a timeout, concurrency limit and circuit breaker per spoke
(``upstream.py``, shared with the federated architecture).

``python -m <package>`` serves as the hub (``ROLE=hub``, what clients call) or as one zone's
spoke (``ROLE=spoke``).
"""

from __future__ import annotations

from collections.abc import Sequence

from mcp.server.mcpserver import MCPServer

from . import __version__
from .lifecycle import Part
from .security.audit import AuditLog
from .security.policy import Policy
from .security.tls import TLSFiles
from .server import INSTRUCTIONS, NAME, TITLE, build_server
from .service import Service, assemble
from .settings import Settings
from .upstream import SEPARATOR, Relaying, RelayServer, link, upstream_tls


class HubServer(RelayServer):
    """The hub: its own tools (server.py) plus every zone's spoke's, as ``<zone>.<tool>``."""


def build_hub(settings: Settings) -> HubServer:
    """The hub with a link per spoke of ``settings.spoke_urls``; tool lists come with ``refresh``."""
    tls = upstream_tls(settings.tls_cert_file, settings.tls_key_file, settings.spoke_ca_file)
    spokes = link(
        settings.spoke_urls,
        "zone",
        timeout=settings.spoke_timeout_seconds,
        concurrency=settings.spoke_max_concurrent_calls,
        failures=settings.spoke_failure_threshold,
        retry=settings.spoke_retry_seconds,
        tls=dict.fromkeys(settings.spoke_urls, tls),
    )
    hub = HubServer(
        spokes,
        name=f"{NAME}-hub",
        title=f"{TITLE} (hub)",
        version=__version__,
        instructions=f"{INSTRUCTIONS}. Zone tools are <zone>{SEPARATOR}<tool>: {', '.join(settings.spoke_urls)}.",
    )
    build_server(hub)
    return hub


def build(settings: Settings) -> Service:
    """The hub, or one zone's spoke, and its app, checked and bound, ready to serve."""

    def parts(policy: Policy, audit: AuditLog) -> tuple[MCPServer, Sequence[Part]]:
        # A spoke answers only the hub: a client certificate always, no bearer tokens, its own tools.
        if settings.role == "spoke":
            return build_server(), []
        hub = build_hub(settings)
        relaying = Relaying(hub, settings.spoke_refresh_seconds, settings.tls_cert_file, settings.tls_key_file)
        return hub, [*settings.bearer_tokens(policy, audit), relaying]

    files = TLSFiles(settings.tls_cert_file, settings.tls_key_file, settings.client_ca())
    return assemble(settings, files, parts)
