"""Mutual TLS: only certificates from the trusted client CA get in, and a rotated client CA
bundle takes effect without a restart."""

from __future__ import annotations

import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from conftest import (
    RunningServer,
    eventually,
    make_pki,
    replace_atomically,
    served_certificate,
    start_server,
    stop_server,
)
from dev_pki import CLIENTS, issue, new_ca, write
from mcp_client import client_tls

MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
WHOAMI = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}


@pytest.mark.parametrize("identity", [None, "foreign"], ids=["no-client-cert", "foreign-ca-cert"])
def test_client_without_a_trusted_certificate_is_refused(server: RunningServer, identity: str | None) -> None:
    context = server.pki.anonymous() if identity is None else server.pki.client(identity)
    assert server.probe(context) is None


def not_for_clients(server: RunningServer, directory: Path, *, usage: bool) -> ssl.SSLContext:
    """The reader's identity from the trusted CA on a certificate issued as a server's
    (``usage``: serverAuth only; else no extended key usage at all)."""
    issued = issue(server.pki.ca, "reader", uris=(CLIENTS["reader"],), client=False, usage=usage)
    write(directory, "not-a-client", issued)
    return client_tls(server.pki.ca_file, directory / "not-a-client.pem", directory / "not-a-client-key.pem")


def test_server_auth_only_certificate_is_refused_at_the_handshake(server: RunningServer, tmp_path: Path) -> None:
    """OpenSSL checks a named extended key usage itself."""
    assert server.probe(not_for_clients(server, tmp_path, usage=True)) is None


def test_certificate_without_extended_key_usage_is_refused_and_audited(server: RunningServer, tmp_path: Path) -> None:
    """OpenSSL lets a certificate that names no usage through: the server gets 403 before anything runs."""
    tls = not_for_clients(server, tmp_path, usage=False)
    with httpx2.Client(base_url=f"https://localhost:{server.port}", verify=tls, timeout=10.0) as http:
        response = http.post("/mcp", headers={**MCP_HEADERS, "x-request-id": "no-eku"}, json=WHOAMI)
    assert response.status_code == 403
    (event,) = server.audit_events(event="request_rejected", http_request_id="no-eku")
    assert event["reason"] == "client_certificate_without_client_auth_eku"
    assert event["principal"] is None
    assert not server.audit_events(event="tool_call", http_request_id="no-eku")


def test_without_the_eku_requirement_such_a_certificate_is_a_client(tmp_path: Path) -> None:
    """``TLS_CLIENT_REQUIRE_CLIENT_AUTH_EKU=false`` is the opt-out for a CA whose client
    certificates name no usage: the same certificate is then the reader."""
    pki = make_pki(tmp_path / "pki")
    lenient = start_server(pki, tmp_path / "server.log", tls_client_require_client_auth_eku="false")
    try:
        tls = not_for_clients(lenient, tmp_path, usage=False)
        _, headers = lenient.credentials("reader")  # a token too, where the server asks for one
        with httpx2.Client(
            base_url=f"https://localhost:{lenient.port}", verify=tls, headers=headers, timeout=10.0
        ) as http:
            response = http.post("/mcp", headers={**MCP_HEADERS, "x-request-id": "lenient"}, json=WHOAMI)
        assert response.status_code == 200
        (event,) = lenient.audit_events(event="tool_call", http_request_id="lenient")
        assert event["principal"] == CLIENTS["reader"]
    finally:
        stop_server(lenient)


@pytest.fixture
def rotating_ca(tmp_path: Path) -> Iterator[RunningServer]:
    pki = make_pki(tmp_path / "pki")
    shutil.copy(pki.ca_file, pki.directory / "client-ca.pem")
    running = start_server(
        pki,
        tmp_path / "server.log",
        tls_client_ca_file=str(pki.directory / "client-ca.pem"),
        tls_reload_interval_seconds="0.1",
    )
    yield running
    stop_server(running)


def test_rotated_client_ca_takes_effect_without_restart(rotating_ca: RunningServer, tmp_path: Path) -> None:
    pki = rotating_ca.pki
    new_authority = new_ca("rotated client CA")
    new_client = issue(new_authority, "reader", uris=(CLIENTS["reader"],), client=True)
    (tmp_path / "new-client.pem").write_bytes(new_client.cert_pem())
    (tmp_path / "new-client-key.pem").write_bytes(new_client.key_pem())
    new_context = client_tls(pki.ca_file, tmp_path / "new-client.pem", tmp_path / "new-client-key.pem")
    assert served_certificate(rotating_ca, new_context) is None

    replace_atomically(pki.directory / "client-ca.pem", new_authority.cert_pem())

    assert eventually(lambda: served_certificate(rotating_ca, new_context) is not None)
    assert served_certificate(rotating_ca, pki.client("reader")) is None, "the old CA must no longer be trusted"
