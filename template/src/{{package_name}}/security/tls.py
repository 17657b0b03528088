"""TLS 1.3-only server context with mutual TLS, reloaded from disk when the files change.

cert-manager rotates certificates by swapping the files of a mounted Secret. The listening
socket keeps one ``SSLContext`` for its lifetime, so that context only hands each new
handshake over to the newest context (its SNI callback runs for every ClientHello, with or
without a server name). Established connections keep the context they started with.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from ..errors import ConfigError

log = logging.getLogger(__name__)


class TLSConfigError(ConfigError):
    """The certificate, key or CA files cannot be used; the message says which and why."""


@dataclass(frozen=True)
class TLSFiles:
    cert: Path
    key: Path
    client_ca: Path | None  # None: clients present no certificate (they authenticate otherwise)
    # Federated peers' own CAs: their certificates verify too (security.trust decides what they
    # may claim); without client_ca a certificate is then optional (clients use tokens).
    peer_cas: tuple[Path, ...] = ()

    def stamp(self) -> tuple[tuple[int, int, int], ...]:
        """What changes when any file is replaced, including by a symlink swap."""
        paths = (self.cert, self.key, *self.verify_files)
        stats = (os.stat(path) for path in paths)
        return tuple((st.st_ino, st.st_size, st.st_mtime_ns) for st in stats)

    @property
    def verify_files(self) -> tuple[Path, ...]:
        return ((self.client_ca,) if self.client_ca else ()) + self.peer_cas


def build_context(files: TLSFiles) -> ssl.SSLContext:
    """A server context that speaks only TLS 1.3 and, given a client CA, requires a client
    certificate from it (or from a peer's CA)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if files.client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_OPTIONAL if files.peer_cas else ssl.CERT_NONE
    # No session tickets: every connection proves its certificate against the current CA.
    context.num_tickets = 0
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(certfile=files.cert, keyfile=files.key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load certificate {files.cert} with key {files.key}: {exc}") from exc
    for ca in files.verify_files:
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(f"cannot load client CA bundle {ca}: {exc}") from exc
    return context


def certificate_expiry(path: Path) -> datetime:
    """When the first certificate in a PEM file expires."""
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


class ReloadingTLS:
    """Owns the listening context and swaps in a fresh context when the files change."""

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self._stamp = files.stamp()
        self._failed_stamp: tuple[tuple[int, int, int], ...] | None = None
        self.current = build_context(files)
        self.listener = build_context(files)
        self.listener.sni_callback = self._hand_over
        self.expires_at = certificate_expiry(files.cert)

    def _hand_over(self, ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        ssl_object.context = self.current

    def reload_if_changed(self) -> bool:
        """Load changed files; on any error keep serving with the previous context. A failure
        is logged once and tried again when the files change next (a rotation may be
        half-written)."""
        try:
            stamp = self.files.stamp()
        except OSError as exc:
            return self._failed((), exc)
        if stamp in (self._stamp, self._failed_stamp):
            return False
        try:
            context = build_context(self.files)
            expires_at = certificate_expiry(self.files.cert)
        except (OSError, ValueError, TLSConfigError) as exc:
            return self._failed(stamp, exc)
        self.current, self._stamp, self.expires_at = context, stamp, expires_at
        log.info("tls certificates reloaded", extra={"expires_at": expires_at.isoformat()})
        return True

    def _failed(self, stamp: tuple[tuple[int, int, int], ...], exc: Exception) -> bool:
        if stamp != self._failed_stamp:
            self._failed_stamp = stamp
            log.error("tls reload failed, keeping the previous certificates: %s", exc)
        return False
