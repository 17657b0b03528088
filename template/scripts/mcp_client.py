"""Call the server over mutual TLS with the MCP SDK's own client.

Usage::

    python scripts/mcp_client.py                          # list tools, call whoami
    python scripts/mcp_client.py search_runbooks '{"query": "certificates"}'
    python scripts/mcp_client.py --identity operator revoke_session '{"session_id": "sess_12345678"}'
"""

from __future__ import annotations

import argparse
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.client import ConnectMode
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


def client_tls(ca: Path, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """Verify the server against ``ca``; present ``cert``/``key`` when given."""
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


@asynccontextmanager
async def connect(url: str, tls: ssl.SSLContext, *, mode: ConnectMode = "auto") -> AsyncIterator[Client]:
    timeout = httpx2.Timeout(30.0, read=300.0)
    async with (
        httpx2.AsyncClient(verify=tls, timeout=timeout) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


async def run(args: argparse.Namespace) -> None:
    pki: Path = args.pki
    tls = client_tls(pki / "ca.pem", pki / f"client-{args.identity}.pem", pki / f"client-{args.identity}-key.pem")
    async with connect(args.url, tls) as client:
        tools = await client.list_tools()
        print("tools you may call:", ", ".join(tool.name for tool in tools.tools))
        arguments: dict[str, Any] = json.loads(args.arguments)
        try:
            result = await client.call_tool(args.tool, arguments)
        except MCPError as exc:
            raise SystemExit(f"{args.tool} refused: {exc.message}") from None
        payload = result.structured_content or [getattr(item, "text", item) for item in result.content]
        print(f"{args.tool} ->", json.dumps(payload, indent=2, default=str))
        if result.is_error:
            raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description="Call an MCP tool over mutual TLS.")
    parser.add_argument("tool", nargs="?", default="whoami")
    parser.add_argument("arguments", nargs="?", default="{}", help="tool arguments as a JSON object")
    parser.add_argument("--url", default="https://localhost:8443/mcp")
    parser.add_argument("--identity", default="reader", help="client certificate from the dev PKI")
    parser.add_argument("--pki", type=Path, default=Path(".dev-pki"))
    anyio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
