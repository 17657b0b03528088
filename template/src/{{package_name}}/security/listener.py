"""The MCP port's accept loop, in place of ``loop.create_server``: every connection is counted
from the moment it is accepted, before TLS, so half-finished handshakes are bounded as
connections are.

- a total cap (``ConnectionBounds.max_open``: the open-file limit less
  ``RESERVED_FILE_DESCRIPTORS``): beyond it a new connection is closed at once, so the server
  keeps the descriptors its own work needs (key fetches, upstream calls, files) and the
  connections it already has keep being served;
- the per-address cap (``MAX_CONNECTIONS_PER_ADDRESS``), counted here: up to twice the cap a
  connection goes on to TLS (beyond the cap, ``security.connections`` answers it 503 with
  ``Retry-After``); beyond twice the cap it is closed at once;
- an accept that fails (out of descriptors: EMFILE, ENFILE) is counted, logged at most once per
  window, and accepting resumes ``ACCEPT_BACKOFF_SECONDS`` later;
- from ``TRUSTED_PROXIES`` only, the PROXY protocol v2 header comes first
  (``security.proxy_protocol``), and the client it names is the address every bound sees.

The TLS handshake (and the header before it) is bounded by ``TLS_HANDSHAKE_TIMEOUT_SECONDS``.
All of this is work per connection, at accept; nothing runs per request. uvicorn handles a
``Listener`` as the ``asyncio.Server`` it would have: ``close()`` stops accepting,
``wait_closed()`` waits for the handshakes in progress.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from .connections import BoundedHttpProtocol, ConnectionBounds
from .proxy_protocol import ProxyHeaderError, read_header

log = logging.getLogger(__name__)

ACCEPT_BACKOFF_SECONDS = 0.1

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Listener:
    """Accepts connections on a bound socket and hands each, within the bounds, to a protocol
    from ``protocol_factory`` over TLS."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], BoundedHttpProtocol],
        bounds: ConnectionBounds,
        *,
        tls: ssl.SSLContext | None,
        handshake_timeout: float,
        trusted_proxies: Sequence[Network] = (),
        backlog: int = 2048,
        warning_window: float = 10.0,
    ) -> None:
        self.sock, self.protocol_factory, self.bounds = sock, protocol_factory, bounds
        self.tls, self.handshake_timeout, self.trusted_proxies = tls, handshake_timeout, tuple(trusted_proxies)
        self._handshakes: set[asyncio.Task[None]] = set()
        self._full = OncePerWindow("connection limit reached: new connections closed at once", warning_window)
        self._accept_failed = OncePerWindow("accepting connections failed: retrying shortly", warning_window)
        sock.setblocking(False)
        sock.listen(backlog)
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    def close(self) -> None:
        """Stop accepting; connections already accepted go on."""
        if not self._accepting.done():
            self._accepting.cancel()
            self.sock.close()

    async def wait_closed(self) -> None:
        """Until accepting has stopped and every handshake in progress has ended (each within
        its timeout)."""
        await asyncio.gather(self._accepting, *self._handshakes, return_exceptions=True)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self.sock)
            except ConnectionAbortedError:
                continue  # the client left before we took it
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: wait for resources to come back
                name = errno.errorcode.get(exc.errno or 0, "unknown")
                self.bounds.metrics.accept_failures.labels(error=name).inc()
                self._accept_failed(error=name, open_connections=self.bounds.open_total)
                await asyncio.sleep(ACCEPT_BACKOFF_SECONDS)
                continue
            self._accepted(conn, peer)

    def _accepted(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        bounds = self.bounds
        if bounds.open_total >= bounds.max_open:
            conn.close()
            bounds.refused("connection_limit", peer[0])
            self._full(max_connections=bounds.max_open)
            return
        conn.setblocking(False)
        bounds.open_total += 1
        if self.trusted_proxies and self._trusted(peer[0]):
            self._start(self._proxied(conn, peer))
            return
        protocol = self._admit(conn, peer)
        if protocol is not None:
            self._start(self._handshake(conn, protocol, peer[0]))

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    def _trusted(self, host: str) -> bool:
        address = ipaddress.ip_address(host)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
        return any(address in network for network in self.trusted_proxies)

    def _admit(self, conn: socket.socket, client: tuple[str, int]) -> BoundedHttpProtocol | None:
        """The protocol for a connection from ``client``, counted against its address; None
        when the address is beyond twice its cap (the connection is closed)."""
        over_cap = self.bounds.admit(client[0])
        if over_cap is None:
            self._drop(conn, "per_address_limit", client[0])
            return None
        protocol = self.protocol_factory()
        protocol.accepted(client, over_cap=over_cap)
        return protocol

    def _drop(self, conn: socket.socket, reason: str, address: str) -> None:
        """Close a counted connection before TLS, refused for ``reason``."""
        conn.close()
        self.bounds.closed(None)
        self.bounds.refused(reason, address)

    async def _proxied(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        """Read the PROXY header from a trusted proxy, then go on as for a client of its own."""
        self.bounds.handshakes += 1
        try:
            async with asyncio.timeout(self.handshake_timeout):
                client = await read_header(conn)
        except (ProxyHeaderError, OSError) as exc:  # TimeoutError is an OSError
            self._drop(conn, "proxy_header", peer[0])
            log.debug("PROXY header refused", extra={"peer": peer[0], "error": str(exc) or type(exc).__name__})
            return
        finally:
            self.bounds.handshakes -= 1
        client = client or peer
        protocol = self._admit(conn, client)
        if protocol is not None:
            await self._handshake(conn, protocol, client[0])

    async def _handshake(self, conn: socket.socket, protocol: BoundedHttpProtocol, address: str) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.handshake_timeout if self.tls else None
        self.bounds.handshakes += 1
        try:
            await loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=self.tls, ssl_handshake_timeout=timeout, ssl_shutdown_timeout=timeout
            )
        except ssl.SSLError:
            protocol.release()
            self.bounds.refused("tls_handshake", address)
        except ConnectionAbortedError:  # what asyncio and uvloop raise when the timeout ends it
            protocol.release()
            self.bounds.refused("handshake_timeout", address)
        except OSError:  # the client reset or closed the connection
            protocol.release()
        finally:
            self.bounds.handshakes -= 1


class OncePerWindow:
    """A warning logged at most once per window, with the number of times it happened since."""

    def __init__(self, message: str, window: float) -> None:
        self.message, self.window = message, window
        self._count, self._next = 0, 0.0

    def __call__(self, **fields: object) -> None:
        self._count += 1
        now = time.monotonic()
        if now >= self._next:
            log.warning(self.message, extra={**fields, "count": self._count, "window_seconds": self.window})
            self._count, self._next = 0, now + self.window
