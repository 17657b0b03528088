"""Run this project's servers on this machine for development, stopped together.

``servers`` here is a standalone project's one server; ``dev_spokes.py`` (hub-and-spoke) and
``dev_peers.py`` (federated) give theirs. ``run_all`` runs them as ``python -m <package>``
processes until Ctrl-C or SIGTERM, or until one exits (``scripts/local_env.py dev``).
``free_port`` gives the tests and ``make bench`` loopback ports that nothing else takes meanwhile.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess  # nosec B404
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

_RESERVED: list[socket.socket] = []


@dataclass(frozen=True)
class Server:
    """One server of ``make dev``: its settings beside the defaults, which name the dev PKI."""

    settings: dict[str, str] = field(default_factory=dict)
    called_by_clients: bool = True  # a zone's spoke is called by the hub alone


def servers(_pki: Path) -> list[Server]:
    """A standalone project's one server, at its defaults."""
    return [Server()]


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


def run_all(package: str, environments: Sequence[Mapping[str, str]]) -> int:
    """Start one server per environment; stop them all when one stops. 0 if none failed."""
    command = [sys.executable, "-m", package]
    servers = [
        subprocess.Popen(command, env={**os.environ, **environment})  # noqa: S603  # nosec B603
        for environment in environments
    ]

    def stop(_signum: int, _frame: FrameType | None) -> None:
        for server in servers:
            server.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while all(server.poll() is None for server in servers):
        time.sleep(0.2)
    stop(signal.SIGTERM, None)
    for server in servers:
        server.wait(timeout=15)
    return 1 if any(server.returncode not in (0, -signal.SIGTERM) for server in servers) else 0
