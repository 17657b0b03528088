"""The generated project's documented commands work as a newcomer would type them."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import UV, project_venv, render, run_in
from support.wait_ready import wait_ready

pytestmark = pytest.mark.xdist_group("workflow")
PREFIX = "ACME_MCP_SERVER_"


_RESERVED: list[socket.socket] = []


def free_port() -> int:
    """A loopback port for a server this process starts. The socket stays bound (never
    listening) while this process runs: the kernel then gives the port to no other bind(0) or
    outgoing connection, so parallel tests cannot collide on it, and a server that binds it
    with SO_REUSEADDR (ours and uvicorn's do) still can."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    _RESERVED.append(sock)
    port: int = sock.getsockname()[1]
    return port


def make(project: Path, *targets: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *targets, f"UV={UV}"],
        cwd=project,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(
    scope="module",
    params=[
        {"auth_mode": "mtls"},
        # The OAuth-only project is a federated one: the auth mode's commands and the peers' in
        # one project (mtls+oauth proves the standalone `make dev` with a dev issuer).
        {"auth_mode": "oauth", "architecture": "federated"},
        {"auth_mode": "mtls+oauth"},
        {"auth_mode": "mtls+oauth", "architecture": "hub-and-spoke"},
    ],
    ids=["mtls", "oauth-federated", "mtls+oauth", "hub-and-spoke"],
)
def installed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project per auth mode (one of them federated, and a hub-and-spoke one), set up with the
    commands its README gives."""
    project = render(tmp_path_factory.mktemp("workflow") / "project", request.param)
    subprocess.run(["git", "init", "--quiet", "--initial-branch=main"], cwd=project, check=True)
    for target in ("install", "certs"):
        result = make(project, target)
        assert result.returncode == 0, result.stdout + result.stderr
    return project


@pytest.fixture(scope="module")
def dev_server(installed: Path) -> Iterator[tuple[Path, list[str]]]:
    """``make dev`` on free ports; yields the project and the make variables that reach it."""
    port, ops_port, issuer_port = free_port(), free_port(), free_port()
    env = {**os.environ, f"{PREFIX}PORT": str(port), f"{PREFIX}OPS_PORT": str(ops_port)}
    answers = yaml.safe_load((installed / ".copier-answers.yml").read_text())
    if answers["architecture"] == "federated":  # every peer on a free port, the first where PORT says
        ports = [port] + [free_port() for _ in answers["federation_peers"][1:]]
        urls = [f"{peer}=https://localhost:{p}/mcp" for peer, p in zip(answers["federation_peers"], ports, strict=True)]
        env[f"{PREFIX}FEDERATION_PEER_URLS"] = ",".join(urls)
    variables = [f"URL=https://localhost:{port}/mcp", f"ISSUER_PORT={issuer_port}"]
    log = installed / "dev.log"
    with log.open("w") as sink:
        server = subprocess.Popen(
            ["make", "dev", f"UV={UV}", *variables],
            cwd=installed,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_ready(f"http://127.0.0.1:{ops_port}/readyz", log, timeout=120)
        yield installed, variables
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_install_writes_a_lock_file_and_keeps_keys_out_of_git(installed: Path) -> None:
    assert (installed / "uv.lock").is_file()
    assert (installed / ".dev-pki" / "client-reader-key.pem").is_file()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=installed, capture_output=True, text=True, check=True)
    assert ".dev-pki" not in status.stdout
    assert "-key.pem" not in status.stdout


def test_make_client_calls_the_dev_server(dev_server: tuple[Path, list[str]]) -> None:
    project, variables = dev_server
    mode = yaml.safe_load((project / ".copier-answers.yml").read_text())["auth_mode"]
    revoke = ["TOOL=revoke_session", 'ARGS={"session_id":"sess_12345678"}']
    reader = make(project, "client", *variables)
    operator = make(project, "client", *variables, "IDENTITY=operator", *revoke)
    denied = make(project, "client", *variables, *revoke)
    assert reader.returncode == 0, reader.stdout + reader.stderr
    # The hub lists the zones' tools after its own (test below).
    assert "tools you may call: whoami, search_runbooks" in reader.stdout
    assert ("spiffe://mcp.example.com/client/reader" if "mtls" in mode else '"sub:reader"') in reader.stdout
    assert f'"authenticated_by": "{mode}"' in reader.stdout
    assert operator.returncode == 0, operator.stdout + operator.stderr
    assert '"revoked": true' in operator.stdout
    assert denied.returncode != 0
    # A token-only caller is told which scope it lacks (HTTP 403); otherwise the tool is refused as unknown.
    refusal = (
        'error="insufficient_scope"' if mode == "oauth" else "revoke_session refused: Unknown tool or not permitted"
    )
    assert refusal in denied.stdout + denied.stderr


def test_make_token_prints_a_short_lived_token_for_the_dev_issuer(installed: Path) -> None:
    if "oauth" not in (installed / ".copier-answers.yml").read_text():
        assert "token:" not in (installed / "Makefile").read_text()
        return
    result = make(installed, "token", "IDENTITY=operator", "ISSUER_PORT=9999")
    assert result.returncode == 0, result.stdout + result.stderr
    claims = json.loads(base64.urlsafe_b64decode(result.stdout.strip().split(".")[1] + "=="))
    assert claims["iss"] == "https://localhost:9999"
    assert claims["sub"] == "operator"
    assert "sessions:revoke" in claims["scope"].split()
    assert claims["exp"] - claims["iat"] <= 300


def test_benchmark_prints_the_comparison_table(installed: Path) -> None:
    venv = project_venv(installed)
    result = run_in(
        installed, venv, "python", "scripts/bench.py", "--calls", "40", "--repeat", "1", "--concurrency", "1,4"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    architecture = yaml.safe_load((installed / ".copier-answers.yml").read_text())["architecture"]
    tables = result.stdout.split("the hub's cost: " if architecture == "hub-and-spoke" else "the federation's cost: ")
    rows = [line for line in tables[0].splitlines() if line.startswith(("| 1 |", "| 4 |"))]
    assert len(rows) == 2, result.stdout
    assert len(tables) == (1 if architecture == "standalone" else 2), result.stdout
    if architecture != "standalone":  # a tool on its spoke (peer) directly and through the hub (another peer)
        hops = [line for line in tables[1].splitlines() if line.startswith(("| 1 |", "| 4 |"))]
        assert len(hops) == 2, result.stdout
    assert "secure/bare calls/s" in result.stdout
    assert "audit events written by the secure server: " in result.stdout
    assert not result.stdout.rstrip().endswith("server: 0")


def test_benchmark_soak_reports_the_servers_memory(installed: Path) -> None:
    answers = yaml.safe_load((installed / ".copier-answers.yml").read_text())
    if answers["auth_mode"] != "mtls+oauth" or answers["architecture"] != "standalone":
        return  # one project is enough: the soak is the same code in every mode
    venv = project_venv(installed)
    soak = ["--soak", "6", "--soak-warmup", "2", "--soak-every", "2", "--soak-clients", "4", "--tracemalloc", "4"]
    result = run_in(installed, venv, "python", "scripts/bench.py", *soak)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if re.match(r"\| [246] \| [\d,]+ \| [\d.]+ \| [+-]", line)]
    assert len(rows) == 3, result.stdout
    assert re.search(
        r"RSS after the warm-up \(2 s\): [\d.]+ MB; at the end \(6 s\): [\d.]+ MB; growth [+-][\d.]+ % "
        r"\([+-][\d,]+ kB, [+-][\d.]+ bytes per call over [\d,]+ calls\)",
        result.stdout,
    ), result.stdout
    assert "traced Python memory: " in result.stdout, result.stdout


def relayed_whoami(
    project: Path, variables: list[str], upstream: str, deadline: float
) -> subprocess.CompletedProcess[str]:
    """``make client`` of ``<upstream>.whoami`` as the operator, again until it answers or
    ``deadline``: the relaying server learns an upstream's tools within seconds of it coming up."""
    while True:
        result = make(project, "client", *variables, "IDENTITY=operator", f"TOOL={upstream}.whoami")
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_make_dev_runs_the_hub_in_front_of_every_zones_spoke(dev_server: tuple[Path, list[str]]) -> None:
    project, variables = dev_server
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    if answers["architecture"] != "hub-and-spoke":
        assert not (project / "scripts" / "dev_spokes.py").exists()
        return
    # Four servers start at once on a busy machine; the hub probes a missing spoke every 2 s.
    deadline = time.monotonic() + 120
    for zone in answers["spokes"]:
        result = relayed_whoami(project, variables, zone, deadline)
        # The spoke saw the hub's certificate, never the operator's credentials.
        assert '"id": "spiffe://mcp.example.com/ns/acme-mcp-server/sa/acme-mcp-server"' in result.stdout
        assert '"authenticated_by": "mtls"' in result.stdout


def test_make_dev_runs_every_federated_peer(dev_server: tuple[Path, list[str]]) -> None:
    project, variables = dev_server
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    if answers["architecture"] != "federated":
        assert not (project / "scripts" / "dev_peers.py").exists()
        return
    first, *others = answers["federation_peers"]
    deadline = time.monotonic() + 120
    for peer in others:
        result = relayed_whoami(project, variables, peer, deadline)
        # The other peer saw the first peer's own identity (its own trust domain), not the operator's token.
        assert f'"id": "spiffe://{first}.mcp.example.com/ns/acme-mcp-server/sa/acme-mcp-server"' in result.stdout
        assert '"authenticated_by": "mtls"' in result.stdout
