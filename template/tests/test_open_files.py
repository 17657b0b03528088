"""Start-up raises the soft open-file limit (container runtimes often start processes at 1024)
and says so; a hard limit that is low too is named as a warning, and the server still serves.
Beyond the limit less RESERVED_FILE_DESCRIPTORS new connections are closed at once, and where
the table is full all the same, accepting waits and resumes: a caller already connected is
served throughout (security.listener). Held connections come from 127.0.0.61 and up."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import httpx2
import pytest

from test_ops import metric

from conftest import PACKAGE, PKI, PROJECT, RunningServer, eventually, server_settings, stop_server, wait_ready
from dev_servers import free_port


class Starter(Protocol):
    def __call__(self, soft: int, hard: int, **settings: str) -> RunningServer: ...


def open_file_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no 'Max open files' in /proc limits")


def limited_to(soft: int, hard: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


@pytest.fixture
def started(pki: PKI, tmp_path: Path) -> Iterator[Starter]:
    """Start the server as a container runtime would, under the given open-file limits."""
    running: list[RunningServer] = []

    def start(soft: int, hard: int, **settings: str) -> RunningServer:
        port, ops_port = free_port(), free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(PROJECT / "src"),
            **server_settings(pki, port=str(port), ops_port=str(ops_port), **settings),
        }
        log_file = tmp_path / f"server-{soft}-{hard}.log"
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", PACKAGE],
                cwd=PROJECT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=limited_to(soft, hard),
            )
        running.append(wait_ready(RunningServer(process, port, ops_port, log_file, pki)))
        return running[-1]

    yield start
    for server in running:
        stop_server(server)


def log_events(server: RunningServer) -> list[dict[str, object]]:
    lines = server.log_file.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_a_soft_limit_of_1024_is_raised_to_the_hard_limit(started: Starter) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= 1024 or hard == resource.RLIM_INFINITY:
        pytest.skip(f"this machine's hard open-file limit ({hard}) leaves nothing to raise")
    server = started(1024, hard)
    assert open_file_limits(server.process.pid) == (hard, hard)
    raised = [event for event in log_events(server) if event.get("event") == "open-file limit raised"]
    assert len(raised) == 1
    assert raised[0]["soft_before"] == 1024
    assert raised[0]["soft"] == hard
    with server.http("reader") as client:
        assert client.get("/mcp").status_code == 405  # serving


MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
WHOAMI = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}


def kept_caller(server: RunningServer) -> httpx2.Client:
    """A caller that keeps its one connection open between calls (httpx's default is 5 s)."""
    tls, headers = server.credentials("reader")
    return httpx2.Client(
        base_url=f"https://localhost:{server.port}",
        verify=tls,
        headers=headers,
        timeout=10.0,
        limits=httpx2.Limits(max_connections=1, keepalive_expiry=120),
    )


def hold(server: RunningServer, source: str, count: int) -> list[socket.socket]:
    """Connections that never start TLS (the handshake timeout is raised in these tests)."""
    return [socket.create_connection(("127.0.0.1", server.port), source_address=(source, 0)) for _ in range(count)]


def test_a_low_hard_limit_is_named_and_connections_beyond_the_cap_are_closed(started: Starter) -> None:
    """At a hard limit of 1024 the soft one stays there: warned. With a large reserve the cap is
    small enough to reach here: beyond it new connections are closed, the callers served."""
    cap = 24
    server = started(1024, 1024, reserved_file_descriptors=str(1024 - cap), tls_handshake_timeout_seconds="60")
    assert open_file_limits(server.process.pid) == (1024, 1024)
    low = "open-file limit is low"
    warned = [event for event in log_events(server) if str(event.get("event", "")).startswith(low)]
    assert len(warned) == 1
    assert warned[0]["soft"] == 1024
    assert warned[0]["level"] == "warning"
    held: list[socket.socket] = []
    with kept_caller(server) as caller:
        assert caller.post("/mcp", headers=MCP_HEADERS, json=WHOAMI).status_code == 200
        try:
            held += hold(server, "127.0.0.61", cap - 1)  # the caller's connection is the cap's last
            assert eventually(lambda: metric(server, "mcp_connections_open") == cap)
            held += hold(server, "127.0.0.62", 5)
            assert eventually(lambda: metric(server, "mcp_connections_refused_total", reason="connection_limit") == 5)
            assert metric(server, "mcp_connections_open") == cap
            assert caller.post("/mcp", headers=MCP_HEADERS, json=WHOAMI).status_code == 200
        finally:
            for sock in held:
                sock.close()
        assert eventually(lambda: metric(server, "mcp_connections_open") == 1)
    with server.http("reader") as fresh:
        assert fresh.post("/mcp", headers=MCP_HEADERS, json=WHOAMI).status_code == 200
    full = [event for event in log_events(server) if str(event.get("event")).startswith("connection limit reached")]
    assert full
    assert full[0]["level"] == "warning"
    assert server.audit_events(event="connection_refused", reason="connection_limit", client_ip="127.0.0.62")


def test_out_of_descriptors_accepting_waits_and_callers_are_served(started: Starter) -> None:
    """No reserve: accept() itself fails (EMFILE) once the table is full."""
    limit = 64
    server = started(limit, limit, reserved_file_descriptors="0", tls_handshake_timeout_seconds="60")
    failed = "accepting connections failed"
    held: list[socket.socket] = []
    with kept_caller(server) as caller:
        assert caller.post("/mcp", headers=MCP_HEADERS, json=WHOAMI).status_code == 200
        try:
            held += hold(server, "127.0.0.63", limit)  # more than the descriptors left
            assert eventually(lambda: any(failed in str(event.get("event")) for event in log_events(server)))
            assert caller.post("/mcp", headers=MCP_HEADERS, json=WHOAMI).status_code == 200
        finally:
            for sock in held:
                sock.close()
        assert eventually(lambda: (metric(server, "mcp_accept_failures_total", error="EMFILE") or 0) >= 1)
        assert caller.post("/mcp", headers=MCP_HEADERS, json=WHOAMI).status_code == 200
    with server.http("reader") as fresh:  # accepting again
        assert fresh.post("/mcp", headers=MCP_HEADERS, json=WHOAMI).status_code == 200
    assert server.process.poll() is None
