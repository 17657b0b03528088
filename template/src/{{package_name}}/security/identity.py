"""The verified client identity from mutual TLS, made available to every request.

No ASGI server puts the peer certificate into the request scope. ``TLSIdentityProtocol``
extends uvicorn's httptools protocol: once per connection, right after the handshake, it
reads the certificate that OpenSSL already verified and attaches it to each request's scope
as the ASGI TLS extension (``scope["extensions"]["tls"]``), plus the parsed principal.
Nothing is parsed per request.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from starlette.types import Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_TLS_VERSIONS = {"TLSv1.3": 0x0304, "TLSv1.2": 0x0303}
_RFC4514_KEYS = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. ``names`` are what policy rules match: URI SANs as they are
    (``spiffe://...``), DNS SANs as ``dns:<name>``, the subject common name as ``cn:<name>``."""

    id: str
    names: tuple[str, ...]
    subject: str
    authenticated_by: str = "mtls"


def principal_from_certificate(cert: dict[str, Any]) -> Principal | None:
    """Build the principal from ``SSLObject.getpeercert()`` of a verified peer."""
    names: list[str] = []
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "URI":
            names.append(value)
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "DNS":
            names.append(f"dns:{value}")
    rdns = [attribute for rdn in cert.get("subject", ()) for attribute in rdn]
    names.extend(f"cn:{value}" for key, value in rdns if key == "commonName")
    if not names:
        return None
    subject = ",".join(f"{_RFC4514_KEYS.get(key, key)}={value}" for key, value in reversed(rdns))
    return Principal(id=names[0], names=tuple(names), subject=subject)


def request_scope(request: object) -> Scope:
    """The ASGI scope of the HTTP request behind an MCP message ({} for in-process calls)."""
    scope: Scope | None = getattr(request, "scope", None)
    return scope if scope is not None else {}


def client_ip(scope: Scope) -> str | None:
    """The peer address of the connection (not a forwarded header: nothing here trusts one)."""
    client = scope.get("client")
    return str(client[0]) if client else None


def principal_from_scope(scope: Scope) -> Principal | None:
    """The principal that ``TLSIdentityProtocol`` attached to this request, if any."""
    tls: dict[str, Any] | None = scope.get("extensions", {}).get("tls")
    return tls.get("principal") if tls else None


class TLSIdentityProtocol(HttpToolsProtocol):
    """uvicorn HTTP protocol that exposes the verified client certificate to the app."""

    _extensions: dict[str, Any]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Small JSON-RPC responses must not wait for Nagle's algorithm.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
        self._extensions = {"tls": _tls_extension(ssl_object)} if ssl_object is not None else {}

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = dict(self._extensions)


def _tls_extension(ssl_object: ssl.SSLObject) -> dict[str, Any]:
    """The ASGI TLS extension, with the parsed ``principal`` added. ``client_cert_chain``
    holds the client's leaf certificate only."""
    der = ssl_object.getpeercert(binary_form=True)
    cert = ssl_object.getpeercert() or {}
    principal = principal_from_certificate(cert)
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": principal.subject if principal else None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
        "principal": principal,
    }
