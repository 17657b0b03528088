"""The standalone topology: one MCP server, this project's tools (server.py) behind the
security layers."""

from __future__ import annotations

from collections.abc import Sequence

from mcp.server.mcpserver import MCPServer

from .lifecycle import Part
from .security.audit import AuditLog
from .security.policy import Policy
from .security.tls import TLSFiles
from .server import build_server
from .service import Service, assemble
from .settings import Settings


def build(settings: Settings) -> Service:
    """The server and its app, checked and bound, ready to serve."""

    def parts(policy: Policy, audit: AuditLog) -> tuple[MCPServer, Sequence[Part]]:
        return build_server(), settings.bearer_tokens(policy, audit)

    files = TLSFiles(settings.tls_cert_file, settings.tls_key_file, settings.client_ca())
    return assemble(settings, files, parts)
