"""Certificates rotated on disk (as cert-manager does) are used without a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import (
    RunningServer,
    eventually,
    make_pki,
    reloads,
    replace_atomically,
    rotate_server_certificate,
    served_certificate,
    start_server,
    stop_server,
)


@pytest.fixture
def rotating(tmp_path: Path) -> Iterator[RunningServer]:
    pki = make_pki(tmp_path / "pki")
    running = start_server(pki, tmp_path / "server.log", tls_reload_interval_seconds="0.1")
    yield running
    stop_server(running)


def test_rotated_server_certificate_is_served_to_new_connections(rotating: RunningServer) -> None:
    reader = rotating.credentials("reader")[0]
    before = served_certificate(rotating, reader)
    assert before is not None
    fresh = rotate_server_certificate(rotating.pki)

    def serves_fresh() -> bool:
        served = served_certificate(rotating, reader)
        return served is not None and served.serial_number == fresh.cert.serial_number

    assert eventually(serves_fresh)
    assert before.serial_number != fresh.cert.serial_number
    assert reloads(rotating) >= 1


def test_broken_rotation_keeps_the_previous_certificate(rotating: RunningServer) -> None:
    reader = rotating.credentials("reader")[0]
    before = served_certificate(rotating, reader)
    assert before is not None
    replace_atomically(rotating.pki.directory / "server.pem", b"-----BEGIN CERTIFICATE-----\ngarbage\n")

    assert eventually(lambda: "tls reload failed" in rotating.log_file.read_text())
    after = served_certificate(rotating, reader)
    assert after is not None
    assert after.serial_number == before.serial_number
    assert rotating.process.poll() is None
