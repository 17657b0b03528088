"""Connections that never send a whole request are bounded in time, size and number, and take
no slot from authenticated callers (security.connections, security.inflight, service.BoundedServer).

Hostile connections come from other loopback addresses (127.0.0.2 and up, all local on
Linux), so that the per-address cap they run into is not the valid caller's (127.0.0.1).
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from test_ops import metric

from conftest import PKI, RunningServer, eventually, start_server, stop_server

MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
WHOAMI = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
HEAD_TIMEOUT = 1.0
HANDSHAKE_TIMEOUT = 1.0
PER_ADDRESS = 8
CONCURRENT = 2
MARGIN = 2.0  # how late a close may come after its deadline on a busy CI machine
MiB = 1 << 20
SLOW_HEAD = b"POST /mcp HTTP/1.1\r\nhost: localhost\r\nx-slow: " + b"a" * 100


@pytest.fixture(scope="module")
def bounded(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(
        pki,
        tmp_path_factory.mktemp("bounded") / "server.log",
        request_head_timeout_seconds=str(HEAD_TIMEOUT),
        tls_handshake_timeout_seconds=str(HANDSHAKE_TIMEOUT),
        max_connections_per_address=str(PER_ADDRESS),
        max_concurrent_requests=str(CONCURRENT),
    )
    yield running
    stop_server(running)


def rss_bytes(server: RunningServer) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc status")


def handshake_context(server: RunningServer) -> ssl.SSLContext:
    """A TLS context that completes the handshake but authenticates no request: with mTLS the
    certificate is what TLS asks for, and a request is what it never sends."""
    context, _headers = server.credentials("operator")
    return context


def open_raw(server: RunningServer, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5, source_address=(source, 0))


def open_tls(server: RunningServer, source: str) -> ssl.SSLSocket:
    return handshake_context(server).wrap_socket(open_raw(server, source), server_hostname="localhost")


def valid_call_status(server: RunningServer) -> int:
    with server.http("reader") as client:
        return client.post("/mcp", headers=MCP_HEADERS, json=WHOAMI).status_code


@dataclass
class Held:
    """Hostile sockets, each with the time it was opened and, once seen, the time it was closed."""

    sockets: dict[socket.socket, float] = field(default_factory=dict)
    closed: dict[socket.socket, float] = field(default_factory=dict)
    selector: selectors.DefaultSelector = field(default_factory=selectors.DefaultSelector)

    def add(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sockets[sock] = time.monotonic()
        self.selector.register(sock, selectors.EVENT_READ)

    def open(self) -> list[socket.socket]:
        return [sock for sock in self.sockets if sock not in self.closed]

    def poll(self, timeout: float = 0.0) -> None:
        """Note every socket that saw EOF, a reset or a TLS alert."""
        for key, _events in self.selector.select(timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if sock.recv(65536):
                    continue  # an answer (431, say): the close follows
            except (ssl.SSLWantReadError, BlockingIOError):
                continue
            except (ssl.SSLError, OSError):
                pass
            self.closed[sock] = time.monotonic()
            self.selector.unregister(sock)

    def lifetimes(self) -> list[float]:
        return [self.closed[sock] - opened for sock, opened in self.sockets.items() if sock in self.closed]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.selector.close()


@pytest.fixture
def held() -> Iterator[Held]:
    hostile = Held()
    yield hostile
    hostile.close()


def test_idle_and_slow_connections_are_closed_and_keep_no_caller_out(bounded: RunningServer, held: Held) -> None:
    assert valid_call_status(bounded) == 200
    rss_before = rss_bytes(bounded)
    idle: list[socket.socket] = []
    slow: list[socket.socket] = []
    # 8 addresses with 8 connections each, per kind: 192 in all, the cap reached on every address.
    for address in range(8):
        for _ in range(PER_ADDRESS):
            idle.append(open_tls(bounded, f"127.0.0.{10 + address}"))
            slow.append(open_tls(bounded, f"127.0.0.{20 + address}"))
            held.add(idle[-1])
            held.add(slow[-1])
            held.add(open_raw(bounded, f"127.0.0.{30 + address}"))  # never starts TLS
    statuses, sent = [], 0
    deadline = time.monotonic() + HEAD_TIMEOUT + HANDSHAKE_TIMEOUT + 3 * MARGIN
    while held.open() and time.monotonic() < deadline:
        for sock in slow:
            if sock not in held.closed:
                with contextlib.suppress(ssl.SSLError, OSError):
                    sock.send(SLOW_HEAD[sent : sent + 1])  # one byte of a valid head every 0.3 s
        sent += 1
        statuses.append(valid_call_status(bounded))
        held.poll(0.3)
    assert not held.open(), f"{len(held.open())} of {len(held.sockets)} hostile connections still open"
    assert set(statuses) == {200}, statuses
    # Each closed within its own timeout (the TLS handshake's or the request head's), plus margin.
    assert max(held.lifetimes()) < max(HEAD_TIMEOUT, HANDSHAKE_TIMEOUT) + MARGIN, max(held.lifetimes())
    assert (metric(bounded, "mcp_connections_refused_total", reason="head_timeout") or 0) >= len(idle) + len(slow)
    assert rss_bytes(bounded) < rss_before + 16 * MiB


def test_oversized_head_gets_431_without_being_read(bounded: RunningServer) -> None:
    rss_before = rss_bytes(bounded)
    refused_before = metric(bounded, "mcp_connections_refused_total", reason="head_too_large") or 0.0
    header = b"x-padding: " + b"a" * 65536
    sent, answer = 0, b""
    started = time.monotonic()
    with open_tls(bounded, "127.0.0.2") as sock:
        sock.sendall(b"POST /mcp HTTP/1.1\r\nhost: localhost\r\n")
        sock.settimeout(0.05)
        try:
            while sent < 64 * MiB and time.monotonic() - started < 10:
                try:
                    answer += sock.recv(4096)
                    if answer.endswith(b"\n") or not answer:
                        break
                except TimeoutError:
                    pass
                sock.sendall(header)
                sent += len(header)
        except (ssl.SSLError, OSError):
            pass  # reset once the server dropped the connection
    assert answer.startswith(b"HTTP/1.1 431 "), answer
    assert b"Request line and headers are too large" in answer
    assert time.monotonic() - started < 5
    assert sent < 16 * MiB, f"the client got {sent} bytes of header out before the refusal"
    assert rss_bytes(bounded) < rss_before + 8 * MiB
    assert eventually(
        lambda: (metric(bounded, "mcp_connections_refused_total", reason="head_too_large") or 0) > refused_before
    )
    assert bounded.audit_events(event="connection_refused", reason="head_too_large", client_ip="127.0.0.2")


def keep_alive(server: RunningServer, source: str) -> ssl.SSLSocket:
    """A connection that got one answer and stays open (uvicorn's keep-alive, 5 s)."""
    sock = open_tls(server, source)
    sock.sendall(b"GET /nothing HTTP/1.1\r\nhost: localhost\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 ")
    return sock


def test_connections_beyond_the_per_address_cap_are_closed(bounded: RunningServer, held: Held) -> None:
    before = metric(bounded, "mcp_connections_refused_total", reason="per_address_limit") or 0.0
    kept = [keep_alive(bounded, "127.0.0.3") for _ in range(PER_ADDRESS)]
    for _ in range(3):
        held.add(open_tls(bounded, "127.0.0.3"))
    deadline = time.monotonic() + MARGIN
    while held.open() and time.monotonic() < deadline:
        held.poll(0.1)
    assert not held.open(), "connections beyond the cap were served"
    assert valid_call_status(bounded) == 200, "another address is not limited"
    assert metric(bounded, "mcp_connections_refused_total", reason="per_address_limit") == before + 3
    assert len(bounded.audit_events(event="connection_refused", reason="per_address_limit")) >= 3
    for sock in kept:
        sock.close()
    # Closed connections no longer count: the address may connect again.
    assert eventually(lambda: reconnects(bounded, "127.0.0.3"), timeout=5)


def reconnects(server: RunningServer, source: str) -> bool:
    try:
        keep_alive(server, source).close()
    except (ssl.SSLError, OSError, AssertionError):
        return False
    return True


def test_unparseable_http_is_counted(bounded: RunningServer) -> None:
    before = metric(bounded, "mcp_connections_refused_total", reason="bad_request") or 0.0
    with open_tls(bounded, "127.0.0.4") as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")
    assert eventually(lambda: metric(bounded, "mcp_connections_refused_total", reason="bad_request") == before + 1)


def start_slow_body(server: RunningServer, identity: str | None) -> ssl.SSLSocket:
    """A request whose head is complete and whose body never comes."""
    context, headers = server.credentials(identity)
    sock = context.wrap_socket(open_raw(server, "127.0.0.5"), server_hostname="localhost")
    lines = [
        "POST /mcp HTTP/1.1",
        "host: localhost",
        *(f"{name}: {value}" for name, value in {**MCP_HEADERS, **headers}.items()),
        "content-length: 1000",
    ]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + b"{")
    return sock


def test_only_authenticated_requests_take_a_concurrency_slot(bounded: RunningServer, held: Held) -> None:
    # Many connections without a whole request (and, with OAuth, requests without a token):
    # under uvicorn's limit_concurrency of 2 these alone would answer 503 to everyone.
    for _ in range(PER_ADDRESS):
        held.add(open_tls(bounded, "127.0.0.6"))
    assert valid_call_status(bounded) == 200
    # Authenticated requests in progress fill the slots: the next one gets 503 in our words.
    in_progress = [start_slow_body(bounded, "reader") for _ in range(CONCURRENT)]
    try:
        assert eventually(lambda: valid_call_status(bounded) == 503)
        with bounded.http("reader") as client:
            busy = client.post("/mcp", headers=MCP_HEADERS, json=WHOAMI)
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "1"
        assert json.loads(busy.text)["error"]["message"].startswith("Server busy")
        assert bounded.audit_events(event="request_shed")
    finally:
        for sock in in_progress:
            sock.close()
    assert eventually(lambda: valid_call_status(bounded) == 200)
