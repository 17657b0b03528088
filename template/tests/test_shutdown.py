"""Stopping: SIGTERM drains without losing a request the server accepted, a second signal
skips the drain, and SIGHUP reloads the certificate without stopping the server."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2

from conftest import (
    RunningServer,
    eventually,
    make_pki,
    reloads,
    rotate_server_certificate,
    served_certificate,
    start_server,
    stop_server,
)

MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
WHOAMI = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
DRAIN_SECONDS, GRACE_SECONDS = 2.0, 3
MARGIN_SECONDS = 5.0  # process start-up of the stop, lifespan shutdown, a busy CI machine
CLIENTS = 8


@dataclass
class Load:
    """What the clients saw while the server stopped."""

    answered: int = 0
    closing: int = 0  # answers with Connection: close
    lost: list[str] = field(default_factory=list)  # failures on a connection the server had accepted
    lock: threading.Lock = field(default_factory=threading.Lock)


def call_until_refused(server: RunningServer, load: Load, deadline: float) -> None:
    """Tool calls over one keep-alive client until the server stops accepting connections."""
    with server.http("reader") as client:
        while time.monotonic() < deadline:
            try:
                response = client.post("/mcp", headers=MCP_HEADERS, json=WHOAMI)
            except httpx2.ConnectError:
                return  # the listener has closed: nothing was sent
            except httpx2.TransportError as exc:
                with load.lock:
                    load.lost.append(repr(exc))
                return
            with load.lock:
                if response.status_code == 200 and "result" in response.json():
                    load.answered += 1
                else:
                    load.lost.append(f"{response.status_code} {response.text[:200]}")
                load.closing += response.headers.get("connection") == "close"


def readiness(server: RunningServer) -> int | None:
    try:
        return httpx2.get(f"{server.ops_url}/readyz", timeout=1.0).status_code
    except httpx2.TransportError:
        return None


def started(server: RunningServer, event: str) -> bool:
    return event in server.log_file.read_text()


def test_sigterm_under_keep_alive_load_loses_no_request(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    server = start_server(
        pki,
        tmp_path / "server.log",
        shutdown_drain_seconds=str(DRAIN_SECONDS),
        shutdown_grace_seconds=str(GRACE_SECONDS),
    )
    load = Load()
    deadline = time.monotonic() + 60
    clients = [threading.Thread(target=call_until_refused, args=(server, load, deadline)) for _ in range(CLIENTS)]
    try:
        for client in clients:
            client.start()
        assert eventually(lambda: load.answered >= 10 * CLIENTS)
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert eventually(lambda: readiness(server) == 503, timeout=DRAIN_SECONDS)
        returncode = server.process.wait(timeout=DRAIN_SECONDS + GRACE_SECONDS + MARGIN_SECONDS)
        stopped_after = time.monotonic() - signalled
        for client in clients:
            client.join(timeout=10)
    finally:
        if server.process.poll() is None:
            server.process.kill()

    assert returncode == 0
    assert stopped_after >= DRAIN_SECONDS  # the listener stayed open for the drain
    assert load.lost == []
    assert load.closing > 0  # answers during the drain told clients not to reuse the connection
    calls = server.audit_events(event="tool_call", tool="whoami")
    assert len(calls) == load.answered  # every call that reached the tool was answered
    log = server.log_file.read_text()
    for step in ("stopping: not ready any more", "listener closed", "stopped"):
        assert step in log
    assert "Traceback" not in log


def test_a_second_sigterm_skips_the_rest_of_the_drain(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    server = start_server(pki, tmp_path / "server.log", shutdown_drain_seconds="120")
    try:
        server.process.send_signal(signal.SIGTERM)
        assert eventually(lambda: started(server, "still serving for the drain"))
        assert readiness(server) == 503
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=15) == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert "drain cut short" in server.log_file.read_text()


def test_sighup_reloads_the_certificate_and_keeps_serving(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    # The periodic check would not come for an hour: only the signal can load the new files.
    server = start_server(pki, tmp_path / "server.log", tls_reload_interval_seconds="3600")
    try:
        reader = server.credentials("reader")[0]
        server.process.send_signal(signal.SIGHUP)  # nothing changed: still serving
        assert eventually(lambda: started(server, "SIGHUP: certificate files checked"))
        fresh = rotate_server_certificate(pki)
        server.process.send_signal(signal.SIGHUP)

        def serves_fresh() -> bool:
            served = served_certificate(server, reader)
            return served is not None and served.serial_number == fresh.cert.serial_number

        assert eventually(serves_fresh, timeout=5.0)
        assert reloads(server) == 1
        assert server.process.poll() is None
        assert readiness(server) == 200
    finally:
        stop_server(server)
    assert server.process.returncode == 0
