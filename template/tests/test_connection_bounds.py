"""Connections and requests are bounded in time, size and number until the app has them whole,
every refusal ends the connection, and none of this takes a slot from authenticated callers or
keeps a legitimate client out (security.connections, security.inflight, service.BoundedServer).

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
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest

from test_ops import metric

from conftest import PKI, RunningServer, eventually, start_server, stop_server
from dev_pki import CLIENTS, issue, write
from mcp_client import client_tls

MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
WHOAMI = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
HEAD_TIMEOUT = 1.0
BODY_TIMEOUT = 2.0
HANDSHAKE_TIMEOUT = 1.0
PER_ADDRESS = 8
CONCURRENT = 2
CLOSE_GRACE = 1.0  # security.connections.CLOSE_GRACE_SECONDS
MARGIN = 2.0  # how late a close may come after its deadline on a busy CI machine
MiB = 1 << 20
DEFAULT_HEAD_LIMIT = 16_384  # MAX_REQUEST_HEAD_BYTES as docs/configuration.md gives it
DEFAULT_BODY_LIMIT = MiB  # MAX_REQUEST_BODY_BYTES
SLOW_HEAD = b"POST /mcp HTTP/1.1\r\nhost: localhost\r\nx-slow: " + b"a" * 100


@pytest.fixture(scope="module")
def bounded(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(
        pki,
        tmp_path_factory.mktemp("bounded") / "server.log",
        request_head_timeout_seconds=str(HEAD_TIMEOUT),
        request_body_timeout_seconds=str(BODY_TIMEOUT),
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
    """A connection that got one whole answer and stays open (KEEP_ALIVE_TIMEOUT_SECONDS, 75 s):
    authenticated, since a request without credentials is refused and its connection ended."""
    _context, headers = server.credentials("operator")
    sock = open_tls(server, source)
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    sock.sendall(f"GET /nothing HTTP/1.1\r\nhost: localhost\r\n{fields}\r\n".encode())
    received = b""
    while not (found := answers(received)) or len(found[0].body) < int(found[0].headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "closed before the whole answer"
        received += chunk
    assert found[0].status == 404
    assert found[0].headers.get("connection") != "close"
    return sock


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def answers(data: bytes) -> list[Answer]:
    """The HTTP answers in what a connection received (each with a content-length)."""
    found: list[Answer] = []
    while True:
        head, end, rest = data.partition(b"\r\n\r\n")
        if not end:
            return found
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        length = int(headers.get("content-length", "0"))
        found.append(Answer(int(status_line.split()[1]), headers, rest[:length]))
        data = rest[length:]


def until_closed(sock: ssl.SSLSocket, timeout: float, trickle: bytes = b"") -> tuple[bytes, float | None]:
    """What the server sends until it ends the connection, and when it did (None: not within
    ``timeout``). Meanwhile ``trickle`` goes out a byte at a time, about one every 0.1 s."""
    received, sent = b"", 0
    sock.settimeout(0.1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sent < len(trickle):
            with contextlib.suppress(OSError):
                sock.send(trickle[sent : sent + 1])
            sent += 1
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:  # a reset or a TLS alert
            return received, time.monotonic()
        if not chunk:
            return received, time.monotonic()
        received += chunk
    return received, None


def request_head(headers: dict[str, str], *, size: int | None = None, body_length: int = 0) -> bytes:
    """A POST /mcp head with these headers; ``size``: padded to exactly that many bytes."""
    fields = {"host": "localhost", **MCP_HEADERS, **headers, "content-length": str(body_length)}
    head = "POST /mcp HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    if size is not None:
        padding = size - len(head) - len("x-padding: \r\n\r\n")
        assert padding >= 0, "the head without padding is already larger"
        head += "x-padding: " + "a" * padding + "\r\n"
    encoded = (head + "\r\n").encode()
    assert size is None or len(encoded) == size
    return encoded


def call_request(server: RunningServer, identity: str, message: dict[str, Any], request_id: str, **extra: str) -> bytes:
    """A whole POST /mcp request as ``identity`` sends it (headers of the auth mode included)."""
    _context, headers = server.credentials(identity)
    body = json.dumps(message).encode()
    fields = {"host": f"localhost:{server.port}", **headers, "x-request-id": request_id, **extra}
    return request_head(fields, body_length=len(body)) + body


def refused_context(server: RunningServer, directory: Path) -> ssl.SSLContext:
    """A TLS context that gets through the handshake to a refusal: without a token (401), or
    where client certificates are required, with one that is not for clients (403)."""
    anonymous = server.pki.anonymous()
    if server.probe(anonymous) is not None:
        return anonymous
    not_for_clients = issue(server.pki.ca, "reader", uris=(CLIENTS["reader"],), client=False, usage=False)
    write(directory, "not-a-client", not_for_clients)
    return client_tls(server.pki.ca_file, directory / "not-a-client.pem", directory / "not-a-client-key.pem")


def test_connections_beyond_the_per_address_cap_get_503_and_are_closed(bounded: RunningServer, held: Held) -> None:
    before = metric(bounded, "mcp_connections_refused_total", reason="per_address_limit") or 0.0
    kept = [keep_alive(bounded, "127.0.0.3") for _ in range(PER_ADDRESS)]
    context, _headers = bounded.credentials("reader")
    beyond: list[tuple[str, bytes, float | None]] = []
    for number in range(3):
        request_id = f"beyond-{number}-{uuid.uuid4().hex[:8]}"
        with context.wrap_socket(open_raw(bounded, "127.0.0.3"), server_hostname="localhost") as sock:
            sock.sendall(call_request(bounded, "reader", WHOAMI, request_id))
            beyond.append((request_id, *until_closed(sock, CLOSE_GRACE + MARGIN)))
    silent = open_tls(bounded, "127.0.0.3")  # sends nothing: closed once its grace is over
    held.add(silent)
    opened = time.monotonic()
    while held.open() and time.monotonic() < opened + CLOSE_GRACE + MARGIN:
        held.poll(0.1)
    assert not held.open(), "a connection beyond the cap that sent nothing was kept"
    for request_id, received, closed in beyond:
        assert answers(received), "a connection beyond the cap was closed without an answer"
        (answer,) = answers(received)
        assert answer.status == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.headers["connection"] == "close"
        assert json.loads(answer.body)["error"]["message"].startswith("Server busy: too many connections")
        assert closed is not None, "the connection stayed open after its 503"
        assert not bounded.audit_events(http_request_id=request_id), "a request beyond the cap ran"
    assert valid_call_status(bounded) == 200, "another address is not limited"
    assert metric(bounded, "mcp_connections_refused_total", reason="per_address_limit") == before + 4
    assert len(bounded.audit_events(event="connection_refused", reason="per_address_limit")) >= 4
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


def test_one_client_is_served_on_100_parallel_connections_at_the_defaults(server: RunningServer) -> None:
    """What real clients do: undici (Node, the TypeScript SDK) opens a connection per parallel
    request, httpx pools up to 100. All of them are served, none gets 503."""
    refused_before = metric(server, "mcp_connections_refused_total", reason="per_address_limit") or 0.0
    context, _headers = server.credentials("reader")
    connections = [context.wrap_socket(open_raw(server, "127.0.0.9"), server_hostname="localhost") for _ in range(100)]
    try:
        for number, sock in enumerate(connections):
            sock.sendall(call_request(server, "reader", WHOAMI, f"parallel-{number}", connection="close"))
        statuses = [[answer.status for answer in answers(until_closed(sock, 30)[0])] for sock in connections]
    finally:
        for sock in connections:
            sock.close()
    assert statuses == [[200]] * 100
    assert (metric(server, "mcp_connections_refused_total", reason="per_address_limit") or 0.0) == refused_before


@pytest.mark.parametrize("writes", ["one-write", "byte-by-byte"])
@pytest.mark.parametrize("size", [DEFAULT_HEAD_LIMIT - 1, DEFAULT_HEAD_LIMIT, DEFAULT_HEAD_LIMIT + 1])
def test_the_head_limit_is_exact_whatever_the_write_pattern(server: RunningServer, size: int, writes: str) -> None:
    context, headers = server.credentials("reader")
    body = json.dumps(WHOAMI).encode()
    fields = {"host": f"localhost:{server.port}", **headers, "connection": "close"}
    head = request_head(fields, size=size, body_length=len(body))
    with context.wrap_socket(open_raw(server, "127.0.0.8"), server_hostname="localhost") as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):  # refused: the server may close while the body goes out
            if writes == "one-write":
                sock.sendall(head + body)
            else:
                for index in range(len(head)):
                    sock.sendall(head[index : index + 1])
                sock.sendall(body)
        received, _closed = until_closed(sock, 30)
    (answer,) = answers(received)
    assert answer.status == (200 if size <= DEFAULT_HEAD_LIMIT else 431), (size, answer)


def test_a_pipelined_write_over_the_head_limit_runs_no_request_it_does_not_answer(server: RunningServer) -> None:
    tag = uuid.uuid4().hex[:8]
    revoke = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "revoke_session", "arguments": {"session_id": f"sess_{tag}"}},
    }
    _context, headers = server.credentials("operator")
    oversized = request_head({**headers, "x-request-id": f"pipe-3-{tag}"}, size=2 * DEFAULT_HEAD_LIMIT)
    write_ = (
        call_request(server, "operator", revoke, f"pipe-1-{tag}")
        + call_request(server, "operator", WHOAMI, f"pipe-2-{tag}")
        + oversized
    )
    context, _headers = server.credentials("operator")
    with context.wrap_socket(open_raw(server, "127.0.0.11"), server_hostname="localhost") as sock:
        with contextlib.suppress(OSError):
            sock.sendall(write_)
        received, closed = until_closed(sock, 30)
    assert closed is not None
    seen = answers(received)
    assert seen, "no answer at all"
    assert seen[-1].status == 431, [answer.status for answer in seen]
    answered = {answer.headers.get("x-request-id") for answer in seen}
    # A request that started runs to its end even when its connection is gone: once a later
    # call has been audited, every tool call of the write has been.
    with server.http("reader") as client:
        client.post("/mcp", headers={**MCP_HEADERS, "x-request-id": f"after-{tag}"}, json=WHOAMI)
    assert eventually(lambda: bool(server.audit_events(event="tool_call", http_request_id=f"after-{tag}")))
    ran = {
        event["http_request_id"]
        for event in server.audit_events(event="tool_call")
        if str(event.get("http_request_id", "")).startswith("pipe-") and event["http_request_id"].endswith(tag)
    }
    assert ran <= answered, f"ran without an answer the client saw: {sorted(ran - answered)}"


def test_a_slow_body_is_cut_and_keeps_no_caller_out(bounded: RunningServer) -> None:
    before = metric(bounded, "mcp_connections_refused_total", reason="body_timeout") or 0.0
    context, headers = bounded.credentials("reader")
    statuses = []
    with context.wrap_socket(open_raw(bounded, "127.0.0.5"), server_hostname="localhost") as sock:
        sock.sendall(request_head(headers, body_length=1000))
        started = time.monotonic()
        received, closed = b"", None
        while closed is None and time.monotonic() < started + BODY_TIMEOUT + MARGIN:
            # A byte of the body now and then; a valid caller from another address meanwhile.
            chunk, closed = until_closed(sock, 0.3, trickle=b"{")
            received += chunk
            statuses.append(valid_call_status(bounded))
    assert closed is not None, "a slow body kept its connection"
    assert BODY_TIMEOUT - 0.2 < closed - started < BODY_TIMEOUT + MARGIN
    (answer,) = answers(received)
    assert answer.status == 408
    assert set(statuses) == {200}, statuses
    assert eventually(
        lambda: (metric(bounded, "mcp_connections_refused_total", reason="body_timeout") or 0.0) == before + 1
    )


@pytest.mark.parametrize("refusal", ["no-credentials", "body-too-large", "head-too-large", "before-the-body"])
def test_a_refusal_ends_the_connection_whatever_the_client_sends(
    bounded: RunningServer, tmp_path: Path, refusal: str
) -> None:
    """A refused client keeps sending (the rest of a body it declared): the connection still
    closes within the grace, and a valid caller is served meanwhile. The answer says so, so a
    client never sends its next request on a connection about to close."""
    context, headers = bounded.credentials("reader")
    if refusal == "before-the-body":
        # A 400 is no refusal that ends the exchange by itself; answered before the body, it must.
        expected = {400}
        start = request_head({**headers, "x-request-id": "a", "X-Request-Id": "b"}, body_length=100)
    elif refusal == "no-credentials":
        context, headers, expected = refused_context(bounded, tmp_path), {}, {401, 403}
        start = request_head(headers, body_length=DEFAULT_BODY_LIMIT) + b"{"
    elif refusal == "body-too-large":
        expected = {413}
        start = request_head(headers, body_length=2 * DEFAULT_BODY_LIMIT) + b" " * (DEFAULT_BODY_LIMIT + 1)
    else:
        expected = {431}
        start = request_head(headers, size=DEFAULT_HEAD_LIMIT + 100)[:-2]  # the head does not even end
    with context.wrap_socket(open_raw(bounded, "127.0.0.12"), server_hostname="localhost") as sock:
        with contextlib.suppress(OSError):
            sock.sendall(start)
        received, closed = b"", None
        deadline = time.monotonic() + 10
        while not answers(received) and closed is None and time.monotonic() < deadline:
            chunk, closed = until_closed(sock, 0.1)
            received += chunk
        assert answers(received), "no answer"
        answered = time.monotonic()
        assert valid_call_status(bounded) == 200
        rest, later = until_closed(sock, CLOSE_GRACE + MARGIN, trickle=b" " * 100)
        closed = closed or later
    assert answers(received + rest)[0].status in expected
    assert answers(received + rest)[0].headers["connection"] == "close"
    assert closed is not None, "the connection stayed open after the refusal"
    assert closed - answered < CLOSE_GRACE + MARGIN


def test_a_whole_request_and_an_idle_connection_are_bounded(pki: PKI, tmp_path: Path) -> None:
    """REQUEST_TIMEOUT_SECONDS bounds a request whose head and body are each within their own
    timeouts; KEEP_ALIVE_TIMEOUT_SECONDS a connection idle after its answer."""
    running = start_server(
        pki,
        tmp_path / "server.log",
        request_head_timeout_seconds="30",
        request_body_timeout_seconds="30",
        request_timeout_seconds="1",
        keep_alive_timeout_seconds="1",
    )
    try:
        context, headers = running.credentials("reader")
        slow_head = context.wrap_socket(open_raw(running, "127.0.0.13"), server_hostname="localhost")
        slow_body = context.wrap_socket(open_raw(running, "127.0.0.13"), server_hostname="localhost")
        idle = keep_alive(running, "127.0.0.13")
        started = time.monotonic()
        slow_body.sendall(request_head(headers, body_length=1000))
        head_seen, head_closed = until_closed(slow_head, 1 + MARGIN, trickle=SLOW_HEAD)
        body_seen, body_closed = until_closed(slow_body, 1 + MARGIN, trickle=b"{" * 100)
        _rest_of_its_answer, idle_closed = until_closed(idle, 1 + MARGIN)
        for sock in (slow_head, slow_body, idle):
            sock.close()
        assert idle_closed is not None, "an idle kept connection outlived its timeout"
        assert head_closed is not None
        assert head_closed - started < 1 + MARGIN
        assert body_closed is not None
        assert body_closed - started < 1 + MARGIN
        assert [answer.status for answer in answers(head_seen) + answers(body_seen)] == [408, 408]
        assert metric(running, "mcp_connections_refused_total", reason="request_timeout") == 2
    finally:
        stop_server(running)


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
    sock.sendall(request_head(headers, body_length=1000) + b"{")
    return sock


def test_only_authenticated_requests_take_a_concurrency_slot(bounded: RunningServer, held: Held) -> None:
    # Many connections without a whole request (and, with OAuth, requests without a token):
    # under uvicorn's limit_concurrency of 2 these alone would answer 503 to everyone.
    for _ in range(PER_ADDRESS):
        held.add(open_tls(bounded, "127.0.0.6"))
    assert valid_call_status(bounded) == 200
    # Authenticated requests in progress fill the slots: the next one gets 503 in our words,
    # until the body timeout ends them.
    in_progress = [start_slow_body(bounded, "reader") for _ in range(CONCURRENT)]
    busy: list[httpx2.Response] = []

    def shed() -> bool:
        with bounded.http("reader") as client:
            busy.append(client.post("/mcp", headers=MCP_HEADERS, json=WHOAMI))
        return bool(busy[-1].status_code == 503)

    try:
        assert eventually(shed, timeout=BODY_TIMEOUT)
        assert busy[-1].headers["retry-after"] == "1"
        assert json.loads(busy[-1].text)["error"]["message"].startswith("Server busy")
        assert bounded.audit_events(event="request_shed")
    finally:
        for sock in in_progress:
            sock.close()
    assert eventually(lambda: valid_call_status(bounded) == 200)
