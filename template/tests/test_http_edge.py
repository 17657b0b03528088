"""Hostile and malformed HTTP gets a proper HTTP or JSON-RPC error, never a 500 or a trace."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.client import HTTPSConnection
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_ops import metric

from conftest import PKI, PRINCIPAL_IDS, RunningServer, start_server, stop_server

MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
SECURITY_HEADERS = {
    "strict-transport-security": "max-age=63072000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
}


def call(tool: str, arguments: dict[str, Any] | None = None, request_id: int = 1) -> dict[str, Any]:
    params = {"name": tool, "arguments": arguments or {}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx2.Client]:
    with server.http("reader") as client:
        yield client


def test_tool_call_over_plain_json_rpc(http: httpx2.Client) -> None:
    response = http.post("/mcp", headers=MCP_HEADERS, json=call("whoami"))
    assert response.status_code == 200
    assert response.json()["result"]["structuredContent"]["id"] == PRINCIPAL_IDS["reader"]


@pytest.mark.parametrize("path", ["/mcp", "/does-not-exist"])
def test_security_headers_on_every_response(http: httpx2.Client, path: str) -> None:
    response = http.post(path, headers=MCP_HEADERS, json=call("whoami"))
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    assert "server" not in response.headers
    assert response.headers["x-request-id"]


def test_safe_request_id_is_kept_and_unsafe_one_replaced(http: httpx2.Client) -> None:
    kept = http.post("/mcp", headers={**MCP_HEADERS, "x-request-id": "trace-123"}, json=call("whoami"))
    replaced = http.post("/mcp", headers={**MCP_HEADERS, "x-request-id": "a b\tc"}, json=call("whoami"))
    assert kept.headers["x-request-id"] == "trace-123"
    assert replaced.headers["x-request-id"] != "a b\tc"


@pytest.mark.parametrize("header", ["x-forwarded-for", "forwarded", "x-real-ip"])
def test_a_forwarded_address_is_not_believed(server: RunningServer, http: httpx2.Client, header: str) -> None:
    """Budgets and audit lines key on the connection's address: a mesh sidecar connects from
    127.0.0.1, where uvicorn would otherwise trust X-Forwarded-For."""
    value = "for=203.0.113.9" if header == "forwarded" else "203.0.113.9"
    request_id = f"forwarded-{header}"
    http.post("/mcp", headers={**MCP_HEADERS, header: value, "x-request-id": request_id}, json=call("whoami"))
    (event,) = server.audit_events(event="tool_call", http_request_id=request_id)
    assert event["client_ip"] == "127.0.0.1"


def test_foreign_origin_is_refused_and_audited(server: RunningServer, http: httpx2.Client) -> None:
    headers = {**MCP_HEADERS, "origin": "https://attacker.example", "x-request-id": "origin-check"}
    response = http.post("/mcp", headers=headers, json=call("whoami"))
    assert response.status_code == 403
    (event,) = server.audit_events(event="request_rejected", http_request_id="origin-check")
    assert event["status"] == 403
    assert event["principal"] == PRINCIPAL_IDS["reader"]
    assert event["client_ip"] == "127.0.0.1"


@pytest.mark.parametrize("body", [json.dumps(call("whoami")).encode(), b"not json", b'{"jsonrpc": "2.0"}'])
def test_foreign_host_is_refused(http: httpx2.Client, body: bytes) -> None:
    """Whatever the body: the JSON-RPC checks read it first, but a foreign Host is the SDK's to answer."""
    response = http.post("/mcp", headers={**MCP_HEADERS, "host": "rebound.attacker.example"}, content=body)
    assert response.status_code == 421


def test_an_unknown_tool_and_a_forbidden_one_get_the_same_bytes(http: httpx2.Client) -> None:
    """In every auth mode: the reader may not revoke sessions; nothing tells it that
    revoke_session exists and no_such_tool does not (no name is echoed either)."""
    answers = []
    for name in ("revoke_session", "no_such_tool"):
        response = http.post("/mcp", headers=MCP_HEADERS, json=call(name, {"session_id": "sess_probe003"}))
        headers = [(k, v) for k, v in response.headers.multi_items() if k not in ("x-request-id", "date")]
        answers.append((response.status_code, headers, response.content))
        assert name.encode() not in response.content
    assert answers[0] == answers[1]


def test_get_opens_no_event_stream(http: httpx2.Client) -> None:
    """A stateless server has nothing to push: GET is refused at once instead of held open."""
    response = http.get("/mcp", headers={"accept": "text/event-stream"}, timeout=5.0)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_oversized_body_is_refused_with_413(http: httpx2.Client) -> None:
    response = http.post("/mcp", headers=MCP_HEADERS, content=b" " * 2_000_000)
    assert response.status_code == 413


def test_oversized_chunked_body_is_refused_with_413(http: httpx2.Client) -> None:
    chunks = (b" " * 65_536 for _ in range(32))
    response = http.post("/mcp", headers=MCP_HEADERS, content=chunks)
    assert response.status_code == 413


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'{"jsonrpc": "2.0", "id": 1}', b'{"jsonrpc": "1.0", "id": 1, "method": "tools/list"}'],
)
def test_malformed_json_rpc_gets_a_json_rpc_error(http: httpx2.Client, body: bytes) -> None:
    response = http.post("/mcp", headers=MCP_HEADERS, content=body)
    assert 400 <= response.status_code < 500
    error = response.json()["error"]
    assert error["code"] in (-32700, -32600, -32602)
    assert "Traceback" not in response.text


def test_wrong_content_type_is_refused(http: httpx2.Client) -> None:
    response = http.post("/mcp", headers={**MCP_HEADERS, "content-type": "text/plain"}, content=b"{}")
    assert response.status_code == 400


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=512) | st.text(max_size=256).map(str.encode))
def test_fuzzed_bodies_never_cause_a_server_error(http: httpx2.Client, body: bytes) -> None:
    response = http.post("/mcp", headers=MCP_HEADERS, content=body)
    assert response.status_code < 500, response.text
    assert "Traceback" not in response.text


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arguments=st.dictionaries(st.text(max_size=20), st.text(max_size=50) | st.integers() | st.none(), max_size=4))
def test_fuzzed_tool_arguments_get_a_tool_error_not_a_crash(http: httpx2.Client, arguments: dict[str, Any]) -> None:
    response = http.post("/mcp", headers=MCP_HEADERS, json=call("search_runbooks", arguments))
    assert response.status_code in (200, 400), response.text
    assert "Traceback" not in response.text


@pytest.fixture(scope="module")
def limited_server(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # The default aggregation of refusal audit lines (the other servers write one per refusal).
    log_file = tmp_path_factory.mktemp("limited") / "server.log"
    running = start_server(pki, log_file, rate_limit_per_minute="3", audit_refusal_window_seconds="10")
    yield running
    stop_server(running)


def test_rate_limit_per_principal_gives_429_with_retry_after(limited_server: RunningServer) -> None:
    with limited_server.http("reader") as reader, limited_server.http("operator") as operator:
        statuses = [reader.post("/mcp", headers=MCP_HEADERS, json=call("whoami")).status_code for _ in range(3)]
        limited = reader.post("/mcp", headers=MCP_HEADERS, json=call("whoami"))
        again = [reader.post("/mcp", headers=MCP_HEADERS, json=call("whoami")).status_code for _ in range(4)]
        other_principal = operator.post("/mcp", headers=MCP_HEADERS, json=call("whoami"))
    assert statuses == [200, 200, 200]
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert limited.json()["error"]["message"].startswith("Rate limit exceeded")
    assert other_principal.status_code == 200, "one principal's budget must not limit another"
    assert again == [429] * 4
    # The first 429 is audited at once; the others of its window are counted into one later line.
    (event,) = limited_server.audit_events(event="rate_limited")
    assert event["principal"] == PRINCIPAL_IDS["reader"]
    assert event["count"] == 1
    assert metric(limited_server, "mcp_requests_refused_total", reason="rate_limited") == 5


# What no error may carry: library text, class names, validation details, a trace.
LIBRARY_TEXT = (
    "pydantic",
    "validation error",
    "Input should",
    "JSONRPCRequest",
    "ValidationError",
    "type=",
    "Traceback",
)


def assert_our_words(text: str) -> None:
    for fragment in LIBRARY_TEXT:
        assert fragment.lower() not in text.lower(), text


WHOAMI_PARAMS = '"params": {"name": "whoami", "arguments": {}}'


@pytest.mark.parametrize(
    ("body", "code", "reason"),
    [
        (b"{not json", -32700, "parse_error"),
        (b'[{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}]', -32600, "batch"),
        (b'{"jsonrpc": "2.0", "id": 1}', -32600, "missing_method"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": [1]}', -32602, "invalid_params"),
        (
            ('{"jsonrpc": "2.0", "id": {"a": 1}, "method": "tools/call", ' + WHOAMI_PARAMS + "}").encode(),
            -32600,
            "invalid_id",
        ),
        (
            ('{"jsonrpc": "2.0", "id": [1], "method": "tools/call", ' + WHOAMI_PARAMS + "}").encode(),
            -32600,
            "invalid_id",
        ),
        (
            ('{"jsonrpc": "2.0", "id": 1.5, "method": "tools/call", ' + WHOAMI_PARAMS + "}").encode(),
            -32600,
            "invalid_id",
        ),
        (
            ('{"jsonrpc": "2.0", "id": null, "method": "tools/call", ' + WHOAMI_PARAMS + "}").encode(),
            -32600,
            "invalid_id",
        ),
        (
            ('{"jsonrpc": "2.0", "id": true, "method": "tools/call", ' + WHOAMI_PARAMS + "}").encode(),
            -32600,
            "invalid_id",
        ),
        (('{"jsonrpc": "2.0", "method": "tools/call", ' + WHOAMI_PARAMS + "}").encode(), -32600, "request_without_id"),
        (b'{"jsonrpc": "2.0", "id": 1, "id": 2, "method": "ping"}', -32600, "duplicate_key"),
    ],
    ids=[
        "parse",
        "batch",
        "no-method",
        "params-array",
        "id-object",
        "id-array",
        "id-float",
        "id-null",
        "id-bool",
        "no-id",
        "duplicate-key",
    ],
)
def test_malformed_message_gets_its_json_rpc_code_in_our_words_and_runs_nothing(
    server: RunningServer, http: httpx2.Client, body: bytes, code: int, reason: str
) -> None:
    request_id = f"malformed-{reason}-{abs(hash(body)) % 10_000}"
    response = http.post("/mcp", headers={**MCP_HEADERS, "x-request-id": request_id}, content=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert set(error) == {"code", "message"}
    assert_our_words(response.text)
    (event,) = server.audit_events(event="request_rejected", http_request_id=request_id)
    assert event["reason"] == reason
    assert not server.audit_events(event="tool_call", http_request_id=request_id), "the tool ran"


def test_unknown_method_gets_32601_and_is_audited_and_counted(server: RunningServer, http: httpx2.Client) -> None:
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/nonexistent"}
    response = http.post("/mcp", headers={**MCP_HEADERS, "x-request-id": "unknown-method"}, json=body)
    error = response.json()["error"]
    assert error == {"code": -32601, "message": "Method not found"}
    (event,) = server.audit_events(event="request_rejected", http_request_id="unknown-method")
    assert event["reason"] == "unknown_method"
    assert event["method"] == "tools/nonexistent"
    metrics = httpx2.get(f"{server.ops_url}/metrics", timeout=10.0).text
    assert 'mcp_jsonrpc_refused_total{reason="unknown_method"}' in metrics


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"name": "no_such_prompt"}, "Unknown prompt or invalid prompt arguments"),
        (
            {"name": "incident_summary", "arguments": {"incident_id": "not an id"}},
            "Unknown prompt or invalid prompt arguments",
        ),
        ({"uri": "info://no-such-resource"}, "Unknown resource"),
    ],
    ids=["unknown-prompt", "bad-prompt-arguments", "unknown-resource"],
)
def test_handler_errors_get_32602_not_code_0_nor_an_echo(
    http: httpx2.Client, params: dict[str, Any], message: str
) -> None:
    method = "resources/read" if "uri" in params else "prompts/get"
    response = http.post(
        "/mcp", headers=MCP_HEADERS, json={"jsonrpc": "2.0", "id": 3, "method": method, "params": params}
    )
    assert response.json()["error"] == {"code": -32602, "message": message}
    assert "no-such" not in response.text
    assert "not an id" not in response.text
    assert_our_words(response.text)


@pytest.mark.parametrize(
    "arguments", [{}, {"query": 5}, {"query": "x" * 500}], ids=["missing", "wrong-type", "too-long"]
)
def test_bad_tool_arguments_get_a_tool_error_in_our_words(http: httpx2.Client, arguments: dict[str, Any]) -> None:
    response = http.post("/mcp", headers=MCP_HEADERS, json=call("search_runbooks", arguments))
    result = response.json()["result"]
    assert result["isError"] is True
    assert result["content"][0]["text"] == "Invalid arguments: they do not match the tool's input schema"
    assert_our_words(response.text)


def raw_post(server: RunningServer, headers: list[tuple[str, str]], body: bytes) -> tuple[int, str]:
    """POST /mcp with exactly these headers (repeats kept: httpx would merge them)."""
    tls, credentials = server.credentials("reader")
    connection = HTTPSConnection("localhost", server.port, context=tls, timeout=10.0)
    try:
        connection.putrequest("POST", "/mcp", skip_host=True, skip_accept_encoding=True)
        for name, value in [*credentials.items(), *MCP_HEADERS.items(), *headers]:
            connection.putheader(name, value)
        connection.putheader("content-length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


@pytest.mark.parametrize(
    "header",
    ["authorization", "host", "origin", "content-type", "mcp-protocol-version", "mcp-session-id"],
)
def test_a_repeated_security_header_is_refused_with_400_and_audited(server: RunningServer, header: str) -> None:
    host = f"localhost:{server.port}"
    values = {
        "authorization": "Bearer not-even-checked",
        "host": host,
        "origin": f"https://{host}",
        "content-type": "application/json",
        "mcp-protocol-version": "2025-11-25",
        "mcp-session-id": "s1",
    }
    headers = (
        [("x-request-id", f"duplicate-{header}"), ("host", host)]
        if header != "host"
        else [("x-request-id", f"duplicate-{header}")]
    )
    headers += [(header, values[header]), (header, values[header])]
    status, text = raw_post(server, headers, json.dumps(call("whoami")).encode())
    assert status == 400, text
    assert f"more than one {header} header" in text
    (event,) = server.audit_events(event="request_rejected", http_request_id=f"duplicate-{header}")
    assert event["reason"] == f"duplicate_{header.replace('-', '_')}"
    assert not server.audit_events(event="tool_call", http_request_id=f"duplicate-{header}")
