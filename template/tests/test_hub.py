"""The hub-and-spoke topology as real processes on loopback: the hub and one spoke per zone,
each with its own certificate from the test PKI, called with the SDK's client over TLS 1.3."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import TextContent

from conftest import (
    PACKAGE,
    PKI,
    PROJECT,
    RecordingUpstream,
    RunningServer,
    eventually,
    launch_server,
    server_settings,
    start_server,
    stop_server,
    wait_ready,
)
from dev_pki import SERVER_ID, SPOKES
from mcp_client import connect

# Four servers start at once on a busy CI machine: give the module's fixture time.
pytestmark = pytest.mark.timeout(240)
ZONES = list(SPOKES)
OPEN_ZONE, CLOSED_ZONE = ZONES[0], ZONES[-1]
SPOKE_POLICY = PROJECT / "config" / "spoke-policy.toml"


@dataclass
class Topology:
    hub: RunningServer
    spokes: dict[str, RunningServer]
    pki: PKI
    logs: Path
    stopped: list[RunningServer] = field(default_factory=list)

    def restart(self, zone: str) -> None:
        """The zone's spoke again, on the port the hub knows."""
        old = self.spokes[zone]
        self.spokes[zone] = wait_ready(launch_spoke(self.pki, zone, self.logs, port=old.port))


def launch_spoke(pki: PKI, zone: str, logs: Path, port: int | None = None) -> RunningServer:
    extra = {"port": str(port)} if port else {}
    return launch_server(
        pki,
        logs / f"spoke-{zone}-{port or 'first'}.log",
        role="spoke",
        zone=zone,
        tls_cert_file=str(pki.directory / f"spoke-{zone}.pem"),
        tls_key_file=str(pki.directory / f"spoke-{zone}-key.pem"),
        policy_file=str(SPOKE_POLICY),
        **extra,
    )


def start_hub(pki: PKI, logs: Path, urls: dict[str, str], name: str = "hub", refresh: str = "1") -> RunningServer:
    return start_server(
        pki,
        logs / f"{name}.log",
        spoke_urls=",".join(f"{zone}={url}" for zone, url in urls.items()),
        spoke_refresh_seconds=refresh,
        spoke_timeout_seconds="2",
        spoke_failure_threshold="2",
        # An hour: only the hub's probes can close a circuit in time for the recovery test.
        spoke_retry_seconds="3600",
    )


@pytest.fixture(scope="module")
def topology(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    logs = tmp_path_factory.mktemp("topology")
    spokes = {zone: launch_spoke(pki, zone, logs) for zone in ZONES}
    for spoke in spokes.values():
        wait_ready(spoke)
    hub = start_hub(pki, logs, {zone: spoke.url for zone, spoke in spokes.items()})
    running = Topology(hub, spokes, pki, logs)
    yield running
    for server in [hub, *running.spokes.values()]:
        if server.process.poll() is None:
            stop_server(server)


def text(result: Any) -> str:
    return " ".join(item.text for item in result.content if isinstance(item, TextContent))


@pytest.mark.anyio
async def test_a_client_reaches_every_zone_through_the_hub_which_calls_as_itself(topology: Topology) -> None:
    async with topology.hub.connect("operator") as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {f"{zone}.search_runbooks" for zone in ZONES} <= names
        for zone in ZONES:
            result = await client.call_tool(f"{zone}.whoami", {})
            assert not result.is_error, text(result)
            # The spoke saw the hub's certificate, not the client's credentials.
            assert result.structured_content is not None
            assert result.structured_content["id"] == SERVER_ID
            assert result.structured_content["authenticated_by"] == "mtls"


@pytest.mark.anyio
async def test_a_caller_without_the_zones_permission_is_denied_at_the_hub(topology: Topology) -> None:
    async with topology.hub.connect("reader") as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert f"{OPEN_ZONE}.search_runbooks" in names
        assert not any(name.startswith(f"{CLOSED_ZONE}.") for name in names) or len(ZONES) == 1
        allowed = await client.call_tool(f"{OPEN_ZONE}.search_runbooks", {"query": "certificates"})
        assert not allowed.is_error
        if len(ZONES) > 1:
            # Refused as an unknown tool, or with 403 insufficient_scope where a scope would do.
            with pytest.raises(MCPError):
                await client.call_tool(f"{CLOSED_ZONE}.search_runbooks", {"query": "certificates"})
    denied = topology.hub.audit_events(tool=f"{CLOSED_ZONE}.search_runbooks", decision="deny")
    assert denied or len(ZONES) == 1
    # The refused call never left the hub.
    assert not topology.spokes[CLOSED_ZONE].audit_events(tool="search_runbooks", decision="allow") or len(ZONES) == 1


@pytest.mark.anyio
async def test_one_trace_id_joins_the_hub_and_spoke_audit_events(topology: Topology) -> None:
    async with topology.hub.connect("operator") as client:
        result = await client.call_tool(f"{OPEN_ZONE}.search_runbooks", {"query": "rate limits"})
        assert not result.is_error
    hub_event = topology.hub.audit_events(tool=f"{OPEN_ZONE}.search_runbooks", decision="allow")[-1]
    spoke = topology.spokes[OPEN_ZONE]
    assert eventually(lambda: bool(spoke.audit_events(trace_id=hub_event["trace_id"])))
    (spoke_event,) = spoke.audit_events(trace_id=hub_event["trace_id"])
    assert spoke_event["tool"] == "search_runbooks"
    assert spoke_event["principal"] == SERVER_ID
    assert hub_event["principal"] != SERVER_ID  # the hub audits who asked


@pytest.mark.anyio
async def test_a_spoke_answers_nobody_but_the_hub(topology: Topology) -> None:
    spoke = topology.spokes[OPEN_ZONE]
    # A client certificate from the same CA passes the handshake and is refused every tool.
    async with connect(spoke.url, topology.pki.client("operator")) as client:
        assert (await client.list_tools()).tools == []
        with pytest.raises(MCPError, match="not permitted"):
            await client.call_tool("search_runbooks", {"query": "certificates"})
    # Without a client certificate there is no connection at all, whatever the auth mode.
    assert spoke.probe(topology.pki.anonymous()) is None


@pytest.mark.anyio
async def test_a_dead_spoke_fails_only_its_own_tools_and_recovers(topology: Topology) -> None:
    victim, other = ZONES[0], ZONES[-1]
    stop_server(topology.spokes[victim])
    async with topology.hub.connect("operator") as client:
        failed = await client.call_tool(f"{victim}.search_runbooks", {"query": "certificates"})
        assert failed.is_error
        assert f"zone {victim}" in text(failed)
        if other != victim:
            working = await client.call_tool(f"{other}.search_runbooks", {"query": "certificates"})
            assert not working.is_error
        topology.restart(victim)

        for _ in range(50):
            result = await client.call_tool(f"{victim}.search_runbooks", {"query": "certificates"})
            if not result.is_error:
                break
            await anyio.sleep(0.2)
        else:
            pytest.fail(f"zone {victim} did not recover")


@pytest.mark.anyio
async def test_a_spoke_that_fails_a_call_is_probed_every_two_seconds_at_once(
    pki: PKI, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With the default 30 s refresh, a zone whose call just failed is probed within seconds."""
    logs = tmp_path_factory.mktemp("probing")
    zone = ZONES[0]
    spoke = wait_ready(launch_spoke(pki, zone, logs))
    hub = start_hub(pki, logs, {zone: spoke.url}, name="probing-hub", refresh="30")
    try:
        stop_server(spoke)
        async with hub.connect("operator") as client:
            assert (await client.call_tool(f"{zone}.search_runbooks", {"query": "certificates"})).is_error

        def probes() -> int:
            return hub.log_file.read_text().count("upstream tool list not refreshed")

        assert eventually(lambda: probes() >= 2, timeout=15.0), "the dead zone was not probed every 2 s"
    finally:
        stop_server(hub)
        if spoke.process.poll() is None:
            stop_server(spoke)


@pytest.fixture(scope="module")
def recording_hub(
    pki: PKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, RecordingUpstream, RecordingUpstream]]:
    """A hub whose first zone records what it is sent and whose last zone is slower than the
    hub's timeout."""
    recorder = RecordingUpstream(pki, f"spoke-{OPEN_ZONE}")
    slow = RecordingUpstream(pki, f"spoke-{CLOSED_ZONE}", delay=5.0)
    urls = {OPEN_ZONE: recorder.url, CLOSED_ZONE: slow.url} if len(ZONES) > 1 else {OPEN_ZONE: recorder.url}
    hub = start_hub(pki, tmp_path_factory.mktemp("recording"), urls, name="recording-hub")
    yield hub, recorder, slow
    stop_server(hub)
    for spoke in (recorder, slow):
        spoke.stop()


@pytest.mark.anyio
async def test_the_hub_never_passes_the_clients_credentials_to_a_spoke(
    recording_hub: tuple[RunningServer, RecordingUpstream, RecordingUpstream],
) -> None:
    hub, recorder, _ = recording_hub
    _, headers = hub.credentials("operator")
    async with hub.connect("operator") as client:
        assert eventually(lambda: bool(recorder.requests))
        result = await client.call_tool(f"{OPEN_ZONE}.search_runbooks", {"query": "x"})
        assert text(result) == "recorded"
    calls = [(sent_headers, body) for sent_headers, body in recorder.requests if body["method"] == "tools/call"]
    assert calls
    for sent_headers, body in calls:
        assert "authorization" not in {name.lower() for name in sent_headers}
        for secret in headers.values():
            assert secret.split()[-1] not in json.dumps(body) + json.dumps(sent_headers)
        assert body["params"]["name"] == "search_runbooks"
        assert body["params"]["_meta"]["traceparent"].startswith("00-")
    # The hub presented its own certificate.
    for certificate in recorder.peer_certificates:
        assert ("URI", SERVER_ID) in certificate["subjectAltName"]


@pytest.mark.anyio
async def test_a_slow_spoke_times_out_without_holding_up_the_others(
    recording_hub: tuple[RunningServer, RecordingUpstream, RecordingUpstream],
) -> None:
    if len(ZONES) == 1:
        pytest.skip("one zone: no other zone to keep working")
    hub, _, _ = recording_hub
    async with hub.connect("operator") as client:
        slow = await client.call_tool(f"{CLOSED_ZONE}.search_runbooks", {"query": "x"})
        assert slow.is_error
        assert "did not answer within 2 s" in text(slow)
        fast = await client.call_tool(f"{OPEN_ZONE}.search_runbooks", {"query": "x"})
        assert not fast.is_error


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"role": "spoke"}, "ZONE"),
        ({"role": "gateway"}, "ROLE"),
        ({"spoke_urls": "public=http://localhost:1/mcp"}, "SPOKE_URLS"),
    ],
)
def test_a_wrong_topology_setting_stops_start_up_with_one_line(pki: PKI, settings: dict[str, str], named: str) -> None:
    env = {"PYTHONPATH": str(PROJECT / "src"), **server_settings(pki, **settings)}
    done = subprocess.run(
        [sys.executable, "-m", PACKAGE], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert f"_{named}:" in line
