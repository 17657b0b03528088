"""The PROXY protocol, version 2 (the binary header HAProxy specified), from trusted proxies only.

A layer-4 load balancer or a passthrough gateway that forwards the TLS stream untouched can
put this header before it, saying which client the connection is for: the server reads it
before TLS, so every per-address bound, the refusal budget and the audit log see the client
instead of the proxy. ``security.listener`` reads it only from ``TRUSTED_PROXIES``: from anyone
else it would let a client choose the address its bounds count.

The header is read exactly (its 16 bytes, then the length they give), so no byte of the TLS
stream behind it is consumed. Version 1 (the text form) is not read: every load balancer the
manifests name sends version 2.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PREFIX_BYTES = 16  # the signature, version and command, family and protocol, length
# What a header may carry after its prefix: the addresses (36 bytes for IPv6) and TLVs, which
# the clouds' load balancers use for a few dozen bytes (an endpoint or link id).
MAX_LENGTH = 1024

_VERSION_2 = 0x20
_LOCAL, _PROXY = 0x0, 0x1
_STREAM = 0x1
_INET, _INET6 = 0x1, 0x2
_ADDRESS_BYTES = {_INET: 12, _INET6: 36}  # source and destination address, then their ports


class ProxyHeaderError(ValueError):
    """What arrived is not a PROXY protocol v2 header this server accepts."""


def header_length(prefix: bytes) -> int:
    """The number of bytes that follow the 16-byte prefix; raises if the prefix is not one."""
    if len(prefix) != PREFIX_BYTES or not prefix.startswith(SIGNATURE):
        raise ProxyHeaderError("no PROXY protocol v2 signature")
    if prefix[12] & 0xF0 != _VERSION_2 or prefix[12] & 0x0F not in (_LOCAL, _PROXY):
        raise ProxyHeaderError("not version 2, or an unknown command")
    length = int.from_bytes(prefix[14:16], "big")
    if length > MAX_LENGTH:
        raise ProxyHeaderError(f"header of {length} bytes, more than {MAX_LENGTH}")
    return length


def client_address(prefix: bytes, rest: bytes) -> tuple[str, int] | None:
    """The client a PROXY command speaks for; None for LOCAL (the proxy's own connection, a
    health check: its address stays). TLVs after the addresses are skipped."""
    if prefix[12] & 0x0F == _LOCAL:
        return None
    family, transport = prefix[13] >> 4, prefix[13] & 0x0F
    size = _ADDRESS_BYTES.get(family)
    if size is None or transport != _STREAM:
        raise ProxyHeaderError("PROXY command for neither TCP over IPv4 nor over IPv6")
    if len(rest) < size:
        raise ProxyHeaderError("header shorter than its addresses")
    half = (size - 4) // 2
    host = ipaddress.IPv4Address(rest[:half]) if family == _INET else ipaddress.IPv6Address(rest[:half])
    return str(host), int.from_bytes(rest[size - 4 : size - 2], "big")


async def read_header(sock: socket.socket) -> tuple[str, int] | None:
    """Read the header from a non-blocking socket, exactly; the client it names (None: LOCAL).
    The caller bounds the time."""
    prefix = await _read_exactly(sock, PREFIX_BYTES)
    length = header_length(prefix)
    return client_address(prefix, await _read_exactly(sock, length) if length else b"")


async def _read_exactly(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise ProxyHeaderError("connection closed within the header")
        data += chunk
    return data
