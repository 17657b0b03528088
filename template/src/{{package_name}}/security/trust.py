"""Explicit trust between federated peers (docs/federated.md).

Each peer has a trust domain and a CA of its own, and calls the others with one SPIFFE
identity (``FEDERATION_PEER_IDS``, the allow-list). The TLS handshake only proves that a
certificate chains to one of the CAs this server trusts; ``PeerTrust`` decides what the
certificate may claim: a certificate issued by peer A's CA (issuer name and signature) must
carry A's trust domain and A's allow-listed identity and nothing else, and a certificate that
claims a peer's trust domain must come from that peer's CA. So a compromised peer cannot mint
another peer's identity, and the organisation's client CA cannot mint any peer's. This peer's
own CA may also issue its own clients' certificates (as in a cluster, deploy/k8s): those are
ordinary clients here, as long as they claim no peer's trust domain; at other peers they are refused.

``PeerGate`` sends a caller proven to be a peer down the peers' path (no bearer token asked:
peers never forward their clients' tokens, they call as themselves; their own rate limit),
refuses a certificate that claims too much with 403 and a ``peer_refused`` audit event, and
leaves every other caller to the clients' path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import ConfigError
from .audit import AuditLog
from .identity import certificate_principal, client_ip

_CACHE_LIMIT = 1024
_CACHE_SECONDS = 3600.0  # verdicts are forgotten this old (rotated certificates), or when full
_UNSEEN = object()


class TrustConfigError(ConfigError):
    """The peers' CAs or identities cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Peer:
    name: str
    id: str
    trust_domain: str
    ca: x509.Certificate


@dataclass(frozen=True)
class Refusal:
    reason: str


def trust_domain(uri: str) -> str | None:
    """The trust domain of a ``spiffe://<trust domain>/...`` URI, None for anything else."""
    parts = urlsplit(uri)
    if parts.scheme != "spiffe" or not parts.hostname or parts.query or parts.fragment or parts.port:
        return None
    return parts.hostname


def load_authorities(ca_files: Mapping[str, Path]) -> dict[str, x509.Certificate]:
    """Each peer's CA certificate; their subjects must differ, or issuer names could not tell
    which peer issued a certificate."""
    authorities: dict[str, x509.Certificate] = {}
    for name, path in ca_files.items():
        try:
            authority = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise TrustConfigError(f"the CA of peer {name} ({path}) is not a PEM certificate: {exc}") from None
        for other, known in authorities.items():
            if known.subject == authority.subject:
                raise TrustConfigError(f"peers {other} and {name} have CAs of the same subject; each needs its own")
        authorities[name] = authority
    return authorities


class PeerTrust:
    """The allow-list and trust bundle of the federation, and the decision for one certificate."""

    def __init__(self, peers: Mapping[str, Peer], own: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.peers = dict(peers)
        self.own = own
        self.clock = clock
        self._by_issuer = {peer.ca.subject: peer for peer in peers.values()}
        self._by_domain = {peer.trust_domain: peer for peer in peers.values()}
        self._verdicts: dict[bytes, object] = {}
        self._forget_at = clock() + _CACHE_SECONDS

    @classmethod
    def load(cls, ids: Mapping[str, str], ca_files: Mapping[str, Path], own: str) -> PeerTrust:
        authorities = load_authorities(ca_files)
        peers = {}
        for name, peer_id in ids.items():
            domain = trust_domain(peer_id)
            if domain is None:
                raise TrustConfigError(f"the identity of peer {name} is not a spiffe:// URI: {peer_id!r}")
            peers[name] = Peer(name, peer_id, domain, authorities[name])
        return cls(peers, own)

    def check(self, der: bytes) -> Peer | Refusal | None:
        """``decide``, remembered per certificate: a connection's requests share one."""
        verdict = self._verdicts.get(der, _UNSEEN)
        if verdict is _UNSEEN:
            if len(self._verdicts) >= _CACHE_LIMIT or self.clock() >= self._forget_at:
                self._verdicts.clear()
                self._forget_at = self.clock() + _CACHE_SECONDS
            verdict = self._verdicts[der] = self.decide(der)
        return verdict  # type: ignore[return-value]

    def decide(self, der: bytes) -> Peer | Refusal | None:
        """The peer this verified client certificate proves, a refusal when it claims more than
        its issuer may grant, or None for a certificate that has nothing to do with the peers."""
        certificate = x509.load_der_x509_certificate(der)
        uris = _uris(certificate)
        claimed = {self._by_domain[d].name for d in map(trust_domain, uris) if d in self._by_domain}
        issuer = self._by_issuer.get(certificate.issuer)
        if issuer is None:
            if claimed:
                return Refusal(f"claims the trust domain of peer {sorted(claimed)[0]} without being issued by its CA")
            return None
        try:
            certificate.verify_directly_issued_by(issuer.ca)
        except (ValueError, TypeError, InvalidSignature):
            return Refusal(f"names the CA of peer {issuer.name} as issuer but is not signed by it")
        if issuer.name == self.own:
            # Our own CA: our own clients, or (claiming a peer's domain) nobody we take calls from.
            return Refusal("this peer's own CA issued a peer identity; a peer never calls itself") if claimed else None
        if claimed != {issuer.name} or any(trust_domain(uri) != issuer.trust_domain for uri in uris):
            return Refusal(f"issued by the CA of peer {issuer.name} for an identity outside its trust domain")
        if issuer.id not in uris:
            return Refusal(f"issued by the CA of peer {issuer.name} for an identity not on the allow-list")
        return issuer


def _uris(certificate: x509.Certificate) -> list[str]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(uri) for uri in names.get_values_for_type(x509.UniformResourceIdentifier)]


def client_certificate(scope: Scope) -> bytes | None:
    """The verified client certificate (DER) the TLS identity protocol attached, if any."""
    tls: dict[str, Any] | None = scope.get("extensions", {}).get("tls")
    der: bytes | None = tls.get("client_cert_der") if tls else None
    return der


class PeerGate:
    """Chooses the path of a request by what its client certificate proves."""

    def __init__(self, clients: ASGIApp, peers: ASGIApp, trust: PeerTrust, audit: AuditLog) -> None:
        self.clients, self.peers, self.trust, self.audit = clients, peers, trust, audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        der = client_certificate(scope) if scope["type"] == "http" else None
        verdict = self.trust.check(der) if der else None
        if verdict is None:
            await self.clients(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if isinstance(verdict, Peer):
            state["peer"] = verdict.name
            state["principal"] = certificate_principal(scope)
            await self.peers(scope, receive, send)
            return
        principal = certificate_principal(scope)
        self.audit.refused(
            scope,
            "peer_refused",
            "peer_refused",
            principal=principal.id if principal else None,
            certificate_sha256=principal.certificate_thumbprint if principal else None,
            reason=verdict.reason,
            client_ip=client_ip(scope),
            http_request_id=state.get("request_id"),
        )
        body = json.dumps({"error": "forbidden", "error_description": f"peer refused: {verdict.reason}"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
