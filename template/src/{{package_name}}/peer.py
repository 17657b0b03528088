"""The federated topology: this server as the peer ``PEER_NAME``, its own tools plus the other
peers' (federation.py), behind the security layers and the peers' own gate."""

from __future__ import annotations

from collections.abc import Sequence

from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp

from .federation import FederationGuard, build_peer, peer_trust
from .lifecycle import Part
from .security.audit import AuditLog
from .security.policy import Policy
from .security.ratelimit import RateLimitMiddleware
from .security.tls import TLSFiles
from .security.trust import PeerGate, PeerTrust
from .service import Service, assemble
from .settings import Settings
from .upstream import Relaying


class Peers(Part):
    """PeerGate outermost but for the headers: peers call as themselves for all their clients,
    with a budget of their own and no bearer token."""

    def __init__(self, settings: Settings, trust: PeerTrust, audit: AuditLog) -> None:
        self.settings, self.trust, self.audit = settings, trust, audit

    def wrap(self, app: ASGIApp, inner: ASGIApp) -> ASGIApp:
        peers = RateLimitMiddleware(
            inner,
            per_minute=self.settings.federation_rate_limit_per_minute,
            storage_uri=self.settings.rate_limit_storage_uri,
            audit=self.audit,
        )
        return PeerGate(app, peers, self.trust, self.audit)


def build(settings: Settings) -> Service:
    """This peer and its app, checked and bound, ready to serve."""
    # The other peers' certificates verify against their own CAs; PeerGate checks what they claim.
    peer_cas = tuple(path for name, path in settings.federation_ca_files.items() if name != settings.peer_name)
    trust = peer_trust(settings)

    def parts(policy: Policy, audit: AuditLog) -> tuple[MCPServer, Sequence[Part]]:
        peer = build_peer(settings)
        peer.middleware.append(FederationGuard(peer, settings.peer_name, settings.federation_hop_limit, audit))
        relaying = Relaying(peer, settings.peer_refresh_seconds, settings.tls_cert_file, settings.tls_key_file)
        return peer, [*settings.bearer_tokens(policy, audit), Peers(settings, trust, audit), relaying]

    files = TLSFiles(settings.tls_cert_file, settings.tls_key_file, settings.client_ca(), peer_cas)
    return assemble(settings, files, parts)
