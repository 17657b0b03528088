"""Hostile and malformed HTTP gets a proper HTTP or JSON-RPC error, never a 500 or a trace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def test_foreign_origin_is_refused_and_audited(server: RunningServer, http: httpx2.Client) -> None:
    headers = {**MCP_HEADERS, "origin": "https://attacker.example", "x-request-id": "origin-check"}
    response = http.post("/mcp", headers=headers, json=call("whoami"))
    assert response.status_code == 403
    (event,) = server.audit_events(event="request_rejected", http_request_id="origin-check")
    assert event["status"] == 403
    assert event["principal"] == PRINCIPAL_IDS["reader"]
    assert event["client_ip"] == "127.0.0.1"


def test_foreign_host_is_refused(http: httpx2.Client) -> None:
    response = http.post("/mcp", headers={**MCP_HEADERS, "host": "rebound.attacker.example"}, json=call("whoami"))
    assert response.status_code == 421


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


def test_connections_beyond_the_concurrency_cap_get_503(pki: PKI, tmp_path: Path) -> None:
    # uvicorn counts open connections, the asking one included: a cap of 2 admits one client.
    capped = start_server(pki, tmp_path / "server.log", max_concurrent_requests="2")
    try:
        with capped.http("reader") as first, capped.http("reader") as second:
            assert first.post("/mcp", headers=MCP_HEADERS, json=call("whoami")).status_code == 200
            # The first client's keep-alive connection still counts against the cap.
            assert second.post("/mcp", headers=MCP_HEADERS, json=call("whoami")).status_code == 503
    finally:
        stop_server(capped)


@pytest.fixture(scope="module")
def limited_server(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(pki, tmp_path_factory.mktemp("limited") / "server.log", rate_limit_per_minute="3")
    yield running
    stop_server(running)


def test_rate_limit_per_principal_gives_429_with_retry_after(limited_server: RunningServer) -> None:
    with limited_server.http("reader") as reader, limited_server.http("operator") as operator:
        statuses = [reader.post("/mcp", headers=MCP_HEADERS, json=call("whoami")).status_code for _ in range(3)]
        limited = reader.post("/mcp", headers=MCP_HEADERS, json=call("whoami"))
        other_principal = operator.post("/mcp", headers=MCP_HEADERS, json=call("whoami"))
    assert statuses == [200, 200, 200]
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert limited.json()["error"]["message"].startswith("Rate limit exceeded")
    assert other_principal.status_code == 200, "one principal's budget must not limit another"
    (event,) = limited_server.audit_events(event="rate_limited")
    assert event["principal"] == PRINCIPAL_IDS["reader"]
