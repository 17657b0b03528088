"""Call the server with the MCP SDK's own client, over TLS 1.3 with the dev client
certificate of ``--identity`` (when the dev PKI has one) and a bearer token (``--token`` or
``MCP_ACCESS_TOKEN``) when given.

Usage::

    python scripts/mcp_client.py                          # list tools, call whoami
    python scripts/mcp_client.py search_runbooks '{"query": "certificates"}'
    python scripts/mcp_client.py --identity operator revoke_session '{"session_id": "sess_12345678"}'
"""

from __future__ import annotations

import argparse
import json
import os
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
async def connect(
    url: str,
    tls: ssl.SSLContext,
    *,
    mode: ConnectMode = "auto",
    headers: dict[str, str] | None = None,
    challenges: list[str] | None = None,
) -> AsyncIterator[Client]:
    """The SDK client over TLS 1.3. ``challenges`` collects the ``WWW-Authenticate`` headers of
    401/403 answers, which the SDK does not pass on (they say which token or scope is needed)."""
    timeout = httpx2.Timeout(30.0, read=300.0)

    async def remember_challenge(response: httpx2.Response) -> None:
        if challenges is not None and response.status_code in (401, 403) and "www-authenticate" in response.headers:
            challenges.append(response.headers["www-authenticate"])

    hooks = {"response": [remember_challenge]}
    async with (
        httpx2.AsyncClient(verify=tls, timeout=timeout, headers=headers, event_hooks=hooks) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


async def run(args: argparse.Namespace) -> None:
    pki: Path = args.pki
    cert, key = pki / f"client-{args.identity}.pem", pki / f"client-{args.identity}-key.pem"
    present = cert.exists() and not args.no_certificate
    tls = client_tls(pki / "ca.pem", cert, key) if present else client_tls(pki / "ca.pem", None, None)
    headers = {"authorization": f"Bearer {args.token}"} if args.token else None
    challenges: list[str] = []
    # SystemExit is raised after the client has closed: inside, the SDK's task group would
    # wrap it in an exception group and print a traceback instead of the reason.
    failure: str | int | None = None
    async with connect(args.url, tls, headers=headers, challenges=challenges) as client:
        tools = await client.list_tools()
        print("tools you may call:", ", ".join(tool.name for tool in tools.tools))
        arguments: dict[str, Any] = json.loads(args.arguments)
        try:
            result = await client.call_tool(args.tool, arguments)
        except MCPError as exc:
            reason = f"{exc.message} ({challenges[-1]})" if challenges else exc.message
            failure = f"{args.tool} refused: {reason}"
        else:
            payload = result.structured_content or [getattr(item, "text", item) for item in result.content]
            print(f"{args.tool} ->", json.dumps(payload, indent=2, default=str))
            failure = 1 if result.is_error else None
    if failure is not None:
        raise SystemExit(failure)


def main() -> None:
    parser = argparse.ArgumentParser(description="Call an MCP tool over TLS 1.3.")
    parser.add_argument("tool", nargs="?", default="whoami")
    parser.add_argument("arguments", nargs="?", default="{}", help="tool arguments as a JSON object")
    parser.add_argument("--url", default="https://localhost:8443/mcp")
    parser.add_argument("--identity", default="reader", help="client certificate from the dev PKI")
    parser.add_argument("--pki", type=Path, default=Path(".dev-pki"))
    parser.add_argument("--token", default=os.environ.get("MCP_ACCESS_TOKEN"), help="bearer access token")
    # A token-only server may still ask for certificates (a federated one, for its peers'):
    # a client certificate it does not trust would fail the handshake.
    parser.add_argument("--no-certificate", action="store_true", help="present no client certificate (token only)")
    anyio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
