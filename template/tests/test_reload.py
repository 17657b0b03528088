"""Certificates rotated on disk (as cert-manager does) are used without a restart."""

from __future__ import annotations

import os
import shutil
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest
from cryptography import x509

from conftest import PKI, RunningServer, make_pki, start_server, stop_server
from dev_pki import CLIENTS, SERVER_DNS, SERVER_ID, Issued, issue, new_ca
from mcp_client import client_tls


@pytest.fixture
def rotating(tmp_path: Path) -> Iterator[RunningServer]:
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


def replace_atomically(path: Path, data: bytes) -> None:
    """Swap the file in one step, as a Kubernetes Secret volume does."""
    staged = path.with_suffix(".staged")
    staged.write_bytes(data)
    os.replace(staged, path)


def served_certificate(server: RunningServer, context: ssl.SSLContext) -> x509.Certificate | None:
    """The certificate the server presents to a new connection, None if the handshake fails."""
    probe = server.probe(context)
    if probe is None or probe.server_certificate is None:
        return None
    return x509.load_der_x509_certificate(probe.server_certificate)


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def reloads(server: RunningServer) -> float:
    for line in httpx2.get(f"{server.ops_url}/metrics").text.splitlines():
        if line.startswith("mcp_tls_reloads_total "):
            return float(line.split()[1])
    raise AssertionError("mcp_tls_reloads_total not exported")


def rotate_server_certificate(pki: PKI) -> Issued:
    fresh = issue(pki.ca, "server", uris=(SERVER_ID,), dns=SERVER_DNS, ips=("127.0.0.1",), client=False)
    replace_atomically(pki.directory / "server-key.pem", fresh.key_pem())
    replace_atomically(pki.directory / "server.pem", fresh.cert_pem())
    return fresh


def test_rotated_server_certificate_is_served_to_new_connections(rotating: RunningServer) -> None:
    reader = rotating.pki.client("reader")
    before = served_certificate(rotating, reader)
    assert before is not None
    fresh = rotate_server_certificate(rotating.pki)

    def serves_fresh() -> bool:
        served = served_certificate(rotating, reader)
        return served is not None and served.serial_number == fresh.cert.serial_number

    assert eventually(serves_fresh)
    assert before.serial_number != fresh.cert.serial_number
    assert reloads(rotating) >= 1


def test_rotated_client_ca_takes_effect_without_restart(rotating: RunningServer, tmp_path: Path) -> None:
    pki = rotating.pki
    new_authority = new_ca("rotated client CA")
    new_client = issue(new_authority, "reader", uris=(CLIENTS["reader"],), client=True)
    (tmp_path / "new-client.pem").write_bytes(new_client.cert_pem())
    (tmp_path / "new-client-key.pem").write_bytes(new_client.key_pem())
    new_context = client_tls(pki.ca_file, tmp_path / "new-client.pem", tmp_path / "new-client-key.pem")
    assert served_certificate(rotating, new_context) is None

    replace_atomically(pki.directory / "client-ca.pem", new_authority.cert_pem())

    assert eventually(lambda: served_certificate(rotating, new_context) is not None)
    assert served_certificate(rotating, pki.client("reader")) is None, "the old CA must no longer be trusted"


def test_broken_rotation_keeps_the_previous_certificate(rotating: RunningServer) -> None:
    reader = rotating.pki.client("reader")
    before = served_certificate(rotating, reader)
    assert before is not None
    replace_atomically(rotating.pki.directory / "server.pem", b"-----BEGIN CERTIFICATE-----\ngarbage\n")

    assert eventually(lambda: "tls reload failed" in rotating.log_file.read_text())
    after = served_certificate(rotating, reader)
    assert after is not None
    assert after.serial_number == before.serial_number
    assert rotating.process.poll() is None
