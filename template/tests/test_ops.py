"""The operations port: health, readiness and metrics over plain HTTP, apart from the mTLS port."""

from __future__ import annotations

import time

import httpx2
from prometheus_client.parser import text_string_to_metric_families

from conftest import RunningServer

MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def metric(server: RunningServer, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(httpx2.get(f"{server.ops_url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return None


def test_health_and_readiness(server: RunningServer) -> None:
    assert httpx2.get(f"{server.ops_url}/healthz").json() == {"status": "ok"}
    assert httpx2.get(f"{server.ops_url}/readyz").json() == {"status": "ready"}


def test_tool_calls_are_counted_by_tool_decision_and_outcome(server: RunningServer) -> None:
    labels = {"tool": "search_runbooks", "decision": "allow", "outcome": "ok"}
    before = metric(server, "mcp_tool_calls_total", **labels) or 0.0
    params = {"name": "search_runbooks", "arguments": {"query": "tls"}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    with server.http("reader") as http:
        assert http.post("/mcp", headers=MCP_HEADERS, json=body).status_code == 200
    assert metric(server, "mcp_tool_calls_total", **labels) == before + 1
    assert (metric(server, "mcp_tool_call_duration_seconds_count", tool="search_runbooks") or 0) >= 1


def test_refused_requests_are_counted_by_status(server: RunningServer) -> None:
    before = metric(server, "mcp_http_requests_rejected_total", status="403") or 0.0
    with server.http("reader") as http:
        http.post("/mcp", headers={**MCP_HEADERS, "origin": "https://attacker.example"}, json={})
    assert metric(server, "mcp_http_requests_rejected_total", status="403") == before + 1


def test_certificate_expiry_is_exported(server: RunningServer) -> None:
    expiry = metric(server, "mcp_tls_certificate_expiry_timestamp_seconds")
    assert expiry is not None
    assert expiry > time.time()


def test_operations_endpoints_are_not_served_on_the_mcp_port(server: RunningServer) -> None:
    with server.http("reader") as http:
        assert http.get("/metrics").status_code == 404
        assert http.get("/healthz").status_code == 404


def test_requests_in_progress_are_exported(server: RunningServer) -> None:
    assert metric(server, "mcp_requests_in_progress") == 0
