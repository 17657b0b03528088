"""Mutual TLS: only certificates from the trusted client CA get in, and a rotated client CA
bundle takes effect without a restart."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

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
from dev_pki import CLIENTS, issue, new_ca
from mcp_client import client_tls


@pytest.mark.parametrize("identity", [None, "foreign"], ids=["no-client-cert", "foreign-ca-cert"])
def test_client_without_a_trusted_certificate_is_refused(server: RunningServer, identity: str | None) -> None:
    context = server.pki.anonymous() if identity is None else server.pki.client(identity)
    assert server.probe(context) is None


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
