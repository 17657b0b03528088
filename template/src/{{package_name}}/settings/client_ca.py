"""The CA bundle of client certificates: for mutual TLS, and for a zone's spoke, which asks the
hub for its certificate whatever auth_mode is."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from pydantic import ValidationInfo, field_validator
from pydantic_settings import BaseSettings

from .base import CLIENT_CERTIFICATES, readable_file


class ClientCASettings(BaseSettings):
    HINTS: ClassVar[dict[str, str]] = {
        "tls_client_ca_file": "point it at the CA bundle that signs client certificates (PEM)",
    }

    tls_client_ca_file: Path = Path(".dev-pki/ca.pem")
    # A client certificate must name clientAuth in its extended key usage: a server certificate
    # from the same CA (or one without any EKU) cannot stand in for a client's.
    tls_client_require_client_auth_eku: bool = True

    @field_validator("tls_client_ca_file")
    @classmethod
    def _client_ca_readable(cls, value: Path, info: ValidationInfo) -> Path:
        """Checked only where used (a hub without mutual TLS asks no client for a certificate)."""
        return readable_file(value) if cls.asks_for_certificates(info.data) else value

    @classmethod
    def asks_for_certificates(cls, data: Mapping[str, object]) -> bool:
        """Whether this server asks its clients for certificates, given the settings before this one."""
        return CLIENT_CERTIFICATES

    def client_ca(self) -> Path | None:
        """The CA bundle client certificates must chain to; None: clients present none."""
        return self.tls_client_ca_file if self.asks_for_certificates(dict(self)) else None

    def client_auth_usage_required(self) -> bool:
        return self.tls_client_require_client_auth_eku
