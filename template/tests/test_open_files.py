"""Start-up raises the soft open-file limit (container runtimes often start processes at 1024)
and says so; a hard limit that is low too is named as a warning, and the server still serves."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import PACKAGE, PKI, PROJECT, RunningServer, server_settings, stop_server, wait_ready
from dev_servers import free_port


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
def started(pki: PKI, tmp_path: Path) -> Iterator[Callable[[int, int], RunningServer]]:
    """Start the server as a container runtime would, under the given open-file limits."""
    running: list[RunningServer] = []

    def start(soft: int, hard: int) -> RunningServer:
        port, ops_port = free_port(), free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(PROJECT / "src"),
            **server_settings(pki, port=str(port), ops_port=str(ops_port)),
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


def test_a_soft_limit_of_1024_is_raised_to_the_hard_limit(started: Callable[[int, int], RunningServer]) -> None:
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


def test_a_low_hard_limit_is_named_and_the_server_still_serves(started: Callable[[int, int], RunningServer]) -> None:
    server = started(1024, 1024)
    assert open_file_limits(server.process.pid) == (1024, 1024)
    low = "open-file limit is low"
    warned = [event for event in log_events(server) if str(event.get("event", "")).startswith(low)]
    assert len(warned) == 1
    assert warned[0]["soft"] == 1024
    assert warned[0]["level"] == "warning"
    with server.http("reader") as client:
        assert client.get("/mcp").status_code == 405
