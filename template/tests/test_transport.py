"""The server over real TLS with the MCP SDK's own client: who gets in, and what they see."""

from __future__ import annotations

import ssl

import pytest
from mcp.shared.exceptions import MCPError

from conftest import RunningServer
from dev_pki import CLIENTS
from mcp_client import connect

pytestmark = pytest.mark.anyio
# The SDK client speaks both the initialize handshake and the stateless 2026-07-28 protocol.
BOTH_PROTOCOLS = pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])


@BOTH_PROTOCOLS
async def test_verified_identity_reaches_the_tool(server: RunningServer, mode: str) -> None:
    async with connect(server.url, server.pki.client("reader"), mode=mode) as client:
        result = await client.call_tool("whoami", {})
    assert not result.is_error
    assert result.structured_content is not None
    assert result.structured_content["id"] == CLIENTS["reader"]
    assert result.structured_content["authenticated_by"] == "mtls"
    assert "cn:reader" in result.structured_content["names"]


@BOTH_PROTOCOLS
async def test_tools_list_shows_only_permitted_tools(server: RunningServer, mode: str) -> None:
    async with connect(server.url, server.pki.client("reader"), mode=mode) as client:
        reader_tools = {tool.name for tool in (await client.list_tools()).tools}
    async with connect(server.url, server.pki.client("operator"), mode=mode) as client:
        operator_tools = {tool.name for tool in (await client.list_tools()).tools}
    assert reader_tools == {"whoami", "search_runbooks"}
    assert operator_tools == {"whoami", "search_runbooks", "revoke_session"}


@BOTH_PROTOCOLS
async def test_privileged_tool_is_denied_and_audited(server: RunningServer, mode: str) -> None:
    async with connect(server.url, server.pki.client("reader"), mode=mode) as client:
        with pytest.raises(MCPError, match="not permitted"):
            await client.call_tool("revoke_session", {"session_id": f"deny-{mode}"})
    denials = server.audit_events(event="tool_call", tool="revoke_session", decision="deny")
    assert any(event["principal"] == CLIENTS["reader"] for event in denials)


async def test_unknown_tool_looks_like_a_forbidden_one(server: RunningServer) -> None:
    async with connect(server.url, server.pki.client("reader")) as client:
        with pytest.raises(MCPError) as unknown:
            await client.call_tool("no_such_tool", {})
        with pytest.raises(MCPError) as forbidden:
            await client.call_tool("revoke_session", {"session_id": "sess_12345678"})
    assert unknown.value.code == forbidden.value.code
    assert unknown.value.message.split(":")[0] == forbidden.value.message.split(":")[0]


async def test_operator_calls_privileged_tool_and_it_is_audited(server: RunningServer) -> None:
    async with connect(server.url, server.pki.client("operator")) as client:
        result = await client.call_tool("revoke_session", {"session_id": "sess_audited01"})
    assert result.structured_content == {
        "session_id": "sess_audited01",
        "revoked": True,
        "revoked_by": CLIENTS["operator"],
    }
    (event,) = server.audit_events(event="tool_call", tool="revoke_session", decision="allow")
    assert event["principal"] == CLIENTS["operator"]
    assert event["outcome"] == "ok"
    assert event["latency_ms"] >= 0
    assert event["request_id"] is not None
    assert event["http_request_id"]
    assert event["client_ip"] == "127.0.0.1"


async def test_invalid_arguments_are_refused_before_the_tool_runs(server: RunningServer) -> None:
    async with connect(server.url, server.pki.client("operator")) as client:
        result = await client.call_tool("revoke_session", {"session_id": "../../etc/passwd"})
    assert result.is_error


async def test_resource_and_prompt(server: RunningServer) -> None:
    async with connect(server.url, server.pki.client("reader")) as client:
        resource = await client.read_resource("info://server")
        prompt = await client.get_prompt("incident_summary", {"incident_id": "INC-42"})
    assert '"auth_mode": "mtls"' in getattr(resource.contents[0], "text", "")
    assert "INC-42" in str(prompt.messages[0].content)


def test_tls_1_2_is_refused(server: RunningServer) -> None:
    context = server.pki.client("reader")
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    assert server.probe(context) is None


def test_tls_1_3_with_a_trusted_client_certificate_gets_an_answer(server: RunningServer) -> None:
    probe = server.probe(server.pki.client("reader"))
    assert probe is not None
    assert probe.answer.startswith(b"HTTP/1.1 ")
    assert probe.tls_version == "TLSv1.3"


@pytest.mark.parametrize("identity", [None, "foreign"], ids=["no-client-cert", "foreign-ca-cert"])
def test_client_without_a_trusted_certificate_is_refused(server: RunningServer, identity: str | None) -> None:
    context = server.pki.anonymous() if identity is None else server.pki.client(identity)
    assert server.probe(context) is None
