"""Stopping without cutting requests (``service.serve`` answers the signals).

On SIGTERM the server reports not ready at once but keeps serving for a drain period, so
load balancers see it leave and stop sending; every answer in that period carries
``Connection: close``, so no client sends its next request on a connection the server is
about to close. Then the listener closes and requests in flight get a grace period.
"""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Shutdown:
    """Where stopping has got to. Made inside the event loop (it holds an anyio Event)."""

    def __init__(self) -> None:
        self.draining = False
        self._cut_short = anyio.Event()

    def begin(self) -> None:
        self.draining = True

    def cut_short(self) -> None:
        """A second signal: end the drain now."""
        self._cut_short.set()

    async def drain(self, seconds: float) -> bool:
        """Wait out the drain; False when a second signal cut it short."""
        with anyio.move_on_after(seconds):
            await self._cut_short.wait()
            return False
        return True

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """``app`` with ``Connection: close`` on the answer to every request that arrives while draining."""

        async def closing_connections(scope: Scope, receive: Receive, send: Send) -> None:
            # Decided when the request arrives, so that serving costs nothing extra: an answer to
            # a request that arrived just before the drain began is sent without the header, and
            # its client's next request (within the drain) gets it.
            if scope["type"] != "http" or not self.draining:
                await app(scope, receive, send)
                return

            async def send_closing(message: Message) -> None:
                if message["type"] == "http.response.start":
                    kept = [(key, value) for key, value in message.get("headers", []) if key.lower() != b"connection"]
                    message = {**message, "headers": [*kept, (b"connection", b"close")]}
                await send(message)

            await app(scope, receive, send_closing)

        return closing_connections
